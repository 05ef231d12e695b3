// attention_tile_cpu.cpp: fused log-space weights of the in-chunk attention, forward and backward.
//
// fp32 uses branch-free polynomial exp/log (Cephes coefficients, about 1-2 ulp) so that the row loops vectorise;
// fp64 uses the C library. The kernels are called from inside a per-head parallel region: no threading here.
#include "attention_tile_cpu.h"

#include <cmath>
#include <cstring>
#include <limits>
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

template <typename T>
void tile_weights_forward(const TileShape<T>& sh, T* S, T* m, T* l) {
  const T p = static_cast<T>(sh.p);
  const bool odd = sh.p % 2 == 1;
  std::vector<T> z(static_cast<size_t>(sh.C));
  const bool gated = sh.gq != nullptr && sh.gk != nullptr;
  const std::vector<double> pmin = gated ? prefix_min(sh.gk, sh.C) : std::vector<double>();
  for (int64_t r = 0; r < sh.R; ++r) {
    T* row = S + r * sh.C;
    const int64_t n = sh.visible(r);
    const double gi = gated ? sh.gq[r / sh.g] - row_reference(sh, pmin, r) : 0.0;
    T mr = static_cast<T>(kNegInf);
    for (int64_t j = 0; j < n; ++j) {
      const T gd = gated ? static_cast<T>(gi - sh.gk[j]) : T(0);
      const T zj = p * log_(std::abs(sh.scale * row[j])) + gd;
      z[j] = zj;
      mr = zj > mr ? zj : mr;
    }
    if (mr == static_cast<T>(kNegInf)) mr = 0;
    T lr = 0;
    for (int64_t j = 0; j < n; ++j) {
      T w = exp_(z[j] - mr);
      if (odd) w = row[j] < 0 ? -w : w;
      row[j] = w;
      lr += w;
    }
    for (int64_t j = n; j < sh.C; ++j) row[j] = 0;
    m[r] = mr;
    l[r] = lr;
  }
}

template <typename T>
void tile_weights_backward(const TileShape<T>& sh, T* S, T* dP, const T* m, T* dgq, T* dgk) {
  const T p = static_cast<T>(sh.p);
  const bool odd = sh.p % 2 == 1;
  const bool gated = sh.gq != nullptr && sh.gk != nullptr;
  const std::vector<double> pmin = gated ? prefix_min(sh.gk, sh.C) : std::vector<double>();
  for (int64_t r = 0; r < sh.R; ++r) {
    T* srow = S + r * sh.C;
    T* drow = dP + r * sh.C;
    const int64_t n = sh.visible(r);
    const double gi = gated ? sh.gq[r / sh.g] - row_reference(sh, pmin, r) : 0.0;
    const T mr = m[r];
    T dzsum = 0;
    for (int64_t j = 0; j < n; ++j) {
      const T s = sh.scale * srow[j];
      const T gd = gated ? static_cast<T>(gi - sh.gk[j]) : T(0);
      T w = exp_(p * log_(std::abs(s)) + gd - mr);
      if (odd) w = s < 0 ? -w : w;
      const T dp = drow[j];
      const T dz = dp * w;  // dP/dz = P
      dzsum += dz;
      if (dgk != nullptr) dgk[j] -= dz;
      // dP/ds = p P / s (s != 0); p = 1: exp(G_i - G_j - m_i), which also covers s == 0
      T dpds;
      if (sh.p == 1) {
        dpds = exp_(gd - mr);
      } else {
        dpds = s != 0 ? p * w / s : T(0);
      }
      srow[j] = w;
      drow[j] = dp * dpds * sh.scale;
    }
    for (int64_t j = n; j < sh.C; ++j) {
      srow[j] = 0;
      drow[j] = 0;
    }
    if (dgq != nullptr) dgq[r / sh.g] += dzsum;
  }
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
