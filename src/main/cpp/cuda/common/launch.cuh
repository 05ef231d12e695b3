// launch.cuh: the host side of a kernel launch: the stream, grid sizes, shared-memory opt-in, error checks, pointers.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace power_attention {
namespace cuda {

inline void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

// ATen/cuda/CUDAContext.h would need cuBLAS/cuSPARSE headers, which a bare nvcc install lacks: c10 suffices.
inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <typename T>
T* mut_ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

inline unsigned blocks_for(int64_t work, int per_block) {
  return static_cast<unsigned>(std::max<int64_t>(1, (work + per_block - 1) / per_block));
}

/// Lets `kernel` take `bytes` of dynamic shared memory (over the 48 KiB default).
template <typename K>
void allow_smem(K kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace cuda
}  // namespace power_attention
