// CPU kernels of semimoe (plain C++17 + OpenMP, no libtorch). All arrays are
// dense row-major (B, H, W) buffers owned by the caller; sizes were validated
// by the Python layer and are re-checked by the bindings.
//
// The kernel sources are compiled once per instruction set (see
// CMakeLists.txt): SEMIMOE_CPU_ISA names the namespace of each copy
// (baseline, avx2), and dispatch.cpp picks one at run time.
#pragma once

#include <cstdint>

#ifndef SEMIMOE_CPU_ISA
#define SEMIMOE_CPU_ISA baseline
#endif

namespace semimoe {
namespace cpu {

// Exact EDT: out[p] = distance from foreground pixel p (mask != 0) to the
// nearest background pixel; 0 on background; +inf when an image has no
// background pixel.
void distance_transform(const uint8_t* mask, float* out, int64_t B, int64_t H, int64_t W,
                        int threads);

// Semi-MoE signed distance (positive inside) and, optionally, the ring target
// (background pixels within Euclidean distance sqrt(ring_r2) of foreground),
// all from one column pass and one row pass. normalize: 0 = none (pixels),
// 1 = per-image max normalisation. ring may be null.
void signed_distance(const uint8_t* mask, float* sdf, uint8_t* ring, int64_t B, int64_t H,
                     int64_t W, int normalize, bool zero_boundary, int64_t ring_r2, int threads);

// The full Semi-MoE target set from a label map of any integer dtype
// (dtype_code as find_boundaries; bool = uint8): int64 mask (label != 0),
// signed distance as signed_distance, and the int64 ring, in one pass.
void targets(const void* labels, int dtype_code, int64_t* mask_out, float* sdf, int64_t* ring_out,
             int64_t B, int64_t H, int64_t W, int normalize, bool zero_boundary, int64_t ring_r2,
             int threads);

// Ring alone: background pixels with a foreground pixel within sqrt(ring_r2).
void ring(const uint8_t* mask, uint8_t* out, int64_t B, int64_t H, int64_t W, int64_t ring_r2,
          int threads);

// scikit-image find_boundaries (modes thick=0, inner=1, outer=2) on label maps.
// dtype_code: 0 uint8, 1 int8, 2 int16, 3 int32, 4 int64.
void find_boundaries(const void* labels, int dtype_code, uint8_t* out, int64_t B, int64_t H,
                     int64_t W, int mode, int connectivity, int64_t background, int64_t max_label,
                     int threads);

// The CUDA kernels' algorithm run on the host (tests): kind 0 distance,
// 1 signed distance (+ optional ring), 2 ring. Single-threaded.
void edt_gpu_layout(int kind, const uint8_t* mask, float* out, uint8_t* ring, int64_t B,
                    int64_t H, int64_t W, int normalize, bool zero_boundary, int64_t ring_r2);

// The instruction set of the kernels in use ("avx2" or "baseline").
const char* active_isa();
// Force an instruction set ("avx2", "baseline" or "auto"); returns false when
// the CPU or the build does not have it. Used by tests to cover both copies.
bool set_isa(const char* name);

#define SEMIMOE_DECLARE_ISA(ns)                                                                  \
  namespace ns {                                                                                 \
  void distance_transform(const uint8_t*, float*, int64_t, int64_t, int64_t, int);               \
  void signed_distance(const uint8_t*, float*, uint8_t*, int64_t, int64_t, int64_t, int, bool,   \
                       int64_t, int);                                                            \
  void targets(const void*, int, int64_t*, float*, int64_t*, int64_t, int64_t, int64_t, int, bool, \
               int64_t, int);                                                                    \
  void ring(const uint8_t*, uint8_t*, int64_t, int64_t, int64_t, int64_t, int);                  \
  void find_boundaries(const void*, int, uint8_t*, int64_t, int64_t, int64_t, int, int, int64_t, \
                       int64_t, int);                                                            \
  }
SEMIMOE_DECLARE_ISA(baseline)
SEMIMOE_DECLARE_ISA(avx2)
#undef SEMIMOE_DECLARE_ISA

}  // namespace cpu
}  // namespace semimoe
