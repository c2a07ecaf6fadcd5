"""Where a ``[pgbouncer]`` key behaves otherwise than in PgBouncer 1.25, by key.

Strategy: the settings table (settings.py) says what every key is, its default and whether a
reload applies it; defaults and reload behaviour are PgBouncer's for every ``[pgbouncer]``
key. This table holds the rest: what pgusher does differently with a
key it reads, one sentence each, for docs/CONFIG.md (scripts/gen_config_doc.py). A key not
named here works as PgBouncer documents it. Every ``[pgusher]`` key is pgusher's own.
"""

from __future__ import annotations

NOT_YET = "Read and validated, but has no effect yet."

DIFFERENCES: dict[str, str] = {
    "user": "The switch happens after the listening sockets are bound (PgBouncer switches "
            "before), so a port below 1024 works; `-u` on the command line wins.",
    "auth_type": "`pam` stops start-up with an error; `ldap` is not accepted.",
    "auth_ldap_options": "LDAP authentication is not supported; the key is only read.",
    "auth_ident_file": NOT_YET + " `peer` compares the socket owner's name with the user.",
    "disable_pqexec": "`1` stops start-up with an error (not supported yet).",
    "autodb_idle_timeout": NOT_YET,
    "server_fast_close": NOT_YET,
    "suspend_timeout": NOT_YET + " There is no online restart (SUSPEND/-R).",
    "tcp_defer_accept": NOT_YET,
    "dns_max_ttl": NOT_YET + " Host names are resolved at every connect, without a cache.",
    "dns_nxdomain_ttl": NOT_YET + " Host names are resolved at every connect.",
    "dns_zone_check_period": NOT_YET,
    "resolv_conf": NOT_YET + " The system resolver is used.",
    "client_tls13_ciphers": "Python's ssl module cannot choose TLS 1.3 suites: a value is "
                            "reported with a warning and the defaults stay.",
    "server_tls13_ciphers": "Python's ssl module cannot choose TLS 1.3 suites: a value is "
                            "reported with a warning and the defaults stay.",
    "client_tls_ecdhcurve": NOT_YET + " Python's ssl defaults are used.",
    "client_tls_dheparams": NOT_YET,
    "sbuf_loopcnt": "No effect: each read is handled whole in one callback.",
    "service_name": "Windows only in PgBouncer; read and ignored.",
    "job_name": "Windows only in PgBouncer; read and ignored.",
}
