"""What the scheduler is configured with and the names it uses: limits from the serving config, the outcome
of a replica failure, replica roles under disaggregation, and the states of a KV handoff."""

from __future__ import annotations

from dataclasses import dataclass

from genie.config import ServingConfig
from genie.errors import ConfigError
from genie.serving.request import Request


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_batch_tokens: int = 2048  # tokens per step across all sequences
    max_running_requests: int = 64  # admitted requests at once, so also sequences per step
    max_queue: int = 256  # waiting requests beyond which add() raises ResourceExhausted
    prefill_chunk_tokens: int = 512  # longest prefill chunk of one request per step
    max_context: int = 8192  # prompt + output tokens one request may reach (the model's context)
    migration_limit: int = 0  # moves of one request to another replica when its replica fails; 0 ends it
    prefix_caching: bool = True  # reuse the cached KV blocks of a shared prefix
    # A failed replica is restarted (workers.restart): a request with no other replica to move to waits in
    # the queue for the restart instead of ending (the router bounds the wait).
    wait_for_restart: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_running_requests", "prefill_chunk_tokens", "max_context"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"scheduler {name} must be > 0, got {getattr(self, name)}")
        for name in ("max_queue", "migration_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"scheduler {name} must be >= 0, got {getattr(self, name)}")
        if self.prefill_chunk_tokens > self.max_batch_tokens:
            raise ConfigError(
                f"scheduler prefill_chunk_tokens ({self.prefill_chunk_tokens}) must be <= max_batch_tokens "
                f"({self.max_batch_tokens})"
            )

    @classmethod
    def from_serving(cls, serving: ServingConfig, max_context: int, wait_for_restart: bool = False) -> SchedulerConfig:
        """The serving section of the YAML config plus the model's context length (from the workers), and
        whether failed replicas are restarted (workers.restart)."""
        return cls(
            max_batch_tokens=serving.max_batch_tokens,
            max_running_requests=serving.max_running_requests,
            max_queue=serving.max_queue,
            prefill_chunk_tokens=serving.prefill_chunk_tokens,
            max_context=max_context,
            migration_limit=serving.migration_limit,
            prefix_caching=serving.prefix_caching,
            wait_for_restart=wait_for_restart,
        )


@dataclass(frozen=True, slots=True)
class ReplicaFailure:
    """What fail_replica did: requests moved back to the queue for another replica, and those it ended."""

    migrated: list[Request]
    failed: list[Request]


ROUTE_SLACK = 8  # running requests a replica may have beyond the least loaded one and still win on its cache
PREFILL, DECODE = "prefill", "decode"  # replica roles under disaggregation; a replica without one does both
WAITING, MOVING = "waiting", "moving"  # Request.handoff: prefilled, waiting for a decode replica / KV being sent
