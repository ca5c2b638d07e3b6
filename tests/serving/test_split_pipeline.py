"""Pipelined vision without processes: the planner cuts a ResNet that fits no worker into two stages balanced by
predicted time; the worker builds each stage from the exported model (workers/stateless/stages.py) holding only
its own weights; the executor streams micro-batches through fragments run in threads here, so both stages are in
flight at once, and the logits equal the whole model's."""

from __future__ import annotations

import asyncio

import pytest
import torch

from genie.errors import InvalidRequest
from genie.semantic import ClusterSpec, WorkerSpec, analyze, plan
from genie.serving.demo_models import small_resnet
from genie.serving.replica import Replica, Stage
from genie.serving.stateless.pipeline import Pipelined, pipeline_info, pipeline_specs
from genie.workers.contract import STATELESS, FragmentSpec
from genie.workers.stateless.fragment import StatelessFragment
from genie.workers.stateless.loading import Built, InputSig
from genie.workers.stateless.stages import stage_part

MiB = 2**20


def cluster(mib: int) -> ClusterSpec:
    return ClusterSpec(tuple(WorkerSpec(f"worker-{i}", "cpu", mib * MiB, 5e10, 1e10) for i in range(2)), 1e9)


@pytest.fixture(scope="module")
def pipeline_plan():
    model, example = small_resnet()
    return plan(analyze(model, example, "small-resnet"), cluster(4))


def built() -> Built:
    model, _ = small_resnet()
    return Built(model, (InputSig("pixel_values", False, (1, 3, 64, 64)),), frozenset({"pixel_values"}), False,
                 None, None, None, "py")


class ThreadWorker:
    """A worker's Infer in this process: the real fragment, run off the event loop as the worker's thread would."""

    def __init__(self, fragment: StatelessFragment) -> None:
        self.fragment = fragment
        self.calls = 0
        self.last_infer_compute_s = 0.0

    async def infer(self, fragment_id: str, inputs, timeout: float | None = None):
        self.calls += 1
        with torch.no_grad():
            out = await asyncio.to_thread(self.fragment.run, inputs)
        self.last_infer_compute_s = self.fragment.last_compute_s
        return out


@pytest.fixture(scope="module")
def stages(pipeline_plan):
    base = FragmentSpec(fragment_id="", model_dir="", dtype="float32", kind=STATELESS)
    specs = pipeline_specs(pipeline_plan, base)
    return [StatelessFragment(s.fragment_id, stage_part(built(), s.cut, s.layer_start, s.layer_end, s.fragment_id),
                              torch.float32, torch.device("cpu")) for s in specs.values()]


def test_the_plan_cuts_two_stages_that_each_fit_and_the_specs_name_their_blocks(pipeline_plan) -> None:
    assert pipeline_plan.strategy == "pipeline"
    first, second = pipeline_plan.fragments
    assert first.worker != second.worker
    assert all(f.memory_bytes <= 0.9 * 4 * MiB for f in pipeline_plan.fragments)
    (link,) = pipeline_plan.transfers
    assert (link.src, link.dst) == (first.fragment_id, second.fragment_id)
    base = FragmentSpec(fragment_id="", model_dir="", dtype="float32", kind=STATELESS)
    a, b = pipeline_specs(pipeline_plan, base).values()
    assert a.cut == b.cut == tuple(first.nodes + second.nodes) and a.part == b.part == "stage"
    assert (a.layer_start, a.layer_end, b.layer_start, b.layer_end) == (0, len(first.nodes), len(first.nodes),
                                                                        len(a.cut))


def test_each_stage_holds_its_own_weights_and_only_the_boundary_crosses(pipeline_plan, stages) -> None:
    first, second = stages
    whole = StatelessFragment("whole", built(), torch.float32, torch.device("cpu"))
    held = first.info.weight_bytes + second.info.weight_bytes
    assert 0 <= whole.info.weight_bytes - held <= 12 * 8  # only BatchNorm's num_batches_tracked, unread in eval
    assert second.info.weight_bytes > 2 * first.info.weight_bytes  # the wide last stage, on its own worker
    (boundary,) = first.info.outputs
    assert [s.name for s in second.info.inputs] == [boundary.name]
    per_request = 4 * int(torch.tensor(boundary.shape[1:]).prod())
    assert per_request == pipeline_plan.transfers[0].bytes_per_request  # the plan predicted this very tensor
    assert [s.name for s in second.info.outputs] == ["logits"]


async def test_micro_batches_stream_through_both_stages_at_once_and_equal_the_whole_model(stages) -> None:
    workers = [ThreadWorker(f) for f in stages]
    replica = Replica("replica-0", [Stage(f"worker-{i}", w, f.info.fragment_id)
                                    for i, (w, f) in enumerate(zip(workers, stages, strict=True))], 0, warm=True)
    execute = Pipelined(micro_batches=4, micro_rows=1)
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    out = await execute(replica, {"pixel_values": images}, 30.0)
    model, _ = small_resnet()
    with torch.no_grad():
        want = model(pixel_values=images).logits
    torch.testing.assert_close(out["logits"], want, rtol=0, atol=1e-5)
    assert [w.calls for w in workers] == [4, 4]
    assert (execute.calls, execute.overlapped) == (1, 1)  # stage 0 ran micro-batch k+1 while stage 1 ran k
    meter = execute.meters[stages[0].info.fragment_id]
    assert (meter.rows, meter.got_bytes) == (8, 8 * 4 * 128 * 4 * 4)  # act_0: [8, 128, 4, 4] fp32
    odd = await execute(replica, {"pixel_values": images[:3]}, 30.0)  # fewer rows than micro-batches
    torch.testing.assert_close(odd["logits"], want[:3], rtol=0, atol=1e-5)
    info = pipeline_info([f.info for f in stages])
    assert [s.name for s in info.inputs] == ["pixel_values"] and [s.name for s in info.outputs] == ["logits"]


async def test_a_bad_image_is_refused_by_the_first_stage_and_the_second_never_runs(stages) -> None:
    workers = [ThreadWorker(f) for f in stages]
    replica = Replica("replica-0", [Stage(f"worker-{i}", w, f.info.fragment_id)
                                    for i, (w, f) in enumerate(zip(workers, stages, strict=True))], 0, warm=True)
    with pytest.raises(InvalidRequest, match="input 'pixel_values' has shape"):
        await Pipelined()(replica, {"pixel_values": torch.zeros(2, 3, 32, 32)}, 30.0)
    assert workers[1].calls == 0


def test_a_cut_outside_the_blocks_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="outside the model's 2 blocks"):
        stage_part(built(), ("resnet.embedder", "classifier.1"), 1, 3, "s1")


async def test_the_service_keeps_a_second_batch_entering_stage_one_while_the_first_drains(stages) -> None:
    from genie.serving.metrics import Metrics
    from genie.serving.stateless.batcher import BatchPolicy
    from genie.serving.stateless.service import StatelessService

    workers = [ThreadWorker(f) for f in stages]
    replica = Replica("replica-0", [Stage(f"worker-{i}", w, f.info.fragment_id)
                                    for i, (w, f) in enumerate(zip(workers, stages, strict=True))], 0, warm=True)
    pipelined, in_flight, most = Pipelined(micro_batches=2, micro_rows=1), [0], [0]

    async def execute(replica, inputs, timeout):
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        try:
            return await pipelined(replica, inputs, timeout)
        finally:
            in_flight[0] -= 1

    execute.depth, execute.meters = pipelined.depth, pipelined.meters
    policy = BatchPolicy(max_batch_size=4, max_queue_delay_s=0.0, max_queue=64, bucket_edges=())
    service = StatelessService("vit", {"replica-0": replica}, policy, Metrics(), timeout=30.0, migration_limit=1,
                               execute=execute)
    task = asyncio.create_task(service.run())
    images = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    try:
        outs = await asyncio.wait_for(service.run_tensors([{"pixel_values": images[i:i + 1]} for i in range(16)]), 60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    model, _ = small_resnet()
    with torch.no_grad():
        want = model(pixel_values=images).logits
    torch.testing.assert_close(torch.stack([o["logits"] for o in outs]), want, rtol=0, atol=1e-5)
    assert most[0] == 2 and service.largest_batch <= 4  # two batches on the replica at once, never three
