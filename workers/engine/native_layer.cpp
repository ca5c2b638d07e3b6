// One Llama-family decoder layer on a step's token rows, registered as torch.ops.genie_engine.llama_layer: the
// nine kernel calls of LlamaLayer's Python path (workers/engine/llama.py) on the batch-invariant kernels, in the
// same order with the same arguments, so a row gets the same bits, from one call from Python instead of nine.
// What it saves is the calls themselves: at batch 32 a decode step made ~300 of them, ~1.5 ms of Python and
// dispatch. Built only where the invariant matmul is (AVX-512); elsewhere the op is absent and the Python path runs.

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>

#include "native_ops.h"

#if defined(__AVX512F__)

namespace {

// x: [T, hidden] contiguous; weights packed by linear.pack_weight, biases fp32; qkv rows are q | k | v heads;
// caches [kv_heads, slots, D]; tables [T, W] and lens [T]: each row's block table and keys (TokenRows).
// Returns x + attention + MLP, [T, hidden]; writes the rows' keys and values into the caches.
at::Tensor llama_layer(const at::Tensor& x, const at::Tensor& input_norm, const at::Tensor& post_norm, double eps,
                       const at::Tensor& qkv_w, int64_t qkv_n, const std::optional<at::Tensor>& qkv_b,
                       const at::Tensor& o_w, const std::optional<at::Tensor>& o_b, const at::Tensor& gate_up_w,
                       int64_t gate_up_n, const std::optional<at::Tensor>& gate_up_b, const at::Tensor& down_w,
                       const std::optional<at::Tensor>& down_b, const std::optional<at::Tensor>& cos,
                       const std::optional<at::Tensor>& sin, const at::Tensor& positions, const at::Tensor& slots,
                       at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& tables, const at::Tensor& lens,
                       int64_t block_size, int64_t heads, int64_t kv_heads, double scale) {
  using namespace genie_native;
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "llama_layer: x must be a contiguous [T, hidden]");
  const int64_t hidden = x.size(1), d = k_cache.size(2);
  const std::optional<at::Tensor> none;
  at::Tensor qkv = gemm_packed(rms_norm(x, input_norm, eps), qkv_w, qkv_n, qkv_b, none, "");
  rope_kv_write(qkv, cos, sin, positions, slots, k_cache, v_cache, heads, kv_heads);
  const at::Tensor q = qkv.narrow(1, 0, heads * d).view({qkv.size(0), heads, d});
  const at::Tensor attn = paged_decode_attention(q, k_cache, v_cache, tables, lens, block_size, scale);
  const at::Tensor h = gemm_packed(attn, o_w, hidden, o_b, x, "");
  const at::Tensor act = silu_mul(gemm_packed(rms_norm(h, post_norm, eps), gate_up_w, gate_up_n, gate_up_b, none, ""));
  return gemm_packed(act, down_w, hidden, down_b, h, "");
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(genie_engine, m) {
  m.def(
      "llama_layer(Tensor x, Tensor input_norm, Tensor post_norm, float eps, Tensor qkv_w, int qkv_n, Tensor? qkv_b, "
      "Tensor o_w, Tensor? o_b, Tensor gate_up_w, int gate_up_n, Tensor? gate_up_b, Tensor down_w, Tensor? down_b, "
      "Tensor? cos, Tensor? sin, Tensor positions, Tensor slots, Tensor(a!) k_cache, Tensor(b!) v_cache, "
      "Tensor tables, Tensor lens, int block_size, int heads, int kv_heads, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(genie_engine, CPU, m) { m.impl("llama_layer", &llama_layer); }

#endif
