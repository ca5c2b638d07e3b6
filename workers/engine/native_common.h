// Helpers shared by the native kernels (native_*.cpp): work sizes for threading, a vectorizable exp, and
// float <-> bf16 conversions without the branches that stop loops from vectorizing.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace genie_native {


// Elements of work below which a kernel stays on the calling thread: waking the OpenMP team costs more than
// it saves for a decode step's few rows, and a team member descheduled by another process stalls them all.
constexpr int64_t kParallelGrain = 1 << 16;

inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, work_per_item));
}

// Splits the items (sequence b, KV head), item = b * kv_heads + head, into runs of about equal work for the
// threads, work being keys x work_per_key, so that a batch of mixed contexts does not wait on the thread that
// drew the long ones. Returns the runs' bounds [0, ..., batch * kv_heads]; one run where the work is too small
// to wake the team for. Which thread runs an item never changes its arithmetic.
inline std::vector<int64_t> balanced_parts(const int64_t* len, int64_t batch, int64_t kv_heads,
                                           int64_t work_per_key) {
  int64_t total = 0;
  for (int64_t b = 0; b < batch; ++b) total += std::max<int64_t>(len[b], 0) * kv_heads;
  const int64_t most = std::min<int64_t>(at::get_num_threads(), batch * kv_heads);
  const int64_t parts = std::max<int64_t>(1, std::min(most, total * work_per_key / kParallelGrain));
  std::vector<int64_t> bounds{0};
  int64_t done = 0;
  for (int64_t item = 0; item < batch * kv_heads; ++item) {
    done += std::max<int64_t>(len[item / kv_heads], 0);
    const int64_t part = static_cast<int64_t>(bounds.size());  // the part this item ends, if it reaches its share
    if (part < parts && done * parts >= total * part) bounds.push_back(item + 1);
  }
  while (static_cast<int64_t>(bounds.size()) <= parts) bounds.push_back(batch * kv_heads);
  return bounds;
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

}  // namespace genie_native
