// sympow.cpp: the layout of phi (sympow.h): its dimension and coefficients.
#include "sympow.h"
#include "errors.h"

#include <cmath>
#include <limits>

namespace power_attention {

int64_t sympow_dim(int64_t d, int64_t p) {
  POWER_ATTENTION_CHECK_ARG(d >= 1 && p >= 1, "power_full: the state dimension needs d >= 1 and deg >= 1, got d = ",
                            d, ", deg = ", p);
  // C(d + p - 1, p) = prod_{k=1..p} (d - 1 + k) / k, exact at every step (each partial product is a binomial).
  int64_t acc = 1;
  for (int64_t k = 1; k <= p; ++k) {
    const int64_t f = d - 1 + k;
    POWER_ATTENTION_CHECK_ARG(f > 0 && acc <= std::numeric_limits<int64_t>::max() / f,
                              "power_full: the state dimension C(d + deg - 1, deg) for d = ", d, ", deg = ", p,
                              " does not fit in 64 bits");
    acc = acc * f / k;
  }
  return acc;
}

namespace {

// Walks the multi-indices in layout order; at each one appends its coefficient to `out` and, when `indices` is
// given, the multi-index itself (p entries) to `indices`.
void coefficients_rec(int64_t d, int64_t p, int64_t level, int64_t start, std::vector<int64_t>& idx,
                      std::vector<double>& out, const std::vector<double>& log_fact,
                      std::vector<int64_t>* indices = nullptr) {
  for (int64_t i = start; i < d; ++i) {
    idx[level] = i;
    if (level + 1 == p) {
      if (indices != nullptr) indices->insert(indices->end(), idx.begin(), idx.end());
      // multiplicities of the sorted multi-index
      double log_denom = 0.0;
      int64_t run = 1;
      for (int64_t k = 1; k <= p; ++k) {
        if (k < p && idx[k] == idx[k - 1]) {
          ++run;
        } else {
          log_denom += log_fact[run];
          run = 1;
        }
      }
      out.push_back(std::exp(0.5 * (log_fact[p] - log_denom)));
    } else {
      coefficients_rec(d, p, level + 1, i, idx, out, log_fact, indices);
    }
  }
}

}  // namespace

std::vector<double> sympow_coefficients(int64_t d, int64_t p, std::vector<int64_t>* indices) {
  const int64_t D = sympow_dim(d, p);
  std::vector<double> log_fact(p + 1, 0.0);
  for (int64_t k = 1; k <= p; ++k) log_fact[k] = log_fact[k - 1] + std::log(static_cast<double>(k));
  std::vector<double> out;
  out.reserve(D);
  if (indices != nullptr) {
    indices->clear();
    indices->reserve(D * p);
  }
  std::vector<int64_t> idx(p);
  coefficients_rec(d, p, 0, 0, idx, out, log_fact, indices);
  return out;
}

}  // namespace power_attention
