// CPU exact distance transform, Semi-MoE signed distance and ring target.
//
// Work split: the column pass sweeps whole rows at a time (down, then up) so
// its inner loop runs along contiguous memory and vectorises; threads take
// (image, column block) pairs. The row pass gives each thread whole rows
// (image, row) and runs the shared per-run envelope of common/edt_line.h.
// The column distances are kept in the caller's float32 output buffer (same
// size as int32), so no extra full-size buffer is needed for the EDT and SDF.
#include "ops/cpu/ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "ops/common/edt_transposed.h"

namespace semimoe {
namespace cpu {
namespace SEMIMOE_CPU_ISA {
namespace {

constexpr int64_t kColBlock = 512;  // columns per column-pass task

// g(y, x): distance along the column to the nearest pixel of the other class.
void column_pass(const uint8_t* mask, int32_t* g, int64_t B, int64_t H, int64_t W,
                 int threads) {
  const int64_t nblk = (W + kColBlock - 1) / kColBlock;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) collapse(2)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t blk = 0; blk < nblk; ++blk) {
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
    }
  }
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
#pragma omp parallel num_threads(threads)
  {
    RowScratch s(W);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B * H; ++r) row_fn(r / H, r % H, s);
  }
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
            [&](int64_t x, int64_t d2, bool) { o[x] = sqrt_d2(d2); },
            [&](int64_t a, int64_t e, bool) { std::fill(o + a, o + e + 1, 0.0f); });
  });
}

void signed_distance(const uint8_t* mask, float* sdf, uint8_t* ring, int64_t B, int64_t H,
                     int64_t W, int normalize, bool zero_boundary, int64_t ring_r2, int threads) {
  if (B * H * W == 0) return;
  int32_t* g = reinterpret_cast<int32_t*>(sdf);
  column_pass(mask, g, B, H, W, threads);
  // Row maxima of the inside and outside distances, reduced per image below.
  std::vector<float> row_max_in(B * H, 0.0f), row_max_out(B * H, 0.0f);
  for_each_row(B, H, W, threads, [&](int64_t b, int64_t y, RowScratch& s) {
    const int64_t off = (b * H + y) * W;
    const uint8_t* m = mask + off;
    float* o = sdf + off;
    uint8_t* rg = ring ? ring + off : nullptr;
    std::memcpy(s.g.data(), g + off, sizeof(int32_t) * W);
    const int32_t* gr = s.g.data();
    float mx_in = 0.0f, mx_out = 0.0f;
    edt_line(
        [&](int64_t x) { return m[x] != 0; }, [&](int64_t x) { return gr[x]; }, W, true, true,
        s.hull,
        [&](int64_t x, int64_t d2, bool fg) {
          const float d = sqrt_d2(d2);
          if (fg) {
            mx_in = std::max(mx_in, d);
            o[x] = (zero_boundary && d2 == 1) ? 0.0f : d;
            if (rg) rg[x] = 0;
          } else {
            mx_out = std::max(mx_out, d);
            o[x] = -d;
            if (rg) rg[x] = (d2 != kNoneD2 && d2 <= ring_r2) ? 1 : 0;
          }
        },
        [](int64_t, int64_t, bool) {});
    row_max_in[b * H + y] = mx_in;
    row_max_out[b * H + y] = mx_out;
  });
  if (normalize == 0) return;
  std::vector<float> max_in(B, 0.0f), max_out(B, 0.0f);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t y = 0; y < H; ++y) {
      max_in[b] = std::max(max_in[b], row_max_in[b * H + y]);
      max_out[b] = std::max(max_out[b], row_max_out[b * H + y]);
    }
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < B * H; ++r) {
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
  }
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
