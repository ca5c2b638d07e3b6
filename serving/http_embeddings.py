"""`POST /v1/embeddings` (OpenAI): text or token ids in, one pooled vector per input out.

Every input is one job in the model's dynamic batcher, so the inputs of one request and those of concurrent
requests share forwards. Inputs are checked against the model's context before anything is queued.
"""

from __future__ import annotations

import numpy as np
from aiohttp import web

from genie.errors import InvalidRequest

from .access_log import note
from .catalog import StatelessEntry
from .embeddings_protocol import EmbeddingsRequest, embeddings_response, parse_embeddings
from .generation import CHARS_PER_TOKEN_BOUND
from .http_guard import read_json


async def embeddings(request: web.Request) -> web.Response:
    from .http import STATE  # http imports this module; its AppKey is the one the app holds

    state = request.app[STATE]
    body = await read_json(request, state.max_body_bytes)
    entry = state.catalog.embedder(body)
    req = parse_embeddings(body)
    if req.dimensions is not None and req.dimensions != entry.dimensions:
        raise InvalidRequest(
            f"'dimensions': model '{entry.name}' gives {entry.dimensions}-dimensional embeddings and cannot "
            f"shorten them; leave 'dimensions' out or send {entry.dimensions}"
        )
    rows = await encode_inputs(entry, req)
    note(request, req.model, tokens=sum(map(len, rows)))
    outputs = await entry.service.run_ids(rows)
    vectors = np.stack([out["embedding"].float().numpy() for out in outputs])
    return web.json_response(embeddings_response(req.model, vectors, req.encoding_format, sum(map(len, rows))))


async def encode_inputs(entry: StatelessEntry, req: EmbeddingsRequest) -> list[list[int]]:
    """Token ids of every input, each checked against the model's context (and vocabulary, for ids)."""
    limit = entry.max_tokens
    where = (lambda i: "input") if len(req.inputs) == 1 else (lambda i: f"input[{i}]")
    if req.token_input:
        rows = [list(ids) for ids in req.inputs]
        for i, ids in enumerate(rows):
            bad = next((t for t in ids if t >= entry.vocab_size), None)
            if bad is not None:
                raise InvalidRequest(
                    f"'{where(i)}' holds token id {bad}, outside this model's vocabulary of {entry.vocab_size}"
                )
    else:
        for i, text in enumerate(req.inputs):
            if len(text) > limit * CHARS_PER_TOKEN_BOUND:
                raise InvalidRequest(
                    f"'{where(i)}' has {len(text)} characters, more than model '{entry.name}' reads "
                    f"({limit} tokens); shorten or split it"
                )
        assert entry.tokenizer is not None
        rows = await entry.tokenizer.encode_many_async(list(req.inputs))
    for i, ids in enumerate(rows):
        if len(ids) > limit:
            raise InvalidRequest(
                f"'{where(i)}' has {len(ids)} tokens, more than the {limit} model '{entry.name}' reads; "
                "shorten or split it"
            )
    return rows
