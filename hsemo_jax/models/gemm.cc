// GEMM kernels for XLA:CPU, loaded through jax.ffi (cpu_kernels.py):
//
//   y (M, N) = x (M, K) @ w (K, N)                            HsemoPointwise (1x1 convolutions)
//   y[i] = (x[i] * gate[s]) @ w,  s = i / (M / S)              HsemoPointwiseGated, gate (S, K)
//   y = act(conv(xp, w, stride) * scale + shift), xp padded     HsemoConvAct (small dense convs)
//
// The gated form is a squeeze-excite gate (one row per sample) applied to the weights, K * 32
// multiplies per panel and tile, instead of a pass over x. HsemoConvAct is a convolution as an
// implicit GEMM (the backbones' stems: 3 input channels, where a library convolution is slow): an
// output pixel's row of the GEMM is, per kernel row, k * C consecutive floats of xp.
//
// w comes packed in panels of 32 columns, wp (P, K, 32) with P = ceil(N / 32), zero beyond N
// (`pack_panels` in cpu_kernels.py; for inference weights XLA folds the packing at compile
// time). A register tile (up to kRows rows x kTileCols columns) runs over all of K: the panel
// streams from L2 while each row's x is broadcast from L1, so there is no K blocking and no
// packing of x. Work is split over XLA's intra-op pool.

#include "cpu_kernels.h"

namespace {

constexpr int kPanel = 32;  // columns per packed panel
// A register tile: kRows x kTileCols, its accumulators in 24 of 32 registers (AVX-512: 12 x 32) or
// 12 of 16 (AVX2: 6 x 16, a panel being two tiles side by side).
constexpr int kTileCols = 2 * kLanes;
constexpr int kRows = kVectorRegisters == 32 ? 12 : 6;  // at most 12 (`rows`)

// How a tile reads x: value k of segment j of row r is x[j * seg + r * ld + k], k < K (one
// segment for a 1x1 convolution; one per kernel row for HsemoConvAct). Weight row j * K + k.
struct Operand {
  const float* x;
  int64_t ld, K, segs, seg;
};

// What a tile does to its sums before storing them: silu?(acc * scale + shift) per column; no
// scale (nullptr): stored as they are. Pointers at the panel's first column, P * 32 long.
struct Epilogue {
  const float* scale = nullptr;
  const float* shift = nullptr;
  bool silu = false;
};

// Rows [0, R) of a tile, its first V vectors of columns: acc = x[R, :] @ (gate * wp[:, kLanes V])
// (no gate: nullptr; wp at the tile's first column, rows 32 apart), through the epilogue, stored to
// y (row stride ldy) for the `cols` valid columns.
template <int R, int V>
static void tile(const Operand& a, const float* wp, const float* gate, const Epilogue& e, float* y,
                 int64_t ldy, int64_t cols) {
  vf acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = vf{};
  for (int64_t j = 0; j < a.segs; ++j) {
    const float* x = a.x + j * a.seg;
    const float* w = wp + j * a.K * kPanel;
    const float* g = gate ? gate + j * a.K : nullptr;
    for (int64_t k = 0; k < a.K; ++k) {
      vf b[V];
      for (int v = 0; v < V; ++v) b[v] = ld(w + k * kPanel + kLanes * v);
      if (g)
        for (int v = 0; v < V; ++v) b[v] *= g[k];
      for (int r = 0; r < R; ++r) {
        const vf xr = splat(x[r * a.ld + k]);
        for (int v = 0; v < V; ++v) acc[r][v] += xr * b[v];
      }
    }
  }
  for (int v = 0; v < V; ++v) {
    const int64_t c = kLanes * v, n = std::min<int64_t>(kLanes, cols - c);
    if (n <= 0) break;
    const vf sc = e.scale ? ld(e.scale + c) : vf{}, sh = e.scale ? ld(e.shift + c) : vf{};
    for (int r = 0; r < R; ++r) {
      vf out = acc[r][v];
      if (e.scale) out = out * sc + sh;
      if (e.silu) out = silu(out);
      if (n == kLanes) st(y + r * ldy + c, out);
      else std::memcpy(y + r * ldy + c, &out, n * sizeof(float));
    }
  }
}

// Rows [0, m) as ceil(m / kRows) tiles of near-equal height (49 rows by 12: 10, 10, 10, 10, 9; a
// tail tile of one row would run at a fraction of the speed), through the panel at wp.
static void rows(Operand a, const float* wp, const float* gate, const Epilogue& e, float* y,
                 int64_t ldy, int64_t cols, int64_t m) {
  const int64_t tiles = (m + kRows - 1) / kRows;
  const float* x0 = a.x;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t i = t * m / tiles, h = (t + 1) * m / tiles - i;
    a.x = x0 + i * a.ld;
    for (int64_t c = 0; c < cols; c += kTileCols) {
      const Epilogue ec{e.scale ? e.scale + c : nullptr, e.scale ? e.shift + c : nullptr, e.silu};
      float* yt = y + i * ldy + c;
      switch (h * 2 + (cols - c > kLanes)) {
#define TILE(RR) \
        case 2 * RR: tile<RR, 1>(a, wp + c, gate, ec, yt, ldy, cols - c); break; \
        case 2 * RR + 1: tile<RR, 2>(a, wp + c, gate, ec, yt, ldy, cols - c); break;
        TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6) TILE(7) TILE(8) TILE(9) TILE(10) TILE(11) TILE(12)
#undef TILE
        default: break;
      }
    }
  }
}

// Groups of panels per row block: 1 when the row blocks alone give at least 4 units per thread,
// else enough groups (at most one per panel) for that (small images: few rows, wide layers).
static int64_t panel_groups(int64_t blocks, int64_t panels, int64_t threads) {
  if (blocks >= 4 * threads) return 1;
  return std::min<int64_t>(panels, (4 * threads + blocks - 1) / std::max<int64_t>(blocks, 1));
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
  const int64_t groups = panel_groups(blocks, P, threads);
  parallel_units(pool, blocks * groups, [&](int64_t, int64_t u) {
    const int64_t b = u / groups, g = u % groups, s = b / sample_blocks;
    const int64_t m0 = s * per_sample + (b % sample_blocks) * block, m = std::min(block, (s + 1) * per_sample - m0);
    for (int64_t p = g * P / groups; p < (g + 1) * P / groups; ++p) {
      rows(Operand{xs + m0 * K, K, K, 1, 0}, ws + p * K * kPanel, gate ? gate + s * K : nullptr,
           Epilogue{}, ys + m0 * N + p * kPanel, N, std::min<int64_t>(kPanel, N - p * kPanel), m);
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

ffi::Error ConvAct(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp, ffi::Buffer<ffi::F32> wp,
                   ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift, int64_t k, int64_t stride,
                   int64_t act, ffi::ResultBuffer<ffi::F32> y) {
  auto xd = xp.dimensions(), wd = wp.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 3 || yd.size() != 4 || wd[2] != kPanel)
    return ffi::Error::InvalidArgument("expected xp (N, H, W, C), wp (P, k * k * C, 32), y (N, OH, OW, D)");
  const int64_t N = xd[0], H = xd[1], W = xd[2], C = xd[3], OH = yd[1], OW = yd[2], D = yd[3], P = wd[0];
  if (k < 1 || stride < 1 || k * k * C != wd[1] || yd[0] != N || P != (D + kPanel - 1) / kPanel ||
      (OH - 1) * stride + k > H || (OW - 1) * stride + k > W ||
      scale.element_count() != P * kPanel || shift.element_count() != P * kPanel)
    return ffi::Error::InvalidArgument("shapes of xp, wp, scale, shift and y do not agree");
  const float* xs = xp.typed_data();
  const float* ws = wp.typed_data();
  float* ys = y->typed_data();
  // Units: blocks of output rows (N * OH of them), each through all panels, or through groups of
  // panels when there are fewer than 4 rows per thread (a 7x7 map: 7 rows).
  const int64_t out_rows = N * OH, threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t blocks = std::min<int64_t>(out_rows, 8 * threads);
  const int64_t groups = panel_groups(blocks, P, threads);
  parallel_units(pool, blocks * groups, [&](int64_t, int64_t u) {
    const int64_t b = u / groups, g = u % groups;
    for (int64_t r = b * out_rows / blocks; r < (b + 1) * out_rows / blocks; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      const Operand a{xs + ((n * H + oh * stride) * W) * C, stride * C, k * C, k, W * C};
      for (int64_t p = g * P / groups; p < (g + 1) * P / groups; ++p) {
        const Epilogue e{scale.typed_data() + p * kPanel, shift.typed_data() + p * kPanel, act != 0};
        rows(a, ws + p * k * k * C * kPanel, nullptr, e, ys + r * OW * D + p * kPanel, D,
             std::min<int64_t>(kPanel, D - p * kPanel), OW);
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoPointwise, Plain,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoPointwiseGated, Gated,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoConvAct, ConvAct,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Attr<int64_t>("k").Attr<int64_t>("stride")
    .Attr<int64_t>("act")
    .Ret<ffi::Buffer<ffi::F32>>());
