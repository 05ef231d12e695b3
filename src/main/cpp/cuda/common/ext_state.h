// ext_state.h: the extended state layout of the CUDA path's chunked form: [D, E] with S in columns [0, e), the
// normaliser s in column e and zeros to E = ext_cols(e) (traits.h), so that one product updates or reads both; the
// normaliser rides with the values as a column of ones: S_ext = phi(K')^T [V | 1 | 0].
#pragma once

#include "cuda/common/traits.h"
#include "path.h"

#include <ATen/ATen.h>

#include <cstdint>

namespace power_attention {
namespace cuda {

/// [X, c, e] -> [X, c, E] = [v | 1 | 0] in dtype dt.
inline at::Tensor values_ext(const at::Tensor& v, at::ScalarType dt) {
  const int64_t E = ext_cols(v.size(2));
  at::Tensor out = at::zeros({v.size(0), v.size(1), E}, v.options().dtype(dt));
  out.narrow(2, 0, v.size(2)).copy_(v);
  out.select(2, v.size(2)).fill_(1);
  return out;
}

/// State (S [BH, D, e], s [BH, D]) -> extended [BH, D, E] in dtype dt (undefined for an undefined state).
inline at::Tensor state_ext(const State& st, int64_t E, at::ScalarType dt) {
  if (!st.S.defined()) return at::Tensor();
  const int64_t e = st.S.size(2);
  at::Tensor out = at::zeros({st.S.size(0), st.S.size(1), E}, st.S.options().dtype(dt));
  out.narrow(2, 0, e).copy_(st.S);
  out.select(2, e).copy_(st.s);
  return out;
}

/// Extended [BH, D, E] -> the state (S, s).
inline State state_split(const at::Tensor& ext, int64_t e) {
  return {ext.narrow(2, 0, e).contiguous(), ext.select(2, e).contiguous()};
}

}  // namespace cuda
}  // namespace power_attention
