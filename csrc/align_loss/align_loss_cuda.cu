// CUDA kernels of align_loss. Three launches on the caller's stream:
//  1. prologue: unit copies of q_true, q_est and the group, and T_k (K×16) built in double.
//  2. main: grid (pair blocks × candidate chunks). Lane l of a warp owns candidate
//     chunk·kc + l % kc and keeps T_k and its 7 accumulators (loss, W) in registers; the kc lanes
//     sharing a pair read it with one broadcast load, so each block reads its pairs once per chunk
//     of 32 candidates. Warp shuffles and shared memory reduce a block to one K×7 partial.
//  3. finish: one block per candidate sums the partials in a fixed order (deterministic), divides
//     by P and maps W to the 6 angles (align_angle_grad, double).
// Everything is deterministic (no atomics).
#include <mutex>
#include <vector>

#include "align_loss/align_common.h"
#include "align_loss/align_loss.h"
#include "cuda_utils.h"

namespace cryoorient {
namespace {

constexpr int kAcc = kAlignAcc;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMinPairsPerSlot = 8;
constexpr int kFinishThreads = 128;

template <typename T>
__device__ __forceinline__ void unit_row(const T* __restrict__ q, int64_t i, T* __restrict__ out) {
  const T x0 = q[4 * i], x1 = q[4 * i + 1], x2 = q[4 * i + 2], x3 = q[4 * i + 3];
  const T inv = T(1) / sqrt(x0 * x0 + x1 * x1 + x2 * x2 + x3 * x3);
  out[4 * i] = x0 * inv, out[4 * i + 1] = x1 * inv, out[4 * i + 2] = x2 * inv, out[4 * i + 3] = x3 * inv;
}

// Items [0, P): unit q_true and q_est rows; [P, P + G): unit group; [P + G, P + G + K): T_k.
template <typename T>
__global__ void prologue_kernel(const T* __restrict__ qt, const T* __restrict__ qe, const T* __restrict__ group,
                                const T* __restrict__ angles, const uint8_t* __restrict__ reflect, int64_t P,
                                int64_t G, int64_t K, T* __restrict__ qt_u, T* __restrict__ qe_u,
                                T* __restrict__ group_u, T* __restrict__ mats) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < P + G + K;
       t += int64_t(gridDim.x) * blockDim.x) {
    if (t < P) {
      unit_row(qt, t, qt_u);
      unit_row(qe, t, qe_u);
    } else if (t < P + G) {
      unit_row(group, t - P, group_u);
    } else {
      const int64_t k = t - P - G;
      double ang[6], m[16];
      for (int p = 0; p < 6; ++p) ang[p] = double(angles[6 * k + p]);
      align_transform(ang, reflect[k] != 0, m);
      for (int e = 0; e < 16; ++e) mats[16 * k + e] = T(m[e]);
    }
  }
}

__device__ __forceinline__ void load4(const float* p, int64_t i, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p) + i);
  out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
}
__device__ __forceinline__ void load4(const double* p, int64_t i, double* out) {
  const double2 u = __ldg(reinterpret_cast<const double2*>(p) + 2 * i);
  const double2 v = __ldg(reinterpret_cast<const double2*>(p) + 2 * i + 1);
  out[0] = u.x, out[1] = u.y, out[2] = v.x, out[3] = v.y;
}

template <typename T>
constexpr int min_blocks() { return sizeof(T) == 4 ? 2 : 1; }

template <typename T, bool kGrad, bool kSym>
__global__ void __launch_bounds__(kThreads, min_blocks<T>())
    align_loss_kernel(const T* __restrict__ qt, const T* __restrict__ qe, const T* __restrict__ mats,
                      const T* __restrict__ group, int64_t G, int64_t P, int64_t K, int kc_log2, int64_t per_block,
                      T* __restrict__ partial) {
  constexpr int nacc = kGrad ? kAcc : 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int kc = 1 << kc_log2;
  const int kl = lane & (kc - 1), sub = lane >> kc_log2;
  const int subs = 32 >> kc_log2;
  const int64_t k0 = int64_t(blockIdx.y) * kc;
  const int64_t k = k0 + kl < K ? k0 + kl : K - 1;  // spare lanes repeat the last candidate, unused
  T M[16];
#pragma unroll
  for (int e = 0; e < 16; ++e) M[e] = mats[16 * k + e];
  T acc[nacc];
#pragma unroll
  for (int c = 0; c < nacc; ++c) acc[c] = T(0);
  const int64_t begin = int64_t(blockIdx.x) * per_block;
  const int64_t end = begin + per_block < P ? begin + per_block : P;
  const int nslots = kWarps * subs;
#pragma unroll 2
  for (int64_t i = begin + warp * subs + sub; i < end; i += nslots) {
    T a[4], b[4];
    load4(qt, i, a);
    load4(qe, i, b);
    align_pair<T, T, kGrad>(M, a, b, group, kSym ? G : 0, acc);
  }
  for (int off = 16; off >= kc; off >>= 1)
#pragma unroll
    for (int c = 0; c < nacc; ++c) acc[c] += __shfl_xor_sync(0xffffffffu, acc[c], off);
  __shared__ T red[kWarps][32][nacc];
  if (sub == 0)
#pragma unroll
    for (int c = 0; c < nacc; ++c) red[warp][kl][c] = acc[c];
  __syncthreads();
  for (int idx = threadIdx.x; idx < kc * nacc; idx += kThreads) {
    const int kk = idx / nacc, c = idx % nacc;
    if (k0 + kk >= K) continue;
    T s = 0;
    for (int w = 0; w < kWarps; ++w) s += red[w][kk][c];
    partial[(int64_t(blockIdx.x) * K + k0 + kk) * nacc + c] = s;
  }
}

template <typename T, bool kGrad>
__global__ void finish_kernel(const T* __restrict__ partial, int64_t nblocks, int64_t K, int64_t P,
                              const T* __restrict__ angles, const uint8_t* __restrict__ reflect, T* __restrict__ loss,
                              T* __restrict__ grad) {
  constexpr int nacc = kGrad ? kAcc : 1;
  const int64_t k = blockIdx.x;
  double acc[nacc];
  for (int c = 0; c < nacc; ++c) acc[c] = 0;
  for (int64_t b = threadIdx.x; b < nblocks; b += kFinishThreads)
    for (int c = 0; c < nacc; ++c) acc[c] += double(partial[(b * K + k) * nacc + c]);
  for (int off = 16; off > 0; off >>= 1)
    for (int c = 0; c < nacc; ++c) acc[c] += __shfl_xor_sync(0xffffffffu, acc[c], off);
  __shared__ double red[kFinishThreads / 32][nacc];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0)
    for (int c = 0; c < nacc; ++c) red[warp][c] = acc[c];
  __syncthreads();
  if (threadIdx.x != 0) return;
  double tot[nacc];
  for (int c = 0; c < nacc; ++c) {
    tot[c] = 0;
    for (int w = 0; w < kFinishThreads / 32; ++w) tot[c] += red[w][c];
    tot[c] /= double(P);
  }
  loss[k] = T(tot[0]);
  if constexpr (kGrad) {
    double ang[6], ga[6];
    for (int p = 0; p < 6; ++p) ang[p] = double(angles[6 * k + p]);
    align_angle_grad(ang, reflect[k] != 0, tot + 1, ga);
    for (int p = 0; p < 6; ++p) grad[6 * k + p] = T(ga[p]);
  }
}

struct Plan {
  int kc_log2;
  int64_t chunks, blocks, per_block;
};

int resident_blocks(int device, int dtype) {
  // Blocks of the main kernel resident on the whole device (cached per device and dtype).
  static std::mutex mu;
  static std::vector<int> cache;
  std::lock_guard<std::mutex> lock(mu);
  const size_t slot = size_t(device) * 2 + size_t(dtype);
  if (cache.size() <= slot) cache.resize(slot + 1, 0);
  if (cache[slot] == 0) {
    int sms = 0, per_sm = 0;
    cuda_check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    CO_DISPATCH_FLOAT(dtype, T, [&] {
      cuda_check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, align_loss_kernel<T, true, false>, kThreads, 0),
                 "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    });
    cache[slot] = sms * (per_sm > 0 ? per_sm : 1);
  }
  return cache[slot];
}

Plan make_plan(int64_t P, int64_t K, int dtype, int device) {
  Plan p;
  p.kc_log2 = 0;
  while ((int64_t(1) << p.kc_log2) < K && p.kc_log2 < 5) ++p.kc_log2;
  const int64_t kc = int64_t(1) << p.kc_log2;
  p.chunks = (K + kc - 1) / kc;
  if (p.chunks > 65535) fail("align_loss on CUDA supports at most 65535·32 candidates per call");
  const int64_t slots = kWarps * (32 / kc);
  const int64_t want = std::max<int64_t>(1, resident_blocks(device, dtype) / p.chunks);
  const int64_t most = std::max<int64_t>(1, P / (slots * kMinPairsPerSlot));
  p.blocks = std::min(want, most);
  p.per_block = (P + p.blocks - 1) / p.blocks;
  p.blocks = (P + p.per_block - 1) / p.per_block;
  return p;
}

// Workspace: T_k (16K), unit q_true and q_est (4P each), unit group (4G), partials (blocks·K·7).
int64_t workspace_elems(const Plan& p, int64_t P, int64_t K, int64_t G) {
  return 16 * K + 8 * P + 4 * G + p.blocks * K * kAcc;
}

template <typename T>
struct Workspace {
  T *mats, *qt, *qe, *group, *partial;
  Workspace(void* base, int64_t P, int64_t K, int64_t G) {
    mats = static_cast<T*>(base);
    qt = mats + 16 * K;
    qe = qt + 4 * P;
    group = qe + 4 * P;
    partial = group + 4 * G;
  }
};

}  // namespace

int64_t align_loss_cuda_workspace(int64_t P, int64_t K, int64_t G, int dtype, int device) {
  if (K == 0) return 0;
  DeviceGuard guard(device);
  return workspace_elems(make_plan(P, K, dtype, device), P, K, G) * (dtype == kFloat64 ? 8 : 4);
}

void align_loss_cuda(const AlignLossArgs& a, void* loss, void* grad, void* workspace, int device,
                     std::uintptr_t stream) {
  if (a.K == 0) return;
  DeviceGuard guard(device);
  const Plan p = make_plan(a.P, a.K, a.dtype, device);
  const cudaStream_t s = as_stream(stream);
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    const Workspace<T> w(workspace, a.P, a.K, a.G);
    const T* angles = static_cast<const T*>(a.angles);
    const uint8_t* refl = static_cast<const uint8_t*>(a.reflect);
    prologue_kernel<T><<<blocks_for(a.P + a.G + a.K, 256), 256, 0, s>>>(
        static_cast<const T*>(a.q_true), static_cast<const T*>(a.q_est), static_cast<const T*>(a.group), angles, refl,
        a.P, a.G, a.K, w.qt, w.qe, w.group, w.mats);
    const dim3 grid(unsigned(p.blocks), unsigned(p.chunks));
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, s>>>(w.qt, w.qe, w.mats, w.group, a.G, a.P, a.K, p.kc_log2, p.per_block, w.partial);
    };
    if (grad) {
      if (a.G > 0) launch(align_loss_kernel<T, true, true>);
      else launch(align_loss_kernel<T, true, false>);
      finish_kernel<T, true><<<unsigned(a.K), kFinishThreads, 0, s>>>(w.partial, p.blocks, a.K, a.P, angles, refl,
                                                                     static_cast<T*>(loss), static_cast<T*>(grad));
    } else {
      if (a.G > 0) launch(align_loss_kernel<T, false, true>);
      else launch(align_loss_kernel<T, false, false>);
      finish_kernel<T, false><<<unsigned(a.K), kFinishThreads, 0, s>>>(w.partial, p.blocks, a.K, a.P, angles, refl,
                                                                      static_cast<T*>(loss), nullptr);
    }
  });
  cuda_check(cudaGetLastError(), "align_loss");
}

}  // namespace cryoorient
