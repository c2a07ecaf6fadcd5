"""The admin console: the virtual ``pgbouncer`` database (also ``pgusher``).

:mod:`.parse` turns query text into commands (no I/O), :mod:`.columns` declares every SHOW's
columns and types, :mod:`.show` builds their rows, :mod:`.control` carries out the commands
that change the pooler, and :mod:`.session` is the connection that speaks the protocol.
"""
