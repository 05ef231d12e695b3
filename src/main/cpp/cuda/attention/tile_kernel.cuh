// tile_kernel.cuh: what the three tile kernels of attention_tile.h share: the launch arguments, sizes, the log2-unit
// score helpers, the stores of accumulator tiles, and the launchers each kernel's file defines.
//
// Three kernels, each a CTA of 4 warps:
//   tile_fwd_kernel      (tile_fwd.cu)      64 query rows (16 a warp) against key tiles of 64, online row maximum
//                                           (flash style);
//   tile_bwd_dq_kernel   (tile_bwd_dq.cu)   64 query rows against key tiles: recomputes P with the saved m,
//                                           accumulates dq and the rows' dz sums;
//   tile_bwd_dkv_kernel  (tile_bwd_dkv.cu)  64 keys (16 a warp) against steps of query rows: accumulates dk, dv and
//                                           the keys' dz sums.
// K/V (or Q/dY) tiles stream through shared memory with cp.async, two stages; fragments come from ldmatrix. Every
// operand is read (and every output in the input dtype written) through its row map (operand.h): the caller's
// layout and a dense one alike.
#pragma once

#include "cuda/common/mma_sm80.cuh"
#include "cuda/common/operand.h"

#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>

namespace power_attention {
namespace cuda {
namespace tile {

using namespace mma;

constexpr int kThreads = 128;  // 4 warps
constexpr int kRows = 64;      // query rows of a forward / dq CTA, keys of a dkv CTA
constexpr float kNegInf = -__builtin_huge_valf();

constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

struct Args {
  int64_t X, R, C;
  int g, p;
  float lp2;          // p log2(scale)
  const float* gmin;  // [X]: min over the block's keys of G, or null (no gates)
  const float* own;   // [X R]: each query row's t at its own key (the backward; cuda/attention/attention_tile.h)
  RowMap mq, mk, mv, my;  // loads: q, k, v, dy (the forward: its output y)
  RowMap oq, ok, ov;      // outputs in the input dtype: dq, dk, dv
};

// Degree 2 in the backward: w = s^2 2^(c_i - G_j log2 e) and dz p / s = 2 t s 2^(...) need one MUFU a score instead
// of three (lg2, ex2 and the division's reciprocal). The factor 2^(...) is finite while c_i - min_j G_j log2 e < 120
// (the row's "room"; the product itself is a weight <= 1); rows without room take the log form.
constexpr float kRoom = 120.f;

// Scores work in log2 units: z2 = p log2|s| + (p log2 scale + G_i log2 e) - G_j log2 e, weights 2^(z2 - m2).
// MUFU approximations (ex2.approx, lg2.approx): a few ulp, far under the bf16 operands' rounding.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float lg2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// fp16 operands hold |x| <= 65504 only, and a score gradient ds = dz p / s can pass that where dq = ds k and
// dk = ds^T q do not (a tiny score carrying a row's weight). With fp16 inputs the backward's ds rows are packed as
// ds 2^-e, e >= 0 the row's (or key's) exponent: raised where a tile's largest |ds| would pass 2^15, the fp32 sum
// of the products then kept times 2^-e too (rescaled by the same power of two, exact) and multiplied by 2^e once
// at the end. e stays 0 (nothing changes, to the bit) for rows whose ds stay in range.
__device__ __forceinline__ float pow2f(int e) { return __int_as_float((127 + e) << 23); }  // 2^e, |e| <= 126

// Raises e so that amax 2^-e <= 2^15 and returns the factor 2^(e_old - e_new) for a sum kept at the old exponent
// (1 where e stays; an inf or NaN amax leaves it).
__device__ __forceinline__ float raise_exp(int& e, float amax) {
  if (!(amax * pow2f(-e) > 0x1p15f) || !(amax <= 0x1p127f)) return 1.f;
  int top;
  frexpf(amax, &top);  // amax < 2^top
  const float f = pow2f(e - (top - 15));
  e = top - 15;
  return f;
}

// The forward's row sums l: of the weights as rounded for the P V product (a k16 step's A fragment of them: rows gr
// / gr + 8 in registers 0, 2 / 1, 3), so that y = num / l is a weighted average in exactly the weights that weigh v.
// A row whose weight sits on one key then gives y = v of that key exactly, which the backward's own-key term
// (attention_tile.h, tile_backward) needs: an fp32 weight of 1 - 1e-7 rounded to 1 in the product but not in l
// left y - v at the fp32 rounding, which that term's p / s carried into dq and dk.
template <bool BF>
__device__ __forceinline__ void add_weights(const u32 (&pf)[4], float& la, float& lb) {
  const float2 a0 = unpack2<BF>(pf[0]), b0 = unpack2<BF>(pf[1]), a1 = unpack2<BF>(pf[2]), b1 = unpack2<BF>(pf[3]);
  la += (a0.x + a0.y) + (a1.x + a1.y);
  lb += (b0.x + b0.y) + (b1.x + b1.y);
}

// A warp's [16 x 8 N] tile (rows gr / gr + 8 in registers 0-1 / 2-3 of each n8 tile) times fa / fb by rows.
template <int N>
__device__ __forceinline__ void scale_rows(float (&x)[N][4], float fa, float fb) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    x[i][0] *= fa;
    x[i][1] *= fa;
    x[i][2] *= fb;
    x[i][3] *= fb;
  }
}

// The fp16 backward's ds tile of a warp (NT n8 tiles) brought to its rows' exponents ea / eb, with acc (the rows'
// sums, W / 8 n8 tiles) rescaled where they rise.
template <int NT, int W>
__device__ __forceinline__ void fit_half_range(float (&ds)[NT][4], float (&acc)[W / 8][4], int& ea, int& eb) {
  float xa = 0.f, xb = 0.f;
#pragma unroll
  for (int i = 0; i < NT; ++i) {
    xa = fmaxf(xa, fmaxf(fabsf(ds[i][0]), fabsf(ds[i][1])));
    xb = fmaxf(xb, fmaxf(fabsf(ds[i][2]), fabsf(ds[i][3])));
  }
  const float fa = raise_exp(ea, mma::quad_max(xa)), fb = raise_exp(eb, mma::quad_max(xb));
  if (fa != 1.f || fb != 1.f) scale_rows(acc, fa, fb);
  if (ea != 0 || eb != 0) scale_rows(ds, pow2f(-ea), pow2f(-eb));
}
// acc times 2^ea / 2^eb (rows gr / gr + 8): the sums at their true scale.
template <int W>
__device__ __forceinline__ void restore_exp(float (&acc)[W / 8][4], int ea, int eb) {
  if (ea != 0 || eb != 0) scale_rows(acc, pow2f(ea), pow2f(eb));
}

// Stores a [16 x W] accumulator tile (rows ra / ra + 8 of the warp) to out [rows, W] (fp32).
template <int W>
__device__ __forceinline__ void store_rows(float* out, const float (&acc)[W / 8][4], int64_t ra, int64_t n) {
  const int tg = threadIdx.x & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t r = ra + 8 * half;
    if (r >= n) continue;
    float* o = out + r * W;
#pragma unroll
    for (int f = 0; f < W / 8; ++f) {
      float2* p = reinterpret_cast<float2*>(o + f * 8 + tg * 2);
      *p = make_float2(acc[f][2 * half], acc[f][2 * half + 1]);
    }
  }
}


// Stores a [16 x W] accumulator tile (rows ra / ra + 8 of the warp, those under n) in the input dtype through map
// mp (out at the block's base), plus `add` (fp32, the block's rows of W in the compute layout) when given.
template <bool BF, int W>
__device__ __forceinline__ void store_mapped(u16* out, const RowMap& mp, const float (&acc)[W / 8][4], int64_t ra,
                                             int64_t n, const float* add = nullptr) {
  const int tg = threadIdx.x & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t r = ra + 8 * half;
    if (r >= n) continue;
    u16* o = out + mp.row(r);
#pragma unroll
    for (int f = 0; f < W / 8; ++f) {
      float2 v = make_float2(acc[f][2 * half], acc[f][2 * half + 1]);
      if (add) {
        const float2 p = *reinterpret_cast<const float2*>(add + r * W + f * 8 + tg * 2);
        v.x += p.x;
        v.y += p.y;
      }
      *reinterpret_cast<u32*>(o + f * 8 + tg * 2) = pack2<BF>(v.x, v.y);
    }
  }
}

template <int D, int E>
constexpr size_t fwd_smem() {
  return sizeof(u16) * (kRows * (D + 8) + 2 * 64 * (D + 8) + 2 * 64 * (E + 8)) + sizeof(float) * 2 * 64;
}

template <int D, int E>
constexpr int dq_keys() {
  return (D > 64 || E > 64) ? 32 : 64;
}
// CTAs a SM the dq kernel is compiled for: at d = e = 64 three (registers capped at 168, with spills: 8-10% faster
// on the H100 than two CTAs at 222 registers, where the forward and dkv kernels lost with the same cap), else one.
template <int D, int E>
constexpr int dq_min_ctas() {
  return D == 64 && E == 64 ? 3 : 1;
}
template <int D, int E>
constexpr size_t dq_smem() {
  constexpr int BN = dq_keys<D, E>();
  return sizeof(u16) * (kRows * (D + 8) + kRows * (E + 8) + 2 * BN * (D + 8) + 2 * BN * (E + 8)) +
         sizeof(float) * 2 * BN;
}

// Query rows a step of the dkv kernel and the CTAs a SM it is compiled for: at d = e = 64 steps of 32 rows, three
// CTAs (168 registers, no spills; 64 rows at two CTAs and 239 registers took 7-10% longer on the H100), at d or e
// 128 steps of 32 rows, else 64 rows; one CTA a SM promised.
template <int D, int E>
constexpr int dkv_rows() {
  return (D >= 64 || E >= 64) ? 32 : 64;
}
template <int D, int E>
constexpr int dkv_min_ctas() {
  return D == 64 && E == 64 ? 3 : 1;
}
template <int D, int E>
constexpr size_t dkv_smem() {
  constexpr int BM = dkv_rows<D, E>();
  return sizeof(u16) * (kRows * (D + 8) + kRows * (E + 8) + 2 * BM * (D + 8) + 2 * BM * (E + 8)) +
         sizeof(float) * 2 * 6 * BM;
}

// One CTA a tile of each block.
inline unsigned grid_of(int64_t tiles, int64_t X) {
  const int64_t n = tiles * X;
  TORCH_CHECK(n < (int64_t(1) << 31), "power_full: internal: too many tiles for one CUDA launch (", n, ")");
  return static_cast<unsigned>(n);
}

// The launchers, one kernel each (bf: bf16, else fp16; d = e in {16, 32, 64, 128}). Pointers: the input dtype's bits
// (u16) or fp32; null where not wanted (see each kernel).
void launch_fwd(const Args& a, bool bf, int64_t d, const u16* q, const u16* k, const u16* v, const float* G,
                float* num, float* m, float* l, bool normalize, u16* y);
void launch_bwd_dq(const Args& a, bool bf, int64_t d, const u16* q, const u16* k, const u16* v, const float* G,
                   const u16* dy, const float* m, const float* rf, const float* dd, const float* dq_add,
                   float* rowdz, u16* dq);
void launch_bwd_dkv(const Args& a, bool bf, int64_t d, const u16* q, const u16* k, const u16* v, const float* G,
                    const u16* dy, const float* m, const float* rf, const float* dd, const float* dk_add,
                    const float* dv_add, float* coldz, u16* dk, u16* dv);
// The dkv kernel on wgmma (tile_bwd_dkv_sm90.cu): d = e = 64 (dkv_sm90_supported), steps of `rows` (32 or 64) query
// rows; launch_bwd_dkv runs it where the device runs the sm_90a kernels (cuda/common/sm90_select.h).
bool dkv_sm90_supported(int64_t d);
// The forward kernel on wgmma (tile_fwd_sm90.cu): d = e = 64 (fwd_sm90_supported), tiles of 64 keys.
bool fwd_sm90_supported(int64_t d);
void launch_fwd_sm90(const Args& a, bool bf, const u16* q, const u16* k, const u16* v, const float* G, float* num,
                     float* m, float* l, bool normalize, u16* y);
// The dq kernel on wgmma (tile_bwd_dq_sm90.cu): d = e = 64 (dq_sm90_supported), steps of 64 keys.
bool dq_sm90_supported(int64_t d);
void launch_bwd_dq_sm90(const Args& a, bool bf, const u16* q, const u16* k, const u16* v, const float* G,
                        const u16* dy, const float* m, const float* rf, const float* dd, const float* dq_add,
                        float* rowdz, u16* dq);
void launch_bwd_dkv_sm90(const Args& a, bool bf, int rows, const u16* q, const u16* k, const u16* v, const float* G,
                         const u16* dy, const float* m, const float* rf, const float* dd, const float* dk_add,
                         const float* dv_add, float* coldz, u16* dk, u16* dv);

}  // namespace tile
}  // namespace cuda
}  // namespace power_attention
