// power_full_cpu.h: the fast CPU path of power_full (SPEC §3-5), forward and backward, in the compute layout.
//
// Compute layout: see power_full_path.h (lg fp64 here, compute dtype fp32 or fp64).
#pragma once

#include "path.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace power_attention {
namespace cpu {

/// The dtypes of this path (power_full_path.h): fp32 for fp32 / bf16 / fp16 inputs, fp64 for fp64 inputs, for odd
/// degrees (their signed normaliser cancels) and for chunked forms with a positive log gate (amplifying: the states
/// then carry most of the weight, and phi(q) . phi(k), a sum of D products, loses in fp32 the cancellation of nearly
/// orthogonal q, k: 1e-3 relative errors at log gates of +5 a token where the quadratic form keeps 1e-7). Gates fp64.
Precision precision(at::ScalarType input, int64_t p, int64_t chunk, bool amplifying);

/// Bytes the chunked form holds at once for its states: the checkpointed ones when saved for backward (grad; see
/// state_interval), one head's running state otherwise, plus phi of one chunk of query rows.
double state_bytes(const Problem& pr, at::ScalarType compute, bool grad);

/// State checkpointing of the chunked form: the forward saved for backward keeps the state entering every k-th
/// chunk (chunks 0, k, 2k, ...; Forward::states [BH, ceil(N / k), D, e]) and the log-scales of all N; the backward
/// recomputes the states inside a segment of k chunks from its checkpoint (one extra phi(K)^T V product for each
/// chunk that is not a checkpoint). k is the smallest interval whose kept states plus the recomputation buffers (k
/// states per worker thread) fit in max(32 MiB, half the bytes of q, k, v and y); where none fits, the interval
/// with the least memory. So short sequences keep every state (no recomputation) and long ones keep about as much
/// state as a quarter of their activations. POWER_ATTENTION_CPU_STATE_INTERVAL=k (>= 1) sets k instead (1: every
/// state kept).
int64_t state_interval(const Problem& pr);

/// initial: the state entering the sequence (chunked form only); want_final: fill final_state / final_norm.
Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& lg, bool save_for_backward, const State& initial = {}, bool want_final = false);

/// d_final: the gradient of the final state (undefined: zero).
Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& lg, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final = {});

/// One recurrent step without autograd (SPEC §6), one pass over the state per head:
///   q [BH, g, d], k [BH, d], v [BH, e], lg [BH] or undefined, S [BH, D, e], s [BH, D], all contiguous in one dtype
///   (fp32 or fp64) -> {y [BH, g, e], S', s'}
std::vector<at::Tensor> decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& lg, const at::Tensor& S, const at::Tensor& s, int64_t p);

}  // namespace cpu
}  // namespace power_attention
