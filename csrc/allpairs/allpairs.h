// All-pairs feature-distance kernels: L_OR over every pair i < j (i in a row block)
// with d_p from feature cosines, tile by tile without a P×P matrix; the 1-byte
// distance cache; k nearest neighbours under d_p; seeded pair sampling.
//
// Features arrive as unit rows (P × ld, ld ≥ n_f; the CUDA kernels need ld a
// multiple of 32 with zero padding), quaternions as unit rows (P × 4). CPU kernels
// take float32/float64 for both (one dtype); CUDA kernels take float32, bfloat16 or
// float16 features and float32 quaternions. Gradients are w.r.t. the unit rows.
#pragma once
#include <cstdint>

namespace cryoorient {

struct AllPairsArgs {
  const void* f;  // P × ld unit feature rows, dtype fdtype (allpairs::FType)
  const void* q;  // P × 4 unit quaternions (float32 on CUDA; fdtype on CPU)
  int64_t P, ld, nf;
  int64_t row_start, row_stop;  // pairs (i, j), i < j, row_start ≤ i < row_stop
  int fdtype;
  int distance;   // allpairs::Distance
  double cutoff;  // weight w = [d_p ≤ cutoff] (infinite: every pair)
};

// loss[0] (float64) += Σ w·(d_p - d_q)²; grad_q (P × 4, zeroed, float32 on CUDA / fdtype
// on CPU) += ∂/∂q of it (computed in the same pass; the CPU kernels accept null).
void allpairs_loss_cpu(const AllPairsArgs& a, double* loss, void* grad_q, int nthreads);
// codes: tiled 1-byte cache of d_p (layout in allpairs_math.h), zeroed by the caller.
void allpairs_cache_build_cpu(const AllPairsArgs& a, uint8_t* codes, int nthreads);
// As allpairs_loss with d_p decoded from the cache (a.f unused).
void allpairs_cache_loss_cpu(const AllPairsArgs& a, const uint8_t* codes, double* loss, void* grad_q, int nthreads);
// G[k - k0][j - row_start] = ∂L/∂c_kj for rows k in [k0, k1) and j in [row_start, P)
// (0 where {k, j} is not a counted pair); ldg ≥ P - row_start; dtype float32 on
// CUDA, fdtype on CPU. Then ∂L/∂f_k = Σ_j G[k][j]·f_j.
void allpairs_grad_strip_cpu(const AllPairsArgs& a, int64_t k0, int64_t k1, void* G, int64_t ldg, int nthreads);
// k nearest neighbours (k ≤ 32) of rows [row_start, row_stop) among all j ≠ i.
void allpairs_knn_cpu(const AllPairsArgs& a, int k, void* dist, int64_t* index, int nthreads);
// Sampled pairs n < n_pairs of stream key (see allpairs::sampled_pair).
void sampled_pairs_cpu(uint64_t key, int64_t P, int64_t n_pairs, int64_t* i, int64_t* j, int nthreads);
void sampled_loss_cpu(const AllPairsArgs& a, uint64_t key, int64_t n_pairs, double* loss, void* grad_q,
                      int nthreads);
// grad_f (P × ld, zeroed, fdtype on CPU / float32 on CUDA) += scale·∂L/∂f.
void sampled_grad_features_cpu(const AllPairsArgs& a, uint64_t key, int64_t n_pairs, double scale, void* grad_f,
                               int nthreads);

#ifdef CRYOORIENT_WITH_CUDA
void allpairs_loss_cuda(const AllPairsArgs& a, double* loss, void* grad_q, int device, std::uintptr_t stream);
void allpairs_cache_build_cuda(const AllPairsArgs& a, uint8_t* codes, int device, std::uintptr_t stream);
// scratch: allpairs::cache_scratch_bytes(P, row_start) bytes of device memory.
void allpairs_cache_loss_cuda(const AllPairsArgs& a, const uint8_t* codes, void* scratch, double* loss,
                              void* grad_q, int device, std::uintptr_t stream);
void allpairs_grad_strip_cuda(const AllPairsArgs& a, int64_t k0, int64_t k1, void* G, int64_t ldg, int device,
                              std::uintptr_t stream);
void allpairs_knn_cuda(const AllPairsArgs& a, int k, void* dist, int64_t* index, int device, std::uintptr_t stream);
// "wgmma" (sm_90a build on a Hopper device) or "mma.sync": the bfloat16/float16 tile engine.
const char* allpairs_tensor_core_engine_cuda(int device);
void sampled_pairs_cuda(uint64_t key, int64_t P, int64_t n_pairs, int64_t* i, int64_t* j, int device,
                        std::uintptr_t stream);
void sampled_loss_cuda(const AllPairsArgs& a, uint64_t key, int64_t n_pairs, double* loss, void* grad_q, int device,
                       std::uintptr_t stream);
void sampled_grad_features_cuda(const AllPairsArgs& a, uint64_t key, int64_t n_pairs, double scale, void* grad_f,
                                int device, std::uintptr_t stream);
#endif

}  // namespace cryoorient
