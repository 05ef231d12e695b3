// sm90_select.h: which CUDA kernels a device runs. A stage with an sm_90a kernel (wgmma) runs it on devices of
// compute capability 9.x when this build holds its sm_90a image and the request allows it; every stage keeps its
// sm_80 kernel, which runs on all supported GPUs. The request is read at every call (so that one process, the GPU
// harness, can check and time every set on one card):
//   POWER_ATTENTION_CUDA_KERNELS=sm80       every stage on its sm_80 kernel (POWER_ATTENTION_CUDA_FORCE_SM80=1: the
//                                           same, whatever POWER_ATTENTION_CUDA_KERNELS says)
//   POWER_ATTENTION_CUDA_KERNELS=sm90a      the sm_90a kernels wherever the device runs them (at d = 64 the degree-2
//                                           query kernel and gradient through phi in their two-warpgroup shapes)
//   POWER_ATTENTION_CUDA_KERNELS=sm90a-wg4  the same, both at d = 64 in their 256-row shapes (the gradient four
//                                           warpgroups, the query two of two tiles; cuda/sympow2/query_sm90.cuh,
//                                           grad_sm90.cuh)
//   POWER_ATTENTION_CUDA_KERNELS=sm90a-scan sm90a-wg4 and the degree-2 fused scans on wgmma too
//                                           (cuda/sympow2/scan_sm90.cuh); the other sets run the sm_80 scans
//   POWER_ATTENTION_CUDA_KERNELS=sm90a-tiles sm90a-scan and the in-chunk / quadratic attention's three tile
//                                           kernels on wgmma at d = e = 64 (cuda/attention/*_sm90.cu); the other
//                                           sets run the sm_80 tile kernels
//                                           (POWER_ATTENTION_TILE_SM90_CTAS=3: its forward and dq kernels
//                                           compiled for three CTAs a SM, else two; POWER_ATTENTION_TILE_DKV_ROWS=32:
//                                           its dkv kernel in steps of 32 query rows, else 64). Slower than
//                                           sm90a-scan end to end on an H200 (NOTES-KERNELS.md v33): not the default
//   unset (or auto)                         the measured default (sm90_select.cu: kDefault)
// Any other value is the default too. On a device without the sm_90a kernels every request runs the sm_80 ones.
#pragma once

namespace power_attention {
namespace cuda {

/// The kernel sets of the CUDA stages (above).
enum class KernelSet { sm80, sm90a, sm90a_wg4, sm90a_scan, sm90a_tiles };

/// Its name as POWER_ATTENTION_CUDA_KERNELS spells it.
const char* kernel_set_name(KernelSet s);

/// Whether this build's sm_90a kernels run on `device` (capability 9.x and their image present: a probe kernel
/// compiled only for sm_90a reports it, once per device), whatever the request.
bool sm90a_present(int device);

/// The set the stages run on `device` now: the request (or the default) where the device runs it, else sm80.
KernelSet kernel_set(int device);

/// Whether set s runs the degree-2 query kernel and gradient through phi at d = 64 in their four-warpgroup shapes.
inline bool four_warpgroups(KernelSet s) {
  return s == KernelSet::sm90a_wg4 || s == KernelSet::sm90a_scan || s == KernelSet::sm90a_tiles;
}

/// Whether set s runs the degree-2 fused scans on their sm_90a kernel.
inline bool sm90a_scans(KernelSet s) { return s == KernelSet::sm90a_scan || s == KernelSet::sm90a_tiles; }

/// Whether set s runs the tile kernels (cuda/attention) on their sm_90a kernels where they have one.
inline bool sm90a_tiles(KernelSet s) { return s == KernelSet::sm90a_tiles; }

/// Whether the stages with an sm_90a kernel run it on `device` now.
inline bool use_sm90a(int device) { return kernel_set(device) != KernelSet::sm80; }

}  // namespace cuda
}  // namespace power_attention
