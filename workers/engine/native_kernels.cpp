// Fused CPU kernels for the decode hot path, registered as torch.ops.genie_engine.*: RMSNorm, SiLU-and-multiply,
// RoPE + KV cache write, argmax here; paged decode attention in native_attention.cpp; the batch-1 bf16 linear
// in native_linear.cpp. Built on first use by native.py (g++, cached by source hash); the engine runs
// without them.
//
// Decode on a CPU spends its non-matmul time in per-op dispatch: RMSNorm is ~8 ATen ops, RoPE 4, the
// cache write 2, SiLU-and-multiply 3, and attention over the paged cache ~10 (gather, matmuls, softmax,
// casts). These kernels do each of those groups in one call and read the paged cache in place.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "native_common.h"
#include "native_ops.h"

namespace {

using genie_native::fast_exp;
using genie_native::grain_for;
using genie_native::round_to;
using genie_native::to_float;

}  // namespace

namespace genie_native {

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

}  // namespace genie_native

namespace {

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

// Every op's schema lives here; native_attention.cpp and native_linear.cpp add their implementations.
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
  m.impl("rms_norm", &genie_native::rms_norm);
  m.impl("silu_mul", &genie_native::silu_mul);
  m.impl("argmax_rows", &argmax_rows);
  m.impl("rope_kv_write", &genie_native::rope_kv_write);
}
