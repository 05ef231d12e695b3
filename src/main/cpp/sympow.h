// sympow.h: the layout of the symmetric power embedding phi (SPEC §4), shared by every path.
//
// Layout (stable; states expose it, see stateDim in the Java API):
//   the multi-indices a_1 <= a_2 <= ... <= a_p over [0, d), in lexicographic order (a_1 slowest), and
//   phi(x)_a = sqrt(p! / prod_k mult_k!) * x_{a_1} * ... * x_{a_p}
// so that phi(x) . phi(y) == (x . y)^p. For p = 2 that is (0,0), (0,1), ..., (0,d-1), (1,1), (1,2), ...
// D = C(d + p - 1, p).
#pragma once

#include <cstdint>
#include <vector>

namespace power_attention {

/// C(d + p - 1, p), with overflow checked (throws c10::Error when D does not fit in int64).
int64_t sympow_dim(int64_t d, int64_t p);

/// coef[a] = sqrt(p! / prod mult!) for every multi-index a in the layout above; with `indices`, also the
/// multi-indices themselves, a_1 ... a_p for each a in turn ([D, p] row-major; the CUDA kernels' index table).
std::vector<double> sympow_coefficients(int64_t d, int64_t p, std::vector<int64_t>* indices = nullptr);

}  // namespace power_attention
