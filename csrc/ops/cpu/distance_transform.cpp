// CPU exact distance transform, Semi-MoE signed distance and ring target.
//
// Work split: the column pass sweeps whole rows at a time (down, then up) so
// its inner loop runs along contiguous memory and vectorises; threads take
// (image, column block) pairs. The row pass gives each thread whole rows
// (image, row) and runs the shared per-run envelope of common/edt_line.h.
// The column distances are kept in the caller's float32 output buffer (same
// size as int32), so no extra full-size buffer is needed for the EDT and SDF.
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
// or far_of<T>() when the column has none; row (b, y) of g starts at
// g + (b * H + y) * stride. Each step is (same class as the neighbour ?
// g(neighbour) + 1 : 1), written as ((g & same) + 1) so that it vectorises.
template <class T>
void column_pass(const uint8_t* mask, T* g, int64_t stride, int64_t B, int64_t H, int64_t W,
                 int threads) {
  constexpr T far = far_of<T>();
  const int64_t nblk = (W + kColBlock - 1) / kColBlock;
  parallel_each(B * nblk, H * kColBlock, threads, [&](int64_t t) {
    const int64_t b = t / nblk, blk = t % nblk;
    const int64_t x0 = blk * kColBlock, x1 = std::min(W, x0 + kColBlock);
    const uint8_t* m = mask + b * H * W;
    T* gi = g + b * H * stride;
    for (int64_t x = x0; x < x1; ++x) gi[x] = far;
    for (int64_t y = 1; y < H; ++y) {
      const uint8_t* mc = m + y * W;
      const uint8_t* mp = mc - W;
      T* gc = gi + y * stride;
      const T* gp = gc - stride;
      for (int64_t x = x0; x < x1; ++x) {
        const T same = T(0) - T((mc[x] != 0) == (mp[x] != 0));
        gc[x] = T((std::min<T>(gp[x], far - 1) & same) + 1);
      }
    }
    for (int64_t y = H - 2; y >= 0; --y) {
      const uint8_t* mc = m + y * W;
      const uint8_t* mn = mc + W;
      T* gc = gi + y * stride;
      const T* gn = gc + stride;
      for (int64_t x = x0; x < x1; ++x) {
        const T same = T(0) - T((mc[x] != 0) == (mn[x] != 0));
        gc[x] = std::min<T>(gc[x], T((std::min<T>(gn[x], far - 1) & same) + 1));
      }
    }
  });
}

// Both passes. The column distances live in `in_place` (a float32 buffer of
// B*H*W values, the caller's output: row r's distances in the first bytes of
// its own row, so writing row r's output after loading them is safe) or,
// when it is null, in a buffer of their own. row_fn(r, s) then runs for every
// row r = b * H + y with that row's distances in s.g() (int32, kFar = none).
template <class RowFn>
void two_pass(const uint8_t* mask, float* in_place, int64_t B, int64_t H, int64_t W,
              int threads, RowFn row_fn) {
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
    column_pass(mask, g, stride, B, H, W, threads);
    std::vector<std::unique_ptr<RowEnvelope>> scratch(std::max(threads, 1));
    parallel_for(B * H, grain_for(W), threads, [&](int64_t r0, int64_t r1, int w) {
      if (!scratch[w]) scratch[w] = std::make_unique<RowEnvelope>(W);
      RowEnvelope& s = *scratch[w];
      int32_t* gr = s.g();
      for (int64_t r = r0; r < r1; ++r) {
        const T* src = g + r * stride;
        for (int64_t x = 0; x < W; ++x) gr[x] = src[x] == far ? kFar : int32_t(src[x]);
        row_fn(r, s);
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

// The row pass writes float(d²) (+inf for "none") and each run's square
// roots are then taken together while they are in L1: sqrtf(float(d²)) per
// pixel, but vectorised.
inline float squared_float(int64_t d2) {
  return d2 == kNoneD2 ? std::numeric_limits<float>::infinity() : float(d2);
}

}  // namespace

void distance_transform(const uint8_t* mask, float* out, int64_t B, int64_t H, int64_t W,
                        int threads) {
  if (B * H * W == 0) return;
  two_pass(mask, out, B, H, W, threads, [&](int64_t r, RowEnvelope& s) {
    float* o = out + r * W;
    for_each_run(mask + r * W, W, [&](int64_t a, int64_t e, bool fg) {
      if (fg) {
        s.run(a, e, a > 0, e + 1 < W, [&](int64_t x, int64_t d2) { o[x] = squared_float(d2); });
        for (int64_t x = a; x <= e; ++x) o[x] = __builtin_sqrtf(o[x]);
      } else {
        std::fill(o + a, o + e + 1, 0.0f);
      }
    });
  });
}

namespace {

// Largest distance of a row from its largest d² (kNoneD2, "no pixel of the
// other class", ranks above all and is infinite).
inline float max_distance(int64_t max_d2) {
  return max_d2 == std::numeric_limits<int64_t>::max() ? std::numeric_limits<float>::infinity()
                                                       : __builtin_sqrtf(float(max_d2));
}

// signed_distance with the ring as RingT (uint8 or int64; written when kRing)
// and the int64 segmentation mask (when kMask) written by the same pass.
template <class RingT, bool kRing, bool kMask>
void signed_distance_impl(const uint8_t* mask, float* sdf, RingT* ring, int64_t* mask_out,
                          int64_t B, int64_t H, int64_t W, int normalize, bool zero_boundary,
                          int64_t ring_r2, int threads) {
  if (B * H * W == 0) return;
  // Row maxima of the inside and outside distances, reduced per image below.
  std::vector<float> row_max_in(B * H, 0.0f), row_max_out(B * H, 0.0f);
  constexpr int64_t kNoneRank = std::numeric_limits<int64_t>::max();
  two_pass(mask, sdf, B, H, W, threads, [&](int64_t r, RowEnvelope& s) {
    const int64_t off = r * W;
    float* o = sdf + off;
    RingT* rg = kRing ? ring + off : nullptr;
    int64_t* mo = kMask ? mask_out + off : nullptr;
    int64_t max_in2 = 0, max_out2 = 0;
    for_each_run(mask + off, W, [&](int64_t a, int64_t e, bool fg) {
      const bool left = a > 0, right = e + 1 < W;
      if (fg) {
        s.run(a, e, left, right, [&](int64_t x, int64_t d2) {
          max_in2 = std::max(max_in2, d2 == kNoneD2 ? kNoneRank : d2);
          o[x] = squared_float(d2);
        });
        // d² = 1 is a boundary pixel: 0 when zero_boundary.
        const float one = zero_boundary ? 1.0f : -1.0f;
        for (int64_t x = a; x <= e; ++x) o[x] = o[x] == one ? 0.0f : __builtin_sqrtf(o[x]);
        if (kRing) std::fill(rg + a, rg + e + 1, RingT(0));
      } else {
        s.run(a, e, left, right, [&](int64_t x, int64_t d2) {
          max_out2 = std::max(max_out2, d2 == kNoneD2 ? kNoneRank : d2);
          o[x] = squared_float(d2);
          if (kRing) rg[x] = (d2 != kNoneD2 && d2 <= ring_r2) ? 1 : 0;
        });
        for (int64_t x = a; x <= e; ++x) o[x] = -__builtin_sqrtf(o[x]);
      }
      if (kMask) std::fill(mo + a, mo + e + 1, int64_t(fg));
    });
    row_max_in[r] = max_distance(max_in2);
    row_max_out[r] = max_distance(max_out2);
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
      for (int64_t x = 0; x < W; ++x) o[x] = o[x] > 0.0f ? o[x] / mi : o[x] / mo;
    }
  };
  parallel_each(B * H, W, threads, normalize_row);
}

// Binary uint8 copy (label != 0) of a label map of type T.
template <class T>
void binarize(const T* labels, uint8_t* out, int64_t n, int threads) {
  parallel_each(n, 1, threads, [&](int64_t i) { out[i] = labels[i] != 0; });
}

}  // namespace

void signed_distance(const uint8_t* mask, float* sdf, uint8_t* ring, int64_t B, int64_t H,
                     int64_t W, int normalize, bool zero_boundary, int64_t ring_r2, int threads) {
  if (ring) {
    signed_distance_impl<uint8_t, true, false>(mask, sdf, ring, nullptr, B, H, W, normalize,
                                               zero_boundary, ring_r2, threads);
  } else {
    signed_distance_impl<uint8_t, false, false>(mask, sdf, ring, nullptr, B, H, W, normalize,
                                                zero_boundary, ring_r2, threads);
  }
}

void targets(const void* labels, int dtype_code, int64_t* mask_out, float* sdf,
             int64_t* ring_out, int64_t B, int64_t H, int64_t W, int normalize,
             bool zero_boundary, int64_t ring_r2, int threads) {
  const int64_t n = B * H * W;
  if (n == 0) return;
  const uint8_t* m = nullptr;
  std::vector<uint8_t> bin;
  if (dtype_code == 0) {
    m = static_cast<const uint8_t*>(labels);  // uint8 / bool: tested != 0 as they are
  } else {
    bin.resize(n);
    switch (dtype_code) {
      case 1: binarize(static_cast<const int8_t*>(labels), bin.data(), n, threads); break;
      case 2: binarize(static_cast<const int16_t*>(labels), bin.data(), n, threads); break;
      case 3: binarize(static_cast<const int32_t*>(labels), bin.data(), n, threads); break;
      case 4: binarize(static_cast<const int64_t*>(labels), bin.data(), n, threads); break;
      default:
        throw std::invalid_argument(
            "targets: dtype code must be 0..4 (uint8, int8, int16, int32, int64)");
    }
    m = bin.data();
  }
  signed_distance_impl<int64_t, true, true>(m, sdf, ring_out, mask_out, B, H, W, normalize,
                                            zero_boundary, ring_r2, threads);
}

void ring(const uint8_t* mask, uint8_t* out, int64_t B, int64_t H, int64_t W, int64_t ring_r2,
          int threads) {
  if (B * H * W == 0) return;
  two_pass(mask, nullptr, B, H, W, threads, [&](int64_t r, RowEnvelope& s) {
    uint8_t* o = out + r * W;
    for_each_run(mask + r * W, W, [&](int64_t a, int64_t e, bool fg) {
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
