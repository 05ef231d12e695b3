// side_stream.h: a chain of kernels on a second stream beside the caller's current one, for stages that do not
// depend on each other (the fused scans fill one CTA a SM on as many SMs as their heads and tiles give; the in-chunk
// tiles or the queries' gradient fill the others).
//
//   SideStream side;                       // ordered after the current stream's work so far
//   side.run([&] { sympow2_scan_forward(...); });   // launched on the side stream (high priority)
//   tile_forward(...);                     // on the current stream, at the same time
//   side.join();                           // the current stream's later work waits for the side stream's
//
// Memory: tensors the side work reads or writes are made on the current stream before the SideStream is made (it
// orders the side stream after their writes) and live past join() (the caching allocator hands a block out again
// only to work after its release on the current stream, which is after the join). The side work returns no tensor
// it allocated itself.
//
// POWER_ATTENTION_CUDA_SIDE_STREAM=0 runs everything on the current stream (run() and join() do nothing more).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>

namespace power_attention {
namespace cuda {

// Whether stages run on a side stream (POWER_ATTENTION_CUDA_SIDE_STREAM unset or not "0"); read each call.
inline bool side_streams_enabled() {
  const char* s = std::getenv("POWER_ATTENTION_CUDA_SIDE_STREAM");
  return !(s && std::strcmp(s, "0") == 0);
}

class SideStream {
 public:
  SideStream() : main_(c10::cuda::getCurrentCUDAStream()) {
    if (!side_streams_enabled()) return;
    side_.emplace(c10::cuda::getStreamFromPool(/*isHighPriority=*/true, main_.device_index()));
    order(main_, *side_);
  }
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  // A destroyed SideStream that was not joined joins (an exception between run() and join() leaves the current
  // stream ordered after the side work all the same).
  ~SideStream() {
    if (side_ && !joined_) {
      try {
        join();
      } catch (...) {
      }
    }
  }

  // f() with the side stream current (its kernels, and the ATen ops in it, go there)
  template <class F>
  decltype(auto) run(F&& f) {
    if (!side_) return std::forward<F>(f)();
    c10::cuda::CUDAStreamGuard guard(*side_);
    return std::forward<F>(f)();
  }
  void join() {
    if (!side_ || joined_) return;
    joined_ = true;
    order(*side_, main_);
  }

 private:
  // later work on `after` waits for the work queued on `before` so far
  static void order(const c10::cuda::CUDAStream& before, const c10::cuda::CUDAStream& after) {
    const c10::cuda::CUDAGuard device(before.device_index());
    cudaEvent_t e = nullptr;
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    const cudaError_t rec = cudaEventRecord(e, before.stream());
    const cudaError_t wait = rec == cudaSuccess ? cudaStreamWaitEvent(after.stream(), e, 0) : rec;
    cudaEventDestroy(e);  // released once the recorded work is done
    C10_CUDA_CHECK(wait);
  }

  c10::cuda::CUDAStream main_;
  std::optional<c10::cuda::CUDAStream> side_;
  bool joined_ = false;
};

}  // namespace cuda
}  // namespace power_attention
