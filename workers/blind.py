"""The semantic-blind baseline's side of the worker contract: sequences that carry their whole KV.

Only `genie-bench compare` sends these, to measure what a remote-device layer that does not know what a KV
cache is would have to move each step (see `workers/engine/kv_io.py`). genie-serve never does, so the main
contract (`workers/contract.py`) does not carry these fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from genie.workers.contract import SeqResult, SeqStep

if TYPE_CHECKING:
    import torch


@dataclass(slots=True)
class BlindSeqStep(SeqStep):
    # The sequence's whole KV [layers, 2, position, kv_heads, head_dim] in the compute dtype; the step runs
    # it on a temporary sequence that is forgotten afterwards.
    kv: torch.Tensor | None = None
    return_kv: bool = False  # send the updated KV back in BlindSeqResult.kv

    def plain(self, seq_id: str) -> SeqStep:
        """The same step as an ordinary sequence named seq_id, for the engine."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(SeqStep)}
        return SeqStep(**(fields | {"seq_id": seq_id}))


@dataclass(slots=True)
class BlindSeqResult(SeqResult):
    kv: torch.Tensor | None = None  # when return_kv: [layers, 2, position + n, kv_heads, head_dim]

    @classmethod
    def of(cls, result: SeqResult, seq_id: str, kv: torch.Tensor | None) -> BlindSeqResult:
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(SeqResult)}
        return cls(**(fields | {"seq_id": seq_id}), kv=kv)


def is_blind(seq: SeqStep) -> bool:
    return isinstance(seq, BlindSeqStep) and (seq.kv is not None or seq.return_kv)
