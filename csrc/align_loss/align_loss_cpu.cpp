#include <cmath>
#include <vector>

#include "align_loss/align_common.h"
#include "align_loss/align_loss.h"

namespace cryoorient {
namespace {

template <typename T>
std::vector<T> unit_rows(const T* q, int64_t n) {
  std::vector<T> out(4 * n);
  for (int64_t i = 0; i < n; ++i) {
    const T* x = q + 4 * i;
    const T inv = T(1) / std::sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2] + x[3] * x[3]);
    for (int c = 0; c < 4; ++c) out[4 * i + c] = x[c] * inv;
  }
  return out;
}

template <typename T, bool kGrad>
void align_loss_impl(const AlignLossArgs& a, T* loss, T* grad, int nthreads) {
  const T* ang = static_cast<const T*>(a.angles);
  const uint8_t* refl = static_cast<const uint8_t*>(a.reflect);
  const int64_t K = a.K, P = a.P;
  const std::vector<T> qt = unit_rows(static_cast<const T*>(a.q_true), P);
  const std::vector<T> qe = unit_rows(static_cast<const T*>(a.q_est), P);
  const std::vector<T> group = unit_rows(static_cast<const T*>(a.group), a.G);
  const std::vector<double> angles(ang, ang + 6 * K);
  std::vector<T> mats(16 * K);
  for (int64_t k = 0; k < K; ++k) {
    double m[16];
    align_transform(&angles[6 * k], refl[k] != 0, m);
    for (int e = 0; e < 16; ++e) mats[16 * k + e] = T(m[e]);
  }
  // Work items are (pair, candidate), pair-major; each thread sums into its own K×7 block (in
  // double) and the blocks are added in thread order: reproducible for a given thread count.
  const int64_t n = P * K;
  const int nt = effective_threads(n, nthreads);
  std::vector<double> part(size_t(nt) * K * kAlignAcc, 0.0);
  parallel_for(n, nt, [&](int64_t b, int64_t e, int t) {
    double* acc = part.data() + size_t(t) * K * kAlignAcc;
    int64_t i = b / K, k = b % K;
    for (int64_t w = b; w < e; ++w) {
      align_pair<T, double, kGrad>(&mats[16 * k], &qt[4 * i], &qe[4 * i], group.data(), a.G, acc + kAlignAcc * k);
      if (++k == K) {
        k = 0;
        ++i;
      }
    }
  });
  for (int64_t k = 0; k < K; ++k) {
    double tot[kAlignAcc] = {};
    for (int t = 0; t < nt; ++t)
      for (int c = 0; c < kAlignAcc; ++c) tot[c] += part[(size_t(t) * K + k) * kAlignAcc + c] / double(P);
    loss[k] = T(tot[0]);
    if (kGrad) {
      double ga[kAlignPlanes];
      align_angle_grad(&angles[6 * k], refl[k] != 0, tot + 1, ga);
      for (int p = 0; p < kAlignPlanes; ++p) grad[6 * k + p] = T(ga[p]);
    }
  }
}

}  // namespace

void align_loss_cpu(const AlignLossArgs& a, void* loss, void* grad, int nthreads) {
  if (a.K == 0) return;
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    if (grad)
      align_loss_impl<T, true>(a, static_cast<T*>(loss), static_cast<T*>(grad), nthreads);
    else
      align_loss_impl<T, false>(a, static_cast<T*>(loss), nullptr, nthreads);
  });
}

}  // namespace cryoorient
