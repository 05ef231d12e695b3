// products.cpp: the degree-2 state products of the CPU path's chunked form alone (phi_products_cpu.h), one thread,
// d = e = 64 (D = 2080), the state augmented ([D, e + 1], rows e + 1 apart as the chunked form holds it).
//   products [rows] [calls]
// Prints, per kernel, the best of 7 timings of `calls` calls on `rows` rows (a chunk), and GFLOP/s counting
// 2 rows D (e + 1) flops a call (the normaliser column included).
#include "cpu/phi_products_cpu.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace pc = power_attention::cpu;

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atol(argv[1]) : 512, d = 64, e = 64, D = d * (d + 1) / 2, ld = e + 1;
  const int calls = argc > 2 ? std::atoi(argv[2]) : 10;
  if (!pc::phi_products_available()) {
    std::printf("the fused products do not run on this machine (no AVX2 / AVX-512)\n");
    return 1;
  }
  std::mt19937 gen(1);
  std::normal_distribution<float> nd;
  std::vector<float> x(n * d), scale(n, 0.5f), coef(D, 1.0f), A(D * ld), R(n * ld), out(n * ld), dx(n * d), ds(n);
  for (auto* v : {&x, &A, &R})
    for (float& f : *v) f = nd(gen);
  const pc::PhiRows rows{x.data(), d, n, d, scale.data(), coef.data()};
  const double flops = 2.0 * n * D * ld;
  auto time = [&](const char* name, auto&& f) {
    f();
    double best = 1e30;
    for (int k = 0; k < 7; ++k) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int c = 0; c < calls; ++c) f();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / calls);
    }
    std::printf("%-6s rows %5ld  %8.3f ms  %6.1f GFLOP/s\n", name, static_cast<long>(n), best * 1e3, flops / best * 1e-9);
  };
  time("apply", [&] { pc::phi_apply(rows, A.data(), ld, e, true, out.data(), ld); });                      // phi(X) A
  time("outer", [&] { pc::phi_outer(rows, R.data(), ld, R.data() + e, ld, e, true, 0.9f, A.data(), ld); });  // A += phi^T R
  time("grad", [&] { pc::phi_grad(rows, A.data(), ld, R.data(), ld, R.data() + e, ld, e, dx.data(), ds.data()); });
  return 0;
}
