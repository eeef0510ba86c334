"""The pool's members: one item being scored (PoolTask) and one worker process with its pipe (PoolWorker)."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
from dataclasses import dataclass, field

from .scores import ScoreResult


@dataclass(eq=False)
class PoolTask:
    """An item handed to a worker: its result future and deadline timer."""

    id: int
    future: asyncio.Future
    deadline_s: float
    timer: asyncio.TimerHandle | None = None

    def finish(self, result: ScoreResult) -> None:
        """Give the caller its result (once) and stop the deadline timer."""
        if self.timer is not None:
            self.timer.cancel()
        if not self.future.done():
            self.future.set_result(result)


@dataclass(eq=False)
class PoolWorker:
    """A scoring process, the parent's end of its pipe, and what it is doing."""

    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    ready: asyncio.Future
    state: str = "starting"  # starting | idle | busy | dead
    task: PoolTask | None = None
    pid: int | None = field(default=None)

    def discard(self, farewell: bool = False) -> None:
        """Stop watching the worker and close its pipe; `farewell` first asks an idle one to exit."""
        if self.state == "dead":
            return
        self.state = "dead"
        try:
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            if farewell:
                self.conn.send(None)  # an idle worker exits on None; its EOF is no longer watched
        except (OSError, ValueError):
            pass
        self.conn.close()

    async def reap(self) -> int | None:
        """Wait for the process to exit (killing it if it lingers); its exit code."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.process.join, 5.0)
        if self.process.is_alive():
            self.process.kill()
            await loop.run_in_executor(None, self.process.join, 5.0)
        return self.process.exitcode
