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
#include <vector>

#include "ops/common/edt_transposed.h"
#include "ops/cpu/pool.h"

namespace semimoe {
namespace cpu {
namespace SEMIMOE_CPU_ISA {
namespace {

constexpr int64_t kColBlock = 128;  // columns per column-pass task

// g(y, x): distance along the column to the nearest pixel of the other class.
void column_pass(const uint8_t* mask, int32_t* g, int64_t B, int64_t H, int64_t W,
                 int threads) {
  const int64_t nblk = (W + kColBlock - 1) / kColBlock;
  parallel_each(B * nblk, H * kColBlock, threads, [&](int64_t t) {
    const int64_t b = t / nblk, blk = t % nblk;
    const int64_t x0 = blk * kColBlock, x1 = std::min(W, x0 + kColBlock);
    const uint8_t* m = mask + b * H * W;
    int32_t* gi = g + b * H * W;
    for (int64_t x = x0; x < x1; ++x) gi[x] = kFar;
    for (int64_t y = 1; y < H; ++y) {
      const uint8_t* mc = m + y * W;
      const uint8_t* mp = mc - W;
      int32_t* gc = gi + y * W;
      const int32_t* gp = gc - W;
      for (int64_t x = x0; x < x1; ++x) {
        const bool same = (mc[x] != 0) == (mp[x] != 0);
        gc[x] = scan_step(same, gp[x]);
      }
    }
    for (int64_t y = H - 2; y >= 0; --y) {
      const uint8_t* mc = m + y * W;
      const uint8_t* mn = mc + W;
      int32_t* gc = gi + y * W;
      const int32_t* gn = gc + W;
      for (int64_t x = x0; x < x1; ++x) {
        const bool same = (mc[x] != 0) == (mn[x] != 0);
        gc[x] = min_(gc[x], scan_step(same, gn[x]));
      }
    }
  });
}

// The row pass writes float(d²) (+inf for "none"), and sqrt_row takes the
// square roots of a whole row at once while it is in L1: sqrtf(float(d²))
// as before, but vectorised instead of one scalar sqrt per emitted pixel.
inline float squared_float(int64_t d2) {
  return d2 == kNoneD2 ? std::numeric_limits<float>::infinity() : float(d2);
}

inline void sqrt_row(float* o, int64_t W) {
  for (int64_t x = 0; x < W; ++x) o[x] = __builtin_sqrtf(o[x]);
}

// Per-thread scratch of the row pass.
struct RowScratch {
  std::vector<int32_t> g, v;
  std::vector<int64_t> F;
  ArrayHull hull;
  explicit RowScratch(int64_t W) : g(W), v(W + 2), F(W + 2), hull{v.data(), F.data()} {}
};

// Runs the row pass over every (image, row); `row_fn(b, y, scratch)` does one row.
template <class RowFn>
void for_each_row(int64_t B, int64_t H, int64_t W, int threads, RowFn row_fn) {
  std::vector<std::unique_ptr<RowScratch>> scratch(std::max(threads, 1));
  parallel_for(B * H, grain_for(W), threads, [&](int64_t r0, int64_t r1, int w) {
    if (!scratch[w]) scratch[w] = std::make_unique<RowScratch>(W);
    for (int64_t r = r0; r < r1; ++r) row_fn(r / H, r % H, *scratch[w]);
  });
}

}  // namespace

void distance_transform(const uint8_t* mask, float* out, int64_t B, int64_t H, int64_t W,
                        int threads) {
  if (B * H * W == 0) return;
  int32_t* g = reinterpret_cast<int32_t*>(out);
  column_pass(mask, g, B, H, W, threads);
  for_each_row(B, H, W, threads, [&](int64_t b, int64_t y, RowScratch& s) {
    const int64_t off = (b * H + y) * W;
    const uint8_t* m = mask + off;
    float* o = out + off;
    // Copy the column distances out before overwriting the row with floats.
    std::memcpy(s.g.data(), g + off, sizeof(int32_t) * W);
    const int32_t* gr = s.g.data();
    edt_line([&](int64_t x) { return m[x] != 0; }, [&](int64_t x) { return gr[x]; }, W,
            /*want_fg=*/true, /*want_bg=*/false, s.hull,
            [&](int64_t x, int64_t d2, bool) { o[x] = squared_float(d2); },
            [&](int64_t a, int64_t e, bool) { std::fill(o + a, o + e + 1, 0.0f); });
    sqrt_row(o, W);
  });
}

namespace {

// Signed float(d²) per pixel (the row pass); signed_sqrt_row turns a row of
// them into +-sqrtf(float(d²)) -- the same values as taking each root in
// the row pass, but vectorised.
inline void signed_sqrt_row(float* o, int64_t W) {
  for (int64_t x = 0; x < W; ++x) o[x] = std::copysign(__builtin_sqrtf(std::fabs(o[x])), o[x]);
}

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
  int32_t* g = reinterpret_cast<int32_t*>(sdf);
  column_pass(mask, g, B, H, W, threads);
  // Row maxima of the inside and outside distances, reduced per image below.
  std::vector<float> row_max_in(B * H, 0.0f), row_max_out(B * H, 0.0f);
  constexpr int64_t kNoneRank = std::numeric_limits<int64_t>::max();
  for_each_row(B, H, W, threads, [&](int64_t b, int64_t y, RowScratch& s) {
    const int64_t off = (b * H + y) * W;
    const uint8_t* m = mask + off;
    float* o = sdf + off;
    RingT* rg = ring ? ring + off : nullptr;
    int64_t* mo = mask_out ? mask_out + off : nullptr;
    std::memcpy(s.g.data(), g + off, sizeof(int32_t) * W);
    const int32_t* gr = s.g.data();
    int64_t max_in2 = 0, max_out2 = 0;
    // The class is constant along a run: one emit per class, so the per-pixel
    // work has no class branch.
    auto emit_fg = [&](int64_t x, int64_t d2) {
      max_in2 = std::max(max_in2, d2 == kNoneD2 ? kNoneRank : d2);
      o[x] = (zero_boundary && d2 == 1) ? 0.0f : squared_float(d2);
      if (kRing) rg[x] = 0;
      if (kMask) mo[x] = 1;
    };
    auto emit_bg = [&](int64_t x, int64_t d2) {
      max_out2 = std::max(max_out2, d2 == kNoneD2 ? kNoneRank : d2);
      o[x] = -squared_float(d2);
      if (kRing) rg[x] = (d2 != kNoneD2 && d2 <= ring_r2) ? 1 : 0;
      if (kMask) mo[x] = 0;
    };
    for_each_run([&](int64_t x) { return m[x] != 0; }, W, [&](int64_t a, int64_t e, bool fg) {
      auto gf = [&](int64_t x) { return gr[x]; };
      if (fg) {
        envelope_run(gf, a, e, a > 0, e + 1 < W, s.hull, emit_fg);
      } else {
        envelope_run(gf, a, e, a > 0, e + 1 < W, s.hull, emit_bg);
      }
    });
    signed_sqrt_row(o, W);
    row_max_in[b * H + y] = max_distance(max_in2);
    row_max_out[b * H + y] = max_distance(max_out2);
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
  std::vector<int32_t> g(B * H * W);
  column_pass(mask, g.data(), B, H, W, threads);
  for_each_row(B, H, W, threads, [&](int64_t b, int64_t y, RowScratch& s) {
    const int64_t off = (b * H + y) * W;
    const uint8_t* m = mask + off;
    const int32_t* gr = g.data() + off;
    uint8_t* o = out + off;
    edt_line([&](int64_t x) { return m[x] != 0; }, [&](int64_t x) { return gr[x]; }, W,
            /*want_fg=*/false, /*want_bg=*/true, s.hull,
            [&](int64_t x, int64_t d2, bool) { o[x] = (d2 != kNoneD2 && d2 <= ring_r2); },
            [&](int64_t a, int64_t e, bool) { std::fill(o + a, o + e + 1, uint8_t(0)); });
  });
}

}  // namespace SEMIMOE_CPU_ISA
}  // namespace cpu
}  // namespace semimoe
