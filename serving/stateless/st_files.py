"""Reads the sentence-transformers files of a model folder that say how to turn token embeddings into one vector.

A sentence-transformers folder lists its modules in modules.json: a Transformer (the HF model in the folder
itself), a Pooling module whose folder holds a config.json with the mode, and optionally Normalize.
sentence_bert_config.json holds the tokenizer's max_seq_length and do_lower_case. Only pipelines this server can
reproduce on a stateless fragment are accepted; anything else is refused with the file and what it asks for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genie.errors import InvalidRequest

MODULES = "modules.json"
ST_CONFIG = "sentence_bert_config.json"
ST_PREFIX = "sentence_transformers.models."
TRANSFORMER, POOLING, NORMALIZE = "Transformer", "Pooling", "Normalize"

# The boolean keys of a Pooling config.json -> the mode name a stateless fragment takes.
FLAG_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "lasttoken",
}
# The newer single "pooling_mode" string -> the same names.
STRING_MODES = {
    "cls": "cls",
    "mean": "mean",
    "max": "max",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
    "lasttoken": "lasttoken",
}
UNSUPPORTED_FLAGS = ("pooling_mode_weightedmean_tokens",)


@dataclass(frozen=True, slots=True)
class Pooling:
    mode: str  # one of workers.contract.POOLING_MODES
    normalize: bool  # a Normalize module follows: L2-normalise the pooled vector
    max_seq_length: int | None  # tokens the tokenizer keeps per input, when the folder says
    do_lower_case: bool  # lower-case the text before tokenizing


def read_pooling(model_dir: Path) -> Pooling | None:
    """How the folder's sentence-transformers pipeline pools, or None when it is not a sentence-transformers folder."""
    modules_path = model_dir / MODULES
    if not modules_path.is_file():
        return None
    modules = _modules(modules_path)
    pooling_dirs = [path for kind, path in modules if kind == POOLING]
    if len(pooling_dirs) != 1:
        raise InvalidRequest(
            f"{modules_path} lists {len(pooling_dirs)} {ST_PREFIX}{POOLING} modules; genie serves exactly one"
        )
    transformer_dir = next((path for kind, path in modules if kind == TRANSFORMER), "")
    max_len, lower = _st_config(model_dir / transformer_dir / ST_CONFIG)
    mode = _pooling_mode(model_dir / pooling_dirs[0] / "config.json")
    return Pooling(mode, any(kind == NORMALIZE for kind, _ in modules), max_len, lower)


def _modules(path: Path) -> list[tuple[str, str]]:
    """(module kind, its folder relative to the model folder) in the pipeline's order."""
    raw = _read_json(path)
    if not isinstance(raw, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str) for m in raw):
        raise InvalidRequest(f"{path} should be a list of modules, each with a \"type\"; it is not")
    modules = []
    for module in raw:
        kind = module["type"].removeprefix(ST_PREFIX)
        if kind not in (TRANSFORMER, POOLING, NORMALIZE):
            raise InvalidRequest(
                f"{path} lists module {module['type']!r}, which genie cannot run; only {TRANSFORMER}, {POOLING} and "
                f"{NORMALIZE} from {ST_PREFIX} are supported"
            )
        modules.append((kind, str(module.get("path") or "")))
    return modules


def _pooling_mode(path: Path) -> str:
    config = _read_object(path)
    if "pooling_mode" in config:
        mode = STRING_MODES.get(config["pooling_mode"])
        if mode is None:
            raise InvalidRequest(
                f"{path} asks for pooling_mode {config['pooling_mode']!r}, which genie does not support; use one "
                f"of {', '.join(STRING_MODES)}"
            )
        return mode
    unsupported = [key for key in UNSUPPORTED_FLAGS if config.get(key)]
    if unsupported:
        raise InvalidRequest(f"{path} sets {unsupported[0]}, which genie does not support")
    modes = [mode for key, mode in FLAG_MODES.items() if config.get(key)]
    if len(modes) != 1:
        raise InvalidRequest(
            f"{path} sets {len(modes)} pooling modes ({', '.join(modes) or 'none'}); genie supports exactly one, "
            "not the concatenation sentence-transformers makes of several"
        )
    return modes[0]


def _st_config(path: Path) -> tuple[int | None, bool]:
    if not path.is_file():
        return None, False
    config = _read_object(path)
    max_len, lower = config.get("max_seq_length"), config.get("do_lower_case", False)
    if not (max_len is None or (isinstance(max_len, int) and max_len > 0)) or not isinstance(lower, bool):
        raise InvalidRequest(f"{path} needs a positive integer max_seq_length and a boolean do_lower_case")
    return max_len, lower


def _read_object(path: Path) -> dict[str, Any]:
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{path} should hold a JSON object, got {type(raw).__name__}")
    return raw


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidRequest(f"{path} is missing; the sentence-transformers folder is incomplete") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"{path} is not valid JSON: {exc}") from None
