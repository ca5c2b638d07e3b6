// The native kernels that other native kernels call (native_layer.cpp runs a whole decoder layer from them),
// defined in native_kernels.cpp, native_attention.cpp and native_gemm.cpp; their contracts are at the definitions.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace genie_native {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);
at::Tensor silu_mul(const at::Tensor& gate_up);
void rope_kv_write(at::Tensor qkv, const std::optional<at::Tensor>& cos, const std::optional<at::Tensor>& sin,
                   const at::Tensor& positions, const at::Tensor& slots, at::Tensor k_cache, at::Tensor v_cache,
                   int64_t heads, int64_t kv_heads);
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& tables, const at::Tensor& lens, int64_t block_size, double scale);
// The batch-invariant matmul of x's dtype (gemm_bf16 or gemm_fp32) on a weight packed by linear.pack_weight.
at::Tensor gemm_packed(const at::Tensor& x, const at::Tensor& packed, int64_t n, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual, c10::string_view act);

}  // namespace genie_native
