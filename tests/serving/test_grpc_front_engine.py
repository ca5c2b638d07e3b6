"""The gRPC front door over our real engine: SmolLM2-135M-Instruct weights loaded in-process by
`load_fragment`, driven by the real Router; greedy output must match transformers token for token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import torch

from genie.protos import inference_pb2 as pb
from genie.protos import inference_pb2_grpc
from genie.serving.generation import ServedModel
from genie.serving.grpc_server import start_grpc_server
from genie.serving.http import HttpState
from genie.serving.metrics import Metrics
from genie.serving.protocol import ChatMessage
from genie.serving.replica import Replica, Stage
from genie.serving.router import Router
from genie.serving.scheduler import Scheduler, SchedulerConfig
from genie.serving.tokenizer import Tokenizer
from genie.workers.contract import FragmentSpec, SeqResult, SeqStep

QUESTION = "What is the capital of France?"
NEW_TOKENS = 8


class EngineClient:
    """A worker without the process: the real fragment, stepped on a thread so the event loop stays free."""

    def __init__(self, fragment) -> None:
        self.fragment = fragment
        self.released: list[str] = []

    async def step(self, fragment_id: str, seqs: list[SeqStep], timeout: float | None = None) -> list[SeqResult]:
        return await asyncio.to_thread(self.fragment.step, seqs)

    async def release(self, fragment_id: str, seq_ids: list[str], timeout: float | None = None,
                      evict: tuple[bytes, ...] = ()) -> None:
        self.fragment.release(seq_ids)
        self.fragment.evict(evict)
        self.released.extend(seq_ids)


def hf_greedy(model_dir: Path, prompt_ids: list[int]) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.slow
async def test_generate_streams_the_engines_greedy_text(smollm2_dir: Path) -> None:
    from genie.workers.engine import load_fragment

    tokenizer = Tokenizer(smollm2_dir)
    spec = FragmentSpec("f0", str(smollm2_dir), dtype="float32", kv_cache_bytes=32 << 20)
    fragment = await asyncio.to_thread(load_fragment, spec)
    info = fragment.info
    client = EngineClient(fragment)
    model = ServedModel("smollm2", max_context=info.max_context, default_max_tokens=64, created=0)
    config = SchedulerConfig(max_batch_tokens=256, prefill_chunk_tokens=256, max_context=info.max_context)
    replica = Replica("r0", [Stage("worker-0", client, "f0")], info.num_kv_blocks, warm=True)  # type: ignore[arg-type]
    metrics = Metrics()
    router = Router(Scheduler(config, {"r0": info.num_kv_blocks}, info.block_size), {"r0": replica}, tokenizer, metrics)
    loop_task = asyncio.create_task(router.run())
    server, port = await start_grpc_server(HttpState(router, tokenizer, model, metrics), "127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            request = pb.GenerateRequest(
                model="smollm2",
                messages=[pb.ChatMessage(role="user", content=QUESTION)],
                max_tokens=NEW_TOKENS,
                temperature=0.0,
                ignore_eos=True,
            )
            msgs = [m async for m in stub.Generate(request, timeout=120)]
        for _ in range(1000):  # the router releases a finished request's KV right after its last message
            if not router.scheduler.has_work() and fragment.stats().sequences == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        await server.stop(0)
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)

    ids = [t for m in msgs for t in m.token_ids]
    text = "".join(m.text for m in msgs)
    prompt_ids = tokenizer.encode_chat((ChatMessage("user", QUESTION),))
    assert ids == hf_greedy(smollm2_dir, prompt_ids)
    assert text == tokenizer.decode(ids)
    assert "Paris" in text
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert (msgs[-1].usage.prompt_tokens, msgs[-1].usage.completion_tokens) == (len(prompt_ids), NEW_TOKENS)
    assert msgs[0].request_id in client.released and fragment.stats().sequences == 0
