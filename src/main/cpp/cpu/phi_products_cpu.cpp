// phi_products_cpu.cpp: the degree-2 fp32 state products with phi built in L1 (phi_products_cpu.h).
//
// A tile holds phi transposed, tile[f][i] for 48 features f and up to 128 rows i (rows along the lanes), built from
// the rows' x transposed: tile[f][i] = (coef_f * (scale_i * x_i[a])) * x_i[b], f = (a, b), sympow_forward's
// operations in its order. The micro-kernels broadcast tile entries and run the other operand's rows as vectors:
//   phi_outer: acc[6 features][64 columns] += tile[f][i] * R[i, :], over the rows i;
//   phi_apply: acc[6 rows][64 columns] += tile[f][i] * A[f, :], over the features f;
// (8, 12, 16 instead of 6 for 48, 32, 16 columns). Called inside the per-head parallel region: no threading here.
#include "cpu/phi_products_cpu.h"
#include "cpu/attention_tile_cpu.h"
#include "cpu/cpu_simd.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#ifdef POWER_ATTENTION_X86_DISPATCH
#include <immintrin.h>
#endif

namespace power_attention {
namespace cpu {

bool phi_products_available() {
  static const bool on = [] {
    const char* env = std::getenv("POWER_ATTENTION_CPU_FUSED");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    return simd_level() >= 1;
  }();
  return on;
}

#ifdef POWER_ATTENTION_X86_DISPATCH
namespace {

#define PA_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))

constexpr int64_t kFeat = 48;   // features in a tile
constexpr int64_t kRows = 128;  // rows in a tile
constexpr int64_t kCols = 64;   // columns of a micro-kernel (4 vectors)

// 64-byte aligned scratch of one thread, grown on demand.
struct Scratch {
  float* p = nullptr;
  size_t n = 0;
  float* get(size_t want) {
    if (want > n) {
      std::free(p);
      n = (want + 15) / 16 * 16;
      p = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
    }
    return p;
  }
  ~Scratch() { std::free(p); }
};

// Per thread: xt, ut [d][ld], the tile [kFeat][ld] (+ slack for the last row group's reads), the output rows, and
// phi_outer's rows of R packed at an aligned stride.
struct Work {
  Scratch xt, ut, tile, out, rows;
};
Work& work() {
  thread_local Work w;
  return w;
}

// x of rows [i0, i0 + nb) transposed, and scaled by the row scale: xt[a][i], ut[a][i] = scale_i * x_i[a]; rows
// nb..ld zero (their phi is 0).
void transpose_rows(const PhiRows& x, int64_t i0, int64_t nb, int64_t ld, float* xt, float* ut) {
  const int64_t d = x.d;
  transpose_f32(x.x + i0 * x.ldx, x.ldx, nb, d, xt, ld);
  for (int64_t a = 0; a < d; ++a) {
    float* xa = xt + a * ld;
    float* ua = ut + a * ld;
    std::fill(xa + nb, xa + ld, 0.0f);
    if (x.scale == nullptr) {
      std::copy(xa, xa + ld, ua);
    } else {
      const float* s = x.scale + i0;
      for (int64_t i = 0; i < nb; ++i) ua[i] = s[i] * xa[i];
      std::fill(ua + nb, ua + ld, 0.0f);
    }
  }
}

// The feature f = (a, b) of the layout (a <= b, b fastest) and its successor.
struct Feature {
  int64_t a = 0, b = 0;
  void next(int64_t d) {
    if (++b == d) b = ++a;
  }
};

// tile[r][0..ld) = phi of features [f0, f0 + nf) for the rows of xt / ut; rows nf..kFeat zero.
PA_AVX512 void build_tile(const float* xt, const float* ut, int64_t ld, int64_t d, const float* coef, int64_t f0,
                          int64_t nf, Feature ft, float* tile) {
  for (int64_t r = 0; r < nf; ++r, ft.next(d)) {
    const __m512 c = _mm512_set1_ps(coef[f0 + r]);
    const float* u = ut + ft.a * ld;
    const float* xb = xt + ft.b * ld;
    float* row = tile + r * ld;
    for (int64_t i = 0; i < ld; i += 16)
      _mm512_store_ps(row + i, _mm512_mul_ps(_mm512_mul_ps(c, _mm512_load_ps(u + i)), _mm512_load_ps(xb + i)));
  }
  if (nf < kFeat) std::memset(tile + nf * ld, 0, sizeof(float) * (kFeat - nf) * ld);
}

// The micro-kernel: out[r][cols] (+)= sum_{k < nk} b[r * rs + k * ks] V[k * ldv, cols] for RB rows r and 16 NV
// columns (the last vector masked), accumulators in registers (named one by one: GCC keeps an array of 24 vectors
// in memory). phi_outer: b the tile (rows r features, k the rows of R); phi_apply: b the tile transposed (rows r
// rows of phi, k features of A).
#define PA_DECL(r) __m512 a##r##0, a##r##1, a##r##2, a##r##3;
#define PA_INIT(r)                                                                                  \
  if constexpr (RB > r) {                                                                           \
    a##r##0 = load ? _mm512_load_ps(out + r * kCols) : _mm512_setzero_ps();                         \
    if constexpr (NV > 1) a##r##1 = load ? _mm512_load_ps(out + r * kCols + 16) : _mm512_setzero_ps(); \
    if constexpr (NV > 2) a##r##2 = load ? _mm512_load_ps(out + r * kCols + 32) : _mm512_setzero_ps(); \
    if constexpr (NV > 3) a##r##3 = load ? _mm512_load_ps(out + r * kCols + 48) : _mm512_setzero_ps(); \
  }
#define PA_FMA(r)                                                  \
  if constexpr (RB > r) {                                          \
    const __m512 p = _mm512_set1_ps(bk[r * rs]);                   \
    a##r##0 = _mm512_fmadd_ps(p, v0, a##r##0);                     \
    if constexpr (NV > 1) a##r##1 = _mm512_fmadd_ps(p, v1, a##r##1); \
    if constexpr (NV > 2) a##r##2 = _mm512_fmadd_ps(p, v2, a##r##2); \
    if constexpr (NV > 3) a##r##3 = _mm512_fmadd_ps(p, v3, a##r##3); \
  }
#define PA_STORE(r)                                                          \
  if constexpr (RB > r) {                                                    \
    _mm512_store_ps(out + r * kCols, a##r##0);                               \
    if constexpr (NV > 1) _mm512_store_ps(out + r * kCols + 16, a##r##1);    \
    if constexpr (NV > 2) _mm512_store_ps(out + r * kCols + 32, a##r##2);    \
    if constexpr (NV > 3) _mm512_store_ps(out + r * kCols + 48, a##r##3);    \
  }

template <int NV, int RB>
PA_AVX512 void micro_kernel(const float* b, int64_t rs, int64_t ks, const float* V, int64_t ldv, int64_t nk,
                            __mmask16 last, bool load, float* out) {
  static_assert(NV >= 1 && NV <= 4 && RB >= 1 && RB <= 8, "register block");
  PA_DECL(0) PA_DECL(1) PA_DECL(2) PA_DECL(3) PA_DECL(4) PA_DECL(5) PA_DECL(6) PA_DECL(7)
  PA_INIT(0) PA_INIT(1) PA_INIT(2) PA_INIT(3) PA_INIT(4) PA_INIT(5) PA_INIT(6) PA_INIT(7)
  for (int64_t k = 0; k < nk; ++k) {
    const float* vk = V + k * ldv;
    const float* bk = b + k * ks;
    const __m512 v0 = NV == 1 ? _mm512_maskz_loadu_ps(last, vk) : _mm512_loadu_ps(vk);
    __m512 v1, v2, v3;
    if constexpr (NV > 1) v1 = NV == 2 ? _mm512_maskz_loadu_ps(last, vk + 16) : _mm512_loadu_ps(vk + 16);
    if constexpr (NV > 2) v2 = NV == 3 ? _mm512_maskz_loadu_ps(last, vk + 32) : _mm512_loadu_ps(vk + 32);
    if constexpr (NV > 3) v3 = _mm512_maskz_loadu_ps(last, vk + 48);
    PA_FMA(0) PA_FMA(1) PA_FMA(2) PA_FMA(3) PA_FMA(4) PA_FMA(5) PA_FMA(6) PA_FMA(7)
  }
  PA_STORE(0) PA_STORE(1) PA_STORE(2) PA_STORE(3) PA_STORE(4) PA_STORE(5) PA_STORE(6) PA_STORE(7)
}

#undef PA_DECL
#undef PA_INIT
#undef PA_FMA
#undef PA_STORE

// Register blocks: 24 accumulators for 64 columns, else 8 rows (8-24), and 1-4 operand registers, of the 32.
constexpr int block_rows(int nv) { return nv == 4 ? 6 : 8; }

// Rows [0, rb) of out from b (see micro_kernel), for nv vectors of columns.
PA_AVX512 void micro(int nv, const float* b, int64_t rs, int64_t ks, const float* V, int64_t ldv, int64_t nk,
                     __mmask16 last, bool load, float* out) {
  switch (nv) {
    case 4: micro_kernel<4, 6>(b, rs, ks, V, ldv, nk, last, load, out); break;
    case 3: micro_kernel<3, 8>(b, rs, ks, V, ldv, nk, last, load, out); break;
    case 2: micro_kernel<2, 8>(b, rs, ks, V, ldv, nk, last, load, out); break;
    default: micro_kernel<1, 8>(b, rs, ks, V, ldv, nk, last, load, out); break;
  }
}

// sum_i tile[r][i] w_i over the ld (zero-padded) rows, in 16 lanes, then the lanes by a fixed tree of four halvings
// (not a chain of 16 dependent scalar adds).
PA_AVX512 float tile_dot(const float* row, const float* w, int64_t ld) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < ld; i += 16) acc = _mm512_fmadd_ps(_mm512_load_ps(row + i), _mm512_load_ps(w + i), acc);
  const __m256 h8 = _mm256_add_ps(_mm512_extractf32x8_ps(acc, 0), _mm512_extractf32x8_ps(acc, 1));
  const __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
  const __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
}

PA_AVX512 void outer_avx512(const PhiRows& x, const float* R, int64_t ldr, const float* r, int64_t ldr_norm,
                            int64_t e, bool norm, float beta, float* A, int64_t lda, const float* A0) {
  if (A0 == nullptr) A0 = A;
  const int64_t d = x.d, D = d * (d + 1) / 2;
  Work& w = work();
  const int64_t ldmax = (std::min(x.n, kRows) + 15) / 16 * 16;
  float* xt = w.xt.get(d * ldmax);
  float* ut = w.ut.get(d * ldmax);
  float* tile = w.tile.get(kFeat * ldmax + 64);
  float* acc = w.out.get(kFeat * kCols + ldmax);
  float* rw = acc + kFeat * kCols;  // the normaliser's weights, zero-padded
  if (x.n == 0) {
    for (int64_t f = 0; f < D; ++f)
      for (int64_t j = 0; j < e + (norm ? 1 : 0); ++j) A[f * lda + j] = beta == 0.0f ? 0.0f : beta * A0[f * lda + j];
    return;
  }
  for (int64_t i0 = 0; i0 < x.n; i0 += kRows) {
    const int64_t nb = std::min(kRows, x.n - i0), ld = (nb + 15) / 16 * 16;
    const bool first = i0 == 0;
    transpose_rows(x, i0, nb, ld, xt, ut);
    if (norm) {
      for (int64_t i = 0; i < ld; ++i) rw[i] = i < nb ? (r != nullptr ? r[(i0 + i) * ldr_norm] : 1.0f) : 0.0f;
    }
    // the tile's rows of R, packed at a whole number of vectors (R's rows e + 1 apart put most vector loads across
    // two cache lines: about 8% of the kernel's time); read by every feature block
    const int64_t ldp = (e + 15) / 16 * 16;
    float* Rb = w.rows.get(kRows * ldp + 16);
    for (int64_t i = 0; i < nb; ++i) std::memcpy(Rb + i * ldp, R + (i0 + i) * ldr, sizeof(float) * e);
    Feature ft;
    for (int64_t f0 = 0; f0 < D; f0 += kFeat) {
      const int64_t nf = std::min(kFeat, D - f0);
      build_tile(xt, ut, ld, d, x.coef, f0, nf, ft, tile);
      for (int64_t j0 = 0; j0 < e; j0 += kCols) {
        const int64_t nc = std::min(kCols, e - j0);
        const int nv = static_cast<int>((nc + 15) / 16);
        const __mmask16 last = static_cast<__mmask16>((1u << (nc - 16 * (nv - 1))) - 1u);
        const int rb = block_rows(nv);
        for (int64_t r0 = 0; r0 < nf; r0 += rb) {
          const float* tr = tile + r0 * ld;
          float* ar = acc + r0 * kCols;
          micro(nv, tr, ld, 1, Rb + j0, ldp, nb, last, false, ar);
        }
        for (int64_t rr = 0; rr < nf; ++rr) {
          float* dst = A + (f0 + rr) * lda + j0;
          const float* prev = (first ? A0 : A) + (f0 + rr) * lda + j0;  // what this block adds to
          const float* src = acc + rr * kCols;
          for (int v = 0; v < nv; ++v) {
            const __mmask16 m = v == nv - 1 ? last : static_cast<__mmask16>(0xffff);
            const __m512 s = _mm512_load_ps(src + 16 * v);
            __m512 out;
            if (first && beta == 0.0f) {
              out = s;
            } else {
              const __m512 old = _mm512_maskz_loadu_ps(m, prev + 16 * v);
              out = first ? _mm512_fmadd_ps(_mm512_set1_ps(beta), old, s) : _mm512_add_ps(old, s);
            }
            _mm512_mask_storeu_ps(dst + 16 * v, m, out);
          }
        }
      }
      if (norm) {
        for (int64_t rr = 0; rr < nf; ++rr) {
          const float s = tile_dot(tile + rr * ld, rw, ld);
          float& h = A[(f0 + rr) * lda + e];
          h = first ? (beta == 0.0f ? s : beta * A0[(f0 + rr) * lda + e] + s) : h + s;
        }
      }
      for (int64_t rr = 0; rr < nf; ++rr) ft.next(d);
    }
  }
}

PA_AVX512 void apply_avx512(const PhiRows& x, const float* A, int64_t lda, int64_t e, bool norm, float* Out,
                            int64_t ldo) {
  const int64_t d = x.d, D = d * (d + 1) / 2;
  Work& w = work();
  const int64_t ldmax = (std::min(x.n, kRows) + 15) / 16 * 16;
  const int64_t ncb = (e + kCols - 1) / kCols;  // column blocks
  const int64_t rows_pad = ldmax + 16;           // rows of a block rounded up to any register block
  float* xt = w.xt.get(d * ldmax);
  float* ut = w.ut.get(d * ldmax);
  float* tile = w.tile.get(kFeat * ldmax + 64);
  float* acc = w.out.get(std::max<int64_t>(ncb, 1) * rows_pad * kCols + ldmax);
  float* nacc = acc + std::max<int64_t>(ncb, 1) * rows_pad * kCols;
  for (int64_t i0 = 0; i0 < x.n; i0 += kRows) {
    const int64_t nb = std::min(kRows, x.n - i0), ld = (nb + 15) / 16 * 16;
    transpose_rows(x, i0, nb, ld, xt, ut);
    std::memset(acc, 0, sizeof(float) * ncb * rows_pad * kCols);
    std::memset(nacc, 0, sizeof(float) * ld);
    Feature ft;
    for (int64_t f0 = 0; f0 < D; f0 += kFeat) {
      const int64_t nf = std::min(kFeat, D - f0);
      build_tile(xt, ut, ld, d, x.coef, f0, nf, ft, tile);
      const float* Af = A + f0 * lda;
      for (int64_t cb = 0; cb < ncb; ++cb) {
        const int64_t j0 = cb * kCols, nc = std::min(kCols, e - j0);
        const int nv = static_cast<int>((nc + 15) / 16);
        const __mmask16 last = static_cast<__mmask16>((1u << (nc - 16 * (nv - 1))) - 1u);
        const int rb = block_rows(nv);
        float* ab = acc + cb * rows_pad * kCols;
        for (int64_t r0 = 0; r0 < nb; r0 += rb) {
          float* ar = ab + r0 * kCols;
          micro(nv, tile + r0, 1, ld, Af + j0, lda, nf, last, true, ar);
        }
      }
      if (norm) {
        for (int64_t rr = 0; rr < nf; ++rr) {
          const __m512 h = _mm512_set1_ps(Af[rr * lda + e]);
          const float* row = tile + rr * ld;
          for (int64_t i = 0; i < ld; i += 16)
            _mm512_store_ps(nacc + i, _mm512_fmadd_ps(h, _mm512_load_ps(row + i), _mm512_load_ps(nacc + i)));
        }
      }
      for (int64_t rr = 0; rr < nf; ++rr) ft.next(d);
    }
    for (int64_t i = 0; i < nb; ++i) {
      float* dst = Out + (i0 + i) * ldo;
      for (int64_t cb = 0; cb < ncb; ++cb) {
        const int64_t j0 = cb * kCols, nc = std::min(kCols, e - j0);
        std::memcpy(dst + j0, acc + cb * rows_pad * kCols + i * kCols, sizeof(float) * nc);
      }
      if (norm) dst[e] = nacc[i];
    }
  }
}

// phi_grad's micro-kernel: g[r][0..32) = sum_{j < nc} M[f0 + r, j] Rt[j][i0 .. i0 + 32) for FB features r, two
// vectors of rows each (24 accumulators for FB = 12).
#define PA_GDECL(r) __m512 g##r##0 = _mm512_setzero_ps(), g##r##1 = _mm512_setzero_ps();
#define PA_GFMA(r)                                       \
  if constexpr (FB > r) {                                \
    const __m512 p = _mm512_set1_ps(mj[r * ldm]);        \
    g##r##0 = _mm512_fmadd_ps(p, r0, g##r##0);           \
    g##r##1 = _mm512_fmadd_ps(p, r1, g##r##1);           \
  }
#define PA_GSTORE(r)                              \
  if constexpr (FB > r) {                         \
    _mm512_store_ps(g + r * 32, g##r##0);         \
    _mm512_store_ps(g + r * 32 + 16, g##r##1);    \
  }

template <int FB>
PA_AVX512 void grad_kernel(const float* M, int64_t ldm, int64_t nc, const float* Rt, int64_t ld, float* g) {
  static_assert(FB >= 1 && FB <= 12, "register block");
  PA_GDECL(0) PA_GDECL(1) PA_GDECL(2) PA_GDECL(3) PA_GDECL(4) PA_GDECL(5)
  PA_GDECL(6) PA_GDECL(7) PA_GDECL(8) PA_GDECL(9) PA_GDECL(10) PA_GDECL(11)
  for (int64_t j = 0; j < nc; ++j) {
    const float* mj = M + j;
    const __m512 r0 = _mm512_load_ps(Rt + j * ld), r1 = _mm512_load_ps(Rt + j * ld + 16);
    PA_GFMA(0) PA_GFMA(1) PA_GFMA(2) PA_GFMA(3) PA_GFMA(4) PA_GFMA(5)
    PA_GFMA(6) PA_GFMA(7) PA_GFMA(8) PA_GFMA(9) PA_GFMA(10) PA_GFMA(11)
  }
  PA_GSTORE(0) PA_GSTORE(1) PA_GSTORE(2) PA_GSTORE(3) PA_GSTORE(4) PA_GSTORE(5)
  PA_GSTORE(6) PA_GSTORE(7) PA_GSTORE(8) PA_GSTORE(9) PA_GSTORE(10) PA_GSTORE(11)
}

#undef PA_GDECL
#undef PA_GFMA
#undef PA_GSTORE

constexpr int64_t kGradFeat = 12;  // features of phi_grad's register block
constexpr int64_t kGradRows = 256;  // rows transposed at a time

PA_AVX512 void grad_avx512(const PhiRows& x, const float* M, int64_t ldm, const float* R, int64_t ldr, const float* r,
                           int64_t ldr_norm, int64_t e, float* dx, float* ds) {
  const int64_t d = x.d, D = d * (d + 1) / 2, nc = e + 1;
  Work& w = work();
  const int64_t ldmax = (std::min(x.n, kGradRows) + 31) / 32 * 32 + 16;
  float* xt = w.xt.get(d * ldmax);
  float* dxt = w.ut.get(d * ldmax);
  float* rt = w.tile.get(nc * ldmax);
  float* gb = w.out.get(kGradFeat * 32);
  for (int64_t i0 = 0; i0 < x.n; i0 += kGradRows) {
    // nc32 rows in 32-row panels; the transposed rows ld floats apart, an odd multiple of 16 (at 256 rows, 1 KiB
    // apart, a panel's 65 rows of [R | r] fell in 4 of L1's 64 sets)
    const int64_t nb = std::min(kGradRows, x.n - i0), nc32 = (nb + 31) / 32 * 32, ld = nc32 + 16;
    // x and [R | r] of the rows transposed (rows nb..ld zero), dx accumulated transposed
    std::memset(xt, 0, sizeof(float) * d * ld);
    std::memset(dxt, 0, sizeof(float) * d * ld);
    std::memset(rt, 0, sizeof(float) * nc * ld);
    transpose_f32(x.x + i0 * x.ldx, x.ldx, nb, d, xt, ld);
    transpose_f32(R + i0 * ldr, ldr, nb, e, rt, ld);
    for (int64_t i = 0; i < nb; ++i) rt[e * ld + i] = r != nullptr ? r[(i0 + i) * ldr_norm] : 1.0f;
    Feature ft;
    for (int64_t f0 = 0; f0 < D; f0 += kGradFeat) {
      const int64_t nf = std::min(kGradFeat, D - f0);
      const float* Mf = M + f0 * ldm;
      for (int64_t c0 = 0; c0 < nc32; c0 += 32) {
        if (nf == kGradFeat) {
          grad_kernel<kGradFeat>(Mf, ldm, nc, rt + c0, ld, gb);
        } else {
          for (int64_t rr = 0; rr < nf; ++rr) grad_kernel<1>(Mf + rr * ldm, ldm, nc, rt + c0, ld, gb + rr * 32);
        }
        // dx_a += coef g x_b, dx_b += coef g x_a for each feature f = (a, b) of the block
        Feature fr = ft;
        for (int64_t rr = 0; rr < nf; ++rr, fr.next(d)) {
          const __m512 c = _mm512_set1_ps(x.coef[f0 + rr]);
          float* da = dxt + fr.a * ld + c0;
          float* db = dxt + fr.b * ld + c0;
          const float* xa = xt + fr.a * ld + c0;
          const float* xb = xt + fr.b * ld + c0;
          for (int v = 0; v < 2; ++v) {
            const __m512 gv = _mm512_mul_ps(c, _mm512_load_ps(gb + rr * 32 + 16 * v));
            _mm512_store_ps(da + 16 * v, _mm512_fmadd_ps(gv, _mm512_load_ps(xb + 16 * v), _mm512_load_ps(da + 16 * v)));
            _mm512_store_ps(db + 16 * v, _mm512_fmadd_ps(gv, _mm512_load_ps(xa + 16 * v), _mm512_load_ps(db + 16 * v)));
          }
        }
      }
      for (int64_t rr = 0; rr < nf; ++rr) ft.next(d);
    }
    // ds = g . phi(x) = x . (J^T g) / 2 (phi is homogeneous of degree 2); dx = scale J^T g
    for (int64_t i = 0; i < nb; ++i) {
      const float s = x.scale != nullptr ? x.scale[i0 + i] : 1.0f;
      float dot = 0;
      for (int64_t a = 0; a < d; ++a) {
        const float ja = dxt[a * ld + i];
        dot += xt[a * ld + i] * ja;
        if (dx != nullptr) dx[(i0 + i) * d + a] = s * ja;
      }
      if (ds != nullptr) ds[i0 + i] = 0.5f * dot;
    }
  }
}


// ---------------------------------------------------------------------------------------------------------------
// The same three products on AVX2 machines: phi's tiles built as above, the products in the quadratic form's AVX2
// micro-kernels (gemm_f32_avx2, 6 x 16 accumulators: 16 ymm registers hold no 6 x 64 block).
// ---------------------------------------------------------------------------------------------------------------
#define PA_AVX2 __attribute__((target("avx2,fma")))

// build_tile's values (the same operations in the same order) in plain loops.
PA_AVX2 void build_tile_avx2(const float* xt, const float* ut, int64_t ld, int64_t d, const float* coef, int64_t f0,
                             int64_t nf, Feature ft, float* tile) {
  for (int64_t r = 0; r < nf; ++r, ft.next(d)) {
    const float c = coef[f0 + r];
    const float* u = ut + ft.a * ld;
    const float* xb = xt + ft.b * ld;
    float* row = tile + r * ld;
    for (int64_t i = 0; i < ld; ++i) row[i] = (c * u[i]) * xb[i];
  }
  if (nf < kFeat) std::memset(tile + nf * ld, 0, sizeof(float) * (kFeat - nf) * ld);
}

// sum_i row[i] w[i] over the ld (zero-padded) rows, in 16 lanes, then the lanes in a fixed order.
PA_AVX2 float tile_dot_avx2(const float* row, const float* w, int64_t ld) {
  float lanes[16] = {};
  for (int64_t i = 0; i < ld; i += 16)
    for (int u = 0; u < 16; ++u) lanes[u] += row[i + u] * w[i + u];
  float sum = 0;
  for (int u = 0; u < 16; ++u) sum += lanes[u];
  return sum;
}

// transpose_rows's values: xt [d][ld] by transpose_f32, ut = the row scale times xt, rows nb..ld zero.
PA_AVX2 void transpose_rows_avx2(const PhiRows& x, int64_t i0, int64_t nb, int64_t ld, float* xt, float* ut) {
  const int64_t d = x.d;
  transpose_f32(x.x + i0 * x.ldx, x.ldx, nb, d, xt, ld);
  for (int64_t a = 0; a < d; ++a) {
    float* xa = xt + a * ld;
    float* ua = ut + a * ld;
    std::fill(xa + nb, xa + ld, 0.0f);
    if (x.scale == nullptr) {
      std::copy(xa, xa + ld, ua);
    } else {
      const float* s = x.scale + i0;
      for (int64_t i = 0; i < nb; ++i) ua[i] = s[i] * xa[i];
      std::fill(ua + nb, ua + ld, 0.0f);
    }
  }
}

PA_AVX2 void outer_avx2(const PhiRows& x, const float* R, int64_t ldr, const float* r, int64_t ldr_norm, int64_t e,
                        bool norm, float beta, float* A, int64_t lda, const float* A0) {
  if (A0 == nullptr) A0 = A;
  const int64_t d = x.d, D = d * (d + 1) / 2;
  Work& w = work();
  const int64_t ldmax = (std::min(x.n, kRows) + 15) / 16 * 16;
  float* xt = w.xt.get(d * ldmax);
  float* ut = w.ut.get(d * ldmax);
  float* tile = w.tile.get(kFeat * ldmax + 64);
  float* acc = w.out.get(kFeat * std::max<int64_t>(e, 1) + ldmax);
  float* rw = acc + kFeat * std::max<int64_t>(e, 1);  // the normaliser's weights, zero-padded
  if (x.n == 0) {
    for (int64_t f = 0; f < D; ++f)
      for (int64_t j = 0; j < e + (norm ? 1 : 0); ++j) A[f * lda + j] = beta == 0.0f ? 0.0f : beta * A0[f * lda + j];
    return;
  }
  for (int64_t i0 = 0; i0 < x.n; i0 += kRows) {
    const int64_t nb = std::min(kRows, x.n - i0), ld = (nb + 15) / 16 * 16;
    const bool first = i0 == 0;
    transpose_rows_avx2(x, i0, nb, ld, xt, ut);
    if (norm) {
      for (int64_t i = 0; i < ld; ++i) rw[i] = i < nb ? (r != nullptr ? r[(i0 + i) * ldr_norm] : 1.0f) : 0.0f;
    }
    const float* Rb = R + i0 * ldr;
    Feature ft;
    for (int64_t f0 = 0; f0 < D; f0 += kFeat) {
      const int64_t nf = std::min(kFeat, D - f0);
      build_tile_avx2(xt, ut, ld, d, x.coef, f0, nf, ft, tile);
      if (e > 0) gemm_f32_avx2(nf, e, nb, tile, ld, 1, Rb, ldr, acc, e, false, nullptr);
      for (int64_t rr = 0; rr < nf; ++rr) {
        float* dst = A + (f0 + rr) * lda;
        const float* prev = (first ? A0 : A) + (f0 + rr) * lda;  // what this block adds to
        const float* src = acc + rr * e;
        if (first && beta == 0.0f) {
          for (int64_t j = 0; j < e; ++j) dst[j] = src[j];
        } else if (first) {
          for (int64_t j = 0; j < e; ++j) dst[j] = std::fma(beta, prev[j], src[j]);
        } else {
          for (int64_t j = 0; j < e; ++j) dst[j] = prev[j] + src[j];
        }
      }
      if (norm) {
        for (int64_t rr = 0; rr < nf; ++rr) {
          const float s = tile_dot_avx2(tile + rr * ld, rw, ld);
          float& h = A[(f0 + rr) * lda + e];
          h = first ? (beta == 0.0f ? s : beta * A0[(f0 + rr) * lda + e] + s) : h + s;
        }
      }
      for (int64_t rr = 0; rr < nf; ++rr) ft.next(d);
    }
  }
}

PA_AVX2 void apply_avx2(const PhiRows& x, const float* A, int64_t lda, int64_t e, bool norm, float* Out,
                        int64_t ldo) {
  const int64_t d = x.d, D = d * (d + 1) / 2;
  Work& w = work();
  const int64_t ldmax = (std::min(x.n, kRows) + 15) / 16 * 16;
  float* xt = w.xt.get(d * ldmax);
  float* ut = w.ut.get(d * ldmax);
  float* tile = w.tile.get(kFeat * ldmax + 64);
  float* nacc = w.out.get(ldmax);
  for (int64_t i0 = 0; i0 < x.n; i0 += kRows) {
    const int64_t nb = std::min(kRows, x.n - i0), ld = (nb + 15) / 16 * 16;
    transpose_rows_avx2(x, i0, nb, ld, xt, ut);
    std::memset(nacc, 0, sizeof(float) * ld);
    float* out = Out + i0 * ldo;
    if (D == 0)
      for (int64_t i = 0; i < nb; ++i) std::fill(out + i * ldo, out + i * ldo + e, 0.0f);
    Feature ft;
    for (int64_t f0 = 0; f0 < D; f0 += kFeat) {
      const int64_t nf = std::min(kFeat, D - f0);
      build_tile_avx2(xt, ut, ld, d, x.coef, f0, nf, ft, tile);
      const float* Af = A + f0 * lda;
      // Out rows [i0, i0 + nb) (+)= tile^T A[f0 .. f0 + nf): the features in index order across the blocks
      if (e > 0) gemm_f32_avx2(nb, e, nf, tile, 1, ld, Af, lda, out, ldo, f0 > 0, nullptr);
      if (norm) {
        for (int64_t rr = 0; rr < nf; ++rr) {
          const float h = Af[rr * lda + e];
          const float* row = tile + rr * ld;
          for (int64_t i = 0; i < ld; ++i) nacc[i] = std::fma(h, row[i], nacc[i]);
        }
      }
      for (int64_t rr = 0; rr < nf; ++rr) ft.next(d);
    }
    if (norm)
      for (int64_t i = 0; i < nb; ++i) out[i * ldo + e] = nacc[i];
  }
}

PA_AVX2 void grad_avx2(const PhiRows& x, const float* M, int64_t ldm, const float* R, int64_t ldr, const float* r,
                       int64_t ldr_norm, int64_t e, float* dx, float* ds) {
  const int64_t d = x.d, D = d * (d + 1) / 2, nc = e + 1;
  Work& w = work();
  const int64_t ldmax = (std::min(x.n, kGradRows) + 31) / 32 * 32 + 16;
  float* xt = w.xt.get(d * ldmax);
  float* dxt = w.ut.get(d * ldmax);
  float* rt = w.tile.get(nc * ldmax);
  float* gb = w.out.get(kGradFeat * ldmax);
  for (int64_t i0 = 0; i0 < x.n; i0 += kGradRows) {
    // ls: the row stride of the transposed rows, an odd multiple of 16 floats (their rows spread over the L1 sets)
    const int64_t nb = std::min(kGradRows, x.n - i0), ld = (nb + 31) / 32 * 32, ls = ld + 16;
    // x and [R | r] of the rows transposed (rows nb..ld zero), dx accumulated transposed
    std::memset(dxt, 0, sizeof(float) * d * ls);
    transpose_f32(x.x + i0 * x.ldx, x.ldx, nb, d, xt, ls);
    transpose_f32(R + i0 * ldr, ldr, nb, e, rt, ls);
    for (int64_t i = 0; i < nb; ++i) rt[e * ls + i] = r != nullptr ? r[(i0 + i) * ldr_norm] : 1.0f;
    for (int64_t a = 0; a < d; ++a) std::fill(xt + a * ls + nb, xt + a * ls + ld, 0.0f);
    for (int64_t j = 0; j <= e; ++j) std::fill(rt + j * ls + nb, rt + j * ls + ld, 0.0f);
    Feature ft;
    for (int64_t f0 = 0; f0 < D; f0 += kGradFeat) {
      const int64_t nf = std::min(kGradFeat, D - f0);
      // gb[rr][i] = sum_j M[f0 + rr, j] rt[j][i], j over the e + 1 columns in index order
      gemm_f32_avx2(nf, ld, nc, M + f0 * ldm, ldm, 1, rt, ls, gb, ls, false, nullptr);
      // dx_a += coef g x_b, dx_b += coef g x_a for each feature f = (a, b) of the block
      Feature fr = ft;
      for (int64_t rr = 0; rr < nf; ++rr, fr.next(d)) {
        const float c = x.coef[f0 + rr];
        float* da = dxt + fr.a * ls;
        float* db = dxt + fr.b * ls;
        const float* xa = xt + fr.a * ls;
        const float* xb = xt + fr.b * ls;
        const float* g = gb + rr * ls;
        for (int64_t i = 0; i < ld; ++i) {
          const float gv = c * g[i];
          da[i] = std::fma(gv, xb[i], da[i]);
          db[i] = std::fma(gv, xa[i], db[i]);
        }
      }
      for (int64_t rr = 0; rr < nf; ++rr) ft.next(d);
    }
    // ds = g . phi(x) = x . (J^T g) / 2 (phi is homogeneous of degree 2); dx = scale J^T g
    for (int64_t i = 0; i < nb; ++i) {
      const float s = x.scale != nullptr ? x.scale[i0 + i] : 1.0f;
      float dot = 0;
      for (int64_t a = 0; a < d; ++a) {
        const float ja = dxt[a * ls + i];
        dot += xt[a * ls + i] * ja;
        if (dx != nullptr) dx[(i0 + i) * d + a] = s * ja;
      }
      if (ds != nullptr) ds[i0 + i] = 0.5f * dot;
    }
  }
}

}  // namespace
#endif

void phi_grad(const PhiRows& x, const float* M, int64_t ldm, const float* R, int64_t ldr, const float* r,
              int64_t ldr_norm, int64_t e, float* dx, float* ds) {
#ifdef POWER_ATTENTION_X86_DISPATCH
  if (simd_level() == 2) grad_avx512(x, M, ldm, R, ldr, r, ldr_norm, e, dx, ds);
  else grad_avx2(x, M, ldm, R, ldr, r, ldr_norm, e, dx, ds);
#else
  (void)x, (void)M, (void)ldm, (void)R, (void)ldr, (void)r, (void)ldr_norm, (void)e, (void)dx, (void)ds;
#endif
}

void phi_outer(const PhiRows& x, const float* R, int64_t ldr, const float* r, int64_t ldr_norm, int64_t e, bool norm,
               float beta, float* A, int64_t lda, const float* A0) {
#ifdef POWER_ATTENTION_X86_DISPATCH
  if (simd_level() == 2) outer_avx512(x, R, ldr, r, ldr_norm, e, norm, beta, A, lda, A0);
  else outer_avx2(x, R, ldr, r, ldr_norm, e, norm, beta, A, lda, A0);
#else
  (void)x, (void)R, (void)ldr, (void)r, (void)ldr_norm, (void)e, (void)norm, (void)beta, (void)A, (void)lda, (void)A0;
#endif
}

void phi_apply(const PhiRows& x, const float* A, int64_t lda, int64_t e, bool norm, float* Out, int64_t ldo) {
#ifdef POWER_ATTENTION_X86_DISPATCH
  if (simd_level() == 2) apply_avx512(x, A, lda, e, norm, Out, ldo);
  else apply_avx2(x, A, lda, e, norm, Out, ldo);
#else
  (void)x, (void)A, (void)lda, (void)e, (void)norm, (void)Out, (void)ldo;
#endif
}

}  // namespace cpu
}  // namespace power_attention
