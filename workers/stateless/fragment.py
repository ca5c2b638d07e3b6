"""A stateless fragment: a whole model run as one batched forward per Infer call, named tensors in and out.

It runs as an eager nn.Module rather than an exported program: HF encoders and vision models, and arbitrary
`py:` factories, run eagerly exactly as transformers runs them in-process (so outputs match bit for bit on the
same device), with any batch size and sequence length, while torch.export needs per-architecture dynamic-shape
specs and still fails on data-dependent branches in some HF models.

Every input is checked (names, dtypes, a shared batch dimension, token ids in range) before the forward, so a bad
call is an InvalidRequest that names the tensor, never a device-side assert that ends the worker.

With spec.pooling set (an encoder serving embeddings), the fragment pools the model's token embeddings over the
attention mask on the device and returns only {"embedding": float32 [batch, hidden]}: one vector per input
crosses the link instead of the whole last_hidden_state.

With spec.part set, it runs one side of a recsys split (split.py: the embedding tables, or the rest of the
model), one branch of a CLIP-style model (branches.py: the vision or text encoder, or the fusion), or one
stage of a pipeline (stages.py: blocks [layer_start, layer_end) of the model's chain of blocks in spec.cut).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from genie.errors import InvalidRequest
from genie.workers.contract import (
    POOLING_MODES,
    STATELESS,
    FragmentInfo,
    FragmentSpec,
    FragmentStats,
    TensorSpec,
)
from genie.workers.engine.placement import dtype_name, resolve_dtype
from genie.workers.stateless.branches import BRANCH_PARTS, branch_part
from genie.workers.stateless.loading import Built, InputSig, build
from genie.workers.stateless.lookups import LookupGuard
from genie.workers.stateless.pooling import pool
from genie.workers.stateless.split import split_part
from genie.workers.stateless.stages import STAGE, stage_part

POOLING_INPUTS = ("input_ids", "attention_mask")  # what a pooling fragment needs on every call

PROBE_BATCHES = (1, 2)  # two probe forwards at load; output dimensions that differ between them are marked -1


class StatelessFragment:
    """Owns one model on one device. Call everything on the worker's engine thread under torch.no_grad."""

    def __init__(
        self, fragment_id: str, built: Built, dtype: torch.dtype, device: torch.device,
        pooling: str = "", normalize: bool = False,
    ) -> None:
        self._id = fragment_id
        self._built = built
        self._dtype = dtype
        self._device = device
        self._by_name = {sig.name: sig for sig in built.inputs}
        self._lookups = LookupGuard(built.module)  # ids outside a table: an InvalidRequest naming the input
        self._pooling = pooling
        self._normalize = normalize
        self._required = built.required | frozenset(POOLING_INPUTS) if pooling else built.required
        if pooling:
            self._check_poolable()
        self.batches = 0
        self.max_batch = 0
        self.last_compute_s = 0.0
        weight_bytes = sum(t.numel() * t.element_size() for t in _weights(built.module))
        self.info = FragmentInfo(
            fragment_id=fragment_id, num_layers=0, num_kv_blocks=0, block_size=0, weight_bytes=weight_bytes,
            hidden_size=built.hidden_size or 0, vocab_size=built.vocab_size or 0,
            max_context=built.max_context or 0, dtype=dtype_name(dtype),
            kind=STATELESS, inputs=tuple(self._input_spec(sig) for sig in built.inputs), outputs=self._probe(),
        )

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One forward over a batch: inputs by name ([batch, ...] each) -> outputs by name, on the CPU."""
        batch = self._check(inputs)
        args = {name: self._to_device(self._by_name[name], t) for name, t in inputs.items()}
        started = time.perf_counter()
        try:
            outputs = self._forward(args)
        except torch.OutOfMemoryError:
            raise
        except (IndexError, ValueError, TypeError, RuntimeError) as exc:
            # Inputs that passed the checks but not the model's own (a factory's embedding ids out of range, a
            # shape its layers refuse): the caller's error, and the text speaks only of this call's tensors.
            first = (str(exc).splitlines() or [""])[0][:300]
            raise InvalidRequest(
                f"fragment {self._id!r} refused its inputs ({type(exc).__name__}: {first}); check them against "
                "the inputs LoadFragment reported"
            ) from None
        self.last_compute_s = time.perf_counter() - started
        self.batches += 1
        self.max_batch = max(self.max_batch, batch)
        return {name: t.to("cpu") for name, t in outputs.items()}

    def stats(self) -> FragmentStats:
        return FragmentStats(
            fragment_id=self._id, kv_blocks_total=0, kv_blocks_used=0, kv_blocks_free=0,
            sequences=0, block_size=0, batches=self.batches, max_batch=self.max_batch,
        )

    def _check(self, inputs: dict[str, torch.Tensor]) -> int:
        fid = self._id
        unknown = sorted(set(inputs) - set(self._by_name))
        if unknown:
            raise InvalidRequest(
                f"fragment {fid!r} has no input {unknown[0]!r}; it takes {', '.join(self._by_name)}"
            )
        missing = sorted(self._required - set(inputs))
        if missing and self._pooling and missing[0] in POOLING_INPUTS:
            raise InvalidRequest(
                f"fragment {fid!r} pools its output (pooling {self._pooling!r}) and needs input {missing[0]!r} on "
                f"every call: send {' and '.join(POOLING_INPUTS)} of one [N, seq] shape, 1 for tokens, 0 for padding"
            )
        if missing:
            raise InvalidRequest(f"fragment {fid!r} needs input {missing[0]!r}; it takes {', '.join(self._by_name)}")
        for name, tensor in inputs.items():
            self._check_tensor(self._by_name[name], tensor)
        batches = {name: int(t.shape[0]) for name, t in inputs.items()}
        if len(set(batches.values())) > 1:
            raise InvalidRequest(
                f"fragment {fid!r}: inputs disagree on the batch dimension 0 ({batches}); send one batch size"
            )
        if self._pooling and inputs["attention_mask"].shape != inputs["input_ids"].shape:
            raise InvalidRequest(
                f"fragment {fid!r}: attention_mask has shape {list(inputs['attention_mask'].shape)} but input_ids "
                f"{list(inputs['input_ids'].shape)}; pooling needs one mask entry per token"
            )
        return next(iter(batches.values()))

    def _check_tensor(self, sig: InputSig, tensor: torch.Tensor) -> None:
        fid = self._id
        want = "an integer" if sig.integer else "a floating"
        if tensor.is_floating_point() == sig.integer or tensor.dtype in (torch.bool, torch.complex64):
            raise InvalidRequest(
                f"fragment {fid!r}: input {sig.name!r} has dtype {dtype_name(tensor.dtype)}; send {want} dtype "
                f"({'int64' if sig.integer else dtype_name(self._dtype)})"
            )
        if tensor.dim() != len(sig.probe_shape) or tensor.shape[0] == 0:
            raise InvalidRequest(
                f"fragment {fid!r}: input {sig.name!r} has shape {list(tensor.shape)}; send "
                f"{_shape_text(self._input_spec(sig).shape)} with a batch of at least 1"
            )
        fixed = [d for d in range(1, tensor.dim()) if d not in sig.varying]
        if any(tensor.shape[d] != sig.probe_shape[d] for d in fixed):
            raise InvalidRequest(
                f"fragment {fid!r}: input {sig.name!r} has shape {list(tensor.shape)}; send "
                f"{_shape_text(self._input_spec(sig).shape)}"
            )
        if sig.name == "input_ids":
            self._check_ids(tensor)

    def _check_ids(self, ids: torch.Tensor) -> None:
        # Out-of-range ids would index past the embedding tables: an IndexError on CPU, a device assert on CUDA.
        fid, vocab, context = self._id, self._built.vocab_size, self._built.max_context
        if vocab and ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
            raise InvalidRequest(f"fragment {fid!r}: input 'input_ids' holds ids outside [0, {vocab})")
        if context and ids.shape[1] > context:
            raise InvalidRequest(
                f"fragment {fid!r}: input 'input_ids' has {ids.shape[1]} tokens, over the model's context of "
                f"{context}; truncate or split the text"
            )

    def _to_device(self, sig: InputSig, tensor: torch.Tensor) -> torch.Tensor:
        dtype = torch.int64 if sig.integer else self._dtype
        return tensor.to(device=self._device, dtype=dtype)

    def _forward(self, args: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        module = self._built.module
        with self._lookups.watching(args):
            if self._built.positional:
                out = module(*(args[sig.name] for sig in self._built.inputs))
            else:
                out = module(**args)
        named = _named_outputs(out, self._id)
        if not self._pooling:
            return named
        embedding = pool(self._pooling, self._token_embeddings(named, args), args["attention_mask"], self._normalize)
        return {"embedding": embedding}

    def _token_embeddings(self, named: dict[str, torch.Tensor], args: dict[str, torch.Tensor]) -> torch.Tensor:
        """last_hidden_state, else the model's first output: [batch, seq, hidden], one row per input token."""
        tokens = named.get("last_hidden_state", next(iter(named.values()), None))
        mask = args["attention_mask"]
        if tokens is None or tokens.dim() != 3 or tokens.shape[:2] != mask.shape:
            shape = None if tokens is None else list(tokens.shape)
            raise InvalidRequest(
                f"fragment {self._id!r}: pooling {self._pooling!r} needs token embeddings [batch, seq, hidden] "
                f"matching attention_mask {list(mask.shape)}, but the model returned {shape}; load it without pooling"
            )
        return tokens

    def _check_poolable(self) -> None:
        absent = [name for name in POOLING_INPUTS if name not in self._by_name]
        if absent:
            raise InvalidRequest(
                f"fragment {self._id!r}: pooling {self._pooling!r} needs a model that takes "
                f"{' and '.join(POOLING_INPUTS)}, but it has no {absent[0]!r} input (it takes "
                f"{', '.join(self._by_name)}); load it without pooling"
            )

    def _input_spec(self, sig: InputSig) -> TensorSpec:
        dtype = "int64" if sig.integer else dtype_name(self._dtype)
        shape = tuple(-1 if d in sig.varying else n for d, n in enumerate(sig.probe_shape))
        return TensorSpec(sig.name, dtype, shape, required=sig.name in self._required)

    def _probe(self) -> tuple[TensorSpec, ...]:
        """Runs the model on zero inputs at two batch sizes (and lengths) to learn its outputs' names and shapes."""
        runs = []
        required = [sig for sig in self._built.inputs if sig.name in self._required]
        try:
            with torch.no_grad():  # loads may run outside the engine thread's no_grad (tests, tools)
                for grow in PROBE_BATCHES:
                    runs.append(self._forward({sig.name: self._probe_input(sig, grow) for sig in required}))
        except torch.OutOfMemoryError:
            raise
        except (IndexError, ValueError, TypeError, RuntimeError) as exc:
            raise InvalidRequest(
                f"fragment {self._id!r}: the model does not run on zero-filled {[s.name for s in required]} "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); it needs inputs this engine does "
                "not know how to make, so it cannot be served as a stateless fragment yet"
            ) from None
        first, second = runs
        specs = []
        for name, tensor in first.items():
            shape = tuple(n if n == m else -1 for n, m in zip(tensor.shape, second[name].shape, strict=True))
            specs.append(TensorSpec(name, dtype_name(tensor.dtype), shape))
        return tuple(specs)

    def _probe_input(self, sig: InputSig, grow: int) -> torch.Tensor:
        shape = [n + grow - 1 if d in sig.varying else n for d, n in enumerate(sig.probe_shape)]
        return self._to_device(sig, torch.zeros(shape))


def load_stateless(spec: FragmentSpec, device: torch.device) -> StatelessFragment:
    """Builds the model in spec.model_dir on `device` in spec.dtype ("auto": bfloat16 where native)."""
    _check_pooling(spec)
    dtype = resolve_dtype(spec.dtype, device)
    built = build(Path(spec.model_dir), dtype, device)
    if spec.part == STAGE:  # blocks [layer_start, layer_end) of the chain in spec.cut (stages.py)
        built = stage_part(built, spec.cut, spec.layer_start, spec.layer_end, spec.fragment_id)
    elif spec.part in BRANCH_PARTS:  # one branch of a CLIP-style model (branches.py)
        built = branch_part(built, spec.part, spec.fragment_id)
    elif spec.part or spec.cut:  # one side of a recsys split (split.py)
        built = split_part(built, spec.part, spec.cut, spec.fragment_id)
    return StatelessFragment(spec.fragment_id, built, dtype, device, spec.pooling, spec.normalize)


def _check_pooling(spec: FragmentSpec) -> None:
    """Before any weight is read: a known pooling mode, and normalize only with one."""
    if spec.pooling and spec.pooling not in POOLING_MODES:
        raise InvalidRequest(
            f"fragment {spec.fragment_id!r}: pooling {spec.pooling!r} is unknown; use one of "
            f"{', '.join(POOLING_MODES)}, or '' for the model's own outputs"
        )
    if spec.normalize and not spec.pooling:
        raise InvalidRequest(
            f"fragment {spec.fragment_id!r}: normalize needs a pooling mode ({', '.join(POOLING_MODES)}); "
            "set pooling, or leave normalize off"
        )


def _named_outputs(out: object, fragment_id: str) -> dict[str, torch.Tensor]:
    """HF ModelOutput -> its tensor fields by name; a tensor -> "output"; a tuple -> "output_0", "output_1", ..."""
    if isinstance(out, torch.Tensor):
        return {"output": out}
    if isinstance(out, dict):  # ModelOutput is an OrderedDict of its non-None fields
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    if isinstance(out, (tuple, list)):
        return {f"output_{i}": v for i, v in enumerate(out) if isinstance(v, torch.Tensor)}
    if dataclasses.is_dataclass(out):
        fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
        return {k: v for k, v in fields.items() if isinstance(v, torch.Tensor)}
    raise InvalidRequest(f"fragment {fragment_id!r} returned {type(out).__name__}; return tensors, a tuple or a dict")


def _weights(module: torch.nn.Module) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for t in [*module.parameters(), *module.buffers()]:
        seen.setdefault(t.data_ptr(), t)  # tied weights count once
    return list(seen.values())


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("N" if n == -1 else str(n) for n in shape) + "]"
