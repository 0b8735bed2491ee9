// pair_loss: L = Σ_m w_m·(d_q(q[i_m], q[j_m]) − t_m)² over M index pairs (the
// orientation-recovery loss L_OR, paper eq. 4), with its gradients.
#pragma once
#include <cstdint>

namespace cryoorient {

struct PairLossArgs {
  const void* q;       // P×4 float, need not be unit
  const void* i;       // M int32/int64
  const void* j;       // M int32/int64
  const void* target;  // M float
  const void* weight;  // M float, or nullptr for w = 1
  int64_t P, M;
  int dtype, itype;
};

// Per-pair losses: out[m] = w_m·(d_m − t_m)².
void pair_loss_none_cpu(const PairLossArgs& a, void* out, int nthreads);
// Reduced loss: out[0] += scale·Σ_m w_m·(d_m − t_m)² (out zero-initialised by the
// caller). If grad_q is not null, also grad_q += scale·∂L/∂q (fused backward for a
// scalar upstream gradient of 1).
void pair_loss_sum_cpu(const PairLossArgs& a, double scale, void* out, void* grad_q, int nthreads);
// Backward with upstream gradient g_m = scale·grad_out[per_pair ? m : 0]; each output
// may be null: grad_q += g_m·∂l_m/∂q (zero-initialised by the caller),
// grad_target[m] = g_m·∂l_m/∂t_m, grad_weight[m] = g_m·(d_m − t_m)².
void pair_loss_backward_cpu(const PairLossArgs& a, const void* grad_out, bool per_pair, double scale, void* grad_q,
                            void* grad_target, void* grad_weight, int nthreads);
#ifdef CRYOORIENT_WITH_CUDA
void pair_loss_none_cuda(const PairLossArgs& a, void* out, int device, std::uintptr_t stream);
void pair_loss_sum_cuda(const PairLossArgs& a, double scale, void* out, void* grad_q, int device,
                        std::uintptr_t stream);
void pair_loss_backward_cuda(const PairLossArgs& a, const void* grad_out, bool per_pair, double scale, void* grad_q,
                             void* grad_target, void* grad_weight, int device, std::uintptr_t stream);
#endif

}  // namespace cryoorient
