"""Tiny GPT-2 `generate` through genie.remote: the KV cache kept on the worker against the semantic-blind way.

    python benchmarks/client_generate.py [--prompt 128] [--new 32] [--iters 5] [--json FILE]

One `genie-worker` process (one intra-op thread, as the local runs) over gRPC, the link token in hand. A
random-weight GPT-2 (2 layers, 2 heads, 64 wide, vocab 512) generates `--new` tokens greedily after a
`--prompt`-token prompt, in four modes, each checked for equal tokens with local eager first:

- local eager: model.generate here (the baseline of every latency);
- genie.remote, KV kept: the decoder's KV outputs stay on the worker by handle (client/residency.py);
- genie.remote, keep_kv=False: the cache crosses the wire in and out on every step;
- semantic-blind: keep_kv=False and every call ships the weights again (BindWeights with every tensor), as a
  system that knows neither what the weights nor what the cache are would.

Bytes are the worker's own counters (ProgramStats: serialized request + response bytes of every program RPC,
weights included), over one steady-state generate (programs already lowered and cached), per new token.
Latency alternates each mode with local eager, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import genie
import genie.client as gc


class WeightsEachCall(gc.Session):
    """The semantic-blind way: every call binds the weights again with all their bytes, and keeps nothing."""

    def run(self, lowered, bound, args, keep=(), placement=""):
        weights = self._weights(lowered, args)
        bound.binding_id = self._bind(lowered.program_id, weights, set(weights), placement).binding_id
        return super().run(lowered, bound, args, (), placement)


def tiny_gpt2(positions: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=512, n_positions=positions, bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def served_bytes(session: gc.Session) -> int:
    return sum(c.bytes_in + c.bytes_out for c in session.stats().programs)


def measure(name: str, model, make, session: gc.Session, ids: torch.Tensor, new: int, iters: int) -> dict:
    torch._dynamo.reset()
    gc.reset()
    kwargs = {"max_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        want = model.generate(ids, **kwargs)
        fast = make()
        started = time.perf_counter()
        got = fast.generate(ids, **kwargs)
        first = time.perf_counter() - started
        assert torch.equal(got, want), f"{name}: tokens differ from local eager"
        fast.generate(ids, **kwargs)  # Dynamo's dynamic decode graph now comes first: one more program
        before, rpcs = served_bytes(session), session.transport.rpcs
        assert torch.equal(fast.generate(ids, **kwargs), want)
        rpcs = (session.transport.rpcs - rpcs) / new  # read before ProgramStats, itself an RPC
        per_token = (served_bytes(session) - before) / new
        laps, eager = [], []
        for _ in range(iters):
            for fn, into in ((model, eager), (fast, laps)):
                started = time.perf_counter()
                fn.generate(ids, **kwargs)
                into.append(time.perf_counter() - started)
    report = gc.report()
    return {"mode": name, "first_s": first, "p50_s": statistics.median(laps), "eager_p50_s": statistics.median(eager),
            "bytes_per_token": per_token, "rpcs_per_token": rpcs, "programs": report["programs"],
            "recompiles": report["recompiles"], "graph_breaks": report["graph_breaks"],
            "lower_s": report["lower_seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    # genie.remote registers its model on first use (client/registration.py): in a throwaway registry here,
    # unless one is named, so the first call's time includes a cold registration and analysis
    os.environ.setdefault("GENIE_HOME", tempfile.mkdtemp(prefix="genie-bench-"))
    torch.set_num_threads(1)
    model = tiny_gpt2(args.prompt + args.new)
    ids = torch.randint(0, 512, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    c = model.config
    kv_per_token = 2 * c.n_layer * c.n_embd * 4  # bytes of K and V one position adds, float32

    from genie.workers.process import spawn_worker

    worker = spawn_worker(threads=1)
    try:
        def direct(cls=gc.Session):
            return cls(gc.transport.DirectWorker(worker.address, worker.token))

        kept, shipped, blind = direct(), direct(), direct(WeightsEachCall)
        rows = [
            measure("genie.remote, KV kept on worker", model, lambda: genie.remote(model, session=kept), kept,
                    ids, args.new, args.iters),
            measure("genie.remote, keep_kv=False", model,
                    lambda: genie.remote(model, session=shipped, keep_kv=False), shipped, ids, args.new, args.iters),
            measure("semantic-blind (weights each call)", model,
                    lambda: genie.remote(model, session=blind, keep_kv=False), blind, ids, args.new, args.iters),
        ]
    finally:
        worker.stop()
    print(f"tiny GPT-2, {args.prompt}-token prompt + {args.new} greedy tokens; one position of KV is "
          f"{kv_per_token} bytes, the prompt's KV {kv_per_token * args.prompt} bytes; weights "
          f"{sum(p.numel() * 4 for p in model.parameters())} bytes")
    print(f"{'mode':36} {'bytes/token':>12} {'rpcs/token':>10} {'p50 s':>7} {'eager p50 s':>11} {'x eager':>7} "
          f"{'first s':>7} {'programs':>8} {'recompiles':>10}")
    for r in rows:
        print(f"{r['mode']:36} {r['bytes_per_token']:12.0f} {r['rpcs_per_token']:10.2f} {r['p50_s']:7.3f} "
              f"{r['eager_p50_s']:11.3f} {r['p50_s'] / r['eager_p50_s']:7.2f} {r['first_s']:7.2f} "
              f"{r['programs']:8d} {r['recompiles']:10d}")
    if args.json:
        facts = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                 "prompt": args.prompt, "new": args.new, "kv_bytes_per_position": kv_per_token}
        args.json.write_text(json.dumps(facts | {"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
