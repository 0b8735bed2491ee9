// Entry point of the align_loss op: routes to the CPU or CUDA kernel (device < 0 is CPU).
#include "align_loss/align_loss.h"

#include "bindings.h"
#include "common.h"

namespace py = pybind11;

namespace cryoorient {

void register_align_loss(py::module_& m) {
  m.def(
      "align_loss_workspace",
      [](int64_t P, int64_t K, int64_t G, int dtype, int device) -> int64_t {
        if (device < 0) return 0;
#ifdef CRYOORIENT_WITH_CUDA
        return align_loss_cuda_workspace(P, K, G, dtype, device);
#else
        fail("cryoorient was built without CUDA kernels");
#endif
      },
      "Bytes of device workspace align_loss needs (0 on the CPU).");
  m.def(
      "align_loss",
      [](std::uintptr_t q_true, std::uintptr_t q_est, std::uintptr_t angles, std::uintptr_t reflect,
         std::uintptr_t group, std::uintptr_t loss, std::uintptr_t grad, std::uintptr_t workspace, int64_t P,
         int64_t K, int64_t G, int dtype, int device, std::uintptr_t stream, int nthreads) {
        const AlignLossArgs a{ptr(q_true), ptr(q_est), ptr(angles), ptr(reflect), ptr(group), P, K, G, dtype};
        if (P <= 0) fail("align_loss needs at least one pair of orientations (P > 0)");
        if (K < 0 || G < 0) fail("align_loss: negative candidate or group size");
        py::gil_scoped_release nogil;
        if (device < 0) return align_loss_cpu(a, ptr(loss), ptr(grad), nthreads);
#ifdef CRYOORIENT_WITH_CUDA
        align_loss_cuda(a, ptr(loss), ptr(grad), ptr(workspace), device, stream);
#else
        fail("cryoorient was built without CUDA kernels");
#endif
      },
      "Mean aligned d_q (K) and, if grad != 0, its gradient w.r.t. the angles (K×6).");
}

}  // namespace cryoorient
