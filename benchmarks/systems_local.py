"""The systems that run inside the compare process: HF transformers `generate`, and our engine without the
router (our own continuous-batching loop calling `Fragment.step` directly).

Each system loads once, runs one untimed warm-up request, then measures its rows; a failure to load fails
all its rows, a failure in one row fails only that row.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from genie.workers.contract import SeqResult, SeqStep

from . import hf_baseline
from .compare_setup import Setup
from .rows import ENGINE, HF, Level, Row, fail_all, measure_levels, p50_ms
from .steppers import PinnedStepper
from .streams import StreamsRun, run_streams

OnRow = Callable[[Row], None]


def streams_row(level: Level, run: StreamsRun, link: tuple[int, int] | None = None) -> Row:
    return Row(
        level.system, level.setting, level.streams, len(level.work), run.output_tokens, run.duration_s,
        ttft_p50_ms=p50_ms(r.ttft_s for r in run.records),
        tpot_p50_ms=p50_ms(r.tpot_s for r in run.records),
        link_bytes_sent=None if link is None else link[0],
        link_bytes_received=None if link is None else link[1],
    )


async def hf_rows(setup: Setup, on_row: OnRow) -> None:
    streams = setup.opts.sizes.streams
    levels = [Level(HF, "one by one", 1, setup.serial), Level(HF, f"static batch {streams}", streams, setup.work)]
    try:
        model = hf_baseline.load_model(setup.model_dir, setup.dtype)
        hf_baseline.one_by_one(model, setup.work.warmup())
    except Exception as err:
        fail_all(levels, err, on_row)
        return

    async def measure(level: Level) -> Row:
        if level.streams == 1:
            run = hf_baseline.one_by_one(model, level.work)
        else:
            run = hf_baseline.static_batches(model, level.work, level.streams)
        return Row(HF, level.setting, level.streams, len(level.work), run.output_tokens, run.duration_s)

    try:
        await measure_levels(levels, measure, on_row)
    finally:
        del model
        gc.collect()


async def engine_rows(setup: Setup, on_row: OnRow) -> None:
    from genie.workers.engine import FragmentSpec, load_fragment

    levels = [Level.streaming(ENGINE, 1, setup.serial), Level.streaming(ENGINE, setup.opts.sizes.streams, setup.work)]
    spec = FragmentSpec("compare", str(setup.model_dir), dtype=setup.dtype_name, kv_cache_bytes=setup.kv_cache_bytes)

    async def step(seqs: list[SeqStep]) -> list[SeqResult]:
        with torch.inference_mode():
            return fragment.step(seqs)

    async def release(ids: list[str]) -> int:
        return fragment.release(ids)

    try:
        fragment = load_fragment(spec, torch.device("cpu"))
        await run_streams(PinnedStepper(step, release), setup.work.warmup(), 1, "engine-warmup")
    except Exception as err:
        fail_all(levels, err, on_row)
        return

    async def measure(level: Level) -> Row:
        run = await run_streams(PinnedStepper(step, release), level.work, level.streams, f"engine{level.streams}")
        return streams_row(level, run)

    try:
        await measure_levels(levels, measure, on_row)
    finally:
        del fragment
        gc.collect()
