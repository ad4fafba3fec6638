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

// Launches find_boundaries_kernel<T, kMode, kConn> with this call's arguments.
struct Launcher {
  const void* labels;
  uint8_t* out;
  int64_t B, H, W, background, max_label;
  cudaStream_t stream;
  template <typename T, int kMode, int kConn>
  void run() const {
    const int64_t n = B * H * W;
    const int64_t blocks = (n + kThreads - 1) / kThreads;
    const unsigned grid = unsigned(blocks < 65536 ? blocks : 65536);
    find_boundaries_kernel<T, kMode, kConn><<<grid, kThreads, 0, stream>>>(
        static_cast<const T*>(labels), out, B, H, W, static_cast<T>(background),
        static_cast<T>(max_label));
    SEMIMOE_CUDA_CHECK(cudaGetLastError());
  }
};

}  // namespace

void find_boundaries(const void* labels, int dtype_code, uint8_t* out, int64_t B, int64_t H,
                     int64_t W, int mode, int connectivity, int64_t background, int64_t max_label,
                     cudaStream_t stream) {
  if (B < 0 || H < 0 || W < 0) throw std::invalid_argument("find_boundaries: negative size");
  if (B * H * W == 0) return;
  dispatch_boundaries(dtype_code, mode, connectivity,
                      Launcher{labels, out, B, H, W, background, max_label, stream});
}

}  // namespace cuda
}  // namespace semimoe
