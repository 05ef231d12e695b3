// sm90_select.cu: see sm90_select.h.
#include "cuda/common/sm90_select.h"

#include "cuda/common/wgmma_sm90.cuh"

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

namespace power_attention {
namespace cuda {
namespace {

// Writes 1 where this image was compiled for sm_90a (the only one whose wgmma kernels have a body), else 0.
__global__ void sm90a_probe_kernel(int* flag) {
#ifdef POWER_ATTENTION_SM90A
  *flag = 1;
#else
  *flag = 0;
#endif
}

// 1: the sm_90a kernels run there; 0: they do not; the probe runs once per device, on its own stream.
bool probe(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess || prop.major != 9) return false;
  int prev = 0;
  if (cudaGetDevice(&prev) != cudaSuccess || cudaSetDevice(device) != cudaSuccess) return false;
  bool ok = false;
  int* flag = nullptr;
  cudaStream_t s = nullptr;
  if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess &&
      cudaMallocAsync(reinterpret_cast<void**>(&flag), sizeof(int), s) == cudaSuccess) {
    int host = 0;
    sm90a_probe_kernel<<<1, 1, 0, s>>>(flag);
    ok = cudaGetLastError() == cudaSuccess &&
         cudaMemcpyAsync(&host, flag, sizeof(int), cudaMemcpyDeviceToHost, s) == cudaSuccess &&
         cudaStreamSynchronize(s) == cudaSuccess && host == 1;
    cudaFreeAsync(flag, s);
    cudaStreamSynchronize(s);
  }
  if (s) cudaStreamDestroy(s);
  cudaGetLastError();  // a failed probe (no image for this device) leaves no error behind
  cudaSetDevice(prev);
  return ok;
}

}  // namespace

// The set where nothing is requested, on a device that runs the sm_90a kernels: the four-warpgroup query kernel at
// d = 64 (the two-warpgroup one at d = 128), the four-warpgroup gradient through phi at d = 64 and the fused scans
// on wgmma, products, gradients and states bitwise equal to the sm_80 kernels' on the H200 harness and the fastest
// set there (NOTES-KERNELS.md v24, v26, v27); elsewhere the sm_80 kernels.
constexpr KernelSet kDefault = KernelSet::sm90a_scan;

const char* kernel_set_name(KernelSet s) {
  switch (s) {
    case KernelSet::sm80:
      return "sm80";
    case KernelSet::sm90a:
      return "sm90a";
    case KernelSet::sm90a_wg4:
      return "sm90a-wg4";
    case KernelSet::sm90a_scan:
      return "sm90a-scan";
    case KernelSet::sm90a_tiles:
      return "sm90a-tiles";
  }
  return "?";
}

bool sm90a_present(int device) {
  constexpr int kDevices = 64;
  static std::once_flag once[kDevices];
  static bool present[kDevices];
  if (device < 0 || device >= kDevices) return false;
  std::call_once(once[device], [device] { present[device] = probe(device); });
  return present[device];
}

KernelSet kernel_set(int device) {
  const char* force = std::getenv("POWER_ATTENTION_CUDA_FORCE_SM80");
  if (force && *force && std::strcmp(force, "0") != 0) return KernelSet::sm80;
  const char* k = std::getenv("POWER_ATTENTION_CUDA_KERNELS");
  KernelSet want = kDefault;
  if (k) {
    for (KernelSet s :
         {KernelSet::sm80, KernelSet::sm90a, KernelSet::sm90a_wg4, KernelSet::sm90a_scan, KernelSet::sm90a_tiles})
      if (std::strcmp(k, kernel_set_name(s)) == 0) want = s;
  }
  return want != KernelSet::sm80 && sm90a_present(device) ? want : KernelSet::sm80;
}

}  // namespace cuda
}  // namespace power_attention
