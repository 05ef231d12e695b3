// cpu_simd.h: the CPU loops' instruction sets. The library is built for baseline x86-64 (it must load anywhere),
// so its hot loops are compiled once more for AVX2 and once for AVX-512F (which brings FMA), and the loader picks the best one
// the machine has (GCC's target_clones, an ifunc). Elsewhere (other compilers, other architectures): one version.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define POWER_ATTENTION_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define POWER_ATTENTION_SIMD_CLONES
#endif

// Lanes of the blocked reductions (sums, maxima) in the row loops: a fixed-size inner loop the compiler turns into
// vector registers without reassociating anything it was not told to.
#define POWER_ATTENTION_LANES 16
