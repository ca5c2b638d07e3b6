// Fused CPU kernels for the decode hot path, registered as torch.ops.genie_engine.*.
// Built on first use by native.py (g++, cached by source hash); the engine runs without them.
//
// Decode on a CPU spends its non-matmul time in per-op dispatch: RMSNorm is ~8 ATen ops, RoPE 4, the
// cache write 2, SiLU-and-multiply 3, and attention over the paged cache ~10 (gather, matmuls, softmax,
// casts). These kernels do each of those groups in one call and read the paged cache in place.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

// Elements of work below which a kernel stays on the calling thread: waking the OpenMP team costs more than
// it saves for a decode step's few rows, and a team member descheduled by another process stalls them all.
constexpr int64_t kParallelGrain = 1 << 16;

inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, work_per_item));
}

// exp(x) from arithmetic and bit operations only, so that loops calling it vectorize (a libm call does not
// without -ffast-math): 2^(x log2 e) = 2^i * 2^f, with 2^f on [0, 1) by a degree-6 polynomial (Cephes exp2f
// coefficients, relative error ~2e-7). Inputs are clamped to where the result is a normal float.
inline float fast_exp(float x) {
  const float t = std::min(std::max(x, -87.0f), 88.0f) * 1.4426950408889634f;
  const int32_t truncated = static_cast<int32_t>(t);
  const int32_t whole = truncated - (static_cast<float>(truncated) > t ? 1 : 0);  // floor, vectorizable
  const float f = t - static_cast<float>(whole);
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  uint32_t bits;
  std::memcpy(&bits, &p, sizeof(bits));
  bits += static_cast<uint32_t>(whole) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// float -> scalar_t with round-to-nearest-even. c10::BFloat16's constructor checks for NaN with a branch that
// stops loops from vectorizing; this one only moves bits (a NaN stays a NaN unless its payload is all ones).
template <typename scalar_t>
inline scalar_t round_to(float v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return c10::BFloat16(static_cast<uint16_t>(bits >> 16), c10::BFloat16::from_bits());
  } else {
    return static_cast<scalar_t>(v);
  }
}

template <typename scalar_t>
inline float to_float(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const uint32_t bits = static_cast<uint32_t>(v.x) << 16;  // bf16 is the top half of an fp32
    float out;
    std::memcpy(&out, &bits, sizeof(out));
    return out;
  } else {
    return static_cast<float>(v);
  }
}

// x: [rows, D] contiguous, w: [D]. y = w * x / sqrt(mean(x^2) + eps), computed in fp32, rounded once.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "rms_norm: x must be a contiguous [rows, D] tensor");
  TORCH_CHECK(w.is_contiguous() && w.numel() == x.size(1) && w.scalar_type() == x.scalar_type(),
              "rms_norm: w must be a contiguous [D] tensor of x's dtype");
  auto out = at::empty(x.sizes(), x.options());
  const int64_t rows = x.size(0), d = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = xp + r * d;
        scalar_t* yr = op + r * d;
        float ss = 0.f;
        _Pragma("omp simd reduction(+ : ss)")
        for (int64_t i = 0; i < d; ++i) {
          const float v = static_cast<float>(xr[i]);
          ss += v * v;
        }
        const float inv = 1.f / std::sqrt(ss / static_cast<float>(d) + static_cast<float>(eps));
        _Pragma("omp simd")
        for (int64_t i = 0; i < d; ++i) {
          yr[i] = round_to<scalar_t>(static_cast<float>(wp[i]) * (static_cast<float>(xr[i]) * inv));
        }
      }
    });
  });
  return out;
}

template <typename scalar_t>
void silu_mul_row(const scalar_t* gate, scalar_t* y, int64_t width) {
  const scalar_t* up = gate + width;
  for (int64_t i = 0; i < width; ++i) {
    const float a = to_float(gate[i]);
    y[i] = round_to<scalar_t>(a / (1.f + fast_exp(-a)) * to_float(up[i]));
  }
}

// gate_up: [rows, 2 * I] contiguous (gate | up) -> silu(gate) * up: [rows, I], in fp32, rounded once.
at::Tensor silu_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous() && gate_up.size(1) % 2 == 0,
              "silu_mul: gate_up must be a contiguous [rows, 2 * I] tensor");
  const int64_t rows = gate_up.size(0), width = gate_up.size(1) / 2;
  auto out = at::empty({rows, width}, gate_up.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gate_up.scalar_type(), "silu_mul", [&] {
    const scalar_t* in = gate_up.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(width), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        silu_mul_row(in + r * 2 * width, op + r * width, width);
      }
    });
  });
  return out;
}

// qkv: [T, (heads + 2 * kv_heads) * D] contiguous, laid out q heads | k heads | v heads.
// Rotates q and k in place (rotate-half RoPE with fp32 tables cos/sin [positions, D]) when cos is given,
// then copies k and v into the head-major caches [kv_heads, slots, D] at slots[t].
void rope_kv_write(at::Tensor qkv, const std::optional<at::Tensor>& cos, const std::optional<at::Tensor>& sin,
                   const at::Tensor& positions, const at::Tensor& slots, at::Tensor k_cache, at::Tensor v_cache,
                   int64_t heads, int64_t kv_heads) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous(), "rope_kv_write: qkv must be contiguous [T, width]");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "rope_kv_write: caches must be contiguous");
  TORCH_CHECK(k_cache.scalar_type() == qkv.scalar_type(), "rope_kv_write: cache dtype differs from qkv");
  const int64_t tokens = qkv.size(0), d = k_cache.size(2), cache_slots = k_cache.size(1);
  TORCH_CHECK(qkv.size(1) == (heads + 2 * kv_heads) * d, "rope_kv_write: qkv width does not match the heads");
  const bool rotary = cos.has_value() && cos->defined();
  const float* cp = rotary ? cos->data_ptr<float>() : nullptr;
  const float* sp = rotary ? sin->data_ptr<float>() : nullptr;
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t half = d / 2, width = qkv.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "rope_kv_write", [&] {
    scalar_t* base = qkv.data_ptr<scalar_t>();
    scalar_t* kc = k_cache.data_ptr<scalar_t>();
    scalar_t* vc = v_cache.data_ptr<scalar_t>();
    at::parallel_for(0, tokens, grain_for(width), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        scalar_t* row = base + t * width;
        if (rotary) {
          const float* c = cp + pos[t] * d;
          const float* s = sp + pos[t] * d;
          for (int64_t h = 0; h < heads + kv_heads; ++h) {
            scalar_t* x = row + h * d;
            _Pragma("omp simd")
            for (int64_t i = 0; i < half; ++i) {
              const float a = to_float(x[i]), b = to_float(x[i + half]);
              x[i] = round_to<scalar_t>(a * c[i] - b * s[i]);
              x[i + half] = round_to<scalar_t>(b * c[i + half] + a * s[i + half]);
            }
          }
        }
        TORCH_CHECK(slot[t] >= 0 && slot[t] < cache_slots, "rope_kv_write: slot out of range");
        for (int64_t h = 0; h < kv_heads; ++h) {
          std::copy_n(row + (heads + h) * d, d, kc + (h * cache_slots + slot[t]) * d);
          std::copy_n(row + (heads + kv_heads + h) * d, d, vc + (h * cache_slots + slot[t]) * d);
        }
      }
    });
  });
}

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
template <typename scalar_t, int V>
void attend_rows(const float* qf, const scalar_t* kh, const scalar_t* vh, const int64_t* table, int64_t n,
                 int64_t block_size, int64_t cache_blocks, int64_t group, float* scores, float* acc) {
  constexpr int64_t D = 16 * V;
  for (int64_t start = 0; start < n; start += block_size) {
    const int64_t block = table[start / block_size];
    TORCH_CHECK(block >= 0 && block < cache_blocks, "paged_decode_attention: block id out of range");
    const scalar_t* rows = kh + block * block_size * D;
    if (start + block_size < n) prefetch_block(kh + table[start / block_size + 1] * block_size * D, block_size * D);
    prefetch_block(vh + block * block_size * D, block_size * D);
    for (int64_t r = 0, end = std::min(block_size, n - start); r < end; ++r) {
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
    const int64_t max_len = *std::max_element(len, len + batch);
    at::parallel_for(0, batch * kv_heads, grain_for(2 * max_len * d * group), [&](int64_t begin, int64_t end) {
      std::vector<float> qf(group * d), acc(group * d), row(d), scores;
      for (int64_t item = begin; item < end; ++item) {
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

constexpr int64_t kArgmaxChunk = 256;

// logits: [rows, vocab] contiguous -> [rows] int64, the first index of each row's maximum (as torch.argmax).
// ATen's argmax walks a row element by element; a vectorized max first, then a search for it, is ~10x faster.
at::Tensor argmax_rows(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous(), "argmax_rows: logits must be contiguous [rows, vocab]");
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(vocab > 0, "argmax_rows: empty rows");
  auto out = at::empty({rows}, logits.options().dtype(at::kLong));
  int64_t* op = out.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "argmax_rows", [&] {
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(vocab), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = lp + r * vocab;
        // chunk maxima (vectorized), then the first hit inside the first chunk holding the row maximum
        float top = -std::numeric_limits<float>::infinity();
        int64_t best = 0;
        for (int64_t start = 0; start < vocab; start += kArgmaxChunk) {
          const int64_t n = std::min(kArgmaxChunk, vocab - start);
          float chunk_top = -std::numeric_limits<float>::infinity();
          _Pragma("omp simd reduction(max : chunk_top)")
          for (int64_t i = 0; i < n; ++i) chunk_top = std::max(chunk_top, to_float(row[start + i]));
          if (chunk_top > top) {
            top = chunk_top;
            best = start;
          }
        }
        int64_t at = best;
        while (at < vocab - 1 && !(to_float(row[at]) == top)) ++at;
        op[r] = at;
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(genie_engine, m) {
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.def("argmax_rows(Tensor logits) -> Tensor");
  m.def(
      "rope_kv_write(Tensor(a!) qkv, Tensor? cos, Tensor? sin, Tensor positions, Tensor slots, "
      "Tensor(b!) k_cache, Tensor(c!) v_cache, int heads, int kv_heads) -> ()");
  m.def(
      "paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor tables, Tensor lens, "
      "int block_size, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(genie_engine, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("silu_mul", &silu_mul);
  m.impl("argmax_rows", &argmax_rows);
  m.impl("rope_kv_write", &rope_kv_write);
  m.impl("paged_decode_attention", &paged_decode_attention);
}
