#include "cuda_utils.h"
#include "qdist/qdist.h"
#include "quat.h"

namespace cryoorient {
namespace {

template <typename T, typename I>
__global__ void qdist_forward_kernel(const T* __restrict__ q, const I* __restrict__ i, const I* __restrict__ j,
                                     T* __restrict__ d, int64_t M) {
  for (int64_t m = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; m < M; m += int64_t(gridDim.x) * blockDim.x)
    d[m] = quat_dist<T, false>(q + 4 * i[m], q + 4 * j[m]).d;
}

template <typename T, typename I>
__global__ void qdist_backward_kernel(const T* __restrict__ q, const I* __restrict__ i, const I* __restrict__ j,
                                      const T* __restrict__ go, T* __restrict__ g, int64_t M) {
  for (int64_t m = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; m < M; m += int64_t(gridDim.x) * blockDim.x) {
    const I im = i[m], jm = j[m];
    const auto r = quat_dist<T, true>(q + 4 * im, q + 4 * jm);
    const T s = go[m];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      atomicAdd(g + 4 * im + k, s * r.ga[k]);
      atomicAdd(g + 4 * jm + k, s * r.gb[k]);
    }
  }
}

}  // namespace

void qdist_forward_cuda(const QDistArgs& a, void* out, int device, std::uintptr_t stream) {
  if (a.M == 0) return;
  DeviceGuard guard(device);
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    CO_DISPATCH_INDEX(a.itype, I, [&] {
      qdist_forward_kernel<T, I><<<blocks_for(a.M, 256), 256, 0, as_stream(stream)>>>(
          static_cast<const T*>(a.q), static_cast<const I*>(a.i), static_cast<const I*>(a.j), static_cast<T*>(out),
          a.M);
    });
  });
  cuda_check(cudaGetLastError(), "qdist_forward");
}

void qdist_backward_cuda(const QDistArgs& a, const void* grad_out, void* grad_q, int device, std::uintptr_t stream) {
  if (a.M == 0) return;
  DeviceGuard guard(device);
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    CO_DISPATCH_INDEX(a.itype, I, [&] {
      qdist_backward_kernel<T, I><<<blocks_for(a.M, 256), 256, 0, as_stream(stream)>>>(
          static_cast<const T*>(a.q), static_cast<const I*>(a.i), static_cast<const I*>(a.j),
          static_cast<const T*>(grad_out), static_cast<T*>(grad_q), a.M);
    });
  });
  cuda_check(cudaGetLastError(), "qdist_backward");
}

}  // namespace cryoorient
