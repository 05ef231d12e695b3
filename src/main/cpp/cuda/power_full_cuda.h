// power_full_cuda.h: the CUDA path of power_full (SPEC §3-5), forward and backward, and its decode step: the
// device-path interface of path.h for CUDA tensors. Compiled only with -DPOWER_ATTENTION_CUDA=ON (path.cpp then
// sees POWER_ATTENTION_WITH_CUDA and sends CUDA tensors here).
//
// Tensors in and out in the caller's layout (path.h). A problem runs on the fast path (fast_path.h: 16-bit inputs,
// d == e in {16, 32, 64, 128}, the quadratic form or degree 2, on the caller's tensors in place) or else on the
// generic path (generic_path.h: the compute layout, cuBLAS and simple kernels). Runs on the current CUDA stream of
// q's device and allocates through LibTorch's caching allocator.
#pragma once

#include "path.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace power_attention {
namespace cuda {

/// The dtypes of this path (path.h): bf16 / fp16 inputs keep their dtype for the matrix products (fp32
/// accumulation, scores, row sums, states and gates) at degree 2 with chunks of 16 tokens or more; degrees >= 3 and
/// smaller chunks compute in fp32 (their bf16 state products missed SPEC §7 on the GPU harness: degree 4's gate
/// gradients 0.9-1.5e-2, chunk 1 2-9e-2, nearly all weight then going through the states); fp64 inputs and odd
/// degrees in fp64. A positive log gate (amplifying) computes in fp64, both forms.
Precision precision(at::ScalarType input, int64_t p, int64_t chunk, bool amplifying);

/// Bytes the chunked form holds for its states: the fused degree-2 path's bf16 states in the internal layout (and
/// their gradients in backward), else every chunk's states and phi of every row.
double state_bytes(const Problem& pr, bool grad);

/// Device memory the op may plan to hold on q's device (free memory plus what LibTorch's caching allocator holds
/// but does not use), for the affordability check before a chunked form allocates its states.
MemoryLimit memory_limit(const at::Tensor& q);

/// Whether decode_step takes the problem (g query heads per key/value head, value width e, degree p).
bool decode_supported(int64_t g, int64_t e, int64_t p);

/// path::forward for CUDA tensors.
Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& log_g, bool save, const State& initial = {}, bool want_final = false);

/// path::backward for CUDA tensors.
Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& log_g, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final = {});

/// Whether row_max_abs / head_max_abs take x (fp32 or 16-bit [b, t, H, w], rows of unit stride, not empty).
bool max_abs_supported(const at::Tensor& x);

/// path::row_max_abs / head_max_abs for CUDA tensors that max_abs_supported takes (one pass, cuda/rows/max_abs.cu).
at::Tensor row_max_abs(const at::Tensor& x);
at::Tensor head_max_abs(const at::Tensor& x);

/// Whether extremes takes q, k and log_g (both max_abs_supported; log_g undefined or fp32 [b, t, h] of k's sizes).
bool extremes_supported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& log_g);
/// path::extremes for them: {qa, ka, stats}, four launches (a zero fill, the two passes, one CTA to finish).
std::vector<at::Tensor> extremes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& log_g);

/// path::decode_step for CUDA tensors (decode_supported problems).
std::vector<at::Tensor> decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& lg, const at::Tensor& S, const at::Tensor& s, int64_t p);

}  // namespace cuda
}  // namespace power_attention
