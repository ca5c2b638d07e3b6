"""Bringing one stateless model (encoder, vision model, `py:` factory) up: one whole copy per replica (or the
stages of a recsys split, or the branches of a CLIP-style model), a batch policy from its profile unless the
config sets one, and a StatelessService with its supervisor."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path

import torch

from genie.config import GenieConfig, ModelConfig, Strategy
from genie.errors import ConfigError
from genie.registry.cluster import cluster_from_config
from genie.registry.hf import TOKENIZER_FILES
from genie.semantic import Plan
from genie.semantic.profile import Profile
from genie.workers.contract import STATELESS, FragmentInfo, FragmentSpec, TensorSpec

from .catalog import StatelessEntry
from .launcher import WorkerPool, load_replicas
from .metrics import Metrics
from .plans import PlanReport
from .prepare import Prepared
from .replica import Replica
from .stateless.batcher import BatchPolicy, length_buckets
from .stateless.executors import SPLIT, executor_for, specs_for
from .stateless.replan import Replanner, signature
from .stateless.service import StatelessService, TextInputs
from .stateless.st_files import Pooling, read_pooling
from .supervisor import Supervisor
from .tokenizer import Tokenizer

log = logging.getLogger("genie.serve")

LARGEST_DEFAULT_BATCH = 64
ACTIVATION_SHARE = 4  # a batch's activations may take 1/4 of what the worker has left after the weights
TOKEN_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids"})  # what the text door makes from text


def served_plan(plan: Plan, model: ModelConfig) -> Plan:
    """The plan as it runs: a recsys split, a pipeline, or a branch-parallel plan the config pinned, as planned
    (their executors: stateless/split.py, stateless/pipeline.py, stateless/branches.py); another split, when the
    planner chose it, as whole copies (whole_model_plan); when the config pinned it, refused."""
    if plan.strategy in ("recsys_split", "pipeline") or (plan.strategy == "branch_parallel"
                                                         and model.strategy is Strategy.BRANCH_PARALLEL):
        return plan
    if model.strategy is not Strategy.AUTO and any(len(group) > 1 for group in plan.replicas()):
        raise ConfigError(f"model {model.name!r}: strategy {model.strategy.value} was pinned and planned, but "
                          f"genie-serve does not run {plan.strategy} plans of stateless models yet; pin replicas "
                          "(recsys_split for a recommender, branch_parallel for a CLIP-style model)")
    return whole_model_plan(plan, model.name)


def whole_model_plan(plan: Plan, model: str) -> Plan:
    """One fragment per replica, each the whole model. A plan that splits a model across workers (issue 12's
    branch-parallel and recsys splits) is served as one whole copy on each worker it uses, for now."""
    if all(len(group) == 1 for group in plan.replicas()):
        return plan
    workers = sorted({f.worker for f in plan.fragments}, key=lambda w: (len(w), w))
    log.warning("model %s: plan %s splits the model across workers; split plans do not run yet, so each of %s "
                "serves a whole copy", model, plan.strategy, ", ".join(workers))
    first = plan.fragments[0]
    prefix = first.fragment_id.rsplit(".", 1)[0] + "." if "." in first.fragment_id else ""
    nodes = [n for f in plan.fragments for n in f.nodes]  # every block of the model
    fragments = [
        dataclasses.replace(first, fragment_id=f"{prefix}r{i}", worker=w, replica=i, stage=0, role="all",
                            nodes=nodes, reason=f"whole model on {w} (the plan's split does not run yet)")
        for i, w in enumerate(workers)
    ]
    return dataclasses.replace(plan, fragments=fragments, transfers=[])


def batch_policy(model: ModelConfig, profile: Profile, max_queue: int, max_tokens: int,
                 memory_bytes: int) -> BatchPolicy:
    """The config's max_batch_size / max_queue_delay_ms, or defaults: from the profile, the largest batch (a
    power of two, at most 64) whose activations at the longest input fit a quarter of the worker's free memory;
    no queue delay. With no delay the batcher is work-conserving: a free replica takes what waits at once, and
    batches form from the requests that arrive while every replica is busy. A delay only ever helps while some
    replica idles, and then it costs the waiting request that much latency (measured in
    benchmarks/stateless_serve.py: a lone request paid more than the delay)."""
    size = model.max_batch_size
    if size is None:
        per_request = max([p.activation_bytes for p in profile.phases if p.unit == "request"] or [0])
        probe_len = max((i.shape[1] for i in profile.inputs if len(i.shape) > 1 and i.modality == "text"), default=0)
        if probe_len and max_tokens:
            per_request = per_request * max_tokens // probe_len
        free = max(0, memory_bytes - profile.cost.param_bytes) // ACTIVATION_SHARE
        size = LARGEST_DEFAULT_BATCH
        while size > 1 and per_request * size > free:
            size //= 2
    delay = (model.max_queue_delay_ms or 0.0) / 1000
    edges = length_buckets(max_tokens) if max_tokens else ()
    return BatchPolicy(size, delay, max(max_queue, size), edges)


def probe_inputs(specs: tuple[TensorSpec, ...], text_ids: list[int] | None) -> dict[str, torch.Tensor]:
    """A batch of one that any replica of the model accepts: the tokenized probe text, or zeros."""
    if text_ids is not None:
        ids = torch.tensor([text_ids], dtype=torch.int64)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if any(s.name == "token_type_ids" for s in specs):
            inputs["token_type_ids"] = torch.zeros_like(ids)
        return inputs
    return {s.name: torch.zeros([1 if n == -1 else n for n in s.shape], dtype=getattr(torch, s.dtype))
            for s in specs}


def _max_tokens(version_path, model: ModelConfig, pooling: Pooling | None, info: FragmentInfo) -> int:
    limits = [n for n in (pooling.max_seq_length if pooling else None, info.max_context or None,
                          model.max_context) if n]
    if not limits:
        config = json.loads((version_path / "config.json").read_text())
        limits = [config.get("max_position_embeddings") or 512]
    return int(min(limits))


def serves_text(inputs: tuple[TensorSpec, ...], model_dir: Path) -> bool:
    """Text comes in (tokenized here) when the model reads token ids only and its folder has a tokenizer. A model
    that also reads pixels (CLIP) or a folder without a tokenizer takes its inputs as tensors."""
    names = {s.name for s in inputs}
    has_tokenizer = any((model_dir / name).is_file() for name in TOKENIZER_FILES)
    return "input_ids" in names and names <= TOKEN_INPUTS and has_tokenizer


def coupled_outputs(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> list[str]:
    """Outputs of a batch of one and of two equal rows whose shape beyond the batch dimension differs: each of
    their rows depends on the whole batch (CLIP's logits_per_image is [images, texts]), so rows of two requests
    must never share a forward."""
    return [name for name, t in one.items() if tuple(t.shape[1:]) != tuple(two[name].shape[1:])]


async def _coupled(execute, replica: Replica, probe: dict[str, torch.Tensor], timeout: float) -> list[str]:
    one = await execute(replica, probe, timeout)
    doubled = {name: torch.cat([t, t]) for name, t in probe.items()}
    return coupled_outputs(one, await execute(replica, doubled, timeout))


async def start_stateless(cfg: GenieConfig, prepared: Prepared, pool: WorkerPool, metrics: Metrics,
                          memory_bytes: int) -> tuple[StatelessEntry, Supervisor]:
    version, model_cfg = prepared.version, prepared.config
    plan = served_plan(prepared.plan, model_cfg)
    split = plan.strategy in SPLIT
    pooling = None if split else await asyncio.to_thread(read_pooling, version.path)
    hashes = tuple(sorted((a.path, a.sha256) for a in version.artifacts))
    base = FragmentSpec(fragment_id="", model_dir=str(version.path), dtype=model_cfg.dtype.value,
                        expected_sha256=hashes, kind=STATELESS, pooling=pooling.mode if pooling else "",
                        normalize=pooling.normalize if pooling else False)
    specs = specs_for(plan, base)
    replicas, infos = await load_replicas(plan, pool, specs, cfg.workers.start_timeout_s)
    execute, info = executor_for(plan, infos)
    text = pooling is not None or serves_text(info.inputs, version.path)  # embeddings always come from text
    tokenizer = await asyncio.to_thread(Tokenizer, version.path) if text else None
    max_tokens = _max_tokens(version.path, model_cfg, pooling, info) if text else 0
    policy = batch_policy(model_cfg, prepared.profile, cfg.serving.max_queue, max_tokens, memory_bytes)
    text_inputs = None
    probe_ids = None
    if tokenizer is not None:
        text_inputs = TextInputs(tokenizer.pad_token_id, max_tokens,
                                 any(s.name == "token_type_ids" for s in info.inputs))
        probe_ids = tokenizer.encode_many(["Hello, world"])[0]
    probe = probe_inputs(info.inputs, probe_ids)
    timeout = cfg.serving.worker_timeout_s
    coupled = [] if text else await _coupled(execute, next(iter(replicas.values())), probe, timeout)
    if coupled:
        log.info("model %s: outputs %s depend on the whole batch, so each request runs as a forward of its own",
                 model_cfg.name, ", ".join(coupled))

    async def warm_with(replica: Replica, run) -> None:
        await run(replica, probe, timeout)
        replica.warm = True

    async def warm(replica: Replica) -> None:  # the supervisor's, for whichever plan runs by then
        await warm_with(replica, service.execute)

    supervisor = Supervisor(cfg, plan, pool, specs, [], str(cfg.registry.resolve_home()), warm=warm,
                            check_strays=False)
    service = StatelessService(model_cfg.name, replicas, policy, metrics, timeout, cfg.serving.migration_limit,
                               text_inputs, on_replica_down=supervisor.replica_down, whole_requests=bool(coupled),
                               execute=execute)
    service.restarting = supervisor.restarting
    supervisor.router = service
    await asyncio.gather(*(warm(r) for r in replicas.values()))
    service.plan_report = PlanReport(
        model_cfg.name, plan, prepared.profile, execute.meters, pool.clients,
        dict(zip([f.fragment_id for g in plan.replicas() for f in g], infos, strict=True)),
        cluster_from_config(cfg))
    service.plan_report.mode = cfg.serving.replan
    await service.plan_report.begin(timeout)
    if cfg.serving.replan == "auto":
        service.replanner = Replanner(
            model_cfg.name, pool, base, service, supervisor, service.plan_report, signature(info), warm_with,
            cfg.serving.replan_interval_s, cfg.workers.start_timeout_s, timeout)
    log.info("model %s: %d replicas, batches of up to %d, queue delay %.1f ms%s", model_cfg.name, len(replicas),
             policy.max_batch_size, policy.max_queue_delay_s * 1000,
             f", {pooling.mode} pooling{' + normalise' if pooling.normalize else ''}" if pooling else "")
    entry = StatelessEntry(
        name=model_cfg.name, created=int(version.created_at.timestamp()), service=service, inputs=info.inputs,
        outputs=info.outputs, tokenizer=tokenizer, pooling=pooling, max_tokens=max_tokens,
        vocab_size=info.vocab_size, restarting=supervisor.restarting,
    )
    return entry, supervisor
