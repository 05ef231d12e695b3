// query_sm90.h: the degree-2 query product B = phi'(x) H on Hopper (wgmma; query_sm90.cuh), launched in place of
// the sm_80 kernel by query.cu where cuda/common/sm90_select.h's kernel_set() and query_supported() say.
#pragma once

#include "cuda/common/operand.h"
#include "cuda/sympow2/query_epilogue.cuh"

#include <cuda_runtime.h>

#include <cstdint>

namespace power_attention {
namespace cuda {
namespace sympow2 {
namespace sm90 {

/// Head dimensions (d == e) the sm_90a query kernel is built for.
bool query_supported(int64_t d);

/// B = phi'(x) H for X blocks of n rows: x through xm (bf16 when bf16_x, else fp16), rs [X n] or null, H [X, D2, E]
/// bf16; out [X, n, cols] fp32 or, with cmb.y, the combination (query_epilogue.cuh). The sm_80 kernel's contract.
/// wide: four warpgroups a CTA at d = 64 (QueryWide), else the default shape.
void query_launch(bool bf16_x, int64_t d, bool wide, const uint16_t* x, const RowMap& xm, const float* rs,
                  const uint16_t* H, float* out, int64_t X, int64_t n, int cols, const Combine& cmb,
                  cudaStream_t stream);

}  // namespace sm90
}  // namespace sympow2
}  // namespace cuda
}  // namespace power_attention
