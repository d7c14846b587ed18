// GEMM kernels for XLA:CPU, loaded through jax.ffi (cpu_kernels.py):
//
//   y[i] = act(((x[i] * gate[s]) @ w) * scale + shift) + residual[i],  s = i / (M / S)
//                                                              HsemoPointwise (1x1 convolutions)
//   y = act(conv(xp, w, stride) * scale + shift), xp padded     HsemoConvAct (small dense convs)
//
// gate (S, K), scale and shift (N) and residual (M, N) are optional (an empty buffer: none); act
// none, SiLU or sigmoid: a 1x1 convolution with its batch norm, activation and skip connection in
// one pass. The gate is a squeeze-excite gate (one row per sample) applied to the weights, K * 32
// multiplies per panel and tile, instead of a pass over x. HsemoConvAct is a convolution as an
// implicit GEMM (the backbones' stems: 3 input channels, where a library convolution is slow): an
// output pixel's row of the GEMM is, per kernel row, k * C consecutive floats of xp.
//
// The register tiles are gemm_tiles.h's; here the work is split over XLA's intra-op pool, by rows
// and by panels (columns), never along K: each output is one tile's sum over all of K in order,
// so the bits do not depend on the split (nor on the pool's size, nor on which thread runs what).

#include "gemm_tiles.h"

namespace {

using gemm::Epilogue;
using gemm::kPanel;
using gemm::kRows;
using gemm::Operand;
using gemm::rows;

// Groups of panels per row block: 1 when the row blocks alone give at least 4 units per thread,
// else enough groups (at most one per panel) for that (small images: few rows, wide layers).
static int64_t panel_groups(int64_t blocks, int64_t panels, int64_t threads) {
  if (blocks >= 4 * threads) return 1;
  return std::min<int64_t>(panels, (4 * threads + blocks - 1) / std::max<int64_t>(blocks, 1));
}

ffi::Error Pointwise(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wp,
                     ffi::Buffer<ffi::F32> gate, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
                     ffi::Buffer<ffi::F32> residual, int64_t act, ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions(), wd = wp.dimensions(), yd = y->dimensions(), gd = gate.dimensions();
  if (xd.size() != 2 || wd.size() != 3 || yd.size() != 2 || wd[2] != kPanel || gd.size() != 2)
    return ffi::Error::InvalidArgument("expected x (M, K), wp (P, K, 32), gate (S | 0, K), y (M, N)");
  const int64_t M = xd[0], K = xd[1], N = yd[1], P = wd[0], S = std::max<int64_t>(1, gd[0]);
  const bool gated = gd[0] > 0, affine = scale.element_count() > 0, res = residual.element_count() > 0;
  if (wd[1] != K || yd[0] != M || P != (N + kPanel - 1) / kPanel || M % S || (gated && gd[1] != K) ||
      (affine && (scale.element_count() != N || shift.element_count() != N)) ||
      (res && residual.element_count() != M * N) || act < gemm::kNone || act > gemm::kSigmoid)
    return ffi::Error::InvalidArgument("shapes of x, wp, gate, scale, shift, residual and y do not agree");
  const float* xs = x.typed_data();
  const float* ws = wp.typed_data();
  const float* gs = gated ? gate.typed_data() : nullptr;
  float* ys = y->typed_data();
  // Units: blocks of rows within one sample (one gate) whose x (rows x K floats) stays within
  // ~256 KB of L2, each through all panels (in passes of ~64 KB of weights, `rows`), so that x is
  // read from memory once; when that gives fewer than 4 units per thread, each row block is split
  // further into groups of panels (small images: few rows, wide layers). Products below ~2^18
  // multiply-adds (a squeeze-excite layer's) run on the calling thread alone: waking a helper
  // costs 10-16 us, about what one core takes for them.
  const int64_t threads = M * K * N < (1 << 18) ? 1 : std::max<int64_t>(1, pool.num_threads());
  const int64_t per_sample = M / S;
  const int64_t l2_rows = std::max<int64_t>(kRows, 65536 / std::max<int64_t>(K, 1));
  const int64_t block = std::min(per_sample, (l2_rows + kRows - 1) / kRows * kRows);
  const int64_t sample_blocks = block ? (per_sample + block - 1) / block : 0, blocks = S * sample_blocks;
  const int64_t groups = threads == 1 ? 1 : panel_groups(blocks, P, threads), pass = gemm::panels_per_pass(K);
  auto unit = [&](int64_t u) {
    const int64_t b = u / groups, g = u % groups, s = b / sample_blocks;
    const int64_t m0 = s * per_sample + (b % sample_blocks) * block, m = std::min(block, (s + 1) * per_sample - m0);
    const int64_t p_end = (g + 1) * P / groups;
    for (int64_t p = g * P / groups; p < p_end; p += pass) {
      const Epilogue e{affine ? scale.typed_data() + p * kPanel : nullptr,
                       affine ? shift.typed_data() + p * kPanel : nullptr, act,
                       res ? residual.typed_data() + m0 * N + p * kPanel : nullptr};
      rows(Operand{xs + m0 * K, K, K, 1, 0}, ws + p * K * kPanel, std::min(pass, p_end - p),
           gs ? gs + s * K : nullptr, e, ys + m0 * N + p * kPanel, N, N - p * kPanel, m);
    }
  };
  if (threads == 1)
    for (int64_t u = 0; u < blocks * groups; ++u) unit(u);
  else
    parallel_units(pool, blocks * groups, unit);
  return ffi::Error::Success();
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
      scale.element_count() != D || shift.element_count() != D)
    return ffi::Error::InvalidArgument("shapes of xp, wp, scale, shift and y do not agree");
  const float* xs = xp.typed_data();
  const float* ws = wp.typed_data();
  float* ys = y->typed_data();
  // Units: blocks of output rows (N * OH of them), each through all panels, or through groups of
  // panels when there are fewer than 4 rows per thread (a 7x7 map: 7 rows).
  const int64_t out_rows = N * OH, threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t blocks = std::min<int64_t>(out_rows, 8 * threads);
  const int64_t groups = panel_groups(blocks, P, threads), pass = gemm::panels_per_pass(k * k * C);
  parallel_units(pool, blocks * groups, [&](int64_t u) {
    const int64_t b = u / groups, g = u % groups;
    for (int64_t r = b * out_rows / blocks; r < (b + 1) * out_rows / blocks; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      const Operand a{xs + ((n * H + oh * stride) * W) * C, stride * C, k * C, k, W * C};
      const int64_t p_end = (g + 1) * P / groups;
      for (int64_t p = g * P / groups; p < p_end; p += pass) {
        const Epilogue e{scale.typed_data() + p * kPanel, shift.typed_data() + p * kPanel,
                         act ? gemm::kSilu : gemm::kNone};
        rows(a, ws + p * k * k * C * kPanel, std::min(pass, p_end - p), nullptr, e,
             ys + r * OW * D + p * kPanel, D, D - p * kPanel, OW);
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoPointwise, Pointwise,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Attr<int64_t>("act").Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoConvAct, ConvAct,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Attr<int64_t>("k").Attr<int64_t>("stride")
    .Attr<int64_t>("act")
    .Ret<ffi::Buffer<ffi::F32>>());
