// sympow_cpu.h: the symmetric power embedding phi (layout: sympow.h) and its backward on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

namespace power_attention {

/// The layout's coefficients (sympow.h) as a [D] tensor of `dtype`, made once per (d, p, dtype) and kept, read
/// only, for the process.
at::Tensor sympow_coefficient_tensor(int64_t d, int64_t p, at::ScalarType dtype);

/// out[r] = row_scale[r] * phi(x[r])   (torch: row_scale[:, None] * phi(x))
///   x [n, d] contiguous, row_scale [n] contiguous or undefined (1), out [n, D]; dtype float or double.
at::Tensor sympow_forward(const at::Tensor& x, const at::Tensor& row_scale, int64_t p);

/// Backward of sympow_forward:
///   dx[r]      = row_scale[r] * J_phi(x[r])^T dphi[r]
///   dscale[r]  = dphi[r] . phi(x[r])          (the gradient of row_scale[r])
/// Either output may be skipped (want_dx / want_dscale false gives an undefined tensor).
std::pair<at::Tensor, at::Tensor> sympow_backward(const at::Tensor& x, const at::Tensor& row_scale,
                                                  const at::Tensor& dphi, int64_t p, bool want_dx,
                                                  bool want_dscale);

}  // namespace power_attention
