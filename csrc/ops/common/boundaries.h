// Per-pixel boundary test of scikit-image's find_boundaries, shared by the
// CPU and CUDA kernels (the host tests run the same code the GPU runs).
//
// scikit-image computes   thick = dilation(L, fp) != erosion(L, fp)
// (fp = cross for connectivity 1, 3x3 for 2), inner = thick & (L != bg), and
// outer = thick & (bg | adjacent) where adjacent = dilation8(L) !=
// erosion8(L with bg replaced by the dtype's max) & !bg. Its grey morphology
// reflects at the image border, which for a 3x3 window gives the same max/min
// as ignoring out-of-image pixels, and so does clamping the neighbour index to
// the image (replicate padding): callers pass clamped rows/columns.
#pragma once

#include <cstdint>
#include <stdexcept>

#include "ops/common/edt_line.h"

namespace semimoe {

enum BoundaryMode { kThick = 0, kInner = 1, kOuter = 2 };

// up/mid/dn: the rows above, at and below the pixel (clamped); xl/x/xr: the
// columns left, at and right of it (clamped).
template <typename T, int kMode, int kConn>
SEMIMOE_HD uint8_t boundary_at(const T* up, const T* mid, const T* dn, int64_t xl, int64_t x,
                               int64_t xr, T bg, T maxl) {
  const T c = mid[x];
  // Cross neighbourhood (connectivity 1).
  const T mx = max_(max_(c, max_(mid[xl], mid[xr])), max_(up[x], dn[x]));
  const T mn = min_(min_(c, min_(mid[xl], mid[xr])), min_(up[x], dn[x]));
  T mx8 = mx, mn8 = mn;
  if (kConn == 2 || kMode == kOuter) {
    mx8 = max_(mx, max_(max_(up[xl], up[xr]), max_(dn[xl], dn[xr])));
    mn8 = min_(mn, min_(min_(up[xl], up[xr]), min_(dn[xl], dn[xr])));
  }
  const bool thick = kConn == 2 ? (mx8 != mn8) : (mx != mn);
  if (kMode == kThick) return thick;
  if (kMode == kInner) return thick && c != bg;
  // Outer: erosion over the 3x3 window with background replaced by maxl.
  auto inv = [bg, maxl](T v) { return v == bg ? maxl : v; };
  T mninv = min_(inv(c), min_(inv(mid[xl]), inv(mid[xr])));
  mninv = min_(mninv, min_(min_(inv(up[xl]), inv(up[x])), inv(up[xr])));
  mninv = min_(mninv, min_(min_(inv(dn[xl]), inv(dn[x])), inv(dn[xr])));
  const bool is_bg = c == bg;
  const bool adjacent = (mx8 != mninv) && !is_bg;
  return thick && (is_bg || adjacent);
}

// Host-side dispatch shared by the CPU and CUDA kernels: calls
// f.template run<T, kMode, kConn>() for the runtime dtype code (0 uint8,
// 1 int8, 2 int16, 3 int32, 4 int64), mode and connectivity.
template <typename T, class F>
void dispatch_boundary_mode(int mode, int connectivity, const F& f) {
  if (connectivity != 1 && connectivity != 2)
    throw std::invalid_argument("find_boundaries: connectivity must be 1 or 2");
  const bool c2 = connectivity == 2;
  switch (mode) {
    case kThick: return c2 ? f.template run<T, kThick, 2>() : f.template run<T, kThick, 1>();
    case kInner: return c2 ? f.template run<T, kInner, 2>() : f.template run<T, kInner, 1>();
    case kOuter: return c2 ? f.template run<T, kOuter, 2>() : f.template run<T, kOuter, 1>();
    default:
      throw std::invalid_argument(
          "find_boundaries: mode code must be 0 (thick), 1 (inner) or 2 (outer)");
  }
}

template <class F>
void dispatch_boundaries(int dtype_code, int mode, int connectivity, const F& f) {
  switch (dtype_code) {
    case 0: return dispatch_boundary_mode<uint8_t>(mode, connectivity, f);
    case 1: return dispatch_boundary_mode<int8_t>(mode, connectivity, f);
    case 2: return dispatch_boundary_mode<int16_t>(mode, connectivity, f);
    case 3: return dispatch_boundary_mode<int32_t>(mode, connectivity, f);
    case 4: return dispatch_boundary_mode<int64_t>(mode, connectivity, f);
    default:
      throw std::invalid_argument(
          "find_boundaries: dtype code must be 0..4 (uint8, int8, int16, int32, int64)");
  }
}

}  // namespace semimoe
