// Batch-invariant matmul: y = act(x @ w.T + bias) + residual, registered as torch.ops.genie_engine.gemm_bf16 and
// gemm_fp32, on a weight packed once at load (pack_weight).
//
// Invariance is by construction: every output element y[m, n] is one accumulator that takes the products of
// x[m, :] and w[n, :] in the same order, k = 0, 1, 2, ... (bf16: pairs of k per vdpbf16ps), whatever the number
// of rows M, the row's position among them, the register tile the row falls in, or the thread that runs it.
// Rows only share the loads of the weight. One kernel family serves every M, so a token's logits are the same
// bits alone, in a batch of 64, or inside a prefill chunk of any size.
//
// Packed weight: [N16, Kp, 16] (fp32) or [N16, Kp / 2, 16, 2] (bf16), N16 = ceil(N / 16), Kp = K (bf16: rounded
// up to even), zero-padded: the 16 output columns of a block lie in the 16 lanes of a vector, and for one
// block all of K is contiguous, so batch 1 streams the weight sequentially.
// Built only where the compiler targets AVX-512 (bf16: AVX512-BF16); elsewhere the ops are absent.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>

#include "native_ops.h"

#if defined(__AVX512F__)
#include <immintrin.h>

namespace {

constexpr int kLanes = 16;
// A register tile is up to 8 rows of x by 3 blocks of 16 columns of w: 24 accumulators, 3 weight vectors and a
// broadcast in the 32 vector registers. Batch 32 is four whole tiles, and SmolLM2's widths (576, 960, 3072,
// 49152) are whole panels of 3 blocks, so neither leaves a thin tile behind.
constexpr int kMaxRows = 8;
constexpr int kMaxBlocks = 3;
constexpr int64_t kLine = 64;  // bytes per cache line

inline float gelu_tanh(float v) {
  return 0.5f * v * (1.f + std::tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}

struct Epilogue {
  const float* bias;      // [N] fp32, or null
  const void* residual;   // [M, N] of the output dtype, or null
  bool gelu;
};

constexpr int64_t kAhead = 16;  // weight cache lines asked for ahead of use while streaming a block

// acc[r][c] += x[r, :] . w[block c, :] over all of K, one product (pair) at a time, in k order.
// pf: the next panel's cache lines this tile asks L2 for while it computes (pf_lines per k step), or null.
template <int R, int C>
inline void tile_bf16(const uint16_t* x, int64_t x_stride, const uint16_t* w, int64_t block_stride, int64_t pairs,
                      const char* pf, int pf_lines, __m512* acc) {
  __m512 a[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) a[r][c] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    if constexpr (R == 1) {  // one row (a decode step at batch 1): the weights come from memory, once
      for (int c = 0; c < C; ++c)
        _mm_prefetch(reinterpret_cast<const char*>(w + c * block_stride + (p + kAhead) * 2 * kLanes), _MM_HINT_T0);
    }
    for (int i = 0; i < pf_lines; ++i) _mm_prefetch(pf + (p * pf_lines + i) * kLine, _MM_HINT_T1);
    __m512bh wv[C];
    for (int c = 0; c < C; ++c) wv[c] = (__m512bh)_mm512_loadu_si512(w + c * block_stride + p * 2 * kLanes);
    for (int r = 0; r < R; ++r) {
      int32_t bits;
      std::memcpy(&bits, x + r * x_stride + 2 * p, sizeof(bits));
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(bits);
      for (int c = 0; c < C; ++c) a[r][c] = _mm512_dpbf16_ps(a[r][c], xv, wv[c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r * kMaxBlocks + c] = a[r][c];
}

template <int R, int C>
inline void tile_fp32(const float* x, int64_t x_stride, const float* w, int64_t block_stride, int64_t k_len,
                      const char* pf, int pf_lines, __m512* acc) {
  __m512 a[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) a[r][c] = _mm512_setzero_ps();
  for (int64_t k = 0; k < k_len; ++k) {
    for (int i = 0; i < pf_lines; ++i) _mm_prefetch(pf + (k * pf_lines + i) * kLine, _MM_HINT_T1);
    __m512 wv[C];
    for (int c = 0; c < C; ++c) wv[c] = _mm512_loadu_ps(w + c * block_stride + k * kLanes);
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * x_stride + k]);
      for (int c = 0; c < C; ++c) a[r][c] = _mm512_fmadd_ps(xv, wv[c], a[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r * kMaxBlocks + c] = a[r][c];
}

inline __m512 load_lanes(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_lanes(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline void store_lanes(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
#if defined(__AVX512BF16__)
inline void store_lanes(c10::BFloat16* p, __m512 v) {  // vcvtneps2bf16: round to nearest even
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
}
#endif

// The bias, activation and residual, in fp32, then one rounding to the output dtype; lanes past N are dropped.
// Whole blocks without an activation take the vector path; its arithmetic is the scalar path's, lane by lane.
template <typename out_t>
inline void finish(const __m512* acc, int rows, int blocks, int64_t m0, int64_t n0, int64_t N, const Epilogue& e,
                   out_t* y) {
  alignas(64) float v[kLanes];
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < blocks; ++c) {
      const int64_t n = n0 + c * kLanes;
      const int64_t width = std::min<int64_t>(kLanes, N - n);
      if (width == kLanes && !e.gelu) {
        __m512 t = acc[r * kMaxBlocks + c];
        if (e.bias) t = _mm512_add_ps(t, _mm512_loadu_ps(e.bias + n));
        if (e.residual) t = _mm512_add_ps(t, load_lanes(static_cast<const out_t*>(e.residual) + (m0 + r) * N + n));
        store_lanes(y + (m0 + r) * N + n, t);
        continue;
      }
      _mm512_store_ps(v, acc[r * kMaxBlocks + c]);
      out_t* out = y + (m0 + r) * N + n;
      const out_t* res = e.residual ? static_cast<const out_t*>(e.residual) + (m0 + r) * N + n : nullptr;
      for (int64_t j = 0; j < width; ++j) {
        float t = v[j];
        if (e.bias) t += e.bias[n + j];
        if (e.gelu) t = gelu_tanh(t);
        if (res) t += static_cast<float>(res[j]);
        out[j] = static_cast<out_t>(t);  // c10::BFloat16: round to nearest even, as vcvtneps2bf16
      }
    }
  }
}

template <typename T>
using TileFn = void (*)(const T*, int64_t, const T*, int64_t, int64_t, const char*, int, __m512*);

template <int R, int C>
struct Bf16Tile {
  static constexpr TileFn<uint16_t> fn = &tile_bf16<R, C>;
};
template <int R, int C>
struct Fp32Tile {
  static constexpr TileFn<float> fn = &tile_fp32<R, C>;
};

template <template <int, int> class Tile, typename T, int... I>
constexpr std::array<TileFn<T>, sizeof...(I)> tile_table(std::integer_sequence<int, I...>) {
  return {Tile<I / kMaxBlocks + 1, I % kMaxBlocks + 1>::fn...};
}

template <template <int, int> class Tile, typename T>
TileFn<T> tile_for(int rows, int blocks) {
  static constexpr auto table = tile_table<Tile, T>(std::make_integer_sequence<int, kMaxRows * kMaxBlocks>{});
  return table[(rows - 1) * kMaxBlocks + blocks - 1];
}

void check_common(const at::Tensor& x, const at::Tensor& packed, int64_t n, const std::optional<at::Tensor>& bias,
                  const std::optional<at::Tensor>& residual, c10::string_view act, at::ScalarType dtype) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == dtype, "gemm: x must be a contiguous [M, K]");
  TORCH_CHECK(packed.is_contiguous() && packed.scalar_type() == dtype, "gemm: packed weight of x's dtype expected");
  TORCH_CHECK(packed.size(0) == (n + kLanes - 1) / kLanes, "gemm: packed weight does not hold N rows");
  TORCH_CHECK(act.empty() || act == "gelu_tanh", "gemm: act must be empty or gelu_tanh");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == n && bias->scalar_type() == at::kFloat,
                "gemm: bias must be a contiguous fp32 [N]");
  }
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->is_contiguous() && residual->scalar_type() == dtype && residual->dim() == 2 &&
                    residual->size(0) == x.size(0) && residual->size(1) == n,
                "gemm: residual must be a contiguous [M, N] of x's dtype");
  }
}

// Splits whole panels of kMaxBlocks column blocks among threads (never the k loop): each output's sum is the
// same whoever runs it. A panel's weights come from memory once, for its first row tile, and from L2 for the
// others; while they run, each tile asks L2 for a share of the next panel, so memory streams under the compute.
template <typename T, typename out_t, template <int, int> class Tile>
at::Tensor gemm(const at::Tensor& x, const at::Tensor& packed, int64_t N, const std::optional<at::Tensor>& bias,
                const std::optional<at::Tensor>& residual, c10::string_view act, int64_t k_steps,
                int64_t block_stride) {
  const int64_t M = x.size(0), K = x.size(1);
  auto y = at::empty({M, N}, x.options());
  const Epilogue e{bias.has_value() && bias->defined() ? bias->data_ptr<float>() : nullptr,
                   residual.has_value() && residual->defined() ? residual->data_ptr() : nullptr, act == "gelu_tanh"};
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  const T* wp = reinterpret_cast<const T*>(packed.data_ptr());
  out_t* yp = reinterpret_cast<out_t*>(y.data_ptr());
  const int64_t blocks = packed.size(0), panels = (blocks + kMaxBlocks - 1) / kMaxBlocks;
  const int64_t tiles = (M + kMaxRows - 1) / kMaxRows;
  const int64_t block_lines = block_stride * static_cast<int64_t>(sizeof(T)) / kLine;  // = k_steps
  // lines of the next panel per k step, so that its first tiles between them ask for all of it
  const int pf_lines = M == 1 ? 0 : static_cast<int>((kMaxBlocks + tiles - 1) / tiles);
  // A panel is 48 * M * K multiply-adds; below ~64K of them per thread, waking the team costs more.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, kMaxBlocks * kLanes * M * K));
  at::parallel_for(0, panels, grain, [&](int64_t begin, int64_t end) {
    alignas(64) __m512 acc[kMaxRows * kMaxBlocks];
    const int64_t first = begin * kMaxBlocks, last = std::min(blocks, end * kMaxBlocks);
    // One row reads every weight once, from memory: one block at a time is one sequential stream, which the
    // hardware prefetcher follows best (SmolLM2's weights at batch 1: ~21 GB/s against ~19 for four streams).
    const int64_t step = M == 1 ? 1 : kMaxBlocks;
    for (int64_t b0 = first; b0 < last; b0 += step) {
      const int nb = static_cast<int>(std::min<int64_t>(step, last - b0));
      const int64_t next_lines = std::min<int64_t>(kMaxBlocks, last - b0 - nb) * block_lines;
      const char* next = reinterpret_cast<const char*>(wp + (b0 + nb) * block_stride);
      for (int64_t m0 = 0, t = 0; m0 < M; m0 += kMaxRows, ++t) {
        const int nr = static_cast<int>(std::min<int64_t>(kMaxRows, M - m0));
        const int64_t from = t * pf_lines * k_steps;  // this tile's share of the next panel, in lines
        const bool ask = pf_lines > 0 && from < next_lines;
        tile_for<Tile, T>(nr, nb)(xp + m0 * K, K, wp + b0 * block_stride, block_stride, k_steps,
                                  ask ? next + from * kLine : nullptr, ask ? pf_lines : 0, acc);
        finish<out_t>(acc, nr, nb, m0, b0 * kLanes, N, e, yp);
      }
    }
  });
  return y;
}

at::Tensor gemm_fp32(const at::Tensor& x, const at::Tensor& packed, int64_t n, const std::optional<at::Tensor>& bias,
                     const std::optional<at::Tensor>& residual, c10::string_view act) {
  check_common(x, packed, n, bias, residual, act, at::kFloat);
  TORCH_CHECK(packed.dim() == 3 && packed.size(1) == x.size(1) && packed.size(2) == kLanes,
              "gemm_fp32: packed weight must be [ceil(N / 16), K, 16]");
  const int64_t k = x.size(1);
  return gemm<float, float, Fp32Tile>(x, packed, n, bias, residual, act, k, k * kLanes);
}

#if defined(__AVX512BF16__)
at::Tensor gemm_bf16(const at::Tensor& x, const at::Tensor& packed, int64_t n, const std::optional<at::Tensor>& bias,
                     const std::optional<at::Tensor>& residual, c10::string_view act) {
  check_common(x, packed, n, bias, residual, act, at::kBFloat16);
  TORCH_CHECK(x.size(1) % 2 == 0, "gemm_bf16: K must be even");
  TORCH_CHECK(packed.dim() == 4 && packed.size(1) == x.size(1) / 2 && packed.size(2) == kLanes && packed.size(3) == 2,
              "gemm_bf16: packed weight must be [ceil(N / 16), K / 2, 16, 2]");
  const int64_t pairs = x.size(1) / 2;
  return gemm<uint16_t, c10::BFloat16, Bf16Tile>(x, packed, n, bias, residual, act, pairs, pairs * 2 * kLanes);
}
#endif

}  // namespace

namespace genie_native {

at::Tensor gemm_packed(const at::Tensor& x, const at::Tensor& packed, int64_t n, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual, c10::string_view act) {
#if defined(__AVX512BF16__)
  if (x.scalar_type() == at::kBFloat16) return gemm_bf16(x, packed, n, bias, residual, act);
#endif
  TORCH_CHECK(x.scalar_type() == at::kFloat, "gemm: no batch-invariant matmul for ", x.scalar_type(), " on this CPU");
  return gemm_fp32(x, packed, n, bias, residual, act);
}

}  // namespace genie_native

TORCH_LIBRARY_FRAGMENT(genie_engine, m) {
  m.def("gemm_fp32(Tensor x, Tensor packed, int n, Tensor? bias, Tensor? residual, str act) -> Tensor");
#if defined(__AVX512BF16__)
  m.def("gemm_bf16(Tensor x, Tensor packed, int n, Tensor? bias, Tensor? residual, str act) -> Tensor");
#endif
}

TORCH_LIBRARY_IMPL(genie_engine, CPU, m) {
  m.impl("gemm_fp32", &gemm_fp32);
#if defined(__AVX512BF16__)
  m.impl("gemm_bf16", &gemm_bf16);
#endif
}

#endif
