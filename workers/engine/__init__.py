"""Our engine for decoder-only transformers: paged KV cache, batched mixed prefill/decode steps."""

from genie.workers.engine.allocator import BlockAllocator
from genie.workers.engine.fragment import Fragment
from genie.workers.engine.loader import load_fragment
from genie.workers.engine.placement import resolve_device, resolve_dtype
from genie.workers.contract import FragmentInfo, FragmentSpec, FragmentStats, SamplingParams, SeqResult, SeqStep

__all__ = [
    "BlockAllocator",
    "Fragment",
    "FragmentInfo",
    "FragmentSpec",
    "FragmentStats",
    "SamplingParams",
    "SeqResult",
    "SeqStep",
    "load_fragment",
    "resolve_device",
    "resolve_dtype",
]
