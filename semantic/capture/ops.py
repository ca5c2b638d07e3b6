"""A small op taxonomy: aten op names -> the kind pattern matchers and the cost model reason about.

Both capture paths meet here: torch.export keeps composite ops (aten.linear), the dispatch fallback sees them
decomposed (aten.t + aten.addmm), so matchers ask for kinds, never raw op names.
"""

from __future__ import annotations

from typing import Any

_KINDS: dict[str, tuple[str, ...]] = {
    "matmul": ("mm", "bmm", "matmul", "baddbmm", "addmm", "addbmm", "einsum", "linear", "dot", "mv", "addmv"),
    "conv": (
        "convolution", "_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
        "conv_transpose3d", "mkldnn_convolution",
    ),
    "sdpa": (
        "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_attention_math", "_flash_attention_forward",
    ),
    "softmax": ("softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax"),
    "embedding": ("embedding",),
    "embedding_bag": ("embedding_bag", "_embedding_bag", "_embedding_bag_forward_only"),
    "layer_norm": ("layer_norm", "native_layer_norm"),
    "rms_norm": ("rms_norm", "_fused_rms_norm"),
    "group_norm": ("group_norm", "native_group_norm"),
    "batch_norm": (
        "batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
        "instance_norm", "_batch_norm_impl_index", "cudnn_batch_norm",
    ),
    "activation": (
        "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "sigmoid", "tanh", "hardswish", "hardsigmoid",
        "hardtanh", "hardtanh_", "leaky_relu", "elu", "mish", "softplus", "glu", "relu6", "selu", "celu", "prelu",
    ),
    "pool": (
        "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "avg_pool1d", "avg_pool2d",
        "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool2d",
    ),
    "reduction": ("mean", "sum", "amax", "amin", "max", "min", "var", "std", "var_mean", "prod", "norm", "logsumexp"),
    "concat": ("cat", "stack", "concat", "hstack", "vstack"),
    "index": (
        "index", "index_select", "gather", "scatter", "scatter_add", "index_put", "index_put_", "index_copy",
        "index_copy_", "slice_scatter", "select_scatter", "masked_scatter", "take", "index_add",
    ),
    "copy": ("copy_", "copy", "fill_", "zero_"),
    "constant": (
        "arange", "zeros", "ones", "full", "empty", "new_ones", "new_zeros", "new_full", "new_empty",
        "zeros_like", "ones_like", "full_like", "empty_like", "scalar_tensor", "tensor", "lift_fresh_copy",
        "empty_strided", "rand", "randn", "randn_like", "rand_like", "linspace", "eye", "triu_indices",
    ),
    "mask": ("tril", "triu", "le", "lt", "ge", "gt", "eq", "ne", "logical_and", "logical_or", "logical_not",
             "__and__", "__or__", "bitwise_and", "bitwise_or", "bitwise_not", "masked_fill", "where"),
    "view": (
        "view", "_unsafe_view", "reshape", "transpose", "permute", "t", "unsqueeze", "squeeze", "expand",
        "expand_as", "slice", "select", "split", "split_with_sizes", "chunk", "unbind", "contiguous", "clone",
        "alias", "detach", "to", "_to_copy", "getitem", "flatten", "unflatten", "narrow", "view_as", "type_as",
        "movedim", "as_strided", "repeat", "repeat_interleave", "_reshape_alias", "dropout", "native_dropout",
        "feature_dropout", "unfold", "pad", "constant_pad_nd", "roll", "flip", "tile", "_assert_tensor_metadata",
        "lift", "float", "half", "bfloat16", "dropout_", "identity", "numpy_T", "mT", "mH", "adjoint", "swapaxes",
        "swapdims",
    ),
}
KIND_OF: dict[str, str] = {op: kind for kind, ops in _KINDS.items() for op in ops}

# Kinds that move no data worth costing on a device (metadata changes, or materialised by the next kernel).
FREE_KINDS = frozenset({"view", "constant"})
NORM_KINDS = frozenset({"layer_norm", "rms_norm", "group_norm", "batch_norm"})
ELEMENTWISE = "elementwise"


def op_name(target: Any) -> str:
    """'aten.linear.default' -> 'linear'; operator.getitem -> 'getitem'."""
    text = str(target)
    if text.startswith("aten."):
        return text.split(".")[1]
    if text.startswith("<built-in function "):
        return text[len("<built-in function ") : -1]
    return getattr(target, "__name__", text).split(".")[-1]


def op_kind(name: str) -> str:
    return KIND_OF.get(name, ELEMENTWISE)
