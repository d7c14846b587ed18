// 1x1 convolution (a GEMM over pixels) for XLA:CPU, loaded through jax.ffi by layers.py:
//
//   y (M, N) = x (M, K) @ w (K, N)                       HsemoPointwise
//   y[i] = (x[i] * gate[s]) @ w,  s = i / (M / S)           HsemoPointwiseGated, gate (S, K)
//
// The gated form is a squeeze-excite gate (one row per sample) applied to the weights, K * 32
// multiplies per panel and tile, instead of a pass over x.
//
// w comes packed in panels of 32 columns, wp (P, K, 32) with P = ceil(N / 32), zero beyond N
// (`pack_pointwise` in cpu_kernels.py; for inference weights XLA folds the packing at compile
// time). A register tile of up to 12 rows x 32 columns (24 accumulators) runs over all of K: the
// 32-column panel streams from L2 while each row's x is broadcast from L1, so there is no K
// blocking and no packing of x. Work is split over XLA's intra-op pool (see Impl).
#include <vector>

#include "cpu_kernels.h"

namespace {

constexpr int kPanel = 32;  // columns per panel: two 16-float vectors
constexpr int kRows = 12;   // rows per register tile

// Rows [0, R) of a tile, vectors [0, V) of a panel: acc = x[R, K] @ (gate[K] * wp[K, 16 V]) (no
// gate: nullptr), stored to y (row stride ldy) for the `cols` valid columns (cols <= 16 V).
template <int R, int V>
static void tile(const float* x, int64_t K, const float* wp, const float* gate, float* y, int64_t ldy,
                 int64_t cols) {
  v16 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = v16{};
  for (int64_t k = 0; k < K; ++k) {
    v16 b[V];
    for (int v = 0; v < V; ++v) b[v] = ld(wp + k * kPanel + 16 * v);
    if (gate)
      for (int v = 0; v < V; ++v) b[v] *= gate[k];
    for (int r = 0; r < R; ++r) {
      const v16 a = v16{} + x[r * K + k];
      for (int v = 0; v < V; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) {
      const int64_t c = 16 * v, n = std::min<int64_t>(16, cols - c);
      if (n == 16) st(y + r * ldy + c, acc[r][v]);
      else if (n > 0) std::memcpy(y + r * ldy + c, &acc[r][v], n * sizeof(float));
    }
}

// Rows [0, m) as ceil(m / 12) tiles of near-equal height (49 rows: 10, 10, 10, 10, 9; a tail
// tile of one row would run at a fraction of the speed).
template <int V>
static void rows(const float* x, int64_t K, const float* wp, const float* gate, float* y, int64_t ldy,
                 int64_t cols, int64_t m) {
  const int64_t tiles = (m + kRows - 1) / kRows;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t i = t * m / tiles, h = (t + 1) * m / tiles - i;
    switch (h) {
#define TILE(RR) case RR: tile<RR, V>(x + i * K, K, wp, gate, y + i * ldy, ldy, cols); break;
      TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6) TILE(7) TILE(8) TILE(9) TILE(10) TILE(11) TILE(12)
#undef TILE
      default: break;
    }
  }
}

ffi::Error Run(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& wp,
               const float* gate, int64_t S, ffi::Result<ffi::Buffer<ffi::F32>>& y) {
  auto xd = x.dimensions(), wd = wp.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || yd.size() != 2 || wd[2] != kPanel)
    return ffi::Error::InvalidArgument("expected x (M, K), wp (P, K, 32), y (M, N)");
  const int64_t M = xd[0], K = xd[1], N = yd[1], P = wd[0];
  if (wd[1] != K || yd[0] != M || P != (N + kPanel - 1) / kPanel || S < 1 || M % S)
    return ffi::Error::InvalidArgument("shapes of x, wp, gate and y do not agree");
  const float* xs = x.typed_data();
  const float* ws = wp.typed_data();
  float* ys = y->typed_data();
  // Units: blocks of rows within one sample (one gate) whose x (rows x K floats) stays within
  // ~256 KB of L2, each through all panels, so that x is read once; when that gives fewer than 4
  // units per thread, each row block is split further into groups of panels (small images: few
  // rows, wide layers).
  const int64_t threads = std::max<int64_t>(1, pool.num_threads()), per_sample = M / S;
  const int64_t l2_rows = std::max<int64_t>(kRows, 65536 / std::max<int64_t>(K, 1));
  const int64_t block = std::min(per_sample, (l2_rows + kRows - 1) / kRows * kRows);
  const int64_t sample_blocks = block ? (per_sample + block - 1) / block : 0, blocks = S * sample_blocks;
  const int64_t groups =
      blocks >= 4 * threads ? 1 : std::min<int64_t>(P, (4 * threads + blocks - 1) / std::max<int64_t>(blocks, 1));
  parallel_units(pool, blocks * groups, [&](int64_t, int64_t u) {
    const int64_t b = u / groups, g = u % groups, s = b / sample_blocks;
    const int64_t m0 = s * per_sample + (b % sample_blocks) * block, m = std::min(block, (s + 1) * per_sample - m0);
    for (int64_t p = g * P / groups; p < (g + 1) * P / groups; ++p) {
      const int64_t cols = std::min<int64_t>(kPanel, N - p * kPanel);
      const float* xb = xs + m0 * K;
      const float* wb = ws + p * K * kPanel;
      const float* gs = gate ? gate + s * K : nullptr;
      float* yb = ys + m0 * N + p * kPanel;
      if (cols > 16) rows<2>(xb, K, wb, gs, yb, N, cols, m);
      else rows<1>(xb, K, wb, gs, yb, N, cols, m);
    }
  });
  return ffi::Error::Success();
}

ffi::Error Plain(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wp,
                 ffi::ResultBuffer<ffi::F32> y) {
  return Run(pool, x, wp, nullptr, 1, y);
}

ffi::Error Gated(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wp,
                 ffi::Buffer<ffi::F32> gate, ffi::ResultBuffer<ffi::F32> y) {
  auto gd = gate.dimensions();
  if (gd.size() != 2 || gd[1] != x.dimensions()[1])
    return ffi::Error::InvalidArgument("expected gate (S, K)");
  return Run(pool, x, wp, gate.typed_data(), gd[0], y);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoPointwise, Plain,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoPointwiseGated, Gated,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
