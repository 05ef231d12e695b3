// scan.cu: the degree-2 chunk states fused with the gated prefix (sympow2.h: sympow2_scan_forward / backward): the
// sm_80 kernel (mma.sync) and the launch, which takes the sm_90a kernel (scan_sm90.cuh) where
// cuda/common/sm90_select.h says the device runs it.
#include "cuda/common/launch.cuh"
#include "cuda/common/sm90_select.h"
#include "cuda/common/static_switch.h"
#include "cuda/sympow2/scan_sm90.h"
#include "cuda/sympow2/sympow2_kernel.cuh"

#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <type_traits>
#include <utility>

namespace power_attention {
namespace cuda {
namespace sympow2 {
namespace {

constexpr int kStateTokens = 64;  // rows a stage of the scan kernel
constexpr int kScanPipe = 3;      // stages in flight: one head's rows stream through each CTA in order

// Row strides of the scan kernel's tiles: an odd number of 16-byte units keeps ldmatrix free of bank conflicts
// (E = e + 8 is 8 mod 16, so its tile takes 16 more).
template <int D, int E>
constexpr size_t states_smem() {
  return sizeof(u16) * kScanPipe * kStateTokens * ((D + 8) + (E + 16)) + sizeof(float) * kScanPipe * kStateTokens;
}

// ---------------------------------------------------------------------------------------------------------------
// The chunk states and their gated prefix in one pass, per head: a warp owns two 16-feature tiles of the running
// state (fp32 registers) that share their x block (features (A, a, B, .) and (A, a + 1, B, .)), so one ldmatrix'd
// operand and each value fragment feed two tensor-core products. It walks the head's chunks in order (REV: in
// reverse), 64 rows a stage:
//   at a chunk's start   out[n] = H (bf16);  REV: dL[n] += decay_n (Hs[n] . H);  then H = decay_n H
//   over its rows        H += phi'(x)^T y (tensor cores)
// Forward: H starts at H0 and out = Hs, the states entering each chunk; last = the final state. Backward: H starts
// at the final state's gradient, the rows are Q' and dB, out = the gradient of the state leaving each chunk, last =
// the initial state's gradient. No [N, D2, E] fp32 tensor is made.
// ---------------------------------------------------------------------------------------------------------------

constexpr int kScanThreads = 128;  // 4 warps: 20 CTAs a head at d = 64, up to 3 a SM

// ONES: y holds e = E - 8 columns and the kernel makes the extended ones ([y | 1 | 0], see sympow2.h).
template <bool BFX, int D, int E, bool REV, bool ONES = false>
__global__ void __launch_bounds__(kScanThreads) sympow2_scan_kernel(
    const u16* __restrict__ x, RowMap xm, const float* __restrict__ rs, const u16* __restrict__ y, RowMap ym,
    const float* __restrict__ decay, const float* __restrict__ Hin, const u16* __restrict__ Hs,
    u16* __restrict__ out, float* __restrict__ last, float* __restrict__ dL, int64_t N, int64_t c) {
  constexpr int NB = D / 16, D2 = 256 * NB * (NB + 1) / 2, PAIRS = D2 / 32, NT = E / 8;
  constexpr int SD = D + 8, SE = E + 16, WARPS = kScanThreads / 32, PARTS = (PAIRS + WARPS - 1) / WARPS;
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);                              // [kScanPipe][64][SD]
  u16* sY = sX + kScanPipe * kStateTokens * SD;                         // [kScanPipe][64][SE]
  float* sR = reinterpret_cast<float*>(sY + kScanPipe * kStateTokens * SE);  // [kScanPipe][64]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gr = lane >> 2, tg = lane & 3;
  const int64_t bh = blockIdx.x / PARTS;
  const int pair = static_cast<int>(blockIdx.x % PARTS) * WARPS + warp;
  const bool valid = pair < PAIRS;
  // pair t of group A (8 (nb - A) pairs): a = 2 (t / W), B = A + t % W with W = nb - A; its tiles are the groups'
  // tiles a W + (B - A) and (a + 1) W + (B - A), after the 16 (nb - A') tiles of each earlier group A'
  int t = valid ? pair : 0, A = 0, first = 0;
  while (A < NB - 1 && t >= 8 * (NB - A)) t -= 8 * (NB - A), first += 16 * (NB - A), ++A;
  const int W = NB - A, a2 = 2 * (t / W), j = t % W;
  const int colA = 16 * A + a2, colB = 16 * (A + j);  // x columns of the row scalars (colA, colA + 1) and the block
  const float cab = j == 0 ? 1.f : kSqrt2;
  const int tile0 = first + a2 * W + j;
  const int64_t f[2] = {static_cast<int64_t>(tile0) * 16 + gr, static_cast<int64_t>(tile0 + W) * 16 + gr};
  // chunk n of the head: rows at x + xm.base(bh N) + n xm.step() (likewise y), row scales in the compute layout
  const u16* xh = x + xm.base(bh * N);
  const u16* yh = y + ym.base(bh * N);
  const int64_t xstep = xm.step(), ystep = ym.step();
  constexpr int YW = ONES ? E - 8 : E;  // columns of y in memory
  const float* rb = rs ? rs + bh * N * c : nullptr;

  float H[2][NT][4];
  zero(H[0]);
  zero(H[1]);
  if (Hin && valid) {
    const float* h = Hin + bh * D2 * E;
#pragma unroll
    for (int z = 0; z < 2; ++z)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const float2 u = *reinterpret_cast<const float2*>(h + f[z] * E + nt * 8 + 2 * tg);
        const float2 v = *reinterpret_cast<const float2*>(h + (f[z] + 8) * E + nt * 8 + 2 * tg);
        H[z][nt][0] = u.x, H[z][nt][1] = u.y, H[z][nt][2] = v.x, H[z][nt][3] = v.y;
      }
  }
  const int spc = static_cast<int>((c + kStateTokens - 1) / kStateTokens);  // stages a chunk
  const int64_t stages = N * spc;
  // stage q is stage s of the k-th chunk in walking order (chunk N - 1 - k when REV), tracked by counters: 64-bit
  // divisions here cost more instructions than a stage's matrix products
  struct Pos {
    int64_t k;
    int s;
  };
  auto advance = [&](Pos& p) {
    if (++p.s == spc) p.s = 0, ++p.k;
  };
  auto load = [&](const Pos& p, int buf) {
    const int64_t n = REV ? N - 1 - p.k : p.k, s0 = static_cast<int64_t>(p.s) * kStateTokens;
    load_rows_mapped<D, kStateTokens, kScanThreads, SD>(sX + buf * kStateTokens * SD, xh + n * xstep, xm, s0,
                                                        xm.chunk_rows(n, c));
    load_rows_mapped<YW, kStateTokens, kScanThreads, SE>(sY + buf * kStateTokens * SE, yh + n * ystep, ym, s0,
                                                         ym.chunk_rows(n, c));
    if constexpr (ONES) ones_column<YW, kStateTokens, SE, kScanThreads>(sY + buf * kStateTokens * SE, c - s0);
    for (int i = threadIdx.x; i < kStateTokens; i += kScanThreads) {
      float* dst = sR + buf * kStateTokens + i;
      const bool ok = s0 + i < c;
      if (rb) {
        cp_async4(dst, rb + (ok ? n * c + s0 + i : 0), ok);
      } else {
        *dst = ok ? 1.f : 0.f;
      }
    }
  };
  // a ring of kScanPipe stages: kScanPipe - 1 loads in flight while one is used (a CTA's rows arrive in order, so
  // its stream is latency-bound with fewer)
  Pos cur{0, 0}, pre{0, 0};
#pragma unroll
  for (int i = 0; i < kScanPipe - 1; ++i) {
    if (i < stages) load(pre, i), advance(pre);
    cp_async_commit();
  }
  int buf = 0, pre_buf = kScanPipe - 1;
  for (int64_t q = 0; q < stages; ++q) {
    if (q + kScanPipe - 1 < stages) load(pre, pre_buf), advance(pre);
    pre_buf = pre_buf + 1 == kScanPipe ? 0 : pre_buf + 1;
    cp_async_commit();
    cp_async_wait<kScanPipe - 1>();
    __syncthreads();
    if (cur.s == 0 && valid) {  // chunk start: hand out H, then decay it
      const int64_t n = REV ? N - 1 - cur.k : cur.k;
      u16* o = out + (bh * N + n) * D2 * E;
      float dot = 0.f;
#pragma unroll
      for (int z = 0; z < 2; ++z)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int64_t c0 = f[z] * E + nt * 8 + 2 * tg, c1 = c0 + 8 * E;
          *reinterpret_cast<u32*>(o + c0) = pack2<true>(H[z][nt][0], H[z][nt][1]);
          *reinterpret_cast<u32*>(o + c1) = pack2<true>(H[z][nt][2], H[z][nt][3]);
          if constexpr (REV) {
            const u16* hs = Hs + (bh * N + n) * D2 * E;
            const float2 u = unpack2<true>(*reinterpret_cast<const u32*>(hs + c0));
            const float2 v = unpack2<true>(*reinterpret_cast<const u32*>(hs + c1));
            dot += u.x * H[z][nt][0] + u.y * H[z][nt][1] + v.x * H[z][nt][2] + v.y * H[z][nt][3];
          }
        }
      const float dec = decay ? decay[bh * N + n] : 1.f;
      if constexpr (REV) {
        if (dL) {
#pragma unroll
          for (int o2 = 16; o2 > 0; o2 >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o2);
          if (lane == 0 && dot != 0.f) atomicAdd(dL + bh * N + n, dec * dot);
        }
      }
      if (decay) {
#pragma unroll
        for (int z = 0; z < 2; ++z)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) H[z][nt][e] *= dec;
      }
    }
    const u16* cX = sX + buf * kStateTokens * SD;
    const u16* cY = sY + buf * kStateTokens * SE;
    const float* cR = sR + buf * kStateTokens;
    if (valid) {
#pragma unroll
      for (int kk = 0; kk < kStateTokens / 16; ++kk) {
        const int k0 = kk * 16, t0 = k0 + 2 * tg;
        u32 xf[4];
        ldsm4t(xf, at_b(cX, SD, k0, colB));
        // row scalars: rs x[colA] (tile 0) and rs x[colA + 1] (tile 1) of rows t0, t0 + 1, t0 + 8, t0 + 9
        float u[2][4];
        const int tr[4] = {t0, t0 + 1, t0 + 8, t0 + 9};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 xv = unpack2<BFX>(*reinterpret_cast<const u32*>(cX + tr[i] * SD + colA));
          const float r = cab * cR[tr[i]];
          u[0][i] = r * xv.x;
          u[1][i] = r * xv.y;
        }
        u32 af[2][4];
#pragma unroll
        for (int z = 0; z < 2; ++z) {
          af[z][0] = scale2<BFX>(xf[0], u[z][0], u[z][1]);
          af[z][1] = scale2<BFX>(xf[1], u[z][0], u[z][1]);
          af[z][2] = scale2<BFX>(xf[2], u[z][2], u[z][3]);
          af[z][3] = scale2<BFX>(xf[3], u[z][2], u[z][3]);
        }
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          u32 r[4];
          ldsm4t(r, at_a(cY, SE, k0, np * 16));
#pragma unroll
          for (int z = 0; z < 2; ++z) {
            mma16816<true>(H[z][2 * np], af[z], r[0], r[1]);
            mma16816<true>(H[z][2 * np + 1], af[z], r[2], r[3]);
          }
        }
        if constexpr (NT % 2 == 1) {
          u32 r[2];
          ldsm2t(r, at_a(cY, SE, k0, (NT - 1) * 8));
          mma16816<true>(H[0][NT - 1], af[0], r[0], r[1]);
          mma16816<true>(H[1][NT - 1], af[1], r[0], r[1]);
        }
      }
    }
    advance(cur);
    buf = buf + 1 == kScanPipe ? 0 : buf + 1;
    __syncthreads();
  }
  if (last && valid) {
    float* l = last + bh * D2 * E;
#pragma unroll
    for (int z = 0; z < 2; ++z)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        *reinterpret_cast<float2*>(l + f[z] * E + nt * 8 + 2 * tg) = make_float2(H[z][nt][0], H[z][nt][1]);
        *reinterpret_cast<float2*>(l + (f[z] + 8) * E + nt * 8 + 2 * tg) = make_float2(H[z][nt][2], H[z][nt][3]);
      }
  }
}

template <bool REV>
void scan_launch(const Operand& x, const at::Tensor& rs, const Operand& y, const at::Tensor& decay, const at::Tensor& Hin,
                 const at::Tensor& Hs, int64_t N, at::Tensor& out, at::Tensor& last, at::Tensor& dL) {
  TORCH_CHECK(N > 0, "power_full: degree-2 scan: N = ", N);
  const Blocks ox = check_x(x, rs, N);  // blocks: the N chunks of each head
  const int64_t BH = ox.X / N, d = x.data.size(-1), D2 = sympow2_dim(d), E = d + 8;
  const Blocks oy = check_y(y, ox, E, N);
  const bool ones = y.data.size(-1) == d;  // [y | 1 | 0] made in the kernel (the forward's values)
  TORCH_CHECK(!ones || !REV, "power_full: degree-2 scan: the reverse scan takes extended rows");
  check_bf16(out, BH, N * D2, E, "out");
  auto f32 = [](const at::Tensor& t, int64_t n, const char* what) {
    TORCH_CHECK(!t.defined() || (t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n),
                "power_full: degree-2 scan: bad ", what);
    return t.defined() ? t.data_ptr<float>() : nullptr;
  };
  const float* dec = f32(decay, BH * N, "decay");
  const float* hin = f32(Hin, BH * D2 * E, "initial state");
  float* lst = f32(last, BH * D2 * E, "last state");
  float* dl = f32(dL, BH * N, "dL");
  if (REV) check_bf16(Hs, BH, N * D2, E, "Hs");
  if (BH == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  if (sm90a_scans(kernel_set(out.device().index())) && sm90::scan_supported(d)) {  // wgmma (scan_sm90.cuh)
    sm90::scan_launch(x.data.scalar_type() == at::kBFloat16, d, REV, ones, bits(x.data), ox.map, fptr(rs),
                      bits(y.data), oy.map, dec, hin, REV ? bits(Hs) : nullptr, static_cast<u16*>(out.data_ptr()), lst,
                      dl, BH, N, ox.n, 0, c10::cuda::getCurrentCUDAStream());
    return;
  }
  switch_half_dim(x.data.scalar_type() == at::kBFloat16, d, "degree-2 kernel", [&](auto bf, auto dd) {
    constexpr bool BF = decltype(bf)::value;
    constexpr int D = decltype(dd)::value, Ee = D + 8, PAIRS = 256 * (D / 16) * (D / 16 + 1) / 2 / 32;
    auto kernel = sympow2_scan_kernel<BF, D, Ee, REV, false>;
    if constexpr (!REV) {
      if (ones) kernel = sympow2_scan_kernel<BF, D, Ee, REV, true>;
    }
    constexpr size_t smem = states_smem<D, Ee>();
    allow_smem(kernel, smem);
    const int64_t parts = (PAIRS + kScanThreads / 32 - 1) / (kScanThreads / 32);
    kernel<<<grid_of(BH * parts), kScanThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        bits(x.data), ox.map, fptr(rs), bits(y.data), oy.map, dec, hin, REV ? bits(Hs) : nullptr,
        static_cast<u16*>(out.data_ptr()), lst, dl, N, ox.n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace sympow2

using namespace sympow2;  // NOLINT: this file's kernels and helpers

void sympow2_scan_forward(const Operand& x, const at::Tensor& rs, const Operand& y, const at::Tensor& decay,
                          const at::Tensor& H0, int64_t N, at::Tensor& Hs, at::Tensor& final_state) {
  at::Tensor none;
  scan_launch<false>(x, rs, y, decay, H0, at::Tensor(), N, Hs, final_state, none);
}

void sympow2_scan_backward(const Operand& x, const at::Tensor& rs, const Operand& y, const at::Tensor& decay,
                           const at::Tensor& Hs, const at::Tensor& dfinal, int64_t N, at::Tensor& An, at::Tensor& dL,
                           at::Tensor& dH0) {
  scan_launch<true>(x, rs, y, decay, dfinal, Hs, N, An, dH0, dL);
}
}  // namespace cuda
}  // namespace power_attention
