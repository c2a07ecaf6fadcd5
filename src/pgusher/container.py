"""The container image's entrypoint: configuration from a mounted ini or the environment.

Strategy: :func:`ini_from_env` is a pure function from an environment mapping to the text of
an ini file. ``PGUSHER_<KEY>`` sets any key of ``[pgbouncer]`` or ``[pgusher]`` (the name
after the prefix, lower-cased, must be a key of the settings table; anything else is refused
so a typo does not start a pooler with defaults), ``PGUSHER_DATABASE_<NAME>`` one
``[databases]`` entry, ``PGUSHER_DATABASES`` and ``PGUSHER_USERS`` whole section bodies, and
``PGUSHER_USERLIST`` the auth_file's text. A mounted ini (``PGUSHER_CONFIG``, by default
/etc/pgusher/pgusher.ini) is included first, so the variables override it; without one the
container defaults apply (listen on every address, no unix socket, the HTTP endpoint on
9127). :func:`main` writes the files to ``PGUSHER_RUNDIR`` and execs pgusher, which becomes
process 1 and receives docker's SIGTERM itself. ``--health`` is the image's HEALTHCHECK: it
asks /health on the configured HTTP port.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

from .config import PGUSHER_TABLE, SETTINGS_TABLE, ConfigError, load_config

PREFIX = "PGUSHER_"
DEFAULT_CONFIG = "/etc/pgusher/pgusher.ini"
DEFAULT_RUNDIR = "/run/pgusher"
# Variables of the entrypoint itself, not settings.
OWN = frozenset({"CONFIG", "RUNDIR", "DATABASES", "USERS", "USERLIST", "ARGS"})
# Without a mounted ini: what a container needs that PgBouncer's defaults do not give.
CONTAINER_DEFAULTS = {
    "pgbouncer": {"listen_addr": "*", "listen_port": "6432", "unix_socket_dir": "",
                  "auth_type": "scram-sha-256"},
    "pgusher": {"http_addr": "0.0.0.0", "http_port": "9127"},
}


def ini_from_env(env: Mapping[str, str], *, mounted: str | None,
                 userlist_path: str) -> str:
    """The ini text for ``env``; ``mounted`` is the path of an ini to include, if any.

    Raises ConfigError for a ``PGUSHER_`` variable that names no setting.
    """
    sections: dict[str, dict[str, str]] = {"databases": {}, "pgbouncer": {}, "pgusher": {}}
    if mounted is None:
        for name, items in CONTAINER_DEFAULTS.items():
            sections[name].update(items)
    bodies: dict[str, list[str]] = {"databases": [], "users": []}
    for var in sorted(env):
        if not var.startswith(PREFIX):
            continue
        key = var[len(PREFIX):]
        value = env[var]
        if key in OWN:
            if key in ("DATABASES", "USERS"):
                bodies[key.lower()].extend(line.strip() for line in value.splitlines()
                                           if line.strip())
            continue
        if key.startswith("DATABASE_") and len(key) > len("DATABASE_"):
            sections["databases"][key[len("DATABASE_"):].lower()] = value
            continue
        name = key.lower()
        if name in SETTINGS_TABLE:
            sections["pgbouncer"][name] = value
        elif name in PGUSHER_TABLE:
            sections["pgusher"][name] = value
        else:
            raise ConfigError(f"{var}: no setting {name} in [pgbouncer] or [pgusher]")
    if "PGUSHER_USERLIST" in env and "auth_file" not in sections["pgbouncer"]:
        sections["pgbouncer"]["auth_file"] = userlist_path
    out = ["; written by the container's entrypoint from PGUSHER_* variables"]
    if mounted is not None:
        out.append(f"%include {mounted}")
    for name in ("databases", "users", "pgbouncer", "pgusher"):
        lines = [f"{k} = {v}" for k, v in sections.get(name, {}).items()]
        lines += bodies.get(name, [])
        if lines:
            out += ["", f"[{name}]", *lines]
    return "\n".join(out) + "\n"


def _paths(env: Mapping[str, str]) -> tuple[str, str, str]:
    rundir = env.get("PGUSHER_RUNDIR", DEFAULT_RUNDIR)
    return (env.get("PGUSHER_CONFIG", DEFAULT_CONFIG), os.path.join(rundir, "pgusher.ini"),
            os.path.join(rundir, "userlist.txt"))


def prepare(env: Mapping[str, str]) -> str:
    """Write the files for ``env``; the ini path pgusher is to run with."""
    config, generated, userlist = _paths(env)
    mounted = config if os.path.exists(config) else None
    if mounted is not None and not any(
            v.startswith(PREFIX) and v[len(PREFIX):] not in ("CONFIG", "RUNDIR", "ARGS")
            for v in env):
        return mounted  # the mounted file alone, as it is
    if "PGUSHER_USERLIST" in env:
        fd = os.open(userlist, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(env["PGUSHER_USERLIST"].rstrip("\n") + "\n")
    text = ini_from_env(env, mounted=mounted, userlist_path=userlist)
    with open(generated, "w") as fh:
        fh.write(text)
    return generated


def health(env: Mapping[str, str]) -> int:
    """0 when /health answers 200 on the configured HTTP endpoint."""
    config, generated, _ = _paths(env)
    path = generated if os.path.exists(generated) else config
    try:
        extra = load_config(path).pgusher
    except ConfigError as exc:
        print(f"unhealthy: {exc.message}", file=sys.stderr)
        return 1
    if not extra.http_port:
        print("unhealthy: http_port is not set", file=sys.stderr)
        return 1
    host = extra.http_addr if extra.http_addr not in ("", "0.0.0.0", "*", "::") else "127.0.0.1"
    try:
        with urllib.request.urlopen(f"http://{host}:{extra.http_port}/health",
                                    timeout=3) as reply:
            return 0 if reply.status == 200 else 1
    except (OSError, urllib.error.URLError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    if args[:1] == ["--health"]:
        return health(env)
    try:
        ini = prepare(env)
    except (ConfigError, OSError) as exc:
        print(f"pgusher entrypoint: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    os.execvp("pgusher", ["pgusher", *args, ini])


if __name__ == "__main__":
    sys.exit(main())
