"""Importer for a Hugging Face model folder: config.json, safetensors weights, tokenizer files.

Everything is checked before the registry writes a byte: the config must name an architecture this
transformers can build, the weights must be safetensors (pickled .bin files are refused, since
unpickling runs code), and no remote code is accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genie.errors import InvalidRequest

from .imported import Imported, first_line, summarise_weights

# Files that make up a model folder besides the weights; anything else (READMEs, .bin, .py) is left out.
_KEEP_SUFFIXES = {".json", ".safetensors", ".txt", ".model", ".jinja", ".tiktoken"}
_PICKLED_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tokenizer_config.json"}


def import_hf_folder(folder: Path, fmt: str = "hf", owned: bool = False) -> Imported:
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if "config.json" not in files:
        raise InvalidRequest(
            f"folder {folder} has no config.json; an HF model folder needs config.json and *.safetensors weights "
            "(write one with model.save_pretrained(folder))"
        )
    weights = [n for n in files if n.endswith(".safetensors")]
    if not weights:
        raise InvalidRequest(_no_safetensors(folder, files))
    config = load_hf_config(folder)
    architecture = config.architectures[0]
    summary = summarise_weights([folder / n for n in weights])
    kept = tuple(n for n in files if Path(n).suffix in _KEEP_SUFFIXES) + _module_configs(folder)
    return Imported(
        root=folder,
        files=kept,
        owned=owned,
        format=fmt,
        architecture=architecture,
        dtype=summary.dtype,
        parameters=summary.parameters,
        details=_details(config, kept),
    )


def _module_configs(folder: Path) -> tuple[str, ...]:
    """The .json files in the module folders a sentence-transformers modules.json lists ("1_Pooling/config.json"),
    which say how to pool; a listed folder that is absent ("2_Normalize" holds nothing and often is) is skipped."""
    path = folder / "modules.json"
    if not path.is_file():
        return ()
    try:
        modules = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise InvalidRequest(f"{path} should be a list of module objects, as sentence-transformers writes it")
    kept: list[str] = []
    for sub in sorted({str(m.get("path") or "") for m in modules} - {""}):
        module_dir = folder / sub
        if ".." in Path(sub).parts or Path(sub).is_absolute() or not module_dir.is_dir():
            continue
        jsons = [p for p in module_dir.iterdir() if p.is_file() and p.suffix == ".json" and p.name[0] != "."]
        kept += sorted((Path(sub) / p.name).as_posix() for p in jsons)
    return tuple(kept)


def load_hf_config(folder: Path):
    """The folder's transformers config, refused unless this transformers can build its architecture."""
    import transformers
    from transformers import AutoConfig

    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{path} should hold a JSON object, got {type(raw).__name__}")
    if "auto_map" in raw:
        raise InvalidRequest(
            f"{path} asks for custom code (auto_map); genie only runs architectures built into transformers"
        )
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, OSError) as exc:
        kind = raw.get("model_type", "?")
        raise InvalidRequest(
            f"unsupported architecture: model_type {kind!r} in {path} is not known to transformers "
            f"{transformers.__version__} ({first_line(exc)})"
        ) from None
    archs = config.architectures or []
    if not archs:
        raise InvalidRequest(f'{path} names no architecture; add e.g. "architectures": ["LlamaForCausalLM"]')
    if not hasattr(transformers, archs[0]):
        raise InvalidRequest(
            f"unsupported architecture {archs[0]!r} in {path}: transformers {transformers.__version__} has no such "
            "model class; register a folder whose architecture transformers provides, e.g. LlamaForCausalLM"
        )
    return config


def _details(config, files: tuple[str, ...]) -> dict[str, Any]:
    text = config.get_text_config()
    return {
        "model_type": config.model_type,
        "num_layers": getattr(text, "num_hidden_layers", None),
        "hidden_size": getattr(text, "hidden_size", None),
        "vocab_size": getattr(text, "vocab_size", None),
        "tokenizer": any(n in TOKENIZER_FILES for n in files),
    }


def _no_safetensors(folder: Path, files: list[str]) -> str:
    pickled = [n for n in files if Path(n).suffix in _PICKLED_SUFFIXES]
    if not pickled:
        return f"folder {folder} has no *.safetensors weights; save them with model.save_pretrained(folder)"
    cls = _declared_architecture(folder) or "AutoModel"
    return (
        f"folder {folder} holds pickled weights ({', '.join(pickled)}), which genie refuses because unpickling can "
        f'run code; convert them once with: python -c "import transformers; transformers.{cls}.from_pretrained('
        f"'{folder}').save_pretrained('OUT', safe_serialization=True)\" and register OUT"
    )


def _declared_architecture(folder: Path) -> str | None:
    try:
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return None
    return archs[0] if archs and isinstance(archs[0], str) and archs[0].isidentifier() else None
