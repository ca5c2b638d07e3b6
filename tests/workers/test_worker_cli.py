"""`genie-worker` as a real process: flags, the ready line, signals, and spawn_worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from genie.auth import LINK_TOKEN_ENV
from genie.errors import Unavailable
from genie.workers.client import LinkRefused, WorkerClient
from genie.workers.process import spawn_worker

CLI = [sys.executable, "-m", "genie.workers.cli"]
TOKEN = "cli-test-token"


def token_env(token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != LINK_TOKEN_ENV}
    return env if token is None else {**env, LINK_TOKEN_ENV: token}


def run_cli(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=token_env(token))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nonsense"], "--listen must be HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "--listen must be HOST:PORT"),
        (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--threads", "many"], "invalid int value: 'many'"),
        (["--log-level", "loud"], "invalid choice: 'loud'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--listen", "no-such-host.invalid:0"], "unknown host"),
        (["--parent-pid", "1"], "--parent-pid 1 is not this worker's parent process"),
        (["--artifact-root", "/no/such/dir"], "--artifact-root '/no/such/dir' is not a directory"),
        (["--token-file", "/no/such/file"], "cannot read --token-file /no/such/file"),
        (["--insecure-no-auth"], "--insecure-no-auth was given together with a link token"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], message: str) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_busy_port_exits_2_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("--listen", f"127.0.0.1:{port}", "--device", "cpu")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "pick another port" in done.stderr


def test_cuda_without_a_gpu_exits_2_with_one_line() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = run_cli("--device", "cuda:0")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "cuda" in done.stderr.lower(), done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ready_line_then_signal_exits_0(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [*CLI, "--listen", "127.0.0.1:0", "--device", "cpu", "--threads", "1", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=token_env(),
    )
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("genie-worker ready on 127.0.0.1:"), proc.stderr.read() if not ready else ready
        port = int(ready.rsplit(":", 1)[1])
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert stdout == ""  # the ready line was the only one
    assert "Traceback" not in stderr


async def test_spawn_worker_serves_and_stops_cleanly() -> None:
    with spawn_worker(device="cpu", threads=1) as worker:
        assert worker.alive() and worker.pid > 0
        assert worker.address.startswith("127.0.0.1:")
        assert len(worker.token) >= 32 and worker.token not in repr(worker)
        async with WorkerClient(worker.address, timeout=10, token=worker.token) as client:
            assert (await client.health()).serving
            info = await client.info()
            assert info.device == "cpu" and "llm.decoder" in info.capabilities
            assert info.bandwidth_gbps > 0 and info.tflops > 0 and info.fragments == ()
        assert worker.stop() == 0
    assert not worker.alive()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], f"no link credential: set {LINK_TOKEN_ENV}=TOKEN in the environment or pass --token-file PATH"),
        (["--insecure-no-auth", "--listen", "0.0.0.0:0"], "--insecure-no-auth is for local experiments only"),
    ],
    ids=["no-token", "insecure-off-loopback"],
)
def test_worker_without_a_link_token_refuses_to_start(args: list[str], message: str) -> None:
    done = run_cli("--device", "cpu", *args, token=None)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


async def test_token_file_and_insecure_mode(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("# the link token\nfile-token\n")
    with spawn_worker(device="cpu", threads=1, extra_args=["--token-file", str(path)], env=token_env(None)) as worker:
        async with WorkerClient(worker.address, timeout=10, token="file-token") as client:
            assert (await client.health()).serving
        async with WorkerClient(worker.address, timeout=10, token=worker.token) as client:  # the env one as well
            assert (await client.health()).serving
        async with WorkerClient(worker.address, timeout=10) as client:
            with pytest.raises(LinkRefused):
                await client.health()
    insecure = subprocess.Popen([*CLI, "--device", "cpu", "--threads", "1", "--insecure-no-auth"], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=token_env(None))
    try:
        address = insecure.stdout.readline().removeprefix("genie-worker ready on ").strip()
        async with WorkerClient(address, timeout=10) as client:
            assert (await client.health()).serving
    finally:
        insecure.terminate()
        _, stderr = insecure.communicate(timeout=30)
    assert "--insecure-no-auth: any process on this machine can drive this worker" in stderr


def test_spawn_worker_that_dies_reports_its_stderr() -> None:
    with pytest.raises(Unavailable, match=r"(?s)exited before it was ready \(exit code 2\).*--threads must be"):
        spawn_worker(device="cpu", extra_args=["--threads", "-3"])


def test_spawn_worker_that_is_not_ready_in_time_is_killed() -> None:
    with pytest.raises(Unavailable, match=r"not ready within 0.01 s and was killed"):
        spawn_worker(device="cpu", timeout=0.01)


LAUNCHER = """
import sys
from genie.workers.process import spawn_worker
worker = spawn_worker("cpu", threads=1, timeout=120)
print(worker.pid, flush=True)
sys.stdin.read()  # until the test kills this process
"""


def test_worker_stops_when_its_launcher_is_killed() -> None:
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    try:
        worker_pid = int(launcher.stdout.readline())
        launcher.kill()  # SIGKILL: the launcher cannot stop its worker itself
        launcher.wait(10)
        deadline = time.monotonic() + 15
        while _running(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(worker_pid), "the worker outlived its launcher by 15 s"
    finally:
        launcher.kill()


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (an exited child of init is reaped at once in a container; a zombie
    left behind counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
