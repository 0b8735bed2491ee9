// Entry point of the angle_sums op: routes to the CPU or CUDA kernel (device < 0 is CPU).
#include "angle_sums/angle_sums.h"

#include "bindings.h"

namespace py = pybind11;

namespace cryoorient {

void register_angle_sums(py::module_& m) {
  m.def(
      "angle_sums",
      [](std::uintptr_t num, std::uintptr_t den, std::uintptr_t scale, std::uintptr_t bias, double floor,
         std::uintptr_t out, int64_t R, int64_t J, int64_t L, int dtype, int device, std::uintptr_t stream,
         int nthreads) {
        const AngleSumsArgs a{ptr(num), ptr(den), ptr(scale), ptr(bias), floor, R, J, L, dtype};
        py::gil_scoped_release nogil;
        if (device < 0) return angle_sums_cpu(a, ptr(out), nthreads);
#ifdef CRYOORIENT_WITH_CUDA
        angle_sums_cuda(a, ptr(out), device, stream);
#else
        fail("cryoorient was built without CUDA kernels");
#endif
      },
      "out (R×J) = Σ_l exp(max(scale·max(num/den, 0)² + bias, −floor)) over the L angles of num (R×J×L).");
}

}  // namespace cryoorient
