#include "qdist/qdist.h"

#include "quat.h"

namespace cryoorient {

void qdist_forward_cpu(const QDistArgs& a, void* out, int nthreads) {
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    CO_DISPATCH_INDEX(a.itype, I, [&] {
      const T* q = static_cast<const T*>(a.q);
      const I* i = static_cast<const I*>(a.i);
      const I* j = static_cast<const I*>(a.j);
      T* d = static_cast<T*>(out);
      parallel_for(a.M, nthreads, [&](int64_t b, int64_t e, int) {
        for (int64_t m = b; m < e; ++m) d[m] = quat_dist<T, false>(q + 4 * i[m], q + 4 * j[m]).d;
      });
    });
  });
}

void qdist_backward_cpu(const QDistArgs& a, const void* grad_out, void* grad_q, int nthreads) {
  CO_DISPATCH_FLOAT(a.dtype, T, [&] {
    CO_DISPATCH_INDEX(a.itype, I, [&] {
      const T* q = static_cast<const T*>(a.q);
      const I* i = static_cast<const I*>(a.i);
      const I* j = static_cast<const I*>(a.j);
      const T* go = static_cast<const T*>(grad_out);
      T* g = static_cast<T*>(grad_q);
      // Each thread scatters into its own P×4 buffer; buffers are summed in order.
      const int nt = effective_threads(a.M, nthreads);
      std::vector<std::vector<T>> part(nt > 1 ? nt : 0, std::vector<T>(nt > 1 ? 4 * a.P : 0, T(0)));
      parallel_for(a.M, nt, [&](int64_t b, int64_t e, int t) {
        T* acc = nt > 1 ? part[t].data() : g;
        for (int64_t m = b; m < e; ++m) {
          const auto r = quat_dist<T, true>(q + 4 * i[m], q + 4 * j[m]);
          for (int k = 0; k < 4; ++k) {
            acc[4 * i[m] + k] += go[m] * r.ga[k];
            acc[4 * j[m] + k] += go[m] * r.gb[k];
          }
        }
      });
      for (int t = 0; t < (nt > 1 ? nt : 0); ++t)
        for (int64_t k = 0; k < 4 * a.P; ++k) g[k] += part[t][k];
    });
  });
}

}  // namespace cryoorient
