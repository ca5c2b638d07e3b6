"""A genie-worker that also writes down where each Infer call's time goes, for served_calibration.py --timings.

    python -m genie.benchmarks.worker_timing --timings FILE [genie-worker arguments]

It is the real worker (genie.workers.cli.main, the same server, engine thread and fragments) with three spans
timed around what it runs, one JSON line per Infer call appended to FILE:

- `servicer_s`: WorkerServicer.Infer on the worker's event loop, entry to return (the request already parsed by
  gRPC; the response not yet serialized);
- `queued_s`: from that entry until the engine thread starts the call (the hop to the engine thread);
- `engine_s`: the call on the engine thread: tensors decoded, checked, the forward, outputs encoded;
- `forward_s`, `forward_cpu_s`, `forward_runqueue_s`: StatelessFragment._forward (the span compute_seconds
  reports) in wall time, in the engine thread's own CPU time, and the time the thread was runnable but waited
  for a core (Linux /proc/thread-self/schedstat). Wall minus CPU minus run-queue is time the thread slept inside
  the forward: waiting for the GIL, or for a lock.

The extra reads cost about 5 us a call, inside `forward_s` (two thread-CPU clock reads and two schedstat reads);
the benchmark subtracts nothing, and says so.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

_schedstat: dict[int, int] = {}  # thread id -> its open /proc/thread-self/schedstat


def _runqueue_ns() -> int:
    """Nanoseconds this thread has waited on a run queue since it started (schedstat's second field)."""
    tid = threading.get_ident()
    fd = _schedstat.get(tid)
    if fd is None:
        fd = _schedstat[tid] = os.open("/proc/thread-self/schedstat", os.O_RDONLY)  # this thread's own
    return int(os.pread(fd, 96, 0).split()[1])


def install(path: str) -> None:
    from genie.workers import server
    from genie.workers.stateless.fragment import StatelessFragment

    out = open(path, "a", buffering=1)  # a line at a time: the worker exits by SIGTERM
    local = threading.local()
    entered: dict[int, float] = {}  # id(request) -> when WorkerServicer.Infer took it

    forward = StatelessFragment._forward

    def timed_forward(self, args):
        wall, cpu, queue = time.perf_counter(), time.thread_time(), _runqueue_ns()
        try:
            return forward(self, args)
        finally:
            local.forward = (time.perf_counter() - wall, time.thread_time() - cpu, (_runqueue_ns() - queue) / 1e9)

    infer = server._infer

    def timed_infer(fragment, request):
        started = time.perf_counter()
        local.forward = (0.0, 0.0, 0.0)
        response = infer(fragment, request)
        wall, cpu, queue = local.forward
        local.call = {"engine_s": time.perf_counter() - started, "queued_s": started - entered.pop(id(request), started),
                      "forward_s": wall, "forward_cpu_s": cpu, "forward_runqueue_s": queue,
                      "compute_seconds": response.compute_seconds}
        response_calls[id(response)] = local.call
        return response

    response_calls: dict[int, dict] = {}
    servicer_infer = server.WorkerServicer.Infer

    async def timed_servicer(self, request, context):
        started = time.perf_counter()
        entered[id(request)] = started
        response = await servicer_infer(self, request, context)
        call = response_calls.pop(id(response), None)
        if call is not None:
            rows = next((int(t.shape[0]) for t in request.inputs.values() if t.shape), 0)
            out.write(json.dumps({"t": time.time(), "fragment_id": request.fragment_id, "rows": rows,
                                  "servicer_s": time.perf_counter() - started, **call}) + "\n")
        return response

    StatelessFragment._forward = timed_forward
    server._infer = timed_infer
    server.WorkerServicer.Infer = timed_servicer


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--timings" not in argv:
        sys.exit("worker_timing: give --timings FILE, then genie-worker's own arguments")
    i = argv.index("--timings")
    path = argv[i + 1]
    del argv[i:i + 2]
    install(path)
    from genie.workers.cli import main as worker_main

    worker_main(argv)


if __name__ == "__main__":
    main()
