"""The worker contract: what serving asks of a worker and gets back, as plain dataclasses.

Serving (the scheduler, the router, the launcher) and the workers' engines both speak these types;
`workers/codec.py` alone turns them into protobuf and back. This module imports no torch, so a pure part of
serving (the scheduler) loads in a blink and without the engine: tensors appear only as annotations.
The whole-KV fields that only the semantic-blind baseline sends live on a side path, `workers/blind.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy (argmax)
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    seed: int | None = None  # per-request seed; the draw for a token depends only on (seed, its position)
    logprobs: int = 0  # 0: none; n >= 1: the sampled token's logprob and the top-n alternatives
    # Logits processing, all off by default. Counts come from the tokens the sequence holds, so the worker
    # rebuilds them from any re-prefill (preemption, migration); prompt_len says where the output starts.
    frequency_penalty: float = 0.0  # logit -= count * this, counted over output tokens (OpenAI)
    presence_penalty: float = 0.0  # logit -= this once a token is in the output (OpenAI)
    repetition_penalty: float = 1.0  # over prompt + output: positive logits / this, negative * this (HF, vLLM)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), sorted by id
    min_tokens: int = 0  # stop_ids are masked until the output holds this many tokens
    stop_ids: tuple[int, ...] = ()  # the tokens that would end the sequence (EOS, stop_token_ids)
    prompt_len: int = 0  # tokens of the prompt: output positions start here
    # Constrained decoding (structured outputs, tool calls): every output token must keep the text matching
    # the guide. The worker rebuilds the guide's state from the output tokens the sequence holds, so it
    # survives preemption and migration like the penalties do.
    guide_kind: str = ""  # one of GUIDE_KINDS; "" leaves the output free
    guide_spec: str = ""  # json_schema: the schema as JSON text; regex; choice: a JSON list of strings; grammar

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def counts_tokens(self) -> bool:
        """The sampler needs the tokens the sequence holds (penalties)."""
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0 or self.repetition_penalty != 1.0

    @property
    def guided(self) -> bool:
        return bool(self.guide_kind)

    @property
    def processes_logits(self) -> bool:
        """Anything but temperature, top-k and top-p touches the logits; False keeps the plain fast path."""
        return self.counts_tokens or bool(self.logit_bias) or (self.min_tokens > 0 and bool(self.stop_ids))


GUIDE_KINDS = ("json", "json_schema", "regex", "choice", "grammar")


@dataclass(frozen=True, slots=True)
class FragmentSpec:
    """A layer range [layer_start, layer_end) of a decoder-only model, plus embedding and/or head (kind "llm"),
    or a whole model run by Infer (kind "stateless": only fragment_id, model_dir, dtype, expected_sha256,
    pooling and normalize apply).

    pooling (stateless only): "" returns the model's own outputs; one of POOLING_MODES makes the fragment take
    input_ids and attention_mask and return one float32 vector per input, {"embedding": [batch, hidden]},
    pooled over the unmasked tokens of the model's token embeddings as sentence-transformers pools them.
    normalize: L2-normalise each pooled vector (sentence-transformers' Normalize module); needs pooling."""

    fragment_id: str
    model_dir: str  # folder with config.json and *.safetensors
    layer_start: int = 0
    layer_end: int = -1  # exclusive; -1 means num_hidden_layers
    has_embedding: bool = True
    has_head: bool = True
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    kv_cache_bytes: int = 256 << 20  # KV budget; blocks are allocated once at load inside it
    block_size: int = 16  # tokens per KV block
    # (file name relative to model_dir, hex sha256) pairs, sorted: the worker hashes each named file before
    # loading and refuses a mismatch. A tuple, not a dict, so the frozen spec stays hashable.
    expected_sha256: tuple[tuple[str, str], ...] = ()
    kind: str = "llm"  # one of FRAGMENT_KINDS
    pooling: str = ""  # stateless: "" (no pooling) or one of POOLING_MODES
    normalize: bool = False  # stateless: L2-normalise the pooled vector
    part: str = ""  # stateless: "" the whole model; "tables" | "dense" (recsys split); "image" | "text" | "fusion"
    cut: tuple[str, ...] = ()  # stateless with a part: module paths of the tables the split cuts at
    quantization: str = "none"  # llm: one of QUANTIZATIONS; "int8" holds the decoder layers' linears as int8


LLM = "llm"
STATELESS = "stateless"
FRAGMENT_KINDS = (LLM, STATELESS)
# How a stateless fragment pools token embeddings [batch, seq, hidden] into [batch, hidden] (sentence-transformers'
# names): the masked mean; the first token; the masked max; the masked sum over sqrt(tokens); the last unmasked token.
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len", "lasttoken")
# How an llm fragment holds its decoder layers' linear weights: as loaded, or int8 with one scale per output row.
QUANTIZATIONS = ("none", "int8")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor a stateless fragment takes or gives; -1 marks the batch and other varying dimensions."""

    name: str
    dtype: str  # "float32", "int64", ...
    shape: tuple[int, ...]
    required: bool = True  # an input the fragment can run without (a mask it defaults) is not required


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    fragment_id: str
    num_layers: int  # layers this fragment holds
    num_kv_blocks: int
    block_size: int
    weight_bytes: int
    hidden_size: int
    vocab_size: int
    max_context: int  # tokens a sequence may hold
    dtype: str  # the resolved compute dtype, e.g. "bfloat16"
    kind: str = LLM
    inputs: tuple[TensorSpec, ...] = ()  # stateless: what Infer accepts
    outputs: tuple[TensorSpec, ...] = ()  # stateless: what Infer returns


@dataclass(slots=True)
class SeqStep:
    """One sequence's share of a batched step: a prefill chunk or one decode token."""

    seq_id: str
    position: int  # tokens this sequence already holds in this fragment's KV; 0 starts a new sequence
    token_ids: list[int] | None = None  # when the fragment holds the embedding
    hidden: torch.Tensor | None = None  # [n, hidden_size] when it does not
    sample: bool = False  # sample a token after this chunk (the fragment must hold the head)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Prefix caching (block_tables.py): a new sequence at position > 0 starts from these cached full blocks
    # (position == len * block_size); new_block_hashes names the blocks this step fills, so later sequences
    # may start from them. Both empty: plain private blocks.
    cached_prefix: tuple[bytes, ...] = ()
    new_block_hashes: tuple[bytes, ...] = ()

    @property
    def num_tokens(self) -> int:
        if self.token_ids is not None:
            return len(self.token_ids)
        return 0 if self.hidden is None else int(self.hidden.shape[0])


@dataclass(slots=True)
class SeqResult:
    seq_id: str
    token_id: int | None = None  # set when sampled
    logprob: float | None = None  # set when sampled and logprobs were asked for
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), best first
    hidden: torch.Tensor | None = None  # [n, hidden_size] when the fragment holds no head


@dataclass(frozen=True, slots=True)
class FragmentStats:
    fragment_id: str
    kv_blocks_total: int
    kv_blocks_used: int
    kv_blocks_free: int
    sequences: int
    block_size: int
    batches: int = 0  # stateless: Infer calls run
    max_batch: int = 0  # stateless: the largest batch seen
    kv_blocks_cached: int = 0  # full blocks any new sequence may start from (prefix caching)
    kv_blocks_evictable: int = 0  # cached blocks no sequence holds: counted free, evicted when room is needed
    kv_blocks_shared: int = 0  # cached blocks held by two sequences or more
