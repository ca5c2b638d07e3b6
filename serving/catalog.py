"""The models one genie-serve serves, by name, and what kind each is: every request is routed by its `model`.

An LLM entry has a router (continuous batching over KV replicas); a stateless entry has a StatelessService
(dynamic batching over interchangeable replicas) and, when the model folder says how to pool (its
sentence-transformers files), serves embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from genie.errors import InvalidRequest, NotFound, Unavailable
from genie.workers.contract import TensorSpec

from .generation import ServedModel
from .protocol import show
from .router import Router
from .stateless.service import StatelessService
from .stateless.st_files import Pooling
from .tokenizer import Tokenizer


@dataclass(slots=True)
class LLMEntry:
    model: ServedModel
    router: Router
    tokenizer: Tokenizer
    restarting: set[str] = field(default_factory=set)  # replicas its supervisor is bringing back

    kind = "llm"

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def service(self) -> Router:
        return self.router


@dataclass(slots=True)
class StatelessEntry:
    name: str
    created: int  # unix time the version was registered
    service: StatelessService
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tokenizer: Tokenizer | None = None  # text models
    pooling: Pooling | None = None  # set: the model serves /v1/embeddings
    max_tokens: int = 0  # longest text input in tokens (text models)
    vocab_size: int = 0
    restarting: set[str] = field(default_factory=set)

    @property
    def kind(self) -> str:
        return "embedding" if self.pooling is not None else "tensor"

    @property
    def dimensions(self) -> int | None:
        for spec in self.outputs:
            if spec.name == "embedding":
                return spec.shape[-1]
        return None


Entry = LLMEntry | StatelessEntry


class Catalog:
    def __init__(self, entries: list[Entry], waiting: dict[str, str] | None = None) -> None:
        self.entries: dict[str, Entry] = {e.name: e for e in entries}
        # Models the config names that are not served yet: name -> why (serving/registry_watch loads them).
        self.waiting: dict[str, str] = dict(waiting or {})

    def add(self, entry: Entry) -> None:
        """A model that became ready while serving (registered after the start)."""
        self.waiting.pop(entry.name, None)
        self.entries[entry.name] = entry

    def names(self) -> list[str]:
        return list(self.entries)

    @property
    def llms(self) -> list[LLMEntry]:
        return [e for e in self.entries.values() if isinstance(e, LLMEntry)]

    def get(self, body: Any) -> Entry:
        """The entry a request body names in its `model` field."""
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' is required and must be a string; GET /v1/models lists the served models")
        return self.named(model)

    def named(self, model: str) -> Entry:
        entry = self.entries.get(model)
        if entry is None and model in self.waiting:
            raise Unavailable(f"model {show(model)} is not ready here yet: {self.waiting[model]}",
                              param="model", code="model_not_ready")
        if entry is None:
            served = ", ".join(f"'{n}'" for n in self.entries)
            raise NotFound(f"model {show(model)} is not served here; this server serves {served}",
                           param="model", code="model_not_found")
        return entry

    def llm(self, body: Any) -> LLMEntry:
        entry = self.get(body)
        if not isinstance(entry, LLMEntry):
            use = "POST /v1/embeddings" if entry.kind == "embedding" else "its tensor inputs (KServe v2)"
            raise InvalidRequest(
                f"'model': '{entry.name}' is an {entry.kind} model, not a generative one; it has no completions "
                f"or chat, use {use}"
            )
        return entry

    def embedder(self, body: Any) -> StatelessEntry:
        entry = self.get(body)
        if isinstance(entry, LLMEntry):
            raise InvalidRequest(
                f"'model': '{entry.name}' is a generative model; /v1/embeddings serves embedding models "
                f"({', '.join(self._of_kind('embedding')) or 'none here'})"
            )
        if entry.pooling is None:
            raise InvalidRequest(
                f"'model': '{entry.name}' has no pooling (no sentence-transformers modules.json and "
                "1_Pooling/config.json in its folder), so it gives tensors, not embeddings"
            )
        return entry

    def _of_kind(self, kind: str) -> list[str]:
        return [f"'{e.name}'" for e in self.entries.values() if e.kind == kind]
