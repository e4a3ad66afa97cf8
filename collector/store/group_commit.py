"""Group commit: batches that arrive while a commit is under way are written together in the next one.

A durable commit costs about the same for one batch as for ten (an fsync, the WAL frames of the pages
every batch touches: the series index's last leaves, `series`, `probes`), so batches stored at the same
time share one transaction instead of queueing for one each. Nothing waits on a timer: a batch that
finds no commit under way is written at once; those arriving during it go together next, up to
`max_results` results a transaction.

Every caller is answered after the transaction holding its batch committed, with its own outcome:
batches of one group are written one after another in it, so a batch repeated inside a group is
recognised as a duplicate as it would be across two. If a group of several batches fails, nothing of
it was committed (the transaction rolled back), and each of its batches is written again in a
transaction of its own, so that every batch is answered as if it had been written alone: a failure
that belongs to one batch fails only that one, and a store that cannot commit at all fails each.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from qiancheng.core.logs import kv
from qiancheng.core.wire import Batch, Sent

from ..records import BatchOutcome

__all__ = ["GroupCommit", "BatchWrite", "WriteGroup", "MAX_GROUP_RESULTS"]

log = logging.getLogger("qiancheng.collector.store")

class BatchWrite(NamedTuple):
    """One batch to write: the batch, when it was received (UTC ns), and its results as sent, if kept."""

    batch: Batch
    received_ns: int
    sent: Sent | None = None


#: writes batches in one transaction, in order, and returns their outcomes in order; raises, with nothing
#: committed, if the transaction failed
WriteGroup = Callable[[Sequence[BatchWrite]], Awaitable[list[BatchOutcome]]]

#: the most results one transaction takes (it holds its pages in memory until it commits); a single
#: batch larger than this is still written, alone
MAX_GROUP_RESULTS: Final = 10_000


@dataclass(slots=True)
class _Waiting:
    write: BatchWrite
    answer: asyncio.Future[BatchOutcome]


class GroupCommit:
    """Stores batches through `write`, those waiting together, each caller answered after its commit."""

    def __init__(self, write: WriteGroup, max_results: int = MAX_GROUP_RESULTS) -> None:
        self._write = write
        self._max_results = max_results
        self._waiting: deque[_Waiting] = deque()
        self._committer: asyncio.Task[None] | None = None
        #: transactions committed and batches written in them (the store's own accounting, for tests)
        self.groups = 0
        self.batches = 0

    async def store(self, batch: Batch, received_ns: int, sent: Sent | None = None) -> BatchOutcome:
        """Store one batch; returns once the transaction holding it committed, raises what failed it."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(BatchWrite(batch, received_ns, sent), loop.create_future())
        self._waiting.append(waiting)
        if self._committer is None:
            self._committer = loop.create_task(self._commit_waiting(), name="group-commit")
        return await waiting.answer

    async def drain(self) -> None:
        """Wait until every batch handed to `store` so far has been written (or failed)."""
        while self._committer is not None:
            await asyncio.wait({self._committer})

    async def _commit_waiting(self) -> None:
        group: list[_Waiting] = []
        try:
            while self._waiting:
                group = self._take_group()
                await self._commit(group)
                group = []
        except BaseException as error:
            # cancelled (the loop is stopping) or a bug: no batch it held may be left waiting for ever;
            # none of them is answered 200, so their probes keep them and send them again
            for waiting in (*group, *self._waiting):
                _settle(waiting, error)
            self._waiting.clear()
            raise
        finally:
            self._committer = None

    def _take_group(self) -> list[_Waiting]:
        group = [self._waiting.popleft()]
        results = len(group[0].write.batch.results)
        while self._waiting and results + len(self._waiting[0].write.batch.results) <= self._max_results:
            waiting = self._waiting.popleft()
            results += len(waiting.write.batch.results)
            group.append(waiting)
        return group

    async def _commit(self, group: list[_Waiting]) -> None:
        try:
            outcomes = await self._write([waiting.write for waiting in group])
        except Exception as error:
            if len(group) == 1:
                _settle(group[0], error)
                return
            log.warning(kv("group_commit_failed", batches=len(group), error=error, action="each batch written alone"))
            for waiting in group:
                await self._commit([waiting])
            return
        self.groups += 1
        self.batches += len(group)
        for waiting, outcome in zip(group, outcomes, strict=True):
            _settle(waiting, outcome)


def _settle(waiting: _Waiting, outcome: BatchOutcome | BaseException) -> None:
    """Answer a caller, unless it stopped waiting (cancelled: its batch may still have been stored)."""
    if waiting.answer.done():
        return
    if isinstance(outcome, asyncio.CancelledError):
        waiting.answer.cancel()
    elif isinstance(outcome, BaseException):
        waiting.answer.set_exception(outcome)
    else:
        waiting.answer.set_result(outcome)
