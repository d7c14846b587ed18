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

// What a tile does to its sums before storing them: act(acc * scale + shift) + residual per
// column; no scale (nullptr): no affine; no residual: none added. scale and shift at the panel's
// first column (N long); residual at the output's first element, laid out like it. The last
// vector of a row reads and writes only the valid columns.
enum Act : int64_t { kNone = 0, kSilu = 1, kSigmoid = 2 };
struct Epilogue {
  const float* scale = nullptr;
  const float* shift = nullptr;
  int64_t act = kNone;
  const float* residual = nullptr;
};

// The tile fetches its weights kPrefetchRows k-rows ahead of use (its V * kLanes + 8 H floats: one
// 64-byte line on AVX2, up to two with AVX-512). The hardware prefetcher misses these 64-128-byte
// pieces 128 bytes apart, and at batch 1 the weights come from L3 or memory (MobileViT's 42 MB do
// not fit 32 MB of L3): in-model A/B on AVX2, MobileViT batch 1 +14%, B0 batch 1 +7%, MobileViT
// batch 32 +6%; 8 to 64 rows ahead measured alike.
constexpr int64_t kPrefetchRows = 16;
template <int V, int H>
constexpr int kPrefetchLines = ((V * kLanes + 8 * H) * 4 + 63) / 64;

// An 8-float vector: with AVX-512, the last 8 of a tile's 24 columns (N = 24: EfficientNet's narrow
// projections) in the lower half of a register. One core, cached operands: 24 columns as 1.5
// vectors ran 41-48 GFMA/s of useful work, as two full ones (a quarter wasted) 39-43.
typedef float vh __attribute__((vector_size(32), aligned(4), may_alias));
static inline vh lower_half(vf v) {
#if defined(__AVX512F__)
  return (vh)_mm512_castps512_ps256((__m512)v);
#else
  return (vh)v;
#endif
}
static inline vf widen(vh v) {
  vf out{};
  std::memcpy(&out, &v, sizeof v);
  return out;
}

// Rows [0, R) of a tile, its first V vectors of columns and, with H, 8 more: acc = x[R, :] @
// (gate * wp[:, kLanes V + 8 H]) (no gate: nullptr; wp at the tile's first column, rows 32 apart),
// through the epilogue, stored to y (row stride ldy) for the `cols` valid columns.
template <int R, int V, int H>
static void tile(const Operand& a, const float* wp, const float* gate, const Epilogue& e, float* y,
                 int64_t ldy, int64_t cols) {
  vf acc[R][V + 1];
  vh acc_h[R][H + 1];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) acc[r][v] = vf{};
    if (H) acc_h[r][0] = vh{};
  }
  for (int64_t j = 0; j < a.segs; ++j) {
    const float* x = a.x + j * a.seg;
    const float* w = wp + j * a.K * kPanel;
    const float* g = gate ? gate + j * a.K : nullptr;
    for (int64_t k = 0; k < a.K; ++k) {
      for (int l = 0; l < kPrefetchLines<V, H>; ++l)
        __builtin_prefetch(w + (k + kPrefetchRows) * kPanel + 16 * l, 0, 3);
      vf b[V + 1];
      vh bh{};
      for (int v = 0; v < V; ++v) b[v] = ld(w + k * kPanel + kLanes * v);
      if (H) std::memcpy(&bh, w + k * kPanel + kLanes * V, sizeof bh);
      if (g) {
        for (int v = 0; v < V; ++v) b[v] *= g[k];
        if (H) bh *= g[k];
      }
      for (int r = 0; r < R; ++r) {
        const vf xr = splat(x[r * a.ld + k]);
        for (int v = 0; v < V; ++v) acc[r][v] += xr * b[v];
        if (H) acc_h[r][0] += lower_half(xr) * bh;
      }
    }
  }
  for (int v = 0; v < V + H; ++v) {
    const int64_t c = kLanes * v, n = std::min<int64_t>(kLanes, cols - c);
    if (n <= 0) break;
    const vf sc = e.scale ? ld_first(e.scale + c, n) : vf{}, sh = e.scale ? ld_first(e.shift + c, n) : vf{};
    for (int r = 0; r < R; ++r) {
      vf out = v < V ? acc[r][v] : widen(acc_h[r][0]);
      if (e.scale) out = out * sc + sh;
      if (e.act == kSilu) out = silu(out);
      else if (e.act == kSigmoid) out = sigmoid(out);
      if (e.residual) out += ld_first(e.residual + r * ldy + c, n);
      st_first(y + r * ldy + c, out, n);
    }
  }
}

// Panels per pass of `rows` whose weights (k_total x 32 floats each) fit ~64 KB, so that they stay in
// L2 while every row tile goes through them (one panel when a panel alone is larger).
static inline int64_t panels_per_pass(int64_t k_total) {
  return std::max<int64_t>(1, 65536 / (k_total * kPanel * int64_t(sizeof(float))));
}

// Rows [0, m) as ceil(m / kRows) tiles of near-equal height (49 rows by 12: 10, 10, 10, 10, 9; a
// tail tile of one row would run at a fraction of the speed), each tile through `panels`
// consecutive panels (the first at wp, a.segs * a.K * 32 floats apart) before the next: a tile's
// output rows are written whole and once, where a pass over all rows per panel wrote each row in
// 128-byte pieces and, for outputs beyond the cache, read it back per panel (12544 x 16 -> 96:
// 1.9x slower). `cols`: the valid columns from the first panel's first column on.
static void rows(Operand a, const float* wp, int64_t panels, const float* gate, const Epilogue& e,
                 float* y, int64_t ldy, int64_t cols, int64_t m) {
  const int64_t tiles = (m + kRows - 1) / kRows, stride = a.segs * a.K * kPanel;
  const int64_t last = std::min<int64_t>(cols, panels * kPanel);
  const float* x0 = a.x;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t i = t * m / tiles, h = (t + 1) * m / tiles - i;
    a.x = x0 + i * a.ld;
    for (int64_t c = 0; c < last; c += kTileCols) {
      const Epilogue ec{e.scale ? e.scale + c : nullptr, e.scale ? e.shift + c : nullptr, e.act,
                        e.residual ? e.residual + i * ldy + c : nullptr};
      const float* w = wp + (c / kPanel) * stride + c % kPanel;
      float* yt = y + i * ldy + c;
      // the tile's width: one or two full vectors, or with AVX-512 one and a half for 17-24 columns
      // (a half vector alone, for up to 8, ran slower than a full one: 19-24 against 28 GFMA/s of
      // useful work, one core, cached operands)
      const int64_t width = std::min<int64_t>(kTileCols, last - c);
      const int64_t shape = width <= kLanes ? 0 : kLanes == 16 && width <= 24 ? 1 : 2;
      switch (h * 3 + shape) {
#define TILE(RR) \
        case 3 * RR: tile<RR, 1, 0>(a, w, gate, ec, yt, ldy, last - c); break; \
        case 3 * RR + 1: tile<RR, 1, 1>(a, w, gate, ec, yt, ldy, last - c); break; \
        case 3 * RR + 2: tile<RR, 2, 0>(a, w, gate, ec, yt, ldy, last - c); break;
        TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6) TILE(7) TILE(8) TILE(9) TILE(10) TILE(11) TILE(12)
#undef TILE
        default: break;
      }
    }
  }
}

}  // namespace gemm
