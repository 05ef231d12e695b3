// attention_tile_cpu.cpp: the fused weights of the in-chunk attention, forward and backward, and the fp32
// quadratic form's tile products.
//
// fp32 at an even degree computes the weights in linear form (u^p times gate factors, see below), rows out of its
// range in log space; log space uses branch-free polynomial exp/log (Cephes coefficients, about 1-2 ulp) so that the
// row loops vectorise; fp64 uses the C library. Everything here runs inside a per-head parallel region: no
// threading here.
#include "cpu/attention_tile_cpu.h"
#include "cpu/cpu_simd.h"
#include "cpu/max_abs_cpu.h"
#include "cpu/phi_products_cpu.h"
#include <c10/util/Exception.h>

// The vector helpers pass 64-byte vectors by value between inlined functions: no ABI is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <cmath>
#include <algorithm>
#include <optional>
#include <cstdlib>
#include <cstring>
#include <new>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#ifdef POWER_ATTENTION_X86_DISPATCH
#include <immintrin.h>
#endif

namespace power_attention {
namespace cpu {
namespace {

inline float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}
inline int32_t float_to_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// exp(x) for x <= 88.7; exactly 0 below -87.3 (and for -inf).
POWER_ATTENTION_INLINE float fast_exp(float x) {
  const float lo = -87.3365447f, hi = 88.7228391f;
  const float xc = x < lo ? lo : (x > hi ? hi : x);
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const float scale = bits_to_float((static_cast<int32_t>(n) + 127) << 23);
  const float out = y * scale;
  return x < lo ? 0.0f : out;
}

// log(a) for a >= FLT_MIN; -inf below (zero and subnormal |s| carry no weight).
inline float fast_log(float a) {
  const int32_t bits = float_to_bits(a);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float mant = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  const bool small = mant < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  const float x = small ? mant + mant - 1.0f : mant - 1.0f;
  const float z = x * x;
  float y = 7.0376836292e-2f;
  y = y * x - 1.1514610310e-1f;
  y = y * x + 1.1676998740e-1f;
  y = y * x - 1.2420140846e-1f;
  y = y * x + 1.4249322787e-1f;
  y = y * x - 1.6668057665e-1f;
  y = y * x + 2.0000714765e-1f;
  y = y * x - 2.4999993993e-1f;
  y = y * x + 3.3333331174e-1f;
  y = y * x * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  float out = x + y;
  out = out + e * 0.693359375f;
  return a < 1.17549435e-38f ? -std::numeric_limits<float>::infinity() : out;
}

inline float exp_(float x) { return fast_exp(x); }
inline float log_(float x) { return fast_log(x); }
inline double exp_(double x) { return std::exp(x); }
inline double log_(double x) { return x == 0 ? -std::numeric_limits<double>::infinity() : std::log(x); }


// V floats at a time (GCC vector extensions), V one register of the variant's instruction set: vf16 (zmm) in the
// AVX-512 variant, vf8 (ymm) in the AVX2 one, vf4 (xmm) in the baseline (a vector wider than the machine's registers
// lives on the stack: the AVX2 variant of 16-float vectors spent a third of the forward in spills); the same
// operations, constants and results as fast_exp / fast_log above.
typedef float vf16 __attribute__((vector_size(64)));
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));
template <class V>
struct VecTraits;
template <>
struct VecTraits<vf16> {
  static constexpr int64_t lanes = 16;
  typedef int32_t I __attribute__((vector_size(64)));
};
template <>
struct VecTraits<vf8> {
  static constexpr int64_t lanes = 8;
  typedef int32_t I __attribute__((vector_size(32)));
};
template <>
struct VecTraits<vf4> {
  static constexpr int64_t lanes = 4;
  typedef int32_t I __attribute__((vector_size(16)));
};
template <class V>
using VInt = typename VecTraits<V>::I;
template <class V>
constexpr int64_t kVL = VecTraits<V>::lanes;

template <class V>
__attribute__((always_inline)) inline V vload(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
__attribute__((always_inline)) inline void vstore(float* p, V v) { std::memcpy(p, &v, sizeof v); }
template <class V>
__attribute__((always_inline)) inline V vsplat(float x) { return V{} + x; }
template <class V>
__attribute__((always_inline)) inline V vabs(V x) { return (V)((VInt<V>)x & 0x7fffffff); }
template <class V>
__attribute__((always_inline)) inline V vmax(V a, V b) { return a > b ? a : b; }
// floor for |x| < 2^22 (round to nearest by the 1.5 * 2^23 trick, then down where that went up)
template <class V>
__attribute__((always_inline)) inline V vfloor(V x) {
  const V magic = vsplat<V>(12582912.0f);
  const V t = (x + magic) - magic;
  return t > x ? t - 1.0f : t;
}

template <class V>
__attribute__((always_inline)) inline V vexp(V x) {
  const V lo = vsplat<V>(-87.3365447f), hi = vsplat<V>(88.7228391f);
  const V xc = x < lo ? lo : (x > hi ? hi : x);
  const V n = vfloor(xc * 1.44269504088896341f + 0.5f);
  V r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  V y = vsplat<V>(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const V scale = (V)((__builtin_convertvector(n, VInt<V>) + 127) << 23);
  const V out = y * scale;
  return x < lo ? V{} : out;
}

template <class V>
__attribute__((always_inline)) inline V vlog(V a) {
  const VInt<V> bits = (VInt<V>)a;
  V e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, V);
  const V mant = (V)((bits & 0x007fffff) | 0x3f000000);
  const auto small = mant < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  const V x = small ? mant + mant - 1.0f : mant - 1.0f;
  const V z = x * x;
  V y = vsplat<V>(7.0376836292e-2f);
  y = y * x - 1.1514610310e-1f;
  y = y * x + 1.1676998740e-1f;
  y = y * x - 1.2420140846e-1f;
  y = y * x + 1.4249322787e-1f;
  y = y * x - 1.6668057665e-1f;
  y = y * x + 2.0000714765e-1f;
  y = y * x - 2.4999993993e-1f;
  y = y * x + 3.3333331174e-1f;
  y = y * x * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  V out = x + y;
  out = out + e * 0.693359375f;
  return a < 1.17549435e-38f ? vsplat<V>(-std::numeric_limits<float>::infinity()) : out;
}

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// prefix[j] = min(gk[0..j]): the smallest key cumsum a row that sees keys [0, j] can meet.
std::vector<double> prefix_min(const double* gk, int64_t C) {
  std::vector<double> out(static_cast<size_t>(C));
  double acc = std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < C; ++j) out[j] = acc = std::min(acc, gk[j]);
  return out;
}

// gref_r (see tile_gate_reference) from the prefix minimum; 0 for a row that sees no key.
template <typename T>
double row_reference(const TileShape<T>& sh, const double* pmin, int64_t r) {
  const int64_t n = sh.visible(r);
  return n > 0 ? sh.gq[r / sh.g] - pmin[n - 1] : 0.0;
}

}  // namespace

template <typename T>
void tile_gate_reference(const TileShape<T>& sh, double* gref) {
  if (sh.gq == nullptr || sh.gk == nullptr) {
    std::fill(gref, gref + sh.R, 0.0);
    return;
  }
  const std::vector<double> pmin = prefix_min(sh.gk, sh.C);
  for (int64_t r = 0; r < sh.R; ++r) gref[r] = row_reference(sh, pmin.data(), r);
}

// As POWER_ATTENTION_SIMD_VARIANTS (cpu_simd.h), with the vector type of each variant's registers passed to the loop.
#define TILE_VARIANTS(R, name, params, args)                                                          \
  POWER_ATTENTION_SIMD_VARIANTS_OF(R, name, params, args, POWER_ATTENTION_TARGS(vf16), POWER_ATTENTION_TARGS(vf8), \
                                   POWER_ATTENTION_TARGS(vf4))

// P = exp(z - mr) (signed by s for odd p) over row[0, n), z in z[]; returns sum P. Blocked into lanes so that the
// sum vectorises (fp32: in vectors V).
template <class V, bool kOdd, typename T>
__attribute__((always_inline)) inline T row_weights(T* row, const T* z, int64_t n, T mr) {
  constexpr int64_t W = POWER_ATTENTION_LANES, step = std::is_same_v<T, float> ? kVL<V> : W;
  const int64_t nb = n / step * step;
  T acc[W] = {};
  if constexpr (std::is_same_v<T, float>) {
    V va{};
    for (int64_t j0 = 0; j0 < nb; j0 += step) {
      const V e = vexp(vload<V>(z + j0) - mr);
      const V x = vload<V>(row + j0);
      const V w = kOdd ? (x < 0.0f ? -e : e) : e;
      vstore(row + j0, w);
      va += w;
    }
    vstore(acc, va);
  } else {
    for (int64_t j0 = 0; j0 < nb; j0 += W) {
      for (int64_t u = 0; u < W; ++u) {
        const int64_t j = j0 + u;
        const T e = exp_(z[j] - mr);
        const T w = kOdd ? (row[j] < 0 ? -e : e) : e;
        row[j] = w;
        acc[u] += w;
      }
    }
  }
  for (int64_t j = nb; j < n; ++j) {
    const T e = exp_(z[j] - mr);
    const T w = kOdd ? (row[j] < 0 ? -e : e) : e;
    row[j] = w;
    acc[0] += w;
  }
  T l = 0;
  for (int64_t u = 0; u < W; ++u) l += acc[u];
  return l;
}

// ---------------------------------------------------------------------------------------------------------------
// The linear form of the weights (fp32, even p): with u_j = s_j / a (a = max |s_j| over the row's visible keys) and
// the gate factor E_j = exp(gmin - G_j) <= 1 (gmin = G_i - gref_i, the smallest visible key cumsum),
//   exp(z_ij - m) = u_j^p E_j exp(p log(|scale| a) - m),
// with no log or exp per weight. E_j = kf_j rf_b for the 16-key block b holding j: kf_j = exp(bmin_b - G_j) (bmin_b
// the block's smallest G) and rf_b = exp(gmin - bmin_b), both at most 1 where the row sees the whole block, so that
// the product underflows only where E does; the row's partly visible last block takes exp(gmin - G_j) itself. A row
// takes the log-space form where a is outside [1e-30, 1e30] or its weights would leave the float range (forward:
// the largest u^p E below 1e-10; backward: the factor exp(p log(|scale| a) - m) above 1e20).
// ---------------------------------------------------------------------------------------------------------------

constexpr int64_t kLanes = 16;

// The gate factors of a tile's keys: kf [C rounded up to 16], bmin [blocks].
struct KeyFactors {
  std::vector<float> kf;
  std::vector<double> bmin;
  void build(const double* gk, int64_t C) {
    const int64_t nblk = (C + kLanes - 1) / kLanes;
    kf.assign(static_cast<size_t>(nblk * kLanes), 0.0f);
    bmin.assign(static_cast<size_t>(nblk), 0.0);
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t j0 = b * kLanes, j1 = std::min(C, j0 + kLanes);
      double mn = gk[j0];
      for (int64_t j = j0 + 1; j < j1; ++j) mn = std::min(mn, gk[j]);
      bmin[b] = mn;
      for (int64_t j = j0; j < j1; ++j) kf[j] = static_cast<float>(std::exp(mn - gk[j]));
    }
  }
};

// The gate factors a tile's rows read: a KeyFactors' or precomputed ones (TileShape::kf, kbmin).
struct KeyView {
  const float* kf = nullptr;
  const double* bmin = nullptr;
};

// A row's scratch: rf [blocks, rounded up to 16], et [16] (E of the partial block), a [C + 16] (forward's u^p E).
struct RowScratch {
  std::vector<float> rf, et, a;
  explicit RowScratch(int64_t C)
      : rf(static_cast<size_t>(((C + kLanes - 1) / kLanes + kLanes - 1) / kLanes * kLanes + kLanes)),
        et(kLanes),
        a(static_cast<size_t>(C + kLanes)) {}
};

// The largest lane of v.
template <class V>
__attribute__((always_inline)) inline float hmax(V v) {
  float lanes[kVL<V>];
  vstore(lanes, v);
  float mx = lanes[0];
  for (int64_t u = 1; u < kVL<V>; ++u) mx = std::max(mx, lanes[u]);
  return mx;
}
// The sum of v's lanes in lane order.
template <class V>
__attribute__((always_inline)) inline float hsum(V v) {
  float lanes[kVL<V>];
  vstore(lanes, v);
  float sum = 0.0f;
  for (int64_t u = 0; u < kVL<V>; ++u) sum += lanes[u];
  return sum;
}

// max |s_j| over [0, n).
template <class V>
__attribute__((always_inline)) inline float row_absmax(const float* s, int64_t n) {
  const int64_t nb = n / kVL<V> * kVL<V>;
  V vm{};
  for (int64_t j0 = 0; j0 < nb; j0 += kVL<V>) vm = vmax(vm, vabs(vload<V>(s + j0)));
  float mx = hmax(vm);
  for (int64_t j = nb; j < n; ++j) mx = std::max(mx, std::abs(s[j]));
  return mx;
}

// The row's gate factors: rf[b] for its n / 16 whole blocks, et[u] for the keys of its partial block.
template <class V>
__attribute__((always_inline)) inline void row_gate_factors(const double* gk, const KeyView& kfs, double gmin,
                                                           int64_t n, RowScratch& rs) {
  const int64_t nfull = n / kLanes, nv = (nfull + kLanes - 1) / kLanes;
  float* rf = rs.rf.data();
  const double* bmin = kfs.bmin;
  for (int64_t b = 0; b < nfull; ++b) rf[b] = static_cast<float>(gmin - bmin[b]);  // the difference in fp64
  for (int64_t b = nfull; b < nv * kLanes; ++b) rf[b] = 0.0f;
  for (int64_t i = 0; i < nv * kLanes; i += kVL<V>) vstore(rf + i, vexp(vload<V>(rf + i)));
  float* et = rs.et.data();
  const int64_t nb = nfull * kLanes;
  for (int64_t u = 0; u < kLanes; ++u) et[u] = nb + u < n ? static_cast<float>(gmin - gk[nb + u]) : 0.0f;
  for (int64_t u = 0; u < kLanes; u += kVL<V>) vstore(et + u, vexp(vload<V>(et + u)));
}

// u^p and u^(p - 1) for even p = 2 half (kP2: p = 2, no loop).
template <bool kP2, typename V>
__attribute__((always_inline)) inline V pow_even(V u, int64_t half) {
  const V q = u * u;
  V w = q;
  if constexpr (!kP2)
    for (int64_t k = 1; k < half; ++k) w = w * q;
  return w;
}
template <bool kP2, typename V>
__attribute__((always_inline)) inline V pow_odd(V u, int64_t half) {
  V w = u;
  if constexpr (!kP2) {
    const V q = u * u;
    for (int64_t k = 1; k < half; ++k) w = w * q;
  }
  return w;
}

// x, with the magnitudes below FLT_MIN flushed to 0: subnormal operands slow the matrix products down several times
// (a weight below 1e-38 of the row's largest is nothing to the sum).
template <class V>
__attribute__((always_inline)) inline V vflush(V x) { return vabs(x) < 1.17549435e-38f ? V{} : x; }
__attribute__((always_inline)) inline float flush(float x) { return std::abs(x) < 1.17549435e-38f ? 0.0f : x; }

// x[0, n) with the magnitudes below FLT_MIN flushed to 0.
template <class V>
__attribute__((always_inline)) inline void flush_below_min(float* x, int64_t n) {
  const int64_t nb = n / kVL<V> * kVL<V>;
  for (int64_t j = 0; j < nb; j += kVL<V>) vstore(x + j, vflush(vload<V>(x + j)));
  for (int64_t j = nb; j < n; ++j) x[j] = flush(x[j]);
}

inline bool linear_range(float a, float scale) {
  const double as = std::abs(static_cast<double>(scale)) * a;
  return a >= 1e-30f && a <= 1e30f && as >= 1e-30 && as <= 1e30;
}

// Forward of row r in the linear form (P into row, m, l); false, row untouched, where it needs the log-space form.
template <class V, bool kGated, bool kP2>
__attribute__((always_inline)) inline bool row_forward_linear(const TileShape<float>& sh, const KeyView& kfs,
                                                             const double* pmin, RowScratch& rs,
                                                             float* row, int64_t r, float& m, float& l) {
  const int64_t n = sh.visible(r), nfull = n / kLanes, nb = nfull * kLanes, half = sh.p / 2;
  if (n == 0) return false;
  const float amax = row_absmax<V>(row, n);
  if (!linear_range(amax, sh.scale)) return false;
  if constexpr (kGated) row_gate_factors<V>(sh.gk, kfs, pmin[n - 1], n, rs);
  const V ia = vsplat<V>(1.0f / amax);
  float* a = rs.a.data();
  V vm{};
  for (int64_t b = 0; b < nfull; ++b) {
    for (int64_t j0 = b * kLanes; j0 < (b + 1) * kLanes; j0 += kVL<V>) {
      V w = pow_even<kP2>(vload<V>(row + j0) * ia, half);
      if constexpr (kGated) w = w * (vload<V>(kfs.kf + j0) * rs.rf[b]);
      vstore(a + j0, w);
      vm = vmax(vm, w);
    }
  }
  float mx = std::max(0.0f, hmax(vm));
  for (int64_t j = nb; j < n; ++j) {
    float w = pow_even<kP2>(row[j] * (1.0f / amax), half);
    if constexpr (kGated) w = w * rs.et[j - nb];
    a[j] = w;
    mx = std::max(mx, w);
  }
  if (!(mx >= 1e-10f)) return false;
  const float inv = 1.0f / mx;
  V va{};
  for (int64_t j0 = 0; j0 < nb; j0 += kVL<V>) {
    const V w = vflush(vload<V>(a + j0) * inv);
    vstore(row + j0, w);
    va += w;
  }
  float sum = hsum(va);
  for (int64_t j = nb; j < n; ++j) sum += (row[j] = flush(a[j] * inv));
  for (int64_t j = n; j < sh.C; ++j) row[j] = 0;
  m = static_cast<float>(static_cast<double>(sh.p) * std::log(std::abs(static_cast<double>(sh.scale)) * amax) +
                         std::log(static_cast<double>(mx)));
  l = sum;
  return true;
}

// Backward of row r in the linear form (see tile_weights_backward); false, rows untouched, where it needs the
// log-space form.
template <class V, bool kGated, bool kP2>
__attribute__((always_inline)) inline bool row_backward_linear(const TileShape<float>& sh, const KeyView& kfs,
                                                              const double* pmin, RowScratch& rs,
                                                              float* srow, float* drow, int64_t r, float mr,
                                                              float* dgq, float* dgk) {
  const int64_t n = sh.visible(r), nfull = n / kLanes, nb = nfull * kLanes, half = sh.p / 2;
  if (n == 0) return false;
  const float amax = row_absmax<V>(srow, n);
  if (!linear_range(amax, sh.scale)) return false;
  const double F = std::exp(static_cast<double>(sh.p) * std::log(std::abs(static_cast<double>(sh.scale)) * amax) -
                            static_cast<double>(mr));
  if (!(F <= 1e20)) return false;
  if constexpr (kGated) row_gate_factors<V>(sh.gk, kfs, pmin[n - 1], n, rs);
  const float cf = static_cast<float>(F), ias = 1.0f / amax;
  const float dcoef = static_cast<float>(static_cast<double>(sh.p) / amax);
  const V ia = vsplat<V>(ias);
  V vz{}, vd{};
  for (int64_t b = 0; b < nfull; ++b) {
    for (int64_t j0 = b * kLanes; j0 < (b + 1) * kLanes; j0 += kVL<V>) {
      const V u = vload<V>(srow + j0) * ia;
      const V c = kGated ? vload<V>(kfs.kf + j0) * (rs.rf[b] * cf) : vsplat<V>(cf);
      const V up = pow_odd<kP2>(u, half) * c;  // u^(p-1) c
      const V w = vflush(up * u);
      const V dp = vload<V>(drow + j0);
      const V dz = dp * w;
      const V ds = dp * (up * dcoef);
      vstore(srow + j0, w);
      vstore(drow + j0, ds);
      vd = vmax(vd, vabs(ds));
      vz += dz;
      if (dgk != nullptr) vstore(dgk + j0, vload<V>(dgk + j0) - dz);
    }
  }
  float sum = hsum(vz), dmax = hmax(vd);
  for (int64_t j = nb; j < n; ++j) {
    const float u = srow[j] * ias;
    const float c = kGated ? rs.et[j - nb] * cf : cf;
    const float up = pow_odd<kP2>(u, half) * c;
    const float w = flush(up * u), dp = drow[j], dz = dp * w;
    srow[j] = w;
    drow[j] = dp * (up * dcoef);
    dmax = std::max(dmax, std::abs(drow[j]));
    sum += dz;
    if (dgk != nullptr) dgk[j] -= dz;
  }
  // dS below FLT_MIN flushed to 0 (subnormal operands slow the products down) only where the row's dS reach 2^-60:
  // what is flushed is then below 2^-66 of the row's largest. dS scales with dy and v, which may be tiny themselves.
  // (With FlushSubnormals on, dS came out flushed already.)
  if (dmax >= 0x1p-60f && !flushing_subnormals()) flush_below_min<V>(drow, n);
  for (int64_t j = n; j < sh.C; ++j) {
    srow[j] = 0;
    drow[j] = 0;
  }
  if (dgq != nullptr) dgq[r / sh.g] += sum;
  return true;
}

template <typename T, class V>
POWER_ATTENTION_INLINE void tile_weights_forward_impl(const TileShape<T>& sh, T* S, T* m, T* l) {
  constexpr int64_t W = POWER_ATTENTION_LANES;
  const T p = static_cast<T>(sh.p);
  const bool odd = sh.p % 2 == 1;
  std::vector<T> z(static_cast<size_t>(sh.C)), gd(static_cast<size_t>(sh.C), T(0));
  const bool gated = sh.gq != nullptr && sh.gk != nullptr;
  const std::vector<double> pmin_own = gated && sh.kpmin == nullptr ? prefix_min(sh.gk, sh.C) : std::vector<double>();
  const double* pmin = sh.kpmin != nullptr ? sh.kpmin : pmin_own.data();
  const T neg_inf = static_cast<T>(kNegInf);
  constexpr bool kFloat = std::is_same_v<T, float>;
  const bool linear = kFloat && !odd;
  KeyFactors kf_own;
  if (linear && gated && sh.kf == nullptr) kf_own.build(sh.gk, sh.C);
  const KeyView kfs = sh.kf != nullptr ? KeyView{sh.kf, sh.kbmin} : KeyView{kf_own.kf.data(), kf_own.bmin.data()};
  RowScratch rs(linear ? sh.C : 0);
  for (int64_t r = 0; r < sh.R; ++r) {
    T* row = S + r * sh.C;
    if constexpr (kFloat) {
      if (linear) {
        const bool done = sh.p == 2 ? (gated ? row_forward_linear<V, true, true>(sh, kfs, pmin, rs, row, r, m[r], l[r])
                                             : row_forward_linear<V, false, true>(sh, kfs, pmin, rs, row, r, m[r], l[r]))
                                    : (gated ? row_forward_linear<V, true, false>(sh, kfs, pmin, rs, row, r, m[r], l[r])
                                             : row_forward_linear<V, false, false>(sh, kfs, pmin, rs, row, r, m[r], l[r]));
        if (done) continue;
      }
    }
    const int64_t n = sh.visible(r), nb = n / (kFloat ? kVL<V> : W) * (kFloat ? kVL<V> : W);
    if (gated) {
      const double gi = sh.gq[r / sh.g] - row_reference(sh, pmin, r);
      for (int64_t j = 0; j < n; ++j) gd[j] = static_cast<T>(gi - sh.gk[j]);
    }
    T mx[W];
    for (int64_t u = 0; u < W; ++u) mx[u] = neg_inf;
    if constexpr (kFloat) {
      V vm = vsplat<V>(neg_inf);
      for (int64_t j0 = 0; j0 < nb; j0 += kVL<V>) {
        const V zj = p * vlog(vabs(sh.scale * vload<V>(row + j0))) + vload<V>(gd.data() + j0);
        vstore(z.data() + j0, zj);
        vm = vmax(vm, zj);
      }
      vstore(mx, vm);
    } else {
      for (int64_t j0 = 0; j0 < nb; j0 += W) {
        for (int64_t u = 0; u < W; ++u) {
          const int64_t j = j0 + u;
          z[j] = p * log_(std::abs(sh.scale * row[j])) + gd[j];
          mx[u] = std::max(mx[u], z[j]);
        }
      }
    }
    for (int64_t j = nb; j < n; ++j) {
      z[j] = p * log_(std::abs(sh.scale * row[j])) + gd[j];
      mx[0] = std::max(mx[0], z[j]);
    }
    T mr = neg_inf;
    for (int64_t u = 0; u < W; ++u) mr = std::max(mr, mx[u]);
    if (mr == neg_inf) mr = 0;
    l[r] = odd ? row_weights<V, true>(row, z.data(), n, mr) : row_weights<V, false>(row, z.data(), n, mr);
    for (int64_t j = n; j < sh.C; ++j) row[j] = 0;
    m[r] = mr;
  }
}

TILE_VARIANTS(void, tile_weights_forward, (const TileShape<T>& sh, T* S, T* m, T* l), (sh, S, m, l))

// One row of tile_weights_backward over [0, n): srow becomes P, drow becomes dS (scale folded in), dz = dP * P into
// dz[]; returns sum dz. kLinear: p = 1, where dP/ds = exp(G_i - G_j - m_i) (also at s = 0).
template <class V, bool kOdd, bool kLinear, typename T>
__attribute__((always_inline)) inline T row_backward(T* srow, T* drow, T* dz, const T* gd, int64_t n, T mr, T p, T scale) {
  constexpr int64_t W = POWER_ATTENTION_LANES, step = std::is_same_v<T, float> ? kVL<V> : W;
  const int64_t nb = n / step * step;
  T acc[W] = {};
  auto one = [&](int64_t j, int64_t u) {
    const T s = scale * srow[j];
    const T e = exp_(p * log_(std::abs(s)) + gd[j] - mr);
    const T w = kOdd ? (s < 0 ? -e : e) : e;
    const T dp = drow[j];
    const T dzj = dp * w;  // dP/dz = P
    // dP/ds = p P / s (s != 0)
    const T dpds = kLinear ? exp_(gd[j] - mr) : (s != 0 ? p * w / s : T(0));
    srow[j] = w;
    drow[j] = dp * dpds * scale;
    dz[j] = dzj;
    acc[u] += dzj;
  };
  if constexpr (std::is_same_v<T, float>) {
    V va{};
    for (int64_t j0 = 0; j0 < nb; j0 += step) {
      const V s = scale * vload<V>(srow + j0), g = vload<V>(gd + j0);
      const V e = vexp(p * vlog(vabs(s)) + g - mr);
      const V w = kOdd ? (s < 0.0f ? -e : e) : e;
      const V dp = vload<V>(drow + j0);
      const V dzj = dp * w;
      const V dpds = kLinear ? vexp(g - mr) : (s != 0.0f ? p * w / s : V{});
      vstore(srow + j0, w);
      vstore(drow + j0, dp * dpds * scale);
      vstore(dz + j0, dzj);
      va += dzj;
    }
    vstore(acc, va);
  } else {
    for (int64_t j0 = 0; j0 < nb; j0 += W)
      for (int64_t u = 0; u < W; ++u) one(j0 + u, u);
  }
  for (int64_t j = nb; j < n; ++j) one(j, 0);
  T sum = 0;
  for (int64_t u = 0; u < W; ++u) sum += acc[u];
  return sum;
}

template <typename T, class V>
POWER_ATTENTION_INLINE void tile_weights_backward_impl(const TileShape<T>& sh, T* S, T* dP, const T* m, T* dgq,
                                                       T* dgk) {
  const T p = static_cast<T>(sh.p);
  const bool odd = sh.p % 2 == 1, linear = sh.p == 1;
  const bool gated = sh.gq != nullptr && sh.gk != nullptr;
  const std::vector<double> pmin_own = gated && sh.kpmin == nullptr ? prefix_min(sh.gk, sh.C) : std::vector<double>();
  const double* pmin = sh.kpmin != nullptr ? sh.kpmin : pmin_own.data();
  std::vector<T> gd(static_cast<size_t>(sh.C), T(0)), dz(static_cast<size_t>(sh.C));
  constexpr bool kFloat = std::is_same_v<T, float>;
  const bool lin_form = kFloat && !odd;
  KeyFactors kf_own;
  if (lin_form && gated && sh.kf == nullptr) kf_own.build(sh.gk, sh.C);
  const KeyView kfs = sh.kf != nullptr ? KeyView{sh.kf, sh.kbmin} : KeyView{kf_own.kf.data(), kf_own.bmin.data()};
  RowScratch rs(lin_form ? sh.C : 0);
  for (int64_t r = 0; r < sh.R; ++r) {
    T* srow = S + r * sh.C;
    T* drow = dP + r * sh.C;
    if constexpr (kFloat) {
      if (lin_form) {
        const bool done =
            sh.p == 2 ? (gated ? row_backward_linear<V, true, true>(sh, kfs, pmin, rs, srow, drow, r, m[r], dgq, dgk)
                               : row_backward_linear<V, false, true>(sh, kfs, pmin, rs, srow, drow, r, m[r], dgq, dgk))
                      : (gated ? row_backward_linear<V, true, false>(sh, kfs, pmin, rs, srow, drow, r, m[r], dgq, dgk)
                               : row_backward_linear<V, false, false>(sh, kfs, pmin, rs, srow, drow, r, m[r], dgq, dgk));
        if (done) continue;
      }
    }
    const int64_t n = sh.visible(r);
    if (gated) {
      const double gi = sh.gq[r / sh.g] - row_reference(sh, pmin, r);
      for (int64_t j = 0; j < n; ++j) gd[j] = static_cast<T>(gi - sh.gk[j]);
    }
    const T mr = m[r];
    T dzsum;
    if (linear) {
      dzsum = row_backward<V, true, true>(srow, drow, dz.data(), gd.data(), n, mr, p, sh.scale);
    } else if (odd) {
      dzsum = row_backward<V, true, false>(srow, drow, dz.data(), gd.data(), n, mr, p, sh.scale);
    } else {
      dzsum = row_backward<V, false, false>(srow, drow, dz.data(), gd.data(), n, mr, p, sh.scale);
    }
    if (dgk != nullptr)
      for (int64_t j = 0; j < n; ++j) dgk[j] -= dz[j];
    for (int64_t j = n; j < sh.C; ++j) {
      srow[j] = 0;
      drow[j] = 0;
    }
    if (dgq != nullptr) dgq[r / sh.g] += dzsum;
  }
}

TILE_VARIANTS(void, tile_weights_backward, (const TileShape<T>& sh, T* S, T* dP, const T* m, T* dgq, T* dgk), (sh, S, dP, m, dgq, dgk))

// ---------------------------------------------------------------------------------------------------------------
// The quadratic form's products in fp32 (AVX-512): C [M, N] (+)= A B with A(i, k) = A[i ai + k ak] (a row-major
// matrix or its transpose) and B [K, N] row-major, in a register-blocked micro-kernel: MR rows x 16 NV columns of
// accumulators (6 x 64 or 8 x 48/32/16, the last vector masked), one broadcast of A(i, k) against NV vector loads of
// B's row k; K in blocks of 128 rows (B's block in L1). Sums over k in index order within a block.
// ---------------------------------------------------------------------------------------------------------------
namespace {

#ifdef POWER_ATTENTION_X86_DISPATCH
#define PA_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))

#define PA_GDECL(r) __m512 c##r##0, c##r##1, c##r##2, c##r##3;
#define PA_GINIT(r)                                                                                   \
  if constexpr (MR > r) {                                                                             \
    float* cr = C + r * ldc;                                                                          \
    const __m512 z = bias != nullptr ? _mm512_set1_ps(bias[r]) : _mm512_setzero_ps();                 \
    c##r##0 = acc ? _mm512_maskz_loadu_ps(NV == 1 ? last : 0xffff, cr) : z;                           \
    if constexpr (NV > 1) c##r##1 = acc ? _mm512_maskz_loadu_ps(NV == 2 ? last : 0xffff, cr + 16) : z; \
    if constexpr (NV > 2) c##r##2 = acc ? _mm512_maskz_loadu_ps(NV == 3 ? last : 0xffff, cr + 32) : z; \
    if constexpr (NV > 3) c##r##3 = acc ? _mm512_maskz_loadu_ps(last, cr + 48) : z;                   \
  }
#define PA_GFMA(r)                                                     \
  if constexpr (MR > r) {                                              \
    const __m512 x = _mm512_set1_ps(ak_[r * ai]);                      \
    c##r##0 = _mm512_fmadd_ps(x, b0, c##r##0);                         \
    if constexpr (NV > 1) c##r##1 = _mm512_fmadd_ps(x, b1, c##r##1);   \
    if constexpr (NV > 2) c##r##2 = _mm512_fmadd_ps(x, b2, c##r##2);   \
    if constexpr (NV > 3) c##r##3 = _mm512_fmadd_ps(x, b3, c##r##3);   \
  }
#define PA_GSTORE(r)                                                                      \
  if constexpr (MR > r) {                                                                 \
    float* cr = C + r * ldc;                                                              \
    _mm512_mask_storeu_ps(cr, NV == 1 ? last : 0xffff, c##r##0);                          \
    if constexpr (NV > 1) _mm512_mask_storeu_ps(cr + 16, NV == 2 ? last : 0xffff, c##r##1); \
    if constexpr (NV > 2) _mm512_mask_storeu_ps(cr + 32, NV == 3 ? last : 0xffff, c##r##2); \
    if constexpr (NV > 3) _mm512_mask_storeu_ps(cr + 48, last, c##r##3);                  \
  }

template <int MR, int NV>
PA_AVX512 void gemm_micro(int64_t K, const float* A, int64_t ai, int64_t ak, const float* B, int64_t ldb, float* C,
                          int64_t ldc, __mmask16 last, bool acc, const float* bias) {
  static_assert(MR >= 1 && MR <= 8 && NV >= 1 && NV <= 4, "register block");
  PA_GDECL(0) PA_GDECL(1) PA_GDECL(2) PA_GDECL(3) PA_GDECL(4) PA_GDECL(5) PA_GDECL(6) PA_GDECL(7)
  PA_GINIT(0) PA_GINIT(1) PA_GINIT(2) PA_GINIT(3) PA_GINIT(4) PA_GINIT(5) PA_GINIT(6) PA_GINIT(7)
  for (int64_t k = 0; k < K; ++k) {
    const float* bk = B + k * ldb;
    const float* ak_ = A + k * ak;
    const __m512 b0 = _mm512_maskz_loadu_ps(NV == 1 ? last : 0xffff, bk);
    __m512 b1, b2, b3;
    if constexpr (NV > 1) b1 = _mm512_maskz_loadu_ps(NV == 2 ? last : 0xffff, bk + 16);
    if constexpr (NV > 2) b2 = _mm512_maskz_loadu_ps(NV == 3 ? last : 0xffff, bk + 32);
    if constexpr (NV > 3) b3 = _mm512_maskz_loadu_ps(last, bk + 48);
    PA_GFMA(0) PA_GFMA(1) PA_GFMA(2) PA_GFMA(3) PA_GFMA(4) PA_GFMA(5) PA_GFMA(6) PA_GFMA(7)
  }
  PA_GSTORE(0) PA_GSTORE(1) PA_GSTORE(2) PA_GSTORE(3) PA_GSTORE(4) PA_GSTORE(5) PA_GSTORE(6) PA_GSTORE(7)
}

#undef PA_GDECL
#undef PA_GINIT
#undef PA_GFMA
#undef PA_GSTORE

// Rows [0, mr) of a register block of MR rows at most.
template <int MR, int NV>
PA_AVX512 void gemm_rows(int64_t mr, int64_t K, const float* A, int64_t ai, int64_t ak, const float* B, int64_t ldb,
                         float* C, int64_t ldc, __mmask16 last, bool acc, const float* bias) {
  if (mr == MR) {
    gemm_micro<MR, NV>(K, A, ai, ak, B, ldb, C, ldc, last, acc, bias);
  } else if constexpr (MR > 1) {
    gemm_rows<MR - 1, NV>(mr, K, A, ai, ak, B, ldb, C, ldc, last, acc, bias);
  }
}

template <int NV>
PA_AVX512 void gemm_panel(int64_t M, int64_t K, const float* A, int64_t ai, int64_t ak, const float* B, int64_t ldb,
                          float* C, int64_t ldc, __mmask16 last, bool acc, const float* bias) {
  constexpr int MR = NV == 4 ? 6 : 8;
  for (int64_t i0 = 0; i0 < M; i0 += MR)
    gemm_rows<MR, NV>(std::min<int64_t>(MR, M - i0), K, A + i0 * ai, ai, ak, B, ldb, C + i0 * ldc, ldc, last, acc,
                      bias != nullptr ? bias + i0 : nullptr);
}

// C [M, N] = A B (acc: C += A B; bias [M] given: C = A B + bias[i] on row i), A(i, k) = A[i ai + k ak], B [K, N]
// with row stride ldb, C with row stride ldc.
PA_AVX512 void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t ai, int64_t ak, const float* B,
                    int64_t ldb, float* C, int64_t ldc, bool acc, const float* bias = nullptr) {
  constexpr int64_t kBlockK = 64;
  for (int64_t c0 = 0; c0 < N; c0 += 64) {
    const int64_t nc = std::min<int64_t>(64, N - c0);
    const int nv = static_cast<int>((nc + 15) / 16);
    const __mmask16 last = static_cast<__mmask16>((1u << (nc - 16 * (nv - 1))) - 1u);
    if (K == 0 && !acc) {
      for (int64_t i = 0; i < M; ++i)
        std::fill(C + i * ldc + c0, C + i * ldc + c0 + nc, bias != nullptr ? bias[i] : 0.0f);
      continue;
    }
    for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
      const int64_t kn = std::min(kBlockK, K - k0);
      const bool a = acc || k0 > 0;
      const float* bs = k0 == 0 ? bias : nullptr;
      const float* Ak = A + k0 * ak;
      const float* Bk = B + k0 * ldb + c0;
      float* Cc = C + c0;
      switch (nv) {
        case 4: gemm_panel<4>(M, kn, Ak, ai, ak, Bk, ldb, Cc, ldc, last, a, bs); break;
        case 3: gemm_panel<3>(M, kn, Ak, ai, ak, Bk, ldb, Cc, ldc, last, a, bs); break;
        case 2: gemm_panel<2>(M, kn, Ak, ai, ak, Bk, ldb, Cc, ldc, last, a, bs); break;
        default: gemm_panel<1>(M, kn, Ak, ai, ak, Bk, ldb, Cc, ldc, last, a, bs); break;
      }
    }
  }
}

// The same products for AVX2 machines (16 ymm registers): MR rows x 8 NV columns of accumulators (6 x 16 or 8 x 8),
// one broadcast of A(i, k) against NV vector loads of B's row k, the last vector masked where the columns end
// inside it (kMasked). K in blocks of 64 rows taken outermost (the last up to 80: a block of a few rows would
// store and reload C for little work), so that A's block (up to 80 x 64) stays in L1 while
// the 16-column panels of B pass over it (a 6 x 64 block does not fit in 16 registers). Sums over k in index order.
#define PA_AVX2 __attribute__((target("avx2,fma")))

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols: 8 x 8 blocks in registers, the edges one by one.
PA_AVX2 void transpose_avx2(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd) {
  const int64_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
  for (int64_t r0 = 0; r0 < r8; r0 += 8) {
    const float* s0 = src + r0 * lds;
    for (int64_t c0 = 0; c0 < c8; c0 += 8) {
      const __m256 a0 = _mm256_loadu_ps(s0 + c0), a1 = _mm256_loadu_ps(s0 + lds + c0),
                   a2 = _mm256_loadu_ps(s0 + 2 * lds + c0), a3 = _mm256_loadu_ps(s0 + 3 * lds + c0),
                   a4 = _mm256_loadu_ps(s0 + 4 * lds + c0), a5 = _mm256_loadu_ps(s0 + 5 * lds + c0),
                   a6 = _mm256_loadu_ps(s0 + 6 * lds + c0), a7 = _mm256_loadu_ps(s0 + 7 * lds + c0);
      const __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1), t2 = _mm256_unpacklo_ps(a2, a3),
                   t3 = _mm256_unpackhi_ps(a2, a3), t4 = _mm256_unpacklo_ps(a4, a5), t5 = _mm256_unpackhi_ps(a4, a5),
                   t6 = _mm256_unpacklo_ps(a6, a7), t7 = _mm256_unpackhi_ps(a6, a7);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee),
                   u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee),
                   u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee),
                   u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
      float* d0 = dst + c0 * ldd + r0;
      _mm256_storeu_ps(d0, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(d0 + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(d0 + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(d0 + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(d0 + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(d0 + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(d0 + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(d0 + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    for (int64_t r = r0; r < r0 + 8; ++r)
      for (int64_t c = c8; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
  }
  for (int64_t r = r8; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}


#define PA_YDECL(r) __m256 c##r##0, c##r##1;
#define PA_YLOAD(v, p) (kMasked && NV == (v) + 1 ? _mm256_maskload_ps((p), last) : _mm256_loadu_ps(p))
#define PA_YINIT(r)                                                                \
  if constexpr (MR > r) {                                                          \
    float* cr = C + r * ldc;                                                       \
    const __m256 z = bias != nullptr ? _mm256_set1_ps(bias[r]) : _mm256_setzero_ps(); \
    c##r##0 = acc ? PA_YLOAD(0, cr) : z;                                           \
    if constexpr (NV > 1) c##r##1 = acc ? PA_YLOAD(1, cr + 8) : z;                 \
  }
#define PA_YFMA(r)                                                   \
  if constexpr (MR > r) {                                            \
    const __m256 x = _mm256_broadcast_ss(ak_ + r * ai);              \
    c##r##0 = _mm256_fmadd_ps(x, b0, c##r##0);                       \
    if constexpr (NV > 1) c##r##1 = _mm256_fmadd_ps(x, b1, c##r##1); \
  }
#define PA_YSTORE1(v, p, x)                                        \
  if (kMasked && NV == (v) + 1) _mm256_maskstore_ps((p), last, (x)); \
  else _mm256_storeu_ps((p), (x));
#define PA_YSTORE(r)                                     \
  if constexpr (MR > r) {                                \
    float* cr = C + r * ldc;                             \
    PA_YSTORE1(0, cr, c##r##0)                           \
    if constexpr (NV > 1) { PA_YSTORE1(1, cr + 8, c##r##1) } \
  }

template <int MR, int NV, bool kMasked>
PA_AVX2 void gemm_micro_avx2(int64_t K, const float* A, int64_t ai, int64_t ak, const float* B, int64_t ldb,
                             float* C, int64_t ldc, __m256i last, bool acc, const float* bias) {
  static_assert(MR >= 1 && MR <= 8 && NV >= 1 && NV <= 2, "register block");
  PA_YDECL(0) PA_YDECL(1) PA_YDECL(2) PA_YDECL(3) PA_YDECL(4) PA_YDECL(5) PA_YDECL(6) PA_YDECL(7)
  PA_YINIT(0) PA_YINIT(1) PA_YINIT(2) PA_YINIT(3) PA_YINIT(4) PA_YINIT(5) PA_YINIT(6) PA_YINIT(7)
  for (int64_t k = 0; k < K; ++k) {
    const float* bk = B + k * ldb;
    const float* ak_ = A + k * ak;
    const __m256 b0 = PA_YLOAD(0, bk);
    __m256 b1;
    if constexpr (NV > 1) b1 = PA_YLOAD(1, bk + 8);
    PA_YFMA(0) PA_YFMA(1) PA_YFMA(2) PA_YFMA(3) PA_YFMA(4) PA_YFMA(5) PA_YFMA(6) PA_YFMA(7)
  }
  PA_YSTORE(0) PA_YSTORE(1) PA_YSTORE(2) PA_YSTORE(3) PA_YSTORE(4) PA_YSTORE(5) PA_YSTORE(6) PA_YSTORE(7)
}

#undef PA_YDECL
#undef PA_YLOAD
#undef PA_YINIT
#undef PA_YFMA
#undef PA_YSTORE1
#undef PA_YSTORE

// Rows [0, mr) of a register block of MR rows at most.
template <int MR, int NV, bool kMasked>
PA_AVX2 void gemm_rows_avx2(int64_t mr, int64_t K, const float* A, int64_t ai, int64_t ak, const float* B,
                            int64_t ldb, float* C, int64_t ldc, __m256i last, bool acc, const float* bias) {
  if (mr == MR) {
    gemm_micro_avx2<MR, NV, kMasked>(K, A, ai, ak, B, ldb, C, ldc, last, acc, bias);
  } else if constexpr (MR > 1) {
    gemm_rows_avx2<MR - 1, NV, kMasked>(mr, K, A, ai, ak, B, ldb, C, ldc, last, acc, bias);
  }
}

template <int NV, bool kMasked>
PA_AVX2 void gemm_panel_avx2(int64_t M, int64_t K, const float* A, int64_t ai, int64_t ak, const float* B,
                             int64_t ldb, float* C, int64_t ldc, __m256i last, bool acc, const float* bias) {
  constexpr int MR = NV == 2 ? 6 : 8;
  for (int64_t i0 = 0; i0 < M; i0 += MR)
    gemm_rows_avx2<MR, NV, kMasked>(std::min<int64_t>(MR, M - i0), K, A + i0 * ai, ai, ak, B, ldb, C + i0 * ldc,
                                    ldc, last, acc, bias != nullptr ? bias + i0 : nullptr);
}

// As gemm above, for AVX2.
PA_AVX2 void gemm_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t ai, int64_t ak, const float* B,
                       int64_t ldb, float* C, int64_t ldc, bool acc, const float* bias) {
  constexpr int64_t kBlockK = 64;
  if (K == 0 && !acc) {
    for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, bias != nullptr ? bias[i] : 0.0f);
    return;
  }
  for (int64_t k0 = 0, kn = 0; k0 < K; k0 += kn) {
    kn = K - k0 <= kBlockK + kBlockK / 4 ? K - k0 : kBlockK;  // no short last block
    const bool a = acc || k0 > 0;
    const float* bs = k0 == 0 ? bias : nullptr;
    const float* Ak = A + k0 * ak;
    for (int64_t c0 = 0; c0 < N; c0 += 16) {
      const int64_t nc = std::min<int64_t>(16, N - c0);
      const int nv = static_cast<int>((nc + 7) / 8);
      const int64_t rem = nc - 8 * (nv - 1);
      const __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)),
                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      const float* Bk = B + k0 * ldb + c0;
      float* Cc = C + c0;
      if (rem == 8) {
        if (nv == 2) gemm_panel_avx2<2, false>(M, kn, Ak, ai, ak, Bk, ldb, Cc, ldc, last, a, bs);
        else gemm_panel_avx2<1, false>(M, kn, Ak, ai, ak, Bk, ldb, Cc, ldc, last, a, bs);
      } else {
        if (nv == 2) gemm_panel_avx2<2, true>(M, kn, Ak, ai, ak, Bk, ldb, Cc, ldc, last, a, bs);
        else gemm_panel_avx2<1, true>(M, kn, Ak, ai, ak, Bk, ldb, Cc, ldc, last, a, bs);
      }
    }
  }
}
#endif

// 64-byte aligned scratch of one thread, grown on demand.
struct Buffer {
  float* p = nullptr;
  size_t n = 0;
  float* get(size_t want) {
    if (want > n) {
      std::free(p);
      n = (want + 15) / 16 * 16;
      p = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
      if (p == nullptr) throw std::bad_alloc();
    }
    return p;
  }
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { std::free(p); }
};
struct QuadraticWork {
  Buffer kt, vt, dkt, dvt, s, dp, dnum, dqt, rows, qtile;
  std::vector<double> gp, pmin, bmin;
  KeyFactors keys;  // the forward's gate factors of all keys
  std::vector<float> dl, dt, rowc, kroot, dz;
  std::vector<unsigned char> rowlin;
  size_t bytes() const {
    return sizeof(float) * (kt.n + vt.n + dkt.n + dvt.n + s.n + dp.n + dnum.n + dqt.n + rows.n + qtile.n);
  }
};

// Workspaces outlive the call (for_each_head's threads do not, so thread-local ones would be allocated and
// page-faulted anew every call): a few kept, each up to kKeptBytes, the rest freed.
class WorkPool {
 public:
  static constexpr size_t kKept = 4, kKeptBytes = size_t(64) << 20;
  std::unique_ptr<QuadraticWork> take() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) return std::make_unique<QuadraticWork>();
    std::unique_ptr<QuadraticWork> w = std::move(free_.back());
    free_.pop_back();
    return w;
  }
  void give(std::unique_ptr<QuadraticWork> w) {
    if (w->bytes() > kKeptBytes) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() < kKept) free_.push_back(std::move(w));
  }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<QuadraticWork>> free_;
};
WorkPool& work_pool() {
  static WorkPool* pool = new WorkPool();  // never destroyed: heads may run while the process exits
  return *pool;
}
struct PooledWork {
  std::unique_ptr<QuadraticWork> w = work_pool().take();
  ~PooledWork() { work_pool().give(std::move(w)); }
};

// n rounded up to a multiple of 16 that is an odd multiple of 16 floats (64 bytes), so that the rows of a panel
// spread over the L1 sets instead of meeting in one (a stride of 8 KiB maps every row to the same set).
int64_t padded_ld(int64_t n) { return ((n + 15) / 16 * 16) | 16; }

// x [j][a] (row stride ldx) = xt [a][j] (row stride ld) for j < T, a < w.
void transpose_out(const float* xt, int64_t ld, int64_t T, int64_t w, float* x, int64_t ldx) {
  transpose_f32(xt, ld, w, T, x, ldx);
}

// The key blocks of x [T, w] (row stride ldx) transposed, one after the other: block b (tokens [b B, b B + B)) at
// out + b w ldb as [w][ldb], columns past the block's tokens zero. A product's B operand then spans a few pages: a
// panel of w rows of K^T at the token stride (8 KiB at t = 2048) touched w pages per pass, more than the L1 TLB
// holds with the other operands.
void pack_key_blocks(const float* x, int64_t ldx, int64_t T, int64_t w, int64_t B, int64_t ldb, float* out) {
  for (int64_t j0 = 0; j0 < T; j0 += B) {
    const int64_t nk = std::min(B, T - j0);
    float* ob = out + (j0 / B) * w * ldb;
    transpose_f32(x + j0 * ldx, ldx, nk, w, ob, ldb);
    for (int64_t a = 0; a < w; ++a) std::fill(ob + a * ldb + nk, ob + (a + 1) * ldb, 0.0f);
  }
}

// The key block size of the quadratic form's products for a tile of `tile` query tokens: a multiple of 16 (the gate
// factors' key blocks), at most 256 (a row's whole 16-key blocks in one vector of block_weights_backward).
int64_t key_block(int64_t tile) { return std::clamp<int64_t>(tile / 16 * 16, 16, 256); }

// x [T, w] with row stride ldx as the B operand of a product: x itself when its rows are contiguous, else copied
// into buf (a stride of a few KiB puts a panel's rows in a few L1 sets).
const float* unit_stride_rows(const float* x, int64_t ldx, int64_t T, int64_t w, Buffer& buf) {
  if (ldx == w) return x;
  float* out = buf.get(T * w);
  for (int64_t j = 0; j < T; ++j) std::copy(x + j * ldx, x + j * ldx + w, out + j * w);
  return out;
}

// The query rows of tokens [i0, i1) (R = (i1 - i0) g rows, rows d apart within a token, tokens q_stride apart) copied
// into out [R][ld]: the products re-read a tile's queries once per 16 or 64 columns of keys, and at the caller's
// token stride (h d floats: 2 KiB for 8 heads of 64) the tile's rows meet in a few L1 sets.
const float* query_tile(const QuadraticHead& h, int64_t q_stride, int64_t i0, int64_t i1, int64_t ld, float* out) {
  const int64_t g = h.g, d = h.d;
  for (int64_t r = 0; r < (i1 - i0) * g; ++r) {
    const float* src = h.q + (i0 + r / g) * q_stride + (r % g) * d;
    std::copy(src, src + d, out + r * ld);
  }
  return out;
}

// G padded to ld entries with its last value (keys past T are never visible; their factors stay finite).
const double* padded_gates(const QuadraticHead& h, int64_t ld, QuadraticWork& w) {
  if (h.G == nullptr) return nullptr;
  w.gp.assign(static_cast<size_t>(ld), h.T > 0 ? h.G[h.T - 1] : 0.0);
  std::copy(h.G, h.G + h.T, w.gp.begin());
  return w.gp.data();
}

// The row strides of a head (QuadraticHead's, 0: contiguous) and of its query-row operands: the g rows of a token
// are w apart, so rows are evenly spaced when g = 1 or the token stride is g w.
struct Strides {
  int64_t q, k, v, y, dy;     // token strides
  int64_t yr, dyr;            // row strides of the query-row operands (the queries: query_tile)
  explicit Strides(const QuadraticHead& h)
      : q(h.ldq != 0 ? h.ldq : h.g * h.d),
        k(h.ldk != 0 ? h.ldk : h.d),
        v(h.ldv != 0 ? h.ldv : h.e),
        y(h.ldy != 0 ? h.ldy : h.g * h.e),
        dy(h.lddy != 0 ? h.lddy : h.g * h.e),
        yr(h.g == 1 ? y : h.e),
        dyr(h.g == 1 ? dy : h.e) {}
};

// The tile of query tokens [i0, i1) against keys [0, C); with w given, its keys' gate factors and prefix minimum
// from w.keys and w.pmin (made once for all keys: the tiles' keys all start at 0).
TileShape<float> quadratic_tile(const QuadraticHead& h, int64_t i0, int64_t i1, int64_t C, const double* gp,
                                const QuadraticWork* w = nullptr) {
  TileShape<float> sh;
  sh.R = (i1 - i0) * h.g, sh.C = C, sh.g = h.g, sh.tq0 = i0, sh.tk0 = 0, sh.p = h.p, sh.scale = h.scale;
  sh.gq = h.G != nullptr ? h.G + i0 : nullptr;
  sh.gk = gp;
  if (w != nullptr && gp != nullptr) sh.kf = w->keys.kf.data(), sh.kbmin = w->keys.bmin.data(), sh.kpmin = w->pmin.data();
  return sh;
}

#ifdef POWER_ATTENTION_X86_DISPATCH
using GemmFn = void (*)(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*,
                        int64_t, bool, const float*);

template <GemmFn kGemm>
POWER_ATTENTION_INLINE void quadratic_forward_with(const QuadraticHead& h, float* y, float* m, float* l) {
  const int64_t T = h.T, g = h.g, d = h.d, e = h.e, Tp = padded_ld(T), tile = std::max<int64_t>(1, h.tile);
  PooledWork pw;
  QuadraticWork& w = *pw.w;
  const Strides st(h);
  const int64_t B = key_block(tile), ldb = padded_ld(B), nblk = (T + B - 1) / B;
  float* kt = w.kt.get(nblk * d * ldb);  // K^T by key blocks (pack_key_blocks)
  float* S = w.s.get(tile * g * Tp);
  const int64_t ldqt = padded_ld(d);
  float* qbuf = w.qtile.get(tile * g * ldqt);
  pack_key_blocks(h.k, st.k, T, d, B, ldb, kt);
  const float* vr = unit_stride_rows(h.v, st.v, T, e, w.rows);
  const double* gp = padded_gates(h, Tp, w);
  if (gp != nullptr) {
    w.keys.build(gp, Tp);
    w.pmin = prefix_min(gp, Tp);
  }
  for (int64_t i0 = 0; i0 < T; i0 += tile) {
    const int64_t i1 = std::min(T, i0 + tile), R = (i1 - i0) * g, C = padded_ld(i1);
    const float* qt = query_tile(h, st.q, i0, i1, ldqt, qbuf);
    for (int64_t j0 = 0; j0 < i1; j0 += B)  // S [R, i1]; the weights read no column past the row's last key
      kGemm(R, std::min(B, i1 - j0), d, qt, ldqt, 1, kt + (j0 / B) * d * ldb, ldb, S + j0, C, false, nullptr);
    tile_weights_forward<float>(quadratic_tile(h, i0, i1, C, gp, &w), S, m + i0 * g, l + i0 * g);
    float* yt = y + i0 * st.y;
    kGemm(R, e, i1, S, C, 1, vr, e, yt, st.yr, false, nullptr);
    for (int64_t r = 0; r < R; ++r) {
      const float lr = l[i0 * g + r], inv = lr != 0.0f ? 1.0f / lr : 0.0f;
      for (int64_t c = 0; c < e; ++c) yt[r * st.yr + c] *= inv;
    }
  }
}

// The backward in key blocks of B tokens (B = the tile, a multiple of 16), each block against the query tiles that
// see it: the block's K^T, V^T and the key and value gradients (4 B w floats) stay in L1 while the query tiles'
// rows, dnum and the query gradient stream past, and the weights of a (query tile, key block) pair ([B g, B]) never
// leave L1 (a whole row of weights [B g, t] per tile, with K^T, V^T and their gradients [w, t] each, did not fit
// in L2 from t = 2048 on: the products ran at half their in-cache speed there).
//
// The weights need no pass over a whole row: with c_i = |scale| exp(-m_i / p) and the gate factor's p-th root
// e_ij = exp((gmin_i - G_j) / p) <= 1 (gmin_i = G_i - gref_i, the row's smallest visible key cumsum),
//   P_ij = exp(z_ij - m_i) = y^p, y = s_ij c_i e_ij, |y| <= 1 (m_i is the row's largest z),
//   dS_ij = dP_ij p y^(p-1) c_i e_ij, dz_ij = dP_ij P_ij.
// Against a key block b that the row sees whole, e_ij = kroot_j rroot_ib with kroot_j = exp((bmin_b - G_j) / p) and
// rroot_ib = exp((gmin_i - bmin_b) / p) (bmin_b the block's smallest G), both <= 1, so that the product underflows
// only where e does: one exp per row and block. The block on the diagonal takes exp((gmin_i - G_j) / p) itself. A
// row whose c_i is outside [1e-30, 1e30] takes the log-space form (row_backward).

// The per-row and per-key factors of the blocked backward (see above).
struct BackwardFactors {
  const float* m;               // [T g] the forward's row maxima
  const float* rowc;            // [T g] c_i
  const unsigned char* rowlin;  // [T g] 1: the linear form
  const double* pmin;           // [T] gmin of each token; null without gates
  const double* bmin;           // [key blocks] bmin_b
  const float* kroot;           // [T] kroot_j
  const double* G;              // [T] the gate cumsum
  int64_t g, p, B;              // rows per token, degree, key block tokens
  float scale;
};

// The weights of rows [0, R) (tokens i0 + r / g, global rows i0 g + r) against key block [j0, j0 + nk) in place:
// S (ld) becomes P, dP becomes dS; adds sum_j dz_ij into dG[token] and -sum_i dz_ij into dG[j] (dG given).
// scratch: 2 R + 2 nk + 64 floats.
template <class V, bool kP2>
__attribute__((always_inline)) inline void block_weights_backward(const BackwardFactors& bf, int64_t i0, int64_t R,
                                                                 int64_t j0, int64_t nk, float* S, float* dP,
                                                                 int64_t ld, float* dG, float* scratch) {
  const int64_t half = bf.p / 2, g = bf.g;
  const bool gated = bf.pmin != nullptr, diag = j0 + nk > i0;  // diag: some row sees part of the block
  const float pf = static_cast<float>(bf.p);
  const double ip = 1.0 / static_cast<double>(bf.p);
  float* rowf = scratch;                           // [R + 16] c_i rroot_ib (c_i without gates)
  float* ev = scratch + (R + kLanes) / kLanes * kLanes + kLanes;  // [nk + 16] c_i e_ij on the diagonal; dz, gd
  float* gd = ev + (nk + kLanes) / kLanes * kLanes + kLanes;
  const int64_t rv = (R + kVL<V> - 1) / kVL<V> * kVL<V>;
  if (gated && !diag) {
    const double bm = bf.bmin[j0 / bf.B];
    for (int64_t r = 0; r < rv; ++r) rowf[r] = r < R ? static_cast<float>((bf.pmin[i0 + r / g] - bm) * ip) : 0.0f;
    for (int64_t r = 0; r < rv; r += kVL<V>) vstore(rowf + r, vexp(vload<V>(rowf + r)) * vload<V>(bf.rowc + i0 * g + r));
  }
  const int64_t nkv = nk / kVL<V> * kVL<V>;
  const bool ftz = flushing_subnormals();
  for (int64_t r = 0; r < R; ++r) {
    const int64_t tok = i0 + r / g, row = i0 * g + r;
    const int64_t n = std::min(nk, tok - j0 + 1);  // >= 1: j0 <= i0
    float* srow = S + r * ld;
    float* drow = dP + r * ld;
    float rowsum = 0.0f;
    if (bf.rowlin[row]) {
      const float c = bf.rowc[row];
      const int64_t nv = diag ? n / kVL<V> * kVL<V> : nkv;
      if (diag && gated) {  // c e_ij over the row's visible keys
        const double gmin = bf.pmin[tok];
        const int64_t n16 = (n + kVL<V> - 1) / kVL<V> * kVL<V>;
        for (int64_t j = 0; j < n16; ++j) ev[j] = j < n ? static_cast<float>((gmin - bf.G[j0 + j]) * ip) : 0.0f;
        for (int64_t j = 0; j < n16; j += kVL<V>) vstore(ev + j, vexp(vload<V>(ev + j)) * c);
      }
      const float rf = gated && !diag ? rowf[r] : c;
      V vz{}, vd{};
      for (int64_t j = 0; j < nv; j += kVL<V>) {
        const V ce = !gated ? vsplat<V>(c) : diag ? vload<V>(ev + j) : vload<V>(bf.kroot + j0 + j) * rf;
        const V y = vload<V>(srow + j) * ce;
        const V yp = pow_odd<kP2>(y, half);
        const V w = vflush(yp * y);
        const V dp = vload<V>(drow + j);
        const V dz = dp * w;
        const V ds = dp * (yp * ce) * pf;
        vstore(srow + j, w);
        vstore(drow + j, ds);
        vd = vmax(vd, vabs(ds));
        vz += dz;
        if (dG != nullptr) vstore(dG + j0 + j, vload<V>(dG + j0 + j) - dz);
      }
      rowsum = hsum(vz);
      float dmax = hmax(vd);
      for (int64_t j = nv; j < n; ++j) {
        const float ce = !gated ? c : diag ? ev[j] : bf.kroot[j0 + j] * rf;
        const float y = srow[j] * ce;
        const float yp = pow_odd<kP2>(y, half);
        const float w = flush(yp * y), dp = drow[j], dz = dp * w;
        srow[j] = w;
        drow[j] = dp * (yp * ce) * pf;
        dmax = std::max(dmax, std::abs(drow[j]));
        rowsum += dz;
        if (dG != nullptr) dG[j0 + j] -= dz;
      }
      // dS below FLT_MIN to 0 only where the row's reach 2^-60 (row_backward_linear says why)
      if (dmax >= 0x1p-60f && !ftz) flush_below_min<V>(drow, n);  // (with FlushSubnormals on: flushed already)
    } else {
      const double gi = gated ? bf.pmin[tok] : 0.0;
      for (int64_t j = 0; j < n; ++j) gd[j] = gated ? static_cast<float>(gi - bf.G[j0 + j]) : 0.0f;
      rowsum = row_backward<V, false, false>(srow, drow, ev, gd, n, bf.m[row], pf, bf.scale);
      if (dG != nullptr)
        for (int64_t j = 0; j < n; ++j) dG[j0 + j] -= ev[j];
    }
    for (int64_t j = n; j < nk; ++j) {
      srow[j] = 0;
      drow[j] = 0;
    }
    if (dG != nullptr) dG[tok] += rowsum;
  }
}

template <GemmFn kGemm, class V>
POWER_ATTENTION_INLINE void quadratic_backward_with(const QuadraticHead& h, const float* y, const float* dy,
                                                   const float* m, const float* l, const QuadraticGrads& gr,
                                                   float* dG) {
  const int64_t T = h.T, g = h.g, d = h.d, e = h.e, TG = T * g;
  // key blocks and query tiles of B tokens
  const int64_t B = key_block(std::max<int64_t>(1, h.tile)), ldb = padded_ld(B), nblk = (T + B - 1) / B;
  float *dq = gr.dq, *dk = gr.dk, *dv = gr.dv;
  PooledWork pw;
  QuadraticWork& w = *pw.w;
  const Strides st(h);
  const int64_t ldqt = padded_ld(d);
  // kt, vt: K^T and V^T by key blocks (pack_key_blocks); dkt, dvt [w][ldb]: one key block's key and value gradients
  // transposed (dK^T += Q_t^T dS, dV^T += dnum_t^T P over the query tiles); qr [T g][ldqt]: the query rows;
  // dnum [T g][e], dl [T g]: y = num / l gives dnum = dy / l, dl = -(dy . y) / l; dqr [T g][d]: the query
  // gradient's rows.
  float* kt = w.kt.get(nblk * d * ldb);
  float* vt = w.vt.get(nblk * e * ldb);
  float* dkt = w.dkt.get(d * ldb);
  float* dvt = w.dvt.get(e * ldb);
  float* S = w.s.get(B * g * ldb);
  float* dP = w.dp.get(B * g * ldb);
  float* dnum = w.dnum.get(TG * e);
  float* dqr = w.dqt.get(TG * d);
  const float* qr = query_tile(h, st.q, 0, T, ldqt, w.qtile.get(TG * ldqt));
  w.dl.resize(static_cast<size_t>(TG));
  w.dt.resize(static_cast<size_t>(TG));
  pack_key_blocks(h.k, st.k, T, d, B, ldb, kt);
  pack_key_blocks(h.v, st.v, T, e, B, ldb, vt);
  const float* kr = dq != nullptr ? unit_stride_rows(h.k, st.k, T, d, w.rows) : h.k;
  for (int64_t row = 0; row < TG; ++row) {
    const int64_t tok = row / g, r = row % g;
    const float lr = l[row], inv = lr != 0.0f ? 1.0f / lr : 0.0f;
    const float* dyr = dy + tok * st.dy + r * e;
    const float* yr = y + tok * st.y + r * e;
    const float* vr = h.v + tok * st.v;
    double dot = 0, own = 0;
    for (int64_t c = 0; c < e; ++c) {
      dnum[row * e + c] = dyr[c] * inv;
      dot += static_cast<double>(dyr[c]) * yr[c];
      own += static_cast<double>(dyr[c]) * (static_cast<double>(vr[c]) - yr[c]);
    }
    w.dl[row] = -static_cast<float>(dot) * inv;
    w.dt[row] = static_cast<float>(own) * inv;  // dP at the row's own key (own_key_term)
  }
  // the factors of the weights (BackwardFactors)
  w.rowc.assign(static_cast<size_t>(TG + kLanes), 0.0f);  // + 16: block_weights_backward reads whole vectors
  w.rowlin.resize(static_cast<size_t>(TG));
  const double as = std::abs(static_cast<double>(h.scale)), ip = 1.0 / static_cast<double>(h.p);
  for (int64_t row = 0; row < TG; ++row) {
    const double c = as * std::exp(-static_cast<double>(m[row]) * ip);
    w.rowlin[row] = c >= 1e-30 && c <= 1e30;
    w.rowc[row] = w.rowlin[row] ? static_cast<float>(c) : 0.0f;
  }
  BackwardFactors bf{m, w.rowc.data(), w.rowlin.data(), nullptr, nullptr, nullptr, h.G, g, h.p, B, h.scale};
  if (h.G != nullptr) {
    w.pmin.resize(static_cast<size_t>(T));
    w.bmin.resize(static_cast<size_t>(nblk));
    w.kroot.assign(static_cast<size_t>(nblk * B), 0.0f);
    double acc = std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < T; ++j) w.pmin[j] = acc = std::min(acc, h.G[j]);
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t j0 = b * B, j1 = std::min(T, j0 + B);
      double mn = h.G[j0];
      for (int64_t j = j0 + 1; j < j1; ++j) mn = std::min(mn, h.G[j]);
      w.bmin[b] = mn;
      for (int64_t j = j0; j < j1; ++j) w.kroot[j] = static_cast<float>(std::exp((mn - h.G[j]) * ip));
    }
    bf.pmin = w.pmin.data(), bf.bmin = w.bmin.data(), bf.kroot = w.kroot.data();
  }
  w.dz.resize(static_cast<size_t>(2 * B * g + 2 * B + 4 * kLanes));
  for (int64_t j0 = 0; j0 < T; j0 += B) {
    const int64_t nk = std::min(B, T - j0);
    const float* ktb = kt + (j0 / B) * d * ldb;
    const float* vtb = vt + (j0 / B) * e * ldb;
    if (dk != nullptr) std::fill(dkt, dkt + d * ldb, 0.0f);
    if (dv != nullptr) std::fill(dvt, dvt + e * ldb, 0.0f);
    for (int64_t i0 = j0; i0 < T; i0 += B) {
      const int64_t R = (std::min(T, i0 + B) - i0) * g;
      const float* qt = qr + i0 * g * ldqt;
      const float* dn = dnum + i0 * g * e;
      kGemm(R, nk, d, qt, ldqt, 1, ktb, ldb, S, ldb, false, nullptr);
      kGemm(R, nk, e, dn, e, 1, vtb, ldb, dP, ldb, false, w.dl.data() + i0 * g);  // dP = dnum V^T + dl
      if (i0 == j0) own_key_term(dP, ldb, R, g, w.dt.data() + i0 * g);
      if (h.p == 2) block_weights_backward<V, true>(bf, i0, R, j0, nk, S, dP, ldb, dG, w.dz.data());
      else block_weights_backward<V, false>(bf, i0, R, j0, nk, S, dP, ldb, dG, w.dz.data());
      if (dv != nullptr) kGemm(e, nk, R, dn, 1, e, S, ldb, dvt, ldb, true, nullptr);
      if (dk != nullptr) kGemm(d, nk, R, qt, 1, ldqt, dP, ldb, dkt, ldb, true, nullptr);
      if (dq != nullptr) kGemm(R, d, nk, dP, ldb, 1, kr + j0 * d, d, dqr + i0 * g * d, d, j0 > 0, nullptr);
    }
    if (dk != nullptr) transpose_out(dkt, ldb, nk, d, dk + j0 * gr.ldk, gr.ldk);
    if (dv != nullptr) transpose_out(dvt, ldb, nk, e, dv + j0 * gr.ldv, gr.ldv);
  }
  if (dq != nullptr)
    for (int64_t row = 0; row < TG; ++row)
      std::copy(dqr + row * d, dqr + (row + 1) * d, dq + (row / g) * gr.ldq + (row % g) * d);
}
// The row loops around the products compiled for the products' instruction set.
PA_AVX512 void quadratic_forward_avx512(const QuadraticHead& h, float* y, float* m, float* l) {
  quadratic_forward_with<gemm>(h, y, m, l);
}
PA_AVX2 void quadratic_forward_avx2(const QuadraticHead& h, float* y, float* m, float* l) {
  quadratic_forward_with<gemm_avx2>(h, y, m, l);
}
PA_AVX512 void quadratic_backward_avx512(const QuadraticHead& h, const float* y, const float* dy, const float* m,
                                         const float* l, const QuadraticGrads& gr, float* dG) {
  quadratic_backward_with<gemm, vf16>(h, y, dy, m, l, gr, dG);
}
PA_AVX2 void quadratic_backward_avx2(const QuadraticHead& h, const float* y, const float* dy, const float* m,
                                     const float* l, const QuadraticGrads& gr, float* dG) {
  quadratic_backward_with<gemm_avx2, vf8>(h, y, dy, m, l, gr, dG);
}
#endif

}  // namespace

bool quadratic_kernels_available(int64_t p) {
#ifdef POWER_ATTENTION_X86_DISPATCH
  // POWER_ATTENTION_CPU_FUSED=0 switches these off as it does the state products (phi_products_available)
  static const bool on = [] {
    const char* env = std::getenv("POWER_ATTENTION_CPU_FUSED");
    return !(env != nullptr && std::strcmp(env, "0") == 0) && simd_level() >= 1;
  }();
  return p % 2 == 0 && on;
#else
  return false;
#endif
}

#ifdef POWER_ATTENTION_X86_DISPATCH
void gemm_f32_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t ai, int64_t ak, const float* B,
                   int64_t ldb, float* C, int64_t ldc, bool acc, const float* bias) {
  gemm_avx2(M, N, K, A, ai, ak, B, ldb, C, ldc, acc, bias);
}

#endif

void transpose_f32(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd) {
#ifdef POWER_ATTENTION_X86_DISPATCH
  if (simd_level() >= 1) return transpose_avx2(src, lds, rows, cols, dst, ldd);
#endif
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

void gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t ai, int64_t ak, const float* B, int64_t ldb,
              float* C, int64_t ldc, bool acc, const float* bias) {
#ifdef POWER_ATTENTION_X86_DISPATCH
  if (simd_level() == 2) {
    gemm(M, N, K, A, ai, ak, B, ldb, C, ldc, acc, bias);
    return;
  }
  if (simd_level() == 1) {
    gemm_avx2(M, N, K, A, ai, ak, B, ldb, C, ldc, acc, bias);
    return;
  }
#endif
  TORCH_CHECK(false, "power_full: internal: the CPU tile products need AVX2 or AVX-512 (phi_products_available)");
}

int64_t quadratic_kernel_tile_tokens() { return simd_level() == 2 ? 64 : 32; }

// Whether FlushSubnormals is harmless for a head whose results are made of products at `scale` (its values' largest
// magnitude; in the backward also its cotangents' and their product): what it flushes is below 2^-126, under 2^-66
// of that scale when the scale reaches 2^-60. Values or cotangents smaller than that (legal: y is linear in v, the
// gradients in dy) run with subnormals kept, slower but exact to the dtype.
bool subnormals_negligible(double scale) { return scale >= 0x1p-60; }

void quadratic_forward_f32(const QuadraticHead& h, float* y, float* m, float* l) {
#ifdef POWER_ATTENTION_X86_DISPATCH
  std::optional<FlushSubnormals> ftz;
  if (subnormals_negligible(rows_max_abs(h.v, h.T, h.e, h.ldv))) ftz.emplace();
  if (simd_level() == 2) quadratic_forward_avx512(h, y, m, l);
  else quadratic_forward_avx2(h, y, m, l);
#endif
}

void quadratic_backward_f32(const QuadraticHead& h, const float* y, const float* dy, const float* m, const float* l,
                            const QuadraticGrads& gr, float* dG) {
#ifdef POWER_ATTENTION_X86_DISPATCH
  const double vmax = rows_max_abs(h.v, h.T, h.e, h.ldv), dymax = rows_max_abs(dy, h.T, h.g * h.e, h.lddy);
  std::optional<FlushSubnormals> ftz;
  if (subnormals_negligible(vmax) && subnormals_negligible(dymax) && subnormals_negligible(vmax * dymax))
    ftz.emplace();
  if (simd_level() == 2) quadratic_backward_avx512(h, y, dy, m, l, gr, dG);
  else quadratic_backward_avx2(h, y, dy, m, l, gr, dG);
#endif
}

template void tile_gate_reference<float>(const TileShape<float>&, double*);
template void tile_gate_reference<double>(const TileShape<double>&, double*);
template void tile_weights_forward<float>(const TileShape<float>&, float*, float*, float*);
template void tile_weights_forward<double>(const TileShape<double>&, double*, double*, double*);
template void tile_weights_backward<float>(const TileShape<float>&, float*, float*, const float*, float*, float*);
template void tile_weights_backward<double>(const TileShape<double>&, double*, double*, const double*, double*,
                                            double*);

}  // namespace cpu
}  // namespace power_attention
