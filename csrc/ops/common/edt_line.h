// Per-line logic of the exact Euclidean distance transform of the CUDA kernels
// (csrc/ops/cuda). Everything here is __host__ __device__ so the host tests
// exercise the same code the GPU runs (csrc/ops/cpu/edt_gpu_layout.cpp). The
// CPU kernels use its constants and run the same mathematics in
// csrc/ops/cpu/row_envelope.h, arranged for a CPU (few data-dependent branches).
//
// Algorithm (separable, linear time; Meijster et al. 2002, Felzenszwalb &
// Huttenlocher 2012), for a binary image with two classes (foreground =
// mask != 0, background = mask == 0):
//
//   column pass: g(y, x) = distance along column x from (y, x) to the nearest
//                pixel of the *other* class (kFar if the column has none).
//   row pass:    d²(y, x) = min_i (x - i)² + g(y, i)²  over the row.
//
// One column pass serves both distance maps at once (each pixel only needs the
// distance to the other class), so the signed distance needs no second EDT.
// The row pass is split into maximal runs of same-class pixels [a, b]: a pixel
// inside the run is at most (x - a + 1)² resp. (b + 1 - x)² away from the
// other-class pixels that end the run, so columns beyond them can never win.
// Within a run the lower envelope of the parabolas is built with exact integer
// arithmetic and no division: parabola i is the line h_i(x) = F_i - 2 i x with
// F_i = g_i² + i² (the common x² term dropped), and line j is dropped from the
// hull when it is never strictly below its neighbours, decided by a
// cross-multiplied comparison of intersection abscissae.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SEMIMOE_HD __host__ __device__ __forceinline__
#else
#define SEMIMOE_HD inline
#endif

namespace semimoe {

// Column distance meaning "no pixel of the other class in this column". Values
// at or above it are treated as infinite; kFar + height stays below 2^31.
constexpr int32_t kFar = 1 << 30;
// Largest supported image side: keeps every product in the envelope inside
// int64 (F < 2^41, coordinate differences < 2^20).
constexpr int64_t kMaxSide = int64_t(1) << 20;
// Squared distance meaning "no pixel of the other class anywhere".
constexpr int64_t kNoneD2 = -1;

// First pass, one step: distance along the line to the other class given the
// previous pixel's class and distance (kFar-based; may exceed kFar by the
// line length, still "infinite").
SEMIMOE_HD int32_t scan_step(bool same_class_as_prev, int32_t prev_g) {
  return same_class_as_prev ? prev_g + 1 : 1;
}

template <class T>
SEMIMOE_HD T min_(T a, T b) {
  return b < a ? b : a;
}
template <class T>
SEMIMOE_HD T max_(T a, T b) {
  return a < b ? b : a;
}

// Hull storage of the envelope: line k is (v_k, F_k). The CPU keeps two plain
// arrays per thread; the CUDA kernels keep one packed, interleaved array so
// that neighbouring threads touch neighbouring addresses.
struct ArrayHull {
  int32_t* vs;
  int64_t* Fs;
  SEMIMOE_HD int32_t v(int k) const { return vs[k]; }
  SEMIMOE_HD int64_t F(int k) const { return Fs[k]; }
  SEMIMOE_HD void set(int k, int32_t v_, int64_t F_) const {
    vs[k] = v_;
    Fs[k] = F_;
  }
};

// Lower envelope for one run of same-class pixels [a, b] of a line.
//
//   g(i)        distances across the line for i in [a, b] (functor: i -> int32)
//   has_left    pixel a-1 exists (then it is of the other class: f = 0 there)
//   has_right   pixel b+1 exists (likewise)
//   hull        storage for at least (b - a + 3) lines (ArrayHull or similar)
//   emit(x, d2) called once per x in [a, b], in increasing x, with the exact
//               squared distance, or kNoneD2 when no other-class pixel exists
//               anywhere (the whole image is one class). g is not read after
//               the first emit of a run, so emit may overwrite it in place.
//
// Coordinates inside are relative to a - 1 so products stay small.
template <class G, class Hull, class Emit>
SEMIMOE_HD void envelope_run(G g, int64_t a, int64_t b, bool has_left, bool has_right,
                             const Hull& hull, Emit emit) {
  // The hull is a stack; its top line (vt, Ft) lives in registers.
  int k = -1;
  int32_t vt = 0;
  int64_t Ft = 0;
  auto push = [&](int32_t q, int64_t Fq) {
    // Drop lines that the new one makes redundant. With lines sorted by
    // position (slope -2i decreasing), the top line is redundant when its
    // intersection with the line below is at or right of its intersection
    // with q:  (F_t - F_{t-1}) (q - v_t) >= (F_q - F_t) (v_t - v_{t-1}).
    while (k >= 1) {
      const int32_t vb = hull.v(k - 1);
      const int64_t Fb = hull.F(k - 1);
      if ((Ft - Fb) * int64_t(q - vt) < (Fq - Ft) * int64_t(vt - vb)) break;
      --k;
      vt = vb;
      Ft = Fb;
    }
    ++k;
    hull.set(k, q, Fq);
    vt = q;
    Ft = Fq;
  };
  if (has_left) push(0, 0);  // the other-class pixel at a - 1 (relative 0)
  const int32_t n = int32_t(b - a + 1);
  // Every pixel of the run is within D of an end pixel (D = floor((n+1)/2)
  // with both ends, n with one), so a column with g >= D is never strictly
  // nearest (its parabola is >= g^2 >= D^2 everywhere): leave it out.
  const int32_t D = has_left && has_right ? (n + 1) / 2 : (has_left || has_right ? n : kFar);
  for (int32_t r = 1; r <= n; ++r) {
    const int32_t gi = g(a + r - 1);
    if (gi >= D) continue;  // also skips kFar: no other-class pixel across this position
    push(r, int64_t(gi) * gi + int64_t(r) * r);
  }
  if (has_right) push(n + 1, int64_t(n + 1) * (n + 1));
  if (k < 0) {
    for (int32_t r = 1; r <= n; ++r) emit(a + r - 1, kNoneD2);
    return;
  }
  int j = 0;
  int32_t vj = hull.v(0);
  int64_t Fj = hull.F(0);
  int32_t vn = k > 0 ? hull.v(1) : 0;
  int64_t Fn = k > 0 ? hull.F(1) : 0;
  for (int32_t r = 1; r <= n; ++r) {
    // Advance while the next line is at least as low at r (h = F - 2 v r).
    while (j < k && Fn - 2 * int64_t(vn) * r <= Fj - 2 * int64_t(vj) * r) {
      ++j;
      vj = vn;
      Fj = Fn;
      if (j < k) {
        vn = hull.v(j + 1);
        Fn = hull.F(j + 1);
      }
    }
    // F - v^2 = g^2, so d^2 = (r - v)^2 + g^2 = r^2 - 2 v r + F.
    emit(a + r - 1, int64_t(r) * r - 2 * int64_t(vj) * r + Fj);
  }
}

// Walk one line: run(a, b, fg) for every maximal run [a, b] of same-class
// pixels, in order.
template <class IsFg, class Run>
SEMIMOE_HD void for_each_run(IsFg is_fg, int64_t width, Run run) {
  int64_t a = 0;
  while (a < width) {
    const bool fg = is_fg(a);
    int64_t b = a;
    while (b + 1 < width && is_fg(b + 1) == fg) ++b;
    run(a, b, fg);
    a = b + 1;
  }
}

// Walk one line, calling envelope_run for every maximal run of same-class
// pixels whose class is selected (want_fg / want_bg); `skip(a, b, fg)` is
// called for unselected runs so callers can write their fill value.
template <class IsFg, class G, class Hull, class Emit, class Skip>
SEMIMOE_HD void edt_line(IsFg is_fg, G g, int64_t width, bool want_fg, bool want_bg,
                         const Hull& hull, Emit emit, Skip skip) {
  for_each_run(is_fg, width, [&](int64_t a, int64_t b, bool fg) {
    if (fg ? want_fg : want_bg) {
      envelope_run(g, a, b, a > 0, b + 1 < width, hull,
                   [&](int64_t x, int64_t d2) { emit(x, d2, fg); });
    } else {
      skip(a, b, fg);
    }
  });
}

}  // namespace semimoe
