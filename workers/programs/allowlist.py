"""The torch.ops a program may call: ATen inference ops with no side effect outside their own outputs.

An op is named by its overload, as `str(torch.ops.aten.add.Tensor)` prints it. Anything not listed is refused
at LoadProgram, before a single op runs: custom namespaces, I/O, RNG state, distributed and profiler ops, and
ops no inference graph of ours has needed yet. Adding an op is a reviewed change to this list.
"""

from __future__ import annotations

# `getitem` is not a torch op: it picks one result of a multi-output op (native_batch_norm, split, ...).
GETITEM = "getitem"

_ATEN = """
    _log_softmax.default _softmax.default _to_copy.default _unsafe_view.default
    _native_batch_norm_legit_no_training.default _scaled_dot_product_flash_attention_for_cpu.default
    _scaled_dot_product_efficient_attention.default _scaled_dot_product_flash_attention.default
    abs.default adaptive_avg_pool2d.default _adaptive_avg_pool2d.default add.Scalar add.Tensor add_.Tensor
    addmm.default alias.default amax.default any.default arange.default arange.start arange.start_step
    argmax.default avg_pool2d.default baddbmm.default bitwise_and.Tensor bitwise_not.default bitwise_or.Tensor
    bmm.default cat.default clamp.default clamp_min.default clone.default constant_pad_nd.default
    contiguous.default convolution.default copy.default cos.default cumsum.default detach.default div.Scalar
    div.Tensor div.Tensor_mode dropout.default elu.default embedding.default empty.memory_format eq.Scalar
    eq.Tensor erf.default exp.default expand.default fill.Scalar flatten.using_ints floor_divide.default
    full.default full_like.default gather.default ge.Scalar ge.Tensor gelu.default gt.Scalar gt.Tensor
    hardsigmoid.default hardswish.default hardtanh.default index.Tensor index_select.default isinf.default
    isnan.default layer_norm.default le.Scalar le.Tensor leaky_relu.default lift_fresh_copy.default
    linear.default log.default log_softmax.int logical_and.default logical_not.default logical_or.default
    lt.Scalar lt.Tensor masked_fill.Scalar masked_fill.Tensor matmul.default max.default max.dim
    max_pool2d_with_indices.default maximum.default mean.default mean.dim min.default minimum.default mm.default
    mul.Scalar mul.Tensor mul_.Tensor native_batch_norm.default native_dropout.default native_group_norm.default
    native_layer_norm.default ne.Scalar ne.Tensor neg.default new_empty.default new_full.default new_ones.default
    new_zeros.default ones.default ones_like.default permute.default pow.Scalar pow.Tensor_Scalar
    pow.Tensor_Tensor reciprocal.default relu.default relu_.default repeat.default reshape.default rsqrt.default
    rsub.Scalar scalar_tensor.default scaled_dot_product_attention.default select.int sigmoid.default
    silu.default sin.default slice.Tensor softmax.int split.Tensor split_with_sizes.default sqrt.default
    squeeze.default squeeze.dim squeeze.dims stack.default sub.Scalar sub.Tensor sum.default sum.dim_IntList
    t.default tanh.default topk.default transpose.int tril.default triu.default type_as.default unbind.int
    unsqueeze.default upsample_nearest2d.default var.correction view.default where.self zeros.default zeros_like.default
"""

ALLOWED_OPS: frozenset[str] = frozenset(f"aten.{name}" for name in _ATEN.split()) | {GETITEM}
