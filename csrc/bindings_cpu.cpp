// pybind11 bindings of the CPU kernels: semimoe._C.
// Functions take raw data pointers (uintptr_t) of dense buffers allocated and
// validated by the Python layer, re-check the scalars, and release the GIL.
#include <pybind11/pybind11.h>


#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>

#include "ops/common/edt_line.h"
#include "ops/cpu/ops.h"
#include "ops/cpu/pool.h"

namespace py = pybind11;
using semimoe::kMaxSide;

namespace {

void check_shape(const char* op, int64_t B, int64_t H, int64_t W, int threads) {
  if (B < 0 || H < 0 || W < 0)
    throw std::invalid_argument(std::string(op) + ": sizes must be non-negative");
  if (H >= kMaxSide || W >= kMaxSide)
    throw std::invalid_argument(std::string(op) + ": image sides must be below 2^20");
  if (threads < 1) throw std::invalid_argument(std::string(op) + ": threads must be >= 1");
}

void check_ptr(const char* op, const char* name, uintptr_t p, int64_t n) {
  if (n > 0 && p == 0)
    throw std::invalid_argument(std::string(op) + ": null pointer for " + name);
}

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

std::string build_info() {
  std::string s = "C++ ";
  s += std::to_string(__cplusplus);
#if defined(__clang__)
  s += ", clang " __clang_version__;
#elif defined(__GNUC__)
  s += ", gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__);
#endif
  s += ", thread pool (" + std::to_string(semimoe::cpu::pool_size()) + " threads started, " +
       std::to_string(std::thread::hardware_concurrency()) + " hardware threads)";
  s += ", kernels " + std::string(semimoe::cpu::active_isa());
  return s;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "semimoe CPU kernels (exact EDT, signed distance, boundaries)";
  m.def("build_info", &build_info);
  m.def("active_isa", &semimoe::cpu::active_isa);
  m.def("pool_size", &semimoe::cpu::pool_size,
        "Threads the kernels' pool has started in this process");
  m.def("available_threads", &semimoe::cpu::available_threads, py::arg("requested"),
        "Threads a kernel call asking for `requested` would use now (idle cores + 1)");
  m.def(
      "set_isa", [](const std::string& name) { return semimoe::cpu::set_isa(name.c_str()); },
      py::arg("name"), "Force the kernel copy: 'avx2', 'baseline' or 'auto'; False if unavailable.");

  m.def(
      "distance_transform",
      [](uintptr_t mask, uintptr_t out, int64_t B, int64_t H, int64_t W, int threads) {
        check_shape("distance_transform", B, H, W, threads);
        check_ptr("distance_transform", "mask", mask, B * H * W);
        check_ptr("distance_transform", "out", out, B * H * W);
        semimoe::cpu::distance_transform(ptr<const uint8_t>(mask), ptr<float>(out), B, H, W,
                                         threads);
      },
      py::arg("mask"), py::arg("out"), py::arg("B"), py::arg("H"), py::arg("W"),
      py::arg("threads"), py::call_guard<py::gil_scoped_release>());

  m.def(
      "signed_distance",
      [](uintptr_t mask, uintptr_t sdf, uintptr_t ring, int64_t B, int64_t H, int64_t W,
         int normalize, bool zero_boundary, int64_t ring_r2, int threads) {
        check_shape("signed_distance", B, H, W, threads);
        check_ptr("signed_distance", "mask", mask, B * H * W);
        check_ptr("signed_distance", "sdf", sdf, B * H * W);
        if (normalize != 0 && normalize != 1)
          throw std::invalid_argument("signed_distance: normalize code must be 0 or 1");
        semimoe::cpu::signed_distance(ptr<const uint8_t>(mask), ptr<float>(sdf),
                                      ptr<uint8_t>(ring), B, H, W, normalize, zero_boundary,
                                      ring_r2, threads);
      },
      py::arg("mask"), py::arg("sdf"), py::arg("ring"), py::arg("B"), py::arg("H"),
      py::arg("W"), py::arg("normalize"), py::arg("zero_boundary"), py::arg("ring_r2"),
      py::arg("threads"), py::call_guard<py::gil_scoped_release>());

  m.def(
      "targets",
      [](uintptr_t labels, int dtype_code, uintptr_t mask_out, uintptr_t sdf, uintptr_t ring_out,
         int64_t B, int64_t H, int64_t W, int normalize, bool zero_boundary, int64_t ring_r2,
         int threads) {
        check_shape("targets", B, H, W, threads);
        check_ptr("targets", "labels", labels, B * H * W);
        check_ptr("targets", "mask_out", mask_out, B * H * W);
        check_ptr("targets", "sdf", sdf, B * H * W);
        check_ptr("targets", "ring_out", ring_out, B * H * W);
        if (normalize != 0 && normalize != 1)
          throw std::invalid_argument("targets: normalize code must be 0 or 1");
        semimoe::cpu::targets(ptr<const void>(labels), dtype_code, ptr<int64_t>(mask_out),
                              ptr<float>(sdf), ptr<int64_t>(ring_out), B, H, W, normalize,
                              zero_boundary, ring_r2, threads);
      },
      py::arg("labels"), py::arg("dtype_code"), py::arg("mask_out"), py::arg("sdf"),
      py::arg("ring_out"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("normalize"),
      py::arg("zero_boundary"), py::arg("ring_r2"), py::arg("threads"),
      py::call_guard<py::gil_scoped_release>(),
      "int64 mask, float32 signed distance and int64 ring of a label map, in one pass.");

  m.def(
      "ring",
      [](uintptr_t mask, uintptr_t out, int64_t B, int64_t H, int64_t W, int64_t ring_r2,
         int threads) {
        check_shape("ring", B, H, W, threads);
        check_ptr("ring", "mask", mask, B * H * W);
        check_ptr("ring", "out", out, B * H * W);
        semimoe::cpu::ring(ptr<const uint8_t>(mask), ptr<uint8_t>(out), B, H, W, ring_r2,
                           threads);
      },
      py::arg("mask"), py::arg("out"), py::arg("B"), py::arg("H"), py::arg("W"),
      py::arg("ring_r2"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());

  m.def(
      "_edt_gpu_layout",
      [](int kind, uintptr_t mask, uintptr_t out, uintptr_t ring, int64_t B, int64_t H, int64_t W,
         int normalize, bool zero_boundary, int64_t ring_r2) {
        check_shape("_edt_gpu_layout", B, H, W, 1);
        if (kind < 0 || kind > 2) throw std::invalid_argument("_edt_gpu_layout: kind must be 0..2");
        semimoe::cpu::edt_gpu_layout(kind, ptr<const uint8_t>(mask), ptr<float>(out),
                                     ptr<uint8_t>(ring), B, H, W, normalize, zero_boundary,
                                     ring_r2);
      },
      py::arg("kind"), py::arg("mask"), py::arg("out"), py::arg("ring"), py::arg("B"),
      py::arg("H"), py::arg("W"), py::arg("normalize"), py::arg("zero_boundary"),
      py::arg("ring_r2"), py::call_guard<py::gil_scoped_release>(),
      "Run the CUDA kernels' distance-transform algorithm on the host (for tests).");

  m.def(
      "find_boundaries",
      [](uintptr_t labels, int dtype_code, uintptr_t out, int64_t B, int64_t H, int64_t W,
         int mode, int connectivity, int64_t background, int64_t max_label, int threads) {
        check_shape("find_boundaries", B, H, W, threads);
        check_ptr("find_boundaries", "labels", labels, B * H * W);
        check_ptr("find_boundaries", "out", out, B * H * W);
        semimoe::cpu::find_boundaries(ptr<const void>(labels), dtype_code, ptr<uint8_t>(out), B,
                                      H, W, mode, connectivity, background, max_label, threads);
      },
      py::arg("labels"), py::arg("dtype_code"), py::arg("out"), py::arg("B"), py::arg("H"),
      py::arg("W"), py::arg("mode"), py::arg("connectivity"), py::arg("background"),
      py::arg("max_label"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());
}
