// align_loss: for K candidate transforms T_k ∈ O(4) (angles + reflection, see align_transform.h),
// loss_k = (1/P) Σ_i min_g d_q(q_true_i · g, T_k · q_est_i) and its gradient w.r.t. the 6K angles,
// in one pass over the P pairs. Without a group (G = 0) the min is over the identity only.
#pragma once
#include <cstdint>

namespace cryoorient {

struct AlignLossArgs {
  const void* q_true;   // P×4 float, non-zero rows (normalised by the kernels)
  const void* q_est;    // P×4 float, non-zero rows (normalised by the kernels)
  const void* angles;   // K×6 float, radians
  const void* reflect;  // K uint8 (bool): 1 = improper (m = -1)
  const void* group;    // G×4 float quaternions acting on the right of q_true, or null (G = 0)
  int64_t P, K, G;
  int dtype;
};

// loss: K; grad: K×6 or null (value only). P > 0.
void align_loss_cpu(const AlignLossArgs& a, void* loss, void* grad, int nthreads);
#ifdef CRYOORIENT_WITH_CUDA
// Bytes of device workspace the CUDA launcher needs for (P, K, G) on `device`.
int64_t align_loss_cuda_workspace(int64_t P, int64_t K, int64_t G, int dtype, int device);
void align_loss_cuda(const AlignLossArgs& a, void* loss, void* grad, void* workspace, int device,
                     std::uintptr_t stream);
#endif

}  // namespace cryoorient
