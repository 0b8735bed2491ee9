// Entry point of the qdist op: routes to the CPU or CUDA kernel (device < 0 is CPU).
#include "qdist/qdist.h"

#include "bindings.h"
#include "common.h"

namespace py = pybind11;

namespace cryoorient {

void register_qdist(py::module_& m) {
  m.def(
      "qdist_forward",
      [](std::uintptr_t q, std::uintptr_t i, std::uintptr_t j, std::uintptr_t out, int64_t P, int64_t M, int dtype,
         int itype, int device, std::uintptr_t stream, int nthreads) {
        const QDistArgs a{ptr(q), ptr(i), ptr(j), P, M, dtype, itype};
        py::gil_scoped_release nogil;
        if (device < 0) return qdist_forward_cpu(a, ptr(out), nthreads);
#ifdef CRYOORIENT_WITH_CUDA
        qdist_forward_cuda(a, ptr(out), device, stream);
#else
        fail("cryoorient was built without CUDA kernels");
#endif
      },
      "d_q for M index pairs into out (M).");
  m.def(
      "qdist_backward",
      [](std::uintptr_t q, std::uintptr_t i, std::uintptr_t j, std::uintptr_t grad_out, std::uintptr_t grad_q,
         int64_t P, int64_t M, int dtype, int itype, int device, std::uintptr_t stream, int nthreads) {
        const QDistArgs a{ptr(q), ptr(i), ptr(j), P, M, dtype, itype};
        py::gil_scoped_release nogil;
        if (device < 0) return qdist_backward_cpu(a, ptr(grad_out), ptr(grad_q), nthreads);
#ifdef CRYOORIENT_WITH_CUDA
        qdist_backward_cuda(a, ptr(grad_out), ptr(grad_q), device, stream);
#else
        fail("cryoorient was built without CUDA kernels");
#endif
      },
      "Accumulate grad_out·∂d/∂q into grad_q (P×4, zero-initialised by the caller).");
}

}  // namespace cryoorient
