// rows.h: the CUDA path's per-row stages of the chunked and quadratic forms: the chunk gate factors and the gate
// gradient (chunk_gates.cu), and the combination of the in-chunk attention with the state term, forward and
// backward (combine.cu). Rows are in the compute layout [X, R, .] (R = c g rows a chunk) except dy, an operand.
#pragma once

#include "cuda/common/operand.h"
#include "path.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

namespace power_attention {
namespace cuda {

// Gate factors of the stabilised chunked form on [X = BH * N, c] (see chunk_gates_kernel): Gc [X, c] (undefined
// without gating), alpha [X], kf [X * c], qf = scale^p per query row [X * c * g], mu [BH, N] fp64 (the log-scale of
// the state entering each chunk: Forward::logscale) and mu_final [BH] fp64.
struct ChunkGates {
  at::Tensor Gc, alpha, kf, qf, mu, mu_final;
};

// The log-scale of the state entering the sequence: mu0[bh * stride], or `fallback` for every head where mu0 is null
// (0 for a state without a log-scale, -inf for none).
struct InitialScale {
  const double* mu0 = nullptr;
  int64_t stride = 1;
  double fallback = -std::numeric_limits<double>::infinity();
  at::Tensor owner;  // what mu0 points into, when made here
};

/// The log-scale of the state entering the sequence, for chunk_gates (a State without one: 0; none: -inf).
InitialScale initial_scale(const State& st, int64_t BH);

/// The gate factors of the chunked form (see chunk_gates_kernel): lg [X, c] in acc_opts' dtype (contiguous) or
/// undefined (no gates).
ChunkGates chunk_gates(const Problem& pr, const at::Tensor& lg, const at::TensorOptions& acc_opts,
                       const InitialScale& init);

// The chunked form's row factors of query row `row` of the compute layout [X, R, .] (R = c g rows a chunk: chunk
// row / R, token row / g): gc [X c] the in-chunk gate cumsum (null: 0), mu [X] the log-scale of the state entering
// each chunk.
struct StateRows {
  const void* gc = nullptr;  // A
  const double* mu = nullptr;
  int64_t R = 0;
  int g = 1;
};

/// The chunked form's row factors for the combination kernels.
StateRows state_rows(const Problem& pr, const ChunkGates& gt);

/// The log gates' gradient [BH, T] of the chunked form from its parts (chunk_gate_grad_kernel; undefined parts are 0).
at::Tensor chunk_gate_grad(const Problem& pr, const at::Tensor& uq, const at::Tensor& uk, const at::Tensor& rowdz,
                           const at::Tensor& coldz, const at::Tensor& dG0, const at::Tensor& dLs,
                           const at::TensorOptions& acc_opts);

/// The combination's forward (combine_forward): numA [rows, e] in A, l, m, den [rows]; B [rows, E] or undefined (the
/// quadratic form); y [rows, e] in A.
template <typename A>
void combine_fwd(const at::Tensor& numA, const A* l, const A* m, const at::Tensor& B, const StateRows& st,
                 at::Tensor y, A* den);

/// The combination's backward (combine_backward): dy [rows, e] in the compute layout, or an operand through its map
/// in blocks of R rows (rows = blocks x R; R = 0: the chunk map's c g); y [rows, e] in A; writes dB [rows, E] (when
/// defined), dnumA [rows, e] in T (when defined), rf, ddenA [rows]; and, with own given, own [rows]: each row's
/// dy . (v - y) rf at its own key (attention_tile.h, tile_backward), v [blocks of R / g tokens, e] an operand in dy's
/// dtype (g query rows a token).
template <typename T, typename A>
void combine_bwd(const Operand& dy, const at::Tensor& y, const A* den, const A* m, bool state, const StateRows& st,
                 at::Tensor dB, at::Tensor dnumA, A* rf, A* ddenA, int64_t rows, int64_t e, int64_t E, int64_t R = 0,
                 const Operand& v = {}, int64_t g = 1, A* own = nullptr);

}  // namespace cuda
}  // namespace power_attention
