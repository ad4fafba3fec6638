// CUDA find_boundaries with scikit-image semantics: one thread per pixel
// (grid-stride), one launch per call for the whole batch; the per-pixel test
// is common/boundaries.h, shared with the CPU kernel.
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/common/boundaries.h"
#include "ops/cuda/ops_cuda.h"

namespace semimoe {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, int kMode, int kConn>
__global__ void find_boundaries_kernel(const T* __restrict__ labels, uint8_t* __restrict__ out,
                                       int64_t B, int64_t H, int64_t W, T bg, T maxl) {
  const int64_t n = B * H * W;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % W;
    const int64_t r = i / W;  // b * H + y
    const int64_t y = r % H;
    const T* img = labels + (r - y) * W;
    const T* mid = img + y * W;
    const T* up = img + max_<int64_t>(y - 1, 0) * W;
    const T* dn = img + min_<int64_t>(y + 1, H - 1) * W;
    const int64_t xl = max_<int64_t>(x - 1, 0), xr = min_<int64_t>(x + 1, W - 1);
    out[i] = boundary_at<T, kMode, kConn>(up, mid, dn, xl, x, xr, bg, maxl);
  }
}

template <typename T, int kMode, int kConn>
void launch(const void* labels, uint8_t* out, int64_t B, int64_t H, int64_t W, int64_t bg,
            int64_t maxl, cudaStream_t stream) {
  const int64_t n = B * H * W;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  const unsigned grid = unsigned(blocks < 65536 ? blocks : 65536);
  find_boundaries_kernel<T, kMode, kConn><<<grid, kThreads, 0, stream>>>(
      static_cast<const T*>(labels), out, B, H, W, static_cast<T>(bg), static_cast<T>(maxl));
  SEMIMOE_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void dispatch_mode(const void* labels, uint8_t* out, int64_t B, int64_t H, int64_t W, int mode,
                   int connectivity, int64_t bg, int64_t maxl, cudaStream_t s) {
  const bool c2 = connectivity == 2;
  switch (mode) {
    case kThick:
      return c2 ? launch<T, kThick, 2>(labels, out, B, H, W, bg, maxl, s)
                : launch<T, kThick, 1>(labels, out, B, H, W, bg, maxl, s);
    case kInner:
      return c2 ? launch<T, kInner, 2>(labels, out, B, H, W, bg, maxl, s)
                : launch<T, kInner, 1>(labels, out, B, H, W, bg, maxl, s);
    case kOuter:
      return c2 ? launch<T, kOuter, 2>(labels, out, B, H, W, bg, maxl, s)
                : launch<T, kOuter, 1>(labels, out, B, H, W, bg, maxl, s);
    default:
      throw std::invalid_argument("find_boundaries: mode code must be 0 (thick), 1 (inner) or 2 (outer)");
  }
}

}  // namespace

void find_boundaries(const void* labels, int dtype_code, uint8_t* out, int64_t B, int64_t H,
                     int64_t W, int mode, int connectivity, int64_t background, int64_t max_label,
                     cudaStream_t stream) {
  if (connectivity != 1 && connectivity != 2)
    throw std::invalid_argument("find_boundaries: connectivity must be 1 or 2");
  if (B < 0 || H < 0 || W < 0) throw std::invalid_argument("find_boundaries: negative size");
  if (B * H * W == 0) return;
  switch (dtype_code) {
    case 0: return dispatch_mode<uint8_t>(labels, out, B, H, W, mode, connectivity, background, max_label, stream);
    case 1: return dispatch_mode<int8_t>(labels, out, B, H, W, mode, connectivity, background, max_label, stream);
    case 2: return dispatch_mode<int16_t>(labels, out, B, H, W, mode, connectivity, background, max_label, stream);
    case 3: return dispatch_mode<int32_t>(labels, out, B, H, W, mode, connectivity, background, max_label, stream);
    case 4: return dispatch_mode<int64_t>(labels, out, B, H, W, mode, connectivity, background, max_label, stream);
    default:
      throw std::invalid_argument("find_boundaries: dtype code must be 0..4 (uint8, int8, int16, int32, int64)");
  }
}

}  // namespace cuda
}  // namespace semimoe
