// CUDA exact distance transform, Semi-MoE signed distance and ring target,
// batched: every launch covers the whole batch, and a call makes 2 launches
// (EDT, ring) or 4 (signed distance with per-image normalisation),
// independent of B.
//
// Layout of the work (the transpose of the CPU kernels, so that the heavy
// pass is coalesced):
//   1. row_scan     one thread per (image, row): distance along the row to
//                   the nearest pixel of the other class (two sweeps).
//   2. col_envelope one thread per (image, column): the exact lower envelope
//                   of parabolas down the column (common/edt_line.h), split
//                   into runs of one class; neighbouring threads are
//                   neighbouring columns, so every load and store of a warp
//                   is one contiguous segment of a row. The hull lives in an
//                   interleaved workspace ([line k][column]) for the same
//                   reason, one packed int64 per line.
//   3. image_max    (signed distance) one block per image reduces the column
//                   maxima of the inside/outside distances.
//   4. normalize    (signed distance) elementwise division by those maxima.
// The row distances are stored in the output buffer itself (as int bits in
// the float32 buffer) except for the ring, whose output is uint8.
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/common/edt_transposed.h"
#include "ops/cuda/ops_cuda.h"

namespace semimoe {
namespace cuda {
namespace {

constexpr int kThreads = 128;

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

int64_t align_up(int64_t n) { return (n + 255) / 256 * 256; }

// Workspace carve-up: [hull (H+2) x B x W int64][row distances B x H x W
// float32, ring only][column maxima 2 x B x W float32][image maxima 2 x B].
struct Workspace {
  int64_t* hull;
  float* gbuf;
  float* col_max;
  float* img_max;
};

Workspace carve(EdtKind kind, void* ws, int64_t bytes, int64_t B, int64_t H, int64_t W) {
  if (bytes < edt_workspace_bytes(kind, B, H, W))
    throw std::invalid_argument("semimoe CUDA distance transform: workspace too small");
  char* p = static_cast<char*>(ws);
  Workspace w{};
  w.hull = reinterpret_cast<int64_t*>(p);
  p += align_up((H + 2) * B * W * int64_t(sizeof(int64_t)));
  if (kind == EdtKind::kRing) {
    w.gbuf = reinterpret_cast<float*>(p);
    p += align_up(B * H * W * int64_t(sizeof(float)));
  }
  if (kind == EdtKind::kSigned) {
    w.col_max = reinterpret_cast<float*>(p);
    p += align_up(2 * B * W * int64_t(sizeof(float)));
    w.img_max = reinterpret_cast<float*>(p);
  }
  return w;
}

__global__ void row_scan_kernel(const uint8_t* __restrict__ mask, float* __restrict__ g,
                                int64_t rows, int64_t W) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < rows) row_scan(mask + r * W, g + r * W, W);
}

template <EdtKind kKind>
__global__ void col_envelope_kernel(const uint8_t* __restrict__ mask, const float* g,
                                    float* out, uint8_t* ring, int64_t* hull_ws,
                                    float* col_max, int64_t B, int64_t H, int64_t W,
                                    bool zero_boundary, int64_t ring_r2) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // b * W + x
  if (c < B * W)
    column_envelope<kKind>(mask, g, out, ring, hull_ws, col_max, B, H, W, zero_boundary,
                           ring_r2, c);
}

// Pass 3: per image, the maxima of the inside and outside distances.
__global__ void image_max_kernel(const float* __restrict__ col_max, float* __restrict__ img_max,
                                 int64_t B, int64_t W) {
  __shared__ float s_in[kThreads], s_out[kThreads];
  const int64_t b = blockIdx.x;
  float mi = 0.0f, mo = 0.0f;
  for (int64_t x = threadIdx.x; x < W; x += blockDim.x) {
    mi = max_(mi, col_max[b * W + x]);
    mo = max_(mo, col_max[B * W + b * W + x]);
  }
  s_in[threadIdx.x] = mi;
  s_out[threadIdx.x] = mo;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      s_in[threadIdx.x] = max_(s_in[threadIdx.x], s_in[threadIdx.x + s]);
      s_out[threadIdx.x] = max_(s_out[threadIdx.x], s_out[threadIdx.x + s]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    img_max[b] = s_in[0];
    img_max[B + b] = s_out[0];
  }
}

// Pass 4: per-image normalisation; single-class images become +-1.
__global__ void normalize_kernel(float* __restrict__ sdf, const float* __restrict__ img_max,
                                 int64_t B, int64_t HW) {
  const int64_t n = B * HW;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / HW;
    sdf[i] = normalize_sdf(sdf[i], img_max[b], img_max[B + b]);
  }
}

void check_sizes(int64_t B, int64_t H, int64_t W) {
  if (B < 0 || H < 0 || W < 0) throw std::invalid_argument("semimoe CUDA: negative size");
  if (H >= kMaxSide || W >= kMaxSide)
    throw std::invalid_argument("semimoe CUDA: image sides must be below 2^20");
}

}  // namespace

int64_t edt_workspace_bytes(EdtKind kind, int64_t B, int64_t H, int64_t W) {
  check_sizes(B, H, W);
  int64_t n = align_up((H + 2) * B * W * int64_t(sizeof(int64_t)));
  if (kind == EdtKind::kRing) n += align_up(B * H * W * int64_t(sizeof(float)));
  if (kind == EdtKind::kSigned)
    n += align_up(2 * B * W * int64_t(sizeof(float))) + align_up(2 * B * int64_t(sizeof(float)));
  return n;
}

void distance_transform(const uint8_t* mask, float* out, int64_t B, int64_t H, int64_t W,
                        void* workspace, int64_t workspace_bytes, cudaStream_t stream) {
  check_sizes(B, H, W);
  if (B * H * W == 0) return;
  const Workspace ws = carve(EdtKind::kDistance, workspace, workspace_bytes, B, H, W);
  row_scan_kernel<<<blocks_for(B * H), kThreads, 0, stream>>>(mask, out, B * H, W);
  SEMIMOE_CUDA_CHECK(cudaGetLastError());
  col_envelope_kernel<EdtKind::kDistance><<<blocks_for(B * W), kThreads, 0, stream>>>(
      mask, out, out, nullptr, ws.hull, nullptr, B, H, W, false, 0);
  SEMIMOE_CUDA_CHECK(cudaGetLastError());
}

void signed_distance(const uint8_t* mask, float* sdf, uint8_t* ring, int64_t B, int64_t H,
                     int64_t W, int normalize, bool zero_boundary, int64_t ring_r2,
                     void* workspace, int64_t workspace_bytes, cudaStream_t stream) {
  check_sizes(B, H, W);
  if (normalize != 0 && normalize != 1)
    throw std::invalid_argument("signed_distance: normalize code must be 0 or 1");
  if (B * H * W == 0) return;
  const Workspace ws = carve(EdtKind::kSigned, workspace, workspace_bytes, B, H, W);
  row_scan_kernel<<<blocks_for(B * H), kThreads, 0, stream>>>(mask, sdf, B * H, W);
  SEMIMOE_CUDA_CHECK(cudaGetLastError());
  col_envelope_kernel<EdtKind::kSigned><<<blocks_for(B * W), kThreads, 0, stream>>>(
      mask, sdf, sdf, ring, ws.hull, ws.col_max, B, H, W, zero_boundary, ring_r2);
  SEMIMOE_CUDA_CHECK(cudaGetLastError());
  if (normalize == 0) return;
  image_max_kernel<<<B, kThreads, 0, stream>>>(ws.col_max, ws.img_max, B, W);
  SEMIMOE_CUDA_CHECK(cudaGetLastError());
  const int64_t n = B * H * W;
  const int64_t grid = n < int64_t(1) << 20 ? blocks_for(n) : 4096;
  normalize_kernel<<<grid, kThreads, 0, stream>>>(sdf, ws.img_max, B, H * W);
  SEMIMOE_CUDA_CHECK(cudaGetLastError());
}

void ring(const uint8_t* mask, uint8_t* out, int64_t B, int64_t H, int64_t W, int64_t ring_r2,
          void* workspace, int64_t workspace_bytes, cudaStream_t stream) {
  check_sizes(B, H, W);
  if (B * H * W == 0) return;
  const Workspace ws = carve(EdtKind::kRing, workspace, workspace_bytes, B, H, W);
  row_scan_kernel<<<blocks_for(B * H), kThreads, 0, stream>>>(mask, ws.gbuf, B * H, W);
  SEMIMOE_CUDA_CHECK(cudaGetLastError());
  col_envelope_kernel<EdtKind::kRing><<<blocks_for(B * W), kThreads, 0, stream>>>(
      mask, ws.gbuf, nullptr, out, ws.hull, nullptr, B, H, W, false, ring_r2);
  SEMIMOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda
}  // namespace semimoe
