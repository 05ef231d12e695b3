// attention_tile.cu: the host side of the tile kernels (attention_tile.h): checks, launch arguments, the launches.
#include "cuda/attention/attention_tile.h"

#include "cuda/attention/tile_kernel.cuh"
#include "cuda/common/traits.h"

#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <cstdint>

namespace power_attention {
namespace cuda {
namespace {

using tile::u16;

const u16* bits(const Operand& o) { return static_cast<const u16*>(o.data.data_ptr()); }
u16* out_bits(const Operand& o) { return o.defined() ? static_cast<u16*>(o.data.data_ptr()) : nullptr; }
const float* fptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
float* fmut(at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// An operand's X blocks of n rows of w elements, checked: 16-byte rows of unit stride.
struct Extent {
  int64_t X, n, w;
  bool operator==(const Extent& o) const { return X == o.X && n == o.n && w == o.w; }
};
Extent extent(const Operand& o, const char* what) {
  const at::Tensor& t = o.data;
  TORCH_CHECK(t.defined() && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && t.size(-1) % 8 == 0,
              "power_full: internal: tile kernels: ", what, " needs 16-byte rows");
  if (!o.mapped()) {
    TORCH_CHECK(t.dim() == 3 && t.is_contiguous(), "power_full: internal: tile kernels: ", what,
                " must be a contiguous [X, rows, w] or mapped, got ", t.sizes());
    return {t.size(0), t.size(1), t.size(2)};
  }
  const RowMap& m = o.map;
  TORCH_CHECK(m.sb % 8 == 0 && m.ld % 8 == 0 && m.sm % 8 == 0 && m.sn % 8 == 0, "power_full: internal: tile kernels: ",
              what, " needs strides of whole 16-byte units");
  return {t.size(0) * m.h * m.N, (m.c > 0 ? m.c : t.size(1)) * m.g, m.w};
}

void check_inputs(const TileProblem& tp, const Operand& q, const Operand& k, const Operand& v, const at::Tensor& G) {
  const auto dt = q.data.scalar_type();
  TORCH_CHECK(tile_kernels_support(dt, q.data.size(-1), v.data.size(-1)),
              "power_full: internal: tile kernels: bad dtype/sizes");
  TORCH_CHECK(k.data.scalar_type() == dt && v.data.scalar_type() == dt,
              "power_full: internal: tile kernels take q, k, v in one dtype");
  TORCH_CHECK(extent(q, "q") == (Extent{tp.X, tp.R, q.data.size(-1)}) &&
                  extent(k, "k") == (Extent{tp.X, tp.C, k.data.size(-1)}) &&
                  extent(v, "v") == (Extent{tp.X, tp.C, v.data.size(-1)}) && tp.R == tp.C * tp.g,
              "power_full: internal: tile kernels: shapes disagree with the problem");
  TORCH_CHECK(tp.R < (int64_t(1) << 31) - 128, "power_full: internal: tile kernels: too many rows in one block (", tp.R,
              ")");
  TORCH_CHECK(!G.defined() || (G.scalar_type() == at::kFloat && G.is_contiguous() && G.numel() == tp.X * tp.C),
              "power_full: internal: tile kernels: G must be fp32 [X, C]");
}
// an fp32 tensor of the compute layout, or undefined where `optional`
void check_f32(const at::Tensor& t, const at::Tensor& q, int64_t numel, const char* what, bool optional = true) {
  TORCH_CHECK(optional || t.defined(), "power_full: internal: tile kernels: ", what, " is needed");
  if (!t.defined()) return;
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel && t.device() == q.device(),
              "power_full: internal: tile kernels: ", what, " must be fp32 of ", numel, " elements");
}
// an operand in the input dtype like `like` (X blocks of n rows of w), or undefined
void check_like(const Operand& o, const Operand& like, const Extent& want, const char* what) {
  if (!o.defined()) return;
  TORCH_CHECK(o.data.scalar_type() == like.data.scalar_type() && o.data.device() == like.data.device() &&
                  extent(o, what) == want,
              "power_full: internal: tile kernels: bad ", what);
}

tile::Args make_args(const TileProblem& tp, const Operand& q, const Operand& k, const Operand& v, const Operand& y,
                     const Operand& dq, const Operand& dk, const Operand& dv, const float* gmin = nullptr) {
  const int64_t d = q.data.size(-1), e = v.data.size(-1);
  tile::Args a{tp.X, tp.R, tp.C, static_cast<int>(tp.g), tp.p, static_cast<float>(tp.p * std::log2(tp.scale)), gmin};
  a.mq = q.rows_map(tp.R, d), a.mk = k.rows_map(tp.C, d), a.mv = v.rows_map(tp.C, e);
  a.my = y.defined() ? y.rows_map(tp.R, e) : RowMap::dense(tp.R, e);
  a.oq = dq.defined() ? dq.rows_map(tp.R, d) : a.mq;
  a.ok = dk.defined() ? dk.rows_map(tp.C, d) : a.mk;
  a.ov = dv.defined() ? dv.rows_map(tp.C, e) : a.mv;
  return a;
}

}  // namespace

bool tile_kernels_support(at::ScalarType dtype, int64_t d, int64_t e) { return fast_sizes(dtype, d, e); }

void tile_forward(const TileProblem& tp, const Operand& q, const Operand& k, const Operand& v, const at::Tensor& G,
                  at::Tensor& num, at::Tensor& m, at::Tensor& l, bool normalize, const Operand& y) {
  check_inputs(tp, q, k, v, G);
  const int64_t d = q.data.size(-1), e = v.data.size(-1);
  check_f32(num, q.data, tp.X * tp.R * e, "num");
  TORCH_CHECK(!y.defined() || normalize, "power_full: internal: tile kernels: y in the input dtype is the normalised output");
  check_like(y, q, Extent{tp.X, tp.R, e}, "y");
  check_f32(m, q.data, tp.X * tp.R, "m", false);
  check_f32(l, q.data, tp.X * tp.R, "l", false);
  if (tp.X == 0 || tp.R == 0) return;
  const c10::cuda::CUDAGuard guard(q.data.device());
  const tile::Args a = make_args(tp, q, k, v, y, {}, {}, {});
  tile::launch_fwd(a, q.data.scalar_type() == at::kBFloat16, d, bits(q), bits(k), bits(v), fptr(G), fmut(num),
                   fmut(m), fmut(l), normalize, out_bits(y));
}

void tile_backward(const TileProblem& tp, const Operand& q, const Operand& k, const Operand& v, const at::Tensor& G,
                   const Operand& dy, const at::Tensor& m, const at::Tensor& rf, const at::Tensor& dd,
                   const at::Tensor& own, const Operand& dq, const Operand& dk, const Operand& dv, const at::Tensor& dq_add,
                   const at::Tensor& dk_add, const at::Tensor& dv_add, at::Tensor& rowdz, at::Tensor& coldz) {
  check_inputs(tp, q, k, v, G);
  const int64_t d = q.data.size(-1), e = v.data.size(-1);
  TORCH_CHECK(dk.defined() == dv.defined(), "power_full: internal: tile kernels make dk and dv together");
  TORCH_CHECK(dy.defined(), "power_full: internal: tile kernels: the backward needs dy");
  check_like(dy, q, Extent{tp.X, tp.R, e}, "dy");
  check_like(dq, q, Extent{tp.X, tp.R, d}, "dq");
  check_like(dk, k, Extent{tp.X, tp.C, d}, "dk");
  check_like(dv, v, Extent{tp.X, tp.C, e}, "dv");
  check_f32(m, q.data, tp.X * tp.R, "m", false);
  check_f32(rf, q.data, tp.X * tp.R, "rf", false);
  check_f32(dd, q.data, tp.X * tp.R, "dd", false);
  check_f32(own, q.data, tp.X * tp.R, "own", false);
  check_f32(dq_add, q.data, tp.X * tp.R * d, "dq addend");
  check_f32(dk_add, q.data, tp.X * tp.C * d, "dk addend");
  check_f32(dv_add, q.data, tp.X * tp.C * e, "dv addend");
  check_f32(rowdz, q.data, tp.X * tp.R, "rowdz");
  check_f32(coldz, q.data, tp.X * tp.C, "coldz");
  if (tp.X == 0 || tp.R == 0) return;
  const c10::cuda::CUDAGuard guard(q.data.device());
  const at::Tensor gmin = G.defined() ? G.view({tp.X, tp.C}).amin(1).contiguous() : at::Tensor();
  tile::Args a = make_args(tp, q, k, v, dy, dq, dk, dv, fptr(gmin));
  a.own = fptr(own);
  const bool bf = q.data.scalar_type() == at::kBFloat16;
  if (dq.defined() || rowdz.defined()) {
    tile::launch_bwd_dq(a, bf, d, bits(q), bits(k), bits(v), fptr(G), bits(dy), fptr(m), fptr(rf), fptr(dd),
                        fptr(dq_add), fmut(rowdz), out_bits(dq));
  }
  if (dk.defined() || dv.defined() || coldz.defined()) {
    tile::launch_bwd_dkv(a, bf, d, bits(q), bits(k), bits(v), fptr(G), bits(dy), fptr(m), fptr(rf), fptr(dd),
                         fptr(dk_add), fptr(dv_add), fmut(coldz), out_bits(dk), out_bits(dv));
  }
}

}  // namespace cuda
}  // namespace power_attention
