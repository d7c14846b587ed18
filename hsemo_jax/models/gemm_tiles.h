// The register-tiled GEMM shared by gemm.cc (1x1 and stem convolutions) and fused_depthwise.cc (an
// expansion 1x1 convolution computed row by row into the depthwise kernel's input ring).
//
// w comes packed in panels of 32 columns, wp (P, K, 32) with P = ceil(N / 32), zero beyond N
// (`pack_panels` in cpu_kernels.py; for inference weights XLA folds the packing at compile
// time). A register tile (up to kRows rows x kTileCols columns) runs over all of K: the panel
// streams from L2 while each row's x is broadcast from L1, so there is no K blocking and no
// packing of x.
#pragma once

#include "cpu_kernels.h"

namespace gemm {

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

}  // namespace gemm
