// The cryoorient._C module: build facts plus every op's entry points.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings.h"

#ifdef CRYOORIENT_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace py = pybind11;

namespace {

// Architecture names as CMake lists them ("80", "90a", ...).
std::vector<std::string> cuda_architectures() {
  std::vector<std::string> out;
#ifdef CRYOORIENT_CUDA_ARCHS
  std::string s = CRYOORIENT_CUDA_ARCHS;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    const std::string tok = s.substr(pos, end - pos);
    if (!tok.empty()) out.push_back(tok);
    pos = end + 1;
  }
#endif
  return out;
}

int cuda_device_count() {
#ifdef CRYOORIENT_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "cryoorient's compiled kernels (raw-pointer interface; use cryoorient.ops)";
  m.attr("version") = CRYOORIENT_VERSION;
#ifdef CRYOORIENT_WITH_CUDA
  m.attr("cuda_compiled") = true;
  m.attr("cuda_runtime_version") = CUDART_VERSION;
#else
  m.attr("cuda_compiled") = false;
  m.attr("cuda_runtime_version") = 0;
#endif
  m.def("cuda_architectures", &cuda_architectures, "CUDA architectures the kernels were compiled for.");
  m.def("cuda_device_count", &cuda_device_count, "CUDA devices visible to the compiled kernels (0 if none).");
  cryoorient::register_qdist(m);
  cryoorient::register_align_loss(m);
  cryoorient::register_pair_loss(m);
  cryoorient::register_allpairs(m);
  cryoorient::register_angle_sums(m);
}
