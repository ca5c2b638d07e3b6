"""GGUF importer: checks a .gguf file, then converts it once to an HF folder (fp32 safetensors, tokenizer).

transformers can read GGUF but refuses `save_pretrained` on the result, so the dequantised state dict is
copied into a fresh model of the same config and saved from there. The output keeps the chat template
and has no quantization_config, so serving loads it like any HF folder.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genie.errors import InvalidRequest

from .hf import import_hf_folder
from .imported import Imported, first_line
from .progress import step_bar

_STEPS = ("reading config", "reading tokenizer", "dequantising weights", "building model", "writing safetensors")
_PATCH_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class CheckedGguf:
    path: Path
    architecture: str  # GGUF's general.architecture, e.g. "llama"
    reader: Any  # the parsed gguf.GGUFReader, reused by the conversion


def check_gguf(path: Path) -> CheckedGguf:
    """Parses the file's header and tensor table; refuses damaged files and architectures transformers lacks."""
    from gguf import GGUFReader
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except KeyError:
        raise InvalidRequest(f"{path} is not a readable GGUF model (it has no general.architecture entry)") from None
    except Exception as exc:  # the reader raises ValueError/IndexError/... on truncated files
        raise InvalidRequest(f"{path} is not a readable GGUF model (truncated or damaged: {first_line(exc)})") from None
    supported = sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))
    if arch not in supported:
        raise InvalidRequest(
            f"unsupported architecture {arch!r} in {path}; transformers converts GGUF models of: {', '.join(supported)}"
        )
    return CheckedGguf(path, arch, reader)


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, progress: bool = False, reader: Any = None) -> Path:
    """Writes an HF folder for `gguf_path` at `out_dir` (atomically: temp folder, then rename)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise InvalidRequest(f"GGUF file {gguf_path} does not exist")
    folder, name = str(gguf_path.parent), gguf_path.name
    with step_bar("converting", len(_STEPS), progress) as bar, _one_parse(gguf_path, reader):
        step = _stepper(bar)
        try:
            step(_STEPS[0])
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            step(_STEPS[1])
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            step(_STEPS[2])
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except Exception as exc:  # gguf raises assorted errors on damaged files
            raise InvalidRequest(f"{gguf_path} is not a readable GGUF model: {first_line(exc)}") from None
        step(_STEPS[3])
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model_cls = getattr(transformers, config.architectures[0]) if config.architectures else type(loaded)
        model = model_cls(config)
        model.load_state_dict(loaded.state_dict())
        step(_STEPS[4])
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            tmp.rename(out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        bar.update()
    return out_dir


def import_gguf(checked: CheckedGguf, staging: Path, progress: bool) -> Imported:
    """Converts a checked GGUF into `staging/hf` and imports that folder (the store may move its files)."""
    folder = convert_gguf(checked.path, staging / "hf", progress=progress, reader=checked.reader)
    imported = import_hf_folder(folder, fmt="gguf", owned=True)
    imported.details["gguf_architecture"] = checked.architecture
    return imported


@contextmanager
def _one_parse(path: Path, reader: Any) -> Iterator[None]:
    """Lets transformers reuse one parse of `path` for config, tokenizer and weights.

    transformers builds a fresh gguf.GGUFReader for each of the three (and again for the config inside
    the tokenizer and the model), and each parse walks every tokenizer string: about 2.5 s apiece for
    SmolLM2. Its loader imports GGUFReader from the gguf package at call time, so serving our parse
    from there for the length of the conversion removes the repeats.
    """
    import gguf

    real = gguf.GGUFReader
    parsed = {(path.resolve(), "r"): reader} if reader is not None else {}

    def shared(file, mode: str = "r"):
        key = (Path(file).resolve(), mode)
        if key not in parsed:
            parsed[key] = real(file, mode)
        return parsed[key]

    with _PATCH_LOCK:
        gguf.GGUFReader = shared
        try:
            yield
        finally:
            gguf.GGUFReader = real


def _stepper(bar):
    first = True

    def step(label: str) -> None:
        nonlocal first
        if not first:
            bar.update()
        first = False
        bar.set_postfix_str(label)

    return step
