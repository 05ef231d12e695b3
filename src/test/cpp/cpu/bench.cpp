// bench.cpp: a native CPU benchmark of power_full against LibTorch's causal SDPA, for profiling without the JVM
// (callgrind, perf). b = 1, h = 8, d = e = 64, deg 2, gated, fp32, as CpuBenchmark.java.
//   bench <kernel> <t> <chunk> [reps]
//     kernel: power | sdpa (fwd+bwd), power-fwd | sdpa-fwd (forward, no grad), decode (one step, no grad)
//     chunk: 0 = quadratic form, -1 = the op's default (no chunk size given)
// Prints the median, min and max ms of reps timed calls after one warm-up, the median CPU time of a call (all
// threads; run with OMP_WAIT_POLICY=passive so that waiting threads do not spin), and its peak resident growth.
#include "power_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace pa = power_attention;

static long status_kib(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(field, 0) == 0) return std::atol(line.c_str() + std::string(field).size());
  return 0;
}

static double cpu_ms() {  // CPU time of the whole process (all threads)
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static long reset_peak() {
  std::ofstream("/proc/self/clear_refs") << "5";
  return status_kib("VmRSS:");
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: bench power|sdpa|power-fwd|sdpa-fwd|decode t chunk [reps]\n");
    return 2;
  }
  const std::string kernel = argv[1];
  const int64_t t = std::atol(argv[2]), chunk = std::atol(argv[3]);
  const int reps = argc > 4 ? std::atoi(argv[4]) : 5;
  const int64_t B = 1, H = 8, D = 64;
  const bool fwd_only = kernel.size() > 4 && kernel.substr(kernel.size() - 4) == "-fwd";
  std::vector<double> ms, cpu;
  double peak = 0;
  for (int r = -1; r < reps; ++r) {
    at::manual_seed(r + 2);
    const bool grad = !fwd_only && kernel != "decode";
    at::Tensor q = torch::randn({B, t, H, D}).requires_grad_(grad);
    at::Tensor k = torch::randn({B, t, H, D}).requires_grad_(grad);
    at::Tensor v = torch::randn({B, t, H, D}).requires_grad_(grad);
    at::Tensor lg = at::log_sigmoid(at::randn({B, t, H}) + 3.0).requires_grad_(grad);
    at::Tensor dy = at::randn({B, t, H, D});
    at::Tensor S, s;
    if (kernel == "decode") {
      const int64_t Dm = pa::state_dim(D, 2);
      S = at::randn({B, H, Dm, D}).abs_();
      s = at::randn({B, H, Dm}).abs_();
    }
    const long base = reset_peak();
    const auto start = std::chrono::steady_clock::now();
    const double cpu0 = cpu_ms();
    {
      at::AutoGradMode mode(grad);
      at::Tensor y;
      if (kernel == "sdpa" || kernel == "sdpa-fwd") {
        y = at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), {}, 0.0, true)
                .transpose(1, 2);
      } else if (kernel == "decode") {
        y = pa::power_decode_step(q.select(1, 0), k.select(1, 0), v.select(1, 0), lg.select(1, 0), S, s, 2)[0];
      } else {
        pa::PowerFullOptions o;
        if (chunk >= 0) o.chunk_size = chunk == 0 ? std::optional<int64_t>() : std::optional<int64_t>(chunk);
        if (chunk == -1) o.chunk_size.reset();
        y = pa::power_full(q, k, v, lg, o);
      }
      if (grad) torch::autograd::backward({y}, {dy});
    }
    const double el = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (r >= 0) {
      ms.push_back(el);
      cpu.push_back(cpu_ms() - cpu0);
      peak = std::max(peak, (status_kib("VmHWM:") - base) / 1024.0);
    }
  }
  std::sort(ms.begin(), ms.end());
  std::sort(cpu.begin(), cpu.end());
  std::printf("%-10s t=%6ld chunk=%5ld threads=%d  median %9.2f ms  min %9.2f  max %9.2f  cpu %9.2f ms  peak +%7.1f MiB\n",
              kernel.c_str(), t, chunk, at::get_num_threads(), ms[ms.size() / 2], ms.front(), ms.back(),
              cpu[cpu.size() / 2], peak);
  return 0;
}
