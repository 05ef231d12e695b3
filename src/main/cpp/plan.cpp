// plan.cpp: the plan of one call (plan.h).
#include "plan.h"
#include "cpu/power_full_cpu.h"
#ifdef POWER_ATTENTION_WITH_CUDA
#include "cuda/power_full_cuda.h"
#endif

#include <vector>

namespace power_attention {


at::Tensor pad_tokens(const at::Tensor& x, int64_t dim, int64_t T) {
  const int64_t pad = T - x.size(dim);
  if (pad == 0) return x;
  std::vector<int64_t> shape = x.sizes().vec();
  shape[dim] = pad;
  return at::cat({x, at::zeros(shape, x.options())}, dim);
}

// [b, t, hq, w] -> [b*h, T, g, w]
at::Tensor query_layout(const at::Tensor& x, const Layout& L) {
  at::Tensor y = x.to(L.ct).view({L.b, L.t, L.h, L.g, x.size(3)}).permute({0, 2, 1, 3, 4});
  return pad_tokens(y, 2, L.T).reshape({L.b * L.h, L.T, L.g, x.size(3)}).contiguous();
}
// [b, t, h, w] -> [b*h, T, w]
at::Tensor kv_layout(const at::Tensor& x, const Layout& L) {
  at::Tensor y = x.to(L.ct).permute({0, 2, 1, 3});
  return pad_tokens(y, 2, L.T).reshape({L.b * L.h, L.T, x.size(3)}).contiguous();
}
// [b, t, h] -> [b*h, T] in the gate dtype
at::Tensor gate_layout(const at::Tensor& x, const Layout& L) {
  if (!x.defined()) return at::Tensor();
  at::Tensor y = x.to(L.gt).permute({0, 2, 1});
  return pad_tokens(y, 2, L.T).reshape({L.b * L.h, L.T}).contiguous();
}
// The way back: one copy that permutes and converts at once (no intermediate in the compute dtype).
at::Tensor query_unlayout(const at::Tensor& y, const Layout& L, at::ScalarType dtype) {
  const int64_t w = y.size(3);
  at::Tensor out = at::empty({L.b, L.t, L.hq, w}, y.options().dtype(dtype));
  out.view({L.b, L.t, L.h, L.g, w}).copy_(y.view({L.b, L.h, L.T, L.g, w}).narrow(2, 0, L.t).permute({0, 2, 1, 3, 4}));
  return out;
}
at::Tensor kv_unlayout(const at::Tensor& y, const Layout& L, at::ScalarType dtype) {
  const int64_t w = y.size(2);
  at::Tensor out = at::empty({L.b, L.t, L.h, w}, y.options().dtype(dtype));
  out.copy_(y.view({L.b, L.h, L.T, w}).narrow(2, 0, L.t).permute({0, 2, 1, 3}));
  return out;
}
at::Tensor gate_unlayout(const at::Tensor& y, const Layout& L, at::ScalarType dtype) {
  at::Tensor out = at::empty({L.b, L.t, L.h}, y.options().dtype(dtype));
  out.copy_(y.view({L.b, L.h, L.T}).narrow(2, 0, L.t).permute({0, 2, 1}));
  return out;
}

// What goes back to the caller: y, and the gradients of q, k, v, in the API layout and the inputs' dtypes (the
// path's own when it made them there, Forward::y_api / Grads::api; else the compute layout's, converted).
at::Tensor api_output(const Forward& f, const Layout& L, at::ScalarType dtype) {
  return f.y_api.defined() ? f.y_api : query_unlayout(f.y, L, dtype);
}
InputGrads api_grads(const Grads& gr, const Layout& L, const Needs& needs, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v) {
  InputGrads g;
  if (needs.q) g.q = gr.api ? gr.q : query_unlayout(gr.q, L, q.scalar_type());
  if (needs.k) g.k = gr.api ? gr.k : kv_unlayout(gr.k, L, k.scalar_type());
  if (needs.v) g.v = gr.api ? gr.v : kv_unlayout(gr.v, L, v.scalar_type());
  return g;
}


// stateful: states in or out need the chunked path; without a chunk size (or t <= chunk) it is one chunk of t.
// amplifying: the log gates hold a positive value (the past amplified, see amplifying_gates).
Resolved resolve(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t p, double scale,
                 int64_t chunk, bool stateful, bool amplifying) {
  Resolved r;
  Layout& L = r.layout;
  L.b = q.size(0), L.t = q.size(1), L.hq = q.size(2), L.d = q.size(3), L.h = k.size(2), L.e = v.size(3);
  L.g = L.hq / L.h;
  const bool cpu = q.device().is_cpu();
  // t <= chunk: the quadratic form is the chunked form with a single chunk, minus the padding.
  const int64_t c = (chunk > 0 && chunk < L.t) ? chunk : (stateful ? L.t : 0);
  Precision pc{};
#ifdef POWER_ATTENTION_WITH_CUDA
  if (q.is_cuda()) pc = cuda::precision(q.scalar_type(), p, c, amplifying);
#endif
  if (cpu || !q.is_cuda()) pc = cpu::precision(q.scalar_type(), p, c, amplifying);
  L.ct = pc.compute, L.gt = pc.gates, L.st = pc.states;
  L.T = c > 0 ? (L.t + c - 1) / c * c : L.t;
  Problem& pr = r.problem;
  pr.BH = L.b * L.h, pr.T = L.T, pr.g = L.g, pr.d = L.d, pr.e = L.e, pr.p = p, pr.scale = scale, pr.chunk = c;
  pr.b = L.b, pr.t = L.t;
  pr.api = q.scalar_type() == L.ct && k.scalar_type() == L.ct && v.scalar_type() == L.ct;
#ifdef POWER_ATTENTION_WITH_CUDA
  // CUDA reads q, k, v (and dy) in the API layout where its kernels can: no layout copies
  pr.direct = q.is_cuda() && pr.api && cuda::direct_supported(pr, q.scalar_type());
#endif
  return r;
}

// The inputs in the compute layout. On CUDA the forward's copies are kept for the backward (three layout copies
// fewer per step, for as much memory as the inputs); elsewhere the backward makes them again.
LaidOut lay_out(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_g,
                const Layout& L) {
  return {query_layout(q, L), kv_layout(k, L), kv_layout(v, L), gate_layout(log_g, L)};
}
// The inputs as the path takes them: the API layout itself (Problem::direct: contiguous, no copies) or the compute
// layout (laid_out_for_backward reuses the forward's copies).
LaidOut path_inputs(const Resolved& r, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& log_g) {
  if (r.problem.direct) return {q.contiguous(), k.contiguous(), v.contiguous(), gate_layout(log_g, r.layout)};
  return lay_out(q, k, v, log_g, r.layout);
}
// dy [b, t, hq, e] as the path takes it (like q), or zeros where autograd gave none.
at::Tensor path_dy(const Resolved& r, const at::Tensor& dy, const at::Tensor& q) {
  const Layout& L = r.layout;
  if (r.problem.direct) {
    return dy.defined() ? dy.to(q.scalar_type()).contiguous() : at::zeros({L.b, L.t, L.hq, L.e}, q.options());
  }
  return dy.defined() ? query_layout(dy, L) : at::zeros({L.b * L.h, L.T, L.g, L.e}, q.options().dtype(L.ct));
}

// [b, h, D, e] / [b, h, D] <-> [b*h, D, e] / [b*h, D] in the state dtype
State state_layout(const at::Tensor& S, const at::Tensor& s, const Layout& L) {
  if (!S.defined()) return {};
  return {S.to(L.st).reshape({L.b * L.h, S.size(2), S.size(3)}).contiguous(),
          s.to(L.st).reshape({L.b * L.h, s.size(2)}).contiguous(), at::Tensor()};
}

}  // namespace power_attention
