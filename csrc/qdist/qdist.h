// qdist: d_q(q[i[m]], q[j[m]]) for M index pairs, and its gradient w.r.t. q.
#pragma once
#include <cstdint>

namespace cryoorient {

struct QDistArgs {
  const void* q;     // P×4 float
  const void* i;     // M int32/int64
  const void* j;     // M int32/int64
  int64_t P, M;
  int dtype, itype;
};

void qdist_forward_cpu(const QDistArgs& a, void* out, int nthreads);
void qdist_backward_cpu(const QDistArgs& a, const void* grad_out, void* grad_q, int nthreads);
#ifdef CRYOORIENT_WITH_CUDA
void qdist_forward_cuda(const QDistArgs& a, void* out, int device, std::uintptr_t stream);
void qdist_backward_cuda(const QDistArgs& a, const void* grad_out, void* grad_q, int device, std::uintptr_t stream);
#endif

}  // namespace cryoorient
