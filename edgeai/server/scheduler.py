"""Admission and execution of generations: a bounded queue per model, deadlines, cancellation.

One `Job` is one generation (one choice of one prompt). A request submits its jobs together (all or none:
429 when the queue cannot take them) and reads their events from one asyncio queue, tagged with the job's
index, in the order the engine produces them.

How jobs share an engine: each model has an `Executor` with `slots` worker threads; a thread takes the next
queued job and runs it to the end. An LLM loaded with max_batch=N (`edgeai serve --batch N`, the default 4)
gets N slots: N jobs run at once and the continuous-batching engine (csrc/batch_engine.h) shares each forward
step between them; a job joins between steps and leaves when it ends, without stalling the others, and
`stop(job)` cancels that one row (`Stream.cancel`). With max_batch=1 the executor has one slot and requests
take turns; `stop` is then `llm.cancel()`, which stops the generation in flight, i.e. the job's own.

Cancelling a job (client gone, deadline, shutdown) sets its flag; a queued job is dropped when its turn
comes, a running one is stopped at its next token: the worker calls `stop` when it sees the flag at the next
text piece, and a watchdog repeats it every WATCHDOG_S while the job runs, which covers a long prefill (no
pieces yet) and a cancel that arrived just before the engine began the generation.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Callable, List, Optional

from .errors import APIError

WATCHDOG_S = 0.1


class Job:
    def __init__(self, index: int, prompt_ids: List[int], kwargs: dict, deadline: float,
                 sink: "asyncio.Queue", loop: asyncio.AbstractEventLoop):
        self.index, self.prompt_ids, self.kwargs, self.deadline = index, prompt_ids, kwargs, deadline
        self._sink, self._loop = sink, loop
        self._cancel = threading.Event()
        self.cancel_reason: Optional[str] = None
        self.running = False
        self.stream = None  # the engine's Stream once the job runs
        self.submitted = time.monotonic()

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._cancel.is_set():
            self.cancel_reason = reason
            self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def emit(self, kind: str, value) -> None:
        """From a worker thread: (job index, "text" | "done" | "error", value) to the request's queue."""
        try:
            self._loop.call_soon_threadsafe(self._sink.put_nowait, (self.index, kind, value))
        except RuntimeError:  # the event loop is gone (server stopping): nobody is listening
            pass


class Executor:
    """Runs jobs on one model's engine. `run(job, on_text)` returns the edgeai Generation."""

    def __init__(self, llm):
        self.llm = llm
        self.slots = max(1, int(getattr(llm, "max_batch", 1)))

    def run(self, job: Job, on_text: Callable[[str], None]):
        it = self.llm.stream(job.prompt_ids, **job.kwargs)
        job.stream = it  # what `stop` cancels when rows are batched
        try:
            for piece in it:
                if job.cancelled or time.monotonic() > job.deadline:
                    if not job.cancelled:
                        job.cancel("timeout")
                    self.stop(job)  # keep draining: the generation ends at its next token, with exact counts
                    continue
                on_text(piece)
        finally:
            it.close()
        return it.generation  # this stream's own (per-thread last_generation would do too)

    def stop(self, job: Job) -> None:
        if self.slots > 1:
            stream = job.stream
            if stream is not None:  # not started yet: the watchdog comes back every WATCHDOG_S
                stream.cancel()
        else:
            self.llm.cancel()


class ModelQueue:
    def __init__(self, name: str, executor: Executor, on_depth: Callable[[], None]):
        self.name, self.executor = name, executor
        self.jobs: "collections.deque[Job]" = collections.deque()
        self.running: List[Job] = []
        self.cond = threading.Condition()
        self.on_depth = on_depth
        self.threads = [threading.Thread(target=self._work, name=f"edgeai-serve-{name}-{i}", daemon=True)
                        for i in range(executor.slots)]
        self.closed = False
        for t in self.threads:
            t.start()

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.jobs and not self.closed:
                    self.cond.wait()
                if self.closed and not self.jobs:
                    return
                job = self.jobs.popleft()
                job.running = True
                self.running.append(job)
            self.on_depth()
            try:
                self._run(job)
            finally:
                with self.cond:
                    self.running.remove(job)
                    job.running = False

    def _run(self, job: Job) -> None:
        if job.cancelled:
            job.emit("error", APIError(503, f"request {job.cancel_reason} before it started",
                                       code=job.cancel_reason))
            return
        if time.monotonic() > job.deadline:
            job.emit("error", APIError(503, "the request's deadline passed while it waited in the queue; "
                                            "retry later or raise --timeout", code="timeout"))
            return
        try:
            gen = self.executor.run(job, lambda piece: job.emit("text", piece))
        except (ValueError, TypeError) as exc:  # bad input the checks before admission could not see
            job.emit("error", APIError(400, str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the client as a server error, never a hang
            job.emit("error", APIError(500, f"generation failed: {type(exc).__name__}: {exc}"))
        else:
            job.emit("done", gen)


class Scheduler:
    def __init__(self, executors: dict, max_queue: int = 16, on_depth: Optional[Callable[[int], None]] = None):
        self.max_queue = max_queue
        self._on_depth = on_depth or (lambda depth: None)
        self.queues = {name: ModelQueue(name, ex, self._report_depth) for name, ex in executors.items()}
        self.closed = False
        self._watchdog_stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="edgeai-serve-watchdog", daemon=True)
        self._watchdog.start()

    def depth(self) -> int:
        return sum(len(q.jobs) for q in self.queues.values())

    def in_flight(self) -> int:
        return sum(len(q.running) for q in self.queues.values())

    def _report_depth(self) -> None:
        self._on_depth(self.depth())

    def submit(self, model: str, jobs: List[Job]) -> None:
        """Queue all of a request's jobs, or none: 429 when the queue is full, 503 when shutting down."""
        if self.closed:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        q = self.queues[model]
        with q.cond:
            if self.depth() + len(jobs) > self.max_queue:
                raise APIError(429, f"the request queue is full ({self.max_queue} waiting generations); "
                                    f"retry shortly", code="queue_full", headers={"Retry-After": "1"})
            q.jobs.extend(jobs)
            q.cond.notify(len(jobs))
        self._report_depth()

    def _watch(self) -> None:
        while not self._watchdog_stop.wait(WATCHDOG_S):
            now = time.monotonic()
            for q in self.queues.values():
                # Under the queue's lock no worker can start its next job, so `stop` reaches this job's
                # generation (or an idle engine, where a stale cancel is cleared when the next one starts).
                with q.cond:
                    for job in q.running:
                        if not job.cancelled and now > job.deadline:
                            job.cancel("timeout")
                        if job.cancelled:
                            q.executor.stop(job)

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, cancel queued and running ones, wait for the workers."""
        self.closed = True
        for q in self.queues.values():
            with q.cond:
                for job in list(q.jobs) + q.running:
                    job.cancel("shutting_down")
                q.closed = True
                q.cond.notify_all()
        deadline = time.monotonic() + timeout
        for q in self.queues.values():
            for t in q.threads:
                t.join(max(0.0, deadline - time.monotonic()))
        self._watchdog_stop.set()
        self._watchdog.join(1.0)
