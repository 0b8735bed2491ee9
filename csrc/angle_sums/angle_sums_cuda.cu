#include "angle_sums/angle_sums.h"
#include "cuda_utils.h"

namespace cryoorient {
namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;

// One warp per column (r, j): its lanes read the column's L contiguous numerators together (coalesced) and sum their
// weights, then the lanes' sums meet by shuffles. One read of num, one write of the sums.
template <typename T>
__global__ void angle_sums_kernel(const T* __restrict__ num, const T* __restrict__ den, const T* __restrict__ scale,
                                  const T* __restrict__ bias, T floor, T* __restrict__ out, int64_t RJ, int64_t J,
                                  int64_t L) {
  const int lane = threadIdx.x & 31;
  for (int64_t c = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32; c < RJ; c += int64_t(gridDim.x) * kWarps) {
    const int64_t r = c / J;
    const T a = angle_factor(den[c], scale[r]), b = bias[r];
    const T* x = num + c * L;
    T acc = T(0);
    for (int64_t l = lane; l < L; l += 32) acc += exp(angle_exponent(__ldg(x + l), a, b, floor));
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) out[c] = acc;
  }
}

}  // namespace

void angle_sums_cuda(const AngleSumsArgs& a, void* out, int device, std::uintptr_t stream) {
  const int64_t RJ = a.R * a.J;
  if (RJ == 0) return;
  DeviceGuard guard(device);
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    angle_sums_kernel<T><<<blocks_for(RJ, kWarps), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(a.num), static_cast<const T*>(a.den), static_cast<const T*>(a.scale),
        static_cast<const T*>(a.bias), static_cast<T>(a.floor), static_cast<T*>(out), RJ, a.J, a.L);
  });
  cuda_check(cudaGetLastError(), "angle_sums");
}

}  // namespace cryoorient
