// bf16 matrix-vector product for batch-1 decode, registered as torch.ops.genie_engine.linear_bf16.
//
// At batch 1 a decode step is one pass over the weights. Walking a row-major weight row after row is a single
// sequential stream, which one core reads at ~18 GB/s here against ~12 GB/s for oneDNN's matmul on its
// prepacked layout (SmolLM2's 30 layers + head, one thread, this machine). With more rows per step the
// blocked oneDNN kernels win, so the engine only sends single-row inputs here.
// Built only where the compiler targets AVX512-BF16 (vdpbf16ps); elsewhere the op is absent.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>

#if defined(__AVX512BF16__)
#include <immintrin.h>

namespace {

inline __m512bh load_bf16(const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }

// x . w over k in [0, K), both bf16, accumulated in fp32 by vdpbf16ps (32 products per instruction).
inline float row_dot(const uint16_t* x, const uint16_t* w, int64_t K) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    a0 = _mm512_dpbf16_ps(a0, load_bf16(x + k), load_bf16(w + k));
    a1 = _mm512_dpbf16_ps(a1, load_bf16(x + k + 32), load_bf16(w + k + 32));
  }
  for (; k + 32 <= K; k += 32) a0 = _mm512_dpbf16_ps(a0, load_bf16(x + k), load_bf16(w + k));
  if (k < K) {
    const __mmask32 tail = static_cast<__mmask32>((1ull << (K - k)) - 1);
    a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_maskz_loadu_epi16(tail, x + k),
                          (__m512bh)_mm512_maskz_loadu_epi16(tail, w + k));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

inline float gelu_tanh(float v) {
  return 0.5f * v * (1.f + std::tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}

// y = act(x @ w.T + bias) + residual. x: [M, K], w: [N, K], bias: [N], residual: [M, N], all bf16 and
// contiguous; act is "" or "gelu_tanh". Each weight row is read once and used for every row of x.
at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual, c10::string_view act) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear_bf16: x [M, K] and w [N, K] expected");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16, "linear_bf16: bf16 only");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "linear_bf16: x and w must be contiguous");
  TORCH_CHECK(act.empty() || act == "gelu_tanh", "linear_bf16: act must be empty or gelu_tanh");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const bool has_bias = bias.has_value() && bias->defined();
  const bool has_res = residual.has_value() && residual->defined();
  TORCH_CHECK(!has_bias || (bias->is_contiguous() && bias->numel() == N && bias->scalar_type() == at::kBFloat16),
              "linear_bf16: bias must be a contiguous bf16 [N]");
  TORCH_CHECK(!has_res || (residual->is_contiguous() && residual->size(0) == M && residual->size(1) == N &&
                           residual->scalar_type() == at::kBFloat16),
              "linear_bf16: residual must be a contiguous bf16 [M, N]");
  auto y = at::empty({M, N}, x.options());
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr());
  const auto* bp = has_bias ? bias->data_ptr<c10::BFloat16>() : nullptr;
  const auto* rp = has_res ? residual->data_ptr<c10::BFloat16>() : nullptr;
  auto* yp = y.data_ptr<c10::BFloat16>();
  const bool gelu = act == "gelu_tanh";
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t m = 0; m < M; ++m) {
        float v = row_dot(xp + m * K, wp + n * K, K);
        if (bp) v += static_cast<float>(bp[n]);
        if (gelu) v = gelu_tanh(v);
        if (rp) v += static_cast<float>(rp[m * N + n]);
        yp[m * N + n] = c10::BFloat16(v);
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(genie_engine, m) {
  m.def("linear_bf16(Tensor x, Tensor w, Tensor? bias, Tensor? residual, str act) -> Tensor");
}

TORCH_LIBRARY_IMPL(genie_engine, CPU, m) { m.impl("linear_bf16", &linear_bf16); }

#endif
