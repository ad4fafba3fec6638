// CPU exact distance transform, Semi-MoE signed distance and ring target.
//
// Work split: the column pass sweeps whole rows at a time (down, then up) so
// its inner loop runs along contiguous memory and vectorises; threads take
// (image, column block) pairs. The row pass gives each thread whole rows
// (image, row) and runs the row envelope of ops/cpu/row_envelope.h on each
// run of same-class pixels (the same mathematics as the GPU's per-line code
// in common/edt_line.h, arranged for a CPU's branch predictor), then writes
// each run's outputs (roots, maxima, ring, mask) in loops that vectorise.
// The column distances (uint16 below 65535 rows, else int32) are kept in the
// caller's float32 output buffer, and labels of wider dtypes are binarised
// into the int64 mask output, so no full-size scratch buffer is allocated.
// Threads come from ops/cpu/pool.h (dynamic chunks, sleeping waits).
#include "ops/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "ops/common/edt_transposed.h"
#include "ops/cpu/pool.h"
#include "ops/cpu/row_envelope.h"

namespace semimoe {
namespace cpu {
namespace SEMIMOE_CPU_ISA {
namespace {

constexpr int64_t kColBlock = 128;  // columns per column-pass task

// Column distances are uint16 when every distance fits below its "none"
// value (H < 65535), else int32: half the memory traffic for the usual sizes.
template <class T>
constexpr T far_of() {
  return std::is_same<T, uint16_t>::value ? T(0xffff) : T(kFar);
}

// g(y, x): distance along the column to the nearest pixel of the other class,
// or far_of<T>() when the column has none; row r = b * H + y of the mask and
// of g start at mask + r * mstride and g + r * stride. Each step is
// (same class as the neighbour ? g(neighbour) + 1 : 1), written as
// ((g & same) + 1) so that it vectorises.
template <class T>
void column_pass(const uint8_t* mask, int64_t mstride, T* g, int64_t stride, int64_t B, int64_t H,
                 int64_t W, int threads) {
  constexpr T far = far_of<T>();
  const int64_t nblk = (W + kColBlock - 1) / kColBlock;
  parallel_each(B * nblk, H * kColBlock, threads, [&](int64_t t) {
    const int64_t b = t / nblk, blk = t % nblk;
    const int64_t x0 = blk * kColBlock, x1 = std::min(W, x0 + kColBlock);
    const uint8_t* m = mask + b * H * mstride;
    T* gi = g + b * H * stride;
    for (int64_t x = x0; x < x1; ++x) gi[x] = far;
    for (int64_t y = 1; y < H; ++y) {
      const uint8_t* mc = m + y * mstride;
      const uint8_t* mp = mc - mstride;
      T* gc = gi + y * stride;
      const T* gp = gc - stride;
      for (int64_t x = x0; x < x1; ++x) {
        const T same = T(0) - T((mc[x] != 0) == (mp[x] != 0));
        gc[x] = T((std::min<T>(gp[x], far - 1) & same) + 1);
      }
    }
    for (int64_t y = H - 2; y >= 0; --y) {
      const uint8_t* mc = m + y * mstride;
      const uint8_t* mn = mc + mstride;
      T* gc = gi + y * stride;
      const T* gn = gc + stride;
      for (int64_t x = x0; x < x1; ++x) {
        const T same = T(0) - T((mc[x] != 0) == (mn[x] != 0));
        gc[x] = std::min<T>(gc[x], T((std::min<T>(gn[x], far - 1) & same) + 1));
      }
    }
  });
}

// Both passes. Row r = b * H + y of the mask starts at mask + r * mstride.
// The column distances live in `in_place` (a float32 buffer of B*H*W values,
// the caller's output: row r's distances in the first bytes of its own row)
// or, when it is null, in a buffer of their own. row_fn(r, s) then runs for
// every row r with copies of that row's mask in s.mask() and distances in
// s.g() (int32, kFar = none), so it may overwrite the row's part of any
// buffer that held them.
template <class RowFn>
void two_pass(const uint8_t* mask, int64_t mstride, float* in_place, int64_t B, int64_t H,
              int64_t W, int threads, RowFn row_fn) {
  auto run = [&](auto type_tag) {
    using T = decltype(type_tag);
    constexpr T far = far_of<T>();
    std::vector<T> own;
    T* g = reinterpret_cast<T*>(in_place);
    int64_t stride = W * int64_t(sizeof(float) / sizeof(T));
    if (!in_place) {
      own.resize(B * H * W);
      g = own.data();
      stride = W;
    }
    column_pass(mask, mstride, g, stride, B, H, W, threads);
    std::vector<std::unique_ptr<RowEnvelope>> scratch(std::max(threads, 1));
    parallel_for(B * H, grain_for(W), threads, [&](int64_t r0, int64_t r1, int w) {
      if (!scratch[w]) scratch[w] = std::make_unique<RowEnvelope>(W);
      RowEnvelope& s = *scratch[w];
      int32_t* gr = s.g();
      for (int64_t r = r0; r < r1; ++r) {
        const T* src = g + r * stride;
        for (int64_t x = 0; x < W; ++x) gr[x] = src[x] == far ? kFar : int32_t(src[x]);
        std::memcpy(s.mask(), mask + r * mstride, size_t(W));
        s.begin_row(r > r0 && r % H != 0);
        row_fn(r, s);
        s.end_row();
      }
    });
  };
  if (H < 0xffff) {
    run(uint16_t{});
  } else {
    run(int32_t{});
  }
}

// fn(a, e, fg) for every maximal run [a, e] of same-class pixels of a row.
template <class Fn>
void for_each_run(const uint8_t* m, int64_t W, Fn fn) {
  for (int64_t a = 0; a < W;) {
    const bool fg = m[a] != 0;
    const int64_t e = run_end(m, a, W, fg) - 1;
    fn(a, e, fg);
    a = e + 1;
  }
}

}  // namespace

void distance_transform(const uint8_t* mask, float* out, int64_t B, int64_t H, int64_t W,
                        int threads) {
  if (B * H * W == 0) return;
  two_pass(mask, W, out, B, H, W, threads, [&](int64_t r, RowEnvelope& s) {
    float* o = out + r * W;
    for_each_run(s.mask(), W, [&](int64_t a, int64_t e, bool fg) {
      if (fg) {
        s.squared(a, e, a > 0, e + 1 < W, true, o);
        for (int64_t x = a; x <= e; ++x) o[x] = __builtin_sqrtf(o[x]);
      } else {
        std::fill(o + a, o + e + 1, 0.0f);
      }
    });
  });
}

namespace {

// Largest float(d²) of o[a..e] (all >= 0, +inf allowed): read as int32
// bits, which order as the floats do, so that the loop vectorises (a float
// max does not without -ffast-math).
typedef int32_t __attribute__((may_alias)) float_bits;
inline float max_squared(const float* o, int64_t a, int64_t e) {
  const float_bits* bits = reinterpret_cast<const float_bits*>(o);
  int32_t m = 0;
  for (int64_t x = a; x <= e; ++x) m = std::max(m, int32_t(bits[x]));
  float v;
  std::memcpy(&v, &m, sizeof v);
  return v;
}

// signed_distance with the ring as RingT (uint8 or int64; written when kRing)
// and the int64 segmentation mask (when kMask) written by the same pass.
// Row r of the mask starts at mask + r * mstride; it may lie inside mask_out
// (two_pass hands each row a copy before the row is written).
template <class RingT, bool kRing, bool kMask>
void signed_distance_impl(const uint8_t* mask, int64_t mstride, float* sdf, RingT* ring,
                          int64_t* mask_out, int64_t B, int64_t H, int64_t W, int normalize,
                          bool zero_boundary, int64_t ring_r2, int threads) {
  if (B * H * W == 0) return;
  // Row maxima of the inside and outside distances, reduced per image below.
  std::vector<float> row_max_in(B * H, 0.0f), row_max_out(B * H, 0.0f);
  // d² <= ring_r2 is decided on float(d²) after the row pass when that is
  // exact: both are integers and below 2^24 float is exact, while a d² at or
  // above 2^24 stays >= 2^24 > ring_r2 when rounded. Otherwise in the pass.
  const bool ring_in_pass = ring_r2 >= (int64_t(1) << 24);
  const float ring_f = float(ring_r2);
  // d² = 1 is a boundary pixel: 0 when zero_boundary (-1 never matches).
  const float boundary = zero_boundary ? 1.0f : -1.0f;
  two_pass(mask, mstride, sdf, B, H, W, threads, [&](int64_t r, RowEnvelope& s) {
    const int64_t off = r * W;
    float* o = sdf + off;
    RingT* rg = kRing ? ring + off : nullptr;
    int64_t* mo = kMask ? mask_out + off : nullptr;
    float max_in = 0.0f, max_out = 0.0f;  // the largest float(d²)
    for_each_run(s.mask(), W, [&](int64_t a, int64_t e, bool fg) {
      const bool left = a > 0, right = e + 1 < W;
      if (fg) {
        s.squared(a, e, left, right, true, o);
        max_in = std::max(max_in, max_squared(o, a, e));
        for (int64_t x = a; x <= e; ++x) o[x] = o[x] == boundary ? 0.0f : __builtin_sqrtf(o[x]);
        if (kRing) std::fill(rg + a, rg + e + 1, RingT(0));
      } else {
        // Outside distances are mostly too large for the windowed search
        // to pay: the envelope directly (the next row's bounds are only
        // read for foreground pixels under foreground pixels).
        s.run(a, e, left, right, [&](int64_t x, int64_t d2) {
          o[x] = squared_float(d2);
          if (kRing && ring_in_pass) rg[x] = (d2 != kNoneD2 && d2 <= ring_r2) ? 1 : 0;
        });
        max_out = std::max(max_out, max_squared(o, a, e));
        if (kRing && !ring_in_pass) {
          for (int64_t x = a; x <= e; ++x) rg[x] = o[x] <= ring_f ? 1 : 0;
        }
        for (int64_t x = a; x <= e; ++x) o[x] = -__builtin_sqrtf(o[x]);
      }
      if (kMask) std::fill(mo + a, mo + e + 1, int64_t(fg));
    });
    // The largest distance: sqrtf of the largest float(d²) (+inf: none).
    row_max_in[r] = __builtin_sqrtf(max_in);
    row_max_out[r] = __builtin_sqrtf(max_out);
  });
  if (normalize == 0) return;
  std::vector<float> max_in(B, 0.0f), max_out(B, 0.0f);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t y = 0; y < H; ++y) {
      max_in[b] = std::max(max_in[b], row_max_in[b * H + y]);
      max_out[b] = std::max(max_out[b], row_max_out[b * H + y]);
    }
  }
  auto normalize_row = [&](int64_t r) {
    const int64_t b = r / H;
    float* o = sdf + r * W;
    // An image of one class has infinite distances: +1 everywhere (all
    // foreground) or -1 everywhere (all background).
    // Same arithmetic as normalize_sdf (shared with the GPU), with the
    // single-class test hoisted out of the loop so that the loop vectorises.
    const float inf = std::numeric_limits<float>::infinity();
    const float mi = max_in[b] == inf ? 0.0f : max_in[b];
    const float mo = max_out[b] == inf ? 0.0f : max_out[b];
    if (mi == 0.0f || mo == 0.0f) {
      for (int64_t x = 0; x < W; ++x) o[x] = normalize_sdf(o[x], mi, mo);
    } else {
      for (int64_t x = 0; x < W; ++x) o[x] = o[x] / (o[x] > 0.0f ? mi : mo);
    }
  };
  parallel_each(B * H, W, threads, normalize_row);
}

// Binary uint8 copy (label != 0) of a label map of type T: row r in the
// first W bytes of out + r * ostride.
template <class T>
void binarize(const T* labels, uint8_t* out, int64_t ostride, int64_t rows, int64_t W,
              int threads) {
  parallel_each(rows, W, threads, [&](int64_t r) {
    const T* l = labels + r * W;
    uint8_t* o = out + r * ostride;
    for (int64_t x = 0; x < W; ++x) o[x] = l[x] != 0;
  });
}

}  // namespace

void signed_distance(const uint8_t* mask, float* sdf, uint8_t* ring, int64_t B, int64_t H,
                     int64_t W, int normalize, bool zero_boundary, int64_t ring_r2, int threads) {
  if (ring) {
    signed_distance_impl<uint8_t, true, false>(mask, W, sdf, ring, nullptr, B, H, W, normalize,
                                               zero_boundary, ring_r2, threads);
  } else {
    signed_distance_impl<uint8_t, false, false>(mask, W, sdf, ring, nullptr, B, H, W, normalize,
                                                zero_boundary, ring_r2, threads);
  }
}

void targets(const void* labels, int dtype_code, int64_t* mask_out, float* sdf,
             int64_t* ring_out, int64_t B, int64_t H, int64_t W, int normalize,
             bool zero_boundary, int64_t ring_r2, int threads) {
  if (B * H * W == 0) return;
  const uint8_t* m = static_cast<const uint8_t*>(labels);  // uint8 / bool: tested != 0 as they are
  int64_t mstride = W;
  if (dtype_code != 0) {
    // Other dtypes are binarised into the first W bytes of each row of
    // mask_out (8 W bytes), which that row's pass writes only after copying.
    uint8_t* bin = reinterpret_cast<uint8_t*>(mask_out);
    mstride = W * int64_t(sizeof(int64_t));
    const int64_t rows = B * H;
    switch (dtype_code) {
      case 1: binarize(static_cast<const int8_t*>(labels), bin, mstride, rows, W, threads); break;
      case 2: binarize(static_cast<const int16_t*>(labels), bin, mstride, rows, W, threads); break;
      case 3: binarize(static_cast<const int32_t*>(labels), bin, mstride, rows, W, threads); break;
      case 4: binarize(static_cast<const int64_t*>(labels), bin, mstride, rows, W, threads); break;
      default:
        throw std::invalid_argument(
            "targets: dtype code must be 0..4 (uint8, int8, int16, int32, int64)");
    }
    m = bin;
  }
  signed_distance_impl<int64_t, true, true>(m, mstride, sdf, ring_out, mask_out, B, H, W,
                                            normalize, zero_boundary, ring_r2, threads);
}

void ring(const uint8_t* mask, uint8_t* out, int64_t B, int64_t H, int64_t W, int64_t ring_r2,
          int threads) {
  if (B * H * W == 0) return;
  two_pass(mask, W, nullptr, B, H, W, threads, [&](int64_t r, RowEnvelope& s) {
    uint8_t* o = out + r * W;
    for_each_run(s.mask(), W, [&](int64_t a, int64_t e, bool fg) {
      if (fg) {
        std::fill(o + a, o + e + 1, uint8_t(0));
      } else {
        s.run(a, e, a > 0, e + 1 < W,
              [&](int64_t x, int64_t d2) { o[x] = (d2 != kNoneD2 && d2 <= ring_r2); });
      }
    });
  });
}

}  // namespace SEMIMOE_CPU_ISA
}  // namespace cpu
}  // namespace semimoe
