// CPU find_boundaries with scikit-image semantics on label maps: one pass over
// the labels with no temporaries; the per-pixel test is in
// common/boundaries.h (shared with the CUDA kernel).
#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "ops/common/boundaries.h"
#include "ops/cpu/ops.h"
#include "ops/cpu/pool.h"

namespace semimoe {
namespace cpu {
namespace SEMIMOE_CPU_ISA {
namespace {

template <typename T, int kMode, int kConn>
void run_rows(const T* labels, uint8_t* out, int64_t B, int64_t H, int64_t W, T bg, T maxl,
         int threads) {
  auto row = [&](int64_t r) {
    const int64_t b = r / H, y = r % H;
    const T* img = labels + b * H * W;
    const T* mid = img + y * W;
    const T* up = img + std::max<int64_t>(y - 1, 0) * W;
    const T* dn = img + std::min<int64_t>(y + 1, H - 1) * W;
    uint8_t* o = out + r * W;
    if (W == 1) {
      o[0] = boundary_at<T, kMode, kConn>(up, mid, dn, 0, 0, 0, bg, maxl);
      return;
    }
    o[0] = boundary_at<T, kMode, kConn>(up, mid, dn, 0, 0, 1, bg, maxl);
    // Interior: fixed offsets, so the compiler can vectorise.
    for (int64_t x = 1; x < W - 1; ++x)
      o[x] = boundary_at<T, kMode, kConn>(up, mid, dn, x - 1, x, x + 1, bg, maxl);
    o[W - 1] = boundary_at<T, kMode, kConn>(up, mid, dn, W - 2, W - 1, W - 1, bg, maxl);
  };
  parallel_each(B * H, W, threads, row);
}

// Calls run_rows<T, kMode, kConn>(...) with this call's arguments.
struct Runner {
  const void* labels;
  uint8_t* out;
  int64_t B, H, W, background, max_label;
  int threads;
  template <typename T, int kMode, int kConn>
  void run() const {
    run_rows<T, kMode, kConn>(
        static_cast<const T*>(labels), out, B, H, W, static_cast<T>(background),
        static_cast<T>(max_label), threads);
  }
};

}  // namespace

void find_boundaries(const void* labels, int dtype_code, uint8_t* out, int64_t B, int64_t H,
                     int64_t W, int mode, int connectivity, int64_t background, int64_t max_label,
                     int threads) {
  if (B * H * W == 0) return;
  dispatch_boundaries(dtype_code, mode, connectivity,
                      Runner{labels, out, B, H, W, background, max_label, threads});
}

}  // namespace SEMIMOE_CPU_ISA
}  // namespace cpu
}  // namespace semimoe
