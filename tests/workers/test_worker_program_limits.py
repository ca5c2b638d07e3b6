"""The program limits from the YAML (workers.programs) to a worker: config -> genie-worker flags -> the limits its
ProgramHost checks. In process; test_client_served.py checks a small limit through a real genie-serve."""

from __future__ import annotations

import pytest

from genie.config import ProgramLimitsConfig, parse_config
from genie.errors import ConfigError
from genie.workers.cli import parse_args, program_limits
from genie.workers.programs.limits import ProgramLimits, limits_from_config, worker_args


def config_with(**programs):
    return parse_config({"model": {"name": "m"}, "workers": {"programs": programs}})


def test_the_configs_defaults_are_the_workers_defaults() -> None:
    assert limits_from_config(ProgramLimitsConfig()) == ProgramLimits()
    assert program_limits(parse_args(["--insecure-no-auth"])) == ProgramLimits()


def test_the_configs_limits_reach_the_worker_through_its_flags() -> None:
    cfg = config_with(max_output_elements=1000, max_run_s=0.25, client_mib=3)
    args = parse_args(["--insecure-no-auth", *worker_args(limits_from_config(cfg.workers.programs))])
    assert program_limits(args) == ProgramLimits(max_output_elements=1000, max_run_seconds=0.25, client_bytes=3 << 20)


@pytest.mark.parametrize(("programs", "message"), [
    ({"max_run_s": 0}, "workers.programs.max_run_s must be > 0.0, got 0"),
    ({"max_output_elements": -1}, "workers.programs.max_output_elements must be > 0, got -1"),
    ({"client_bytes": 5}, "workers.programs.client_bytes is not a known key"),
])
def test_bad_limits_in_the_config_name_the_key(programs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        config_with(**programs)


@pytest.mark.parametrize("flag", ["--program-max-output-elements", "--program-max-run-s", "--program-client-bytes"])
def test_a_bad_limit_flag_is_one_line_on_stderr(flag, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--insecure-no-auth", flag, "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"genie-worker: {flag} must be positive, got 0")
