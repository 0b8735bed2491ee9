// angle_sums: a projection-matching search's posterior weights summed over the in-plane angles.
//   out[r, j] = Σ_l exp(max(scale[r] · max(num[r, j, l] / den[r, j], 0)² + bias[r], −floor))
// num (R×J×L): the NCC's numerators of candidate row r (a particle at a shift), direction j, angle l (the angles
// contiguous, as an inverse FFT over them leaves them); den (R×J): their norms. One read of num; the weights are
// never stored.
#pragma once
#include <cstdint>

#include "common.h"

namespace cryoorient {

struct AngleSumsArgs {
  const void* num;    // R×J×L
  const void* den;    // R×J, > 0
  const void* scale;  // R
  const void* bias;   // R
  double floor;
  int64_t R, J, L;
  int dtype;
};

// The factor of x² in the exponent of column (r, j): scale / den² (one division per column, not per angle).
template <typename T>
CO_HD T angle_factor(T den, T scale) {
  const T inv = T(1) / den;
  return scale * inv * inv;
}

// The exponent of one candidate, before exp: a·max(x, 0)² + bias, at least −floor.
template <typename T>
CO_HD
#if !defined(__CUDACC__)
    __attribute__((always_inline))
#endif
    T angle_exponent(T x, T a, T bias, T floor) {
  const T c = x > T(0) ? x : T(0);
  const T v = c * c * a + bias;
  return v > -floor ? v : -floor;
}

void angle_sums_cpu(const AngleSumsArgs& a, void* out, int nthreads);
#ifdef CRYOORIENT_WITH_CUDA
void angle_sums_cuda(const AngleSumsArgs& a, void* out, int device, std::uintptr_t stream);
#endif

}  // namespace cryoorient
