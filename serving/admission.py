"""The scheduler's judgements on one request: whether it may be queued at all, why it fits no replica, and
whether the token it just sampled ends it."""

from __future__ import annotations

from collections.abc import Container

from genie.errors import AlreadyExists, InvalidRequest
from genie.serving.block_manager import BlockManager
from genie.serving.request import FinishReason, Phase, Request
from genie.serving.scheduler_config import SchedulerConfig


def validate(request: Request, config: SchedulerConfig, blocks: BlockManager, live: Container[str]) -> None:
    """Raises InvalidRequest or AlreadyExists for a request the scheduler must not queue."""
    rid = request.request_id
    if rid in live:
        raise AlreadyExists(f"request id {rid!r} is already in use; use a unique id per request")
    if request.phase is not Phase.QUEUED or request.num_computed or request.replica is not None:
        raise InvalidRequest(f"request {rid!r} was already scheduled; build a new Request to resubmit")
    if not request.prompt_ids:
        raise InvalidRequest(f"request {rid!r} has an empty prompt; give at least one token")
    if request.max_tokens < 1:
        raise InvalidRequest(f"max_tokens must be >= 1, got {request.max_tokens}")
    if request.num_tokens >= config.max_context:
        raise InvalidRequest(
            f"the prompt has {request.num_tokens} tokens but the model's context is "
            f"{config.max_context} tokens, which leaves no room for output; shorten the prompt"
        )
    largest = max((blocks.capacity_tokens(r) for r in blocks.replicas), default=0)
    if blocks.replicas and request.num_tokens > largest:
        raise InvalidRequest(
            f"the prompt has {request.num_tokens} tokens but the largest KV cache holds {largest} tokens "
            f"per sequence; shorten the prompt to at most {largest} tokens"
        )


def no_fit(req: Request, blocks: BlockManager) -> str:
    """Why a request fits no live replica's KV cache."""
    if not blocks.replicas:
        return "no worker replica is available to run this request"
    largest = max(blocks.capacity_tokens(r) for r in blocks.replicas)
    return (
        f"the request needs {req.num_tokens} tokens of KV but the largest KV cache of the live replicas "
        f"holds {largest} tokens per sequence"
    )


def stop_reason(req: Request, token: int, config: SchedulerConfig,
                blocks: BlockManager) -> tuple[FinishReason | None, str | None]:
    """Why the token just sampled ends req, if it does: EOS or a stop token, max_tokens, or a context limit."""
    assert req.replica is not None
    capacity = blocks.capacity_tokens(req.replica)
    if token in req.stop_token_ids or (not req.ignore_eos and token in req.eos_token_ids):
        return FinishReason.STOP, None
    if req.num_output >= req.max_tokens:
        return FinishReason.LENGTH, None
    if req.num_tokens >= config.max_context:
        return FinishReason.LENGTH, f"reached the model's context of {config.max_context} tokens"
    if req.num_tokens >= capacity:
        return FinishReason.LENGTH, (
            f"reached {capacity} tokens, all that one sequence can hold in replica {req.replica!r}'s KV cache"
        )
    return None, None
