// CUDA all-pairs kernels.
//
// A CTA owns a 128 × 128 tile of pairs (rows row0.., columns col0..) at a time. The
// tile engine computes the cosines Cs = F_rows · F_colsᵀ into shared memory:
//   * bfloat16 / float16 features: tensor cores with fp32 accumulation over a 2-stage
//     cp.async pipeline of swizzled 128-byte k-slices: warpgroup MMAs (wgmma) read straight
//     from shared memory on sm_90a builds running on Hopper (WgmmaTile), mma.sync fed by
//     ldmatrix elsewhere (MmaTile);
//   * float32 features: a plain fp32 SIMT tiled product (exact), or, for the kTF32 code
//     (opt-in), WMMA with TF32 operands (16×16×8; Tf32Tile).
// An epilogue then turns the tile into loss + gradient, cache bytes, k-NN updates or
// gradient-strip entries; nothing of size P × P is stored. The loss from the 1-byte cache has
// no feature product and its own tensor-core kernel (cache_loss_kernel).
//
// Each CTA takes one row tile t and a chunk of kChunk column tiles (u ≥ t in the triangle
// kernels), keeping the row quaternions and row-gradient sums of tile t in shared memory
// across the chunk. Blocks are ordered so that CTAs running together share operands in
// L2: groups of kRowGroup row tiles, chunk by chunk (see ChunkWork). Epilogue
// thread layout: warp w takes rows w, w + 8, ..., lane l the 4 columns 4l..4l+3.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cfloat>
#include <climits>
#include <cstdlib>
#include <cmath>
#include <type_traits>

#include "allpairs/allpairs.h"
#include "allpairs/allpairs_math.h"
#include "cuda_utils.h"

namespace cryoorient {
using namespace allpairs;

namespace {

using namespace nvcuda;

constexpr int BM = kTile, BN = kTile, NT = 256, NW = NT / 32;
constexpr int kRowsPerWarp = BM / NW;  // 16
constexpr int CLD = BN + 8;            // row stride of the cosine tile (floats; 8-bank shift per row)
constexpr size_t kCsBytes = size_t(BM) * CLD * sizeof(float);
constexpr int kChunk = 8;      // column tiles per CTA
constexpr int kRowGroup = 32;  // row tiles per block group (L2 locality)
constexpr unsigned kFull = 0xFFFFFFFFu;

// 16 bytes global -> shared; pred false: fill them with zeros instead.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async16(unsigned s, const void* gmem, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async16(unsigned s, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
// Adds the sum over the CTA of every thread's v to *out (one float64 atomic per CTA).
__device__ __forceinline__ void cta_sum_to(float v, double* out) {
  __shared__ float wsum[NW];
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) wsum[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < NW; ++w) total += wsum[w];
    atomicAdd(out, static_cast<double>(total));
  }
}
__device__ __forceinline__ float dot4(float4 a, float4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }
__device__ __forceinline__ void axpy4(float4& y, float k, float4 x) {
  y.x = fmaf(k, x.x, y.x);
  y.y = fmaf(k, x.y, y.y);
  y.z = fmaf(k, x.z, y.z);
  y.w = fmaf(k, x.w, y.w);
}
__device__ __forceinline__ float comp(float4 v, int x) { return x == 0 ? v.x : x == 1 ? v.y : x == 2 ? v.z : v.w; }

// Work item L (by default blockIdx.x) of a grid from chunk_grid(Tr, Tc): row tile t and
// column tiles [u_begin, u_end) (empty when L falls outside the triangle or past the last row).
struct ChunkWork {
  int64_t t, u_begin, u_end;
  __device__ ChunkWork(int64_t Tr, int64_t Tc, bool triangle, int64_t L = blockIdx.x) {
    // 32-bit: chunk_grid keeps L < 2^31 (64-bit division by a runtime value costs ~100 instructions)
    const unsigned M = static_cast<unsigned>(ceil_div(Tc, kChunk)), G = kRowGroup * M;
    const unsigned g = static_cast<unsigned>(L) / G, rem = static_cast<unsigned>(L) - g * G;
    t = int64_t(g) * kRowGroup + rem % kRowGroup;
    const int64_t m = rem / kRowGroup;
    u_begin = triangle ? max(t, m * kChunk) : m * kChunk;
    u_end = t < Tr ? min(Tc, (m + 1) * kChunk) : u_begin;
  }
};

// ---------------------------------------------------------------------------------
// Tile engines: Cs[r][c] = <F[row0 + r], F[col0 + c]> (rows ≥ P read as zeros) in the
// first kCsBytes of smem; an engine uses the first Tile::kBytes ≥ kCsBytes. Each starts with
// __syncthreads (so the caller may still read smem from the previous tile until then) and
// ends with one (Cs ready).

// float32 features as TF32 WMMA operands (16×16×8), 3-stage cp.async pipeline over
// 64-byte k-slices.
struct Tf32Tile {
  using TF = float;
  using Elem = float;
  static constexpr int V = 16 / sizeof(TF);                     // elements per 16-byte chunk
  static constexpr int BK = 4 * V, LDS = BK + V, STAGES = 3;   // 64-byte k-slices, rows padded by 16 B
  static constexpr int KS = 8;
  static constexpr int kStage = (BM + BN) * LDS;  // elements
  static_assert(size_t(STAGES) * kStage * sizeof(TF) <= kCsBytes, "pipeline buffers alias the cosine tile");
  static constexpr size_t kBytes = kCsBytes;

  __device__ static void load_stage(const TF* __restrict__ F, int64_t P, int64_t ld, int64_t row0, int64_t col0,
                                    int64_t k0, TF* As) {
    TF* Bs = As + BM * LDS;
#pragma unroll
    for (int x = 0; x < (BM * 4) / NT; ++x) {  // 4 chunks per row
      const int c = threadIdx.x + NT * x;
      const int r = c >> 2, kc = (c & 3) * V;
      const int64_t gr = row0 + r, gc = col0 + r;
      cp_async16(As + r * LDS + kc, F + (gr < P ? gr : 0) * ld + k0 + kc, gr < P);
      cp_async16(Bs + r * LDS + kc, F + (gc < P ? gc : 0) * ld + k0 + kc, gc < P);
    }
  }

  template <typename Frag>
  __device__ static void to_operand(Frag& f) {
#pragma unroll
    for (int t = 0; t < f.num_elements; ++t) f.x[t] = wmma::__float_to_tf32(f.x[t]);
  }

  __device__ static void run(const TF* __restrict__ F, int64_t P, int64_t ld, int64_t row0, int64_t col0,
                             unsigned char* smem) {
    using Op = wmma::precision::tf32;
    TF* buf = reinterpret_cast<TF*>(smem);
    float* Cs = reinterpret_cast<float*>(smem);
    const int warp = threadIdx.x >> 5, wm = warp >> 2, wn = warp & 3;  // warp tile 64 × 32
    const int KT = static_cast<int>(ld / BK);
    wmma::fragment<wmma::accumulator, 16, 16, KS, float> acc[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    __syncthreads();
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < KT) load_stage(F, P, ld, row0, col0, int64_t(s) * BK, buf + s * kStage);
      cp_async_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
      cp_async_wait<STAGES - 2>();  // stage kt has landed (for this thread) ...
      __syncthreads();              // ... for all threads; stage kt - 1 is free again
      const int pre = kt + STAGES - 1;
      if (pre < KT) load_stage(F, P, ld, row0, col0, int64_t(pre) * BK, buf + (pre % STAGES) * kStage);
      cp_async_commit();
      const TF* As = buf + (kt % STAGES) * kStage;
      const TF* Bs = As + BM * LDS;
#pragma unroll
      for (int kk = 0; kk < BK; kk += KS) {
        wmma::fragment<wmma::matrix_a, 16, 16, KS, Op, wmma::row_major> fa[4];
        wmma::fragment<wmma::matrix_b, 16, 16, KS, Op, wmma::col_major> fb[2];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          wmma::load_matrix_sync(fa[i], As + (wm * 64 + i * 16) * LDS + kk, LDS);
          to_operand(fa[i]);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          wmma::load_matrix_sync(fb[j], Bs + (wn * 32 + j * 16) * LDS + kk, LDS);
          to_operand(fb[j]);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with the pipeline buffers that Cs overwrites
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(Cs + (wm * 64 + i * 16) * CLD + wn * 32 + j * 16, acc[i][j], CLD,
                                wmma::mem_row_major);
    __syncthreads();
  }
};

// bfloat16 / float16 operands through mma.sync m16n8k16 (fp32 accumulation) fed by
// ldmatrix: k-slices of 64 elements (128-byte rows, 16-byte chunk c of row r stored at
// c ^ (r % 8), so ldmatrix and cp.async are free of bank conflicts), a 2-stage cp.async
// pipeline that the cosine tile then overwrites. (Deeper pipelines and 32-element slices
// measured no faster on the H100.) Warp w owns the 64 × 32 block (rows 64·(w / 4), columns
// 32·(w % 4)) as 4 × 4 m16n8 accumulators.
template <typename TF>
struct MmaTile {
  using Elem = TF;
  static constexpr int BK = 64, STAGES = 2;
  static constexpr int CPR = BK / 8;  // 16-byte chunks per row
  static constexpr int kStage = (BM + BN) * BK;  // elements
  static constexpr size_t kPipeBytes = size_t(STAGES) * kStage * sizeof(TF);
  static constexpr size_t kBytes = kPipeBytes > kCsBytes ? kPipeBytes : kCsBytes;

  // Element offset of chunk c (8 elements) of row r in a stage.
  __device__ static int chunk_at(int r, int c) {
    return r * BK + 8 * (c ^ (r & 7));
  }

  // cp.async chunks of this thread in a stage: chunk lc = tid % CPR of rows
  // lr + kRowStep·x, x < XN, lr = tid / CPR (the first XN / 2 are A rows, the rest B rows).
  static constexpr int XN = (BM + BN) * CPR / NT, kRowStep = NT / CPR;
  static_assert(XN / 2 * kRowStep == BM && kRowStep % 8 == 0, "chunk rows");
  struct Chunks {
    const TF* a;     // chunk lc of A row lr (k = 0)
    const TF* b;     // chunk lc of B row lr
    int64_t step;    // kRowStep rows, in elements
    int64_t ra, rb;  // rows of a and b
    unsigned d;      // shared address of chunk lc of row lr in stage 0

    __device__ Chunks(const TF* F, int64_t ld, int64_t row0, int64_t col0, unsigned base) {
      const int lr = threadIdx.x / CPR, lc = threadIdx.x % CPR;
      ra = row0 + lr;
      rb = col0 + lr;
      a = F + ra * ld + 8 * lc;
      b = F + rb * ld + 8 * lc;
      step = int64_t(kRowStep) * ld;
      d = base + 2 * chunk_at(lr, lc);
    }
    // k-slice k0 into stage s. kFull: every row < P and every k < ld; otherwise those chunks
    // are zero-filled (pointers past them are formed but never read).
    template <bool kFull>
    __device__ void load(int64_t P, int64_t ld, int64_t k0, int s) const {
      const bool kok = kFull || k0 + 8 * (threadIdx.x % CPR) < ld;
#pragma unroll
      for (int x = 0; x < XN; ++x) {
        const int xx = x % (XN / 2);
        const TF* g = (x < XN / 2 ? a : b) + xx * step + k0;
        const unsigned dst = d + 2 * (s * kStage + x * kRowStep * BK);
        if constexpr (kFull)
          cp_async16(dst, g);
        else
          cp_async16(dst, g, kok && (x < XN / 2 ? ra : rb) + xx * kRowStep < P);
      }
    }
  };

  // Engine::mainloop<kFull> over the tile (kFull: the whole tile inside P and ld a multiple
  // of BK, uniform across the CTA), then Engine::store of its accumulators as the cosine tile.
  template <typename Engine, typename Acc>
  __device__ static void run_engine(const TF* __restrict__ F, int64_t P, int64_t ld, int64_t row0, int64_t col0,
                                    unsigned char* smem) {
    Acc acc;
    const unsigned base = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    const Chunks chunks(F, ld, row0, col0, base);
    if (row0 + BM <= P && col0 + BN <= P && ld % BK == 0)
      Engine::template mainloop<true>(chunks, P, ld, base, acc);
    else
      Engine::template mainloop<false>(chunks, P, ld, base, acc);
    Engine::store(acc, reinterpret_cast<float*>(smem));
  }

  __device__ static void ldmatrix4(uint32_t (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  }

  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same_v<TF, __nv_bfloat16>) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
  }

  __device__ static void run(const TF* __restrict__ F, int64_t P, int64_t ld, int64_t row0, int64_t col0,
                             unsigned char* smem) {
    run_engine<MmaTile, float[4][4][4]>(F, P, ld, row0, col0, smem);
  }

  template <bool kFull>
  __device__ static void mainloop(const Chunks& chunks, int64_t P, int64_t ld, unsigned base, float (&acc)[4][4][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp >> 2, wn = warp & 3;
    const int KT = static_cast<int>(ceil_div(ld, BK));
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int v = 0; v < 4; ++v) acc[i][j][v] = 0.0f;
    __syncthreads();
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < KT) chunks.template load<kFull>(P, ld, int64_t(s) * BK, s);
      cp_async_commit();
    }
    // ldmatrix rows of this lane: A (x4 = rows 0-7 / 8-15 × k 0-7 / 8-15), B (x4 = n 0-7 /
    // 8-15 × k 0-7 / 8-15, read as two n8 fragments). Rows 16 apart share their swizzle.
    const int rA = wm * 64 + (lane & 15), cA = lane >> 4;
    const int rB = BM + wn * 32 + (lane & 7) + ((lane >> 4) << 3), cB = (lane >> 3) & 1;
    const int xa = rA & 7, xb = rB & 7;
    const unsigned row_a = base + rA * BK * 2, row_b = base + rB * BK * 2;
    for (int kt = 0; kt < KT; ++kt) {
      cp_async_wait<STAGES - 2>();
      __syncthreads();
      const int pre = kt + STAGES - 1;
      if (pre < KT) chunks.template load<kFull>(P, ld, int64_t(pre) * BK, pre % STAGES);
      cp_async_commit();
      const unsigned stage = (kt % STAGES) * kStage * 2;
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {
        const unsigned pa = row_a + stage + 16 * ((2 * kk + cA) ^ xa);
        const unsigned pb = row_b + stage + 16 * ((2 * kk + cB) ^ xb);
        uint32_t fa[4][4], fb[4][2];
#pragma unroll
        for (int i = 0; i < 4; ++i) ldmatrix4(fa[i], pa + i * 16 * BK * 2);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          uint32_t r[4];
          ldmatrix4(r, pb + j * 16 * BK * 2);
          fb[2 * j][0] = r[0];
          fb[2 * j][1] = r[1];
          fb[2 * j + 1][0] = r[2];
          fb[2 * j + 1][1] = r[3];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) mma(acc[i][j], fa[i], fb[j][0], fb[j][1]);
      }
    }
  }

  // Accumulators -> cosine tile (after every warp is done with the pipeline buffers).
  __device__ static void store(const float (&acc)[4][4][4], float* Cs) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp >> 2, wn = warp & 3;
    cp_async_wait<0>();
    __syncthreads();
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float* c = Cs + (wm * 64 + 16 * i + g) * CLD + wn * 32 + 8 * j + 2 * t;
        *reinterpret_cast<float2*>(c) = make_float2(acc[i][j][0], acc[i][j][1]);
        *reinterpret_cast<float2*>(c + 8 * CLD) = make_float2(acc[i][j][2], acc[i][j][3]);
      }
    __syncthreads();
  }
};

// Hopper (sm_90a) engine for bfloat16 / float16: the same loads and shared-memory layout as
// MmaTile (that layout is the 128-byte-swizzled K-major one wgmma reads), multiplied by
// warpgroup MMAs straight from shared memory: warpgroup w of the CTA computes rows
// 64·w..64·w + 63 × all 128 columns with m64n128k16, 4 per k-slice. The stage buffers must
// start 1024-byte aligned (the swizzle repeats every 8 rows of 128 bytes).
template <typename TF>
struct WgmmaTile {
  using Elem = TF;
  using Base = MmaTile<TF>;
  static constexpr int BK = Base::BK, STAGES = Base::STAGES, CPR = Base::CPR, kStage = Base::kStage;
  static constexpr size_t kBytes = Base::kBytes;

  // Shared-memory matrix descriptor: start address, stride 1024 bytes between 8-row groups,
  // 128-byte swizzle.
  __device__ static uint64_t descriptor(unsigned addr) {
    return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
  }

  __device__ static void wgmma(float (&d)[64], uint64_t da, uint64_t db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// d (64 fp32 accumulators per thread) += A(da)·B(db), operands of type TY ("bf16" / "f16").
#define CO_WGMMA_M64N128K16(TY)                                                                       \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                              \
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n" \
               : \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
               : "l"(da), "l"(db), "r"(1))
    if constexpr (std::is_same_v<TF, __nv_bfloat16>)
      CO_WGMMA_M64N128K16("bf16");
    else
      CO_WGMMA_M64N128K16("f16");
#undef CO_WGMMA_M64N128K16
#else
    __trap();
#endif
  }

  __device__ static void run(const TF* __restrict__ F, int64_t P, int64_t ld, int64_t row0, int64_t col0,
                             unsigned char* smem) {
    Base::template run_engine<WgmmaTile, float[64]>(F, P, ld, row0, col0, smem);
  }

  template <bool kFull>
  __device__ static void mainloop(const typename Base::Chunks& chunks, int64_t P, int64_t ld, unsigned base,
                                  float (&acc)[64]) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if (base % 1024 != 0) __trap();  // the kernels declare smem __align__(1024)
    const int KT = static_cast<int>(ceil_div(ld, BK));
    const unsigned wg = threadIdx.x >> 7;  // warpgroup: rows 64·wg..
#pragma unroll
    for (int v = 0; v < 64; ++v) acc[v] = 0.0f;
    __syncthreads();
    chunks.template load<kFull>(P, ld, 0, 0);
    cp_async_commit();
    for (int kt = 0; kt < KT; ++kt) {
      cp_async_wait<0>();
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // cp.async data -> wgmma
      __syncthreads();
      if (kt + 1 < KT) chunks.template load<kFull>(P, ld, int64_t(kt + 1) * BK, (kt + 1) % STAGES);
      cp_async_commit();
      const unsigned stage = base + (kt % STAGES) * kStage * 2;
      const uint64_t da = descriptor(stage + wg * 64 * BK * 2), db = descriptor(stage + BM * BK * 2);
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) wgmma(acc, da + 2 * kk, db + 2 * kk);  // +32 bytes per k16
      asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    }
#else
    __trap();
#endif
  }

  // Accumulators -> cosine tile: thread (warp w, lane l) holds rows 64·(w / 4) + 16·(w % 4) +
  // l / 4 (+ 8) and columns 8·j + 2·(l % 4) (+ 1) in acc[4j..4j + 3].
  __device__ static void store(const float (&acc)[64], float* Cs) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row = 16 * warp + (lane >> 2), t = lane & 3;
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      float* c = Cs + row * CLD + 8 * j + 2 * t;
      *reinterpret_cast<float2*>(c) = make_float2(acc[4 * j], acc[4 * j + 1]);
      *reinterpret_cast<float2*>(c + 8 * CLD) = make_float2(acc[4 * j + 2], acc[4 * j + 3]);
    }
    __syncthreads();
  }
};

// Plain fp32 tiled product: 16 × 16 threads, each an 8 × 8 block of rows ty + 16·i
// and columns tx + 16·j; k-slices of 16 staged transposed in shared memory.
struct SimtTile {
  using Elem = float;
  static constexpr int BK = 16, LDT = BM + 4;
  static_assert(2 * BK * LDT * sizeof(float) <= kCsBytes, "staging buffers alias the cosine tile");
  static constexpr size_t kBytes = kCsBytes;

  __device__ static void run(const float* __restrict__ F, int64_t P, int64_t ld, int64_t row0, int64_t col0,
                             unsigned char* smem) {
    float* As = reinterpret_cast<float*>(smem);  // As[k][r] = F[row0 + r][k0 + k]
    float* Bs = As + BK * LDT;
    float* Cs = reinterpret_cast<float*>(smem);
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
    for (int64_t k0 = 0; k0 < ld; k0 += BK) {
      __syncthreads();
#pragma unroll
      for (int x = 0; x < (BM * BK / 4) / NT; ++x) {  // float4 chunks: 4 per row of 16
        const int c = tid + NT * x;
        const int r = c >> 2, k4 = (c & 3) * 4;
        const int64_t gr = row0 + r, gc = col0 + r;
        const float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
        const float4 va = gr < P ? __ldg(reinterpret_cast<const float4*>(F + gr * ld + k0 + k4)) : z;
        const float4 vb = gc < P ? __ldg(reinterpret_cast<const float4*>(F + gc * ld + k0 + k4)) : z;
        As[(k4 + 0) * LDT + r] = va.x;
        As[(k4 + 1) * LDT + r] = va.y;
        As[(k4 + 2) * LDT + r] = va.z;
        As[(k4 + 3) * LDT + r] = va.w;
        Bs[(k4 + 0) * LDT + r] = vb.x;
        Bs[(k4 + 1) * LDT + r] = vb.y;
        Bs[(k4 + 2) * LDT + r] = vb.z;
        Bs[(k4 + 3) * LDT + r] = vb.w;
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < BK; ++k) {
        float a[8], b[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = As[k * LDT + ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 8; ++j) b[j] = Bs[k * LDT + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) Cs[(ty + 16 * i) * CLD + tx + 16 * j] = acc[i][j];
    __syncthreads();
  }
};

// Cosines of this thread's 4 columns in tile row rr.
__device__ __forceinline__ float4 cs_row(const float* Cs, int rr, int lane) {
  return *reinterpret_cast<const float4*>(Cs + rr * CLD + 4 * lane);
}

__device__ __forceinline__ void add4(float4& y, float4 x) {
  y.x += x.x;
  y.y += x.y;
  y.z += x.z;
  y.w += x.w;
}

// ---------------------------------------------------------------------------------
// Loss + gradient from features.
//
// Per tile, thread (warp w, lane l) takes rows w + 8m (m < 16) × columns 4l..4l+3. The
// gradient sums avoid per-row warp shuffles: each thread writes its partial sum for row
// rr (over its 4 columns) into the cosine-tile slot it has just read, and its 4 column
// partials to colred; after a barrier, two threads per row and one per column add the
// partials up. Row sums stay in shared memory across the CTA's column chunk; column sums
// go to global memory (atomics) after every tile.

struct LossParams {
  const void* F;
  const float4* q;
  int64_t P, ld, s, e, Tr, Tc;
  float cutoff;
  double* loss;
  float* gq;  // P × 4
};

// Shared memory of loss_kernel: the tile engine's region (cosine tile, then column
// partials, which may overlap the engine's pipeline buffers), then the row quaternions and
// row gradient sums.
template <typename Tile>
__host__ __device__ constexpr size_t loss_rows_offset() {
  constexpr size_t cols = kCsBytes + size_t(NW) * BN * sizeof(float4);
  return Tile::kBytes > cols ? Tile::kBytes : cols;
}
template <typename Tile>
constexpr size_t loss_smem() {
  return loss_rows_offset<Tile>() + 2 * BM * sizeof(float4);
}

// kCut: a finite weight cutoff (otherwise every pair has weight 1).
template <typename Tile, int kKind, bool kCut>
__global__ void __launch_bounds__(NT, 2) loss_kernel(LossParams p) {
  extern __shared__ __align__(1024) unsigned char smem[];
  float* Cs = reinterpret_cast<float*>(smem);                   // [BM][CLD] cosines, then row partials
  float4* colred = reinterpret_cast<float4*>(smem + kCsBytes);  // [NW][4][32] column partials
  constexpr size_t kRows = loss_rows_offset<Tile>();
  float4* rowq = reinterpret_cast<float4*>(smem + kRows);  // [BM] row quaternions
  float4* rowacc = rowq + BM;                                   // [BM] row gradient sums

  const ChunkWork work(p.Tr, p.Tc, true);
  const int64_t t = work.t, u_begin = work.u_begin, u_end = work.u_end;
  if (u_begin >= u_end) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t row0 = p.s + t * BM;
  const int nr = static_cast<int>(min(int64_t(BM), p.e - row0));
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  if (tid < BM) {
    rowq[tid] = row0 + tid < p.P ? p.q[row0 + tid] : zero;
    rowacc[tid] = zero;
  }
  __syncthreads();

  float loss = 0.0f;
  for (int64_t u = u_begin; u < u_end; ++u) {
    const int64_t col0 = p.s + u * BN;
    Tile::run(static_cast<const typename Tile::Elem*>(p.F), p.P, p.ld, row0, col0, smem);
    const int nc = static_cast<int>(min(int64_t(BN), p.P - col0));
    const bool diag = u == t;
    float4 b[4], cacc[4];
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      b[x] = 4 * lane + x < nc ? p.q[col0 + 4 * lane + x] : zero;
      cacc[x] = zero;
    }
    auto pairs = [&](auto interior) {
#pragma unroll 2
      for (int m = 0; m < kRowsPerWarp; ++m) {
        const int rr = warp + NW * m;
        const float4 a = rowq[rr];
        const float4 c4 = cs_row(Cs, rr, lane);
        float dp[4];
#pragma unroll
        for (int x = 0; x < 4; ++x) dp[x] = feature_distance<kKind>(comp(c4, x));
        float4 racc = zero;
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          const int jc = 4 * lane + x;
          bool valid = !kCut || dp[x] <= p.cutoff;
          if (!decltype(interior)::value) valid = valid && rr < nr && jc < nc && (!diag || jc > rr);
          float k;
          const float l = pair_loss(dp[x], dot4(a, b[x]), &k);
          if (valid) loss += l;
          k = valid ? k : 0.0f;
          axpy4(racc, k, b[x]);
          axpy4(cacc[x], k, a);
        }
        *reinterpret_cast<float4*>(Cs + rr * CLD + 4 * lane) = racc;  // the slot just read
      }
    };
    if (!diag && nr == BM && nc == BN)
      pairs(std::true_type{});
    else
      pairs(std::false_type{});
    {
#pragma unroll
      for (int x = 0; x < 4; ++x) colred[(warp * 4 + x) * 32 + lane] = cacc[x];
      __syncthreads();
      {  // row rr = tid / 2: half h adds 16 of its 32 partials, then the pair combines
        const int rr = tid >> 1, h = tid & 1;
        float4 sum = zero;
#pragma unroll
        for (int v = 0; v < 16; ++v) add4(sum, *reinterpret_cast<const float4*>(Cs + rr * CLD + (16 * h + v) * 4));
        sum.x += __shfl_xor_sync(kFull, sum.x, 1);
        sum.y += __shfl_xor_sync(kFull, sum.y, 1);
        sum.z += __shfl_xor_sync(kFull, sum.z, 1);
        sum.w += __shfl_xor_sync(kFull, sum.w, 1);
        if (h == 0) add4(rowacc[rr], sum);
      }
      if (tid < nc) {  // column col0 + tid: lane tid / 4, slot tid % 4 of every warp
        float4 sum = zero;
#pragma unroll
        for (int w = 0; w < NW; ++w) add4(sum, colred[(w * 4 + (tid & 3)) * 32 + (tid >> 2)]);
        float* g = p.gq + 4 * (col0 + tid);
        atomicAdd(g + 0, 4.0f * sum.x);
        atomicAdd(g + 1, 4.0f * sum.y);
        atomicAdd(g + 2, 4.0f * sum.z);
        atomicAdd(g + 3, 4.0f * sum.w);
      }
    }
  }
  {
    __syncthreads();
    if (tid < nr) {
      float* g = p.gq + 4 * (row0 + tid);
      const float4 v = rowacc[tid];
      atomicAdd(g + 0, 4.0f * v.x);
      atomicAdd(g + 1, 4.0f * v.y);
      atomicAdd(g + 2, 4.0f * v.z);
      atomicAdd(g + 3, 4.0f * v.w);
    }
  }
  cta_sum_to(loss, p.loss);
}

// ---------------------------------------------------------------------------------
// Cache build: tile (t, u) of cosines -> 16 KiB of codes, put in code_offset order in
// shared memory after the engine's region, then copied out in 16-byte pieces.

struct CacheParams {
  const void* F;
  uint8_t* codes;
  int64_t P, ld, s, e, Tr, Tc;
};

template <typename Tile, int kKind>
__global__ void __launch_bounds__(NT, 2) cache_build_kernel(CacheParams p) {
  extern __shared__ __align__(1024) unsigned char smem[];
  const ChunkWork work(p.Tr, p.Tc, true);
  const int64_t t = work.t;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t row0 = p.s + t * BM;
  uint8_t* staged = smem + Tile::kBytes;
  for (int64_t u = work.u_begin; u < work.u_end; ++u) {
    const int64_t col0 = p.s + u * BN;
    Tile::run(static_cast<const typename Tile::Elem*>(p.F), p.P, p.ld, row0, col0, smem);
    for (int m = 0; m < kRowsPerWarp; ++m) {
      const int rr = warp + NW * m;
      const int64_t i = row0 + rr;
      const float4 c4 = cs_row(reinterpret_cast<const float*>(smem), rr, lane);
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int64_t j = col0 + 4 * lane + x;
        const bool in = j > i && j < p.P && i < p.e;
        staged[code_offset(rr, 4 * lane + x)] = in ? encode_distance(feature_distance<kKind>(comp(c4, x))) : 0;
      }
    }
    __syncthreads();
    uint4* tile = reinterpret_cast<uint4*>(p.codes + tri_tile_index(t, u, p.Tc) * kTileBytes);
    for (int v = tid; v < int(kTileBytes / 16); v += NT) tile[v] = reinterpret_cast<const uint4*>(staged)[v];
  }
}

// ---------------------------------------------------------------------------------
// Loss + gradient from the cache, on tensor cores (sm_80 and later).
//
// Warp w of a CTA takes columns 16w..16w+15 of each tile against all 128 rows, as eight
// 16-row blocks m. Per block, in the mma.sync m16n8k16 accumulator layout (lane 4g + t holds
// rows g and g + 8 of columns 2t, 2t + 1 and 8 + 2t, 9 + 2t):
//   * dot products <q_i, q_j> from one mma.sync per 8 columns on float16 hi + lo splits of
//     the quaternions (hi·hi + lo·hi + hi·lo: float32 accuracy);
//   * per-pair math in float32; the weights k = ∂L/∂<q_i, q_j> / 4 are then rounded to
//     float16 (relative 2^-11, far finer than the 1-byte d_p);
//   * row gradients K·Q_cols by mma.sync straight from those registers, summed in registers
//     over the CTA's column tiles; column gradients Kᵀ·Q_rows from the same registers
//     transposed by movmatrix. Their B operands carry the hi and lo float16 parts of the
//     quaternions in accumulator columns 0-3 and 4-7, added up at the end.
// Operand fragments of every 16-index block come from a prepass (quat_frag_kernel). Each lane
// reads only its own 64 bytes of a tile (code_offset order) through a cp.async ring, so tiles
// need no barrier. CTAs are persistent (two per SM); a second launch takes the edge tiles, so
// the interior kernel carries no masks.

constexpr int kCacheStages = 4;  // tiles in flight per CTA (16 KiB each)

// Operand fragments of the 16 quaternions s + 16b.. (zero past P) for lane 4g + t, float16x2.
// The dot products use 16-long vectors a(i) = (hi q_i, lo q_i, hi q_i, 0) of the rows and
// b(i) = (hi q_i, hi q_i, lo q_i, 0) of the columns, so <a(i), b(j)> = hi·hi + lo·hi + hi·lo
// (≈ float32): a = A operand of m16n8k16 (rows g, g + 8), b = B operands of columns g and
// g + 8. h = the B operand of the gradient products, k over the block and n over
// (hi q[.][0..3], lo q[.][0..3]): (q[2t][n], q[2t + 1][n]), (q[2t + 8][n], q[2t + 9][n]) for
// n = g, so the products give hi and lo sums side by side in the accumulator columns.
struct QuatFrag {
  uint4 a, b;
  uint2 h, unused;
};

__device__ __forceinline__ uint32_t half2_bits(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }

__global__ void quat_frag_kernel(const float* __restrict__ q, int64_t P, int64_t s, int64_t n_blocks,
                                 QuatFrag* __restrict__ out) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= 32 * n_blocks) return;
  const int lane = idx & 31, g = lane >> 2, t = lane & 3;
  const int64_t base = s + 16 * (idx >> 5);
  auto part = [&](int r, int c, bool lo) {  // hi or lo float16 of q[base + r][c]
    const float x = base + r < P ? q[4 * (base + r) + c] : 0.0f;
    const __half h = __float2half_rn(x);
    return lo ? __float2half_rn(x - __half2float(h)) : h;
  };
  auto a = [&](int r, int k) { return k < 12 ? part(r, k & 3, k >> 2 == 1) : __half(0.0f); };
  auto b = [&](int r, int k) { return k < 12 ? part(r, k & 3, k >> 2 == 2) : __half(0.0f); };
  auto pack = [](__half x, __half y) { return half2_bits(__halves2half2(x, y)); };
  QuatFrag f;
  f.a = make_uint4(pack(a(g, 2 * t), a(g, 2 * t + 1)), pack(a(g + 8, 2 * t), a(g + 8, 2 * t + 1)),
                   pack(a(g, 2 * t + 8), a(g, 2 * t + 9)), pack(a(g + 8, 2 * t + 8), a(g + 8, 2 * t + 9)));
  f.b = make_uint4(pack(b(g, 2 * t), b(g, 2 * t + 1)), pack(b(g, 2 * t + 8), b(g, 2 * t + 9)),
                   pack(b(g + 8, 2 * t), b(g + 8, 2 * t + 1)), pack(b(g + 8, 2 * t + 8), b(g + 8, 2 * t + 9)));
  const int c = g & 3;
  const bool lo = g >= 4;
  f.h = make_uint2(pack(part(2 * t, c, lo), part(2 * t + 1, c, lo)), pack(part(2 * t + 8, c, lo), part(2 * t + 9, c, lo)));
  f.unused = make_uint2(0, 0);
  out[idx] = f;
}

// d += A·B: m16n8k16, float16 operands, float32 accumulators.
__device__ __forceinline__ void mma_f16(float* d, uint4 a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t transpose8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}
// g[0] += x, g[1] += y (one vector reduction on sm_90; g 8-byte aligned).
__device__ __forceinline__ void red_add(float* g, float x, float y) {
#if __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(g), "f"(x), "f"(y) : "memory");
#else
  atomicAdd(g, x);
  atomicAdd(g + 1, y);
#endif
}

struct CacheLossParams {
  const uint8_t* codes;
  const QuatFrag* frags;
  int64_t P, s, e, Tr, Tc;
  int64_t full_rows, full_cols;  // row tiles t < full_rows have BM rows, column tiles u < full_cols BN columns
  int64_t n_blocks, n_items, n_edge_items;
  float cut;  // pairs count while 1 + code·2^-15 ≤ cut (kCut)
  double* loss;
  float* gq;  // P × 4
};

// The d_p of a code byte enters as f = 1 + code·2^-15 (exact: the byte placed in the
// mantissa), so d_p - d_q = f·S - (S + d_q) with S = 2^15·kCodeStep: one FFMA, and S + d_q
// (< 410) rounds to 3e-5 rad.
constexpr float kCodeScale = 32768.0f * kCodeStep;

// kEdge false: the interior tiles (off the diagonal, 128 × 128 pairs in range); true: the
// others (diagonal tiles, a partial last column tile, every tile of a partial row tile).
template <bool kCut, bool kEdge>
__global__ void __launch_bounds__(NT, 2) cache_loss_kernel(CacheLossParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(1024) unsigned char smem[];
  QuatFrag* rowf = reinterpret_cast<QuatFrag*>(smem + kCacheStages * kTileBytes);  // [8 blocks][32 lanes]
  float2* part = reinterpret_cast<float2*>(smem);  // [NW][BM][4] row partials, over the ring
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const unsigned ring = static_cast<unsigned>(__cvta_generic_to_shared(smem)) + warp * 2048 + lane * 16;
  const QuatFrag zero_frag{make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0), make_uint2(0, 0), make_uint2(0, 0)};
  float loss = 0.0f;

  // Persistent CTAs take work items L round robin: row tile t and its column tiles first + k
  // (k < count), or up to two listed ones. Interior: the items of chunk_grid(Tr, Tc) of full
  // row tiles, without the diagonal and a partial last column tile. Edge: one item per full
  // row tile (its diagonal and partial last column tiles), then the partial last row tile in
  // chunks of kChunk column tiles.
  const int64_t n_items = kEdge ? p.n_edge_items : p.n_items;
  for (int64_t L = blockIdx.x; L < n_items; L += gridDim.x) {
    int64_t t, first = 0, count = 0, listed[2];
    bool use_list = false;
    if (!kEdge) {
      const ChunkWork work(p.Tr, p.Tc, true, L);
      t = work.t;
      if (work.u_begin >= work.u_end || t >= p.full_rows) continue;
      first = work.u_begin + (work.u_begin == t);
      count = min(work.u_end, p.full_cols) - first;
    } else if (L < p.full_rows) {
      t = L;
      use_list = true;
      listed[count++] = t;
      if (p.full_cols < p.Tc && p.Tc - 1 != t) listed[count++] = p.Tc - 1;
    } else {
      t = p.Tr - 1;
      first = t + kChunk * (L - p.full_rows);
      count = min(p.Tc, first + kChunk) - first;
    }
    if (count <= 0) continue;
    const int64_t row0 = p.s + t * BM;
    const int nr = static_cast<int>(min(int64_t(BM), p.e - row0));
    auto tile_at = [&](int64_t k) { return use_list ? listed[k] : first + k; };
    __syncthreads();  // the previous item's row partials (over the ring) and rowf are read
    {
      const int64_t b = 8 * t + warp;
      rowf[tid] = b < p.n_blocks ? p.frags[32 * b + lane] : zero_frag;
    }
    auto issue = [&](int64_t k) {
      if (k < count) {
        const uint8_t* src = p.codes + tri_tile_index(t, tile_at(k), p.Tc) * kTileBytes + warp * 2048 + lane * 16;
        const unsigned dst = ring + static_cast<unsigned>(k % kCacheStages) * kTileBytes;
#pragma unroll
        for (int v = 0; v < 4; ++v) cp_async16(dst + 512 * v, src + 512 * v);
      }
      cp_async_commit();
    };
#pragma unroll
    for (int k = 0; k < kCacheStages - 1; ++k) issue(k);
    __syncthreads();  // rowf

    float rowacc[8][4];
#pragma unroll
    for (int m = 0; m < 8; ++m)
#pragma unroll
      for (int x = 0; x < 4; ++x) rowacc[m][x] = 0.0f;
    for (int64_t k = 0; k < count; ++k) {
      issue(k + kCacheStages - 1);
      cp_async_wait<kCacheStages - 1>();  // this lane's bytes of tile k have landed
      const int64_t u = tile_at(k);
      const int64_t col0 = p.s + u * BN;
      const int nc = static_cast<int>(min(int64_t(BN), p.P - col0));
      const int64_t cb = 8 * u + warp;
      const QuatFrag cf = cb < p.n_blocks ? p.frags[32 * cb + lane] : zero_frag;
      const unsigned char* mine = smem + (k % kCacheStages) * kTileBytes + warp * 2048 + lane * 16;
      float colacc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
      auto pairs = [&](auto interior) {
#pragma unroll
        for (int m = 0; m < 8; ++m) {
          const uint4 ra = rowf[32 * m + lane].a;
          const uint2 rh = rowf[32 * m + lane].h;
          const uint2 words = *reinterpret_cast<const uint2*>(mine + (m >> 1) * 512 + (m & 1) * 8);
          float dot[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
          mma_f16(dot[0], ra, cf.b.x, cf.b.y);
          mma_f16(dot[1], ra, cf.b.z, cf.b.w);
          float k[2][4];
#pragma unroll
          for (int n = 0; n < 2; ++n) {
            const uint32_t word = n ? words.y : words.x;
#pragma unroll
            for (int c = 0; c < 4; ++c) {
              const float f = __uint_as_float(__byte_perm(word, 0x3F800000u, 0x7604u | (c << 4)));
              const float d = dot[n][c], x = fabsf(d), v = 1.0f - x;
              const float inv = fminf(approx_rsqrt(fabsf(fmaf(v, x, v))), Limits<float>::kMaxInvSin);
              const float dq = fmaf(approx_sqrt(fabsf(v)), half_angle_poly(x), kCodeScale);  // S + d_q
              float r = fmaf(f, kCodeScale, -dq);  // d_p - d_q
              bool valid = !kCut || f <= p.cut;
              if (!decltype(interior)::value) {
                const int rr = 16 * m + g + 8 * (c >> 1), cc = 16 * warp + 8 * n + 2 * tq + (c & 1);
                valid = valid && rr < nr && cc < nc && (u != t || cc > rr);
              }
              if (kCut || !decltype(interior)::value) r = valid ? r : 0.0f;
              loss = fmaf(r, r, loss);
              k[n][c] = r * copysignf(inv, d);
            }
          }
          const uint4 K = make_uint4(half2_bits(__floats2half2_rn(k[0][0], k[0][1])),
                                     half2_bits(__floats2half2_rn(k[0][2], k[0][3])),
                                     half2_bits(__floats2half2_rn(k[1][0], k[1][1])),
                                     half2_bits(__floats2half2_rn(k[1][2], k[1][3])));
          mma_f16(rowacc[m], K, cf.h.x, cf.h.y);
          const uint4 KT = make_uint4(transpose8x8(K.x), transpose8x8(K.z), transpose8x8(K.y), transpose8x8(K.w));
          mma_f16(colacc[m & 1], KT, rh.x, rh.y);  // two accumulators: shorter dependency chains
        }
      };
      pairs(std::integral_constant<bool, !kEdge>{});
      // Columns g and g + 8 of the warp: lane tq holds hi (tq < 2) or lo (tq ≥ 2) sums of
      // components 2tq % 4, 2tq % 4 + 1; lanes tq and tq ^ 2 add theirs.
      float col[4];
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        col[x] = colacc[0][x] + colacc[1][x];
        col[x] += __shfl_xor_sync(kFull, col[x], 2);
      }
      if (tq < 2) {
        const int64_t j = col0 + 16 * warp + g;
        if (j < p.P) red_add(p.gq + 4 * j + 2 * tq, 4.0f * col[0], 4.0f * col[1]);
        if (j + 8 < p.P) red_add(p.gq + 4 * (j + 8) + 2 * tq, 4.0f * col[2], 4.0f * col[3]);
      }
    }
    // Row gradients: each warp's partial sums over its columns, added up across warps.
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int m = 0; m < 8; ++m) {  // lane tq: hi (tq < 2) or lo sums of components 2tq % 4, +1
      part[(warp * BM + 16 * m + g) * 4 + tq] = make_float2(rowacc[m][0], rowacc[m][1]);
      part[(warp * BM + 16 * m + g + 8) * 4 + tq] = make_float2(rowacc[m][2], rowacc[m][3]);
    }
    __syncthreads();
    if (tid < nr) {
      float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
      const float4* rows = reinterpret_cast<const float4*>(part);
#pragma unroll
      for (int w = 0; w < NW; ++w) {
        add4(sum, rows[2 * (w * BM + tid)]);
        add4(sum, rows[2 * (w * BM + tid) + 1]);
      }
      float* gr = p.gq + 4 * (row0 + tid);
      red_add(gr, 4.0f * sum.x, 4.0f * sum.y);
      red_add(gr + 2, 4.0f * sum.z, 4.0f * sum.w);
    }
  }
  cta_sum_to(loss, p.loss);
#else
  __trap();
#endif
}

constexpr size_t kCacheLossSmem = kCacheStages * kTileBytes + 8 * 32 * sizeof(QuatFrag);
static_assert(size_t(NW) * BM * 8 * sizeof(float) <= kCacheStages * kTileBytes, "row partials alias the ring");

// ---------------------------------------------------------------------------------
// Gradient strip: G[k - k0][j - s] = ∂L/∂c_kj over rows [k0, k1) × columns [s, P).

struct StripParams {
  const void* F;
  const float4* q;
  float* G;
  int64_t P, ld, s, e, k0, k1, ldg, Tk, Tc;
  float cutoff;
};

template <typename Tile, int kKind>
__global__ void __launch_bounds__(NT, 2) grad_strip_kernel(StripParams p) {
  extern __shared__ __align__(1024) unsigned char smem[];
  const ChunkWork work(p.Tk, p.Tc, false);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row0 = p.k0 + work.t * BM;
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int64_t u = work.u_begin; u < work.u_end; ++u) {
    const int64_t col0 = p.s + u * BN;
    Tile::run(static_cast<const typename Tile::Elem*>(p.F), p.P, p.ld, row0, col0, smem);
    const int64_t jj = col0 - p.s + 4 * lane;  // first of this thread's 4 columns, relative to s
    float4 b[4];
#pragma unroll
    for (int x = 0; x < 4; ++x) b[x] = col0 + 4 * lane + x < p.P ? p.q[col0 + 4 * lane + x] : zero;
    for (int m = 0; m < kRowsPerWarp; ++m) {
      const int64_t k = row0 + warp + NW * m;
      if (k >= p.k1) break;
      const float4 a = p.q[k];
      const float4 c4 = cs_row(reinterpret_cast<const float*>(smem), warp + NW * m, lane);
      float g[4];
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int64_t j = col0 + 4 * lane + x;
        g[x] = 0.0f;
        if (j < p.P && j != k && min(j, k) < p.e) {
          float dd;
          const float dp = feature_distance<kKind>(comp(c4, x), &dd);
          if (dp <= p.cutoff) g[x] = 2.0f * (dp - orientation_distance(dot4(a, b[x]))) * dd;
        }
      }
      if (jj < p.ldg)
        *reinterpret_cast<float4*>(p.G + (k - p.k0) * p.ldg + jj) = make_float4(g[0], g[1], g[2], g[3]);
    }
  }
}

// ---------------------------------------------------------------------------------
// k nearest neighbours: one CTA per row tile sweeps every column tile; the sorted
// lists (best first) live in shared memory, one row per warp at a time, lane l holding
// entry l while a row is updated.

struct KnnParams {
  const void* F;
  float* dist;
  int64_t* index;
  int64_t P, ld, r0, r1;
  int kind, k;
};

template <typename Tile>
__global__ void __launch_bounds__(NT) knn_kernel(KnnParams p) {
  extern __shared__ __align__(1024) unsigned char smem[];
  float* keys = reinterpret_cast<float*>(smem + Tile::kBytes);  // [BM][32]
  int* ids = reinterpret_cast<int*>(keys + BM * 32);        // [BM][32]
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, K = p.k;
  const int64_t row0 = p.r0 + int64_t(blockIdx.x) * BM;
  for (int idx = tid; idx < BM * 32; idx += NT) {
    keys[idx] = -FLT_MAX;
    ids[idx] = INT_MAX;
  }
  for (int64_t col0 = 0; col0 < p.P; col0 += BN) {
    Tile::run(static_cast<const typename Tile::Elem*>(p.F), p.P, p.ld, row0, col0, smem);
    for (int m = 0; m < kRowsPerWarp; ++m) {
      const int rr = warp + NW * m;
      const int i = static_cast<int>(row0 + rr);
      if (row0 + rr >= p.r1) break;
      const float4 c4 = cs_row(reinterpret_cast<const float*>(smem), rr, lane);
      float* kr = keys + rr * 32;
      int* ir = ids + rr * 32;
      const float thk = kr[K - 1];
      const int thi = ir[K - 1];
      float key[4];
      int jx[4];
      bool cand[4];
      bool any = false;
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const float c = comp(c4, x);
        key[x] = p.kind == kSNN ? c : fabsf(c);
        jx[x] = static_cast<int>(col0) + 4 * lane + x;
        cand[x] = jx[x] < p.P && jx[x] != i && knn_before(key[x], jx[x], thk, thi);
        any |= cand[x];
      }
      unsigned mask = __ballot_sync(kFull, any);
      if (!mask) continue;
      float lk = lane < K ? kr[lane] : -FLT_MAX;
      int li = lane < K ? ir[lane] : INT_MAX;
      while (mask) {
        const int src = __ffs(mask) - 1;
        mask &= mask - 1;
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          const bool cv = __shfl_sync(kFull, int(cand[x]), src);
          const float ck = __shfl_sync(kFull, key[x], src);
          const int ci = __shfl_sync(kFull, jx[x], src);
          const float tk = __shfl_sync(kFull, lk, K - 1);
          const int ti = __shfl_sync(kFull, li, K - 1);
          if (!cv || !knn_before(ck, ci, tk, ti)) continue;  // uniform across the warp
          const int pos = __popc(__ballot_sync(kFull, lane < K && knn_before(lk, li, ck, ci)));
          const float upk = __shfl_up_sync(kFull, lk, 1);
          const int upi = __shfl_up_sync(kFull, li, 1);
          if (lane == pos) {
            lk = ck;
            li = ci;
          } else if (lane > pos) {
            lk = upk;
            li = upi;
          }
        }
      }
      if (lane < K) {
        kr[lane] = lk;
        ir[lane] = li;
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < BM * K; idx += NT) {
    const int r = idx / K, m = idx % K;
    if (row0 + r >= p.r1) continue;
    const int64_t o = (row0 + r - p.r0) * K + m;
    p.dist[o] = feature_distance<kSNN>(keys[r * 32 + m]);  // snn keys are c, signless |c|
    p.index[o] = ids[r * 32 + m];
  }
}

// ---------------------------------------------------------------------------------
// Sampled pairs: one warp per pair; rows are read as 16-byte vectors.

template <typename H2>
__device__ __forceinline__ float2 to_float2(H2 v);
template <>
__device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) {
  return __bfloat1622float2(v);
}
template <>
__device__ __forceinline__ float2 to_float2(__half2 v) {
  return __half22float2(v);
}
template <typename TF>
struct Pair2;
template <>
struct Pair2<__nv_bfloat16> {
  using type = __nv_bfloat162;
};
template <>
struct Pair2<__half> {
  using type = __half2;
};

// 8 elements of a and b as floats.
template <typename TF>
__device__ __forceinline__ void load8(const TF* a, float* out) {
  using H2 = typename Pair2<TF>::type;
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(a));
  const H2* h = reinterpret_cast<const H2*>(&v);
#pragma unroll
  for (int x = 0; x < 4; ++x) {
    const float2 f = to_float2(h[x]);
    out[2 * x] = f.x;
    out[2 * x + 1] = f.y;
  }
}
__device__ __forceinline__ void load4(const float* a, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(a));
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
}

template <typename TF>
struct RowVec {
  static constexpr int V = 8;
  __device__ static void load(const TF* a, float* out) { load8(a, out); }
};
template <>
struct RowVec<float> {
  static constexpr int V = 4;
  __device__ static void load(const float* a, float* out) { load4(a, out); }
};

template <typename TF>
__device__ float warp_row_dot(const TF* a, const TF* b, int64_t ld) {
  constexpr int V = RowVec<TF>::V;
  float s = 0.0f;
  for (int64_t c = int64_t(threadIdx.x & 31) * V; c < ld; c += 32 * V) {
    float x[V], y[V];
    RowVec<TF>::load(a + c, x);
    RowVec<TF>::load(b + c, y);
#pragma unroll
    for (int v = 0; v < V; ++v) s = fmaf(x[v], y[v], s);
  }
  return warp_sum(s);
}

struct SampledParams {
  const void* F;
  const float4* q;
  int64_t P, ld, n;
  uint64_t key;
  float cutoff;
};

__global__ void sampled_pairs_kernel(uint64_t key, int64_t P, int64_t n, int64_t* i, int64_t* j) {
  for (int64_t m = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; m < n; m += int64_t(gridDim.x) * blockDim.x)
    sampled_pair(key, m, P, i + m, j + m);
}

template <typename TF, int kKind>
__global__ void __launch_bounds__(NT) sampled_loss_kernel(SampledParams p, double* loss_out, float* gq) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t nwarps = int64_t(gridDim.x) * NW;
  const TF* F = static_cast<const TF*>(p.F);
  float loss = 0.0f;
  for (int64_t n = int64_t(blockIdx.x) * NW + warp; n < p.n; n += nwarps) {
    int64_t i, j;
    sampled_pair(p.key, n, p.P, &i, &j);
    const float dp = feature_distance<kKind>(warp_row_dot(F + i * p.ld, F + j * p.ld, p.ld));
    if (!(dp <= p.cutoff)) continue;
    const float4 a = p.q[i], b = p.q[j];
    float k;
    const float l = pair_loss(dp, dot4(a, b), &k);
    if (lane == 0) loss += l;
    if (lane < 4) {
      atomicAdd(gq + 4 * i + lane, 4.0f * k * comp(b, lane));
      atomicAdd(gq + 4 * j + lane, 4.0f * k * comp(a, lane));
    }
  }
  cta_sum_to(loss, loss_out);
}

template <typename TF, int kKind>
__global__ void __launch_bounds__(NT) sampled_grad_features_kernel(SampledParams p, float scale, float* gf) {
  constexpr int V = RowVec<TF>::V;
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = int64_t(gridDim.x) * NW;
  const TF* F = static_cast<const TF*>(p.F);
  for (int64_t n = int64_t(blockIdx.x) * NW + (threadIdx.x >> 5); n < p.n; n += nwarps) {
    int64_t i, j;
    sampled_pair(p.key, n, p.P, &i, &j);
    const TF* fi = F + i * p.ld;
    const TF* fj = F + j * p.ld;
    float dd;
    const float dp = feature_distance<kKind>(warp_row_dot(fi, fj, p.ld), &dd);
    if (!(dp <= p.cutoff)) continue;
    const float g = scale * 2.0f * (dp - orientation_distance(dot4(p.q[i], p.q[j]))) * dd;
    if (g == 0.0f) continue;
    for (int64_t c = int64_t(lane) * V; c < p.ld; c += 32 * V) {
      float x[V], y[V];
      RowVec<TF>::load(fi + c, x);
      RowVec<TF>::load(fj + c, y);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        atomicAdd(gf + i * p.ld + c + v, g * y[v]);
        atomicAdd(gf + j * p.ld + c + v, g * x[v]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------
// Launch helpers.

// Whether the Hopper engine (WgmmaTile) runs on `device`: built for sm_90a, a compute
// capability 9.0 device, and the environment variable CRYOORIENT_NO_WGMMA unset (it selects
// the mma.sync engine instead, e.g. to test one against the other).
bool use_wgmma(int device) {
#if defined(CRYOORIENT_SM90A)
  if (std::getenv("CRYOORIENT_NO_WGMMA")) return false;
  int major = 0, minor = 0;
  cuda_check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  cuda_check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
  return major == 9 && minor == 0;
#else
  (void)device;
  return false;
#endif
}

// Tile engine for a feature dtype code: fn(SimtTile{}) for float32, fn(WgmmaTile<T>{}) (sm_90a)
// or fn(MmaTile<T>{}) for bfloat16/float16, and TF32 tensor cores for kTF32 (float32 data).
template <typename Fn>
void dispatch_tiles(int fdtype, int device, Fn&& fn) {
  switch (fdtype) {
    case kF32: return fn(SimtTile{});
    case kTF32: return fn(Tf32Tile{});
    case kBF16: return use_wgmma(device) ? fn(WgmmaTile<__nv_bfloat16>{}) : fn(MmaTile<__nv_bfloat16>{});
    case kF16: return use_wgmma(device) ? fn(WgmmaTile<__half>{}) : fn(MmaTile<__half>{});
    default: fail("CUDA all-pairs kernels take float32, bfloat16 or float16 features");
  }
}

// Feature element type: fn(float{}), fn(__nv_bfloat16{}) or fn(__half{}).
template <typename Fn>
void dispatch_elements(int fdtype, Fn&& fn) {
  switch (fdtype) {
    case kF32:
    case kTF32: return fn(float{});
    case kBF16: return fn(__nv_bfloat16{});
    case kF16: return fn(__half{});
    default: fail("CUDA all-pairs kernels take float32, bfloat16 or float16 features");
  }
}

void check_features(const AllPairsArgs& a) {
  if (a.ld % 32 != 0) fail("CUDA all-pairs kernels need feature rows padded to a multiple of 32");
  if (a.P >= (int64_t(1) << 31) - BN) fail("CUDA all-pairs kernels support P < 2^31");
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, const char* what, Args... args) {
  if (smem > 48 * 1024)
    cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
               what);
  kernel<<<grid, NT, smem, stream>>>(args...);
  cuda_check(cudaGetLastError(), what);
}

// Blocks for ChunkWork: row tiles rounded up to whole groups, times column chunks.
dim3 chunk_grid(int64_t Tr, int64_t Tc) {
  const int64_t n = ceil_div(Tr, kRowGroup) * kRowGroup * ceil_div(Tc, kChunk);
  if (n > INT_MAX) fail("too many projections for the CUDA grid");
  return dim3(static_cast<unsigned>(n));
}

}  // namespace

const char* allpairs_tensor_core_engine_cuda(int device) { return use_wgmma(device) ? "wgmma" : "mma.sync"; }

void allpairs_loss_cuda(const AllPairsArgs& a, double* loss, void* grad_q, int device, std::uintptr_t stream) {
  if (!grad_q) fail("the CUDA all-pairs loss needs a gradient buffer");
  if (a.row_stop <= a.row_start) return;
  check_features(a);
  DeviceGuard guard(device);
  const int64_t Tr = ceil_div(a.row_stop - a.row_start, BM), Tc = ceil_div(a.P - a.row_start, BN);
  const LossParams p{a.f,  static_cast<const float4*>(a.q), a.P, a.ld, a.row_start, a.row_stop, Tr, Tc,
                     static_cast<float>(a.cutoff), loss, static_cast<float*>(grad_q)};
  const dim3 grid = chunk_grid(Tr, Tc);
  const cudaStream_t s = as_stream(stream);
  const bool cut = std::isfinite(a.cutoff);
  dispatch_tiles(a.fdtype, device, [&](auto tile) {
    dispatch_distance(a.distance, [&](auto kind) {
      using Tile = decltype(tile);
      constexpr int K = decltype(kind)::value;
      if (cut)
        launch(loss_kernel<Tile, K, true>, grid, loss_smem<Tile>(), s, "allpairs_loss", p);
      else
        launch(loss_kernel<Tile, K, false>, grid, loss_smem<Tile>(), s, "allpairs_loss", p);
    });
  });
}

void allpairs_cache_loss_cuda(const AllPairsArgs& a, const uint8_t* codes, void* scratch, double* loss,
                              void* grad_q, int device, std::uintptr_t stream) {
  static_assert(32 * sizeof(QuatFrag) == kQuatFragBlockBytes, "scratch size");
  if (!grad_q) fail("the CUDA all-pairs loss needs a gradient buffer");
  if (a.row_stop <= a.row_start) return;
  DeviceGuard guard(device);
  int major = 0;
  cuda_check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "compute capability");
  if (major < 8) fail("the CUDA distance-cache loss needs a GPU of compute capability 8.0 or later");
  const int64_t Tr = ceil_div(a.row_stop - a.row_start, BM), Tc = ceil_div(a.P - a.row_start, BN);
  const int64_t n_blocks = ceil_div(a.P - a.row_start, 16);
  const cudaStream_t s = as_stream(stream);
  QuatFrag* frags = static_cast<QuatFrag*>(scratch);
  quat_frag_kernel<<<blocks_for(32 * n_blocks, NT), NT, 0, s>>>(static_cast<const float*>(a.q), a.P, a.row_start,
                                                               n_blocks, frags);
  cuda_check(cudaGetLastError(), "allpairs_cache_loss");
  // Largest code whose d_p passes the cutoff, as f = 1 + code·2^-15 (none: 0.5; all: no cut).
  int top = -1;
  while (top < 255 && decode_distance(top + 1) <= static_cast<float>(a.cutoff)) ++top;
  const float cut = top < 0 ? 0.5f : 1.0f + std::ldexp(static_cast<float>(top), -15);
  const int64_t full_rows = (a.row_stop - a.row_start) / BM, n_items = chunk_grid(Tr, Tc).x;
  const int64_t n_edge_items = full_rows + (full_rows < Tr ? ceil_div(Tc - (Tr - 1), kChunk) : 0);
  const CacheLossParams p{codes,    frags, a.P,      a.row_start, a.row_stop,   Tr,  Tc, full_rows, (a.P - a.row_start) / BN,
                          n_blocks, n_items, n_edge_items, cut, loss, static_cast<float*>(grad_q)};
  auto grid = [&](int64_t n) { return dim3(static_cast<unsigned>(std::min<int64_t>(n, 2 * sm_count(device)))); };
  auto both = [&](auto interior, auto edge) {  // two CTAs per SM
    launch(interior, grid(n_items), kCacheLossSmem, s, "allpairs_cache_loss", p);
    launch(edge, grid(n_edge_items), kCacheLossSmem, s, "allpairs_cache_loss", p);
  };
  if (top < 255)
    both(cache_loss_kernel<true, false>, cache_loss_kernel<true, true>);
  else
    both(cache_loss_kernel<false, false>, cache_loss_kernel<false, true>);
}

void allpairs_cache_build_cuda(const AllPairsArgs& a, uint8_t* codes, int device, std::uintptr_t stream) {
  if (a.row_stop <= a.row_start) return;
  check_features(a);
  DeviceGuard guard(device);
  const int64_t Tr = ceil_div(a.row_stop - a.row_start, BM), Tc = ceil_div(a.P - a.row_start, BN);
  const CacheParams p{a.f, codes, a.P, a.ld, a.row_start, a.row_stop, Tr, Tc};
  dispatch_tiles(a.fdtype, device, [&](auto tile) {
    dispatch_distance(a.distance, [&](auto kind) {
      launch(cache_build_kernel<decltype(tile), decltype(kind)::value>, chunk_grid(Tr, Tc),
             decltype(tile)::kBytes + kTileBytes, as_stream(stream), "allpairs_cache_build", p);
    });
  });
}

void allpairs_grad_strip_cuda(const AllPairsArgs& a, int64_t k0, int64_t k1, void* G, int64_t ldg, int device,
                              std::uintptr_t stream) {
  if (k1 <= k0) return;
  check_features(a);
  if (ldg % 4 != 0) fail("gradient strip stride must be a multiple of 4");
  DeviceGuard guard(device);
  const int64_t Tk = ceil_div(k1 - k0, BM), Tc = ceil_div(a.P - a.row_start, BN);
  const StripParams p{a.f,        static_cast<const float4*>(a.q), static_cast<float*>(G), a.P, a.ld, a.row_start,
                      a.row_stop, k0, k1, ldg, Tk, Tc, static_cast<float>(a.cutoff)};
  dispatch_tiles(a.fdtype, device, [&](auto tile) {
    dispatch_distance(a.distance, [&](auto kind) {
      launch(grad_strip_kernel<decltype(tile), decltype(kind)::value>, chunk_grid(Tk, Tc), decltype(tile)::kBytes,
             as_stream(stream), "allpairs_grad_strip", p);
    });
  });
}

void allpairs_knn_cuda(const AllPairsArgs& a, int k, void* dist, int64_t* index, int device, std::uintptr_t stream) {
  if (a.row_stop <= a.row_start) return;
  check_features(a);
  DeviceGuard guard(device);
  const KnnParams p{a.f, static_cast<float*>(dist), index, a.P, a.ld, a.row_start, a.row_stop, a.distance, k};
  const dim3 grid(static_cast<unsigned>(ceil_div(a.row_stop - a.row_start, BM)));
  dispatch_tiles(a.fdtype, device, [&](auto tile) {
    const size_t smem = decltype(tile)::kBytes + size_t(BM) * 32 * (sizeof(float) + sizeof(int));
    launch(knn_kernel<decltype(tile)>, grid, smem, as_stream(stream), "allpairs_knn", p);
  });
}

void sampled_pairs_cuda(uint64_t key, int64_t P, int64_t n_pairs, int64_t* i, int64_t* j, int device,
                        std::uintptr_t stream) {
  if (n_pairs == 0) return;
  DeviceGuard guard(device);
  sampled_pairs_kernel<<<blocks_for(n_pairs, NT), NT, 0, as_stream(stream)>>>(key, P, n_pairs, i, j);
  cuda_check(cudaGetLastError(), "sampled_pairs");
}

void sampled_loss_cuda(const AllPairsArgs& a, uint64_t key, int64_t n_pairs, double* loss, void* grad_q, int device,
                       std::uintptr_t stream) {
  if (!grad_q) fail("the CUDA sampled loss needs a gradient buffer");
  if (n_pairs == 0) return;
  check_features(a);
  DeviceGuard guard(device);
  const SampledParams p{a.f, static_cast<const float4*>(a.q), a.P, a.ld, n_pairs, key, static_cast<float>(a.cutoff)};
  const dim3 grid(blocks_for(n_pairs, NW));
  dispatch_elements(a.fdtype, [&](auto tag) {
    dispatch_distance(a.distance, [&](auto kind) {
      launch(sampled_loss_kernel<decltype(tag), decltype(kind)::value>, grid, 0, as_stream(stream), "sampled_loss", p,
             loss, static_cast<float*>(grad_q));
    });
  });
}

void sampled_grad_features_cuda(const AllPairsArgs& a, uint64_t key, int64_t n_pairs, double scale, void* grad_f,
                                int device, std::uintptr_t stream) {
  if (n_pairs == 0) return;
  check_features(a);
  DeviceGuard guard(device);
  const SampledParams p{a.f, static_cast<const float4*>(a.q), a.P, a.ld, n_pairs, key, static_cast<float>(a.cutoff)};
  dispatch_elements(a.fdtype, [&](auto tag) {
    dispatch_distance(a.distance, [&](auto kind) {
      launch(sampled_grad_features_kernel<decltype(tag), decltype(kind)::value>, dim3(blocks_for(n_pairs, NW)), 0,
             as_stream(stream), "sampled_grad_features", p, static_cast<float>(scale), static_cast<float*>(grad_f));
    });
  });
}

}  // namespace cryoorient
