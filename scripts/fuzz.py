#!/usr/bin/env python3
"""A long protocol fuzz run against a live pgusher in front of a throwaway PostgreSQL.

    .venv/bin/python scripts/fuzz.py [--cases 200000] [--mode transaction] [--seed 1]

Each case logs in (as most clients do, sometimes with a mangled startup packet), sends a
random mix of well-formed and broken frontend messages (wrong lengths, missing NULs, unknown
types, stray PasswordMessages, CopyData outside COPY, Terminate in the middle), cut into
random pieces, and reads until ReadyForQuery, an error that ends the session, EOF or a
timeout. A case that gets no answer is replayed straight to PostgreSQL, and counts as a
hang only if PostgreSQL answers it. A control client runs a query every 200 cases: it must
always be answered. At the end the script reports cases, outcomes, hangs, control failures,
Python tracebacks in the pooler's log, and the pooler's RSS before and after. It exits
non-zero on any traceback, hang or control failure.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import TRUST_HBA, PgCluster, start_pooler  # noqa: E402

SQL = [b"select 1", b"select pg_sleep(0.001)", b"begin", b"commit", b"rollback",
       b"set search_path = public", b"select set_config('a.b', 'c', false)",
       b"do $$begin null; end$$", b"select 1/0", b"prepare p as select 1", b"execute p",
       b"deallocate p", b"copy (select 1) to stdout", b"", b"select repeat('x', 70000)"]


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def startup(rng: random.Random) -> bytes:
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0app\0\0"
    packet = struct.pack("!i", len(body) + 4) + body
    if rng.random() < 0.03:  # a mangled startup packet
        cut = rng.randrange(len(packet))
        packet = packet[:cut] + bytes([rng.randrange(256)]) + packet[cut + 1:]
    return packet


def one_message(rng: random.Random) -> bytes:
    sql = rng.choice(SQL)
    name = rng.choice([b"", b"s1", b"s2"])
    choice = rng.randrange(14)
    if choice == 0:
        return msg(b"Q", sql + b"\0")
    if choice == 1:
        return msg(b"P", name + b"\0" + sql + b"\0" + b"\0\0")
    if choice == 2:
        return msg(b"B", b"\0" + name + b"\0" + b"\0\0\0\0\0\0")
    if choice == 3:
        return msg(b"E", b"\0" + b"\0\0\0\0")
    if choice == 4:
        return msg(b"D", b"S" + name + b"\0")
    if choice == 5:
        return msg(b"C", b"S" + name + b"\0")
    if choice == 6:
        return msg(b"S")
    if choice == 7:
        return msg(b"H")
    if choice == 8:
        return msg(b"d", rng.randbytes(rng.randrange(20)))
    if choice == 9:
        return msg(b"p", b"secret\0")  # a stray PasswordMessage
    if choice == 10:  # a body without its NUL
        return msg(rng.choice([b"P", b"B", b"D", b"C"]), name + sql)
    if choice == 11:  # an unknown type
        return msg(bytes([rng.randrange(256)]), rng.randbytes(rng.randrange(8)))
    if choice == 12:  # a wrong length
        good = msg(b"Q", sql + b"\0")
        return good[:1] + struct.pack("!i", rng.choice([-1, 0, 3, 1 << 30])) + good[5:]
    return msg(b"X")


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 5, 7, 64, len(data)])
        out.append(data[pos:pos + step])
        pos += step
    return out


def read_until_done(sock: socket.socket, timeout: float) -> str:
    """'ready', 'closed', or 'hang'."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return "closed"
            buf += chunk
            while len(buf) >= 5:
                kind = buf[:1]
                (length,) = struct.unpack("!i", buf[1:5])
                if len(buf) < 1 + length:
                    break
                if kind == b"Z":
                    return "ready"
                buf = buf[1 + length:]
    except TimeoutError:
        return "hang"
    except OSError:
        return "closed"


def run_case(port: int, hello: bytes, cuts: list[bytes], timeout: float) -> str:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return "connect failed"
    with sock:
        try:
            sock.sendall(hello)
            first = read_until_done(sock, timeout)
            if first != "ready":
                return first
            for piece in cuts:
                sock.sendall(piece)
            return read_until_done(sock, timeout)
        except OSError:
            return "closed"


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def control(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(startup(random.Random(0)))
            if read_until_done(sock, 5) != "ready":
                return False
            sock.sendall(msg(b"Q", b"select 1\0"))
            return read_until_done(sock, 5) == "ready"
    except OSError:
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cases", type=int, default=200000)
    p.add_argument("--mode", default="transaction")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--every", type=int, default=10000, help="progress line every N cases")
    args = p.parse_args()
    rng = random.Random(args.seed)
    pg = PgCluster(hba=TRUST_HBA)
    pg.start()
    try:
        proc = start_pooler(
            {"databases": {"app": f"host={pg.host} port={pg.port} dbname=postgres"},
             "pgbouncer": {"pool_mode": args.mode, "auth_type": "trust",
                           "default_pool_size": "4", "max_client_conn": "500"}},
            {"postgres": ""}, pg=pg, timeout=20)
        try:
            assert proc.pid is not None
            before = rss_kb(proc.pid)
            hangs = control_failures = 0
            outcomes: dict[str, int] = {}
            started = time.monotonic()
            for case in range(1, args.cases + 1):
                hello = startup(rng)
                data = b"".join(one_message(rng) for _ in range(rng.randrange(1, 8)))
                data += msg(b"S") + msg(b"Q", b"select 1\0")  # a skip to Sync ends there
                cuts = pieces(data, rng)
                first = run_case(proc.port, hello, cuts, args.timeout)
                if first == "hang" and run_case(pg.port, hello, cuts, args.timeout) == "hang":
                    first = "hang, as PostgreSQL"  # e.g. a length that promises more bytes
                elif first == "hang" and hangs < 3:
                    print(f"hang in case {case}: {data!r}", flush=True)
                outcomes[first] = outcomes.get(first, 0) + 1
                if first == "hang":
                    hangs += 1
                if case % 200 == 0 and not control(proc.port):
                    control_failures += 1
                    print(f"control query unanswered after case {case} "
                          f"({time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.1f})",
                          flush=True)
                if case % args.every == 0:
                    print(f"{case} cases, {time.monotonic() - started:.0f} s, {outcomes}",
                          flush=True)
            after = rss_kb(proc.pid)
            log = proc.log_text()
            tracebacks = log.count("Traceback")
            print(f"cases {args.cases}, outcomes {outcomes}, hangs {hangs}, control failures "
                  f"{control_failures}, tracebacks {tracebacks}, RSS {before} kB -> {after} kB, "
                  f"{time.monotonic() - started:.0f} s")
            return 1 if (hangs or control_failures or tracebacks) else 0
        finally:
            proc.stop()
    finally:
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
