"""What an importer hands to the registry: a folder of files to store and the facts read from them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genie.errors import InvalidRequest

# safetensors dtype names -> torch dtype names
_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


@dataclass(frozen=True, slots=True)
class Imported:
    root: Path  # the folder holding `files`
    files: tuple[str, ...]  # paths relative to root, stored as the version's model folder
    owned: bool  # root is a staging folder: the store may move files out of it instead of copying
    format: str  # hf | gguf | py
    architecture: str  # e.g. LlamaForCausalLM, or the class name of a py: model
    dtype: str  # torch dtype name of most weight bytes
    parameters: int  # weights counted once even when tied
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able facts kept with the version


@dataclass(frozen=True, slots=True)
class WeightsSummary:
    parameters: int
    dtype: str


def summarise_weights(paths: list[Path]) -> WeightsSummary:
    """Parameter count and main dtype from safetensors headers, without reading the weights."""
    from safetensors import safe_open

    numel_by_dtype: Counter[str] = Counter()
    for path in paths:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    tensor = f.get_slice(key)
                    numel = 1
                    for dim in tensor.get_shape():
                        numel *= dim
                    numel_by_dtype[tensor.get_dtype()] += numel
        except Exception as exc:  # safetensors raises its own error types for damaged headers
            raise InvalidRequest(f"{path} is not a readable safetensors file: {first_line(exc)}") from None
    if not numel_by_dtype:
        raise InvalidRequest(f"{', '.join(map(str, paths))} holds no tensors; save the model's weights into it")
    main = numel_by_dtype.most_common(1)[0][0]
    return WeightsSummary(sum(numel_by_dtype.values()), _DTYPES.get(main, main.lower()))


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
