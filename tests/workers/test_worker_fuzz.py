"""A protobuf fuzzer against a real worker: random and mutated messages, with the right link token, sent to
every RPC of the Worker service. No call may end INTERNAL or UNKNOWN or hang, and the worker must still serve.

Messages are drawn from the service descriptor, so a new RPC or field is fuzzed without touching this file.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertModel

from genie.auth import link_metadata
from genie.protos import worker_pb2 as pb
from genie.workers.client import WorkerClient
from genie.workers.codec import DTYPES, tensor_to_pb
from genie.workers.contract import FragmentSpec, SeqStep
from genie.workers.process import spawn_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SERVICE = pb.DESCRIPTOR.services_by_name["Worker"]
FRAG = "f"
STATELESS = "s"  # a tiny BERT loaded with kind "stateless", so Infer gets past the fragment lookup
CASES = 200
MIN_PER_RPC = 5  # requests every RPC gets at least, interleaved or on its own
# Every hypothesis run here: reproducible, no example database, and no health check for a worker's slow replies
FUZZ = dict(deadline=None, database=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CALL_TIMEOUT_S = 30  # a step on the tiny model takes milliseconds; more than this is a hang
WEIGHTS = {"Step": 4, "LoadFragment": 2, "Infer": 3}  # where the engine work is; each other RPC gets 1
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}

_T = FieldDescriptor
SCALARS: dict[int, st.SearchStrategy] = {
    _T.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    _T.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    _T.TYPE_UINT64: st.integers(0, 2**64 - 1),
    _T.TYPE_BOOL: st.booleans(),
    _T.TYPE_FLOAT: st.floats(width=32),
    _T.TYPE_DOUBLE: st.floats(),
    _T.TYPE_STRING: st.text(max_size=24),
    _T.TYPE_BYTES: st.binary(max_size=64),
}
SMALL_INTS = st.integers(-4, 40)  # where a random int would only ever hit one range check


def field_values(root: str) -> dict[str, st.SearchStrategy]:
    """Values that reach past the first check: the loaded fragment, the model folder, KV bounded to 1 MiB so a
    lucky load cannot fill the machine's memory."""
    return {
        "fragment_id": st.one_of(st.just(FRAG), st.just(STATELESS), st.text(max_size=8)),
        "kind": st.sampled_from(["", "llm", "stateless", "Stateless", "🙂"]),
        "model_dir": st.sampled_from([root, "/", "", f"{root}/..", "/etc"]),
        "kv_cache_bytes": st.integers(-(1 << 20), 1 << 20),
        "dtype": st.sampled_from(["", "auto", "float32", "bfloat16", "float16", "int64", "bool", "🙂", "float32\0"]),
        "seq_id": st.sampled_from(["", "a", "b", "c", "x" * 300]),
        "position": SMALL_INTS,
        "layer_start": SMALL_INTS,
        "layer_end": SMALL_INTS,
        "token_ids": st.lists(st.one_of(st.integers(-2, 1100), SCALARS[_T.TYPE_INT32]), max_size=12),
        "shape": st.lists(st.one_of(SMALL_INTS, SCALARS[_T.TYPE_INT64]), max_size=4),
        "expected_sha256": st.dictionaries(st.sampled_from(["config.json", "model.safetensors", "../x", "/"]),
                                           st.text(max_size=64), max_size=2),
    }


def plausible(root: str) -> dict[str, st.SearchStrategy]:
    """Messages that are nearly right, by message name, so the fuzzer gets past validation into the engine:
    sane shapes with boundary values in the numbers."""
    nan, inf = float("nan"), float("inf")
    # Each number: the default, a sane range, or an edge (some of them valid, some not).
    sampling = st.builds(
        pb.SamplingParams,
        temperature=st.one_of(st.just(0.0), st.floats(0.01, 2.0), st.sampled_from([1e-45, 1e-30, 1e30, nan, inf, -1.0])),
        top_k=st.one_of(st.just(0), st.integers(1, 1000), st.sampled_from([2**31 - 1, 1001, -1])),
        top_p=st.one_of(st.just(1.0), st.floats(0.01, 1.0), st.sampled_from([0.0, 1e-30, 1.5, nan])),
        seed=SCALARS[_T.TYPE_INT64],
        has_seed=st.booleans(),
        logprobs=st.one_of(st.just(0), st.integers(1, 20), st.sampled_from([20, 21, -1, 2**31 - 1])),
    )
    seq = st.builds(
        pb.SeqStep,
        seq_id=st.sampled_from(["a", "b", "c"]),
        position=st.sampled_from([0, 0, 0, 0, 1, 6, 511, 512]),
        token_ids=st.lists(st.integers(0, 999), min_size=1, max_size=8),
        sample=st.booleans(),
        sampling=sampling,
    )
    # Infer: the tiny BERT's inputs and a few wrong names, small tensors of right and wrong dtypes and shapes.
    tensor = st.builds(
        lambda dtype, shape, fill: _tensor(dtype, shape, fill),
        st.sampled_from(["int64", "int64", "int32", "float32", "bool", "bfloat16"]),
        st.lists(st.integers(0, 6), min_size=0, max_size=3),
        st.sampled_from([0, 1, 99, 100, -1]),
    )
    infer_inputs = st.dictionaries(
        st.sampled_from(["input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values", "x"]),
        tensor, max_size=3,
    )
    return {
        "InferRequest": st.builds(pb.InferRequest, fragment_id=st.sampled_from([STATELESS, STATELESS, FRAG]),
                                  inputs=infer_inputs),
        "SeqStep": seq,
        "StepRequest": st.builds(pb.StepRequest, fragment_id=st.just(FRAG),
                                 seqs=st.lists(seq, min_size=1, max_size=2, unique_by=lambda m: m.seq_id)),
        "LoadFragmentRequest": st.builds(
            pb.LoadFragmentRequest,
            fragment_id=st.text(min_size=1, max_size=8),
            model_dir=st.just(root),
            layer_start=st.sampled_from([0, 0, 1, 2, 3, 4, -1]),
            layer_end=st.sampled_from([-1, -1, 2, 3, 4, 0, 5, -2]),
            has_embedding=st.booleans(),
            has_head=st.booleans(),
            dtype=st.sampled_from(["", "float32", "bfloat16", "float16"]),
            kv_cache_bytes=st.sampled_from([0, 1 << 20, 1 << 20, 4096, 1]),
            block_size=st.sampled_from([0, 16, 16, 1, 1024, 2**31 - 1]),
        ),
    }


def _tensor(dtype: str, shape: list[int], fill: int) -> pb.Tensor:
    """A well-formed wire tensor (its bytes fit its shape) whose every element encodes `fill`."""
    return tensor_to_pb(torch.full(shape, fill).to(DTYPES[dtype]))


def messages(descriptor: Descriptor, overrides: dict[str, st.SearchStrategy], depth: int = 0) -> st.SearchStrategy:
    """Any message of `descriptor`: each field left unset or drawn from its type (or `overrides` by field name);
    a message named in `overrides` is drawn from there two times in three."""
    fields = {}
    for field in descriptor.fields:
        fields[field.name] = st.none() | _value(field, overrides, depth)
    generic = st.fixed_dictionaries(fields).map(lambda values: _build(descriptor, values))
    if descriptor.name not in overrides:
        return generic
    return st.one_of(generic, overrides[descriptor.name], overrides[descriptor.name])


def _value(field: FieldDescriptor, overrides: dict[str, st.SearchStrategy], depth: int) -> st.SearchStrategy:
    if field.name in overrides:
        return overrides[field.name]
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        if value.message_type is not None:  # map<string, Tensor>
            values = messages(value.message_type, overrides, depth + 1) if depth < 3 else st.nothing()
            return st.dictionaries(SCALARS[key.type], values, max_size=3)
        return st.dictionaries(SCALARS[key.type], SCALARS[value.type], max_size=3)
    if field.message_type is not None:
        one = messages(field.message_type, overrides, depth + 1) if depth < 3 else st.just(None)
    else:
        one = SCALARS[field.type]
    return st.lists(one, max_size=4) if field.is_repeated else one


def _build(descriptor: Descriptor, values: dict) -> object:
    msg = getattr(pb, descriptor.name)()
    for name, value in values.items():
        if value is None:
            continue
        target = getattr(msg, name) if name in _composites(descriptor) else None
        if isinstance(value, dict) and _holds_messages(descriptor.fields_by_name[name]):
            for key, item in value.items():
                target[key].CopyFrom(item)
        elif isinstance(value, dict):
            target.update(value)
        elif isinstance(value, list) and descriptor.fields_by_name[name].message_type is not None:
            for item in value:
                if item is not None:
                    target.add().CopyFrom(item)
        elif isinstance(value, list):
            target.extend(value)
        elif descriptor.fields_by_name[name].message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def _holds_messages(field: FieldDescriptor) -> bool:
    """A map field whose values are messages (map<string, Tensor>): those are set entry by entry."""
    return field.message_type.fields_by_name["value"].message_type is not None


def _composites(descriptor: Descriptor) -> set[str]:
    return {f.name for f in descriptor.fields if f.message_type is not None or f.is_repeated}


def mutated(message: st.SearchStrategy) -> st.SearchStrategy:
    """Serialized bytes of a valid message with a few bytes flipped, cut or inserted."""

    @st.composite
    def mutate(draw: Callable) -> bytes:
        data = bytearray(draw(message).SerializeToString())
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data)))
            action = draw(st.sampled_from(["flip", "cut", "insert"]))
            if action == "flip" and at < len(data):
                data[at] ^= draw(st.integers(1, 255))
            elif action == "cut":
                del data[at:]
            else:
                data[at:at] = draw(st.binary(min_size=1, max_size=4))
        return bytes(data)

    return mutate()


@pytest.fixture(scope="module")
def worker(tmp_path_factory, gpt2_tiny_dir: Path):
    root = tmp_path_factory.mktemp("fuzz-artifacts")
    shutil.copytree(gpt2_tiny_dir, root / "gpt2")
    _tiny_bert(root / "bert")
    # A small default KV budget: a fuzzed load that asks for 0 gets it.
    small_kv = ["--kv-cache-bytes", str(1 << 20)]
    with spawn_worker(device="cpu", threads=1, artifact_roots=[str(root)], extra_args=small_kv) as proc:
        asyncio.run(_load(proc, root / "gpt2", root / "bert"))
        yield proc, root / "gpt2"
        assert proc.alive(), f"the worker died:\n{proc.stderr_tail()}"


def _tiny_bert(folder: Path) -> None:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)


async def _load(proc, model_dir: Path, bert_dir: Path) -> None:  # noqa: ANN001
    async with WorkerClient(proc.address, timeout=60, token=proc.token) as client:
        await client.load_fragment(FragmentSpec(FRAG, str(model_dir), dtype="float32", kv_cache_bytes=4 << 20))
        await client.load_fragment(FragmentSpec(STATELESS, str(bert_dir), dtype="float32", kind="stateless"))


def bodies(model_dir: Path) -> dict[str, st.SearchStrategy]:
    """Method name -> request bytes for it: whole messages, mutated ones and noise."""
    common = {**field_values(str(model_dir)), **plausible(str(model_dir))}
    # UnloadFragment keeps the loaded fragment, so Step and Release keep getting past the fragment lookup.
    keep = {**common, "fragment_id": st.text(max_size=8).filter(lambda s: s != FRAG)}
    out = {}
    for method in SERVICE.methods:
        message = messages(method.input_type, keep if method.name == "UnloadFragment" else common)
        kinds = {"whole": message.map(lambda m: m.SerializeToString()), "mutated": mutated(message),
                 "noise": st.binary(max_size=48)}
        out[method.name] = weighted({"whole": 3, "mutated": 1, "noise": 1}, kinds)
    return out


def cases(by_method: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """(method name, request bytes) over every RPC of the service, interleaved, weighted by WEIGHTS."""
    names = weighted({m.name: WEIGHTS.get(m.name, 1) for m in SERVICE.methods}, {n: st.just(n) for n in by_method})
    return names.flatmap(lambda name: st.tuples(st.just(name), by_method[name]))


def weighted(weights: dict[str, int], strategies: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """One of `strategies`, picked in proportion to `weights` (st.one_of picks its branches evenly)."""
    names = [name for name, weight in weights.items() for _ in range(weight)]
    return st.sampled_from(names).flatmap(strategies.__getitem__)


def test_fuzzed_messages_get_a_clear_status_and_the_worker_keeps_serving(worker) -> None:
    proc, model_dir = worker
    loop = asyncio.new_event_loop()
    channel = loop.run_until_complete(_open(proc.address))
    seen: dict[str, set[grpc.StatusCode]] = {}
    counts: dict[str, int] = {}
    by_method = bodies(model_dir)

    def send(name: str, body: bytes) -> None:
        code, details = loop.run_until_complete(_call(channel, name, body, proc.token))
        seen.setdefault(name, set()).add(code)
        counts[name] = counts.get(name, 0) + 1
        assert code not in BAD, f"{name} answered {code.name}: {details} (request bytes {body!r})"

    @settings(max_examples=CASES, **FUZZ)
    @given(case=cases(by_method))
    def interleaved(case: tuple[str, bytes]) -> None:
        send(*case)

    def alone(name: str) -> None:
        @settings(max_examples=MIN_PER_RPC, **FUZZ)
        @given(body=by_method[name])
        def one(body: bytes) -> None:
            send(name, body)

        one()

    try:
        interleaved()
        # The interleaved draw does not reach every RPC for sure (CI once saw it send no LoadProgram in 200), so
        # an RPC drawn fewer than MIN_PER_RPC times gets that many of its own.
        for method in SERVICE.methods:
            if counts.get(method.name, 0) < MIN_PER_RPC:
                alone(method.name)
        assert set(seen) == {m.name for m in SERVICE.methods}, f"some RPCs were never fuzzed: {seen}"
        loop.run_until_complete(_assert_still_serving(proc))
    finally:
        loop.run_until_complete(channel.close())
        loop.close()


async def _open(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address)


async def _call(channel: grpc.aio.Channel, name: str, body: bytes, token: str) -> tuple[grpc.StatusCode, str]:
    rpc = channel.unary_unary(f"/{SERVICE.full_name}/{name}")  # raw bytes both ways
    try:
        answer = await rpc(body, metadata=link_metadata(token), timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    if name == "StepStream":  # a step's failure is answered in-band, with the status the unary Step would end with
        error = pb.StepStreamResponse.FromString(answer).error
        if error.code:
            return grpc.StatusCode[error.code], error.message
    return grpc.StatusCode.OK, ""


async def _assert_still_serving(proc) -> None:  # noqa: ANN001
    async with WorkerClient(proc.address, timeout=60, token=proc.token) as client:
        assert (await client.health()).serving
        fragments = (await client.info()).fragments
        if FRAG in fragments:
            [result] = await client.step(FRAG, [SeqStep("after-fuzz", 0, token_ids=[1, 2, 3], sample=True)])
            assert 0 <= result.token_id < 1000
        if STATELESS in fragments:
            out = await client.infer(STATELESS, {"input_ids": torch.ones(2, 3, dtype=torch.int64)})
            assert out["last_hidden_state"].shape == (2, 3, 32)
        stats = await client.stats()
        assert stats.steps >= 0
