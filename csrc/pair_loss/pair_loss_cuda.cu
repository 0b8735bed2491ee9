#include "cuda_utils.h"
#include "pair_loss/pair_loss.h"
#include "quat.h"

namespace cryoorient {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // pairs in flight per thread in the fused kernel

template <typename T>
__device__ __forceinline__ void load_quat(const T* __restrict__ p, bool vec, T* out) {
#pragma unroll
  for (int k = 0; k < 4; ++k) out[k] = __ldg(p + k);
}

template <>
__device__ __forceinline__ void load_quat<float>(const float* __restrict__ p, bool vec, float* out) {
  if (vec) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = __ldg(p + k);
  }
}

// g[0..3] += c·v[0..3]; one vector reduction on sm_90 for 16-byte-aligned float rows.
template <typename T>
__device__ __forceinline__ void add_quat(T* g, T c, const T* v, bool vec) {
#pragma unroll
  for (int k = 0; k < 4; ++k) atomicAdd(g + k, c * v[k]);
}

template <>
__device__ __forceinline__ void add_quat<float>(float* g, float c, const float* v, bool vec) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (vec) {  // a reduction (no return value) of the 4 floats in one instruction
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(g), "f"(c * v[0]), "f"(c * v[1]),
                 "f"(c * v[2]), "f"(c * v[3])
                 : "memory");
    return;
  }
#endif
#pragma unroll
  for (int k = 0; k < 4; ++k) atomicAdd(g + k, c * v[k]);
}

// Sum over the block of every thread's v; thread 0 adds it to *out.
template <typename T>
__device__ __forceinline__ void block_sum_to(T v, T* out) {
  __shared__ T warp_sums[kThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? warp_sums[lane] : T(0);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) atomicAdd(out, v);
  }
}

// Fused loss sum and (kGrad) gradient scatter. Each thread keeps kUnroll pairs in
// flight: their indices and targets are streamed (evict-first, so q and grad_q stay
// in L2), then the quaternion rows are gathered and the gradients reduced into grad_q.
template <typename T, typename I, bool kGrad>
__global__ void __launch_bounds__(kThreads) pair_loss_sum_kernel(
    const T* __restrict__ q, const I* __restrict__ i, const I* __restrict__ j, const T* __restrict__ t,
    const T* __restrict__ w, T scale, T* __restrict__ out, T* __restrict__ g, int64_t M, bool vec) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  T acc = 0;
  for (int64_t m0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; m0 < M; m0 += kUnroll * stride) {
    I a[kUnroll], b[kUnroll];
    T tt[kUnroll], ww[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t m = m0 + u * stride;
      const bool in = m < M;
      a[u] = in ? __ldcs(i + m) : I(0);
      b[u] = in ? __ldcs(j + m) : I(0);
      tt[u] = in ? __ldcs(t + m) : T(0);
      ww[u] = in ? (w ? __ldcs(w + m) : T(1)) : T(0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      T qa[4], qb[4];
      load_quat(q + 4 * int64_t(a[u]), vec, qa);
      load_quat(q + 4 * int64_t(b[u]), vec, qb);
      const auto r = quat_dist<T, kGrad>(qa, qb);
      const T err = r.d - tt[u];
      acc += ww[u] * err * err;
      if (kGrad) {
        const T c = scale * T(2) * ww[u] * err;
        if (c != T(0)) {
          add_quat(g + 4 * int64_t(a[u]), c, r.ga, vec);
          add_quat(g + 4 * int64_t(b[u]), c, r.gb, vec);
        }
      }
    }
  }
  block_sum_to(acc * scale, out);
}

template <typename T, typename I>
__global__ void pair_loss_none_kernel(const T* __restrict__ q, const I* __restrict__ i, const I* __restrict__ j,
                                      const T* __restrict__ t, const T* __restrict__ w, T* __restrict__ out,
                                      int64_t M) {
  for (int64_t m = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; m < M; m += int64_t(gridDim.x) * blockDim.x) {
    const T err = quat_dist<T, false>(q + 4 * int64_t(i[m]), q + 4 * int64_t(j[m])).d - t[m];
    out[m] = (w ? w[m] : T(1)) * err * err;
  }
}

template <typename T, typename I, bool kGrad>
__global__ void pair_loss_backward_kernel(const T* __restrict__ q, const I* __restrict__ i, const I* __restrict__ j,
                                          const T* __restrict__ t, const T* __restrict__ w,
                                          const T* __restrict__ go, bool per_pair, T scale, T* __restrict__ gq,
                                          T* __restrict__ gt, T* __restrict__ gw, int64_t M, bool vec) {
  for (int64_t m = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; m < M; m += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = i[m], b = j[m];
    T qa[4], qb[4];
    load_quat(q + 4 * a, vec, qa);
    load_quat(q + 4 * b, vec, qb);
    const auto r = quat_dist<T, kGrad>(qa, qb);
    const T g = scale * go[per_pair ? m : 0], err = r.d - t[m], wm = w ? w[m] : T(1);
    if (gt) gt[m] = T(-2) * g * wm * err;
    if (gw) gw[m] = g * err * err;
    if (kGrad) {
      const T c = T(2) * g * wm * err;
      if (c != T(0)) {
        add_quat(gq + 4 * a, c, r.ga, vec);
        add_quat(gq + 4 * b, c, r.gb, vec);
      }
    }
  }
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace

void pair_loss_none_cuda(const PairLossArgs& a, void* out, int device, std::uintptr_t stream) {
  if (a.M == 0) return;
  DeviceGuard guard(device);
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    CO_DISPATCH_INDEX(a.itype, I, [&] {
      pair_loss_none_kernel<T, I><<<blocks_for(a.M, kThreads), kThreads, 0, as_stream(stream)>>>(
          static_cast<const T*>(a.q), static_cast<const I*>(a.i), static_cast<const I*>(a.j),
          static_cast<const T*>(a.target), static_cast<const T*>(a.weight), static_cast<T*>(out), a.M);
    });
  });
  cuda_check(cudaGetLastError(), "pair_loss_none");
}

void pair_loss_sum_cuda(const PairLossArgs& a, double scale, void* out, void* grad_q, int device,
                        std::uintptr_t stream) {
  if (a.M == 0) return;
  DeviceGuard guard(device);
  const bool vec = aligned16(a.q) && aligned16(grad_q);
  // Enough blocks to fill every SM, few enough that the per-block atomic on the loss is negligible.
  const int64_t want = (a.M + int64_t(kThreads) * kUnroll - 1) / (int64_t(kThreads) * kUnroll);
  const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(want, 8LL * sm_count(device))));
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    CO_DISPATCH_INDEX(a.itype, I, [&] {
      auto launch = [&](auto kernel) {
        kernel<<<blocks, kThreads, 0, as_stream(stream)>>>(
            static_cast<const T*>(a.q), static_cast<const I*>(a.i), static_cast<const I*>(a.j),
            static_cast<const T*>(a.target), static_cast<const T*>(a.weight), T(scale), static_cast<T*>(out),
            static_cast<T*>(grad_q), a.M, vec);
      };
      if (grad_q)
        launch(pair_loss_sum_kernel<T, I, true>);
      else
        launch(pair_loss_sum_kernel<T, I, false>);
    });
  });
  cuda_check(cudaGetLastError(), "pair_loss_sum");
}

void pair_loss_backward_cuda(const PairLossArgs& a, const void* grad_out, bool per_pair, double scale, void* grad_q,
                             void* grad_target, void* grad_weight, int device, std::uintptr_t stream) {
  if (a.M == 0) return;
  DeviceGuard guard(device);
  const bool vec = aligned16(a.q) && aligned16(grad_q);
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    CO_DISPATCH_INDEX(a.itype, I, [&] {
      auto launch = [&](auto kernel) {
        kernel<<<blocks_for(a.M, kThreads), kThreads, 0, as_stream(stream)>>>(
            static_cast<const T*>(a.q), static_cast<const I*>(a.i), static_cast<const I*>(a.j),
            static_cast<const T*>(a.target), static_cast<const T*>(a.weight), static_cast<const T*>(grad_out),
            per_pair, T(scale), static_cast<T*>(grad_q), static_cast<T*>(grad_target), static_cast<T*>(grad_weight),
            a.M, vec);
      };
      if (grad_q)
        launch(pair_loss_backward_kernel<T, I, true>);
      else
        launch(pair_loss_backward_kernel<T, I, false>);
    });
  });
  cuda_check(cudaGetLastError(), "pair_loss_backward");
}

}  // namespace cryoorient
