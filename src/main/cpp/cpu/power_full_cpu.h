// power_full_cpu.h: the CPU path of power_full (SPEC §3-5), forward and backward, and its decode step: the device-path
// interface of path.h for CPU tensors. Tensors in and out in the caller's layout (path.h); inside, the compute layout
// of compute_layout.h in fp32 or fp64 (gates fp64).
#pragma once

#include "path.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace power_attention {
namespace cpu {

/// The dtypes of this path (path.h): fp32 for fp32 / bf16 / fp16 inputs, fp64 for fp64 inputs, for odd degrees
/// (their signed normaliser cancels) and for chunked forms with a positive log gate (amplifying: the states then
/// carry most of the weight, and phi(q) . phi(k), a sum of D products, loses in fp32 the cancellation of nearly
/// orthogonal q, k: 1e-3 relative errors at log gates of +5 a token where the quadratic form keeps 1e-7). Gates fp64.
Precision precision(at::ScalarType input, int64_t p, int64_t chunk, bool amplifying);

/// Bytes the chunked form holds at once for its states: the checkpointed ones when saved for backward (grad; see
/// state_interval), one head's running state otherwise, plus phi of one chunk of query rows.
double state_bytes(const Problem& pr, bool grad);

/// What the op may plan to hold: half the physical memory, or POWER_ATTENTION_MEMORY_LIMIT (bytes) when set.
MemoryLimit memory_limit();

/// State checkpointing of the chunked form: the forward saved for backward keeps the state entering every k-th
/// chunk (chunks 0, k, 2k, ...; Forward::states [BH, ceil(N / k), D, e]) and the log-scales of all N; the backward
/// recomputes the states inside a segment of k chunks from its checkpoint (one extra phi(K)^T V product for each
/// chunk that is not a checkpoint). k is the smallest interval whose kept states plus the recomputation buffers (k
/// states per worker thread) fit in max(160 MiB, 1.25 times the bytes of q, k, v and y), both counted at 8 bytes an
/// element; where none fits, the interval with the least memory. So short sequences keep every state (no
/// recomputation) and long ones keep about 1.25 times the bytes of their inputs and output in states.
/// POWER_ATTENTION_CPU_STATE_INTERVAL=k (>= 1) sets k instead (1: every state kept).
int64_t state_interval(const Problem& pr);

/// path::extremes for CPU tensors, for fp32 or fp64 q [b, t, hq, d] and k [b, t, h, d] with unit element stride and
/// at least one element each: {qa [b, t, hq, 1] (each row's max-abs), ka [b, 1, h, 1] (each head's), stats} in q's
/// dtype, stats fp64: the largest qa, the smallest positive qa (inf if none), the same two of ka, and with log_g its
/// largest element in q's dtype (NaN propagates through every largest; a NaN row counts as no positive one), from
/// one pass over q and k. Empty for any other q, k: the caller takes ATen's reductions.
std::vector<at::Tensor> extremes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& log_g);

/// path::forward for CPU tensors.
Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& log_g, bool save, const State& initial = {}, bool want_final = false);

/// path::backward for CPU tensors.
Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& log_g, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final = {});

/// One recurrent step without autograd (SPEC §6), one pass over the state per head (path::decode_step); the CPU
/// takes every problem.
std::vector<at::Tensor> decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& lg, const at::Tensor& S, const at::Tensor& s, int64_t p);

}  // namespace cpu
}  // namespace power_attention
