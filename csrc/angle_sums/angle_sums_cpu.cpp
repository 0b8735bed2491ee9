#include <cmath>
#include <cstring>

#include "angle_sums/angle_sums.h"

namespace cryoorient {
namespace {

// exp for float without calls or branches, so that the compiler vectorises the loop over the angles (std::exp is
// a scalar call: the kernel was slower than the reference's vectorised exp). x clamped to [−87, 88]; x = n·ln 2 + r,
// |r| <= ln 2 / 2 (Cody–Waite split of ln 2), exp(r) by Cephes' expf polynomial: relative error ~1e−7.
__attribute__((always_inline)) inline float vector_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float shifter = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer, held in the low mantissa bits
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &t, 4);
  bits = (bits - 0x4B400000 + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

inline double vector_exp(double x) { return std::exp(x); }

constexpr int kLanes = 8;  // partial sums of a row, lane by lane: a vector of them, no reordered float sum needed

// Σ_l exp(max(a·max(x[l], 0)² + b, −floor)) over one row's L angles. The float version is also compiled for
// x86-64-v3 (AVX2, FMA) by GCC 12 on (its resolver tests the ISA level), chosen at load time where the CPU has it:
// 2.8× faster than SSE2 alone on one core of the 2-core development machine. Its body is written out in each
// version, as a clone does not inline a template shared with the other.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define CO_X86_64_V3_CLONE __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CO_X86_64_V3_CLONE
#endif
CO_X86_64_V3_CLONE float row_sum(const float* __restrict__ x, float a, float b, float floor, int64_t L) {
  float acc[kLanes] = {0};
  int64_t l = 0;
  for (; l + kLanes <= L; l += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += vector_exp(angle_exponent(x[l + k], a, b, floor));
  for (; l < L; ++l) acc[0] += vector_exp(angle_exponent(x[l], a, b, floor));
  float s = 0;
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

double row_sum(const double* __restrict__ x, double a, double b, double floor, int64_t L) {
  double s = 0;
  for (int64_t l = 0; l < L; ++l) s += vector_exp(angle_exponent(x[l], a, b, floor));
  return s;
}

}  // namespace

void angle_sums_cpu(const AngleSumsArgs& a, void* out, int nthreads) {
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    const T* num = static_cast<const T*>(a.num);
    const T* den = static_cast<const T*>(a.den);
    const T* scale = static_cast<const T*>(a.scale);
    const T* bias = static_cast<const T*>(a.bias);
    T* sums = static_cast<T*>(out);
    const T floor = static_cast<T>(a.floor);
    parallel_for(a.R * a.J, nthreads, [&](int64_t begin, int64_t end, int) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t r = c / a.J;
        sums[c] = row_sum(num + c * a.L, angle_factor(den[c], scale[r]), bias[r], floor, a.L);
      }
    });
  });
}

}  // namespace cryoorient
