"""`genie-models`: in-process for most commands, the real console script for errors and racing processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from registry_helpers import blob_count, smollm2_gguf

from genie.registry.cli import main
from genie.registry.store import Registry

GENIE_MODELS = str(Path(sys.executable).parent / "genie-models")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_register_show_list_alias(capsys, genie_env, llama_dir: Path) -> None:
    made = run_json(capsys, "register", "tiny", str(llama_dir), "-q")
    assert (made["version"], made["created"], made["architecture"]) == (1, True, "LlamaForCausalLM")
    again = run_json(capsys, "register", "tiny", str(llama_dir), "-q", "--alias", "prod")
    assert (again["version"], again["created"], again["aliases"]) == (1, False, ["prod"])
    shown = run_json(capsys, "show", "tiny@prod")
    assert shown["version"] == 1 and shown["parameters"] == made["parameters"]
    assert shown["profile"]["name"] == "tiny" and shown["profile_summary"]
    assert run_json(capsys, "list") == [{"name": "tiny", "versions": [1], "aliases": {"prod": 1}}]
    code, out, _ = run(capsys, "show", "tiny:1")
    assert code == 0 and "LlamaForCausalLM" in out and "profile" in out
    assert run_json(capsys, "alias", "tiny", "1", "stable")["aliases"] == ["prod", "stable"]


def test_text_register_says_what_it_made(capsys, genie_env, llama_dir: Path) -> None:
    code, out, _ = run(capsys, "register", "tiny", str(llama_dir), "-q")
    assert code == 0 and out.startswith("registered tiny:1 (LlamaForCausalLM")
    code, out, _ = run(capsys, "register", "tiny", str(llama_dir), "-q")
    assert "tiny:1 already holds this model" in out and "nothing copied" in out


def test_delete_refuses_an_aliased_version_without_force(capsys, genie_env, llama_dir: Path, home: Path) -> None:
    run_json(capsys, "register", "tiny", str(llama_dir), "-q", "--alias", "prod")
    code, out, err = run(capsys, "delete", "tiny:1")
    assert code == 1 and out == "" and err.count("\n") == 1 and "--force" in err
    assert run_json(capsys, "delete", "tiny:1", "--force") == {"deleted": ["tiny:1"]}
    assert run_json(capsys, "list") == []
    assert blob_count(home) == 0


def test_verify_reports_a_flipped_byte_and_exits_non_zero(capsys, genie_env, llama_dir: Path, home: Path) -> None:
    made = run_json(capsys, "register", "tiny", str(llama_dir), "-q")
    assert run_json(capsys, "verify", "tiny")[0]["ok"] is True
    sha = next(a["sha256"] for a in made["artifacts"] if a["path"] == "tokenizer.json")
    blob = home / "artifacts" / "sha256" / sha[:2] / sha
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[10] ^= 0x20
    blob.write_bytes(bytes(data))
    code, out, err = run(capsys, "verify", "tiny", "--json")
    report = json.loads(out)
    assert code == 1 and report[0]["ok"] is False
    assert report[0]["damage"] == [{"path": "tokenizer.json", "problem": "content changed (sha256 mismatch)"}]
    assert err.strip() == "genie-models: error: damaged: tiny:1; register the model again to repair it"


def test_analyze_recomputes_the_profile(capsys, genie_env, llama_dir: Path) -> None:
    run_json(capsys, "register", "tiny", str(llama_dir), "-q")
    out = run_json(capsys, "analyze", "tiny")
    assert out["version"] == "tiny:1" and out["profile"]["name"] == "tiny"


def test_plan_prints_and_caches_the_plan_for_a_config(capsys, genie_env, llama_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text("model: {name: tiny}\nworkers: {launch: 3, device: cpu, memory_mib: 2048}\n")
    run_json(capsys, "register", "tiny", str(llama_dir), "-q")
    first = run_json(capsys, "plan", "tiny", "--config", str(config))
    second = run_json(capsys, "plan", "tiny", "--config", str(config))
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["plan"] == first["plan"]
    assert {f["worker"] for f in second["plan"]["fragments"]} <= {"worker-0", "worker-1", "worker-2"}
    shown = run_json(capsys, "show", "tiny")
    assert [p["cluster_fingerprint"] for p in shown["plans"]] == [first["cluster_fingerprint"]]
    code, out, _ = run(capsys, "plan", "tiny", "--config", str(config))
    assert code == 0 and "read from the registry" in out and second["plan"]["strategy"] in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "ghost"], "no model named 'ghost'"),
        (["show", "tiny:9"], "tiny has no version 9"),
        (["show", "tiny@beta"], "tiny has no alias 'beta'"),
        (["register", "a/b", "x"], "may not contain '/'"),
        (["register", "tiny", "/no/such/folder"], "source /no/such/folder does not exist"),
        (["alias", "tiny", "1", "12"], "all digits"),
        (["delete", "tiny@prod"], "delete takes NAME or NAME:VERSION"),
        (["plan", "tiny", "--config", "/no/such.yaml"], "config file /no/such.yaml does not exist"),
    ],
)
def test_errors_are_one_line_with_a_non_zero_exit(capsys, genie_env, llama_dir: Path, argv, message: str) -> None:
    run_json(capsys, "register", "tiny", str(llama_dir), "-q")
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("genie-models: error: ") and message in err


def test_usage_errors_are_one_line_with_exit_2(capsys, genie_env) -> None:
    with pytest.raises(SystemExit) as info:
        main(["register", "only-a-name"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "required: source" in err


@pytest.mark.slow  # starts the console script (imports torch) under a loaded 2-core machine
def test_console_script_bad_input_is_one_line_without_traceback(genie_env, tmp_path: Path, home: Path) -> None:
    truncated = tmp_path / "bad.gguf"
    truncated.write_bytes(smollm2_gguf().read_bytes()[:3_000_000])
    proc = subprocess.run(
        [GENIE_MODELS, "register", "bad", str(truncated)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "is not a readable GGUF model" in proc.stderr
    with Registry.open() as reg:
        assert reg.list_models() == []
    assert not any(p.is_file() for p in home.rglob("*") if p.name != "registry.db" and "registry.db" not in p.name)


@pytest.mark.slow  # two real processes, each importing torch and analysing the model
def test_two_register_processes_racing_end_with_one_version(genie_env, llama_dir: Path, home: Path) -> None:
    cmd = [GENIE_MODELS, "register", "tiny", str(llama_dir), "--json", "-q", "-v"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert [rc for _, _, rc in results] == [0, 0], [err for _, err, _ in results]
    made = [json.loads(out) for out, _, _ in results]
    diagnosis = [(m["version"], m["created"], err[-500:]) for m, (_, err, _) in zip(made, results, strict=True)]
    assert {m["version"] for m in made} == {1}, diagnosis
    assert sorted(m["created"] for m in made) == [False, True], diagnosis
    with Registry.open() as reg:
        assert [r.version for r in reg.versions("tiny")] == [1]
        assert reg.verify("tiny")[0].ok
    assert blob_count(home) == len(made[0]["artifacts"])
    assert list((home / "tmp").iterdir()) == []
