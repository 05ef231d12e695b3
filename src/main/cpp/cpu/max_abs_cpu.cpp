// max_abs_cpu.cpp: row max-abs loops (max_abs_cpu.h) and the CPU path's extremes (power_full_cpu.h), each element
// read once in vector lanes. (ATen's linalg_vector_norm(x, inf, {-1}) took ~6 ms for the 32768 rows of 64 of one
// t = 4096 call, its reduction over {1, 3} another 3: 2-3% of the whole fwd + bwd.)
#include "cpu/max_abs_cpu.h"

#include "cpu/cpu_simd.h"
#include "cpu/power_full_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <type_traits>
#ifdef POWER_ATTENTION_X86_DISPATCH
#include <immintrin.h>
#endif

namespace power_attention {
namespace cpu {
namespace {

// m = |x| where |x| > m or |x| is NaN: once NaN, m stays NaN (nothing compares greater than it).
template <typename T>
inline T max_abs_step(T m, T x) {
  const T a = std::abs(x);
  return a > m || a != a ? a : m;
}

// The largest |x| over rows [0, n) of w elements, ld apart, element by element.
template <typename T>
T block_max_abs_scalar(const T* x, int64_t n, int64_t w, int64_t ld) {
  T r = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < w; ++j) r = max_abs_step(r, x[i * ld + j]);
  return r;
}

#ifdef POWER_ATTENTION_X86_DISPATCH
// The same for fp32 in vector lanes: |x| by clearing the sign bit, the lanes' maxima by max_ps (exact: a maximum
// does not round), NaN kept aside as a mask of unordered compares (max_ps drops a NaN operand).
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))) float block_max_abs_avx512(
    const float* x, int64_t n, int64_t w, int64_t ld) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  __m512 m = _mm512_setzero_ps();
  __mmask16 nan = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * ld;
    for (int64_t j = 0; j < w; j += 16) {
      const __mmask16 in = w - j >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (w - j)) - 1u);
      const __m512 a = _mm512_andnot_ps(sign, _mm512_maskz_loadu_ps(in, xi + j));
      nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
      m = _mm512_maskz_max_ps(static_cast<__mmask16>(0xffff), m, a);  // (the unmasked form warns in GCC 12)
    }
  }
  if (nan != 0) return std::numeric_limits<float>::quiet_NaN();
  alignas(64) float lane[16];  // (GCC 12's _mm512_reduce_max_ps warns inside its header)
  _mm512_store_ps(lane, m);
  float r = 0;
  for (float v : lane) r = v > r ? v : r;
  return r;
}

__attribute__((target("avx2,fma"))) float block_max_abs_avx2(const float* x, int64_t n, int64_t w, int64_t ld) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
  float r = 0;
  const int64_t wb = w / 8 * 8;
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * ld;
    for (int64_t j = 0; j < wb; j += 8) {
      const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(xi + j));
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
      m = _mm256_max_ps(m, a);
    }
    for (int64_t j = wb; j < w; ++j) r = max_abs_step(r, xi[j]);
  }
  if (_mm256_movemask_ps(nan) != 0) return std::numeric_limits<float>::quiet_NaN();
  alignas(32) float lane[8];
  _mm256_store_ps(lane, m);
  for (float v : lane) r = max_abs_step(r, v);
  return r;
}
#endif

template <typename T>
T block_max_abs(const T* x, int64_t n, int64_t w, int64_t ld) {
#ifdef POWER_ATTENTION_X86_DISPATCH
  if constexpr (std::is_same_v<T, float>) {
    if (simd_level() == 2) return block_max_abs_avx512(x, n, w, ld);
    if (simd_level() == 1) return block_max_abs_avx2(x, n, w, ld);
  }
#endif
  return block_max_abs_scalar(x, n, w, ld);
}

// out[i] = the max-abs of row i of n rows of w elements, ld apart.
template <typename T>
void row_max_abs(const T* x, int64_t n, int64_t w, int64_t ld, T* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = block_max_abs(x + i * ld, 1, w, w);
}

// Each row's max-abs of x [b, t, h, w] (unit element stride) into out [b, t, h], rows in parallel.
template <typename T>
void rows_of(const at::Tensor& x, T* out) {
  const int64_t B = x.size(0), t = x.size(1), H = x.size(2), w = x.size(3);
  const int64_t s0 = x.stride(0), s1 = x.stride(1), s2 = x.stride(2);
  const T* base = x.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(w, 1));
  at::parallel_for(0, B * t, std::max<int64_t>(1, grain / std::max<int64_t>(H, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bi = r / t, ti = r % t;
      row_max_abs<T>(base + bi * s0 + ti * s1, H, w, s2, out + r * H);
    }
  });
}

struct Span {
  double largest = 0, smallest_positive = std::numeric_limits<double>::infinity();
};

// The largest value of m (NaN propagates) and its smallest positive one.
template <typename T>
Span span_of(const T* m, int64_t n) {
  Span s;
  for (int64_t i = 0; i < n; ++i) {
    const double a = static_cast<double>(m[i]);
    if (s.largest == s.largest && (a > s.largest || a != a)) s.largest = a;  // NaN, once met, stays
    if (a > 0 && a < s.smallest_positive) s.smallest_positive = a;
  }
  return s;
}

template <typename T>
std::vector<at::Tensor> extremes_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& log_g) {
  const int64_t B = q.size(0), t = q.size(1), hq = q.size(2), H = k.size(2);
  at::Tensor qa = at::empty({B, t, hq, 1}, q.options());
  rows_of<T>(q, qa.data_ptr<T>());
  std::vector<T> kr(static_cast<size_t>(B * k.size(1) * H));
  rows_of<T>(k, kr.data());
  at::Tensor ka = at::empty({B, 1, H, 1}, q.options());
  T* kap = ka.data_ptr<T>();
  const int64_t tk = k.size(1);
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t hi = 0; hi < H; ++hi) kap[bi * H + hi] = block_max_abs<T>(kr.data() + bi * tk * H + hi, tk, 1, H);
  const Span qs = span_of(qa.data_ptr<T>(), qa.numel()), ks = span_of(kap, ka.numel());
  at::Tensor stats = at::empty({log_g.defined() ? 5 : 4}, q.options().dtype(at::kDouble));
  double* st = stats.data_ptr<double>();
  st[0] = qs.largest, st[1] = qs.smallest_positive, st[2] = ks.largest, st[3] = ks.smallest_positive;
  if (log_g.defined()) st[4] = log_g.max().to(q.scalar_type()).item<double>();
  return {qa, ka, stats};
}

}  // namespace

float rows_max_abs(const float* x, int64_t n, int64_t w, int64_t ld) {
  return n > 0 && w > 0 ? block_max_abs<float>(x, n, w, ld) : 0.0f;
}

std::vector<at::Tensor> extremes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& log_g) {
  const bool shaped = q.dim() == 4 && k.dim() == 4 && q.scalar_type() == k.scalar_type() && q.numel() > 0 &&
                      k.numel() > 0 && q.stride(3) == 1 && k.stride(3) == 1;
  if (!shaped) return {};
  if (q.scalar_type() == at::kFloat) return extremes_of<float>(q, k, log_g);
  if (q.scalar_type() == at::kDouble) return extremes_of<double>(q, k, log_g);
  return {};
}

}  // namespace cpu
}  // namespace power_attention
