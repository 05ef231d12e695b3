// blas_threads.h: the CPU path's heads in parallel (for_each_head), each head's matrix products on its own thread.
#pragma once

#include "cpu/platform_util.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/util/ParallelGuard.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace power_attention {
namespace cpu {

// While heads run in parallel, each head's matrix products must run on its own thread. ATen keeps its own
// kernels single-threaded inside at::parallel_for, but an OpenBLAS built with pthreads (Bytedeco's) starts its
// own threads in every call: 2 heads x 2 BLAS threads on 2 cores was 4x slower than 1 BLAS thread (t = 4096,
// chunk 64). So OpenBLAS is held at one thread for the duration, in every OpenBLAS the process has loaded: Bytedeco's
// LibTorch links libopenblas_nolapack.so.0 and its openblas preset loads libopenblas.so.0 beside it (a perf
// profile found a guard holding only the latter while LibTorch's GEMMs ran on the former, threaded).
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() {
    for (const Lib& l : loaded()) {
      const int n = l.get();
      previous_.push_back(n);
      if (n > 1) l.set(1);
    }
  }
  ~SingleThreadedBlas() {
    const std::vector<Lib>& libs = loaded();
    for (size_t i = 0; i < libs.size(); ++i)
      if (previous_[i] > 1) libs[i].set(previous_[i]);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  struct Lib {
    void (*set)(int);
    int (*get)();
  };
  // The OpenBLAS libraries the process has loaded, looked up once.
  static const std::vector<Lib>& loaded() {
    static const std::vector<Lib> libs = [] {
      std::vector<Lib> v;
      for (const char* name : platform::openblas_library_names()) {
        auto set = reinterpret_cast<void (*)(int)>(platform::loaded_symbol(name, "openblas_set_num_threads"));
        auto get = reinterpret_cast<int (*)()>(platform::loaded_symbol(name, "openblas_get_num_threads"));
        if (set != nullptr && get != nullptr) v.push_back({set, get});
      }
      return v;
    }();
    return libs;
  }
  std::vector<int> previous_;
};

// Runs fn(bh) for every head, heads in parallel: at::get_num_threads() workers (the caller and threads started for
// the call) take the next head in turn. Not at::parallel_for: its inline OpenMP loop is serial in code compiled
// without -fopenmp, as this library is (the build links no OpenMP runtime of its own). Each worker runs with the
// caller's thread-local state (grad mode, dispatch keys) and ATen's parallel guard set, so that ATen's kernels stay
// on the worker's thread as they do inside at::parallel_for; the first exception is rethrown in the caller.
template <typename F>
void for_each_head(int64_t BH, const F& fn) {
  const int64_t workers = std::min<int64_t>(BH, at::get_num_threads());
  if (workers <= 1 || at::in_parallel_region()) {
    for (int64_t bh = 0; bh < BH; ++bh) fn(bh);
    return;
  }
  SingleThreadedBlas blas;
  const at::ThreadLocalState state;
  std::atomic<int64_t> next{0};
  std::mutex mutex;
  std::exception_ptr error;
  auto work = [&] {
    c10::ParallelGuard guard(true);
    for (int64_t bh = next.fetch_add(1); bh < BH; bh = next.fetch_add(1)) {
      try {
        fn(bh);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
        next.store(BH);
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (int64_t i = 1; i < workers; ++i) {
    try {
      pool.emplace_back([&] {
        at::ThreadLocalStateGuard tls(state);
        work();
      });
    } catch (const std::system_error&) {
      break;  // no thread to be had: the workers started so far (at least the caller) take every head
    }
  }
  work();
  for (std::thread& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace cpu
}  // namespace power_attention
