// Shared plumbing for cryoorient's kernels: dtype codes, dispatch, threading, errors.
// The module never links libtorch: Python passes raw pointers (uintptr_t), sizes,
// dtype codes, a device index (-1 = CPU) and a CUDA stream handle.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__CUDACC__)
#define CO_HD __host__ __device__ __forceinline__
#else
#define CO_HD inline
#endif

namespace cryoorient {

// Must match cryoorient/_ext.py.
enum DType : int { kFloat32 = 0, kFloat64 = 1 };
enum IType : int { kInt32 = 0, kInt64 = 1 };

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

#define CO_DISPATCH_FLOAT(code, T, ...)                                   \
  [&] {                                                                   \
    switch (code) {                                                       \
      case ::cryoorient::kFloat32: { using T = float; return __VA_ARGS__(); }  \
      case ::cryoorient::kFloat64: { using T = double; return __VA_ARGS__(); } \
      default: ::cryoorient::fail("unsupported float dtype code");        \
    }                                                                     \
  }()

#define CO_DISPATCH_INDEX(code, I, ...)                                   \
  [&] {                                                                   \
    switch (code) {                                                       \
      case ::cryoorient::kInt32: { using I = int32_t; return __VA_ARGS__(); }  \
      case ::cryoorient::kInt64: { using I = int64_t; return __VA_ARGS__(); }  \
      default: ::cryoorient::fail("unsupported index dtype code");        \
    }                                                                     \
  }()

// Run f(begin, end, thread_id) over [0, n) split into nthreads contiguous chunks.
// The split depends only on n and nthreads, so per-thread partial sums are
// reproducible for a given thread count.
template <typename F>
void parallel_for(int64_t n, int nthreads, F&& f) {
  nthreads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, n / 4096 + 1)));
  if (nthreads == 1) {
    f(int64_t(0), n, 0);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(nthreads);
  const int64_t chunk = (n + nthreads - 1) / nthreads;
  for (int t = 0; t < nthreads; ++t) {
    const int64_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    pool.emplace_back([&f, b, e, t] { f(b, e, t); });
  }
  for (auto& th : pool) th.join();
}

inline int effective_threads(int64_t n, int nthreads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, n / 4096 + 1)));
}

}  // namespace cryoorient
