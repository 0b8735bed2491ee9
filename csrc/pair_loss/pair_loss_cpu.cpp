#include "pair_loss/pair_loss.h"

#include <type_traits>
#include <vector>

#include "quat.h"

namespace cryoorient {
namespace {

template <typename T, typename I>
struct Pairs {
  const T* q;
  const I* i;
  const I* j;
  const T* t;
  const T* w;
  explicit Pairs(const PairLossArgs& a)
      : q(static_cast<const T*>(a.q)),
        i(static_cast<const I*>(a.i)),
        j(static_cast<const I*>(a.j)),
        t(static_cast<const T*>(a.target)),
        w(static_cast<const T*>(a.weight)) {}
  T weight(int64_t m) const { return w ? w[m] : T(1); }
};

// Runs f(m, thread) over the pairs with one zero-initialised P×4 scatter buffer per
// thread (acc(thread)), summed into grad_q in thread order: deterministic for a given
// thread count.
template <typename T, typename F>
void scatter_pairs(const PairLossArgs& a, T* grad_q, int nthreads, F&& f) {
  const int nt = effective_threads(a.M, nthreads);
  const bool own = grad_q != nullptr && nt > 1;
  std::vector<std::vector<T>> part(own ? nt : 0, std::vector<T>(own ? 4 * a.P : 0, T(0)));
  parallel_for(a.M, nt, [&](int64_t b, int64_t e, int th) {
    T* acc = own ? part[th].data() : grad_q;
    for (int64_t m = b; m < e; ++m) f(m, th, acc);
  });
  for (int th = 0; th < (own ? nt : 0); ++th)
    for (int64_t k = 0; k < 4 * a.P; ++k) grad_q[k] += part[th][k];
}

template <typename T>
inline void add_grad(T* acc, int64_t a, int64_t b, T c, const QuatDist<T>& r) {
  for (int k = 0; k < 4; ++k) {
    acc[4 * a + k] += c * r.ga[k];
    acc[4 * b + k] += c * r.gb[k];
  }
}

}  // namespace

void pair_loss_none_cpu(const PairLossArgs& a, void* out, int nthreads) {
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    CO_DISPATCH_INDEX(a.itype, I, [&] {
      const Pairs<T, I> p(a);
      T* o = static_cast<T*>(out);
      parallel_for(a.M, nthreads, [&](int64_t b, int64_t e, int) {
        for (int64_t m = b; m < e; ++m) {
          const T err = quat_dist<T, false>(p.q + 4 * p.i[m], p.q + 4 * p.j[m]).d - p.t[m];
          o[m] = p.weight(m) * err * err;
        }
      });
    });
  });
}

void pair_loss_sum_cpu(const PairLossArgs& a, double scale, void* out, void* grad_q, int nthreads) {
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    CO_DISPATCH_INDEX(a.itype, I, [&] {
      const Pairs<T, I> p(a);
      constexpr int kPad = 8;  // one cache line per thread's partial sum
      std::vector<double> sums(kPad * effective_threads(a.M, nthreads), 0.0);
      T* g = static_cast<T*>(grad_q);
      const T s = T(scale);
      if (g == nullptr) {
        parallel_for(a.M, nthreads, [&](int64_t b, int64_t e, int th) {
          double acc = 0;
          for (int64_t m = b; m < e; ++m) {
            const T err = quat_dist<T, false>(p.q + 4 * p.i[m], p.q + 4 * p.j[m]).d - p.t[m];
            acc += double(p.weight(m) * err * err);
          }
          sums[kPad * th] = acc;
        });
      } else {
        scatter_pairs<T>(a, g, nthreads, [&](int64_t m, int th, T* acc) {
          const auto r = quat_dist<T, true>(p.q + 4 * p.i[m], p.q + 4 * p.j[m]);
          const T err = r.d - p.t[m], w = p.weight(m);
          sums[kPad * th] += double(w * err * err);
          add_grad(acc, int64_t(p.i[m]), int64_t(p.j[m]), s * 2 * w * err, r);
        });
      }
      double total = 0;
      for (double v : sums) total += v;
      *static_cast<T*>(out) += T(scale * total);
    });
  });
}

void pair_loss_backward_cpu(const PairLossArgs& a, const void* grad_out, bool per_pair, double scale, void* grad_q,
                            void* grad_target, void* grad_weight, int nthreads) {
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    CO_DISPATCH_INDEX(a.itype, I, [&] {
      const Pairs<T, I> p(a);
      const T* go = static_cast<const T*>(grad_out);
      T* gt = static_cast<T*>(grad_target);
      T* gw = static_cast<T*>(grad_weight);
      const T s = T(scale);
      auto pair = [&](int64_t m, T* acc, auto grad_tag) {
        constexpr bool kGrad = decltype(grad_tag)::value;
        const auto r = quat_dist<T, kGrad>(p.q + 4 * p.i[m], p.q + 4 * p.j[m]);
        const T g = s * go[per_pair ? m : 0], err = r.d - p.t[m], w = p.weight(m);
        if (gt) gt[m] = -2 * g * w * err;
        if (gw) gw[m] = g * err * err;
        if constexpr (kGrad) add_grad(acc, int64_t(p.i[m]), int64_t(p.j[m]), 2 * g * w * err, r);
      };
      if (grad_q == nullptr) {
        parallel_for(a.M, nthreads, [&](int64_t b, int64_t e, int) {
          for (int64_t m = b; m < e; ++m) pair(m, nullptr, std::false_type{});
        });
      } else {
        scatter_pairs<T>(a, static_cast<T*>(grad_q), nthreads,
                         [&](int64_t m, int, T* acc) { pair(m, acc, std::true_type{}); });
      }
    });
  });
}

}  // namespace cryoorient
