// Batch-invariant matmul on weight-only int8: y = act((x @ q.T) * scale + bias) + residual, registered as
// torch.ops.genie_engine.gemm_int8, on a weight quantised and packed once at load (quant.py).
//
// Invariance is by construction, as in native_gemm.cpp: every output element y[m, n] is one fp32 accumulator
// that takes the products x[m, k] * q[n, k] in k order, k = 0, 1, 2, ..., whatever the number of rows M, the
// row's position among them, the register tile it falls in, or the thread that runs it; then one multiply by
// the channel's scale. Each int8 weight is widened to fp32 in a register (exact) just before its FMA, and a bf16
// x is widened to fp32 (exact) once per call, so a product is the exact x * q and only the sums round.
// At batch 1 the weight is read from memory once, at one byte a weight instead of two: that is the speed-up.
//
// Packed weight: [N64, K, 64] int8, N64 = ceil(N / 64), zero rows pad N: a group of 64 output columns is four
// blocks of 16 (the 16 lanes of a vector each), and all of K is contiguous per group, one 64-byte line per k.
// Scales: [N64 * 64] fp32, zero-padded.
// Built only where the compiler targets AVX-512; elsewhere the op is absent and quant.py uses torch.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>

namespace {

constexpr int kLanes = 16;
constexpr int kBlocks = 4;  // 16-column blocks per group: a register tile's columns, one cache line per k
constexpr int kGroup = kLanes * kBlocks;  // 64 output columns
constexpr int kMaxRows = 6;  // rows of x per register tile
constexpr int64_t kAhead = 48;  // k steps (one 64-byte line each) asked for ahead of use at batch 1

inline float gelu_tanh(float v) {
  return 0.5f * v * (1.f + std::tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}

inline __m512 widen(const int8_t* p) {  // 16 int8 -> 16 fp32, exact
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// acc[r][c] += x[r, k] * q[group, k, c * 16 .. c * 16 + 15] for k = 0 .. K-1, in that order: per k, the group's
// four blocks are one 64-byte line, so the weight is one sequential stream with four independent FMA chains.
template <int R>
void tile_int8(const float* x, int64_t x_stride, const int8_t* w, int64_t K, __m512* acc) {
  __m512 a[R][kBlocks];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kBlocks; ++c) a[r][c] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    if constexpr (R == 1) _mm_prefetch(reinterpret_cast<const char*>(w + (k + kAhead) * kGroup), _MM_HINT_T0);
    __m512 wv[kBlocks];
    for (int c = 0; c < kBlocks; ++c) wv[c] = widen(w + k * kGroup + c * kLanes);
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * x_stride + k]);
      for (int c = 0; c < kBlocks; ++c) a[r][c] = _mm512_fmadd_ps(xv, wv[c], a[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kBlocks; ++c) acc[r * kBlocks + c] = a[r][c];
}

using TileFn = void (*)(const float*, int64_t, const int8_t*, int64_t, __m512*);

TileFn tile_for(int rows) {
  static const TileFn table[kMaxRows] = {&tile_int8<1>, &tile_int8<2>, &tile_int8<3>,
                                         &tile_int8<4>, &tile_int8<5>, &tile_int8<6>};
  return table[rows - 1];
}

struct Epilogue {
  const float* scale;     // [N16 * 16] fp32
  const float* bias;      // [N] fp32, or null
  const void* residual;   // [M, N] of the output dtype, or null
  bool gelu;
};

inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }
inline float to_float(float v) { return v; }

// The scale, bias, activation and residual in fp32, lane by lane, then one rounding to the output dtype
// (c10::BFloat16: round to nearest even); lanes past N are dropped.
template <typename out_t>
void finish(const __m512* acc, int rows, int64_t m0, int64_t n0, int64_t N, const Epilogue& e, out_t* y) {
  alignas(64) float v[kLanes];
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < kBlocks && n0 + c * kLanes < N; ++c) {
      const int64_t n = n0 + c * kLanes;
      const int64_t width = std::min<int64_t>(kLanes, N - n);
      _mm512_store_ps(v, _mm512_mul_ps(acc[r * kBlocks + c], _mm512_loadu_ps(e.scale + n)));
      out_t* out = y + (m0 + r) * N + n;
      const out_t* res = e.residual ? static_cast<const out_t*>(e.residual) + (m0 + r) * N + n : nullptr;
      for (int64_t j = 0; j < width; ++j) {
        float t = v[j];
        if (e.bias) t += e.bias[n + j];
        if (e.gelu) t = gelu_tanh(t);
        if (res) t += to_float(res[j]);
        out[j] = static_cast<out_t>(t);
      }
    }
  }
}

void check(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, int64_t n,
           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual, c10::string_view act) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "gemm_int8: x must be a contiguous [M, K]");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat, "gemm_int8: x must be bf16 or fp32");
  TORCH_CHECK(packed.is_contiguous() && packed.scalar_type() == at::kChar && packed.dim() == 3 &&
                  packed.size(0) == (n + kGroup - 1) / kGroup && packed.size(1) == x.size(1) &&
                  packed.size(2) == kGroup,
              "gemm_int8: packed weight must be a contiguous int8 [ceil(N / 64), K, 64]");
  TORCH_CHECK(scale.is_contiguous() && scale.scalar_type() == at::kFloat && scale.numel() == packed.size(0) * kGroup,
              "gemm_int8: scale must be a contiguous fp32 [ceil(N / 64) * 64]");
  TORCH_CHECK(act.empty() || act == "gelu_tanh", "gemm_int8: act must be empty or gelu_tanh");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == n && bias->scalar_type() == at::kFloat,
                "gemm_int8: bias must be a contiguous fp32 [N]");
  }
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->is_contiguous() && residual->scalar_type() == x.scalar_type() && residual->dim() == 2 &&
                    residual->size(0) == x.size(0) && residual->size(1) == n,
                "gemm_int8: residual must be a contiguous [M, N] of x's dtype");
  }
}

// Splits the column blocks among threads (never the k loop): each output's sum is the same whoever runs it.
template <typename out_t>
at::Tensor run(const at::Tensor& x, const float* xf, const at::Tensor& packed, const at::Tensor& scale, int64_t N,
               const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual, bool gelu) {
  const int64_t M = x.size(0), K = x.size(1);
  auto y = at::empty({M, N}, x.options());
  const Epilogue e{scale.data_ptr<float>(), bias.has_value() && bias->defined() ? bias->data_ptr<float>() : nullptr,
                   residual.has_value() && residual->defined() ? residual->data_ptr() : nullptr, gelu};
  const int8_t* wp = packed.data_ptr<int8_t>();
  out_t* yp = reinterpret_cast<out_t*>(y.data_ptr());
  const int64_t groups = packed.size(0), group_stride = K * kGroup;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, kGroup * M * K));
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    alignas(64) __m512 acc[kMaxRows * kBlocks];
    for (int64_t g = begin; g < end; ++g) {
      for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
        const int nr = static_cast<int>(std::min<int64_t>(kMaxRows, M - m0));
        tile_for(nr)(xf + m0 * K, K, wp + g * group_stride, K, acc);
        finish<out_t>(acc, nr, m0, g * kGroup, N, e, yp);
      }
    }
  });
  return y;
}

at::Tensor gemm_int8(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, int64_t n,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                     c10::string_view act) {
  check(x, packed, scale, n, bias, residual, act);
  const bool gelu = act == "gelu_tanh";
  if (x.scalar_type() == at::kFloat) return run<float>(x, x.data_ptr<float>(), packed, scale, n, bias, residual, gelu);
  std::vector<float> xf(static_cast<size_t>(x.numel()));  // bf16 -> fp32 is exact: the top half of the bits
  const auto* xb = reinterpret_cast<const uint16_t*>(x.data_ptr());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const uint32_t bits = static_cast<uint32_t>(xb[i]) << 16;
    std::memcpy(&xf[i], &bits, sizeof(float));
  }
  return run<c10::BFloat16>(x, xf.data(), packed, scale, n, bias, residual, gelu);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(genie_engine, m) {
  m.def("gemm_int8(Tensor x, Tensor packed, Tensor scale, int n, Tensor? bias, Tensor? residual, str act) -> Tensor");
}

TORCH_LIBRARY_IMPL(genie_engine, CPU, m) { m.impl("gemm_int8", &gemm_int8); }

#endif
