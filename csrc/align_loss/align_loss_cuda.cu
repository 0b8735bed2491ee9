// CUDA kernels of align_loss. Two launches on the caller's stream:
//  1. main: grid (pair blocks × candidate chunks). Lane l of a warp owns candidate
//     chunk·kc + l % kc, builds T_k (in double, rounded to T) and keeps it and its 7 accumulators
//     (loss, W) in registers. The block stages its pairs in shared memory, normalised (one
//     thread per pair), and the kc lanes sharing a pair read it with a broadcast, so each block
//     reads its pairs once per chunk of 32 candidates. The unit group (if any) sits in shared
//     memory. Warp shuffles and shared memory reduce a block to
//     one K×7 partial.
//  2. finish: one block per candidate sums the partials in a fixed order (deterministic), divides
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

// Row i of a P×4 array, as one (float4) or two (double2) loads when 16-byte aligned.
__device__ __forceinline__ void load4(const float* p, int64_t i, bool vec, float* out) {
  if (vec) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p) + i);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  } else {
#pragma unroll
    for (int c = 0; c < 4; ++c) out[c] = __ldg(p + 4 * i + c);
  }
}
__device__ __forceinline__ void load4(const double* p, int64_t i, bool vec, double* out) {
  if (vec) {
    const double2 u = __ldg(reinterpret_cast<const double2*>(p) + 2 * i);
    const double2 v = __ldg(reinterpret_cast<const double2*>(p) + 2 * i + 1);
    out[0] = u.x, out[1] = u.y, out[2] = v.x, out[3] = v.y;
  } else {
#pragma unroll
    for (int c = 0; c < 4; ++c) out[c] = __ldg(p + 4 * i + c);
  }
}

template <typename T>
__device__ __forceinline__ void normalise(T* x) {
  const T inv = approx_rsqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2] + x[3] * x[3]);
#pragma unroll
  for (int c = 0; c < 4; ++c) x[c] *= inv;
}

template <typename T>
constexpr int min_blocks() { return sizeof(T) == 4 ? 2 : 1; }

template <typename T, bool kGrad, bool kSym>
__global__ void __launch_bounds__(kThreads, min_blocks<T>())
    align_loss_kernel(const T* __restrict__ qt, const T* __restrict__ qe, const T* __restrict__ angles,
                      const uint8_t* __restrict__ reflect, const T* __restrict__ group, int64_t G, int64_t P,
                      int64_t K, int kc_log2, int64_t per_block, bool vec, T* __restrict__ partial) {
  constexpr int nacc = kGrad ? kAcc : 1;
  extern __shared__ __align__(16) unsigned char smem_group[];
  T* unit_group = reinterpret_cast<T*>(smem_group);
  if (kSym) {
    for (int64_t g = threadIdx.x; g < G; g += kThreads) {
      T e[4];
      load4(group, g, false, e);
      normalise(e);
#pragma unroll
      for (int c = 0; c < 4; ++c) unit_group[4 * g + c] = e[c];
    }
    __syncthreads();
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int kc = 1 << kc_log2;
  const int kl = lane & (kc - 1), sub = lane >> kc_log2;
  const int subs = 32 >> kc_log2;
  const int64_t k0 = int64_t(blockIdx.y) * kc;
  const int64_t k = k0 + kl < K ? k0 + kl : K - 1;  // spare lanes repeat the last candidate, unused
  T M[16];
  {
    double ang[6], m[16];
#pragma unroll
    for (int p = 0; p < 6; ++p) ang[p] = double(angles[6 * k + p]);
    align_transform(ang, reflect[k] != 0, m);
#pragma unroll
    for (int e = 0; e < 16; ++e) M[e] = T(m[e]);
  }
  T acc[nacc];
#pragma unroll
  for (int c = 0; c < nacc; ++c) acc[c] = T(0);
  // Pairs are staged kThreads at a time: each thread loads and normalises one, then every warp
  // reads them from shared memory (broadcast), so no lane repeats the normalisation.
  __shared__ __align__(16) T stage[2][kThreads][4];
  const int64_t begin = int64_t(blockIdx.x) * per_block;
  const int64_t end = begin + per_block < P ? begin + per_block : P;
  const int nslots = kWarps * subs;
  for (int64_t c0 = begin; c0 < end; c0 += kThreads) {
    const int n = end - c0 < kThreads ? int(end - c0) : kThreads;
    __syncthreads();  // the previous stage is consumed
    if (threadIdx.x < n) {
      T a[4], b[4];
      load4(qt, c0 + threadIdx.x, vec, a);
      load4(qe, c0 + threadIdx.x, vec, b);
      normalise(a);
      normalise(b);
#pragma unroll
      for (int c = 0; c < 4; ++c) stage[0][threadIdx.x][c] = a[c], stage[1][threadIdx.x][c] = b[c];
    }
    __syncthreads();
#pragma unroll 2
    for (int s = warp * subs + sub; s < n; s += nslots) {
      T a[4], b[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) a[c] = stage[0][s][c], b[c] = stage[1][s][c];
      align_pair<T, T, kGrad>(M, a, b, unit_group, kSym ? G : 0, acc);
    }
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

// Workspace: the per-block partials (blocks·K·7).
int64_t workspace_elems(const Plan& p, int64_t K) { return p.blocks * K * kAcc; }

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace

int64_t align_loss_cuda_workspace(int64_t P, int64_t K, int64_t G, int dtype, int device) {
  if (K == 0) return 0;
  DeviceGuard guard(device);
  return workspace_elems(make_plan(P, K, dtype, device), K) * (dtype == kFloat64 ? 8 : 4);
}

void align_loss_cuda(const AlignLossArgs& a, void* loss, void* grad, void* workspace, int device,
                     std::uintptr_t stream) {
  if (a.K == 0) return;
  DeviceGuard guard(device);
  const Plan p = make_plan(a.P, a.K, a.dtype, device);
  const cudaStream_t s = as_stream(stream);
  const bool vec = aligned16(a.q_true) && aligned16(a.q_est);
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    T* partial = static_cast<T*>(workspace);
    const T* angles = static_cast<const T*>(a.angles);
    const uint8_t* refl = static_cast<const uint8_t*>(a.reflect);
    const size_t smem = size_t(a.G) * 4 * sizeof(T);
    if (smem > 48 * 1024) fail("align_loss on CUDA supports groups of at most " + std::to_string(48 * 1024 / (4 * sizeof(T))) + " elements");
    const dim3 grid(unsigned(p.blocks), unsigned(p.chunks));
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, smem, s>>>(static_cast<const T*>(a.q_true), static_cast<const T*>(a.q_est), angles,
                                          refl, static_cast<const T*>(a.group), a.G, a.P, a.K, p.kc_log2, p.per_block,
                                          vec, partial);
    };
    if (grad) {
      if (a.G > 0) launch(align_loss_kernel<T, true, true>);
      else launch(align_loss_kernel<T, true, false>);
      finish_kernel<T, true><<<unsigned(a.K), kFinishThreads, 0, s>>>(partial, p.blocks, a.K, a.P, angles, refl,
                                                                     static_cast<T*>(loss), static_cast<T*>(grad));
    } else {
      if (a.G > 0) launch(align_loss_kernel<T, false, true>);
      else launch(align_loss_kernel<T, false, false>);
      finish_kernel<T, false><<<unsigned(a.K), kFinishThreads, 0, s>>>(partial, p.blocks, a.K, a.P, angles, refl,
                                                                      static_cast<T*>(loss), nullptr);
    }
  });
  cuda_check(cudaGetLastError(), "align_loss");
}

}  // namespace cryoorient
