// Host driver that runs the CUDA distance-transform kernels' per-thread
// bodies (common/edt_transposed.h) sequentially, in the GPU's order and with
// the GPU's workspace layout. Exposed as semimoe._C._edt_gpu_layout for the
// tests: it checks the GPU algorithm on machines without a GPU.
#include <vector>

#include "ops/common/edt_transposed.h"
#include "ops/cpu/ops.h"

namespace semimoe {
namespace cpu {

void edt_gpu_layout(int kind, const uint8_t* mask, float* out, uint8_t* ring, int64_t B,
                    int64_t H, int64_t W, int normalize, bool zero_boundary, int64_t ring_r2) {
  if (B * H * W == 0) return;
  std::vector<int64_t> hull((H + 2) * B * W);
  std::vector<float> gbuf(kind == int(EdtKind::kRing) ? B * H * W : 0);
  std::vector<float> col_max(2 * B * W);
  float* g = kind == int(EdtKind::kRing) ? gbuf.data() : out;
  for (int64_t r = 0; r < B * H; ++r) row_scan(mask + r * W, g + r * W, W);
  for (int64_t c = 0; c < B * W; ++c) {
    switch (kind) {
      case int(EdtKind::kDistance):
        column_envelope<EdtKind::kDistance>(mask, g, out, nullptr, hull.data(), nullptr, B, H,
                                            W, false, 0, c);
        break;
      case int(EdtKind::kSigned):
        column_envelope<EdtKind::kSigned>(mask, g, out, ring, hull.data(), col_max.data(), B, H,
                                          W, zero_boundary, ring_r2, c);
        break;
      default:
        column_envelope<EdtKind::kRing>(mask, g, nullptr, ring, hull.data(), nullptr, B, H, W,
                                        false, ring_r2, c);
    }
  }
  if (kind != int(EdtKind::kSigned) || normalize == 0) return;
  for (int64_t b = 0; b < B; ++b) {
    float mi = 0.0f, mo = 0.0f;
    for (int64_t x = 0; x < W; ++x) {
      mi = max_(mi, col_max[b * W + x]);
      mo = max_(mo, col_max[B * W + b * W + x]);
    }
    for (int64_t i = b * H * W; i < (b + 1) * H * W; ++i) out[i] = normalize_sdf(out[i], mi, mo);
  }
}

}  // namespace cpu
}  // namespace semimoe
