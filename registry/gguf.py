"""GGUF -> Hugging Face folder (config.json, model.safetensors, tokenizer files), converted once.

transformers can read GGUF but refuses `save_pretrained` on the result, so the dequantised state dict is
copied into a fresh model of the same config and saved from there.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from genie.errors import InvalidRequest


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Writes an HF folder for `gguf_path` at `out_dir` (atomically: temp folder, then rename)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise InvalidRequest(f"GGUF file {gguf_path} does not exist")
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # gguf raises assorted errors on damaged files
        raise InvalidRequest(f"{gguf_path} is not a readable GGUF model: {exc}") from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model_cls = getattr(transformers, config.architectures[0]) if config.architectures else type(loaded)
    model = model_cls(config)
    model.load_state_dict(loaded.state_dict())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
