// blas_threads.h: the CPU path's heads in parallel (for_each_head), each head's matrix products on its own thread.
#pragma once

#include "cpu/platform_util.h"

#include <ATen/Parallel.h>

#include <cstdint>
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

// Runs fn(bh) for every head, heads in parallel (one head per task).
template <typename F>
void for_each_head(int64_t BH, const F& fn) {
  if (BH > 1 && at::get_num_threads() > 1) {
    SingleThreadedBlas blas;
    at::parallel_for(0, BH, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t bh = h0; bh < h1; ++bh) fn(bh);
    });
  } else {
    for (int64_t bh = 0; bh < BH; ++bh) fn(bh);
  }
}

}  // namespace cpu
}  // namespace power_attention
