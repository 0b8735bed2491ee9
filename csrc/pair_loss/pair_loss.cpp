// Entry point of the pair_loss op: routes to the CPU or CUDA kernel (device < 0 is CPU).
#include "pair_loss/pair_loss.h"

#include "bindings.h"
#include "common.h"

namespace py = pybind11;

namespace cryoorient {

#ifdef CRYOORIENT_WITH_CUDA
#define CO_CUDA_OR_FAIL(call) call
#else
#define CO_CUDA_OR_FAIL(call) fail("cryoorient was built without CUDA kernels")
#endif

void register_pair_loss(py::module_& m) {
  m.def(
      "pair_loss_none",
      [](std::uintptr_t q, std::uintptr_t i, std::uintptr_t j, std::uintptr_t t, std::uintptr_t w, std::uintptr_t out,
         int64_t P, int64_t M, int dtype, int itype, int device, std::uintptr_t stream, int nthreads) {
        const PairLossArgs a{ptr(q), ptr(i), ptr(j), ptr(t), ptr(w), P, M, dtype, itype};
        py::gil_scoped_release nogil;
        if (device < 0) return pair_loss_none_cpu(a, ptr(out), nthreads);
        CO_CUDA_OR_FAIL(pair_loss_none_cuda(a, ptr(out), device, stream));
      },
      "Per-pair losses w·(d_q − t)² into out (M); a 0 weight pointer means unit weights.");
  m.def(
      "pair_loss_sum",
      [](std::uintptr_t q, std::uintptr_t i, std::uintptr_t j, std::uintptr_t t, std::uintptr_t w, double scale,
         std::uintptr_t out, std::uintptr_t grad_q, int64_t P, int64_t M, int dtype, int itype, int device,
         std::uintptr_t stream, int nthreads) {
        const PairLossArgs a{ptr(q), ptr(i), ptr(j), ptr(t), ptr(w), P, M, dtype, itype};
        py::gil_scoped_release nogil;
        if (device < 0) return pair_loss_sum_cpu(a, scale, ptr(out), ptr(grad_q), nthreads);
        CO_CUDA_OR_FAIL(pair_loss_sum_cuda(a, scale, ptr(out), ptr(grad_q), device, stream));
      },
      "out[0] += scale·Σ w·(d_q − t)² (out zeroed by the caller); if grad_q != 0 also grad_q += scale·∂L/∂q.");
  m.def(
      "pair_loss_backward",
      [](std::uintptr_t q, std::uintptr_t i, std::uintptr_t j, std::uintptr_t t, std::uintptr_t w,
         std::uintptr_t grad_out, bool per_pair, double scale, std::uintptr_t grad_q, std::uintptr_t grad_t,
         std::uintptr_t grad_w, int64_t P, int64_t M, int dtype, int itype, int device, std::uintptr_t stream,
         int nthreads) {
        const PairLossArgs a{ptr(q), ptr(i), ptr(j), ptr(t), ptr(w), P, M, dtype, itype};
        py::gil_scoped_release nogil;
        if (device < 0)
          return pair_loss_backward_cpu(a, ptr(grad_out), per_pair, scale, ptr(grad_q), ptr(grad_t), ptr(grad_w),
                                        nthreads);
        CO_CUDA_OR_FAIL(pair_loss_backward_cuda(a, ptr(grad_out), per_pair, scale, ptr(grad_q), ptr(grad_t),
                                                ptr(grad_w), device, stream));
      },
      "Gradients for upstream grad_out (M if per_pair else 1) times scale; 0 pointers skip an output; "
      "grad_q is accumulated (zeroed by the caller).");
}

}  // namespace cryoorient
