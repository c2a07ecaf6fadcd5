\set aid random(1, 100000 * :scale)
SELECT set_config('myapp.tenant', :aid::text, false);
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
