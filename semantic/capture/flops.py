"""FLOPs and bytes moved per op, from shapes alone. A multiply-add counts as 2 FLOPs."""

from __future__ import annotations

from math import prod

from genie.semantic.capture.ops import FREE_KINDS, NORM_KINDS

BIAS_FIRST = frozenset({"addmm", "baddbmm", "addbmm", "addmv"})  # (bias, a, b): the contraction is in `a`


def flops(kind: str, op: str, arg_shapes: list[tuple[int, ...]], out_shapes: list[tuple[int, ...]]) -> float:
    out = prod(out_shapes[0]) if out_shapes else 0
    if kind == "matmul":
        a = arg_shapes[1] if op in BIAS_FIRST and len(arg_shapes) > 2 else arg_shapes[0]
        return 2.0 * out * (a[-1] if a else 1)
    if kind == "conv" and len(arg_shapes) > 1:
        # weight [C_out, C_in / groups, *kernel]: each output element is one dot product of that size
        return 2.0 * out * prod(arg_shapes[1][1:])
    if kind == "sdpa":
        return _sdpa(arg_shapes)
    if kind == "softmax":
        return 5.0 * out
    if kind in NORM_KINDS:
        return 5.0 * out
    if kind == "embedding_bag" and len(arg_shapes) > 1:
        return float(prod(arg_shapes[1]) * (out_shapes[0][-1] if out_shapes[0] else 1))
    if kind in ("pool", "reduction"):
        return float(prod(arg_shapes[0])) if arg_shapes else float(out)
    if kind in ("activation", "elementwise", "mask"):
        return float(out)
    return 0.0


def _sdpa(shapes: list[tuple[int, ...]]) -> float:
    # q: [..., L, E], k: [..., S, E], v: [..., S, Ev]; scores L x S per head, then softmax and a second matmul
    q, k, v = shapes[0], shapes[1], shapes[2]
    batch_heads = prod(q[:-2])
    length, source, e, ev = q[-2], k[-2], q[-1], v[-1]
    return float(batch_heads * length * source * (2 * e + 2 * ev + 5))


def bytes_moved(kind: str, act_in: int, param_bytes: int, out_bytes: int) -> int:
    """Bytes an unfused kernel reads and writes. Embedding lookups read the gathered rows, not the table."""
    if kind in FREE_KINDS:
        return 0
    if kind in ("embedding", "embedding_bag"):
        return act_in + 2 * out_bytes
    return act_in + param_bytes + out_bytes
