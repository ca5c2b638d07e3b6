"""Constrained decoding on the worker: each guided sequence's next token must keep its output matching the
guide (a JSON schema, any JSON, a regex, a list of choices, or an EBNF grammar), compiled with xgrammar.

A guide is compiled once per distinct (kind, spec) with the model's tokenizer and kept in a bounded LRU. Each
guided sequence has a matcher, but the matcher is only a cache: the truth is the output ids the sequence holds
in this fragment (kept like `TokenHistory`: a step at position p keeps the first p ids). Before each draw the
matcher is brought level with those ids (reset and fed again when they changed under it), so a sequence that
was preempted, migrated, or whose step was retried gets exactly the mask an uninterrupted one gets.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genie.errors import InvalidRequest
from genie.workers.contract import SamplingParams, SeqStep
from genie.workers.guide_specs import guide_error, parse_grammar, xgrammar_module as _xgr

MAX_COMPILED = 64  # distinct guides kept compiled per fragment


class GuideCompiler:
    """Compiles guides for one model's tokenizer, read from `model_dir` on first use (never downloaded)."""

    def __init__(self, model_dir: str, vocab_size: int, max_compiled: int = MAX_COMPILED) -> None:
        self.model_dir = model_dir
        self.vocab_size = vocab_size
        self._max = max_compiled
        self._compiled: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._compiler: Any = None
        self.stop_ids: list[int] = []
        self._lock = threading.Lock()

    def get(self, kind: str, spec: str) -> Any:
        """The CompiledGrammar of (kind, spec); InvalidRequest for a guide that does not compile."""
        key = (kind, spec)
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                return self._compiled[key]
            compiler = self._ensure()
            try:
                compiled = compiler.compile_grammar(parse_grammar(kind, spec))
            except (ValueError, RuntimeError) as exc:
                raise InvalidRequest(f"the {kind} guide does not compile: {guide_error(exc)}") from None
            self._compiled[key] = compiled
            if len(self._compiled) > self._max:
                self._compiled.popitem(last=False)
            return compiled

    def __len__(self) -> int:
        return len(self._compiled)

    def _ensure(self) -> Any:
        if self._compiler is None:
            xgr = _xgr()
            tokenizer = _load_tokenizer(self.model_dir)
            self.stop_ids = sorted(_eos_ids(tokenizer, self.model_dir))
            info = xgr.TokenizerInfo.from_huggingface(
                tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids or None
            )
            self.stop_ids = list(info.stop_token_ids)
            self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        return self._compiler


def _load_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InvalidRequest(
            f"guided decoding needs the model's tokenizer, which cannot be read from {model_dir}: {exc}"
        ) from None


def _eos_ids(tokenizer: Any, model_dir: str) -> set[int]:
    """The tokenizer's EOS and generation_config's eos_token_id (as serving/tokenizer.py reads them)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = Path(model_dir) / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids


@dataclass(slots=True)
class _State:
    key: tuple[str, str]
    output: list[int] = field(default_factory=list)  # output ids the sequence holds (positions >= prompt_len)
    matcher: Any = None
    fed: int = 0  # output[:fed] is what the matcher has accepted
    stale: bool = False  # ids the matcher accepted were cut (a retry, a re-prefill): replay from the start
    broken: bool = False  # an output id the guide refuses arrived: only EOS is allowed from here


class Guides:
    """The guide state of each guided sequence in one fragment (the one holding the head), by seq id."""

    def __init__(self, compiler: GuideCompiler) -> None:
        self.compiler = compiler
        self._states: dict[str, _State] = {}

    def record(self, seqs: list[SeqStep]) -> None:
        """Keeps each guided sequence's output ids level with its KV (TokenHistory's rule) and compiles new
        guides; raises InvalidRequest (before anything runs) for a guide that does not compile."""
        for seq in seqs:
            p = seq.sampling
            if not p.guided:
                continue
            if seq.token_ids is None:
                raise InvalidRequest(
                    f"sequence '{seq.seq_id}' is guided, so the fragment that samples needs its token_ids "
                    "beside the hidden states"
                )
            self.compiler.get(p.guide_kind, p.guide_spec)
            key = (p.guide_kind, p.guide_spec)
            state = self._states.get(seq.seq_id)
            if state is None or state.key != key:
                state = self._states[seq.seq_id] = _State(key)
            start = max(seq.position - p.prompt_len, 0)
            state.stale |= start < state.fed
            del state.output[start:]
            state.output.extend(seq.token_ids[max(p.prompt_len - seq.position, 0):])

    def masks(self, seq_ids: list[str], params: list[SamplingParams]) -> dict[int, torch.Tensor]:
        """Row index -> int32 bitmask [ceil(vocab / 32)] (bit t of word t // 32 set: token t allowed) for the
        guided rows; the matchers are first brought level with the output ids each sequence holds."""
        rows = [i for i, p in enumerate(params) if p.guided]
        if not rows:
            return {}
        xgr = _xgr()
        bitmask = xgr.allocate_token_bitmask(len(rows), self.compiler.vocab_size)
        for j, i in enumerate(rows):
            state = self._states[seq_ids[i]]
            self._sync(state)
            if state.broken or state.matcher.is_terminated():
                bitmask[j] = _only(self.compiler.stop_ids, bitmask.shape[1])
            else:
                state.matcher.fill_next_token_bitmask(bitmask, j)
        return dict(zip(rows, bitmask.unbind(0)))

    def forget(self, seq_ids: Iterable[str]) -> None:
        for seq_id in seq_ids:
            self._states.pop(seq_id, None)

    def __contains__(self, seq_id: str) -> bool:
        return seq_id in self._states

    def __len__(self) -> int:
        return len(self._states)

    def _sync(self, state: _State) -> None:
        if state.matcher is None or state.stale:  # first draw, or the ids changed under the matcher
            state.matcher = _xgr().GrammarMatcher(self.compiler.get(*state.key))
            state.fed, state.stale, state.broken = 0, False, False
        for token in state.output[state.fed:]:
            if state.broken or state.matcher.is_terminated() or not state.matcher.accept_token(token):
                state.broken = True
        state.fed = len(state.output)


def _only(ids: list[int], words: int) -> torch.Tensor:
    mask = torch.zeros(words, dtype=torch.int32)
    for token in ids:
        word, bit = divmod(token, 32)
        if word < words:
            mask[word] |= _bit(bit)
    return mask


def _bit(bit: int) -> int:
    return (1 << bit) - (1 << 32) if bit == 31 else 1 << bit  # int32 words: bit 31 is the sign


def apply_masks(rows: torch.Tensor, masks: list[torch.Tensor], may_hold_inf: bool = True) -> torch.Tensor:
    """rows: [G, vocab] float32; masks: G int32 bitmasks [ceil(vocab / 32)]. Sets every disallowed logit to
    -inf, in place (xgrammar's kernel). A row whose allowed logits were all -inf already (min_tokens masking
    the EOS a finished guide allows) gets 0 on its allowed tokens: the guide wins, evenly. `may_hold_inf`
    False says no row held -inf before, which skips that check (a pass over the rows)."""
    bits = torch.stack(masks).to(rows.device)  # [G, words]
    _xgr().apply_token_bitmask_inplace(rows, bits)
    if not may_hold_inf:
        return rows
    empty = rows.amax(dim=1) == float("-inf")
    if bool(empty.any()):
        allowed = _unpack(bits[empty], rows.shape[1])
        rows[empty] = torch.where(allowed | ~allowed.any(dim=1, keepdim=True), 0.0, float("-inf"))
    return rows


def _unpack(bits: torch.Tensor, vocab: int) -> torch.Tensor:
    """[R, words] int32 -> [R, vocab] bool: bit t % 32 of word t // 32."""
    shifts = torch.arange(32, dtype=torch.int32, device=bits.device)
    return ((bits[:, :, None] >> shifts) & 1).bool().reshape(bits.shape[0], -1)[:, :vocab]
