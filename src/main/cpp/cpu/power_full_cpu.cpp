// power_full_cpu.cpp: the CPU path of power_full (power_full_cpu.h), one key/value head at a time.
//
// Heads run in parallel (for_each_head); inside a head the chunks run in order, so the running state [D, e] stays
// in cache, every temporary is one chunk's worth (reused by the allocator, no page faults), and the ATen matrix
// products run single-threaded on their own head. The elementwise log-space work of the in-chunk attention is fused
// into one pass per row (attention_tile_cpu.cpp); phi and its backward are sympow_cpu.cpp's loops. Nothing t x t is
// formed in the chunked form; backward recomputes phi instead of storing it. The caller's tensors are laid out in
// the compute layout (compute_layout.h) on the way in and back on the way out, except fp32 q, k, v (and dy) that
// either form reads in place (quadratic_from_caller_layout, chunked_from_caller_layout); gradients in the inputs'
// dtype go to the caller's layout directly.
#include "cpu/power_full_cpu.h"

#include "compute_layout.h"
#include "cpu/blas_threads.h"
#include "cpu/heads.h"
#include "cpu/platform_util.h"
#include "cpu/sympow_cpu.h"
#include "sympow.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

namespace power_attention {
namespace cpu {
namespace {

template <typename T>
void decode_head(int64_t bh, int64_t g, int64_t D, int64_t e, const T* phik, const T* phiq, const T* v,
                 const T* lg, const T* S, const T* s, T* S1, T* s1, T* y) {
  const T gate = lg != nullptr ? std::exp(lg[bh]) : T(1);
  const T* vh = v + bh * e;
  const T* pk = phik + bh * D;
  const T* pq = phiq + bh * g * D;
  std::vector<T> num(g * e, T(0)), den(g, T(0));
  const T* Sh = S + bh * D * e;
  T* S1h = S1 + bh * D * e;
  for (int64_t a = 0; a < D; ++a) {
    const T ka = pk[a];
    const T* Sr = Sh + a * e;
    T* Sn = S1h + a * e;
    for (int64_t c = 0; c < e; ++c) Sn[c] = gate * Sr[c] + ka * vh[c];
    const T sa = gate * s[bh * D + a] + ka;
    s1[bh * D + a] = sa;
    for (int64_t j = 0; j < g; ++j) {
      const T w = pq[j * D + a];
      T* nj = num.data() + j * e;
      for (int64_t c = 0; c < e; ++c) nj[c] += w * Sn[c];
      den[j] += w * sa;
    }
  }
  T* yh = y + bh * g * e;
  for (int64_t j = 0; j < g; ++j) {
    const T inv = den[j] != T(0) ? T(1) / den[j] : T(0);
    for (int64_t c = 0; c < e; ++c) yh[j * e + c] = num[j * e + c] * inv;
  }
}

// The forward in the compute layout.
Forward forward_laid_out(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& lg, bool save_for_backward, const State& initial, bool want_final) {
  const auto o = q.options();
  Forward f;
  f.y = at::empty({pr.BH, pr.T, pr.g, pr.e}, o);
  f.den = at::empty({pr.BH, pr.T * pr.g}, o);
  f.rowmax = at::empty({pr.BH, pr.T * pr.g}, o);
  if (pr.chunk > 0 && save_for_backward) {
    const int64_t D = sympow_dim(pr.d, pr.p), N = pr.T / pr.chunk, kept = (N + state_interval(pr) - 1) / state_interval(pr);
    const at::Tensor aug = at::empty({pr.BH, kept, D, pr.e + 1}, o);  // [H | h], see augmented_states
    f.states = aug.narrow(3, 0, pr.e);
    f.norms = aug.select(3, pr.e);
    f.logscale = at::empty({pr.BH, N}, o.dtype(at::kDouble));
  }
  if (want_final) {
    const int64_t D = sympow_dim(pr.d, pr.p);
    f.final_state = at::empty({pr.BH, D, pr.e}, o);
    f.final_norm = at::empty({pr.BH, D}, o);
    f.final_logscale = at::empty({pr.BH}, o.dtype(at::kDouble));
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "power_full_cpu_forward", [&] {
    for_each_head(pr.BH, [&](int64_t bh) {
      if (pr.chunk > 0) {
        chunked_forward_head<scalar_t>(pr, q, k, v, lg, f, save_for_backward, initial, want_final, bh);
      } else {
        quadratic_forward_head<scalar_t>(pr, q, k, v, lg, f, bh);
      }
    });
  });
  return f;
}

// The backward in the compute layout; direct: q, k, v's gradients in the caller's layout (HeadGrads).
HeadGrads backward_laid_out(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& lg, const Forward& saved, const at::Tensor& dy, const Needs& needs,
                            const State& d_final, bool direct) {
  HeadGrads gr;
  if (needs.state) {
    const int64_t D = sympow_dim(pr.d, pr.p);
    gr.initial.S = at::empty({pr.BH, D, pr.e}, q.options());
    gr.initial.s = at::empty({pr.BH, D}, q.options());
  }
  gr.direct = direct;
  const int64_t H = pr.h;
  const auto qshape = direct ? std::vector<int64_t>{pr.b, pr.t, H * pr.g, pr.d} : q.sizes().vec();
  const auto kshape = direct ? std::vector<int64_t>{pr.b, pr.t, H, pr.d} : k.sizes().vec();
  const auto vshape = direct ? std::vector<int64_t>{pr.b, pr.t, H, pr.e} : v.sizes().vec();
  if (needs.q) gr.q = at::empty(qshape, q.options());
  if (needs.k) gr.k = pr.chunk > 0 ? at::empty(kshape, k.options()) : at::zeros(kshape, k.options());
  if (needs.v) gr.v = pr.chunk > 0 ? at::empty(vshape, v.options()) : at::zeros(vshape, v.options());
  if (lg.defined() && needs.g) gr.lg = at::empty_like(lg);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "power_full_cpu_backward", [&] {
    for_each_head(pr.BH, [&](int64_t bh) {
      if (pr.chunk > 0) {
        chunked_backward_head<scalar_t>(pr, q, k, v, lg, saved, dy, needs, d_final, gr, bh);
      } else {
        quadratic_backward_head<scalar_t>(pr, q, k, v, lg, saved, dy, needs, gr, bh);
      }
    });
  });
  return gr;
}

// q, k, v in the compute layout, or as views of the caller's tensors where the chunked form reads them in place
// (chunked_from_caller_layout); the log gates always in the compute layout (fp64).
layout::Inputs inputs(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& log_g) {
  if (!chunked_from_caller_layout(pr, q, k, v)) return layout::lay_out(pr, q, k, v, log_g);
  return {caller_query_heads(q, pr), caller_kv_heads(k), caller_kv_heads(v), layout::gate_layout(log_g, pr)};
}

}  // namespace

Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& log_g, bool save, const State& initial, bool want_final) {
  TORCH_CHECK(pr.chunk > 0 || (!initial.S.defined() && !want_final), "power_full: internal: states need the chunked path");
  if (quadratic_from_caller_layout(pr, q, k, v)) return quadratic_forward_caller(pr, q, k, v, log_g);
  const layout::Inputs x = inputs(pr, q, k, v, log_g);
  Forward f = forward_laid_out(pr, x.q, x.k, x.v, x.g, save, initial, want_final);
  f.out = layout::query_unlayout(f.y, pr, q.scalar_type());
  return f;
}

Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& log_g, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final) {
  if (quadratic_from_caller_layout(pr, q, k, v) && !needs.state)
    return quadratic_backward_caller(pr, q, k, v, log_g, saved, dy, needs);
  const layout::Inputs x = inputs(pr, q, k, v, log_g);
  const bool direct = q.scalar_type() == pr.precision.compute && pr.b > 0 && pr.t > 0;
  const bool dy_in_place = dy.defined() && dy.is_contiguous() && dy.scalar_type() == at::kFloat && x.q.dim() == 5;
  const at::Tensor dyx = dy_in_place ? caller_query_heads(dy, pr) : layout::dy_layout(dy, pr, q.options());
  const HeadGrads gr = backward_laid_out(pr, x.q, x.k, x.v, x.g, saved, dyx, needs, d_final, direct);
  if (!direct) return layout::grads_unlayout(gr, pr, needs, q, k, v, log_g);
  Grads out = gr;
  out.lg = needs.g && log_g.defined() ? layout::gate_unlayout(gr.lg, pr, log_g.scalar_type()) : at::Tensor();
  return out;
}

std::vector<at::Tensor> decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& lg, const at::Tensor& S, const at::Tensor& s, int64_t p) {
  const int64_t BH = k.size(0), g = q.size(1), d = q.size(2), e = v.size(1), D = S.size(1);
  const at::Tensor phik = sympow_forward(k, at::Tensor(), p);                    // [BH, D]
  const at::Tensor phiq = sympow_forward(q.reshape({BH * g, d}), at::Tensor(), p);  // [BH * g, D]
  at::Tensor S1 = at::empty_like(S), s1 = at::empty_like(s), y = at::empty({BH, g, e}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "power_decode_step_cpu", [&] {
    const scalar_t* lp = lg.defined() ? lg.data_ptr<scalar_t>() : nullptr;
    for_each_head(BH, [&](int64_t bh) {
      decode_head<scalar_t>(bh, g, D, e, phik.data_ptr<scalar_t>(), phiq.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                            lp, S.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), S1.data_ptr<scalar_t>(),
                            s1.data_ptr<scalar_t>(), y.data_ptr<scalar_t>());
    });
  });
  return {y, S1, s1};
}

Precision precision(at::ScalarType input, int64_t p, int64_t chunk, bool amplifying) {
  const bool fp64 = input == at::kDouble || p % 2 == 1 || (chunk > 0 && amplifying);
  return {fp64 ? at::kDouble : at::kFloat, at::kDouble, fp64 ? at::kDouble : at::kFloat};
}

double state_bytes(const Problem& pr, bool grad) {
  const double elem = pr.precision.compute == at::kDouble ? 8 : 4;
  const double D = static_cast<double>(sympow_dim(pr.d, pr.p));
  const int64_t N = pr.T / pr.chunk, k = grad ? state_interval(pr) : 1;
  const double workers = static_cast<double>(std::min<int64_t>(pr.BH, std::max(1, at::get_num_threads())));
  // kept for backward: every k-th state, and k states per worker while a segment is recomputed
  const double kept = static_cast<double>(pr.BH) * static_cast<double>((N + k - 1) / k) + (k > 1 ? workers * k : 0.0);
  const double states = (grad ? kept : 1.0) * D * (pr.e + 1);
  const double phi = 2.0 * pr.chunk * pr.g * D;
  return (states + phi) * elem;
}

MemoryLimit memory_limit() {
  MemoryLimit m;
  m.where = "half the physical memory, or POWER_ATTENTION_MEMORY_LIMIT in bytes";
  if (const char* env = std::getenv("POWER_ATTENTION_MEMORY_LIMIT")) {
    char* end = nullptr;
    const double v = std::strtod(env, &end);
    if (end != env && v > 0) {
      m.bytes = v;
      return m;
    }
  }
  const double physical = platform::physical_memory_bytes();
  m.bytes = physical > 0 ? 0.5 * physical : 8.0 * (1ull << 30);
  return m;
}

}  // namespace cpu
}  // namespace power_attention
