// CPU find_boundaries with scikit-image semantics on label maps: one pass over
// the labels with no temporaries; the per-pixel test is in
// common/boundaries.h (shared with the CUDA kernel).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "ops/common/boundaries.h"
#include "ops/cpu/ops.h"

namespace semimoe {
namespace cpu {
namespace SEMIMOE_CPU_ISA {
namespace {

template <typename T, int kMode, int kConn>
void run(const T* labels, uint8_t* out, int64_t B, int64_t H, int64_t W, T bg, T maxl,
         int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < B * H; ++r) {
    const int64_t b = r / H, y = r % H;
    const T* img = labels + b * H * W;
    const T* mid = img + y * W;
    const T* up = img + std::max<int64_t>(y - 1, 0) * W;
    const T* dn = img + std::min<int64_t>(y + 1, H - 1) * W;
    uint8_t* o = out + r * W;
    if (W == 1) {
      o[0] = boundary_at<T, kMode, kConn>(up, mid, dn, 0, 0, 0, bg, maxl);
      continue;
    }
    o[0] = boundary_at<T, kMode, kConn>(up, mid, dn, 0, 0, 1, bg, maxl);
    // Interior: fixed offsets, so the compiler can vectorise.
    for (int64_t x = 1; x < W - 1; ++x)
      o[x] = boundary_at<T, kMode, kConn>(up, mid, dn, x - 1, x, x + 1, bg, maxl);
    o[W - 1] = boundary_at<T, kMode, kConn>(up, mid, dn, W - 2, W - 1, W - 1, bg, maxl);
  }
}

template <typename T>
void dispatch_mode(const void* labels, uint8_t* out, int64_t B, int64_t H, int64_t W, int mode,
                   int connectivity, int64_t background, int64_t max_label, int threads) {
  const T* l = static_cast<const T*>(labels);
  const T bg = static_cast<T>(background), mx = static_cast<T>(max_label);
  const bool c2 = connectivity == 2;
  switch (mode) {
    case kThick:
      return c2 ? run<T, kThick, 2>(l, out, B, H, W, bg, mx, threads)
                : run<T, kThick, 1>(l, out, B, H, W, bg, mx, threads);
    case kInner:
      return c2 ? run<T, kInner, 2>(l, out, B, H, W, bg, mx, threads)
                : run<T, kInner, 1>(l, out, B, H, W, bg, mx, threads);
    case kOuter:
      return c2 ? run<T, kOuter, 2>(l, out, B, H, W, bg, mx, threads)
                : run<T, kOuter, 1>(l, out, B, H, W, bg, mx, threads);
    default:
      throw std::invalid_argument("find_boundaries: mode code must be 0 (thick), 1 (inner) or 2 (outer)");
  }
}

}  // namespace

void find_boundaries(const void* labels, int dtype_code, uint8_t* out, int64_t B, int64_t H,
                     int64_t W, int mode, int connectivity, int64_t background, int64_t max_label,
                     int threads) {
  if (connectivity != 1 && connectivity != 2)
    throw std::invalid_argument("find_boundaries: connectivity must be 1 or 2");
  if (B * H * W == 0) return;
  switch (dtype_code) {
    case 0: return dispatch_mode<uint8_t>(labels, out, B, H, W, mode, connectivity, background, max_label, threads);
    case 1: return dispatch_mode<int8_t>(labels, out, B, H, W, mode, connectivity, background, max_label, threads);
    case 2: return dispatch_mode<int16_t>(labels, out, B, H, W, mode, connectivity, background, max_label, threads);
    case 3: return dispatch_mode<int32_t>(labels, out, B, H, W, mode, connectivity, background, max_label, threads);
    case 4: return dispatch_mode<int64_t>(labels, out, B, H, W, mode, connectivity, background, max_label, threads);
    default:
      throw std::invalid_argument("find_boundaries: dtype code must be 0..4 (uint8, int8, int16, int32, int64)");
  }
}

}  // namespace SEMIMOE_CPU_ISA
}  // namespace cpu
}  // namespace semimoe
