// The row pass of the CPU distance transforms: the exact lower envelope of
// the parabolas of one run of same-class pixels, arranged so that few
// branches depend on the data (common/edt_line.h's envelope_run, which the
// GPU keeps, branches on every comparison; this arrangement, with the uint16
// column pass, made the 1024x1024 EDT 1.6x faster on the development CPU,
// which has no hardware counters to count mispredictions), and, for runs
// whose distances are known to be small, a direct windowed search
// (RowEnvelope::windowed) instead of the envelope.
//
// Same mathematics as envelope_run (see common/edt_line.h): within a run
// [a, b] (n = b - a + 1 pixels, coordinates r = 1..n relative to a - 1),
// column r is the line h_r(x) = F_r - 2 r x with F_r = g_r^2 + r^2, the
// other-class pixels that end the run are the lines (0, 0) and
// (n + 1, (n + 1)^2), and d^2(x) = x^2 + min_r h_r(x). Four steps:
//
//   1. candidates: every column with g < D (D bounds the distance of every
//      pixel of the run to an end, so other columns never win) whose point
//      (r, F_r) lies strictly below the chord of its neighbours' points (a
//      point on or above a chord of two other points is no vertex of the
//      lower hull), written without a branch (AVX2: 8 columns at a time);
//   2. hull: the stack of lines of the lower envelope, with the same exact,
//      division-free pop test as envelope_run (cross-multiplied abscissae);
//   3. starts: the first integer abscissa at which each hull line is lowest,
//      s_j = ceil((F_j - F_{j-1}) / (2 (v_j - v_{j-1}))), clamped to
//      [1, n + 1] and counted per abscissa. The quotient is a double: both
//      integers are exact, the division is correctly rounded, and while the
//      true quotient q lies within 2^21 of zero its distance from the next
//      integer, at least 1 / den >= 2^-22, exceeds half an ulp of q (at most
//      2^-32), so ceil() of the rounded quotient is ceil(q). Beyond 2^21 the
//      clamp decides, and rounding cannot carry q across n + 1 <= 2^20 + 1
//      or across 0;
//   4. emit: the lowest line at r is line j(r) = (number of starts <= r) - 1,
//      a running sum, so the loop over pixels has no data-dependent branch.
//
// Ties between lines give equal values, so the result is the same integer
// d^2 as envelope_run's for every pixel.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "ops/common/edt_line.h"

#if defined(__AVX2__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace semimoe {
namespace cpu {
namespace SEMIMOE_CPU_ISA {

// First x in [a, W) whose class (m[x] != 0) differs from `fg`, or W.
inline int64_t run_end(const uint8_t* m, int64_t a, int64_t W, bool fg) {
  int64_t x = a;
#if defined(__AVX2__)
  const __m256i zero = _mm256_setzero_si256();
  for (; x + 32 <= W; x += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + x));
    const uint32_t is_bg = uint32_t(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, zero)));
    const uint32_t other = fg ? is_bg : ~is_bg;
    if (other) return x + __builtin_ctz(other);
  }
#elif defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  for (; x + 8 <= W; x += 8) {
    uint64_t w;
    std::memcpy(&w, m + x, 8);
    // High bit of each byte set where the byte is nonzero.
    const uint64_t lo7 = 0x7f7f7f7f7f7f7f7full;
    const uint64_t nz = (((w & lo7) + lo7) | w) & ~lo7;
    const uint64_t other = fg ? (~nz & ~lo7) : nz;
    if (other) return x + (__builtin_ctzll(other) >> 3);
  }
#endif
  for (; x < W; ++x)
    if ((m[x] != 0) != fg) return x;
  return W;
}

#if defined(__AVX2__)
// kCompress[m]: byte i is the lane of the i-th set bit of the 8-bit mask m.
struct CompressTable {
  uint64_t lanes[256];
  constexpr CompressTable() : lanes() {
    for (int m = 0; m < 256; ++m) {
      uint64_t v = 0;
      int i = 0;
      for (int lane = 0; lane < 8; ++lane)
        if (m & (1 << lane)) v |= uint64_t(lane) << (8 * i++);
      lanes[m] = v;
    }
  }
};
constexpr CompressTable kCompress{};
#endif

// Writes to cand the columns r in [1, n] with g[r] < D whose point (r, F[r])
// lies strictly below the chord of (r - 1, F[r - 1]) and (r + 1, F[r + 1]);
// returns how many. cand needs 8 spare entries (the vector loop stores 8).
inline int32_t keep_candidates(const int32_t* g, const int64_t* F, int32_t n, int32_t D,
                               int32_t* cand) {
  int32_t nc = 0, r = 1;
#if defined(__AVX2__)
  const __m256i vD = _mm256_set1_epi32(D);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (; r + 7 <= n; r += 8) {
    const __m256i gv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + r));
    const __m256i gt = _mm256_cmpgt_epi32(vD, gv);
    const uint32_t near = uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(gt)));
    uint32_t below = 0;
    for (int h = 0; h < 2; ++h) {
      const int64_t* f = F + r + 4 * h;
      const __m256i fc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(f));
      const __m256i fp = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(f - 1));
      const __m256i fn = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(f + 1));
      const __m256i lt = _mm256_cmpgt_epi64(_mm256_add_epi64(fp, fn), _mm256_add_epi64(fc, fc));
      below |= uint32_t(_mm256_movemask_pd(_mm256_castsi256_pd(lt))) << (4 * h);
    }
    const uint32_t keep = near & below;
    const __m256i perm = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(kCompress.lanes[keep])));
    const __m256i rv = _mm256_add_epi32(_mm256_set1_epi32(r), lane);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(cand + nc),
                        _mm256_permutevar8x32_epi32(rv, perm));
    nc += __builtin_popcount(keep);
  }
#endif
  for (; r <= n; ++r) {
    cand[nc] = r;
    nc += (g[r] < D) & (2 * F[r] < F[r - 1] + F[r + 1]);
  }
  return nc;
}

// float(d^2) as the row pass writes it: +inf for kNoneD2 ("no pixel of the
// other class"). Exact below 2^24.
inline float squared_float(int64_t d2) {
  return d2 == kNoneD2 ? std::numeric_limits<float>::infinity() : float(d2);
}

// int16 vectors for the windowed search (RowEnvelope::windowed).
#if defined(__AVX2__)
using VI16 = __m256i;
constexpr int kLanes = 16;
inline VI16 v_load(const int16_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline VI16 v_set1(int16_t v) { return _mm256_set1_epi16(v); }
inline VI16 v_add(VI16 a, VI16 b) { return _mm256_add_epi16(a, b); }
inline VI16 v_min(VI16 a, VI16 b) { return _mm256_min_epi16(a, b); }
inline void v_store_i32(int32_t* p, VI16 v) {  // the 16 lanes widened to int32
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm256_cvtepi16_epi32(_mm256_castsi256_si128(v)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 8),
                      _mm256_cvtepi16_epi32(_mm256_extracti128_si256(v, 1)));
}
#elif defined(__SSE2__)
using VI16 = __m128i;
constexpr int kLanes = 8;
inline VI16 v_load(const int16_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
inline VI16 v_set1(int16_t v) { return _mm_set1_epi16(v); }
inline VI16 v_add(VI16 a, VI16 b) { return _mm_add_epi16(a, b); }
inline VI16 v_min(VI16 a, VI16 b) { return _mm_min_epi16(a, b); }
inline void v_store_i32(int32_t* p, VI16 v) {  // the 8 lanes widened to int32 (sign-extended)
  const VI16 sign = _mm_srai_epi16(v, 15);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_unpacklo_epi16(v, sign));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 4), _mm_unpackhi_epi16(v, sign));
}
#else
constexpr int kLanes = 8;
#endif

// Per-thread scratch of the row pass, for rows of up to W pixels.
class RowEnvelope {
 public:
  // Widest window of the windowed search (below); wider runs take the envelope.
  static constexpr int32_t kWindow = 64;

  explicit RowEnvelope(int64_t W)
      : width_(W), cand_(W + 10), F_(W + 2), hv_(W + 2), hF_(W + 2), start_(W + 3), g_(W + 1),
        mask_(W),
        prev_mask_(W), g2_(W + 2 * kWindow + 2 * kLanes), ends_(W + kLanes), bound_(W + kLanes),
        d2_(W + kLanes), prev_d2_(W + kLanes) {}

  // Column distances of the current row (int32), filled by the caller.
  int32_t* g() { return g_.data() + 1; }
  // The current row's mask (uint8, != 0: foreground), filled by the caller.
  uint8_t* mask() { return mask_.data(); }

  // Call after filling g() and mask() for a row; `follows` says whether the
  // previous row handed to this scratch (and finished with end_row) is the
  // row just above in the same image.
  void begin_row(bool follows) {
    follows_ = follows;
    g2_ready_ = false;
  }
  // Call when the row is done: its squared distances bound the next row's.
  void end_row() {
    mask_.swap(prev_mask_);
    d2_.swap(prev_d2_);
  }

  // float(d^2) for x in [a, b] into sq[x] (+inf: none), exact. A run whose
  // pixels all have a known distance bound of at most kWindow is searched
  // directly (windowed); any other run takes the envelope (run()). The
  // bound of a pixel under a pixel of its own class is read from the row
  // above's result, so a caller that uses squared() for one class of a row
  // uses it for every run of that class in every row (the other class may
  // take run(): a pixel under the other class gets the bound 1).
  void squared(int64_t a, int64_t b, bool has_left, bool has_right, bool fg, float* sq) {
    if (!windowed(a, b, has_left, has_right, fg)) {
      int32_t* d2 = d2_.data();
      run(a, b, has_left, has_right, [&](int64_t x, int64_t v) {
        sq[x] = squared_float(v);
        d2[x] = v == kNoneD2 || v > kBig ? kBig : int32_t(v);
      });
      return;
    }
    const int32_t* d2 = d2_.data();
    for (int64_t x = a; x <= b; ++x) sq[x] = float(d2[x]);  // < 2^24: exact
  }

  // emit(x, d2) for every x in [a, b] in increasing order, with the exact
  // squared distance to the nearest other-class pixel, or kNoneD2 when the
  // run has no end and no column has another-class pixel (g >= kFar).
  template <class Emit>
  void run(int64_t a, int64_t b, bool has_left, bool has_right, Emit emit) {
    const int32_t n = int32_t(b - a + 1);
    const int32_t* g = g_.data() + a;  // g[r] for r = 1..n (g_[0] is a pad)
    const int32_t D = has_left && has_right ? (n + 1) / 2 : (has_left || has_right ? n : kFar);
    // 1. candidates, branch-free. F[r] for r = 0..n + 1 (the ends: 0 and
    // (n + 1)^2, or kAbsent); a column on or above the chord of its two
    // neighbours' points (r, F) is not a vertex of the lower hull of the whole
    // set (neighbours with g >= D are real pixels too), so it is left out.
    constexpr int64_t kAbsent = int64_t(1) << 61;  // never makes a chord; sums stay < 2^63
    int64_t* F = F_.data();
    F[0] = has_left ? 0 : kAbsent;
    F[n + 1] = has_right ? int64_t(n + 1) * (n + 1) : kAbsent;
    for (int32_t r = 1; r <= n; ++r) F[r] = int64_t(g[r]) * g[r] + int64_t(r) * r;
    int32_t* cand = cand_.data();
    const int32_t nc = keep_candidates(g, F, n, D, cand);
    // 2. hull.
    const int k = build_hull(cand, F, nc, n, has_left, has_right);
    if (k < 0) {
      for (int32_t r = 1; r <= n; ++r) emit(a + r - 1, kNoneD2);
      return;
    }
    // 3. starts, counted per abscissa (start_[r] for r = 1..n + 1).
    const int32_t* hv = hv_.data();
    const int64_t* hF = hF_.data();
    const double hi = double(n + 1);
    int32_t* start = cand;  // free again
    for (int j = 1; j <= k; ++j) {
      double q = double(hF[j] - hF[j - 1]) / double(2 * int64_t(hv[j] - hv[j - 1]));
      q = q < 1.0 ? 1.0 : (q > hi ? hi : q);
      start[j] = int32_t(std::ceil(q));
    }
    int32_t* cnt = start_.data();
    std::memset(cnt, 0, sizeof(int32_t) * (n + 2));
    for (int j = 1; j <= k; ++j) ++cnt[start[j]];
    // 4. emit.
    int j = 0;
    for (int32_t r = 1; r <= n; ++r) {
      j += cnt[r];
      emit(a + r - 1, int64_t(r) * r - 2 * int64_t(hv[j]) * r + hF[j]);
    }
  }

 private:
  // The lower envelope of the candidates' lines (plus the run's end lines)
  // in hv_/hF_; returns the index of its last line (-1: none).
  int build_hull(const int32_t* cand, const int64_t* F, int32_t nc, int32_t n, bool has_left,
                 bool has_right) {
    int32_t* hv = hv_.data();
    int64_t* hF = hF_.data();
    int k = -1;
    // The top two lines live in registers: top (vt, Ft), below it (vb, Fb).
    int32_t vt = 0, vb = 0;
    int64_t Ft = 0, Fb = 0;
    auto redundant = [&](int32_t q, int64_t Fq) {
      return (Ft - Fb) * int64_t(q - vt) >= (Fq - Ft) * int64_t(vt - vb);
    };
    auto push = [&](int32_t q, int64_t Fq) {
      while (k >= 1 && redundant(q, Fq)) {
        --k;
        vt = vb;
        Ft = Fb;
        if (k >= 1) {
          vb = hv[k - 1];
          Fb = hF[k - 1];
        }
      }
      ++k;
      hv[k] = q;
      hF[k] = Fq;
      vb = vt;
      Fb = Ft;
      vt = q;
      Ft = Fq;
    };
    if (has_left) push(0, 0);
    for (int32_t c = 0; c < nc; ++c) push(cand[c], F[cand[c]]);
    if (has_right) push(n + 1, int64_t(n + 1) * (n + 1));
    return k;
  }

  static constexpr int32_t kBig = int32_t(1) << 30;  // "no bound" / "far" in int32
  // The windowed search runs on int16: g^2 and end terms are capped at kCap,
  // above every windowed d^2 (<= kWindow^2 = 4096), and kCap + kWindow^2
  // stays below 2^15.
  static constexpr int32_t kCap = 16384;

  // The windowed search (SSE2 / AVX2; elsewhere always the envelope). The
  // distance of pixel x of run [a, b] is at most R(x), the least of: its
  // column distance g(x); its distance to each end of the run; and, when
  // the row above went through here, 1 if the pixel above is of the other
  // class, else that pixel's distance + 1 (a distance to a set changes by at
  // most 1 from one pixel to the next). If every R(x) is at most kWindow,
  // d^2(x) is the least of the squared distances to the run's ends and of
  // (x - i)^2 + g(i)^2 over |i - x| <= R(x): a column i beyond an end is
  // farther than that end, so its term, whatever its g, never beats the
  // end's; and a term capped at kCap never beats the true minimum, at most
  // kWindow^2. kLanes pixels at a time scan the widest of their windows, a
  // branch-free min over shifted loads of the row's g^2. Writes d2_[a..b].
  bool windowed(int64_t a, int64_t b, bool has_left, bool has_right, bool fg) {
#if defined(__AVX2__) || defined(__SSE2__)
    if (!bounds(a, b, has_left, has_right, fg)) return false;
    if (!g2_ready_) fill_g2();
    const int16_t* g2 = g2_.data() + kWindow;  // g2[i], i in [-kWindow, W + kWindow + 2 kLanes)
    const int16_t* ends = ends_.data();
    const int32_t* R = bound_.data();
    int32_t* d2 = d2_.data();
    for (int64_t x0 = a; x0 <= b; x0 += kLanes) {
      int32_t rb = 0;
      for (int64_t x = x0; x < x0 + kLanes && x <= b; ++x) rb = std::max(rb, R[x]);
      // Two accumulators (even and odd offsets) halve the dependency chain.
      VI16 best = v_load(ends + x0), odd = v_set1(kCap);
      int32_t dx = -rb;
      for (; dx < rb; dx += 2) {
        best = v_min(best, v_add(v_load(g2 + x0 + dx), v_set1(int16_t(dx * dx))));
        const int16_t dd1 = int16_t((dx + 1) * (dx + 1));
        odd = v_min(odd, v_add(v_load(g2 + x0 + dx + 1), v_set1(dd1)));
      }
      best = v_min(best, v_add(v_load(g2 + x0 + rb), v_set1(int16_t(rb * rb))));
      v_store_i32(d2 + x0, v_min(best, odd));
    }
    return true;
#else
    (void)a, (void)b, (void)has_left, (void)has_right, (void)fg;
    return false;
#endif
  }

  // The row's g^2 capped at kCap, padded with kCap on both sides (columns
  // beyond the image edges must never win): once per row, on its first
  // windowed run.
  void fill_g2() {
    int16_t* g2 = g2_.data();
    const int32_t* g = g_.data() + 1;
    for (int64_t i = 0; i < kWindow; ++i) g2[i] = kCap;
    for (int64_t x = 0; x < width_; ++x) g2[kWindow + x] = int16_t(g[x] < 128 ? g[x] * g[x] : kCap);
    for (int64_t i = kWindow + width_; i < int64_t(g2_.size()); ++i) g2[i] = kCap;
    g2_ready_ = true;
  }

  // R(x) into bound_[a..b] and the capped squared end distances into
  // ends_[a..b] (see windowed); false when some R(x) exceeds kWindow.
  bool bounds(int64_t a, int64_t b, bool has_left, bool has_right, bool fg) {
    const int32_t* g = g_.data() + 1;
    const uint8_t* pm = prev_mask_.data();
    const int32_t* pd2 = prev_d2_.data();
    int32_t* R = bound_.data();
    int16_t* E = ends_.data();
    // Distances to the ends as (x - a + 1) + off_l and (b + 1 - x) + off_r,
    // with kBig added for an absent end (x < 2^20: no overflow).
    const int32_t off_l = has_left ? 0 : kBig, off_r = has_right ? 0 : kBig;
    const int32_t a1 = int32_t(a) - 1, b1 = int32_t(b) + 1;
    int32_t rmax = 0;
    if (follows_) {
      const int32_t mine = fg ? 1 : 0;
      for (int32_t x = int32_t(a); x <= int32_t(b); ++x) {
        // Above: 1 if the pixel above is of the other class, else its
        // distance + 1; floor(sqrtf) is within 1 of the root, so +2 bounds it.
        const int32_t other = int32_t(pm[x] != 0) ^ mine;
        const int32_t above = other ? 1 : int32_t(__builtin_sqrtf(float(pd2[x]))) + 2;
        const int32_t r = std::min(std::min(g[x], above),
                                   std::min(x - a1 + off_l, b1 - x + off_r));
        R[x] = r;
        rmax = std::max(rmax, r);
      }
    } else {
      for (int32_t x = int32_t(a); x <= int32_t(b); ++x) {
        const int32_t r = std::min(g[x], std::min(x - a1 + off_l, b1 - x + off_r));
        R[x] = r;
        rmax = std::max(rmax, r);
      }
    }
    if (rmax > kWindow) return false;
    for (int32_t x = int32_t(a); x <= int32_t(b); ++x) {
      const int32_t e = std::min(std::min(x - a1 + off_l, b1 - x + off_r), int32_t(128));
      E[x] = int16_t(std::min(e * e, kCap));
    }
    return true;
  }

  int64_t width_;
  bool follows_ = false, g2_ready_ = false;
  std::vector<int32_t> cand_;
  std::vector<int64_t> F_;
  std::vector<int32_t> hv_;
  std::vector<int64_t> hF_;
  std::vector<int32_t> start_, g_;
  std::vector<uint8_t> mask_, prev_mask_;
  std::vector<int16_t> g2_, ends_;
  std::vector<int32_t> bound_, d2_, prev_d2_;
};

}  // namespace SEMIMOE_CPU_ISA
}  // namespace cpu
}  // namespace semimoe
