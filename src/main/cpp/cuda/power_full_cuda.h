// power_full_cuda.h: the CUDA path of power_full (SPEC §3-5), forward and backward, in the compute layout of
// power_full_path.h, or on its fast path in the API layout itself (Problem::direct, direct_supported below).
// Compiled only with -DPOWER_ATTENTION_CUDA=ON (power_full.cpp then sees
// POWER_ATTENTION_WITH_CUDA and sends CUDA tensors here).
//
// Dtypes: q, k, v in the compute dtype (bf16, fp16, fp32 or fp64), log gates fp32 (fp64 with fp64 compute), states
// in and out fp32 (fp64). Runs on the current CUDA stream of q's device and allocates through LibTorch's caching
// allocator.
#pragma once

#include "path.h"

#include <ATen/ATen.h>

#include <vector>

namespace power_attention {
namespace cuda {

/// The dtypes of this path (power_full_path.h): bf16 / fp16 inputs keep their dtype for the matrix products (fp32
/// accumulation, scores, row sums, states and gates) at degree 2 with chunks of 16 tokens or more; degrees >= 3 and
/// smaller chunks compute in fp32 (their bf16 state products missed SPEC §7 on the GPU harness: degree 4's gate
/// gradients 0.9-1.5e-2, chunk 1 2-9e-2, nearly all weight then going through the states); fp64 inputs and odd
/// degrees in fp64. A positive log gate (amplifying) computes in fp64, both forms.
Precision precision(at::ScalarType input, int64_t p, int64_t chunk, bool amplifying);

/// Bytes the chunked form holds for its states: the fused degree-2 path's bf16 states in the internal layout (and
/// their gradients in backward), else every chunk's states and phi of every row.
double state_bytes(const Problem& pr, at::ScalarType compute, bool grad);

/// initial: the state entering the sequence (chunked form only); want_final: fill final_state / final_norm.
Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& lg, bool save_for_backward, const State& initial = {}, bool want_final = false);

/// d_final: the gradient of the final state (undefined: zero).
Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& lg, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final = {});

/// Whether this problem may run straight from the API layout (Problem::direct): q, k, v in one bf16 / fp16 dtype
/// with d == e in {16, 32, 64, 128}; the quadratic form, or the chunked form of degree 2. Then forward and backward
/// take q [b, t, hq, d], k [b, t, h, d], v [b, t, h, e] and dy [b, t, hq, e] contiguous (lg in the compute layout)
/// and return y (Forward::y_api) and dq, dk, dv (Grads::api) in the layouts and dtype of q, k, v.
bool direct_supported(const Problem& pr, at::ScalarType dtype);

/// One recurrent step without autograd: q [BH, g, d], k [BH, d], v [BH, e], lg [BH] or undefined, S [BH, D, e],
/// s [BH, D], contiguous, one dtype (fp32 or fp64), g <= 8 -> {y [BH, g, e], S', s'}.
std::vector<at::Tensor> decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& lg, const at::Tensor& S, const at::Tensor& s, int64_t p);

/// Whether decode_step takes this problem (query heads per key/value head g, value width e, degree p); the API file
/// computes other steps with ATen ops.
bool decode_supported(int64_t g, int64_t e, int64_t p);

/// Bytes of device memory the op may plan to hold on q's device (free memory plus what LibTorch's caching
/// allocator holds but does not use), for the affordability check before a chunked form allocates its states.
double device_memory_limit_bytes(const at::Tensor& q);

}  // namespace cuda
}  // namespace power_attention
