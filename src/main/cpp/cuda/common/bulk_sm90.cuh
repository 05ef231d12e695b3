// bulk_sm90.cuh: Hopper (sm_90a) bulk copies between shared and global memory (the tensor memory accelerator's
// plain, non-tensor form), the mbarrier a bulk load completes on, and stmatrix / ldmatrix of a tile held in the
// accumulator layout of mma.sync and wgmma (a thread's pair of row gr, columns 2 tg, 2 tg + 1 of each 8 x 8 matrix).
//
// A bulk copy moves `bytes` (a multiple of 16; both addresses 16-byte aligned) without the copying threads' load and
// store units: a store runs from shared memory written by ordinary stores, made visible to the async proxy by
// fence_proxy_async() (wgmma_sm90.cuh) and a barrier among the writers; its shared source may be written again only
// after wait_read<0>(). A load completes on an mbarrier that the issuing thread arms with the byte count.
#pragma once

#include "cuda/common/wgmma_sm90.cuh"

#include <cstdint>

namespace power_attention {
namespace cuda {
namespace bulk {

using u32 = uint32_t;

#ifdef POWER_ATTENTION_SM90A
// Shared src -> global dst, in this thread's current bulk group.
__device__ __forceinline__ void store(void* dst, u32 src, u32 bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's bulk groups still read their shared sources / are still running.
template <int N>
__device__ __forceinline__ void wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void wait_all() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}

// An mbarrier at shared address bar expecting `count` arrivals a phase; fence_init() makes the initialisation
// visible to the async proxy (then a barrier among the barrier's users).
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
// Global src -> shared dst; this thread's arrival on bar with the byte count; the phase completes when the bytes
// have landed.
__device__ __forceinline__ void load(u32 dst, const void* src, u32 bytes, u32 bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
// Waits until the phase of bar with parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// This thread's arrival on bar (count one of the phase's arrivals).
__device__ __forceinline__ void mbar_arrive(u32 bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// This thread's arrival on bar once all of its earlier cp.async copies have landed (one of the phase's expected
// arrivals: the count is not raised first).
__device__ __forceinline__ void cp_async_arrive(u32 bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

// stmatrix / ldmatrix (not transposed) of four / two 8 x 8 b16 matrices at shared address addr + OFF bytes: lanes
// 8 m .. 8 m + 7 give the row addresses of matrix m; register m of every thread is its pair of matrix m.
template <int OFF>
__device__ __forceinline__ void stsm4_at(u32 addr, u32 r0, u32 r1, u32 r2, u32 r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0+%5], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3), "n"(OFF)
               : "memory");
}
template <int OFF>
__device__ __forceinline__ void stsm2_at(u32 addr, u32 r0, u32 r1) {
  asm volatile("stmatrix.sync.aligned.m8n8.x2.shared.b16 [%0+%3], {%1, %2};\n" ::"r"(addr), "r"(r0), "r"(r1), "n"(OFF)
               : "memory");
}
template <int OFF>
__device__ __forceinline__ void ldsm4_at(u32* r, u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4+%5];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr), "n"(OFF)
               : "memory");
}
template <int OFF>
__device__ __forceinline__ void ldsm2_at(u32* r, u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2+%3];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr), "n"(OFF)
               : "memory");
}
#endif

}  // namespace bulk
}  // namespace cuda
}  // namespace power_attention
