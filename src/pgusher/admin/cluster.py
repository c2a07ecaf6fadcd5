"""The console and the metrics of a pooler run as several workers.

Strategy: the worker that an operator (or a scraper) reaches runs the command itself and
sends the same text to each sibling's private socket at the same time (workers/siblings.py);
then admin/merge.py folds the answers into one. Commands that change state (PAUSE, RELOAD,
KILL, SET, ...) thus act on every worker, and the reply waits until all have done it.
SHUTDOWN goes to the supervisor instead, which stops every worker. A sibling that fails to
answer turns a changing command into an error and is left out of a SHOW.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from ..metrics import prometheus
from ..metrics.snapshot import json_snapshot
from ..protocol import messages as m
from ..workers.siblings import Reply, SiblingCall, parse_reply
from . import columns as c
from .merge import merge_prometheus, merge_show, merge_snapshot
from .parse import ConsoleError, SetCommand, parse

if TYPE_CHECKING:
    from ..app import Application
    from .session import ConsoleSession

INTERNAL_PREFIX = "PGUSHER INTERNAL "
_WAITING = frozenset({"pause", "suspend", "wait_close"})
ANSWER_TIMEOUT = 30.0


def internal_answer(app: Application, text: str) -> bytes:
    """Questions only siblings ask: this worker's /metrics page or dashboard snapshot."""
    what = text[len(INTERNAL_PREFIX):].strip().lower()
    if what == "metrics":
        value = prometheus.render(app)
    elif what == "snapshot":
        value = json.dumps(json_snapshot(app))
    else:
        raise ConsoleError(f"invalid command '{text}'")
    return (m.row_description([(what, c.TEXT)]) + m.data_row([value])
            + m.command_complete("SHOW") + m.READY_IDLE)


def _calls(app: Application, text: str) -> list[SiblingCall]:
    worker = app.worker
    assert worker is not None
    return [SiblingCall(worker.sibling_path(i), text) for i in worker.siblings()]


async def ask_all(session: ConsoleSession, text: str) -> bytes:
    try:
        cmd = parse(text)
    except ConsoleError:
        return await session.local_reply(text)
    name = "set" if isinstance(cmd, SetCommand) else cmd.name
    if name == "shutdown":
        return await session.local_reply(text)  # the supervisor tells every worker
    calls = _calls(session.app, text)
    session._calls = calls
    timeout = None if name in _WAITING else ANSWER_TIMEOUT
    tasks = [asyncio.ensure_future(call.run(timeout)) for call in calls]
    local = await session.local_reply(text)
    replies = list(await asyncio.gather(*tasks))
    if not local:
        return b""
    mine = parse_reply(local)
    if name in ("show", "select") and not isinstance(cmd, SetCommand):
        return merge_show(cmd.arg.lower(), [mine, *replies]).encode()
    return _combine(name, mine, replies).encode()


def _combine(name: str, mine: Reply, others: list[Reply]) -> Reply:
    """A command that changes state succeeded only if it did on every worker."""
    if mine.error is not None:
        if name == "kill_client":  # the client lives on one worker: found there is enough
            for other in others:
                if other.error is None:
                    return other
        return mine
    if name != "kill_client":
        for other in others:
            if other.error is not None:
                return other
    return mine


async def tell_siblings(app: Application, text: str) -> None:
    await asyncio.gather(*(call.run(ANSWER_TIMEOUT) for call in _calls(app, text)))


async def _gather_internal(app: Application, what: str) -> list[str]:
    replies = await asyncio.gather(*(call.run(ANSWER_TIMEOUT)
                                     for call in _calls(app, INTERNAL_PREFIX + what)))
    return [str(r.rows[0][0]) for r in replies if r.error is None and r.rows]


async def metrics_text(app: Application) -> str:
    own = prometheus.render(app)
    if app.worker is None:
        return own
    return merge_prometheus([own, *await _gather_internal(app, "METRICS")])


async def snapshot(app: Application) -> dict[str, object]:
    own = json_snapshot(app)
    if app.worker is None:
        return own
    others = [json.loads(text) for text in await _gather_internal(app, "SNAPSHOT")]
    return merge_snapshot([own, *others])
