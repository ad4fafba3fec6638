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

#include "ops/common/edt_line.h"
#include "ops/cuda/ops_cuda.h"

namespace semimoe {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kVBits = 21;  // bits of the packed line position (positions <= 2^20 + 1)

// Hull line k of one column: (F << kVBits) | v at base[k * stride].
struct PackedHull {
  int64_t* base;
  int64_t stride;
  __device__ __forceinline__ int32_t v(int k) const {
    return int32_t(base[k * stride] & ((int64_t(1) << kVBits) - 1));
  }
  __device__ __forceinline__ int64_t F(int k) const { return base[k * stride] >> kVBits; }
  __device__ __forceinline__ void set(int k, int32_t v_, int64_t F_) const {
    base[k * stride] = (F_ << kVBits) | int64_t(v_);
  }
};

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

// Pass 1: per row, distance along the row to the other class (kFar if none),
// stored as int bits in the float32 buffer g.
__global__ void row_scan_kernel(const uint8_t* __restrict__ mask, float* __restrict__ g,
                                int64_t rows, int64_t W) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const uint8_t* m = mask + r * W;
  float* gr = g + r * W;
  bool prev_c = m[0] != 0;
  int32_t prev = kFar;
  gr[0] = __int_as_float(prev);
  for (int64_t x = 1; x < W; ++x) {
    const bool c = m[x] != 0;
    prev = scan_step(c == prev_c, prev);
    gr[x] = __int_as_float(prev);
    prev_c = c;
  }
  for (int64_t x = W - 2; x >= 0; --x) {
    const bool c = m[x] != 0;
    const int32_t cand = scan_step(c == prev_c, prev);
    prev = min_(__float_as_int(gr[x]), cand);
    gr[x] = __int_as_float(prev);
    prev_c = c;
  }
}

__device__ __forceinline__ float sqrt_d2(int64_t d2) {
  return d2 == kNoneD2 ? __int_as_float(0x7f800000) : sqrtf(float(d2));
}

// Pass 2: per column, the exact envelope down the column.
template <EdtKind kKind>
__global__ void col_envelope_kernel(const uint8_t* __restrict__ mask, const float* g,
                                    float* out, uint8_t* __restrict__ ring, int64_t* hull_ws,
                                    float* __restrict__ col_max, int64_t B, int64_t H, int64_t W,
                                    bool zero_boundary, int64_t ring_r2) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // b * W + x
  if (c >= B * W) return;
  const int64_t b = c / W, x = c % W;
  const int64_t base = b * H * W + x;  // pixel (b, 0, x); row y adds y * W
  const PackedHull hull{hull_ws + c, B * W};
  float mx_in = 0.0f, mx_out = 0.0f;
  edt_line(
      [&](int64_t y) { return mask[base + y * W] != 0; },
      [&](int64_t y) { return __float_as_int(g[base + y * W]); }, H,
      /*want_fg=*/kKind != EdtKind::kRing, /*want_bg=*/kKind != EdtKind::kDistance, hull,
      [&](int64_t y, int64_t d2, bool fg) {
        const int64_t i = base + y * W;
        if (kKind == EdtKind::kDistance) {
          out[i] = sqrt_d2(d2);
        } else if (kKind == EdtKind::kRing) {
          ring[i] = (d2 != kNoneD2 && d2 <= ring_r2) ? 1 : 0;
        } else {
          const float d = sqrt_d2(d2);
          if (fg) {
            mx_in = max_(mx_in, d);
            out[i] = (zero_boundary && d2 == 1) ? 0.0f : d;
            if (ring) ring[i] = 0;
          } else {
            mx_out = max_(mx_out, d);
            out[i] = -d;
            if (ring) ring[i] = (d2 != kNoneD2 && d2 <= ring_r2) ? 1 : 0;
          }
        }
      },
      [&](int64_t a, int64_t e, bool) {
        for (int64_t y = a; y <= e; ++y) {
          if (kKind == EdtKind::kDistance) out[base + y * W] = 0.0f;
          if (kKind == EdtKind::kRing) ring[base + y * W] = 0;
        }
      });
  if (kKind == EdtKind::kSigned) {
    col_max[c] = mx_in;
    col_max[B * W + c] = mx_out;
  }
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
    float mi = img_max[b], mo = img_max[B + b];
    mi = isinf(mi) ? 0.0f : mi;
    mo = isinf(mo) ? 0.0f : mo;
    const float v = sdf[i];
    if (mi == 0.0f || mo == 0.0f) {
      sdf[i] = v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f);
    } else {
      sdf[i] = v > 0.0f ? v / mi : v / mo;
    }
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
