"""Hugging Face transformers `generate`, the baseline every serving system should beat: requests one at a
time, and statically batched (left padding, each batch runs until its longest request is done)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .workload import Workload


@dataclass(frozen=True, slots=True)
class GenerateRun:
    output_tokens: int
    duration_s: float
    e2e_s: tuple[float, ...]  # per request; in a static batch, every request waits for its batch
    outputs: tuple[tuple[int, ...], ...]  # per request, the generated ids (up to its EOS)


def load_model(model_dir: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a loading bar per run would bury genie-bench's own lines
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()


def _config(work: Workload, pad_id: int) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=work.output_len,
        min_new_tokens=work.output_len if work.ignore_eos else 0,
        do_sample=False,
        eos_token_id=sorted(work.eos_ids) or None,
        pad_token_id=pad_id,
    )


def _pad_id(work: Workload) -> int:
    return min(work.eos_ids) if work.eos_ids else 0


def _generated(row: torch.Tensor, work: Workload) -> tuple[int, ...]:
    """What a request really generated: up to and including its first EOS unless EOS is ignored."""
    tokens = tuple(row.tolist())
    if work.ignore_eos:
        return tokens
    for i, token in enumerate(tokens):
        if token in work.eos_ids:
            return tokens[: i + 1]
    return tokens


@torch.inference_mode()
def one_by_one(model: Any, work: Workload) -> GenerateRun:
    config = _config(work, _pad_id(work))
    outputs, e2e = [], []
    start = time.perf_counter()
    for ids in work.token_ids:
        sent = time.perf_counter()
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             generation_config=config)
        e2e.append(time.perf_counter() - sent)
        outputs.append(_generated(out[0, len(ids) :], work))
    return _run(outputs, time.perf_counter() - start, e2e)


@torch.inference_mode()
def static_batches(model: Any, work: Workload, batch: int) -> GenerateRun:
    pad = _pad_id(work)
    config = _config(work, pad)
    outputs, e2e = [], []
    start = time.perf_counter()
    for first in range(0, len(work), batch):
        group = work.token_ids[first : first + batch]
        ids, mask = left_pad(group, pad)
        sent = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, generation_config=config)
        e2e.extend([time.perf_counter() - sent] * len(group))
        outputs.extend(_generated(row, work) for row in out[:, ids.shape[1] :])
    return _run(outputs, time.perf_counter() - start, e2e)


def _run(outputs: list[tuple[int, ...]], duration_s: float, e2e: list[float]) -> GenerateRun:
    return GenerateRun(sum(len(o) for o in outputs), duration_s, tuple(e2e), tuple(outputs))


def left_pad(group: tuple[tuple[int, ...], ...], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask, padded on the left so every row's last token is its prompt's last."""
    width = max(len(ids) for ids in group)
    ids = torch.full((len(group), width), pad, dtype=torch.long)
    mask = torch.zeros(len(group), width, dtype=torch.long)
    for row, prompt in enumerate(group):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask
