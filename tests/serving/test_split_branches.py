"""The branch-parallel executor over fake workers that run the real CLIP parts (workers/stateless/branches.py)
of the demo CLIP in this process: both encoders are in flight at once, only their feature vectors reach the
fusion, and the outputs equal the whole model; plus what serving makes of a branch-parallel plan."""

from __future__ import annotations

import asyncio

import pytest
import torch

from genie.config import ModelConfig, Strategy
from genie.errors import InvalidRequest
from genie.semantic import ClusterSpec, PlanOptions, WorkerSpec, analyze, plan
from genie.serving.demo_models import tiny_clip
from genie.serving.replica import Replica, Stage
from genie.serving.start_stateless import served_plan
from genie.serving.stateless.branches import BranchParallel, branch_specs
from genie.workers.contract import STATELESS, FragmentSpec
from genie.workers.stateless.branches import branch_part
from genie.workers.stateless.loading import Built, InputSig

Tensors = dict[str, torch.Tensor]
OUTPUTS = ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds")


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


@pytest.fixture(scope="module")
def parts(clip):
    sigs = (InputSig("input_ids", True, (1, 8)), InputSig("attention_mask", True, (1, 8)),
            InputSig("pixel_values", False, (1, 3, 32, 32)))
    built = Built(clip[0], sigs, frozenset(s.name for s in sigs), False, None, None, None, "py")
    return {part: branch_part(built, part, part) for part in ("image", "text", "fusion")}


class FakeWorker:
    """One part run as a worker's Infer would; `meet` (shared by the two encoders) makes each call wait until
    the other encoder's call has arrived too: a sequential executor would never get past it."""

    def __init__(self, module, meet: list[asyncio.Event] | None = None, mine: int = 0) -> None:
        self.module, self.meet, self.mine = module, meet, mine
        self.calls: list[Tensors] = []

    async def infer(self, fragment_id: str, inputs: Tensors, timeout: float | None = None) -> Tensors:
        self.calls.append(inputs)
        if self.meet is not None:
            self.meet[self.mine].set()
            await asyncio.wait_for(self.meet[1 - self.mine].wait(), 5.0)
        with torch.no_grad():
            return self.module(**inputs)


def examples(n: int) -> Tensors:
    g = torch.Generator().manual_seed(n)
    mask = torch.ones(n, 8, dtype=torch.int64)
    mask[0, 5:] = 0
    return {"input_ids": torch.randint(3, 1000, (n, 8), generator=g), "attention_mask": mask,
            "pixel_values": torch.randn(n, 3, 32, 32, generator=g)}


async def test_both_encoders_run_at_once_and_the_outputs_equal_the_whole_model(clip, parts) -> None:
    meet = [asyncio.Event(), asyncio.Event()]
    image, text = FakeWorker(parts["image"].module, meet, 0), FakeWorker(parts["text"].module, meet, 1)
    fusion = FakeWorker(parts["fusion"].module)
    replica = Replica("replica-0", [Stage("worker-0", image, "branch:image"), Stage("worker-1", text, "branch:text"),
                                    Stage("worker-0", fusion, "fusion")], 0, warm=True)
    roles = {"branch:image": "branch:image", "branch:text": "branch:text", "fusion": "fusion"}
    execute = BranchParallel(roles, {"branch:image": ("pixel_values",),
                                     "branch:text": ("input_ids", "attention_mask")})
    inputs = examples(3)
    out = await execute(replica, inputs, 30.0)
    with torch.no_grad():
        whole = clip[0](**inputs)
    for name in OUTPUTS:
        assert torch.equal(out[name], whole[name]), name
    assert list(image.calls[0]) == ["pixel_values"] and sorted(text.calls[0]) == ["attention_mask", "input_ids"]
    assert sorted(fusion.calls[0]) == ["image_features", "text_features"]
    assert (execute.calls, execute.overlapped) == (1, 1)
    assert execute.meters["branch:image"].got_bytes == 3 * 16 * 4  # one 16-wide fp32 vector per example


def test_each_part_holds_only_its_own_weights(parts) -> None:
    names = {p: {n.split(".")[0] for n, _ in built.module.named_parameters()} for p, built in parts.items()}
    assert names == {"image": {"vision_model", "visual_projection"}, "text": {"text_model", "text_projection"},
                     "fusion": {"logit_scale"}}


def test_a_model_that_is_not_clip_style_is_refused_at_load() -> None:
    built = Built(torch.nn.Linear(2, 2), (InputSig("x", False, (1, 2)),), frozenset({"x"}), False, None, None, None,
                  "py")
    with pytest.raises(InvalidRequest, match="needs a CLIP-style model .*serve it whole"):
        branch_part(built, "image", "f")


def test_a_pinned_branch_plan_runs_as_planned_and_one_the_planner_chose_runs_whole(clip) -> None:
    profile = analyze(*tiny_clip(), name="clip-demo")
    cluster = ClusterSpec(tuple(WorkerSpec(f"worker-{i}", "cpu", 1 << 30, 1e11, 2e10) for i in range(2)), 1.25e9)
    p = plan(profile, cluster, PlanOptions(strategy="branch_parallel"))
    assert served_plan(p, ModelConfig(name="clip-demo", strategy=Strategy.BRANCH_PARALLEL)) is p
    assert all(len(g) == 1 for g in served_plan(p, ModelConfig(name="clip-demo")).replicas())
    specs = branch_specs(p, FragmentSpec(fragment_id="", model_dir="/m", kind=STATELESS))
    assert {fid: s.part for fid, s in specs.items()} == {"branch:image": "image", "branch:text": "text",
                                                         "fusion": "fusion"}
    fusion = next(f for f in p.fragments if f.role == "fusion")
    image = next(f for f in p.fragments if f.role == "branch:image")
    assert fusion.worker == image.worker  # beside the heavier branch, as the plan says
