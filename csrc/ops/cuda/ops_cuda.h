// CUDA kernels of semimoe. Host functions take device pointers of dense
// row-major (B, H, W) buffers allocated by the caller (PyTorch's caching
// allocator), launch on the given stream, never allocate or synchronise
// (so they can be captured in a CUDA graph), and throw std::runtime_error on
// any CUDA error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops/common/edt_transposed.h"

namespace semimoe {
namespace cuda {

#define SEMIMOE_CUDA_CHECK(expr)                                                             \
  do {                                                                                       \
    const cudaError_t semimoe_err_ = (expr);                                                 \
    if (semimoe_err_ != cudaSuccess)                                                         \
      throw std::runtime_error(std::string("semimoe CUDA error: ") +                         \
                               cudaGetErrorString(semimoe_err_) + " (" #expr ") at " +      \
                               __FILE__ + ":" + std::to_string(__LINE__));                  \
  } while (0)

using semimoe::EdtKind;

// Bytes of device workspace the distance-transform ops need for (B, H, W).
int64_t edt_workspace_bytes(EdtKind kind, int64_t B, int64_t H, int64_t W);

void distance_transform(const uint8_t* mask, float* out, int64_t B, int64_t H, int64_t W,
                        void* workspace, int64_t workspace_bytes, cudaStream_t stream);

void signed_distance(const uint8_t* mask, float* sdf, uint8_t* ring, int64_t B, int64_t H,
                     int64_t W, int normalize, bool zero_boundary, int64_t ring_r2,
                     void* workspace, int64_t workspace_bytes, cudaStream_t stream);

void ring(const uint8_t* mask, uint8_t* out, int64_t B, int64_t H, int64_t W, int64_t ring_r2,
          void* workspace, int64_t workspace_bytes, cudaStream_t stream);

void find_boundaries(const void* labels, int dtype_code, uint8_t* out, int64_t B, int64_t H,
                     int64_t W, int mode, int connectivity, int64_t background, int64_t max_label,
                     cudaStream_t stream);

}  // namespace cuda
}  // namespace semimoe
