// Memory-system floor of the pair_loss op's access pattern, on one GPU, without PyTorch.
//
// What it measures: the fused kernel (csrc/pair_loss/pair_loss_cuda.cu,
// pair_loss_sum_kernel<float, int32, kGrad=true>) streams i, j, t (12 B per pair), gathers two
// random float4 rows of q and makes two random red.global.add.v4.f32 into ∂L/∂q. The kernels
// below run that access pattern with trivial math, and each part of it alone, at P = 1e5 and
// M = 1e6, 1e7 (random pairs), so the op can be compared with what the memory system allows.
//
// Why: issue #3 asks for forward + backward at P = 1e5 (float32, one H100) in ≤ 0.2 ms at
// M = 1e7 and ≤ 0.03 ms at M = 1e6. If the access pattern alone takes longer, no leaner kernel
// with the same pattern meets the targets. Results and conclusion: bench/README.md, section
// "Memory-system floor (bench/pair_loss_floor.cu)".
//
// Build and run from the repository root (sm_90 or newer: red.global.add.v4.f32):
//
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -o /tmp/pair_loss_floor bench/pair_loss_floor.cu
//   /tmp/pair_loss_floor           # table: every row at M = 1e6 and 1e7
//   /tmp/pair_loss_floor --cold    # same, with a 256 MB memset before each repetition (outside the
//                                  # timing) so that i/j/t (12 MB at M = 1e6) cannot stay in the 50 MB L2
//   /tmp/pair_loss_floor --ncu     # k1..k7 launched twice per M (M = 1e6 first), no timing
//
// Nsight Compute of kernels 4 and 7 at M = 1e7 (launch 3, 0-based, of a kernel is its second
// launch at M = 1e7; --clock-control none leaves the card's clocks as they are):
//
//   m=gpu__time_duration.sum,lts__t_sectors.sum,lts__t_sectors_op_red.sum,lts__t_sectors_op_read.sum
//   m=$m,lts__t_sectors_op_atom.sum,lts__t_sectors_op_write.sum,dram__bytes_read.sum,dram__bytes_write.sum
//   m=$m,lts__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed
//   m=$m,l1tex__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed
//   o="--clock-control none --launch-skip 3 --launch-count 1"
//   for k in k4_full k7_full_serial; do ncu $o --metrics $m --kernel-name regex:$k /tmp/pair_loss_floor --ncu; done
//
// Every kernel has the real kernel's structure: 256 threads, 4 pairs per thread per grid-stride
// iteration, i, j, t streamed with __ldcs (evict-first), the per-thread sum reduced over the block
// and added with one atomic. Grid: one full wave, blocks = min(ceil(M / 1024), R * SMs) with R
// the resident blocks per SM (at most 8, the real kernel's grid cap); the table prints the
// registers and R of each row.
//
// Timings: "events" = median of per-launch CUDA-event times; "graph" = the same launch captured
// once in a CUDA graph and replayed, median of per-replay event times (as bench/_timing.py does).
// Gpairs/s and GB/s use the graph time. "Useful bytes" per pair (the GB/s column): 12 B streamed
// + 32 B gathered (two q rows) where the kernel gathers + 32 B reduced (two ∂L/∂q rows) where it
// reduces; q and ∂L/∂q (1.6 MB each) live in L2, so this may exceed the HBM bandwidth. The
// memset row counts P * 16 B; "memset grad + 4 full" counts both.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#define CK(x)                                                                                 \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

constexpr int kThreads = 256, kUnroll = 4;
constexpr int P = 100000;
// Min blocks/SM of the kernels that hoist all 8 gathers: 4 lets them keep 64 registers, so the
// 8 loads really are in flight together (at 8 blocks/SM ptxas re-serialises them to fit 32).
constexpr int kMinBlocksHoist = 4;

struct Args {
  const float4* q;
  const int* i;
  const int* j;
  const float* t;
  float4* g;
  float* out;
  long long M;
};

enum Mode {
  STREAM = 1,   // i, j, t only
  GATHER,       // + two q gathers per pair
  RED,          // + two ∂L/∂q reductions per pair, no gathers
  FULL,         // gathers + reductions, all gathers of an iteration issued first
  FULL_NC_EL,   // FULL with the gathers through ld.global.nc.L1::evict_last
  FULL_ATOMIC,  // FULL with 4 scalar atomicAdd per row instead of one red.v4
  FULL_SERIAL,  // FULL with each pair's gathers after the previous pair's reductions (as the real kernel)
};

template <int kMode>
__device__ __forceinline__ float4 gather(const float4* p) {
  if (kMode == FULL_NC_EL) {  // non-coherent (read-only) path, L1 eviction priority "last"
    float4 v;
    asm("ld.global.nc.L1::evict_last.v4.f32 {%0, %1, %2, %3}, [%4];"
        : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
        : "l"(p));
    return v;
  }
  if (kMode == FULL_SERIAL) return *p;  // plain ld.global: may alias ∂L/∂q, so stays after the reds
  return __ldg(p);                       // as the real kernel: ld.global.nc.v4.f32
}

template <int kMode>
__device__ __forceinline__ void scatter(float4* g, float c, float4 v) {
  if (kMode == FULL_ATOMIC) {
    atomicAdd(&g->x, c * v.x), atomicAdd(&g->y, c * v.y), atomicAdd(&g->z, c * v.z), atomicAdd(&g->w, c * v.w);
  } else {  // as the real kernel: one 16-byte vector reduction (sm_90+)
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(g), "f"(c * v.x), "f"(c * v.y),
                 "f"(c * v.z), "f"(c * v.w)
                 : "memory");
  }
}

// One grid-stride pass over the pairs, kUnroll pairs per thread per iteration: stream i/j/t of
// all kUnroll pairs, gather all 2 * kUnroll q rows, then reduce. FULL_SERIAL instead issues pair
// u's gathers only after pair u-1's reductions, which is what the real kernel's SASS does (its
// red asm has a "memory" clobber and sits in an `if (c != 0)` block): one pair's gathers in
// flight per thread at a time. Here plain (coherent) loads force that order, since ptxas may not
// move them above a red that could alias them.
template <int kMode>
__device__ __forceinline__ void body(const Args& a) {
  constexpr bool kGather = kMode != STREAM && kMode != RED;
  constexpr bool kScatter = kMode != STREAM && kMode != GATHER;
  constexpr bool kHoist = kGather && kMode != FULL_SERIAL;
  const long long stride = (long long)gridDim.x * blockDim.x;
  float acc = 0.f;
  for (long long m0 = blockIdx.x * (long long)blockDim.x + threadIdx.x; m0 < a.M; m0 += kUnroll * stride) {
    int ia[kUnroll], ib[kUnroll];
    float tt[kUnroll];
    float4 qa[kUnroll], qb[kUnroll];
    bool in[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const long long m = m0 + u * stride;
      in[u] = m < a.M;
      ia[u] = in[u] ? __ldcs(a.i + m) : 0;
      ib[u] = in[u] ? __ldcs(a.j + m) : 0;
      tt[u] = in[u] ? __ldcs(a.t + m) : 0.f;
    }
    if (kHoist) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) qa[u] = gather<kMode>(a.q + ia[u]), qb[u] = gather<kMode>(a.q + ib[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (!kGather) {  // no gathers: rows built from the streamed values
        qa[u] = qb[u] = make_float4(tt[u], 1e-5f * ia[u], 1e-5f * ib[u], 1.f);
      } else if (!kHoist) {  // gathers next to their use, as in the real kernel's source
        qa[u] = gather<kMode>(a.q + ia[u]);
        qb[u] = gather<kMode>(a.q + ib[u]);
      }
      const float4 x = qa[u], y = qb[u];
      const float d = x.x * y.x + x.y * y.y + x.z * y.z + x.w * y.w - tt[u];  // trivial math
      acc += d * d;
      // As the real kernel: skip c == 0, which all pairs past M are (else row 0 is a hot spot).
      const float c = in[u] ? 1e-6f * d : 0.f;
      if (kScatter && c != 0.f) {
        scatter<kMode>(a.g + ia[u], c, y);
        scatter<kMode>(a.g + ib[u], c, x);
      }
    }
  }
  // Block sum, one atomic per block (keeps the loads from being optimised away).
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) s += warp_sums[w];
    atomicAdd(a.out, s);
  }
}

// Plain (non-template) names so that ncu --kernel-name can pick one. The min-blocks launch
// bound caps the registers without spills (checked with -Xptxas -v).
#define KERNEL(name, mode, min_blocks) \
  __global__ void __launch_bounds__(kThreads, min_blocks) name(Args a) { body<mode>(a); }
KERNEL(k1_stream, STREAM, 8)
KERNEL(k2_gather, GATHER, kMinBlocksHoist)
KERNEL(k3_red, RED, 6)
KERNEL(k4_full, FULL, kMinBlocksHoist)
KERNEL(k5_full_nc_evict_last, FULL_NC_EL, kMinBlocksHoist)
KERNEL(k6_full_atomic_x4, FULL_ATOMIC, kMinBlocksHoist)
KERNEL(k7_full_serial, FULL_SERIAL, 4)
#undef KERNEL

struct Row {
  const char* name;
  void (*kernel)(Args);  // nullptr: memset only
  bool memset;           // zero ∂L/∂q (P x 16 B) first, as the real op does each call
  double bytes_per_pair;
  int blocks_per_sm = 0;  // 0: one full wave (as many as are resident, at most 8/SM as the real grid)
};

static float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  bool ncu = false, cold = false;
  for (int k = 1; k < argc; ++k) ncu |= !std::strcmp(argv[k], "--ncu"), cold |= !std::strcmp(argv[k], "--cold");
  const int warmup = ncu ? 1 : 10, reps = ncu ? 1 : 100;
  const long long Ms[] = {1000000, 10000000}, Mmax = Ms[1];

  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("device: %s, %d SMs, L2 %.1f MB, P = %d, %s, median of %d reps\n", prop.name, sms, prop.l2CacheSize / 1e6,
              P, cold ? "cold (256 MB memset before each rep)" : "warm (no flush between reps)", reps);

  // Data: fixed seed, generated once on the host for the largest M; smaller M use a prefix.
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> idx(0, P - 1);
  std::uniform_real_distribution<float> ang(0.f, 3.14159265f);
  std::normal_distribution<float> n01;
  std::vector<int> hi(Mmax), hj(Mmax);
  std::vector<float> ht(Mmax), hq(4 * P);
  for (long long m = 0; m < Mmax; ++m) hi[m] = idx(rng), hj[m] = idx(rng), ht[m] = ang(rng);
  for (auto& x : hq) x = n01(rng);

  int *di, *dj;
  float *dt, *dout;
  float4 *dq, *dg;
  void* flush = nullptr;
  const size_t flush_bytes = 256u << 20;
  CK(cudaMalloc(&di, Mmax * 4));
  CK(cudaMalloc(&dj, Mmax * 4));
  CK(cudaMalloc(&dt, Mmax * 4));
  CK(cudaMalloc(&dq, P * 16));
  CK(cudaMalloc(&dg, P * 16));
  CK(cudaMalloc(&dout, 4));
  if (cold) CK(cudaMalloc(&flush, flush_bytes));
  CK(cudaMemcpy(di, hi.data(), Mmax * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dj, hj.data(), Mmax * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dt, ht.data(), Mmax * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dq, hq.data(), P * 16, cudaMemcpyHostToDevice));
  CK(cudaMemset(dg, 0, P * 16));
  CK(cudaMemset(dout, 0, 4));

  // The real kernel (float, int32, grad) has 64 registers: 4 of its 8 blocks/SM are resident, in
  // two waves. Row 7 is pinned to one wave of 4 blocks/SM (it would fit 5), the same 32 warps/SM.
  const Row rows[] = {
      {"1 stream", k1_stream, false, 12},
      {"2 stream+2gather", k2_gather, false, 44},
      {"3 stream+2red.v4", k3_red, false, 44},
      {"4 full (gather+red.v4)", k4_full, false, 76},
      {"5 full, ld.nc.L1::evict_last", k5_full_nc_evict_last, false, 76},
      {"6 full, atomicAdd x4", k6_full_atomic_x4, false, 76},
      {"7 full, serial gathers (as real)", k7_full_serial, false, 76, 4},
      {"memset grad", nullptr, true, 0},
      {"memset grad + 4 full", k4_full, true, 76},
  };
  const int n_rows = sizeof rows / sizeof *rows;
  const int n_kernel_rows = 7;  // --ncu launches only k1..k7

  if (!ncu)
    std::printf("\n%-33s %5s %6s %9s %10s %10s %9s %12s\n", "kernel", "regs", "blk/SM", "M", "events us", "graph us",
                "Gpairs/s", "useful GB/s");

  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));

  for (long long M : Ms) {
    const Args a{dq, di, dj, dt, dg, dout, M};
    const long long want = (M + kThreads * kUnroll - 1) / (kThreads * kUnroll);
    for (int row = 0; row < (ncu ? n_kernel_rows : n_rows); ++row) {
      const Row& r = rows[row];
      int occ = r.blocks_per_sm;
      if (r.kernel && !occ) CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, r.kernel, kThreads, 0));
      const unsigned blocks = (unsigned)std::max(1LL, std::min(want, (long long)std::min(occ, 8) * sms));
      auto enqueue = [&] {
        if (r.memset) CK(cudaMemsetAsync(dg, 0, P * 16, s));
        if (r.kernel) r.kernel<<<blocks, kThreads, 0, s>>>(a);
      };
      // Median (in µs) of per-repetition event timings of `launch`.
      auto time = [&](const std::function<void()>& launch) {
        for (int w = 0; w < warmup; ++w) launch();
        CK(cudaStreamSynchronize(s));
        std::vector<float> ms;
        for (int k = 0; k < reps; ++k) {
          if (cold) CK(cudaMemsetAsync(flush, k & 0xff, flush_bytes, s));
          CK(cudaEventRecord(e0, s));
          launch();
          CK(cudaEventRecord(e1, s));
          CK(cudaEventSynchronize(e1));
          float t;
          CK(cudaEventElapsedTime(&t, e0, e1));
          ms.push_back(t);
        }
        CK(cudaGetLastError());
        return 1e3f * median(ms);
      };
      const float us_ev = time(enqueue);
      if (ncu) continue;  // one warm-up + one timed launch each; no graph

      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      enqueue();
      CK(cudaStreamEndCapture(s, &graph));
      CK(cudaGraphInstantiate(&exec, graph, 0));
      const float us_gr = time([&] { CK(cudaGraphLaunch(exec, s)); });
      CK(cudaGraphExecDestroy(exec));
      CK(cudaGraphDestroy(graph));

      const double bytes = r.bytes_per_pair * (r.kernel ? M : 0) + (r.memset ? 16.0 * P : 0);
      cudaFuncAttributes fa{};
      if (r.kernel) CK(cudaFuncGetAttributes(&fa, r.kernel));
      std::printf("%-33s %5d %6d %9lld %10.1f %10.1f %9.2f %12.0f\n", r.name, fa.numRegs, r.kernel ? occ : 0, M, us_ev,
                  us_gr, r.kernel ? M / (us_gr * 1e3) : 0.0, bytes / (us_gr * 1e3));
    }
    if (!ncu) std::printf("\n");
  }
  CK(cudaDeviceSynchronize());
  if (!ncu) {
    float loss;
    CK(cudaMemcpy(&loss, dout, 4, cudaMemcpyDeviceToHost));
    std::printf("(loss accumulator %g; only there so nothing is optimised away)\n", loss);
    std::printf("issue #3 targets (fwd+bwd, zeroing grad included): 200 us at M = 1e7 = %.0f useful GB/s at 76 B/pair, "
                "30 us at M = 1e6 = %.0f GB/s\n",
                76e7 / 200e3, 76e6 / 30e3);
  }
  CK(cudaFree(di));
  CK(cudaFree(dj));
  CK(cudaFree(dt));
  CK(cudaFree(dq));
  CK(cudaFree(dg));
  CK(cudaFree(dout));
  if (flush) CK(cudaFree(flush));
  return 0;
}
