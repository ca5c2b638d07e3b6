"""Weight-only int8 (`model.quantization: int8`) against bf16, every number with its bf16 baseline from this run.

    python benchmarks/quantization.py [--model-dir DIR] [--steps 32] [--repeat 3] [--threads N] [--clock cpu]
        [--fp32-reference] [--json benchmarks/results/quantization-DATE.json]

On SmolLM2-135M-Instruct (the packaged GGUF, converted once as tests/conftest.py does), our engine with its
batch-invariant native kernels, bf16 compute, loaded three ways: `none` (bf16), `int8-layers` (the decoder
layers' linears in int8, the head bf16) and `int8` (what `quantization: int8` serves: layers and head in int8).
- int8 load time: the int8 artifact is written once (as registration writes it, registry/quantized.py) into a
  folder of links to the model, then int8 fragments load quantising at load and from the artifact, in turns;
  the int8 fragments below read the artifact (the same bits);
- batch-1 decode tokens/s (as benchmarks/engine_decode.py times it: decode steps after the prompt is cached),
  the fragments taking turns, best of `--repeat`, and every round's ratio;
- greedy agreement: 64 chat prompts x 64 new tokens (EOS ignored) decoded as one batch; the fraction of
  prompts whose 64 tokens are identical to bf16's, the mean position of the first differing token, and the
  teacher-forced next-token agreement (fed bf16's tokens, how often the same next token is picked);
- perplexity of tests/data/perplexity.txt: head-less fragments' hidden states for every token of one prefill,
  (a) through one fp32 norm and (tied) head, so the difference is the quantised layers alone, and (b) through
  each mode's own served norm and head (bf16, or int8).
`--fp32-reference` also decodes the agreement prompts in fp32 and compares every mode with it: how far bf16
itself is from fp32 by the same measures, the noise floor.
`--json PATH` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_decode import QUESTIONS, default_model_dir, engine_decode, prompts  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TEXT = REPO / "tests" / "data" / "perplexity.txt"
QUANTIZATION = {"none": "none", "int8-layers": "int8", "int8": "int8"}  # mode -> FragmentSpec.quantization
STYLES = ["", "Answer briefly. ", "Explain to a child. ", "Be precise. ", "Answer in French. ",
          "Use a list. ", "Think step by step. ", "Reply as a pirate. "]


def agreement_prompts(tokenizer, count: int = 64) -> list[list[int]]:
    """`count` distinct chat prompts: the benchmark questions under several instructions."""
    texts = [STYLES[(i // len(QUESTIONS)) % len(STYLES)] + QUESTIONS[i % len(QUESTIONS)] for i in range(count)]
    chats = [[{"role": "user", "content": t}] for t in texts]
    return [list(tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=False)) for c in chats]


def greedy(frag, batch_prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy continuations of all prompts decoded together, `new_tokens` each (EOS ignored)."""
    return _decode(frag, "greedy", batch_prompts, new_tokens - 1, lambda t, i, out: out[-1])


def _decode(frag, name: str, batch_prompts: list[list[int]], steps: int, feed) -> list[list[int]]:
    """Prefills every prompt, then `steps` decode steps of all together; `feed(t, i, out)` is the token
    sequence i reads at step t (out: what it has chosen so far). Returns each sequence's chosen tokens."""
    from genie.workers.engine import SeqStep

    ids = [f"{name}-{i}" for i in range(len(batch_prompts))]
    out = [[r.token_id] for r in frag.step([SeqStep(s, 0, p, sample=True) for s, p in zip(ids, batch_prompts)])]
    pos = [len(p) for p in batch_prompts]
    try:
        for t in range(steps):
            batch = [SeqStep(s, p, [feed(t, i, o)], sample=True) for i, (s, p, o) in enumerate(zip(ids, pos, out))]
            for o, r in zip(out, frag.step(batch)):
                o.append(r.token_id)
            pos = [p + 1 for p in pos]
    finally:
        frag.release(ids)
    return out


def agreement(reference: list[list[int]], other: list[list[int]]) -> tuple[float, float]:
    """(fraction of identical sequences, mean length of the matching prefix)."""
    prefixes = [next((i for i, (a, b) in enumerate(zip(r, o)) if a != b), len(r)) for r, o in zip(reference, other)]
    same = sum(p == len(r) for p, r in zip(prefixes, reference))
    return same / len(reference), sum(prefixes) / len(prefixes)


def perplexity(frag, model_dir: Path, token_ids: list[int]) -> float:
    """exp(mean next-token NLL) over `token_ids`, from a head-less fragment's hidden states, fp32 norm + head."""
    from transformers import AutoConfig

    from genie.workers.engine import SeqStep
    from genie.workers.engine.checkpoint import Checkpoint

    config = AutoConfig.from_pretrained(model_dir)
    with Checkpoint(model_dir) as ckpt:
        norm = ckpt.get("model.norm.weight", torch.float32, torch.device("cpu"))
        name = "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
        head = ckpt.get(name, torch.float32, torch.device("cpu"))
    hidden = frag.step([SeqStep("ppl", 0, token_ids)])[0].hidden.float()  # [T, hidden]
    frag.release(["ppl"])
    h = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps) * norm
    logprobs = torch.log_softmax(h[:-1] @ head.T, dim=-1)
    nll = -logprobs.gather(1, torch.tensor(token_ids[1:])[:, None]).mean()
    return math.exp(nll.item())


def forced(frag, batch_prompts: list[list[int]], reference: list[list[int]]) -> list[list[int]]:
    """Teacher-forced greedy choices: at each position the fragment reads the reference's tokens so far and
    picks its own next token; the fraction equal to the reference's is next-token agreement in one context."""
    return _decode(frag, "forced", batch_prompts, len(reference[0]) - 1, lambda t, i, out: reference[i][t])


def token_agreement(reference: list[list[int]], other: list[list[int]]) -> float:
    pairs = [(a, b) for r, o in zip(reference, other) for a, b in zip(r, o)]
    return sum(a == b for a, b in pairs) / len(pairs)


def served_perplexity(hidden_frag, head_frag, token_ids: list[int]) -> float:
    """exp(mean next-token NLL) with the served head: a head-less fragment's hidden states through
    `head_frag`'s own final norm and head (bf16, or int8 with the head quantised), log-softmax in fp32."""
    from genie.workers.engine import SeqStep

    hidden = hidden_frag.step([SeqStep("ppl", 0, token_ids)])[0].hidden
    hidden_frag.release(["ppl"])
    with torch.no_grad():
        logprobs = torch.log_softmax(head_frag.model.logits(hidden[:-1]).float(), dim=-1)
    nll = -logprobs.gather(1, torch.tensor(token_ids[1:])[:, None]).mean()
    return math.exp(nll.item())


def load_times(model_dir: Path, spec, rounds: int) -> dict:
    """Seconds to load the int8 fragment quantising at load against reading the registry's int8 artifact
    (written here once, into a folder of links to the model's files, as registration writes it)."""
    import tempfile

    from genie.registry.quantized import INT8_PATH, write_int8
    from genie.workers.engine import load_fragment

    folder = Path(tempfile.mkdtemp(prefix="genie-int8-"))
    for f in model_dir.iterdir():
        (folder / f.name).symlink_to(f.resolve())
    (folder / INT8_PATH).parent.mkdir()
    start = time.perf_counter()
    write_int8(model_dir, folder / INT8_PATH, "benchmark")
    out = {"artifact_write_s": time.perf_counter() - start, "artifact_bytes": (folder / INT8_PATH).stat().st_size,
           "at_load_s": [], "from_artifact_s": []}
    small = {**_fields(spec), "quantization": "int8", "kv_cache_bytes": 32 << 20}
    for _ in range(rounds):  # taking turns; the fp32 checkpoint is in the page cache for both after round one
        for key, where in (("at_load_s", model_dir), ("from_artifact_s", folder)):
            start = time.perf_counter()
            frag = load_fragment(type(spec)(**{**small, "model_dir": str(where)}), kernels="native")
            out[key].append(time.perf_counter() - start)
            del frag
    out["folder"] = str(folder)  # removed at the end of the run
    return out


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    from transformers import AutoTokenizer

    from genie.workers.engine import FragmentSpec, load_fragment

    model_dir = args.model_dir or default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    print(f"model {model_dir}\ntorch {torch.__version__}, {args.threads} threads, {args.clock} clock, "
          f"load average {_load()}")
    spec = FragmentSpec("q", str(model_dir), dtype="bfloat16", kv_cache_bytes=512 << 20)  # fp32 needs it
    results: dict = {"threads": args.threads, "clock": args.clock, "load_average_start": _load()}
    loads = load_times(model_dir, spec, args.load_rounds)
    results["int8_load"] = loads
    print(f"int8 artifact written in {loads['artifact_write_s']:.1f} s ({loads['artifact_bytes'] / 1e6:.0f} MB); "
          f"int8 load, best of {args.load_rounds}: quantising at load {min(loads['at_load_s']):.2f} s, from the "
          f"artifact {min(loads['from_artifact_s']):.2f} s")
    int8_dir = loads["folder"]  # the int8 fragments below read the artifact (same bits as quantising at load)
    modes = ("none", "int8-layers", "int8")  # int8 is what `quantization: int8` serves: layers and head
    frags = {}
    for mode in modes:
        start = time.perf_counter()
        where = str(model_dir) if mode == "none" else int8_dir
        frags[mode] = load_fragment(FragmentSpec(**{**_fields(spec), "model_dir": where,
                                                    "quantization": QUANTIZATION[mode]}),
                                    kernels="native", quantize_head=mode == "int8")
        print(f"{mode:9s}: loaded in {time.perf_counter() - start:.1f} s, weights held "
              f"{frags[mode].model.weight_bytes / 1e6:.0f} MB, read per decode step "
              f"{frags[mode].model.read_bytes / 1e6:.0f} MB")
    one = prompts(tokenizer, 1)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeat):  # the modes take turns, so a neighbour's burst hits all of them
        for mode in modes:
            times[mode].append(engine_decode(frags[mode], one, args.steps, args.warmup, clock))
    tok_s = {m: 1 / min(times[m]) for m in modes}
    results["decode_tok_s"] = tok_s
    print(f"\nbatch-1 decode, best of {args.repeat} rounds of {args.steps} steps: bf16 {tok_s['none']:.1f} tok/s")
    for mode in modes[1:]:
        ratios = sorted(b / i for b, i in zip(times["none"], times[mode]))
        results[f"decode_ratio_{mode}"] = tok_s[mode] / tok_s["none"]
        results[f"decode_ratio_per_round_{mode}"] = ratios
        print(f"  {mode}: {tok_s[mode]:.1f} tok/s -> {tok_s[mode] / tok_s['none']:.2f}x; "
              f"per round {', '.join(f'{r:.2f}x' for r in ratios)}")
    batch = agreement_prompts(tokenizer, args.prompts)
    outs = {m: greedy(frags[m], batch, args.new_tokens) for m in modes}
    results["agreement"] = {"prompts": args.prompts, "new_tokens": args.new_tokens}
    print(f"greedy agreement with bf16, {args.prompts} prompts x {args.new_tokens} tokens:")
    for mode in modes[1:]:
        same, prefix = agreement(outs["none"], outs[mode])
        teacher = token_agreement(outs["none"], forced(frags[mode], batch, outs["none"]))
        results["agreement"][mode] = {"identical": same, "mean_matching_prefix": prefix,
                                      "teacher_forced_token_agreement": teacher}
        print(f"  {mode}: {same:.1%} identical, mean first divergence at token {prefix:.1f} of "
              f"{args.new_tokens}; fed bf16's tokens, picks bf16's next token {teacher:.1%} of the time")
    if args.fp32_reference:  # how far bf16 itself is from fp32 by the same measure: the noise floor
        frags["fp32"] = load_fragment(FragmentSpec(**{**_fields(spec), "dtype": "float32"}), kernels="native")
        fp32 = greedy(frags["fp32"], batch, args.new_tokens)
        teacher = token_agreement(fp32, forced(frags["none"], batch, fp32))
        results["agreement"]["none_vs_fp32_teacher_forced"] = teacher
        for mode in modes:
            same, prefix = agreement(fp32, outs[mode])
            results["agreement"][f"{mode}_vs_fp32"] = {"identical": same, "mean_matching_prefix": prefix}
            print(f"  {'bf16' if mode == 'none' else mode} against fp32 instead: {same:.1%} identical, "
                  f"mean first divergence at token {prefix:.1f}")
        print(f"  bf16 fed fp32's tokens picks fp32's next token {teacher:.1%} of the time")
        del frags["fp32"]
    text_ids = tokenizer(TEXT.read_text())["input_ids"]
    ppl, served = {}, {}
    for mode in ("none", "int8"):  # head-less: the int8 layers are the same in int8-layers and int8
        where = str(model_dir) if mode == "none" else int8_dir
        frag = load_fragment(FragmentSpec(**{**_fields(spec), "model_dir": where, "quantization": mode,
                                             "has_head": False, "kv_cache_bytes": 32 << 20}), kernels="native")
        ppl[mode] = perplexity(frag, model_dir, text_ids)
        for head_mode in [m for m in modes if QUANTIZATION[m] == mode]:
            served[head_mode] = served_perplexity(frag, frags[head_mode], text_ids)
        del frag
    results["perplexity"] = {"tokens": len(text_ids), **ppl}
    results["perplexity_served_head"] = served
    print(f"perplexity of {TEXT.relative_to(REPO)} ({len(text_ids)} tokens; layers only, the head in fp32): "
          f"bf16 {ppl['none']:.3f}, int8 {ppl['int8']:.3f} ({ppl['int8'] / ppl['none'] - 1:+.2%})")
    print("  with each mode's served norm and head: " + ", ".join(
        f"{m} {v:.3f} ({v / served['none'] - 1:+.2%})" for m, v in served.items()))
    shutil.rmtree(int8_dir, ignore_errors=True)
    results["load_average_end"] = _load()
    print(f"load average at end {_load()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


def _fields(spec) -> dict:
    from dataclasses import fields

    return {f.name: getattr(spec, f.name) for f in fields(spec)}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=None, help="HF folder; default: SmolLM2-135M-Instruct")
    p.add_argument("--steps", type=int, default=32, help="timed decode steps per measurement (default 32)")
    p.add_argument("--warmup", type=int, default=4, help="untimed decode steps first (default 4)")
    p.add_argument("--repeat", type=int, default=3, help="decode measurements per mode, best kept (default 3)")
    p.add_argument("--load-rounds", type=int, default=2, help="int8 loads timed each way (default 2)")
    p.add_argument("--prompts", type=int, default=64, help="prompts for greedy agreement (default 64)")
    p.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per prompt (default 64)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time, or CPU time (1 thread only)")
    p.add_argument("--fp32-reference", action="store_true",
                   help="also decode the agreement prompts in fp32 and compare bf16 and int8 with it")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu needs --threads 1: CPU time of several threads adds up")
    return args


if __name__ == "__main__":
    main(sys.argv[1:])
