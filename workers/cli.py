"""`genie-worker`: one worker process serving the Worker gRPC service.

Once serving it prints exactly one line, `genie-worker ready on HOST:PORT`, so a launcher that asked for
port 0 learns the real one. SIGTERM or SIGINT stop it with a short grace period and exit 0; bad flags, a
missing link credential or a busy port print one line on stderr and exit 2.

Every call must carry the link token, given in $GENIE_WORKER_TOKEN (what genie-serve does for the workers
it launches) or in `--token-file PATH`, never on the command line, where every local user could read it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
from typing import TYPE_CHECKING

from genie.auth import LINK_TOKEN_ENV, KeySet, is_loopback, read_key_file
from genie.errors import ConfigError, GenieError
from genie.ports import check_port_free

if TYPE_CHECKING:
    from genie.workers.programs.limits import ProgramLimits

log = logging.getLogger("genie.worker")

GRACE_S = 2.0
LOG_LEVELS = ("debug", "info", "warning", "error")
DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"genie-worker: {message} (see genie-worker --help)\n")


def parse_args(argv: list[str] | None, env_token: str | None = None) -> argparse.Namespace:
    """The flags, checked; `args.link_keys` holds the accepted link tokens (`env_token` is $GENIE_WORKER_TOKEN)."""
    parser = _Parser(prog="genie-worker", description="Serve model fragments over gRPC.")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on; port 0 picks a free port")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--kv-cache-bytes", type=int, default=None,
                        help="KV budget of a fragment that asks for 0 (default: the engine's, 256 MiB)")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="stop when this process (the one that started the worker) is gone")
    parser.add_argument("--token-file", default=None, metavar="PATH",
                        help=f"file holding the link token, one accepted token a line (or set {LINK_TOKEN_ENV})")
    parser.add_argument("--artifact-root", action="append", default=[], metavar="DIR",
                        help="load model folders only from inside DIR (repeatable; default: from anywhere)")
    parser.add_argument("--program-max-output-elements", type=int, default=None, metavar="N",
                        help="genie.client programs: elements of any one op's output at most (default: 2^28)")
    parser.add_argument("--program-max-run-s", type=float, default=None, metavar="S",
                        help="genie.client programs: seconds of one RunProgram at most (default: 60)")
    parser.add_argument("--program-client-bytes", type=int, default=None, metavar="N",
                        help="genie.client programs: bytes of weights plus kept tensors per client (default: 2 GiB)")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="accept calls without a link token; for local experiments only, on a loopback --listen")
    args = parser.parse_args(argv)
    args.host, args.port = _split_listen(parser, args.listen)
    if not DEVICE_RE.fullmatch(args.device):
        parser.error(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.kv_cache_bytes is not None and args.kv_cache_bytes < 1:
        parser.error(f"--kv-cache-bytes must be positive, got {args.kv_cache_bytes}")
    for flag in ("program_max_output_elements", "program_max_run_s", "program_client_bytes"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {value!r}")
    if args.parent_pid is not None and args.parent_pid != os.getppid():
        parser.error(f"--parent-pid {args.parent_pid} is not this worker's parent process ({os.getppid()})")
    for root in args.artifact_root:
        if not os.path.isdir(root):
            parser.error(f"--artifact-root {root!r} is not a directory")
    args.link_keys = _link_keys(parser, args, env_token)
    return args


def program_limits(args: argparse.Namespace) -> ProgramLimits:
    """The --program-* flags given, over the defaults of workers/programs/limits.py."""
    from genie.workers.programs.limits import ProgramLimits
    given = {"max_output_elements": args.program_max_output_elements, "max_run_seconds": args.program_max_run_s,
             "client_bytes": args.program_client_bytes}
    return ProgramLimits(**{k: v for k, v in given.items() if v is not None})


def _link_keys(parser: argparse.ArgumentParser, args: argparse.Namespace, env_token: str | None) -> KeySet:
    tokens = [env_token.strip()] if env_token and env_token.strip() else []
    if args.token_file:
        try:
            tokens += read_key_file(args.token_file, "--token-file")
        except ConfigError as exc:
            parser.error(str(exc))
    args.peer_token = tokens[0] if tokens else None  # presented to the other workers of the pool (KV handoff)
    if args.insecure_no_auth:
        if tokens:
            parser.error(f"--insecure-no-auth was given together with a link token ({LINK_TOKEN_ENV} or "
                         "--token-file); drop one of them")
        if not is_loopback(args.host):
            parser.error(f"--insecure-no-auth is for local experiments only and needs a loopback --listen "
                         f"(127.0.0.1, ::1), got {args.host!r}; give the worker a link token instead")
        return KeySet()
    if not tokens:
        parser.error(f"no link credential: set {LINK_TOKEN_ENV}=TOKEN in the environment or pass --token-file "
                     "PATH (genie-serve does this for the workers it launches); --insecure-no-auth on a "
                     "loopback --listen skips it, for local experiments only")
    return KeySet(tokens)


def _split_listen(parser: argparse.ArgumentParser, listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        parser.error(f"--listen must be HOST:PORT with a port in 0..65535 (e.g. 127.0.0.1:0), got {listen!r}")
    return host, int(port)


async def serve(args: argparse.Namespace) -> None:
    import torch

    from genie.workers.device import probe_device
    from genie.workers.engine import resolve_device, resolve_dtype
    from genie.workers.artifacts import ArtifactGuard
    from genie.workers.server import WorkerServicer, engine_thread, start_server

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    engine = engine_thread(args.threads)
    facts = await asyncio.get_running_loop().run_in_executor(
        engine, probe_device, device, resolve_dtype("auto", device)
    )
    artifacts = ArtifactGuard(args.artifact_root)
    servicer = WorkerServicer(device, facts, default_kv_bytes=args.kv_cache_bytes, engine=engine, artifacts=artifacts,
                              peer_token=args.peer_token, program_limits=program_limits(args))
    server, port = await start_server(servicer, f"{args.host}:{args.port}", link_keys=args.link_keys)
    _warn_about_openings(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "serving on %s (%s, %s): %.1f GB/s copy, %.2f TFLOP/s %s matmul",
        device, facts.name, f"{torch.get_num_threads()} threads", facts.bandwidth_gbps, facts.tflops, facts.dtype,
    )
    print(f"genie-worker ready on {args.host}:{port}", flush=True)
    watch = asyncio.create_task(_watch_parent(args.parent_pid, stop)) if args.parent_pid else None
    await stop.wait()
    if watch is not None:
        watch.cancel()
    log.info("stopping (grace %.1f s)", GRACE_S)
    servicer.stopping = True
    await server.stop(GRACE_S)
    servicer.close()
    log.info("stopped")


def _warn_about_openings(args: argparse.Namespace) -> None:
    if args.insecure_no_auth:
        log.warning("--insecure-no-auth: any process on this machine can drive this worker; local experiments only")
    if not args.artifact_root:
        log.warning("no --artifact-root: this worker loads a model folder from any path a caller names; "
                    "pass --artifact-root DIR to confine it")


async def _watch_parent(pid: int, stop: asyncio.Event, every_s: float = 1.0) -> None:
    """Sets `stop` once `pid` is no longer this process's parent: a launcher killed with SIGKILL cannot stop
    its workers, and they would hold their memory and ports forever."""
    while os.getppid() == pid:
        await asyncio.sleep(every_s)  # polled: Linux's parent-death signal follows the parent *thread*
    log.warning("the process that started this worker (pid %d) is gone; stopping", pid)
    stop.set()


def _exit_quietly(signum: int, frame: object) -> None:
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    # Until the server installs its own handlers, a stop signal during start-up exits 0 as well.
    signal.signal(signal.SIGTERM, _exit_quietly)
    signal.signal(signal.SIGINT, _exit_quietly)
    # Taken out of the environment so nothing this process starts (compiler workers, say) inherits it.
    args = parse_args(argv, os.environ.pop(LINK_TOKEN_ENV, None))
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        check_port_free(args.host, args.port)
        asyncio.run(serve(args))
    except GenieError as exc:
        sys.stderr.write(f"genie-worker: {exc}\n")
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
