// sympow_cpu.cpp: CPU loops for phi and its backward (sympow_cpu.h). The innermost multi-index runs over a
// contiguous range of x, so the compiler vectorises the leaf loops; rows run in parallel through at::parallel_for.
#include "cpu/sympow_cpu.h"
#include "cpu/cpu_simd.h"
#include "errors.h"
#include "sympow.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

namespace power_attention {
namespace {

template <typename T>
struct RowForward {
  const T* x;
  const T* coef;
  T* out;
  int64_t d, p, pos;
  void run(int64_t level, int64_t start, T prefix) {
    if (level + 1 == p) {
      const int64_t n = d - start;
      const T* xs = x + start;
      const T* cs = coef + pos;
      T* os = out + pos;
      for (int64_t i = 0; i < n; ++i) os[i] = cs[i] * prefix * xs[i];
      pos += n;
      return;
    }
    for (int64_t i = start; i < d; ++i) run(level + 1, i, prefix * x[i]);
  }
};

template <typename T>
struct RowBackward {
  const T* x;
  const T* coef;
  const T* dphi;
  T* dx;  // may be null
  int64_t d, p, pos;
  // Returns sum over completions of dphi_a * coef_a * prod_{levels >= level} x_{a_l}; adds prefix * (that sum
  // without x_i) into dx_i for the index i chosen at this level.
  T run(int64_t level, int64_t start, T prefix) {
    T ret = 0;
    if (level + 1 == p) {
      const int64_t n = d - start;
      const T* xs = x + start;
      const T* cs = coef + pos;
      const T* gs = dphi + pos;
      if (dx != nullptr) {
        T* dxs = dx + start;
        for (int64_t i = 0; i < n; ++i) {
          const T g = gs[i] * cs[i];
          dxs[i] += prefix * g;
          ret += xs[i] * g;
        }
      } else {
        for (int64_t i = 0; i < n; ++i) ret += xs[i] * gs[i] * cs[i];
      }
      pos += n;
      return ret;
    }
    for (int64_t i = start; i < d; ++i) {
      const T sub = run(level + 1, i, prefix * x[i]);
      if (dx != nullptr) dx[i] += prefix * sub;
      ret += x[i] * sub;
    }
    return ret;
  }
};

// Rows [r0, r1) of sympow_forward. Degree 2, the common case, is two plain loops (vectorised in the clones);
// other degrees walk the multi-indices recursively.
template <typename T>
POWER_ATTENTION_INLINE void forward_rows_impl(const T* xp, const T* sp, const T* cp, T* op, int64_t d, int64_t D,
                                              int64_t p, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = xp + r * d;
    T* out = op + r * D;
    const T scale = sp != nullptr ? sp[r] : T(1);
    if (p == 2) {
      int64_t pos = 0;
      for (int64_t i = 0; i < d; ++i) {
        const T pre = scale * x[i];
        const int64_t n = d - i;
        const T* xs = x + i;
        const T* cs = cp + pos;
        T* os = out + pos;
        for (int64_t j = 0; j < n; ++j) os[j] = cs[j] * pre * xs[j];
        pos += n;
      }
    } else {
      RowForward<T> f{x, cp, out, d, p, 0};
      f.run(0, 0, scale);
    }
  }
}

POWER_ATTENTION_SIMD_VARIANTS(void, forward_rows, (const T* xp, const T* sp, const T* cp, T* op, int64_t d, int64_t D, int64_t p, int64_t r0, int64_t r1), (xp, sp, cp, op, d, D, p, r0, r1))

// Rows [r0, r1) of sympow_backward: as RowBackward, with degree 2 unrolled into two loops.
template <typename T>
POWER_ATTENTION_INLINE void backward_rows_impl(const T* xp, const T* sp, const T* cp, const T* gp, T* dxp, T* dsp,
                                               int64_t d, int64_t D, int64_t p, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = xp + r * d;
    const T* gr = gp + r * D;
    T* dx = dxp != nullptr ? dxp + r * d : nullptr;
    T dot = 0;
    if (p == 2) {
      int64_t pos = 0;
      for (int64_t i = 0; i < d; ++i) {
        const T xi = x[i];
        const int64_t n = d - i;
        const T* xs = x + i;
        const T* cs = cp + pos;
        const T* gs = gr + pos;
        // sub = sum_j x_j g_j in lanes (so that it vectorises), dx_j += x_i g_j
        constexpr int64_t W = POWER_ATTENTION_LANES;
        const int64_t nb = n / W * W;
        T acc[W] = {};
        T* dxs = dx != nullptr ? dx + i : nullptr;
        for (int64_t j0 = 0; j0 < nb; j0 += W) {
          for (int64_t u = 0; u < W; ++u) {
            const T g = gs[j0 + u] * cs[j0 + u];
            if (dxs != nullptr) dxs[j0 + u] += xi * g;
            acc[u] += xs[j0 + u] * g;
          }
        }
        for (int64_t j = nb; j < n; ++j) {
          const T g = gs[j] * cs[j];
          if (dxs != nullptr) dxs[j] += xi * g;
          acc[0] += xs[j] * g;
        }
        T sub = 0;
        for (int64_t u = 0; u < W; ++u) sub += acc[u];
        if (dx != nullptr) dx[i] += sub;
        dot += xi * sub;
        pos += n;
      }
    } else {
      // The recursion accumulates J^T dphi into dx (with prefix 1), and returns dphi . phi(x).
      RowBackward<T> b{x, cp, gr, dx, d, p, 0};
      dot = b.run(0, 0, T(1));
    }
    if (dsp != nullptr) dsp[r] = dot;
    if (dx != nullptr && sp != nullptr) {
      const T s = sp[r];
      for (int64_t i = 0; i < d; ++i) dx[i] *= s;
    }
  }
}

POWER_ATTENTION_SIMD_VARIANTS(void, backward_rows, (const T* xp, const T* sp, const T* cp, const T* gp, T* dxp, T* dsp, int64_t d, int64_t D, int64_t p, int64_t r0, int64_t r1), (xp, sp, cp, gp, dxp, dsp, d, D, p, r0, r1))

void check_rows(const at::Tensor& x, const at::Tensor& row_scale) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "sympow: x must be a contiguous [n, d] tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "sympow: x must be float or double");
  if (row_scale.defined()) {
    TORCH_CHECK(row_scale.is_contiguous() && row_scale.numel() == x.size(0) &&
                    row_scale.scalar_type() == x.scalar_type(),
                "sympow: row_scale must be a contiguous [n] tensor of x's dtype");
  }
}

// Rows per parallel task: about 64K output numbers each.
int64_t grain_rows(int64_t D) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(D, 1)); }

}  // namespace

at::Tensor sympow_coefficient_tensor(int64_t d, int64_t p, at::ScalarType dtype) {
  static std::mutex mutex;
  static std::map<std::tuple<int64_t, int64_t, at::ScalarType>, at::Tensor> cache;
  const auto key = std::make_tuple(d, p, dtype);
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  const std::vector<double> c = sympow_coefficients(d, p);
  at::Tensor t = at::tensor(c, at::TensorOptions().dtype(at::kDouble)).to(dtype);
  std::lock_guard<std::mutex> lock(mutex);
  return cache.emplace(key, t).first->second;
}

at::Tensor sympow_forward(const at::Tensor& x, const at::Tensor& row_scale, int64_t p) {
  check_rows(x, row_scale);
  const int64_t n = x.size(0), d = x.size(1), D = sympow_dim(d, p);
  at::Tensor out = at::empty({n, D}, x.options());
  if (n == 0) return out;
  const at::Tensor coef = sympow_coefficient_tensor(d, p, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sympow_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* sp = row_scale.defined() ? row_scale.data_ptr<scalar_t>() : nullptr;
    const scalar_t* cp = coef.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, grain_rows(D), [&](int64_t r0, int64_t r1) {
      forward_rows<scalar_t>(xp, sp, cp, op, d, D, p, r0, r1);
    });
  });
  return out;
}

std::pair<at::Tensor, at::Tensor> sympow_backward(const at::Tensor& x, const at::Tensor& row_scale,
                                                  const at::Tensor& dphi, int64_t p, bool want_dx,
                                                  bool want_dscale) {
  check_rows(x, row_scale);
  const int64_t n = x.size(0), d = x.size(1), D = sympow_dim(d, p);
  TORCH_CHECK(dphi.is_contiguous() && dphi.dim() == 2 && dphi.size(0) == n && dphi.size(1) == D &&
                  dphi.scalar_type() == x.scalar_type(),
              "sympow_backward: dphi must be a contiguous [n, D] tensor of x's dtype");
  at::Tensor dx = want_dx ? at::zeros({n, d}, x.options()) : at::Tensor();
  at::Tensor dscale = want_dscale ? at::empty({n}, x.options()) : at::Tensor();
  if (n == 0 || (!want_dx && !want_dscale)) return {dx, dscale};
  const at::Tensor coef = sympow_coefficient_tensor(d, p, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sympow_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* sp = row_scale.defined() ? row_scale.data_ptr<scalar_t>() : nullptr;
    const scalar_t* cp = coef.data_ptr<scalar_t>();
    const scalar_t* gp = dphi.data_ptr<scalar_t>();
    scalar_t* dxp = want_dx ? dx.data_ptr<scalar_t>() : nullptr;
    scalar_t* dsp = want_dscale ? dscale.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n, grain_rows(D), [&](int64_t r0, int64_t r1) {
      backward_rows<scalar_t>(xp, sp, cp, gp, dxp, dsp, d, D, p, r0, r1);
    });
  });
  return {dx, dscale};
}

}  // namespace power_attention
