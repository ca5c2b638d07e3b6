"""The pure parts of bringing a stateless model up: its batch policy, its whole-model plan, its warm-up probe,
whether text comes in, and whether its outputs tie the rows of a batch together."""

from __future__ import annotations

import torch

from genie.config import ModelConfig
from genie.semantic import Plan, PlanFragment, Prediction, Transfer
from genie.semantic.profile import CostSummary, InputInfo, Phase, Profile
from genie.serving.start_stateless import (
    batch_policy,
    coupled_outputs,
    probe_inputs,
    serves_text,
    whole_model_plan,
)
from genie.workers.contract import TensorSpec

MiB = 2**20
PARAMS = 100 * MiB


def make_profile(activation_bytes: int = MiB, probe_len: int = 128, text: bool = True) -> Profile:
    """An encoder's profile: one per-request forward writing `activation_bytes` at `probe_len` tokens."""
    inputs = [InputInfo("input_ids", [1, probe_len], "int64", "text")] if text else [
        InputInfo("pixel_values", [1, 3, 224, 224], "float32", "image")]
    return Profile(
        name="enc", workload_type="encoder", confidence=1.0, explanation=[], patterns=[],
        phases=[Phase("forward", "request", flops=1e9, weight_bytes=PARAMS, activation_bytes=activation_bytes),
                Phase("embed", "token", flops=1e3, weight_bytes=0, activation_bytes=1000 * MiB)],
        cost=CostSummary(flops=1e9, param_bytes=PARAMS, activation_bytes=activation_bytes,
                         bytes_moved=PARAMS, arithmetic_intensity=1.0, dtype_bytes=4),
        inputs=inputs,
    )


def fragment(fid: str, worker: str, replica: int = 0, stage: int = 0, role: str = "all") -> PlanFragment:
    return PlanFragment(fragment_id=fid, worker=worker, replica=replica, stage=stage, layer_start=None,
                        layer_end=None, has_embedding=stage == 0, has_head=True, nodes=[f"{fid}.nodes"],
                        reason="test", role=role, param_bytes=PARAMS)


def make_plan(fragments: list[PlanFragment], strategy: str = "replicas", latency_s: float = 0.004,
              transfers: list[Transfer] | None = None) -> Plan:
    return Plan(model="enc", strategy=strategy, fragments=fragments, transfers=transfers or [],
                predicted=Prediction(latency_s=latency_s, throughput=100.0, unit="requests/s"), reasons=["test"])


def policy(model: ModelConfig | None = None, profile: Profile | None = None, max_queue: int = 8,
           max_tokens: int = 256, free: int = 4096 * MiB):
    """batch_policy with `free` bytes of the worker left over after the weights."""
    return batch_policy(model or ModelConfig(name="enc"), profile or make_profile(), max_queue, max_tokens,
                        PARAMS + free)


# -- batch_policy ------------------------------------------------------------------------------------------

def test_the_config_sets_batch_size_and_delay() -> None:
    p = policy(ModelConfig(name="enc", max_batch_size=12, max_queue_delay_ms=3.0), free=0)
    assert (p.max_batch_size, p.max_queue_delay_s) == (12, 0.003)
    assert p.max_queue == 12  # never smaller than a batch
    assert p.bucket_edges == (16, 32, 64, 128, 256)


def test_a_zero_delay_in_the_config_is_kept() -> None:
    assert policy(ModelConfig(name="enc", max_queue_delay_ms=0)).max_queue_delay_s == 0.0


def test_the_default_size_is_the_largest_power_of_two_whose_activations_fit() -> None:
    # 1 MiB at the probe's 128 tokens is 2 MiB at 256; a quarter of what is free must hold the batch.
    assert policy(free=4 * 64 * 2 * MiB).max_batch_size == 64
    assert policy(free=4 * 64 * 2 * MiB - 1).max_batch_size == 32
    assert policy(free=4 * 5 * 2 * MiB).max_batch_size == 4
    assert policy(free=4 * 2 * MiB - 1).max_batch_size == 1
    assert policy(free=-PARAMS // 2).max_batch_size == 1  # the weights alone do not fit: batch of one


def test_the_default_size_never_passes_64_and_shrinks_with_memory() -> None:
    sizes = [policy(free=f * MiB).max_batch_size for f in (1, 10, 100, 1000, 10_000, 10**6)]
    assert sizes == sorted(sizes) and sizes[-1] == 64
    assert all(s & (s - 1) == 0 for s in sizes)  # powers of two


def test_the_size_scales_with_the_longest_input_served() -> None:
    free = 4 * 16 * 2 * MiB
    assert policy(max_tokens=256, free=free).max_batch_size == 16
    assert policy(max_tokens=512, free=free).max_batch_size == 8  # twice the tokens, twice the activations


def test_a_model_without_text_keeps_its_activations_and_one_bucket() -> None:
    p = policy(profile=make_profile(activation_bytes=3 * MiB, text=False), max_tokens=0, free=4 * 8 * 3 * MiB)
    assert p.max_batch_size == 8 and p.bucket_edges == ()


def test_without_a_configured_delay_the_batcher_never_waits_for_company() -> None:
    p = policy(ModelConfig(name="enc", max_batch_size=3))
    assert (p.max_batch_size, p.max_queue_delay_s) == (3, 0.0)


# -- whole_model_plan --------------------------------------------------------------------------------------

def test_a_replicas_plan_is_left_alone() -> None:
    plan = make_plan([fragment("enc.r0s0", "worker-0", 0), fragment("enc.r1s0", "worker-1", 1)])
    assert whole_model_plan(plan, "enc") is plan


def test_a_split_plan_becomes_one_whole_copy_per_worker() -> None:
    split = make_plan(
        [fragment("enc.branch:image", "worker-10", 0, 0, "branch:image"),
         fragment("enc.branch:text", "worker-2", 0, 1, "branch:text"),
         fragment("enc.fusion", "worker-0", 0, 2, "fusion")],
        strategy="branch_parallel",
        transfers=[Transfer("enc.branch:image", "enc.fusion", "image embedding", 0, 4096, "test")],
    )
    plan = whole_model_plan(split, "enc")
    assert [(f.fragment_id, f.worker, f.replica, f.stage, f.role) for f in plan.fragments] == [
        ("enc.r0", "worker-0", 0, 0, "all"), ("enc.r1", "worker-2", 1, 0, "all"),
        ("enc.r2", "worker-10", 2, 0, "all"),
    ]
    assert plan.transfers == [] and plan.strategy == "branch_parallel"
    assert all(len(group) == 1 for group in plan.replicas())
    assert all("whole model on" in f.reason for f in plan.fragments)
    assert split.fragments[0].fragment_id == "enc.branch:image"  # the input plan is not changed


def test_a_split_plan_without_a_namespace_gets_bare_ids() -> None:
    split = make_plan([fragment("sparse0", "worker-0", 0, 0), fragment("dense", "worker-1", 0, 1)],
                      strategy="recsys_split")
    assert [f.fragment_id for f in whole_model_plan(split, "rec").fragments] == ["r0", "r1"]


# -- probe_inputs ------------------------------------------------------------------------------------------

TEXT_SPECS = (TensorSpec("input_ids", "int64", (-1, -1)), TensorSpec("attention_mask", "int64", (-1, -1)))


def test_a_text_probe_is_the_ids_with_a_full_mask() -> None:
    probe = probe_inputs(TEXT_SPECS, [101, 7592, 102])
    assert set(probe) == {"input_ids", "attention_mask"}
    assert probe["input_ids"].dtype == torch.int64 and probe["input_ids"].tolist() == [[101, 7592, 102]]
    assert probe["attention_mask"].tolist() == [[1, 1, 1]]


def test_a_text_probe_has_token_type_ids_when_the_fragment_takes_them() -> None:
    probe = probe_inputs(TEXT_SPECS + (TensorSpec("token_type_ids", "int64", (-1, -1)),), [5, 6])
    assert probe["token_type_ids"].tolist() == [[0, 0]] and probe["token_type_ids"].dtype == torch.int64


def test_a_tensor_probe_is_zeros_of_each_spec_with_varying_dims_as_one() -> None:
    specs = (TensorSpec("pixel_values", "float32", (-1, 3, 4, 4)), TensorSpec("ids", "int64", (-1, -1)),
             TensorSpec("scale", "float16", (2,)))
    probe = probe_inputs(specs, None)
    assert {n: (tuple(t.shape), t.dtype) for n, t in probe.items()} == {
        "pixel_values": ((1, 3, 4, 4), torch.float32), "ids": ((1, 1), torch.int64), "scale": ((2,), torch.float16),
    }
    assert all(not t.any() for t in probe.values())



def specs(*names: str) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(n, "float32" if n == "pixel_values" else "int64", (-1, -1)) for n in names)


def test_text_comes_in_only_for_a_token_model_with_a_tokenizer(tmp_path) -> None:
    bert = specs("input_ids", "attention_mask", "token_type_ids")
    assert not serves_text(bert, tmp_path)  # no tokenizer: the ids come as tensors
    (tmp_path / "tokenizer.json").write_text("{}")
    assert serves_text(bert, tmp_path)
    assert not serves_text(specs("input_ids", "pixel_values", "attention_mask"), tmp_path)  # CLIP: tensors
    assert not serves_text(specs("pixel_values"), tmp_path)


def test_outputs_whose_shape_follows_the_batch_are_coupled() -> None:
    one = {"logits_per_image": torch.zeros(1, 1), "image_embeds": torch.zeros(1, 16),
           "last_hidden_state": torch.zeros(1, 5, 8)}
    two = {"logits_per_image": torch.zeros(2, 2), "image_embeds": torch.zeros(2, 16),
           "last_hidden_state": torch.zeros(2, 5, 8)}
    assert coupled_outputs(one, two) == ["logits_per_image"]
    assert coupled_outputs({"logits": torch.zeros(1, 10)}, {"logits": torch.zeros(2, 10)}) == []
