// The per-thread bodies of the CUDA distance-transform kernels, as
// __host__ __device__ functions: the CUDA kernels call them once per thread,
// and semimoe._C's host driver (_edt_gpu_layout, used by the tests) calls
// them in a loop, so the GPU's exact algorithm (transposed passes, packed
// interleaved hull, in-place row distances) is tested on machines without a
// GPU. See csrc/ops/cuda/distance_transform.cu for the launch layout.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "ops/common/edt_line.h"

namespace semimoe {

// Which outputs the distance-transform passes produce.
enum class EdtKind : int { kDistance = 0, kSigned = 1, kRing = 2 };

constexpr int kVBits = 21;  // bits of the packed line position (positions <= 2^20 + 1)

SEMIMOE_HD float bits_to_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}

SEMIMOE_HD int32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
#endif
}

SEMIMOE_HD float inf_f() { return bits_to_float(0x7f800000); }

// Hull line k of one column: (F << kVBits) | v at base[k * stride]; columns
// are interleaved so a warp's threads touch consecutive addresses.
struct PackedHull {
  int64_t* base;
  int64_t stride;
  SEMIMOE_HD int32_t v(int k) const {
    return int32_t(base[k * stride] & ((int64_t(1) << kVBits) - 1));
  }
  SEMIMOE_HD int64_t F(int k) const { return base[k * stride] >> kVBits; }
  SEMIMOE_HD void set(int k, int32_t v_, int64_t F_) const {
    base[k * stride] = (F_ << kVBits) | int64_t(v_);
  }
};

SEMIMOE_HD float sqrt_d2(int64_t d2) {
  return d2 == kNoneD2 ? inf_f() : ::sqrtf(float(d2));
}

// Pass 1 for one row: distance along the row to the other class (kFar if
// none), stored as int bits in the float32 row gr.
SEMIMOE_HD void row_scan(const uint8_t* m, float* gr, int64_t W) {
  bool prev_c = m[0] != 0;
  int32_t prev = kFar;
  gr[0] = bits_to_float(prev);
  for (int64_t x = 1; x < W; ++x) {
    const bool c = m[x] != 0;
    prev = scan_step(c == prev_c, prev);
    gr[x] = bits_to_float(prev);
    prev_c = c;
  }
  for (int64_t x = W - 2; x >= 0; --x) {
    const bool c = m[x] != 0;
    prev = min_(float_to_bits(gr[x]), scan_step(c == prev_c, prev));
    gr[x] = bits_to_float(prev);
    prev_c = c;
  }
}

// Pass 2 for column c = b * W + x: the exact envelope down the column.
// `g` may alias `out` (the envelope reads a run's g before writing its output).
template <EdtKind kKind>
SEMIMOE_HD void column_envelope(const uint8_t* mask, const float* g, float* out, uint8_t* ring,
                                int64_t* hull_ws, float* col_max, int64_t B, int64_t H,
                                int64_t W, bool zero_boundary, int64_t ring_r2, int64_t c) {
  const int64_t b = c / W, x = c % W;
  const int64_t base = b * H * W + x;  // pixel (b, 0, x); row y adds y * W
  const PackedHull hull{hull_ws + c, B * W};
  float mx_in = 0.0f, mx_out = 0.0f;
  edt_line(
      [&](int64_t y) { return mask[base + y * W] != 0; },
      [&](int64_t y) { return float_to_bits(g[base + y * W]); }, H,
      /*want_fg=*/kKind != EdtKind::kRing, /*want_bg=*/kKind != EdtKind::kDistance, hull,
      [&](int64_t y, int64_t d2, bool fg) {
        const int64_t i = base + y * W;
        if (kKind == EdtKind::kDistance) {
          out[i] = sqrt_d2(d2);
        } else if (kKind == EdtKind::kRing) {
          ring[i] = (d2 != kNoneD2 && d2 <= ring_r2) ? 1 : 0;
        } else {
          const float d = sqrt_d2(d2);
          if (fg) {
            mx_in = max_(mx_in, d);
            out[i] = (zero_boundary && d2 == 1) ? 0.0f : d;
            if (ring) ring[i] = 0;
          } else {
            mx_out = max_(mx_out, d);
            out[i] = -d;
            if (ring) ring[i] = (d2 != kNoneD2 && d2 <= ring_r2) ? 1 : 0;
          }
        }
      },
      [&](int64_t a, int64_t e, bool) {
        for (int64_t y = a; y <= e; ++y) {
          if (kKind == EdtKind::kDistance) out[base + y * W] = 0.0f;
          if (kKind == EdtKind::kRing) ring[base + y * W] = 0;
        }
      });
  if (kKind == EdtKind::kSigned) {
    col_max[c] = mx_in;
    col_max[B * W + c] = mx_out;
  }
}

// Pass 4 for one pixel: per-image normalisation; single-class images
// (an infinite or zero maximum) become +-1.
SEMIMOE_HD float normalize_sdf(float v, float max_in, float max_out) {
  const float mi = max_in == inf_f() ? 0.0f : max_in;
  const float mo = max_out == inf_f() ? 0.0f : max_out;
  if (mi == 0.0f || mo == 0.0f) return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f);
  return v > 0.0f ? v / mi : v / mo;
}

}  // namespace semimoe
