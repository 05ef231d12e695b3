// wgmma_sm90.cuh: the Hopper (sm_90a) tensor-core primitives: wgmma.mma_async with A in registers and B in
// shared memory, its shared-memory matrix descriptor, and the fences and group waits around it.
//
// Everything here assembles only for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); kernels that use it compile their body
// under POWER_ATTENTION_SM90A and an empty one elsewhere (the library's other architectures, the PTX for newer
// GPUs), and the host launches them only where sm90a_present() (cuda/common/sm90_select.h) says the device runs
// them.
//
// Operand layouts (PTX ISA, "Asynchronous warpgroup level matrix shared memory layout"):
//  - A from registers (m64 x k16, bf16): warp w of the warpgroup holds rows 16 w .. 16 w + 15 in mma.sync's
//    m16n8k16 A layout (registers 0-3: rows gr / gr + 8, columns 2 tg (+1) and 2 tg + 8 (+1)), so an ldmatrix.x4
//    of a row-major tile, or anything built in that layout, feeds it as is.
//  - The accumulator (m64 x N, fp32): warp w holds rows 16 w .. 16 w + 15; registers 4 j .. 4 j + 3 are the
//    m16n8 accumulator of columns 8 j .. 8 j + 7 in mma.sync's layout (rows gr / gr + 8, columns 2 tg, 2 tg + 1).
//  - B from shared memory without swizzle: "core matrices" of 8 x 8 elements, each 128 contiguous bytes of eight
//    16-byte rows. MN-major B (N contiguous, the transposed form, trans-b = 1): a core matrix holds 8 consecutive
//    k rows of 8 consecutive n columns, row r at +16 r bytes; LBO is the byte distance between core matrices
//    adjacent in k, SBO between core matrices adjacent in n.
#pragma once

#include <cstdint>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define POWER_ATTENTION_SM90A 1
#endif

namespace power_attention {
namespace cuda {
namespace wgmma {

using u32 = uint32_t;

// The descriptor of a no-swizzle operand at shared address `addr` (16-byte aligned) with leading / stride byte
// offsets lbo, sbo (multiples of 16, below 256 KiB).
__device__ __forceinline__ uint64_t desc_noswizzle(u32 addr, u32 lbo, u32 sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32);
}

#ifdef POWER_ATTENTION_SM90A
// Orders this warpgroup's earlier register writes (accumulators, A fragments) before the wgmma that follow.
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N committed groups of this warpgroup are still running.
template <int N>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Makes this thread's ordinary shared-memory writes (st.shared, cp.async) visible to the async proxy (wgmma,
// TMA); then a barrier among the writers.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Wgmma<N>::rs(d, a, b): d (m64 x N fp32 accumulator, N / 2 registers) += a (4 registers, bf16) b (bf16, k16 x N,
// MN-major, descriptor b); fence_operand(d) keeps the compiler from moving accesses to d across a wait.
template <int N>
struct Wgmma;

template <>
struct Wgmma<72> {
  static __device__ __forceinline__ void rs(float* d, const u32* a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %41, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n72k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35"
        "}, {%36, %37, %38, %39}, %40, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),
          "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
          "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
  }
  static __device__ __forceinline__ void fence_operand(float* d) {
#pragma unroll
    for (int i = 0; i < 36; ++i) asm volatile("" : "+f"(d[i])::"memory");
  }
};

template <>
struct Wgmma<136> {
  static __device__ __forceinline__ void rs(float* d, const u32* a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %73, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n136k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67"
        "}, {%68, %69, %70, %71}, %72, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),
          "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
          "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),
          "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),
          "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]),
          "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]),
          "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]),
          "+f"(d[65]), "+f"(d[66]), "+f"(d[67])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
  }
  static __device__ __forceinline__ void fence_operand(float* d) {
#pragma unroll
    for (int i = 0; i < 68; ++i) asm volatile("" : "+f"(d[i])::"memory");
  }
};
#endif  // POWER_ATTENTION_SM90A

}  // namespace wgmma
}  // namespace cuda
}  // namespace power_attention
