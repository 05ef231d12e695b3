// sympow2.cu: the degree-2 kernels' sizes, operand checks and the maps between sympow.h's state layout and the
// internal one (sympow2.h).
#include "cuda/sympow2/sympow2.h"

#include "cuda/common/traits.h"
#include "cuda/sympow2/sympow2_kernel.cuh"
#include "sympow.h"

#include <cmath>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace power_attention {
namespace cuda {
namespace sympow2 {

Blocks blocks_of(const Operand& r, int64_t w, const char* what, int64_t N) {
  const at::Tensor& t = r.data;
  TORCH_CHECK(t.defined() && t.is_contiguous() && t.dim() >= 1 && t.size(-1) == w,
              "power_full: degree-2 kernels: bad ", what);
  if (!r.mapped()) {
    TORCH_CHECK(t.dim() == 3 && t.size(1) % N == 0, "power_full: degree-2 kernels: ", what, " must be [X, n, ", w,
                "] with n a multiple of ", N, ", got ", t.sizes());
    const int64_t n = t.size(1) / N;
    return {t.size(0) * N, n, RowMap::dense(n, w)};
  }
  const RowMap& m = r.map;
  TORCH_CHECK(t.dim() == 4 && m.c > 0 && m.w == w && t.size(1) == m.t && t.size(2) == m.h * m.g &&
                  m.t > (m.N - 1) * m.c && m.t <= m.N * m.c && (N == 1 || m.N == N),
              "power_full: degree-2 kernels: ", what, " ", t.sizes(), " disagrees with its row map");
  return {t.size(0) * m.h * m.N, m.c * m.g, m};
}
Blocks check_x(const Operand& x, const at::Tensor& rs, int64_t N) {
  const at::Tensor& t = x.data;
  TORCH_CHECK(t.defined() && sympow2_supported(t.scalar_type(), t.size(-1), t.size(-1)),
              "power_full: degree-2 kernels: bad x");
  const Blocks o = blocks_of(x, t.size(-1), "x", N);
  TORCH_CHECK(!rs.defined() || (rs.scalar_type() == at::kFloat && rs.is_contiguous() && rs.numel() == o.X * o.n),
              "power_full: degree-2 kernels: bad row scale");
  return o;
}
void check_bf16(const at::Tensor& t, int64_t X, int64_t rows, int64_t cols, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.is_contiguous() && t.numel() == X * rows * cols,
              "power_full: degree-2 kernels: bad ", what);
}
Blocks check_y(const Operand& y, const Blocks& x, int64_t E, int64_t N) {
  TORCH_CHECK(y.data.defined() && y.data.scalar_type() == at::kBFloat16,
              "power_full: degree-2 kernels: y must be bf16");
  const int64_t w = y.data.size(-1);
  TORCH_CHECK(w == E || w == E - 8, "power_full: degree-2 kernels: y has ", w, " columns, expected ", E, " or ",
              E - 8);
  const Blocks o = blocks_of(y, w, "y", N);
  TORCH_CHECK(o.X == x.X && o.n == x.n, "power_full: degree-2 kernels: y's rows disagree with x's");
  return o;
}

}  // namespace sympow2

namespace {

// The maps between sympow.h's layout and the internal one, per (device, d): index [D2] (int64) and scale [D2].
struct LayoutMap {
  at::Tensor index, scale;
};

const LayoutMap& layout_map(const at::Device& dev, int64_t d) {
  static std::mutex mu;
  static std::map<std::pair<int, int64_t>, LayoutMap> cache;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(static_cast<int>(dev.index()), d);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  std::vector<int64_t> indices;
  sympow_coefficients(d, 2, &indices);  // rows (i, j), i <= j, in sympow.h's order
  std::map<std::pair<int64_t, int64_t>, int64_t> row_of;
  for (size_t r = 0; r < indices.size() / 2; ++r) row_of[{indices[2 * r], indices[2 * r + 1]}] = static_cast<int64_t>(r);
  const int64_t nb = d / 16;
  std::vector<int64_t> index;
  std::vector<float> scale;
  for (int64_t A = 0; A < nb; ++A)
    for (int64_t a = 0; a < 16; ++a)
      for (int64_t B = A; B < nb; ++B)
        for (int64_t b = 0; b < 16; ++b) {
          const int64_t i = 16 * A + a, j = 16 * B + b;
          index.push_back(row_of.at({std::min(i, j), std::max(i, j)}));
          // sympow.h: sqrt(2) x_i x_j for i < j; internal: c_AB x_i x_j, c = 1 on diagonal blocks
          scale.push_back(A == B && a != b ? static_cast<float>(1.0 / std::sqrt(2.0)) : 1.f);
        }
  LayoutMap m;
  const int64_t D2 = static_cast<int64_t>(index.size());
  m.index = at::from_blob(index.data(), {D2}, at::kLong).to(dev);
  m.scale = at::from_blob(scale.data(), {D2}, at::kFloat).to(dev);
  return cache.emplace(key, m).first->second;
}

}  // namespace

bool sympow2_supported(at::ScalarType dtype, int64_t d, int64_t e) {
  return (dtype == at::kBFloat16 || dtype == at::kHalf) && d == e && (d == 16 || d == 32 || d == 64 || d == 128);
}

int64_t sympow2_dim(int64_t d) {
  const int64_t nb = d / 16;
  return 256 * nb * (nb + 1) / 2;
}

at::Tensor sympow2_to_internal(const at::Tensor& ext, int64_t d) {
  const LayoutMap& m = layout_map(ext.device(), d);
  return ext.index_select(1, m.index) * m.scale.to(ext.scalar_type()).view({1, -1, 1});
}

at::Tensor sympow2_to_official(const at::Tensor& ext2, int64_t d) {
  const LayoutMap& m = layout_map(ext2.device(), d);
  at::Tensor out = at::zeros({ext2.size(0), sympow_dim(d, 2), ext2.size(2)}, ext2.options());
  return out.index_add_(1, m.index, ext2 * m.scale.to(ext2.scalar_type()).view({1, -1, 1}));
}
}  // namespace cuda
}  // namespace power_attention
