// attention_tile_cpu.cpp: fused log-space weights of the in-chunk attention, forward and backward.
//
// fp32 uses branch-free polynomial exp/log (Cephes coefficients, about 1-2 ulp) so that the row loops vectorise;
// fp64 uses the C library. The kernels are called from inside a per-head parallel region: no threading here.
#include "cpu/attention_tile_cpu.h"
#include "cpu/cpu_simd.h"

// The vector helpers pass 64-byte vectors by value between inlined functions: no ABI is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <cmath>
#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

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
inline float fast_exp(float x) {
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


// 16 floats at a time (GCC vector extensions: one zmm register in the AVX-512 clone, two ymm or four xmm
// elsewhere); the same operations, constants and results as fast_exp / fast_log above.
typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));

__attribute__((always_inline)) inline vf16 vload(const float* p) {
  vf16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
__attribute__((always_inline)) inline void vstore(float* p, vf16 v) { std::memcpy(p, &v, sizeof v); }
__attribute__((always_inline)) inline vf16 vsplat(float x) { return vf16{} + x; }
__attribute__((always_inline)) inline vf16 vabs(vf16 x) { return (vf16)((vi16)x & 0x7fffffff); }
__attribute__((always_inline)) inline vf16 vmax(vf16 a, vf16 b) { return a > b ? a : b; }
// floor for |x| < 2^22 (round to nearest by the 1.5 * 2^23 trick, then down where that went up)
__attribute__((always_inline)) inline vf16 vfloor(vf16 x) {
  const vf16 magic = vsplat(12582912.0f);
  const vf16 t = (x + magic) - magic;
  return t > x ? t - 1.0f : t;
}

__attribute__((always_inline)) inline vf16 vexp(vf16 x) {
  const vf16 lo = vsplat(-87.3365447f), hi = vsplat(88.7228391f);
  const vf16 xc = x < lo ? lo : (x > hi ? hi : x);
  const vf16 n = vfloor(xc * 1.44269504088896341f + 0.5f);
  vf16 r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vf16 y = vsplat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const vf16 scale = (vf16)((__builtin_convertvector(n, vi16) + 127) << 23);
  const vf16 out = y * scale;
  return x < lo ? vf16{} : out;
}

__attribute__((always_inline)) inline vf16 vlog(vf16 a) {
  const vi16 bits = (vi16)a;
  vf16 e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, vf16);
  const vf16 mant = (vf16)((bits & 0x007fffff) | 0x3f000000);
  const auto small = mant < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  const vf16 x = small ? mant + mant - 1.0f : mant - 1.0f;
  const vf16 z = x * x;
  vf16 y = vsplat(7.0376836292e-2f);
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
  vf16 out = x + y;
  out = out + e * 0.693359375f;
  return a < 1.17549435e-38f ? vsplat(-std::numeric_limits<float>::infinity()) : out;
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
double row_reference(const TileShape<T>& sh, const std::vector<double>& pmin, int64_t r) {
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
  for (int64_t r = 0; r < sh.R; ++r) gref[r] = row_reference(sh, pmin, r);
}

// P = exp(z - mr) (signed by s for odd p) over row[0, n), z in z[]; returns sum P. Blocked into lanes so that the
// sum vectorises.
template <bool kOdd, typename T>
__attribute__((always_inline)) inline T row_weights(T* row, const T* z, int64_t n, T mr) {
  constexpr int64_t W = POWER_ATTENTION_LANES;
  const int64_t nb = n / W * W;
  T acc[W] = {};
  if constexpr (std::is_same_v<T, float> && W == 16) {
    vf16 va{};
    for (int64_t j0 = 0; j0 < nb; j0 += W) {
      const vf16 e = vexp(vload(z + j0) - mr);
      const vf16 x = vload(row + j0);
      const vf16 w = kOdd ? (x < 0.0f ? -e : e) : e;
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

template <typename T>
POWER_ATTENTION_INLINE void tile_weights_forward_impl(const TileShape<T>& sh, T* S, T* m, T* l) {
  constexpr int64_t W = POWER_ATTENTION_LANES;
  const T p = static_cast<T>(sh.p);
  const bool odd = sh.p % 2 == 1;
  std::vector<T> z(static_cast<size_t>(sh.C)), gd(static_cast<size_t>(sh.C), T(0));
  const bool gated = sh.gq != nullptr && sh.gk != nullptr;
  const std::vector<double> pmin = gated ? prefix_min(sh.gk, sh.C) : std::vector<double>();
  const T neg_inf = static_cast<T>(kNegInf);
  for (int64_t r = 0; r < sh.R; ++r) {
    T* row = S + r * sh.C;
    const int64_t n = sh.visible(r), nb = n / W * W;
    if (gated) {
      const double gi = sh.gq[r / sh.g] - row_reference(sh, pmin, r);
      for (int64_t j = 0; j < n; ++j) gd[j] = static_cast<T>(gi - sh.gk[j]);
    }
    T mx[W];
    for (int64_t u = 0; u < W; ++u) mx[u] = neg_inf;
    if constexpr (std::is_same_v<T, float> && W == 16) {
      vf16 vm = vsplat(neg_inf);
      for (int64_t j0 = 0; j0 < nb; j0 += W) {
        const vf16 zj = p * vlog(vabs(sh.scale * vload(row + j0))) + vload(gd.data() + j0);
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
    l[r] = odd ? row_weights<true>(row, z.data(), n, mr) : row_weights<false>(row, z.data(), n, mr);
    for (int64_t j = n; j < sh.C; ++j) row[j] = 0;
    m[r] = mr;
  }
}

POWER_ATTENTION_SIMD_VARIANTS(void, tile_weights_forward, (const TileShape<T>& sh, T* S, T* m, T* l), (sh, S, m, l))

// One row of tile_weights_backward over [0, n): srow becomes P, drow becomes dS (scale folded in), dz = dP * P into
// dz[]; returns sum dz. kLinear: p = 1, where dP/ds = exp(G_i - G_j - m_i) (also at s = 0).
template <bool kOdd, bool kLinear, typename T>
__attribute__((always_inline)) inline T row_backward(T* srow, T* drow, T* dz, const T* gd, int64_t n, T mr, T p, T scale) {
  constexpr int64_t W = POWER_ATTENTION_LANES;
  const int64_t nb = n / W * W;
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
  if constexpr (std::is_same_v<T, float> && W == 16) {
    vf16 va{};
    for (int64_t j0 = 0; j0 < nb; j0 += W) {
      const vf16 s = scale * vload(srow + j0), g = vload(gd + j0);
      const vf16 e = vexp(p * vlog(vabs(s)) + g - mr);
      const vf16 w = kOdd ? (s < 0.0f ? -e : e) : e;
      const vf16 dp = vload(drow + j0);
      const vf16 dzj = dp * w;
      const vf16 dpds = kLinear ? vexp(g - mr) : (s != 0.0f ? p * w / s : vf16{});
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

template <typename T>
POWER_ATTENTION_INLINE void tile_weights_backward_impl(const TileShape<T>& sh, T* S, T* dP, const T* m, T* dgq,
                                                       T* dgk) {
  const T p = static_cast<T>(sh.p);
  const bool odd = sh.p % 2 == 1, linear = sh.p == 1;
  const bool gated = sh.gq != nullptr && sh.gk != nullptr;
  const std::vector<double> pmin = gated ? prefix_min(sh.gk, sh.C) : std::vector<double>();
  std::vector<T> gd(static_cast<size_t>(sh.C), T(0)), dz(static_cast<size_t>(sh.C));
  for (int64_t r = 0; r < sh.R; ++r) {
    T* srow = S + r * sh.C;
    T* drow = dP + r * sh.C;
    const int64_t n = sh.visible(r);
    if (gated) {
      const double gi = sh.gq[r / sh.g] - row_reference(sh, pmin, r);
      for (int64_t j = 0; j < n; ++j) gd[j] = static_cast<T>(gi - sh.gk[j]);
    }
    const T mr = m[r];
    T dzsum;
    if (linear) {
      dzsum = row_backward<true, true>(srow, drow, dz.data(), gd.data(), n, mr, p, sh.scale);
    } else if (odd) {
      dzsum = row_backward<true, false>(srow, drow, dz.data(), gd.data(), n, mr, p, sh.scale);
    } else {
      dzsum = row_backward<false, false>(srow, drow, dz.data(), gd.data(), n, mr, p, sh.scale);
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

POWER_ATTENTION_SIMD_VARIANTS(void, tile_weights_backward, (const TileShape<T>& sh, T* S, T* dP, const T* m, T* dgq, T* dgk), (sh, S, dP, m, dgq, dgk))

template void tile_gate_reference<float>(const TileShape<float>&, double*);
template void tile_gate_reference<double>(const TileShape<double>&, double*);
template void tile_weights_forward<float>(const TileShape<float>&, float*, float*, float*);
template void tile_weights_forward<double>(const TileShape<double>&, double*, double*, double*);
template void tile_weights_backward<float>(const TileShape<float>&, float*, float*, const float*, float*, float*);
template void tile_weights_backward<double>(const TileShape<double>&, double*, double*, const double*, double*,
                                            double*);

}  // namespace cpu
}  // namespace power_attention
