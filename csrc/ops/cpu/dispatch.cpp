// Run-time choice between the baseline and AVX2 (x86-64-v3) copies of the CPU
// kernels. SEMIMOE_CPU_ISA=baseline|avx2 in the environment overrides the
// automatic choice at load time; set_isa() does so later (tests).
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "ops/cpu/ops.h"

namespace semimoe {
namespace cpu {
namespace {

bool cpu_has_avx2() {
#if defined(SEMIMOE_HAVE_AVX2_COPY) && (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("bmi2");
#else
  return false;
#endif
}

std::atomic<bool> g_use_avx2{[] {
  const char* env = std::getenv("SEMIMOE_CPU_ISA");
  if (env && std::strcmp(env, "baseline") == 0) return false;
  return cpu_has_avx2();
}()};

}  // namespace

const char* active_isa() { return g_use_avx2 ? "avx2" : "baseline"; }

bool set_isa(const char* name) {
  if (std::strcmp(name, "baseline") == 0) {
    g_use_avx2 = false;
    return true;
  }
  if (std::strcmp(name, "avx2") == 0 || std::strcmp(name, "auto") == 0) {
    const bool ok = cpu_has_avx2();
    g_use_avx2 = ok;
    return ok || std::strcmp(name, "auto") == 0;
  }
  return false;
}

#ifdef SEMIMOE_HAVE_AVX2_COPY
#define SEMIMOE_CALL(fn, ...) (g_use_avx2 ? avx2::fn(__VA_ARGS__) : baseline::fn(__VA_ARGS__))
#else
#define SEMIMOE_CALL(fn, ...) baseline::fn(__VA_ARGS__)
#endif

void distance_transform(const uint8_t* mask, float* out, int64_t B, int64_t H, int64_t W,
                        int threads) {
  SEMIMOE_CALL(distance_transform, mask, out, B, H, W, threads);
}

void signed_distance(const uint8_t* mask, float* sdf, uint8_t* ring, int64_t B, int64_t H,
                     int64_t W, int normalize, bool zero_boundary, int64_t ring_r2, int threads) {
  SEMIMOE_CALL(signed_distance, mask, sdf, ring, B, H, W, normalize, zero_boundary, ring_r2,
               threads);
}

void targets(const void* labels, int dtype_code, int64_t* mask_out, float* sdf, int64_t* ring_out,
             int64_t B, int64_t H, int64_t W, int normalize, bool zero_boundary, int64_t ring_r2,
             int threads) {
  SEMIMOE_CALL(targets, labels, dtype_code, mask_out, sdf, ring_out, B, H, W, normalize,
               zero_boundary, ring_r2, threads);
}

void ring(const uint8_t* mask, uint8_t* out, int64_t B, int64_t H, int64_t W, int64_t ring_r2,
          int threads) {
  SEMIMOE_CALL(ring, mask, out, B, H, W, ring_r2, threads);
}

void find_boundaries(const void* labels, int dtype_code, uint8_t* out, int64_t B, int64_t H,
                     int64_t W, int mode, int connectivity, int64_t background, int64_t max_label,
                     int threads) {
  SEMIMOE_CALL(find_boundaries, labels, dtype_code, out, B, H, W, mode, connectivity, background,
               max_label, threads);
}

}  // namespace cpu
}  // namespace semimoe
