"""Importer for models defined in code: ``py:module:function`` returning ``(nn.Module, example_inputs)``.

The weights are saved as safetensors (shared tensors once) and the example inputs too (never pickle),
with ``genie_model.json`` naming the factory, so the model can be analysed again later: the factory is
re-run on the meta device (no weights) and fed the stored inputs.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from genie.errors import InvalidRequest

from .imported import Imported, first_line

WEIGHTS = "model.safetensors"
INPUTS = "example_inputs.safetensors"
MANIFEST = "genie_model.json"

ExampleInputs = tuple[Any, ...] | dict[str, Any]


def import_factory(ref: str, staging: Path) -> tuple[Imported, Any, ExampleInputs]:
    """Runs the factory, writes its weights and inputs to `staging`; returns them with the Imported."""
    from safetensors.torch import save_model

    model, inputs = _call(ref)
    tensors, form = _input_tensors(ref, inputs)
    cls = type(model)
    details = {
        "factory": ref,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "input_form": form,
        "inputs": {
            k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for k, t in tensors.items()
        },
    }
    save_model(model, str(staging / WEIGHTS), force_contiguous=True)
    _save_inputs(tensors, form, staging / INPUTS)
    (staging / MANIFEST).write_text(json.dumps(details, indent=2, sort_keys=True))
    imported = Imported(
        root=staging,
        files=(MANIFEST, INPUTS, WEIGHTS),
        owned=True,
        format="py",
        architecture=cls.__name__,
        dtype=_main_dtype(model),
        parameters=sum(p.numel() for p in model.parameters()),
        details=details,
    )
    return imported, model, inputs


def load_skeleton(ref: str, folder: Path) -> tuple[Any, ExampleInputs]:
    """The factory's model built on the meta device, and the example inputs stored in `folder`."""
    import torch
    from safetensors import safe_open

    with torch.device("meta"):
        model, _ = _call(ref)
    with safe_open(str(folder / INPUTS), framework="pt") as f:
        layout = json.loads((f.metadata() or {}).get("genie", "{}"))
        order = layout.get("order", [])
        tensors = {k: f.get_tensor(k) for k in order}
    if layout.get("form") == "kwargs":
        return model, tensors
    return model, tuple(tensors[k] for k in order)


def _call(ref: str) -> tuple[Any, Any]:
    from torch import nn

    module_name, function_name = ref.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules next to where the user runs the command
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidRequest(
            f"py:{ref}: cannot import module {module_name!r} ({first_line(exc)}); "
            "make it importable, e.g. via PYTHONPATH"
        ) from None
    except Exception as exc:
        raise InvalidRequest(
            f"py:{ref}: importing {module_name!r} failed: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise InvalidRequest(f"py:{ref}: module {module_name!r} has no function {function_name!r}")
    try:
        result = factory()
    except Exception as exc:
        raise InvalidRequest(f"py:{ref}: the factory raised {type(exc).__name__}: {first_line(exc)}") from None
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module)):
        raise InvalidRequest(f"py:{ref}: the factory must return (nn.Module, example_inputs), got {_describe(result)}")
    return result


def _input_tensors(ref: str, inputs: Any) -> tuple[dict[str, Any], str]:
    """Example inputs as named tensors: positional args get keys '0', '1', ..."""
    import torch

    if isinstance(inputs, dict):
        items, form = [(str(k), v) for k, v in inputs.items()], "kwargs"
    elif isinstance(inputs, (tuple, list)):
        items, form = [(str(i), v) for i, v in enumerate(inputs)], "args"
    else:
        raise InvalidRequest(
            f"py:{ref}: example_inputs must be a tuple of tensors or a dict of tensors, got {_describe(inputs)}"
        )
    for key, value in items:
        if not isinstance(value, torch.Tensor):
            raise InvalidRequest(f"py:{ref}: example input {key!r} is {_describe(value)}; only tensors can be stored")
    return dict(items), form


def _save_inputs(tensors: dict[str, Any], form: str, path: Path) -> None:
    from safetensors.torch import save_file

    contiguous = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    # One metadata key: safetensors writes several in hash-map order, which would change the file's sha256.
    layout = json.dumps({"form": form, "order": list(tensors)}, sort_keys=True)
    save_file(contiguous, str(path), metadata={"genie": layout})


def _main_dtype(model) -> str:
    counts = Counter[str]()
    for p in model.parameters():
        counts[str(p.dtype).removeprefix("torch.")] += p.numel()
    return counts.most_common(1)[0][0] if counts else "float32"


def _describe(value: Any) -> str:
    return type(value).__name__ if not isinstance(value, tuple) else f"a tuple of {len(value)}"
