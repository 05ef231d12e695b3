// row_map.cuh: where the rows of an operand live, for CUDA kernels that read or write the API layout
// ([b, t, heads, w]) directly instead of a compute-layout copy.
//
// Block x is chunk n = x % N of head x / N = b h + head (N = 1: a whole head); row r of it is member r % g of
// token n c + r / g. Its elements start at b sb + head sh + n sn + (r / g) ld + (r % g) w. With t > 0 the tokens
// from t on are padding (the chunked form rounds t up to whole chunks): those rows are not there.
//   compute layout [X, rows, w]:            {sb = rows w, ld = w}                                   (h = g = N = 1)
//   [b, t, h gg, w], quadratic form:        {t h gg w, gg w, 0, h gg w; h, gg, w, N = 1}
//   [b, t, h gg, w], chunks of c, N a head: {t h gg w, gg w, c h gg w, h gg w; h, gg, w, N; c, t}
// A default map (w = 0) stands for "the dense layout of the tensor at hand" where a function takes one.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define POWER_ATTENTION_HD __host__ __device__
#else
#define POWER_ATTENTION_HD
#endif

namespace power_attention {
namespace cuda {

struct RowMap {
  int64_t sb = 0, sh = 0, sn = 0, ld = 0, c = 0, t = 0;
  int h = 1, g = 1, w = 0, N = 1;

  POWER_ATTENTION_HD int64_t base(int64_t x) const {
    if (N == 1) return h == 1 ? x * sb : (x / h) * sb + (x % h) * sh;
    const int64_t n = x % N, bh = x / N;
    return (bh / h) * sb + (bh % h) * sh + n * sn;
  }
  POWER_ATTENTION_HD int64_t row(int64_t r) const {
    if (g == 1) return r * ld;
    const int64_t tok = static_cast<int64_t>(static_cast<uint32_t>(r) / static_cast<uint32_t>(g));
    return tok * ld + (r - tok * g) * w;
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
  // chunks; a single-chunk map has only n = 0). Not for the quadratic form's maps, whose blocks are heads.
  POWER_ATTENTION_HD int64_t step() const { return N > 1 ? sn : sb; }

  static RowMap dense(int64_t rows, int64_t w) {
    RowMap m;
    m.sb = rows * w, m.ld = w, m.w = static_cast<int>(w);
    return m;
  }
  // [b, t, h gg, w]; chunks > 0: blocks are chunks of c tokens
  static RowMap api(int64_t t, int64_t h, int64_t gg, int64_t w, int64_t chunks = 0, int64_t c = 0) {
    RowMap m;
    m.sb = t * h * gg * w, m.sh = gg * w, m.ld = h * gg * w;
    m.h = static_cast<int>(h), m.g = static_cast<int>(gg), m.w = static_cast<int>(w);
    if (chunks > 0) m.N = static_cast<int>(chunks), m.sn = c * h * gg * w, m.c = c, m.t = t;
    return m;
  }
};

}  // namespace cuda
}  // namespace power_attention
