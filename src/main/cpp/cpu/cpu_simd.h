// cpu_simd.h: the CPU loops' instruction sets. The library is built for baseline x86-64 (it must load anywhere),
// so each hot loop is compiled three times, for AVX-512 (F, VL, BW, DQ with FMA), for AVX2 with FMA and for the
// baseline, and a dispatcher calls the best one the machine and its OS support (cpuid and xgetbv, checked once;
// no runtime library needed). Elsewhere (other compilers, other architectures): the baseline only.
//
// Use: write the loop as `template <typename T> POWER_ATTENTION_INLINE R name_impl(params)`, then
// POWER_ATTENTION_SIMD_VARIANTS(R, name, (params), (args)) defines `template <typename T> R name(params)`.
#pragma once

#include <algorithm>
#include <cstdlib>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <cpuid.h>
#define POWER_ATTENTION_X86_DISPATCH 1
#endif

#if defined(_MSC_VER)
#define POWER_ATTENTION_INLINE __forceinline
#else
#define POWER_ATTENTION_INLINE __attribute__((always_inline)) inline
#endif

// Lanes of the blocked reductions (sums, maxima) in the row loops: a fixed-size inner loop the compiler turns into
// vector registers without reassociating anything it was not told to.
#define POWER_ATTENTION_LANES 16

namespace power_attention {

/// What the machine and its OS support: 2: AVX-512 (F, VL, BW, DQ) and FMA with the OS saving zmm state; 1: AVX2 and
/// FMA with ymm state; 0: baseline.
inline int machine_simd_level() {
#ifdef POWER_ATTENTION_X86_DISPATCH
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (!osxsave || !avx) return 0;
  unsigned xlo = 0, xhi = 0;
  __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  const bool ymm = (xlo & 0x6) == 0x6, zmm = (xlo & 0xe6) == 0xe6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  const bool avx2 = b & (1u << 5), f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30),
             vl = b & (1u << 31);
  if (zmm && fma && f && dq && bw && vl) return 2;
  if (ymm && fma && avx2) return 1;
  return 0;
#else
  return 0;
#endif
}

/// The variants the CPU loops run (checked once): machine_simd_level(), capped by POWER_ATTENTION_CPU_SIMD=0 or 1
/// (to test the baseline or AVX2 variants on a machine with more).
inline int simd_level() {
  static const int level = [] {
    const char* cap = std::getenv("POWER_ATTENTION_CPU_SIMD");
    const bool capped = cap != nullptr && (cap[0] == '0' || cap[0] == '1') && cap[1] == '\0';
    return std::min(capped ? cap[0] - '0' : 2, machine_simd_level());
  }();
  return level;
}

/// While alive, this thread's SSE/AVX arithmetic flushes subnormal results to zero and reads subnormal operands as
/// zero (MXCSR's FTZ and DAZ bits); the previous mode comes back on destruction. For the fp32 kernels, whose weights
/// below FLT_MIN carry nothing by design (SPEC §3's weights relative to the row's largest, flushed to 0 there anyway):
/// without it a gated row's far keys (weights e^-100 at t = 2048 with log gates of -0.05 a token) made subnormal
/// products and intermediates, each a microcode assist of about a hundred cycles, and the quadratic form took up to
/// twice its time. Elsewhere (other compilers, other architectures): nothing.
/// Whether this thread's SSE/AVX arithmetic flushes subnormal results to zero and reads subnormal operands as zero
/// (both MXCSR bits set, as FlushSubnormals sets them): results then never come out subnormal. Elsewhere false.
inline bool flushing_subnormals() {
#ifdef POWER_ATTENTION_X86_DISPATCH
  return (__builtin_ia32_stmxcsr() & 0x8040u) == 0x8040u;
#else
  return false;
#endif
}

class FlushSubnormals {
 public:
#ifdef POWER_ATTENTION_X86_DISPATCH
  FlushSubnormals() : saved_(__builtin_ia32_stmxcsr()) { __builtin_ia32_ldmxcsr(saved_ | kFtzDaz); }
  ~FlushSubnormals() { __builtin_ia32_ldmxcsr(saved_); }
#else
  FlushSubnormals() {}  // user-provided: `const FlushSubnormals f;` needs one on every compiler
#endif
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;

 private:
#ifdef POWER_ATTENTION_X86_DISPATCH
  static constexpr unsigned kFtzDaz = 0x8040;  // bit 15 flush to zero, bit 6 denormals are zero
  unsigned saved_;
#endif
};

}  // namespace power_attention

// POWER_ATTENTION_SIMD_VARIANTS_OF(R, name, params, args, X512, X2, X0): the same with extra template arguments for
// each variant's name##_impl<T X> (X empty, or POWER_ATTENTION_TARGS(...): ", ..."), e.g. its vector type.
#define POWER_ATTENTION_TARGS(...) , __VA_ARGS__
#ifdef POWER_ATTENTION_X86_DISPATCH
#define POWER_ATTENTION_SIMD_VARIANTS_OF(R, name, params, args, X512, X2, X0)                             \
  template <typename T>                                                                                    \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))) R name##_avx512 params {         \
    return name##_impl<T X512> args;                                                                       \
  }                                                                                                        \
  template <typename T>                                                                                    \
  __attribute__((target("avx2,fma"))) R name##_avx2 params {                                              \
    return name##_impl<T X2> args;                                                                         \
  }                                                                                                        \
  template <typename T>                                                                                    \
  R name params {                                                                                          \
    switch (::power_attention::simd_level()) {                                                             \
      case 2:                                                                                              \
        return name##_avx512<T> args;                                                                      \
      case 1:                                                                                              \
        return name##_avx2<T> args;                                                                        \
      default:                                                                                             \
        return name##_impl<T X0> args;                                                                     \
    }                                                                                                      \
  }
#else
#define POWER_ATTENTION_SIMD_VARIANTS_OF(R, name, params, args, X512, X2, X0) \
  template <typename T>                                                       \
  R name params {                                                             \
    return name##_impl<T X0> args;                                            \
  }
#endif
#define POWER_ATTENTION_SIMD_VARIANTS(R, name, params, args) POWER_ATTENTION_SIMD_VARIANTS_OF(R, name, params, args, , , )
