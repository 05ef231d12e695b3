// operand.h: the one operand descriptor of the CUDA kernels: where the rows of a tensor live, by its strides.
//
// An operand is X blocks of rows of w elements (each row contiguous). Block x is chunk n = x % N of head
// x / N = bi h + hh (N = 1: a whole head); row r of a block is member r % g of token n c + r / g, at element
//   bi sb + hh sh + n sn + (r / g) ld + (r % g) sm.
// With t > 0 the tokens from t on are padding (the chunked form rounds t up to whole chunks): those rows are not
// there (kernels read them as zeros and write nothing).
//   the caller's layout [b, t, h gg, w], strides (s0, s1, s2, 1)   RowMap::of(x, h, gg, c):
//     c = 0 (blocks are heads):          sb = s0, sh = gg s2, ld = s1, sm = s2; h, g = gg
//     c > 0 (blocks are chunks of c):    the same and sn = c s1, N = ceil(t / c), c, t
//   a compute layout [X, rows, w], contiguous   RowMap::dense(rows, w): sb = rows w, ld = w (h = g = N = 1)
// A default map (w = 0) stands for "the dense layout of the tensor at hand" where a function takes one.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define POWER_ATTENTION_HD __host__ __device__
#else
#define POWER_ATTENTION_HD
#endif

#include <ATen/ATen.h>

namespace power_attention {
namespace cuda {

struct RowMap {
  int64_t sb = 0;  // batch stride
  int64_t sh = 0;  // head stride (the g members of a head's token are its rows)
  int64_t sn = 0;  // chunk stride (N > 1)
  int64_t ld = 0;  // token stride
  int64_t sm = 0;  // member stride: from one query head of a group to the next
  int64_t c = 0;   // tokens a chunk (chunked maps)
  int64_t t = 0;   // tokens that exist (> 0: the rows of tokens >= t are padding)
  int h = 1, g = 1, w = 0, N = 1;

  POWER_ATTENTION_HD int64_t base(int64_t x) const {
    if (N == 1) return h == 1 ? x * sb : (x / h) * sb + (x % h) * sh;
    const int64_t n = x % N, bh = x / N;
    return (bh / h) * sb + (bh % h) * sh + n * sn;
  }
  POWER_ATTENTION_HD int64_t row(int64_t r) const {
    if (g == 1) return r * ld;
    const int64_t tok = static_cast<int64_t>(static_cast<uint32_t>(r) / static_cast<uint32_t>(g));
    return tok * ld + (r - tok * g) * sm;
  }
  // rows of block x that exist, of R
  POWER_ATTENTION_HD int64_t rows(int64_t x, int64_t R) const { return t == 0 ? R : chunk_rows(x % N, R); }
  // rows of chunk n (of any head) that exist, of R
  POWER_ATTENTION_HD int64_t chunk_rows(int64_t n, int64_t R) const {
    if (t == 0) return R;
    const int64_t left = (t - n * c) * g;
    return left < 0 ? 0 : (left < R ? left : R);
  }
  // The chunks of one head are evenly spaced: base(bh N + n) = base(bh N) + n step() (a dense map's blocks are its
  // chunks; a single-chunk map has only n = 0). Not for maps whose blocks are heads.
  POWER_ATTENTION_HD int64_t step() const { return N > 1 ? sn : sb; }

  static RowMap dense(int64_t rows, int64_t w) {
    RowMap m;
    m.sb = rows * w, m.ld = w, m.sm = w, m.w = static_cast<int>(w);
    return m;
  }
  // x [b, t, h gg, w] by its strides (the last one 1); c > 0: blocks are chunks of c tokens, else heads. A dimension
  // of one element takes the dense stride (its own is arbitrary and never multiplied by more than 0).
  static RowMap of(const at::Tensor& x, int64_t h, int64_t gg, int64_t c = 0) {
    TORCH_CHECK(x.dim() == 4 && x.size(2) == h * gg, "power_full: internal: an operand must be [b, t, h g, w], got ",
                x.sizes());
    const auto stride = [&](int i) {
      int64_t dense = 1;
      for (int j = i + 1; j < 4; ++j) dense *= x.size(j);
      return x.size(i) == 1 ? dense : x.stride(i);
    };
    TORCH_CHECK(stride(3) == 1, "power_full: internal: an operand's rows must have unit stride, got ", x.strides());
    RowMap m;
    m.sb = stride(0), m.ld = stride(1), m.sm = stride(2), m.sh = gg * stride(2);
    m.h = static_cast<int>(h), m.g = static_cast<int>(gg), m.w = static_cast<int>(x.size(3));
    if (c > 0) {
      const int64_t t = x.size(1);
      m.N = static_cast<int>((t + c - 1) / c), m.sn = c * m.ld, m.c = c, m.t = t;
    }
    return m;
  }
};

/// An operand on the host: a tensor and its row map (w == 0: the tensor's dense layout [X, n, w]).
struct Operand {
  at::Tensor data;
  RowMap map;
  Operand() = default;
  Operand(const at::Tensor& t) : data(t) {}  // NOLINT: a tensor alone is its dense layout
  Operand(const at::Tensor& t, const RowMap& m) : data(t), map(m) {}
  /// The caller's layout [b, t, h gg, w]: blocks are heads (c = 0) or chunks of c tokens.
  static Operand caller(const at::Tensor& x, int64_t h, int64_t gg, int64_t c = 0) {
    return {x, RowMap::of(x, h, gg, c)};
  }
  bool defined() const { return data.defined(); }
  bool mapped() const { return map.w != 0; }
  /// The map, the dense one of [X, rows, w] where none is set.
  RowMap rows_map(int64_t rows, int64_t w) const { return mapped() ? map : RowMap::dense(rows, w); }
};

}  // namespace cuda
}  // namespace power_attention
