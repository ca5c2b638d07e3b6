"""Id range checks in front of every embedding table of a model, so an id outside a table is the caller's error.

Unchecked, such an id is an IndexError on the CPU and a device-side assert on CUDA, which leaves the worker's
CUDA context unusable for every later call. A forward pre-hook on each nn.Embedding / nn.EmbeddingBag checks
the ids it is about to look up and raises an InvalidRequest that names the table, its rows, and the forward
input the ids came from (found by shared storage, e.g. `sparse_ids[:, 2]`, else by holding the bad id).
Lookups through torch.nn.functional.embedding on a bare weight are not seen; the model's own error stays.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from genie.errors import InvalidRequest

Tensors = dict[str, torch.Tensor]


class LookupGuard:
    """Hooks the tables of `module`; `watching(inputs)` names the forward's inputs for the messages."""

    def __init__(self, module: nn.Module) -> None:
        self._inputs: Tensors = {}
        self.tables = 0
        for path, sub in module.named_modules():
            if isinstance(sub, (nn.Embedding, nn.EmbeddingBag)):
                sub.register_forward_pre_hook(self._hook(path or "<model>", sub.num_embeddings))
                self.tables += 1

    @contextmanager
    def watching(self, inputs: Tensors) -> Iterator[None]:
        self._inputs = inputs
        try:
            yield
        finally:
            self._inputs = {}

    def _hook(self, table: str, rows: int):
        def check(_module: nn.Module, args: tuple) -> None:
            ids = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if ids is None or ids.numel() == 0 or ids.is_floating_point():
                return
            low, high = torch.aminmax(ids)  # one device sync per table per forward
            if low >= 0 and high < rows:
                return
            bad = int(low) if low < 0 else int(high)
            raise InvalidRequest(f"{self._source(ids, bad)} holds id {bad}, outside embedding table {table!r} "
                                 f"({rows} rows: ids 0 to {rows - 1})")

        return check

    def _source(self, ids: torch.Tensor, bad: int) -> str:
        """Which forward input the ids are (a view of), else which one holds the bad id."""
        integer = {n: t for n, t in self._inputs.items() if not t.is_floating_point()}
        storage = ids.untyped_storage().data_ptr()
        for name, given in integer.items():
            if given.untyped_storage().data_ptr() == storage:
                return f"input {name!r}{_column(ids, given)}"
        holding = [n for n, t in integer.items() if bool((t == bad).any())]
        if len(holding) == 1:
            return f"input {holding[0]!r}"
        return f"an id computed from input{'s' if len(integer) != 1 else ''} {', '.join(map(repr, integer))}"


def _column(ids: torch.Tensor, given: torch.Tensor) -> str:
    """' column C' when the ids are column C of a [batch, columns] input (a view such as given[:, C])."""
    if given.dim() != 2 or ids.dim() != 1 or given.stride(1) == 0:
        return ""
    offset = ids.storage_offset() - given.storage_offset()
    if ids.stride(0) != given.stride(0) or not 0 <= offset < given.stride(0):
        return ""
    return f" column {offset // given.stride(1)}"
