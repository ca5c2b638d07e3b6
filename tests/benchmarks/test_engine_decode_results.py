"""engine_decode.py writes what it prints (issue 16, must-show 8): one row per (run, batch, kernel set) with the
step time its table shows, and the bandwidth the roofline used."""

from __future__ import annotations

import json

from genie.benchmarks import engine_decode


def test_the_results_json_holds_every_printed_row(smollm2_dir, tmp_path, capsys) -> None:
    out = tmp_path / "decode.json"
    engine_decode.main(["--model-dir", str(smollm2_dir), "--batches", "1,2", "--steps", "2", "--warmup", "0",
                        "--repeat", "1", "--no-hf", "--threads", "1", "--kv-mib", "16", "--output", str(out)])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["tool"] == "engine_decode" and data["read_gb_s"] > 0
    assert {(r["batch"], r["system"]) for r in data["rows"]} == {
        (b, f"engine/{k}") for b in (1, 2) for k in ("native", "native-dependent")}
    for row in data["rows"]:
        assert abs(row["tokens_per_s"] - row["batch"] / row["step_s"]) < 1e-6
        assert f"{row['step_s'] * 1e3:8.2f}" in printed  # the table's step ms is this row's
