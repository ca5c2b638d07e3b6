"""A loaded fragment: weights, its pinned paged KV cache, and the batched `step` over many sequences."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from genie.workers.engine.batch import AttnBatch, HeadLayout, SeqLayout, build_batch, sequence_slots
from genie.workers.engine.kernels import Kernels
from genie.workers.engine.block_tables import BlockTables
from genie.workers.engine.guides import GuideCompiler, Guides
from genie.workers.engine.kv_cache import KVCache
from genie.workers.engine.logits_processors import TokenHistory
from genie.workers.engine.model import FragmentModel
from genie.workers.engine.sampling import sample_rows
from genie.workers.contract import FragmentInfo, FragmentSpec, FragmentStats, SeqResult, SeqStep
from genie.workers.engine.validation import Limits, validate_step


class Fragment:
    def __init__(
        self,
        spec: FragmentSpec,
        info: FragmentInfo,
        model: FragmentModel,
        kv: KVCache,
        tables: BlockTables,
        heads: HeadLayout,
        kernels: Kernels,
    ) -> None:
        self.spec = spec
        self.kernels = kernels.name  # "torch" or "native": what norms, attention and argmax run on
        self._kernels = kernels
        self.info = info
        self.model = model
        self.kv = kv
        self.heads = heads
        self.dtype = heads.dtype
        self.device = heads.device
        self._tables = tables
        self._limits = Limits(
            fragment_id=spec.fragment_id,
            has_embedding=spec.has_embedding,
            has_head=spec.has_head,
            hidden_size=info.hidden_size,
            vocab_size=info.vocab_size,
            max_context=info.max_context,
        )
        self._rng = torch.Generator()  # for unseeded draws
        self._rng.seed()
        self._history = TokenHistory()  # ids of the sequences whose penalties count them
        # output ids and matchers of guided sequences; the tokenizer is read on the first guided step
        self._guides = Guides(GuideCompiler(spec.model_dir, info.vocab_size))

    def step(self, seqs: list[SeqStep]) -> list[SeqResult]:
        """One batched forward over prefill chunks and decode tokens; results come in the order of `seqs`.
        The whole batch is checked first; a step that fails leaves every sequence exactly as it was."""
        validate_step(seqs, self._limits, self._tables)
        growths = []
        try:
            for seq in seqs:
                end = seq.position + seq.num_tokens
                growths.append(self._tables.grow(seq.seq_id, end, seq.cached_prefix, seq.new_block_hashes))
            if self.spec.has_head:  # a retry at the same position overwrites what this step recorded
                self._history.record(seqs)
                self._guides.record(seqs)
            results = self._run(seqs)
        except BaseException:
            self._tables.rollback(growths)
            gone = [s.seq_id for s in seqs if not self.has_sequence(s.seq_id)]
            self._history.forget(gone)
            self._guides.forget(gone)
            raise
        self._tables.commit(growths)
        return results

    def release(self, seq_ids: Iterable[str]) -> int:
        """Frees the KV blocks of these sequences; unknown ids are ignored. Returns how many were released."""
        seq_ids = list(seq_ids)
        self._history.forget(seq_ids)
        self._guides.forget(seq_ids)
        return self._tables.release(seq_ids)

    def evict(self, hashes: Iterable[bytes]) -> int:
        """Frees cached KV blocks no sequence holds (the router's prefix cache evicts them to make room)."""
        return self._tables.evict(hashes)

    @property
    def fresh_blocks(self) -> int:
        """Blocks a new sequence that starts from no cached prefix can take now (evictable ones are not free
        until the router evicts them)."""
        return self._tables.allocator.num_free

    def release_all(self) -> tuple[int, int]:
        """Frees every sequence, then every cached block: a restarted router knows none of them, so it could
        neither release nor evict them. Returns (sequences released, cached blocks evicted)."""
        released = self.release(self._tables.seq_ids())
        return released, self._tables.evict(self._tables.cached_hashes())

    def has_sequence(self, seq_id: str) -> bool:
        return seq_id in self._tables

    def kv_length(self, seq_id: str) -> int:
        """Tokens `seq_id` holds in the KV cache (0 for an unknown sequence)."""
        return self._tables.length(seq_id) or 0

    def reserve(self, seq_id: str, tokens: int, prefix: Sequence[bytes] = (), new_hashes: Sequence[bytes] = ()) -> None:
        """Starts `seq_id` with blocks for `tokens` tokens whose KV the caller writes itself (kv_io): the cached
        blocks `prefix` first, then fresh ones, the full ones among them named `new_hashes`."""
        self._tables.commit([self._tables.grow(seq_id, tokens, prefix, new_hashes)])

    def cached_missing(self, names: Sequence[bytes]) -> list[bytes]:
        """The names among `names` of no cached block here."""
        return self._tables.missing(names)

    def kv_slots(self, seq_id: str, tokens: int) -> torch.Tensor:
        """[tokens] long on the fragment's device: the flat cache slot of positions 0..tokens-1 of `seq_id`,
        for indexing dim 1 of the [kv_heads, slots, head_dim] caches."""
        return sequence_slots(self._tables.blocks(seq_id), tokens, self.kv.block_size).to(self.device)

    def stats(self) -> FragmentStats:
        tables = self._tables
        evictable = tables.num_evictable
        return FragmentStats(
            fragment_id=self.spec.fragment_id,
            kv_blocks_total=tables.allocator.num_blocks,
            kv_blocks_used=tables.allocator.num_used - evictable,
            kv_blocks_free=tables.allocator.num_free + evictable,
            sequences=len(tables),
            block_size=self.kv.block_size,
            kv_blocks_cached=tables.num_cached,
            kv_blocks_evictable=evictable,
            kv_blocks_shared=tables.num_shared,
        )

    @torch.no_grad()
    def _run(self, seqs: list[SeqStep]) -> list[SeqResult]:
        # decodes first: attention handles them as one group and the prefill chunks as another
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].num_tokens > 1)
        seqs = [seqs[i] for i in order]
        layouts = [SeqLayout(self._tables.blocks(s.seq_id), s.position, s.num_tokens) for s in seqs]
        batch = build_batch(layouts, self.kv.block_size, self.heads, per_token=self._kernels.per_token)
        x = self.model.forward(self._inputs(seqs, batch), batch, self.kv)  # [T, hidden]
        results = self._hidden(seqs, x) if not self.spec.has_head else self._sample(seqs, x, batch)
        by_caller_index = dict(zip(order, results))
        return [by_caller_index[i] for i in range(len(seqs))]

    def _hidden(self, seqs: list[SeqStep], x: torch.Tensor) -> list[SeqResult]:
        hidden = x.cpu().split([s.num_tokens for s in seqs])
        return [SeqResult(s.seq_id, hidden=h) for s, h in zip(seqs, hidden)]

    def _sample(self, seqs: list[SeqStep], x: torch.Tensor, batch: AttnBatch) -> list[SeqResult]:
        results = [SeqResult(s.seq_id) for s in seqs]
        picked = [i for i, s in enumerate(seqs) if s.sample]
        if not picked:
            return results
        rows = torch.tensor([batch.last_rows[i] for i in picked], device=self.device)
        logits = self.model.logits(x.index_select(0, rows))  # [S, vocab] in the compute dtype
        greedy = self._kernels.argmax(logits).tolist()
        params = [seqs[i].sampling for i in picked]
        positions = [seqs[i].position + seqs[i].num_tokens for i in picked]
        histories = [self._history.get(seqs[i].seq_id) for i in picked] if len(self._history) else None
        masks = self._guides.masks([seqs[i].seq_id for i in picked], params) if len(self._guides) else None
        drawn_rows = sample_rows(logits, params, positions, self._rng, greedy, histories, masks)
        for i, drawn in zip(picked, drawn_rows):
            results[i].token_id, results[i].logprob, results[i].top = drawn.token_id, drawn.logprob, drawn.top
        return results

    def _inputs(self, seqs: list[SeqStep], batch: AttnBatch) -> torch.Tensor:
        if self.spec.has_embedding:
            ids = torch.tensor([t for s in seqs for t in s.token_ids], dtype=torch.long, device=self.device)
            return self.model.embed(ids, batch.positions)
        return torch.cat([s.hidden.to(device=self.device, dtype=self.dtype) for s in seqs])
