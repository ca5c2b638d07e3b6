"""Bringing one LLM up on started workers: fragments loaded and warmed, a scheduler sized to its KV, a router."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from genie.config import GenieConfig, ModelConfig
from genie.errors import InvalidRequest
from genie.registry.cluster import cluster_from_config

from .catalog import LLMEntry
from .disaggregation import describe, kv_bytes_per_token, serving_roles
from .generation import ServedModel
from .launcher import WorkerPool, check_servable, fragment_specs, load_replicas, warm_up
from .metrics import Metrics
from .plans_llm import LLMPlanReport
from .prepare import Prepared
from .router import Router
from .scheduler import Scheduler, SchedulerConfig
from .supervisor import Supervisor
from .tokenizer import Tokenizer

log = logging.getLogger("genie.serve")


def model_context(model_dir: Path, model: ModelConfig, per_sequence_tokens: int) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    limits = [config.get("max_position_embeddings") or config.get("n_positions") or 2048, per_sequence_tokens]
    if model.max_context:
        limits.append(model.max_context)
    return int(min(limits))


async def start_llm(cfg: GenieConfig, prepared: Prepared, pool: WorkerPool, metrics: Metrics,
                    artifact_root: str) -> tuple[LLMEntry, Supervisor]:
    version, plan, model_cfg = prepared.version, prepared.plan, prepared.config
    step_timeout = cfg.serving.worker_timeout_s
    hashes = {a.path: a.sha256 for a in version.artifacts}
    plan, roles = serving_roles(plan, cfg.serving.disaggregation)
    check_servable(plan)
    specs = fragment_specs(plan, str(version.path), cfg, hashes, model_cfg)
    replicas, infos = await load_replicas(plan, pool, specs, cfg.workers.start_timeout_s)
    tokenizer = await asyncio.to_thread(Tokenizer, version.path)
    block_size = infos[0].block_size
    per_sequence = min(r.num_blocks for r in replicas.values()) * block_size
    max_context = model_context(version.path, model_cfg, min(per_sequence, min(i.max_context for i in infos)))
    scheduler = Scheduler(
        SchedulerConfig.from_serving(cfg.serving, max_context, wait_for_restart=cfg.workers.restart),
        {name: r.num_blocks for name, r in replicas.items()},
        block_size,
        seeds={name: r.prefix_seed for name, r in replicas.items()},
        roles=roles,
    )
    probe = tokenizer.encode("Hello, world")
    if not probe:
        raise InvalidRequest(
            f"the tokenizer of {version.ref} turns text into no tokens; its tokenizer files are broken "
            "(re-register the model with a working tokenizer.json)"
        )
    supervisor = Supervisor(cfg, plan, pool, specs, probe, artifact_root)
    router = Router(scheduler, replicas, tokenizer, metrics, step_timeout=step_timeout,
                    on_replica_down=supervisor.replica_down, handoff_lease_s=cfg.serving.handoff_lease_s,
                    kv_bytes_per_token=kv_bytes_per_token(prepared.profile, infos[0].dtype),
                    restart_wait_s=cfg.workers.start_timeout_s if cfg.workers.restart else None)
    if roles:
        log.info("model %s %s", model_cfg.name, describe(roles, cfg.serving.handoff_lease_s))
    supervisor.router = router
    await warm_up(replicas, probe, step_timeout)
    router.plan_report = LLMPlanReport(model_cfg.name, plan, prepared.profile, metrics, pool.clients,
                                       prepared.cluster or cluster_from_config(cfg))
    await router.plan_report.begin(step_timeout)  # GET /v1/genie/plans: predicted beside measured
    model = ServedModel(model_cfg.name, max_context, cfg.serving.default_max_tokens,
                        int(version.created_at.timestamp()))
    return LLMEntry(model, router, tokenizer, supervisor.restarting), supervisor
