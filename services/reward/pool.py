"""WorkerPool: N scoring processes the service owns, with a hard per-item deadline.

concurrent.futures.ProcessPoolExecutor cannot kill one stuck worker without breaking the whole pool,
so this pool keeps its own processes, each with a pipe: an item goes to an idle worker, a timer starts,
and a worker that misses the deadline is SIGKILLed and replaced while the other workers keep scoring.
A worker that dies on its own (a segfault, os._exit) costs its item (status `error`) and is replaced
the same way. The deadline covers the scoring itself, not the wait for a free worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence

from .pool_members import PoolTask, PoolWorker
from .scores import ScoreResult, error, timed_out
from .worker import worker_main

log = logging.getLogger(__name__)


class PoolClosed(RuntimeError):
    """The pool is shutting down and takes no more items."""


class WorkerPool:
    """Scoring processes with per-item deadlines; `score()` is safe to call from many coroutines at once."""

    def __init__(
        self,
        size: int,
        plugins: Sequence[str] = (),
        start_method: str = "forkserver",
        on_restart: Callable[[str], None] | None = None,
        start_timeout_s: float = 120.0,
    ):
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, got {size}")
        if start_method not in ("forkserver", "spawn"):
            # fork would copy the gRPC server's threads and locks into the child mid-flight.
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r}")
        self.size = size
        self.plugins = list(plugins)
        self.start_timeout_s = start_timeout_s
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Import sympy and math-verify once in the fork server, so a replacement worker is ready
            # in milliseconds instead of re-importing them for a second or more.
            self._ctx.set_forkserver_preload(["services.reward.worker", *self.plugins])
        self._on_restart = on_restart
        self._workers: set[PoolWorker] = set()
        self._idle: asyncio.Queue[PoolWorker | None] | None = None
        self._ids = itertools.count()
        self._closing = False
        self._background: set[asyncio.Task] = set()
        self.restarts = 0

    @property
    def alive(self) -> int:
        """Workers running or starting."""
        # tuple(): the metrics exporter reads this from its own thread; copying in C is atomic under the GIL.
        return sum(w.state != "dead" for w in tuple(self._workers))

    @property
    def busy(self) -> int:
        """Workers scoring an item right now."""
        return sum(w.state == "busy" for w in tuple(self._workers))

    async def start(self) -> None:
        """Start every worker and wait until each has loaded its verifiers."""
        self._idle = asyncio.Queue()
        try:
            await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        except BaseException:
            await self.close(timeout_s=1.0)
            raise

    async def score(self, verifier: str, completion: str, reference: str, deadline_s: float) -> ScoreResult:
        """Score one item in a worker; status `timeout` if scoring takes longer than `deadline_s`."""
        if self._idle is None:
            raise RuntimeError("start the pool first")
        loop = asyncio.get_running_loop()
        for _ in range(3):
            worker = await self._acquire()
            task = PoolTask(next(self._ids), loop.create_future(), deadline_s)
            worker.task, worker.state = task, "busy"
            try:
                worker.conn.send((task.id, verifier, completion, reference))
            except (OSError, ValueError):
                # It died while idle; the item never started, so it may go to another worker.
                worker.task = None
                self._retire(worker, "crash")
                continue
            # The timer belongs to the pool, not to this coroutine: a caller that gives up (a cancelled
            # RPC) must not leave a stuck worker behind.
            task.timer = loop.call_later(deadline_s, self._on_deadline, worker, task)
            return await task.future
        return error("no worker could take the item (workers keep dying)")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop every worker: items still scoring get `timeout_s` to finish, then their workers are killed."""
        if self._closing:
            return
        self._closing = True
        for t in list(self._background):
            t.cancel()
        if self._idle is not None:
            self._idle.put_nowait(None)  # wakes the callers waiting for a worker: see _acquire
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for w in list(self._workers):
            if w.state == "idle":
                w.discard(farewell=True)
        for w in list(self._workers):
            await loop.run_in_executor(None, w.process.join, max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                await loop.run_in_executor(None, w.process.join, 5.0)
            w.discard()
            if w.task is not None:
                w.task.finish(error("the reward service shut down before this item was scored"))
        self._workers.clear()

    async def _acquire(self) -> PoolWorker:
        while True:
            worker = await self._idle.get() if not self._closing else None
            if worker is None or self._closing:
                # Pass the wake-up on: every caller still waiting must learn that the pool closed.
                self._idle.put_nowait(None)
                raise PoolClosed("the worker pool is closed")
            if worker.state == "idle":
                return worker
            # A worker that died while idle is still queued; its replacement is queued separately.

    async def _spawn(self) -> PoolWorker:
        loop = asyncio.get_running_loop()
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main, args=(child, self.plugins), name="asympo-reward-worker", daemon=True
        )
        process.start()
        child.close()  # the parent's copy would keep the pipe open after the worker dies, hiding its EOF
        worker = PoolWorker(process, parent, loop.create_future(), pid=process.pid)
        self._workers.add(worker)
        loop.add_reader(parent.fileno(), self._on_readable, worker)
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), self.start_timeout_s)
        except BaseException:
            worker.discard()
            process.kill()
            await loop.run_in_executor(None, process.join, 5.0)
            self._workers.discard(worker)
            raise
        return worker

    def _on_readable(self, worker: PoolWorker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            if worker.task is not None and worker.task.timer is not None:
                # The item failed now; its deadline must not fire during the reaping and call it a timeout.
                worker.task.timer.cancel()
            self._retire(worker, "crash")
            return
        kind = message[0]
        if kind == "done":
            task = worker.task
            if task is None or task.id != message[1]:
                return
            if task.timer is not None:
                task.timer.cancel()
            worker.task, worker.state = None, "idle"
            task.finish(ScoreResult(*message[2:]))
            self._idle.put_nowait(worker)
        elif kind == "ready":
            worker.state = "idle"
            if not worker.ready.done():
                worker.ready.set_result(None)
            self._idle.put_nowait(worker)
        elif kind == "failed":
            if not worker.ready.done():
                worker.ready.set_exception(RuntimeError(f"reward worker failed to start: {message[1]}"))
            worker.discard()

    def _on_deadline(self, worker: PoolWorker, task: PoolTask) -> None:
        if worker.task is not task:
            return
        worker.process.kill()
        log.warning(
            "item missed its deadline; worker killed",
            extra={"pid": worker.pid, "deadline_s": task.deadline_s},
        )
        task.finish(timed_out(f"scoring took longer than {task.deadline_s:g} s; worker killed"))
        worker.task = None
        self._retire(worker, "timeout")

    def _retire(self, worker: PoolWorker, reason: str) -> None:
        if worker.state == "dead":
            return
        starting = worker.state == "starting"
        worker.discard()
        if starting:
            if not worker.ready.done():
                worker.ready.set_exception(RuntimeError("reward worker exited during start-up"))
            return  # whoever is starting it (start() or a replacement loop) handles the failure
        if not self._closing:
            self._run_in_background(self._replace(worker, reason))

    async def _replace(self, worker: PoolWorker, reason: str) -> None:
        exitcode = await worker.reap()
        self._workers.discard(worker)
        if worker.task is not None:  # a crash, not a deadline: the item's result waited for the exit code
            worker.task.finish(error(f"worker process died (exit code {exitcode}) while scoring"))
            worker.task = None
        self.restarts += 1
        if self._on_restart is not None:
            self._on_restart(reason)
        log.warning(
            "replacing reward worker", extra={"pid": worker.pid, "reason": reason, "exitcode": exitcode}
        )
        backoff = 0.5
        while not self._closing:
            try:
                await self._spawn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not start a replacement worker; retrying", extra={"backoff_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _run_in_background(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)
