// Entry points of the all-pairs ops: route to the CPU or CUDA kernels (device < 0 is CPU).
#include <string>

#include "allpairs/allpairs.h"

#include "allpairs/allpairs_math.h"
#include "bindings.h"
#include "common.h"

namespace py = pybind11;

namespace cryoorient {

namespace {

AllPairsArgs make_args(std::uintptr_t f, std::uintptr_t q, int64_t P, int64_t ld, int64_t nf, int64_t row_start,
                       int64_t row_stop, int fdtype, int distance, double cutoff) {
  if (distance != allpairs::kSNN && distance != allpairs::kSignless) fail("unknown feature distance code");
  if (row_start < 0 || row_start > row_stop || row_stop > P) fail("row block outside [0, P]");
  return AllPairsArgs{ptr(f), ptr(q), P, ld, nf, row_start, row_stop, fdtype, distance, cutoff};
}

[[noreturn]] void no_cuda() { fail("cryoorient was built without CUDA kernels"); }

}  // namespace

void register_allpairs(py::module_& m) {
  m.def(
      "allpairs_loss",
      [](std::uintptr_t f, std::uintptr_t q, int64_t P, int64_t ld, int64_t nf, int64_t row_start, int64_t row_stop,
         int fdtype, int distance, double cutoff, std::uintptr_t loss, std::uintptr_t grad_q, int device,
         std::uintptr_t stream, int nthreads) {
        const auto a = make_args(f, q, P, ld, nf, row_start, row_stop, fdtype, distance, cutoff);
        py::gil_scoped_release nogil;
        if (device < 0) return allpairs_loss_cpu(a, ptr<double>(loss), ptr(grad_q), nthreads);
#ifdef CRYOORIENT_WITH_CUDA
        allpairs_loss_cuda(a, ptr<double>(loss), ptr(grad_q), device, stream);
#else
        no_cuda();
#endif
      },
      "loss (float64, 1) += Σ w·(d_p - d_q)² over pairs i < j in the row block; grad_q (P×4) += its gradient.");
  m.def(
      "allpairs_cache_build",
      [](std::uintptr_t f, int64_t P, int64_t ld, int64_t nf, int64_t row_start, int64_t row_stop, int fdtype,
         int distance, std::uintptr_t codes, int device, std::uintptr_t stream, int nthreads) {
        const auto a = make_args(f, 0, P, ld, nf, row_start, row_stop, fdtype, distance, 0.0);
        py::gil_scoped_release nogil;
        if (device < 0) return allpairs_cache_build_cpu(a, ptr<uint8_t>(codes), nthreads);
#ifdef CRYOORIENT_WITH_CUDA
        allpairs_cache_build_cuda(a, ptr<uint8_t>(codes), device, stream);
#else
        no_cuda();
#endif
      },
      "Write the 1-byte tiled distance cache (zeroed by the caller).");
  m.def(
      "allpairs_cache_scratch_bytes",
      [](int64_t P, int64_t row_start, int device) -> int64_t {
        return device < 0 ? 0 : allpairs::cache_scratch_bytes(P, row_start);
      },
      "Bytes of device scratch that allpairs_cache_loss needs (0 on the CPU).");
  m.def(
      "allpairs_cache_loss",
      [](std::uintptr_t codes, std::uintptr_t q, int64_t P, int64_t row_start, int64_t row_stop, int qdtype,
         double cutoff, std::uintptr_t scratch, std::uintptr_t loss, std::uintptr_t grad_q, int device,
         std::uintptr_t stream, int nthreads) {
        const auto a = make_args(0, q, P, 0, 0, row_start, row_stop, qdtype, allpairs::kSNN, cutoff);
        py::gil_scoped_release nogil;
        if (device < 0) return allpairs_cache_loss_cpu(a, ptr<uint8_t>(codes), ptr<double>(loss), ptr(grad_q), nthreads);
#ifdef CRYOORIENT_WITH_CUDA
        allpairs_cache_loss_cuda(a, ptr<uint8_t>(codes), ptr(scratch), ptr<double>(loss), ptr(grad_q), device, stream);
#else
        (void)scratch;
        no_cuda();
#endif
      },
      "As allpairs_loss with d_p decoded from the cache; scratch: allpairs_cache_scratch_bytes on the device.");
  m.def(
      "allpairs_grad_strip",
      [](std::uintptr_t f, std::uintptr_t q, int64_t P, int64_t ld, int64_t nf, int64_t row_start, int64_t row_stop,
         int fdtype, int distance, double cutoff, int64_t k0, int64_t k1, std::uintptr_t G, int64_t ldg, int device,
         std::uintptr_t stream, int nthreads) {
        const auto a = make_args(f, q, P, ld, nf, row_start, row_stop, fdtype, distance, cutoff);
        if (k0 < row_start || k0 > k1 || k1 > P || ldg < P - row_start) fail("bad gradient strip");
        py::gil_scoped_release nogil;
        if (device < 0) return allpairs_grad_strip_cpu(a, k0, k1, ptr(G), ldg, nthreads);
#ifdef CRYOORIENT_WITH_CUDA
        allpairs_grad_strip_cuda(a, k0, k1, ptr(G), ldg, device, stream);
#else
        no_cuda();
#endif
      },
      "G[k - k0][j - row_start] = ∂L/∂cos(f_k, f_j) for rows [k0, k1).");
  m.def(
      "allpairs_knn",
      [](std::uintptr_t f, int64_t P, int64_t ld, int64_t nf, int64_t row_start, int64_t row_stop, int fdtype,
         int distance, int k, std::uintptr_t dist, std::uintptr_t index, int device, std::uintptr_t stream,
         int nthreads) {
        const auto a = make_args(f, 0, P, ld, nf, row_start, row_stop, fdtype, distance, 0.0);
        if (k < 1 || k > 32 || k > P - 1) fail("k must be in [1, min(32, P - 1)]");
        py::gil_scoped_release nogil;
        if (device < 0) return allpairs_knn_cpu(a, k, ptr(dist), ptr<int64_t>(index), nthreads);
#ifdef CRYOORIENT_WITH_CUDA
        allpairs_knn_cuda(a, k, ptr(dist), ptr<int64_t>(index), device, stream);
#else
        no_cuda();
#endif
      },
      "k nearest neighbours under d_p of rows [row_start, row_stop): distances and indices (rows × k).");
  m.def(
      "sampled_pairs",
      [](uint64_t seed, uint64_t epoch, int64_t P, int64_t n, std::uintptr_t i, std::uintptr_t j, int device,
         std::uintptr_t stream, int nthreads) {
        if (P < 2) fail("pair sampling needs P >= 2");
        const uint64_t key = allpairs::sampler_key(seed, epoch);
        py::gil_scoped_release nogil;
        if (device < 0) return sampled_pairs_cpu(key, P, n, ptr<int64_t>(i), ptr<int64_t>(j), nthreads);
#ifdef CRYOORIENT_WITH_CUDA
        sampled_pairs_cuda(key, P, n, ptr<int64_t>(i), ptr<int64_t>(j), device, stream);
#else
        no_cuda();
#endif
      },
      "The first n pairs (i, j) of the stream (seed, epoch), int64.");
  m.def(
      "sampled_loss",
      [](std::uintptr_t f, std::uintptr_t q, int64_t P, int64_t ld, int64_t nf, int fdtype, int distance,
         double cutoff, uint64_t seed, uint64_t epoch, int64_t n, std::uintptr_t loss, std::uintptr_t grad_q,
         int device, std::uintptr_t stream, int nthreads) {
        const auto a = make_args(f, q, P, ld, nf, 0, P, fdtype, distance, cutoff);
        if (P < 2) fail("pair sampling needs P >= 2");
        const uint64_t key = allpairs::sampler_key(seed, epoch);
        py::gil_scoped_release nogil;
        if (device < 0) return sampled_loss_cpu(a, key, n, ptr<double>(loss), ptr(grad_q), nthreads);
#ifdef CRYOORIENT_WITH_CUDA
        sampled_loss_cuda(a, key, n, ptr<double>(loss), ptr(grad_q), device, stream);
#else
        no_cuda();
#endif
      },
      "loss += Σ w·(d_p - d_q)² over n sampled pairs; grad_q (P×4) += its gradient.");
  m.def(
      "sampled_grad_features",
      [](std::uintptr_t f, std::uintptr_t q, int64_t P, int64_t ld, int64_t nf, int fdtype, int distance,
         double cutoff, uint64_t seed, uint64_t epoch, int64_t n, double scale, std::uintptr_t grad_f, int device,
         std::uintptr_t stream, int nthreads) {
        const auto a = make_args(f, q, P, ld, nf, 0, P, fdtype, distance, cutoff);
        if (P < 2) fail("pair sampling needs P >= 2");
        const uint64_t key = allpairs::sampler_key(seed, epoch);
        py::gil_scoped_release nogil;
        if (device < 0) return sampled_grad_features_cpu(a, key, n, scale, ptr(grad_f), nthreads);
#ifdef CRYOORIENT_WITH_CUDA
        sampled_grad_features_cuda(a, key, n, scale, ptr(grad_f), device, stream);
#else
        no_cuda();
#endif
      },
      "grad_f (P×ld) += scale·∂L/∂f over n sampled pairs.");
  m.def(
      "allpairs_tensor_core_engine",
      [](int device) -> std::string {
#ifdef CRYOORIENT_WITH_CUDA
        return allpairs_tensor_core_engine_cuda(device);
#else
        (void)device;
        no_cuda();
#endif
      },
      "Tile engine of the CUDA kernels for bfloat16/float16 features on `device`: 'wgmma' or 'mma.sync'.");
}

}  // namespace cryoorient
