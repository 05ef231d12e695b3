// main.cpp: the GPU harness's modes (harness.h names the files behind each).
//
//   power_attention_gpu test            SPEC §7/§8 cases on CUDA against an fp64 CPU evaluation of SPEC §2 (forward
//                                       and all gradients; outputs poisoned with NaN; fresh random inputs per case);
//                                       on Hopper then the cases that reach an sm_90a kernel again on each other
//                                       kernel set, on the same inputs
//   power_attention_gpu bench [json]    fwd and fwd+bwd at b*t = 65536, h = 8, d = 64, bf16, deg 2, gated, for each
//                                       kernel set, against at::scaled_dot_product_attention's flash and cuDNN
//                                       backends in the same run; a summary table last
//   power_attention_gpu decode          the decode step against recomputing and against SDPA over a KV cache
//   power_attention_gpu repeat [n] [s] [seed]  a few cases (those whose name holds s) drawn n times (fresh inputs
//                                       each time, or those of one seed), to see their spread
//                                       (among them strong decay: log_sigmoid(N - 1), (N - 2), and -20 a token)
//   power_attention_gpu kernels [n]     the degree-2 kernel checks alone, n times (and, on Hopper, each sm_90a
//                                       kernel set's query products and gradients through phi against the sm_80
//                                       kernel's)
//   power_attention_gpu scans           the fused scans alone at the benchmark's long shapes: the sm_80 kernel and
//                                       each sm_90a shape, checked against it, then timed
//   power_attention_gpu streams [n]     the chunked form with its scans on a side stream against one stream:
//                                       outputs and gradients bitwise equal, n draws of a few cases
//   power_attention_gpu profile c t     one fwd+bwd at chunk c (0: quadratic) and length t, for ncu
//   power_attention_gpu timeline c t    host and GPU time stamps of a fwd+bwd there (where the wall time goes)
// The kernel sets (cuda/common/sm90_select.h: sm80, sm90a, sm90a-wg4, sm90a-scan): the default is what the library runs here
// (POWER_ATTENTION_CUDA_KERNELS, when set, decides it); on Hopper every other set follows it, or those
// POWER_ATTENTION_HARNESS_SETS lists (comma-separated; empty: none).
#include "harness.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  using namespace harness;
  const std::string mode = argc > 1 ? argv[1] : "test";
  try {
    if (mode == "test") return run_tests();
    if (mode == "bench") return run_bench(argc > 2 ? argv[2] : nullptr);
    if (mode == "decode") return run_decode_bench();
    if (mode == "streams") return run_stream_check(argc > 2 ? std::atoi(argv[2]) : 5);
    if (mode == "repeat") {
      const int n = argc > 2 ? std::atoi(argv[2]) : 10;
      std::mt19937_64 rng(std::random_device{}());
      const std::vector<Case> cs = {{1, 200, 4, 2, 32, 32, 2, 64, true, at::kHalf, 1, -1},
                                    {1, 200, 4, 2, 32, 32, 2, 64, true, at::kBFloat16, 1, -1},
                                    {1, 200, 4, 2, 32, 32, 2, 64, true, at::kHalf},
                                    {2, 100, 8, 2, 32, 32, 2, 32, true, at::kBFloat16},
                                    {2, 100, 8, 2, 32, 32, 2, 0, true, at::kBFloat16},
                                    {1, 200, 2, 1, 64, 64, 2, 64, true, at::kBFloat16, 1, -2},
                                    {1, 200, 2, 1, 64, 64, 2, 0, true, at::kBFloat16, 1, -2},
                                    gated({1, 600, 4, 2, 64, 64, 2, 0, true, at::kHalf}, -20, 0, true),
                                    gated({1, 600, 4, 2, 64, 64, 2, 64, true, at::kHalf}, -20, 0, true),
                                    {1, 97, 2, 1, 16, 16, 4, 0, true, at::kFloat},
                                    {1, 97, 2, 1, 16, 16, 4, 16, true, at::kFloat}};
      const std::string only = argc > 3 ? argv[3] : "";  // cases whose name holds this
      if (argc > 4) force_seed(std::strtoull(argv[4], nullptr, 10));
      for (const Case& c : cs)
        if (name(c).find(only) != std::string::npos)
          for (int i = 0; i < n; ++i) report(name(c), run_case(c, rng), tolerance(c.dtype));
      return failures() > 0 ? 1 : 0;
    }
    if (mode == "kernels") {
      for (int i = 0; i < (argc > 2 ? std::atoi(argv[2]) : 1); ++i) {
        check_sympow2_kernels();
        if (hopper())
          for (const char* set : {"sm90a", "sm90a-wg4", "sm90a-scan"}) {
            check_query_set(set);
            check_scan_set(set);
            check_grad_set(set);
          }
      }
      return failures() > 0 ? 1 : 0;
    }
    if (mode == "scans") return hopper() ? run_scan_bench() : 0;
    if (mode == "timeline")
      return run_timeline(argc > 2 ? std::atoll(argv[2]) : 0, argc > 3 ? std::atoll(argv[3]) : 1024);
    if (mode == "profile")
      return run_profile(argc > 2 ? std::atoll(argv[2]) : 256, argc > 3 ? std::atoll(argv[3]) : 65536);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  std::fprintf(stderr, "usage: %s test | bench [json] | decode | repeat [n] [name part] [seed] | kernels [n] | scans | profile chunk t | timeline chunk t\n", argv[0]);
  return 2;
}
