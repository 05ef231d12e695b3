// grad_sm90.h: the degree-2 gradient through phi on Hopper (wgmma; grad_sm90.cuh), launched in place of the sm_80
// kernel by grad.cu where cuda/common/sm90_select.h's kernel_set() and grad_supported() say.
#pragma once

#include "cuda/common/operand.h"

#include <cuda_runtime.h>

#include <cstdint>

namespace power_attention {
namespace cuda {
namespace sympow2 {
namespace sm90 {

/// Head dimensions (d == e) the sm_90a gradient kernel is built for.
bool grad_supported(int64_t d);

/// dx, u of the sm_80 kernel's contract (sympow2.h: sympow2_grad) for X blocks of n rows: x through xm (bf16 when
/// bf16_x, else fp16), rs [X n] or null, y through ym (bf16; E = d + 8 columns, or d when ones: [y | 1 | 0] made in
/// the kernel), H [X, D2, E] bf16; dx [X, n, d], u [X n] fp32. wide: four warpgroups a CTA (GradWide), else two.
void grad_launch(bool bf16_x, int64_t d, bool ones, bool wide, const uint16_t* x, const RowMap& xm, const float* rs,
                 const uint16_t* y, const RowMap& ym, const uint16_t* H, float* dx, float* u, int64_t X, int64_t n,
                 cudaStream_t stream);

}  // namespace sm90
}  // namespace sympow2
}  // namespace cuda
}  // namespace power_attention
