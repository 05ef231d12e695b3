// query_epilogue.cuh: the end of the degree-2 query product B = phi'(x) H (sympow2.h: sympow2_query,
// sympow2_query_combine), shared by its sm_80 kernel (query.cu, mma.sync) and its sm_90a kernel (query_sm90.cuh,
// wgmma): both hold B in m16n8 accumulators, acc[i][nt][4] for m16 tile i and columns 8 nt .. 8 nt + 7, rows gr /
// gr + 8 (registers 0-1 / 2-3).
#pragma once

#include "cuda/common/mma_sm80.cuh"
#include "cuda/common/operand.h"
#include "cuda/common/state_scale.cuh"

#include <cstdint>

namespace power_attention {
namespace cuda {
namespace sympow2 {

// The chunked form's combination (SPEC §4) in the query kernel's epilogue: with B = phi'(q) H the row's state
// term and wa, ws the row factors of state_scale.cuh (from m, the token's gc and the chunk's mu): den = l wa + B[e] ws,
// y = (numA wa + B[:e] ws) / den (0 where den is). numA, y [rows, e], l, m, den [rows], fp32; gc [X rows / g] fp32
// (null: 0), mu [X] fp64; y also to yo (the input dtype) through map, when given.
struct Combine {
  const float* numA = nullptr;
  const float* l = nullptr;
  const float* m = nullptr;
  const float* gc = nullptr;
  const double* mu = nullptr;
  int g = 1;
  float* y = nullptr;
  float* den = nullptr;
  mma::u16* yo = nullptr;
  RowMap map;
};

// Writes this lane's rows of block bx: row[i][h] is the CTA-tile row of m16 tile i, half h (gr or gr + 8), r0 the
// tile's first row of the block's n. With cmb.y: the combination (y, den, yo); else out [X, n, cols] fp32, the
// first `cols` columns (a multiple of 8) of B.
template <bool BFX, int E, int MT>
__device__ __forceinline__ void query_epilogue(const float (&acc)[MT][E / 8][4], const int (&row)[MT][2], int64_t bx,
                                               int64_t r0, int64_t n, float* __restrict__ out, int cols,
                                               const Combine& cmb) {
  constexpr int NT = E / 8;
  const int tg = threadIdx.x & 3;
  if (cmb.y) {
    constexpr int e = E - 8;  // B[:, e] is the normaliser's column: element 0 of lane tg = 0 in tile e / 8
    const int lane = threadIdx.x & 31;
    // every load of this lane's rows first: the stores to y below may alias numA for the compiler, which then issues
    // no load after a store until the store is done (one load latency an 8-column step)
    float2 na[MT][2][e / 8];
    float lv[MT][2], mv[MT][2], gv[MT][2];
    const double mu = cmb.mu[bx];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t r = r0 + row[i][h], rw = bx * n + r;
        const bool in = r < n;
        mv[i][h] = in ? cmb.m[rw] : 0.f;
        gv[i][h] = in && cmb.gc ? cmb.gc[bx * (n / cmb.g) + r / cmb.g] : 0.f;
        lv[i][h] = in ? cmb.l[rw] : 0.f;
#pragma unroll
        for (int nt = 0; nt < e / 8; ++nt)
          na[i][h][nt] =
              in ? *reinterpret_cast<const float2*>(cmb.numA + rw * e + nt * 8 + 2 * tg) : make_float2(0.f, 0.f);
      }
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float be = __shfl_sync(0xffffffffu, acc[i][e / 8][2 * h], lane & ~3);
        const int64_t r = r0 + row[i][h];
        if (r >= n) continue;
        const int64_t rw = bx * n + r;
        float wa, ws;
        state_row_weights<float>(mv[i][h], gv[i][h], mu, wa, ws);
        const float dn = lv[i][h] * wa + be * ws;
        mma::u16* yo = cmb.yo && r < cmb.map.rows(bx, n) ? cmb.yo + cmb.map.base(bx) + cmb.map.row(r) : nullptr;
#pragma unroll
        for (int nt = 0; nt < e / 8; ++nt) {
          const int64_t at = rw * e + nt * 8 + 2 * tg;
          const float2 a = na[i][h][nt];
          const float y0 = a.x * wa + acc[i][nt][2 * h] * ws, y1 = a.y * wa + acc[i][nt][2 * h + 1] * ws;
          const float2 yv = dn != 0.f ? make_float2(y0 / dn, y1 / dn) : make_float2(0.f, 0.f);
          *reinterpret_cast<float2*>(cmb.y + at) = yv;
          if (yo) *reinterpret_cast<mma::u32*>(yo + nt * 8 + 2 * tg) = mma::pack2<BFX>(yv.x, yv.y);
        }
        if (tg == 0) cmb.den[rw] = dn;
      }
    return;
  }
  float* ob = out + bx * n * cols;
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = r0 + row[i][h];
      if (r >= n) continue;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        if (nt * 8 < cols)
          *reinterpret_cast<float2*>(ob + r * cols + nt * 8 + 2 * tg) =
              make_float2(acc[i][nt][2 * h], acc[i][nt][2 * h + 1]);
    }
}

}  // namespace sympow2
}  // namespace cuda
}  // namespace power_attention
