// Decode attention straight from the paged KV cache, registered as torch.ops.genie_engine.paged_decode_attention
// (the schema is in native_kernels.cpp). Each (sequence, KV head) reads its keys and values once, block by block
// through its block table, for all the query heads that share them; nothing is gathered into a copy first.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "native_common.h"
#include "native_ops.h"

namespace {

using genie_native::balanced_parts;
using genie_native::fast_exp;
using genie_native::grain_for;
using genie_native::round_to;
using genie_native::to_float;

// Scores of one (sequence, KV head) against its keys, block by block: scores[g * n + p] = q_g . k_p.
// The block table is checked here; a slot outside the cache is a bug upstream, never a read out of bounds.
template <typename scalar_t>
void score_keys(const float* qf, const scalar_t* kh, const int64_t* table, int64_t n, int64_t block_size,
                int64_t cache_blocks, int64_t group, int64_t d, float* kf, float* scores) {
  for (int64_t start = 0; start < n; start += block_size) {
    const int64_t block = table[start / block_size];
    TORCH_CHECK(block >= 0 && block < cache_blocks, "paged_decode_attention: block id out of range");
    const scalar_t* rows = kh + block * block_size * d;
    for (int64_t r = 0, end = std::min(block_size, n - start); r < end; ++r) {
      const scalar_t* k = rows + r * d;
      _Pragma("omp simd")
      for (int64_t i = 0; i < d; ++i) kf[i] = to_float(k[i]);
      for (int64_t g = 0; g < group; ++g) {
        const float* qg = qf + g * d;
        float dot = 0.f;
        _Pragma("omp simd reduction(+ : dot)")
        for (int64_t i = 0; i < d; ++i) dot += qg[i] * kf[i];
        scores[g * n + start + r] = dot;
      }
    }
  }
}

// In place: each of the `group` rows of n scores becomes its softmax.
void softmax_rows(float* scores, int64_t group, int64_t n) {
  for (int64_t g = 0; g < group; ++g) {
    float* sg = scores + g * n;
    const float top = *std::max_element(sg, sg + n);
    float total = 0.f;
    _Pragma("omp simd reduction(+ : total)")
    for (int64_t p = 0; p < n; ++p) {
      sg[p] = fast_exp(sg[p] - top);
      total += sg[p];
    }
    const float inv = 1.f / total;
    for (int64_t p = 0; p < n; ++p) sg[p] *= inv;
  }
}

// acc[g * d + i] = sum_p probs[g * n + p] * v_p[i], reading values block by block.
template <typename scalar_t>
void weigh_values(const float* probs, const scalar_t* vh, const int64_t* table, int64_t n, int64_t block_size,
                  int64_t group, int64_t d, float* vf, float* acc) {
  std::fill(acc, acc + group * d, 0.f);
  for (int64_t start = 0; start < n; start += block_size) {
    const scalar_t* rows = vh + table[start / block_size] * block_size * d;
    for (int64_t r = 0, end = std::min(block_size, n - start); r < end; ++r) {
      const scalar_t* v = rows + r * d;
      _Pragma("omp simd")
      for (int64_t i = 0; i < d; ++i) vf[i] = to_float(v[i]);
      for (int64_t g = 0; g < group; ++g) {
        const float w = probs[g * n + start + r];
        float* a = acc + g * d;
        _Pragma("omp simd")
        for (int64_t i = 0; i < d; ++i) a[i] += w * vf[i];
      }
    }
  }
}

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));  // bf16 is fp32's top half
}
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Blocks sit anywhere in the cache, so the hardware prefetcher cannot guess the next one; ask for it.
template <typename scalar_t>
inline void prefetch_block(const scalar_t* p, int64_t elements) {
  const char* bytes = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < elements * static_cast<int64_t>(sizeof(scalar_t)); off += 64) {
    _mm_prefetch(bytes + off, _MM_HINT_T1);
  }
}

// The same maths as score_keys / softmax_rows / weigh_values for D = 16 * V, in AVX-512 registers: a key row
// is V vectors, each score one fused dot plus one tree reduction, and each query head's accumulator stays
// in registers across a block of value rows.

// s[o] = _mm512_reduce_add_ps(v[(o % 4) * 4 + o / 4]) for o < 16: the same additions of the same pairs (lanes
// i and i + 8, then i and i + 4, i and i + 2, i and i + 1), so the same bits, for 16 vectors at once: 30
// shuffles and 15 adds instead of 64 and 64. A key's score never depends on which path summed it.
inline __m512 sum16(const __m512* v) {
  __m512 t[8], u[4], w[2];
  for (int j = 0; j < 8; ++j) {
    t[j] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * j], v[2 * j + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * j], v[2 * j + 1], 0xEE));
  }
  for (int j = 0; j < 4; ++j) {
    u[j] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * j], t[2 * j + 1], 0x88),
                         _mm512_shuffle_f32x4(t[2 * j], t[2 * j + 1], 0xDD));
  }
  for (int j = 0; j < 2; ++j) {
    w[j] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * j], u[2 * j + 1], 0x44),
                         _mm512_shuffle_ps(u[2 * j], u[2 * j + 1], 0xEE));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
}

// Where row o of 16 puts its dot product for sum16 to give its score in lane o.
constexpr int sum16_slot(int o) { return (o % 4) * 4 + o / 4; }
#if defined(__AVX512BF16__)
constexpr int64_t kMaxBf16Group = 16;

// Scores of one block of bf16 key rows with vdpbf16ps, 32 products per instruction on the keys as stored:
// no conversion of the keys, half the multiply instructions of the fp32 loop. qb holds each query head
// rounded once to bf16 (V / 2 vectors of 32 per head); the products are exact in fp32 and summed there.
template <int V>
void score_block_bf16(const __m512bh* qb, const c10::BFloat16* rows, int64_t count, int64_t group, int64_t n,
                      float* scores) {
  constexpr int64_t D = 16 * V;
  constexpr int H = V / 2;
  int64_t r = 0;
  for (; r + 16 <= count; r += 16) {  // 16 rows a query head: their sums in one go
    for (int64_t g = 0; g < group; ++g) {
      __m512 dots[16];
      for (int o = 0; o < 16; ++o) {
        const c10::BFloat16* k = rows + (r + o) * D;
        __m512 dot = _mm512_dpbf16_ps(_mm512_setzero_ps(), qb[g * H], (__m512bh)_mm512_loadu_si512(k));
        for (int h = 1; h < H; ++h) {
          dot = _mm512_dpbf16_ps(dot, qb[g * H + h], (__m512bh)_mm512_loadu_si512(k + h * 32));
        }
        dots[sum16_slot(o)] = dot;
      }
      _mm512_storeu_ps(scores + g * n + r, sum16(dots));
    }
  }
  for (; r < count; ++r) {
    __m512bh k[H];
    for (int h = 0; h < H; ++h) k[h] = (__m512bh)_mm512_loadu_si512(rows + r * D + h * 32);
    for (int64_t g = 0; g < group; ++g) {
      __m512 dot = _mm512_dpbf16_ps(_mm512_setzero_ps(), qb[g * H], k[0]);
      for (int h = 1; h < H; ++h) dot = _mm512_dpbf16_ps(dot, qb[g * H + h], k[h]);
      scores[g * n + r] = _mm512_reduce_add_ps(dot);
    }
  }
}
#endif

// The value pass row by row for all G query heads of a KV head at once: each value row is loaded and widened
// once instead of G times, with the G x V accumulators in registers. bf16 rows are widened 32 elements at a
// time, even and odd ones apart (a shift and a mask: bf16 is the top half of an fp32), so accumulator 2h holds
// dims 32h, 32h + 2, ... and 2h + 1 the odd ones; each dim still sums the same products in the same order.
template <typename scalar_t, int V, int G>
void weigh_rows(const float* probs, const scalar_t* vh, const int64_t* table, int64_t n, int64_t block_size,
                float* acc) {
  constexpr int64_t D = 16 * V;
  constexpr bool kSplit = std::is_same_v<scalar_t, c10::BFloat16> && V % 2 == 0;
  __m512 a[G][V];
  for (int g = 0; g < G; ++g)
    for (int v = 0; v < V; ++v) a[g][v] = _mm512_setzero_ps();
  for (int64_t start = 0; start < n; start += block_size) {
    const scalar_t* rows = vh + table[start / block_size] * block_size * D;
    for (int64_t r = 0, end = std::min(block_size, n - start); r < end; ++r) {
      __m512 x[V];
      if constexpr (kSplit) {
        const __m512i odd = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
        for (int h = 0; h < V / 2; ++h) {
          const __m512i raw = _mm512_loadu_si512(rows + r * D + h * 32);
          x[2 * h] = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
          x[2 * h + 1] = _mm512_castsi512_ps(_mm512_and_si512(raw, odd));
        }
      } else {
        for (int v = 0; v < V; ++v) x[v] = load16(rows + r * D + v * 16);
      }
      for (int g = 0; g < G; ++g) {
        const __m512 w = _mm512_set1_ps(probs[g * n + start + r]);
        for (int v = 0; v < V; ++v) a[g][v] = _mm512_fmadd_ps(w, x[v], a[g][v]);
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    if constexpr (kSplit) {
      alignas(64) float t[V][16];
      for (int v = 0; v < V; ++v) _mm512_store_ps(t[v], a[g][v]);
      for (int h = 0; h < V / 2; ++h) {
        for (int i = 0; i < 16; ++i) {
          acc[g * D + h * 32 + 2 * i] = t[2 * h][i];
          acc[g * D + h * 32 + 2 * i + 1] = t[2 * h + 1][i];
        }
      }
    } else {
      for (int v = 0; v < V; ++v) _mm512_storeu_ps(acc + g * D + v * 16, a[g][v]);
    }
  }
}

// weigh_rows for groups whose accumulators fit in registers (G x V <= 16 of the 32 vector registers);
// false for the others, which take the head-by-head loop.
template <typename scalar_t, int V>
bool weigh_values_grouped(const float* probs, const scalar_t* vh, const int64_t* table, int64_t n,
                          int64_t block_size, int64_t group, float* acc) {
  switch (group) {
    case 1:
      weigh_rows<scalar_t, V, 1>(probs, vh, table, n, block_size, acc);
      return true;
    case 2:
      if constexpr (2 * V <= 16) weigh_rows<scalar_t, V, 2>(probs, vh, table, n, block_size, acc);
      return 2 * V <= 16;
    case 3:
      if constexpr (3 * V <= 16) weigh_rows<scalar_t, V, 3>(probs, vh, table, n, block_size, acc);
      return 3 * V <= 16;
    case 4:
      if constexpr (4 * V <= 16) weigh_rows<scalar_t, V, 4>(probs, vh, table, n, block_size, acc);
      return 4 * V <= 16;
    default:
      return false;
  }
}

template <typename scalar_t, int V>
void attend_rows(const float* qf, const scalar_t* kh, const scalar_t* vh, const int64_t* table, int64_t n,
                 int64_t block_size, int64_t cache_blocks, int64_t group, float* scores, float* acc) {
  constexpr int64_t D = 16 * V;
#if defined(__AVX512BF16__)
  // [group][V / 2] bf16 query vectors for score_block_bf16; null (the fp32 loop) for other dtypes or groups
  // too large for the stack array.
  alignas(64) __m512bh qbuf[kMaxBf16Group * 4];
  const __m512bh* qb = nullptr;
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && V % 2 == 0 && V <= 8) {
    if (group <= kMaxBf16Group) {
      for (int64_t g = 0; g < group; ++g) {
        for (int h = 0; h < V / 2; ++h) {
          const float* src = qf + g * D + h * 32;
          qbuf[g * (V / 2) + h] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src));
        }
      }
      qb = qbuf;
    }
  }
#endif
  for (int64_t start = 0; start < n; start += block_size) {
    const int64_t block = table[start / block_size];
    TORCH_CHECK(block >= 0 && block < cache_blocks, "paged_decode_attention: block id out of range");
    const scalar_t* rows = kh + block * block_size * D;
    if (start + block_size < n) prefetch_block(kh + table[start / block_size + 1] * block_size * D, block_size * D);
    prefetch_block(vh + block * block_size * D, block_size * D);
    const int64_t end = std::min(block_size, n - start);
#if defined(__AVX512BF16__)
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && V % 2 == 0) {
      if (qb != nullptr) {
        score_block_bf16<V>(qb, rows, end, group, n, scores + start);
        continue;
      }
    }
#endif
    int64_t r = 0;
    for (; r + 16 <= end; r += 16) {  // 16 rows a query head: their sums in one go
      for (int64_t g = 0; g < group; ++g) {
        __m512 dots[16];
        for (int o = 0; o < 16; ++o) {
          const scalar_t* k = rows + (r + o) * D;
          __m512 dot = _mm512_mul_ps(_mm512_loadu_ps(qf + g * D), load16(k));
          for (int v = 1; v < V; ++v) {
            dot = _mm512_fmadd_ps(_mm512_loadu_ps(qf + g * D + v * 16), load16(k + v * 16), dot);
          }
          dots[sum16_slot(o)] = dot;
        }
        _mm512_storeu_ps(scores + g * n + start + r, sum16(dots));
      }
    }
    for (; r < end; ++r) {
      __m512 k[V];
      for (int v = 0; v < V; ++v) k[v] = load16(rows + r * D + v * 16);
      for (int64_t g = 0; g < group; ++g) {
        __m512 dot = _mm512_mul_ps(_mm512_loadu_ps(qf + g * D), k[0]);
        for (int v = 1; v < V; ++v) dot = _mm512_fmadd_ps(_mm512_loadu_ps(qf + g * D + v * 16), k[v], dot);
        scores[g * n + start + r] = _mm512_reduce_add_ps(dot);
      }
    }
  }
  softmax_rows(scores, group, n);
  if (weigh_values_grouped<scalar_t, V>(scores, vh, table, n, block_size, group, acc)) return;
  for (int64_t g = 0; g < group; ++g) {
    __m512 a[V];
    for (int v = 0; v < V; ++v) a[v] = _mm512_setzero_ps();
    const float* probs = scores + g * n;
    for (int64_t start = 0; start < n; start += block_size) {
      const scalar_t* rows = vh + table[start / block_size] * block_size * D;
      for (int64_t r = 0, end = std::min(block_size, n - start); r < end; ++r) {
        const __m512 w = _mm512_set1_ps(probs[start + r]);
        for (int v = 0; v < V; ++v) a[v] = _mm512_fmadd_ps(w, load16(rows + r * D + v * 16), a[v]);
      }
    }
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(acc + g * D + v * 16, a[v]);
  }
}

template <typename scalar_t>
bool attend_avx512(const float* qf, const scalar_t* kh, const scalar_t* vh, const int64_t* table, int64_t n,
                   int64_t block_size, int64_t cache_blocks, int64_t group, int64_t d, float* scores, float* acc) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return false;
  } else {
    switch (d) {
      case 32:
        attend_rows<scalar_t, 2>(qf, kh, vh, table, n, block_size, cache_blocks, group, scores, acc);
        return true;
      case 64:
        attend_rows<scalar_t, 4>(qf, kh, vh, table, n, block_size, cache_blocks, group, scores, acc);
        return true;
      case 128:
        attend_rows<scalar_t, 8>(qf, kh, vh, table, n, block_size, cache_blocks, group, scores, acc);
        return true;
      default:
        return false;
    }
  }
}
#else
template <typename scalar_t>
bool attend_avx512(const float*, const scalar_t*, const scalar_t*, const int64_t*, int64_t, int64_t, int64_t, int64_t,
                   int64_t, float*, float*) {
  return false;  // built without AVX-512: the portable loops run instead
}
#endif

}  // namespace

namespace genie_native {

// q: [B, heads, D] with unit stride on D; caches: [kv_heads, slots, D]; tables: [B, W] block ids;
// lens: [B] tokens to attend to. Returns [B, heads * D]. Each (sequence, KV head) reads its keys and
// values once, straight from their blocks, for the whole group of query heads sharing them.
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& tables, const at::Tensor& lens, int64_t block_size,
                                  double scale) {
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1, "paged_decode_attention: q must be [B, heads, D], D contiguous");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && tables.is_contiguous(),
              "paged_decode_attention: caches and tables must be contiguous");
  TORCH_CHECK(tables.scalar_type() == at::kLong && lens.scalar_type() == at::kLong,
              "paged_decode_attention: tables and lens must be int64");
  const int64_t batch = q.size(0), heads = q.size(1), d = q.size(2);
  const int64_t kv_heads = k_cache.size(0), cache_slots = k_cache.size(1), width = tables.size(1);
  const int64_t group = heads / kv_heads;
  TORCH_CHECK(group * kv_heads == heads && k_cache.size(2) == d, "paged_decode_attention: head shapes differ");
  TORCH_CHECK(lens.numel() == batch && tables.size(0) == batch, "paged_decode_attention: batch sizes differ");
  auto out = at::empty({batch, heads * d}, q.options());
  const int64_t* table = tables.data_ptr<int64_t>();
  const int64_t* len = lens.data_ptr<int64_t>();
  const int64_t cache_blocks = cache_slots / block_size;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode_attention", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kc = k_cache.data_ptr<scalar_t>();
    const scalar_t* vc = v_cache.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const std::vector<int64_t> bounds = balanced_parts(len, batch, kv_heads, 2 * d * group);
    at::parallel_for(0, static_cast<int64_t>(bounds.size()) - 1, 1, [&](int64_t first, int64_t last) {
      std::vector<float> qf(group * d), acc(group * d), row(d), scores;
      for (int64_t item = bounds[first]; item < bounds[last]; ++item) {
        const int64_t b = item / kv_heads, kvh = item % kv_heads, n = len[b];
        TORCH_CHECK(n > 0 && (n + block_size - 1) / block_size <= width, "paged_decode_attention: bad length");
        for (int64_t g = 0; g < group; ++g) {
          const scalar_t* qh = qp + b * q.stride(0) + (kvh * group + g) * q.stride(1);
          for (int64_t i = 0; i < d; ++i) qf[g * d + i] = to_float(qh[i]) * static_cast<float>(scale);
        }
        scores.resize(group * n);
        const int64_t* tb = table + b * width;
        const scalar_t* kh = kc + kvh * cache_slots * d;
        const scalar_t* vh = vc + kvh * cache_slots * d;
        if (!attend_avx512(qf.data(), kh, vh, tb, n, block_size, cache_blocks, group, d, scores.data(), acc.data())) {
          score_keys(qf.data(), kh, tb, n, block_size, cache_blocks, group, d, row.data(), scores.data());
          softmax_rows(scores.data(), group, n);
          weigh_values(scores.data(), vh, tb, n, block_size, group, d, row.data(), acc.data());
        }
        for (int64_t g = 0; g < group; ++g) {
          scalar_t* o = op + b * heads * d + (kvh * group + g) * d;
          for (int64_t i = 0; i < d; ++i) o[i] = round_to<scalar_t>(acc[g * d + i]);
        }
      }
    });
  });
  return out;
}

}  // namespace genie_native

TORCH_LIBRARY_IMPL(genie_engine, CPU, m) { m.impl("paged_decode_attention", &genie_native::paged_decode_attention); }
