// scan_sm90.h: the degree-2 chunk states fused with the gated prefix on Hopper (wgmma; scan_sm90.cuh), launched in
// place of the sm_80 kernel by scan.cu where cuda/common/sm90_select.h's kernel_set() and scan_supported() say.
#pragma once

#include "cuda/common/operand.h"

#include <cuda_runtime.h>

#include <cstdint>

namespace power_attention {
namespace cuda {
namespace sympow2 {
namespace sm90 {

/// Head dimensions (d == e) the sm_90a scan kernel is built for.
bool scan_supported(int64_t d);

/// Warpgroups a CTA (each one m64 tile of the state, 64 features) the library runs for BH heads of dimension d on
/// a device of `sms` multiprocessors.
int scan_default_wg(int64_t d, int64_t BH, int sms);

/// The warpgroup counts built for dimension d (scan_launch's wg), as a bit set: bit k set for wg = 2^k.
unsigned scan_shapes(int64_t d);

/// POWER_ATTENTION_SCAN_WG="F" or "F,R": warpgroups a CTA of the forward (F) and reverse (R, default F) scans in
/// place of scan_default_wg (read at every launch; 0 where unset or not built for d).
int scan_env_wg(int64_t d, bool rev);

/// The fused scan (sympow2.h: sympow2_scan_forward when !rev, sympow2_scan_backward when rev) of BH heads of N
/// chunks of c rows: x through xm (bf16 when bf16_x, else fp16), rs [BH N c] or null, y through ym (bf16; e = E - 8
/// columns when ones, the kernel then makes [y | 1 | 0]), decay [BH N] or null, Hin [BH, D2, E] fp32 or null, Hs
/// [BH, N, D2, E] bf16 (rev only), out [BH, N, D2, E] bf16, last [BH, D2, E] fp32 or null, dL [BH N] fp32 or null
/// (rev only: accumulated into). The sm_80 kernel's contract. wg: warpgroups a CTA (scan_shapes), 0: the default.
void scan_launch(bool bf16_x, int64_t d, bool rev, bool ones, const uint16_t* x, const RowMap& xm, const float* rs,
                 const uint16_t* y, const RowMap& ym, const float* decay, const float* Hin, const uint16_t* Hs,
                 uint16_t* out, float* last, float* dL, int64_t BH, int64_t N, int64_t c, int wg,
                 cudaStream_t stream);

}  // namespace sm90
}  // namespace sympow2
}  // namespace cuda
}  // namespace power_attention
