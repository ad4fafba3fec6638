// pybind11 bindings of the CUDA kernels: semimoe._C_cuda.
// Functions take raw device pointers (uintptr_t) of buffers allocated by
// PyTorch and the stream as an integer (torch.cuda.current_stream().cuda_stream),
// release the GIL, and raise RuntimeError on CUDA errors.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "ops/cuda/ops_cuda.h"

namespace py = pybind11;
namespace sc = semimoe::cuda;

namespace {

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

std::string build_info() {
  int rt = 0;
  cudaRuntimeGetVersion(&rt);
  std::string s = "CUDA runtime " + std::to_string(rt / 1000) + "." + std::to_string((rt % 1000) / 10);
  s += " (static), built for sm " SEMIMOE_CUDA_ARCHS_STR;
  return s;
}

int device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
    cudaGetLastError();  // clear the sticky-free error state
    return 0;
  }
  SEMIMOE_CUDA_CHECK(e);
  return n;
}

sc::EdtKind kind_of(int k) {
  if (k < 0 || k > 2) throw std::invalid_argument("edt kind must be 0, 1 or 2");
  return static_cast<sc::EdtKind>(k);
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "semimoe CUDA kernels (exact EDT, signed distance, boundaries)";
  m.def("build_info", &build_info);
  m.def("device_count", &device_count);
  m.def(
      "edt_workspace_bytes",
      [](int kind, int64_t B, int64_t H, int64_t W) {
        return sc::edt_workspace_bytes(kind_of(kind), B, H, W);
      },
      py::arg("kind"), py::arg("B"), py::arg("H"), py::arg("W"));
  m.def(
      "distance_transform",
      [](uintptr_t mask, uintptr_t out, int64_t B, int64_t H, int64_t W, uintptr_t ws,
         int64_t ws_bytes, uintptr_t stream) {
        sc::distance_transform(ptr<const uint8_t>(mask), ptr<float>(out), B, H, W,
                               ptr<void>(ws), ws_bytes, as_stream(stream));
      },
      py::arg("mask"), py::arg("out"), py::arg("B"), py::arg("H"), py::arg("W"),
      py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "signed_distance",
      [](uintptr_t mask, uintptr_t sdf, uintptr_t ring, int64_t B, int64_t H, int64_t W,
         int normalize, bool zero_boundary, int64_t ring_r2, uintptr_t ws, int64_t ws_bytes,
         uintptr_t stream) {
        sc::signed_distance(ptr<const uint8_t>(mask), ptr<float>(sdf), ptr<uint8_t>(ring), B, H,
                            W, normalize, zero_boundary, ring_r2, ptr<void>(ws), ws_bytes,
                            as_stream(stream));
      },
      py::arg("mask"), py::arg("sdf"), py::arg("ring"), py::arg("B"), py::arg("H"), py::arg("W"),
      py::arg("normalize"), py::arg("zero_boundary"), py::arg("ring_r2"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "ring",
      [](uintptr_t mask, uintptr_t out, int64_t B, int64_t H, int64_t W, int64_t ring_r2,
         uintptr_t ws, int64_t ws_bytes, uintptr_t stream) {
        sc::ring(ptr<const uint8_t>(mask), ptr<uint8_t>(out), B, H, W, ring_r2, ptr<void>(ws),
                 ws_bytes, as_stream(stream));
      },
      py::arg("mask"), py::arg("out"), py::arg("B"), py::arg("H"), py::arg("W"),
      py::arg("ring_r2"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "find_boundaries",
      [](uintptr_t labels, int dtype_code, uintptr_t out, int64_t B, int64_t H, int64_t W,
         int mode, int connectivity, int64_t background, int64_t max_label, uintptr_t stream) {
        sc::find_boundaries(ptr<const void>(labels), dtype_code, ptr<uint8_t>(out), B, H, W, mode,
                            connectivity, background, max_label, as_stream(stream));
      },
      py::arg("labels"), py::arg("dtype_code"), py::arg("out"), py::arg("B"), py::arg("H"),
      py::arg("W"), py::arg("mode"), py::arg("connectivity"), py::arg("background"),
      py::arg("max_label"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
}
