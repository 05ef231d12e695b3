// state_scale.cuh: the row factors of the stabilised chunked form (docs/SPEC.md §4), shared by the combination
// kernels (cuda/rows/combine.cu) and the degree-2 query kernels' epilogue (cuda/sympow2/query_epilogue.cuh).
//
// A query row of chunk n sees the in-chunk terms with log-factor m (its in-chunk log-weight maximum) and the state
// term with log-factor r = Gc + mu_n (Gc: its token's in-chunk gate cumsum, mu_n: the log-scale of the state entering
// the chunk, -inf for an empty state). With M = max(m, r): wa = e^(m - M), ws = e^(r - M), so that
//   den = wa l + ws (phi'(q) . h^_n),  y = (wa numA + ws phi'(q) H^_n) / den,
// and neither term can overflow whatever the gates. mu can be huge (positive gates: ~ +5 a token); r - m is formed
// as (Gc - m) + mu with the chunk-local Gc - m first and the sum in fp64, so nothing large cancels in fp32.
#pragma once

#include <cmath>
#include <type_traits>

namespace power_attention {
namespace cuda {

template <typename A>
__device__ __forceinline__ void state_row_weights(A m, A gc, double mu, A& wa, A& ws) {
  if (mu == -INFINITY) {  // empty state
    wa = A(1);
    ws = A(0);
    return;
  }
  const A d = static_cast<A>(static_cast<double>(gc - m) + mu);  // r - m
  if constexpr (std::is_same<A, double>::value) {
    wa = exp(fmin(-d, 0.0));
    ws = exp(fmin(d, 0.0));
  } else {
    wa = expf(fminf(-d, 0.f));
    ws = expf(fminf(d, 0.f));
  }
}

}  // namespace cuda
}  // namespace power_attention
