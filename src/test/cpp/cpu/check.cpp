// check.cpp: the CPU path's correctness without the JVM (build.sh check): power_full against the plain-ATen
// quadratic reference evaluated in fp64, forward and all four gradients, fresh random inputs per case, relative L2
// error against SPEC §7 bounds; and SPEC §6: a sequence in two pieces carrying the state, and decode steps from it,
// against the whole.
#include "cpu/power_full_cpu.h"
#include "power_attention.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <tuple>
#include <string>
#include <vector>

namespace pa = power_attention;

struct Case {
  int64_t b, t, hq, h, d, e, p;
  int64_t chunk;  // 0: quadratic
  bool gate;
  at::ScalarType dtype;
  at::Device device = at::kCPU;
  double gmul = 1;  // the log gates times this (negative: gates above 1)
};

static std::string name(const Case& c) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "b%ld-t%ld-hq%ld-h%ld-d%ld-e%ld-p%ld-c%ld-%s-%s-%s%s", c.b, c.t, c.hq, c.h, c.d,
                c.e, c.p, c.chunk, c.gate ? "gated" : "nogate", c10::toString(c.dtype), c.device.str().c_str(),
                c.gmul == 1 ? "" : ("-gx" + std::to_string(static_cast<int>(c.gmul))).c_str());
  return buf;
}

static double rel(const at::Tensor& x, const at::Tensor& ref) {
  const at::Tensor a = x.to(at::kCPU, at::kDouble), r = ref.to(at::kCPU, at::kDouble);
  if (!at::isfinite(a).all().item<bool>()) return INFINITY;
  return (a - r).norm().item<double>() / std::max(r.norm().item<double>(), 1e-300);
}

struct Result {
  double y, dq, dk, dv, dg;
};

static Result run_case(const Case& c) {
  at::Tensor q = at::randn({c.b, c.t, c.hq, c.d}, at::kDouble);
  at::Tensor k = at::randn({c.b, c.t, c.h, c.d}, at::kDouble);
  at::Tensor v = at::randn({c.b, c.t, c.h, c.e}, at::kDouble);
  at::Tensor lg = c.gate ? at::log_sigmoid(at::randn({c.b, c.t, c.h}, at::kDouble) + 3) * c.gmul : at::Tensor();
  at::Tensor dy = at::randn({c.b, c.t, c.hq, c.e}, at::kDouble);
  // inputs rounded to the tested dtype, so reference and kernel see the same numbers
  auto cast = [&](const at::Tensor& x) { return x.to(c.dtype).to(at::kDouble); };
  q = cast(q), k = cast(k), v = cast(v);

  auto leaf = [](const at::Tensor& x, at::ScalarType dt, at::Device dev) {
    return x.to(dev, dt).detach().requires_grad_(true);
  };
  // reference, fp64 CPU, quadratic form
  at::Tensor rq = leaf(q, at::kDouble, at::kCPU), rk = leaf(k, at::kDouble, at::kCPU), rv = leaf(v, at::kDouble, at::kCPU);
  at::Tensor rg = c.gate ? leaf(lg, at::kDouble, at::kCPU) : at::Tensor();
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  at::Tensor ry = pa::reference::power_full_quadratic(rq, rk, rv, rg, c.p, scale);
  std::vector<at::Tensor> rin = {rq, rk, rv};
  if (c.gate) rin.push_back(rg);
  auto rgrads = torch::autograd::grad({ry}, rin, {dy});

  at::Tensor xq = leaf(q, c.dtype, c.device), xk = leaf(k, c.dtype, c.device), xv = leaf(v, c.dtype, c.device);
  at::Tensor xg = c.gate ? leaf(lg, c.dtype == at::kDouble ? at::kDouble : at::kFloat, c.device) : at::Tensor();
  pa::PowerFullOptions o;
  o.degree = c.p;
  if (c.chunk > 0) o.chunk_size = c.chunk;
  at::Tensor xy = pa::power_full(xq, xk, xv, xg, o);
  std::vector<at::Tensor> xin = {xq, xk, xv};
  if (c.gate) xin.push_back(xg);
  auto xgrads = torch::autograd::grad({xy}, xin, {dy.to(c.device, c.dtype)});
  Result r;
  r.y = rel(xy, ry);
  r.dq = rel(xgrads[0], rgrads[0]);
  r.dk = rel(xgrads[1], rgrads[1]);
  r.dv = rel(xgrads[2], rgrads[2]);
  r.dg = c.gate ? rel(xgrads[3], rgrads[3]) : 0.0;
  return r;
}

// The fp32 quadratic form reads the caller's layout in place: strided views (every fourth token of a larger tensor,
// heads of a wider one), dy broadcast over batch and heads (stride 0); and k broadcast over the tokens (token
// stride 0), where the gradients of q and k vanish in exact arithmetic (all keys equal), so y, dv and dg are
// compared there. Against the fp64 reference on the same values.
static bool check_strided() {
  const int64_t b = 2, t = 150, h = 3, d = 32, e = 48;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  at::Tensor qb = at::randn({b, 4 * t, h + 1, d}), vb = at::randn({b, t, 2 * h, e}), kb = at::randn({b, t, h, 2 * d});
  at::Tensor q = qb.slice(1, 0, 4 * t, 4).narrow(2, 1, h), v = vb.narrow(2, h, h);
  at::Tensor lg = at::log_sigmoid(at::randn({b, t, h}) + 3);
  at::Tensor dy = at::randn({1, t, 1, e}).expand({b, t, h, e});
  bool ok = true;
  for (bool broadcast_k : {false, true}) {
    at::Tensor k = broadcast_k ? at::randn({b, 1, h, d}).expand({b, t, h, d}) : kb.narrow(3, d, d);
    auto leaf = [](const at::Tensor& x, at::ScalarType dt) { return x.to(dt).detach().requires_grad_(true); };
    at::Tensor rq = leaf(q, at::kDouble), rk = leaf(k, at::kDouble), rv = leaf(v, at::kDouble);
    at::Tensor rg = leaf(lg, at::kDouble);
    at::Tensor ry = pa::reference::power_full_quadratic(rq, rk, rv, rg, 2, scale);
    auto rgr = torch::autograd::grad({ry}, {rq, rk, rv, rg}, {dy.to(at::kDouble)});
    at::Tensor xq = q.detach().requires_grad_(true), xk = k.detach().requires_grad_(true);
    at::Tensor xv = v.detach().requires_grad_(true), xg = lg.detach().requires_grad_(true);
    at::Tensor xy = pa::power_full(xq, xk, xv, xg, pa::PowerFullOptions());
    auto xgr = torch::autograd::grad({xy}, {xq, xk, xv, xg}, {dy});
    const double ey = rel(xy, ry);
    double eg = 0;
    for (int i = broadcast_k ? 2 : 0; i < 4; ++i) eg = std::max(eg, rel(xgr[i], rgr[i]));
    const bool good = ey <= 1e-5 && eg <= 1e-4;
    std::printf("%-4s strided views, dy broadcast%s, fp32 quadratic: y %.2e, gradients %.2e\n", good ? "ok" : "FAIL",
                broadcast_k ? ", k broadcast over tokens (dv, dg)" : "", ey, eg);
    ok = ok && good;
  }
  return ok;
}

// The CPU path's extremes (power_full_cpu.h) against ATen's reductions, bitwise: fp32 and fp64, rows not a multiple
// of 16 long, heads of a transposed layout, a zero row, an all-zero k head, inf and NaN (a NaN row is no positive
// one; NaN propagates to the largest), log gates with and without a NaN.
static bool check_extremes() {
  bool ok = true;
  const double inf = std::numeric_limits<double>::infinity();
  int n = 0;
  for (auto dt : {at::kFloat, at::kDouble})
    for (int64_t d : {13, 64})
      for (int variant = 0; variant < 5; ++variant) {
        const int64_t b = 2, t = 37, hq = 4, h = 2;
        at::Tensor q = at::randn({b, hq, t, d}, dt).transpose(1, 2);  // [b, t, hq, d], not contiguous
        at::Tensor k = at::randn({b, t, h, d}, dt) * 3;
        at::Tensor lg = at::log_sigmoid(at::randn({b, t, h}) + 3);
        q.select(1, 5).select(1, 2).zero_();
        if (variant == 1) q.index_put_({1, 7, 3, d - 1}, inf), k.select(0, 1).select(2, 0).zero_();
        if (variant == 2) q.index_put_({0, 2, 1, 3}, std::nan("")), k.index_put_({1, 9, 1, d / 2}, std::nan(""));
        if (variant == 3) lg.index_put_({0, 4, 1}, std::nan(""));
        if (variant == 4) q.zero_();
        const std::vector<at::Tensor> got = pa::cpu::extremes(q, k, variant == 0 ? at::Tensor() : lg);
        const at::Tensor qa = at::linalg_vector_norm(q, inf, {-1}, true, dt);
        const at::Tensor ka = at::linalg_vector_norm(k, inf, {1, 3}, true, dt);
        const at::Tensor big = at::full({}, inf, qa.options());
        std::vector<at::Tensor> parts = {qa.max(), at::where(qa > 0, qa, big).min(), ka.max(),
                                         at::where(ka > 0, ka, big).min()};
        if (variant != 0) parts.push_back(lg.max().to(dt));
        const at::Tensor stats = at::stack(parts).to(at::kDouble);
        auto same = [](const at::Tensor& x, const at::Tensor& y) {  // bitwise but NaN = NaN
          return x.sizes() == y.sizes() && x.scalar_type() == y.scalar_type() && at::allclose(x, y, 0.0, 0.0, true);
        };
        const bool good = got.size() == 3 && same(got[0], qa) && same(got[1], ka) && same(got[2], stats);
        if (!good) std::printf("FAIL extremes %s d %ld variant %d\n", dt == at::kFloat ? "fp32" : "fp64",
                               static_cast<long>(d), variant);
        ok = ok && good;
        ++n;
      }
  if (ok) std::printf("ok   extremes: %d layouts and value sets bitwise equal to ATen's reductions\n", n);
  return ok;
}

// SPEC §6: a sequence in two pieces, carrying the state, equals the whole; gradients too (fp64).
static bool check_pieces(int64_t t, int64_t split, int64_t chunk, int64_t p, bool gate) {
  const int64_t b = 2, hq = 4, h = 2, d = 8, e = 8;
  at::Tensor q = at::randn({b, t, hq, d}, at::kDouble).requires_grad_(true);
  at::Tensor k = at::randn({b, t, h, d}, at::kDouble).requires_grad_(true);
  at::Tensor v = at::randn({b, t, h, e}, at::kDouble).requires_grad_(true);
  at::Tensor lg = gate ? at::log_sigmoid(at::randn({b, t, h}, at::kDouble) + 3).requires_grad_(true) : at::Tensor();
  at::Tensor dy = at::randn({b, t, hq, e}, at::kDouble);
  pa::PowerFullOptions o;
  o.degree = p;
  if (chunk > 0) o.chunk_size = chunk;
  std::vector<at::Tensor> in = {q, k, v};
  if (gate) in.push_back(lg);
  at::Tensor whole = pa::power_full(q, k, v, lg, o);
  auto gw = torch::autograd::grad({whole}, in, {dy});
  auto piece = [&](const at::Tensor& x, int64_t a, int64_t n) { return x.narrow(1, a, n); };
  const int64_t r = t - split;
  auto first = pa::power_full_with_state(piece(q, 0, split), piece(k, 0, split), piece(v, 0, split),
                                         gate ? piece(lg, 0, split) : at::Tensor(), o, at::Tensor(), at::Tensor());
  auto second = pa::power_full_with_state(piece(q, split, r), piece(k, split, r), piece(v, split, r),
                                          gate ? piece(lg, split, r) : at::Tensor(), o, first[1], first[2]);
  at::Tensor y = at::cat({first[0], second[0]}, 1);
  auto gp = torch::autograd::grad({y}, in, {dy});
  double err = rel(y, whole);
  for (size_t i = 0; i < in.size(); ++i) err = std::max(err, rel(gp[i], gw[i]));
  // decode from the state after the first piece, one token at a time
  at::NoGradGuard ng;
  at::Tensor S = first[1], sn = first[2];
  double derr = 0;
  for (int64_t i = split; i < t; ++i) {
    auto st = pa::power_decode_step(q.select(1, i), k.select(1, i), v.select(1, i),
                                    gate ? lg.select(1, i) : at::Tensor(), S, sn, p);
    S = st[1], sn = st[2];
    derr = std::max(derr, rel(st[0], whole.select(1, i)));
  }
  const bool ok = err < 1e-9 && derr < 1e-9;
  std::printf("%-4s pieces t%ld split%ld c%ld p%ld %s: piecewise %.2e, decode %.2e\n", ok ? "ok" : "FAIL", t, split,
              chunk, p, gate ? "gated" : "nogate", err, derr);
  return ok;
}

int main(int argc, char** argv) {
  at::manual_seed(0);
  std::vector<Case> cases;
  for (auto dt : {at::kDouble, at::kFloat, at::kBFloat16}) {
    cases.push_back({1, 97, 2, 1, 16, 16, 2, 16, true, dt});
    cases.push_back({2, 64, 4, 2, 16, 32, 2, 0, true, dt});
    cases.push_back({1, 65, 2, 2, 8, 8, 3, 16, true, dt});
    cases.push_back({1, 40, 1, 1, 8, 8, 4, 8, false, dt});
    cases.push_back({1, 33, 4, 1, 8, 16, 1, 5, true, dt});
    cases.push_back({1, 33, 2, 1, 8, 16, 1, 0, true, dt});
    cases.push_back({1, 30, 2, 1, 8, 16, 3, 1, true, dt});
  }
  // The degree-2 fp32 state products (phi_products_cpu.h) at their edges: D not a multiple of the 48-feature tile
  // (d = 13: D = 91; d = 7: D = 28 < 48), e not a multiple of 16 and over the 64 columns of a micro-kernel (17, 40,
  // 70, 130), rows over the 128 of a tile (chunk 150; grouped queries, 3 x 64 rows), t not a multiple of the chunk,
  // e != d, no gates; and the shape the benchmarks run.
  for (auto dt : {at::kFloat, at::kDouble}) {
    cases.push_back({1, 331, 3, 1, 13, 40, 2, 64, true, dt});
    cases.push_back({1, 200, 2, 2, 7, 70, 2, 48, true, dt});
    cases.push_back({1, 301, 1, 1, 20, 17, 2, 150, true, dt});
    cases.push_back({2, 190, 2, 1, 16, 130, 2, 32, false, dt});
    cases.push_back({1, 520, 8, 8, 64, 64, 2, 128, true, dt});
  }
  // The fp32 quadratic form's kernels (attention_tile_cpu.h) at their edges: t not a multiple of the 64-token tile
  // or of 16 keys, grouped queries, e and d not multiples of 16 and e over 64 columns, degree 4, no gates, strong
  // decay (rows whose weights leave the float range take the log-space form) and gates above 1; d = 128 over the
  // 64-row K blocks of the micro-kernels (S = Q K^T, dK^T) with e = 75 ending inside an AVX2 vector, and as a
  // chunked form (D = 8256 features, e + 1 = 76 state columns).
  for (auto dt : {at::kFloat, at::kDouble}) {
    cases.push_back({1, 150, 1, 1, 128, 75, 2, 0, true, dt});
    cases.push_back({1, 100, 2, 1, 128, 75, 2, 32, true, dt});
    cases.push_back({1, 301, 3, 1, 20, 17, 2, 0, true, dt});
    cases.push_back({2, 150, 2, 2, 16, 130, 4, 0, true, dt});
    cases.push_back({1, 200, 1, 1, 64, 64, 2, 0, false, dt});
    cases.push_back({1, 257, 2, 2, 32, 48, 2, 0, true, dt, at::kCPU, 40});
    cases.push_back({1, 160, 2, 1, 16, 32, 2, 0, true, dt, at::kCPU, -15});
  }
  // The chunked form reading the caller's tensors in place (t a multiple of the chunk; fp32): b > 1 with g = 1,
  // h = 1 with grouped queries, an ungated case; g = 2 with h = 2 (laid out as before); and the benchmarks' shape.
  for (auto dt : {at::kFloat, at::kDouble}) {
    cases.push_back({2, 192, 2, 2, 16, 32, 2, 64, true, dt});
    cases.push_back({2, 128, 2, 1, 16, 16, 2, 32, true, dt});
    cases.push_back({1, 160, 3, 3, 13, 40, 2, 32, false, dt});
    cases.push_back({1, 128, 4, 2, 16, 16, 2, 32, true, dt});
    cases.push_back({1, 512, 8, 8, 64, 64, 2, 128, true, dt});
  }
  int failed = 0, passed = 0;
  for (const Case& c : cases) {
    const Result r = run_case(c);
    const double fy = c.dtype == at::kDouble ? 1e-10 : c.dtype == at::kFloat ? 1e-5 : 5e-3;
    const double fg = c.dtype == at::kDouble ? 1e-9 : c.dtype == at::kFloat ? 1e-4 : 1e-2;
    const bool ok = r.y <= fy && r.dq <= fg && r.dk <= fg && r.dv <= fg && r.dg <= fg;
    std::printf("%-4s %-60s y %.2e dq %.2e dk %.2e dv %.2e dg %.2e\n", ok ? "ok" : "FAIL", name(c).c_str(), r.y, r.dq,
                r.dk, r.dv, r.dg);
    (ok ? passed : failed)++;
  }
  (check_strided() ? passed : failed)++;
  (check_extremes() ? passed : failed)++;
  for (auto [t, split, chunk, p, gate] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>>{
           {97, 40, 16, 2, true}, {97, 1, 16, 2, true}, {50, 33, 0, 2, true}, {61, 30, 7, 3, false},
           {40, 20, 8, 4, true}, {33, 10, 5, 1, true}}) {
    (check_pieces(t, split, chunk, p, gate) ? passed : failed)++;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
