// Fused depthwise convolution for XLA:CPU (loaded through jax.ffi by fused_depthwise.py).
//
//   y = act_out(depthwise(act_in(x * in_scale + in_shift), w) * out_scale + out_shift)
//   sums[n, c] = sum over (i, j) of y[n, i, j, c]            (the squeeze-excite means, times OH*OW)
//
// NHWC float32, C a multiple of 16, square kernels 3 or 5, stride 1 or 2, zero padding given by its
// top/left amounts (the output shape fixes the rest). act_in: 0 = identity (scales ignored), 1 =
// SiLU of the affine input; act_out: 0 = affine only, 1 = SiLU. Each input row is transformed once
// into a ring of K zero-padded rows, so the activated input never goes back to memory, and XLA's
// habit of recomputing the input activation once per tap is gone. Work is split over XLA's
// intra-op thread pool (images, or blocks of channels when the batch is small).
//
// HsemoExpandDepthwise is the same with x = xin @ we, an expansion 1x1 convolution (xin (N, H, W,
// Cin), we packed in 32-column panels as gemm_tiles.h takes them): each input row of the ring is
// computed from xin by the GEMM tiles, its affine and SiLU applied before the store, so the
// expanded tensor (B0's first block: 112 x 112 x 96 floats per image) never goes to memory.
#include <vector>

#include "gemm_tiles.h"

struct Args {
  const float *x, *isc, *ish, *w, *osc, *osh;
  float* y;
  int64_t N, H, W, C, OH, OW, pt, pl;
  bool in_act, out_act;
  const float* we = nullptr;  // expansion weights (P, Cin, 32); x is then xin (N, H, W, Cin)
  int64_t Cin = 0;
};

// Channel blocks [cb_begin, cb_end) (16 channels each) of image n, and their per-channel sums
// into sums[C] (image n's row).
template <int K, int S>
static void run(const Args& a, int64_t n, int64_t cb_begin, int64_t cb_end, float* sums) {
  // output columns per register block (accumulators of kLanes channels): single-core timings of
  // B0's layers with AVX-512 favoured 4 for 3x3 kernels (10-25% faster than 8) and 8 for 5x5 ones
  constexpr int OWB = K == 3 ? 4 : 8;
  const float *x = a.x, *isc = a.isc, *ish = a.ish, *w = a.w, *osc = a.osc, *osh = a.osh;
  float* y = a.y;
  const int64_t H = a.H, W = a.W, C = a.C, OH = a.OH, OW = a.OW, pt = a.pt, pl = a.pl;
  const bool in_act = a.in_act, out_act = a.out_act;
  // Ring of K input rows, channel-blocked: row[c / 16][col][16], so that within a block the
  // columns a tap reads lie 64 bytes apart (immediate offsets, sequential prefetch).
  const int64_t RW = std::max<int64_t>((OW - 1) * S + K, pl + W) + OWB * S;  // columns, padded
  const int64_t CB = cb_end - cb_begin, row_size = CB * RW * 16;
  std::vector<float> storage(static_cast<size_t>(K * row_size + 16), 0.0f);
  const uintptr_t raw = reinterpret_cast<uintptr_t>(storage.data());
  float* const base = reinterpret_cast<float*>((raw + 63) & ~uintptr_t(63));
  int64_t row_of[K];
  for (int k = 0; k < K; ++k) row_of[k] = INT64_MIN;
  if (!a.we) x += cb_begin * 16;
  isc += cb_begin * 16, ish += cb_begin * 16, w += cb_begin * 16;
  osc += cb_begin * 16, osh += cb_begin * 16, y += cb_begin * 16, sums += cb_begin * 16;
  std::memset(sums, 0, CB * 64);
  for (int64_t oh = 0; oh < OH; ++oh) {
    const float* rows[K];
    for (int kh = 0; kh < K; ++kh) {
      const int64_t ih = oh * S - pt + kh;
      const int slot = int(((ih % K) + K) % K);
      float* r = base + slot * row_size;
      rows[kh] = r;
      if (row_of[slot] == ih) continue;
      row_of[slot] = ih;
      if (ih < 0 || ih >= H) {  // padding row (the padding columns are never written: zero)
        for (int64_t cb = 0; cb < CB; ++cb) std::memset(r + (cb * RW + pl) * 16, 0, W * 64);
        continue;
      }
      if (a.we) {  // the row is xin's row times the unit's 16-column halves of the panels
        const float* src = x + ((n * H + ih) * W) * a.Cin;
        for (int64_t cb = 0; cb < CB; ++cb) {
          const int64_t g = cb_begin + cb;
          gemm::rows(gemm::Operand{src, a.Cin, a.Cin, 1, 0},
                     a.we + (g / 2) * a.Cin * gemm::kPanel + (g % 2) * 16, 1, nullptr,
                     gemm::Epilogue{isc + cb * 16, ish + cb * 16, in_act ? gemm::kSilu : gemm::kNone},
                     r + (cb * RW + pl) * 16, 16, 16, W);
        }
        continue;
      }
      const float* src = x + ((n * H + ih) * W) * C;
      for (int64_t iw = 0; iw < W; ++iw)
        for (int64_t cb = 0; cb < CB; ++cb) {
          for (int j = 0; j < 16; j += kLanes) {
            vf v = ld(src + iw * C + cb * 16 + j);
            if (in_act) v = silu(v * ld(isc + cb * 16 + j) + ld(ish + cb * 16 + j));
            st(r + (cb * RW + pl + iw) * 16 + j, v);
          }
        }
    }
    float* yrow = y + (n * OH + oh) * OW * C;
    for (int64_t c0 = 0; c0 < CB * 16; c0 += kLanes) {  // kLanes channels of block c0 / 16
      const int64_t cb = c0 / 16, j = c0 % 16;
      const vf sc = ld(osc + c0), sf = ld(osh + c0);
      vf wv[K * K];
      for (int t = 0; t < K * K; ++t) wv[t] = ld(w + t * C + c0);
      vf total = ld(sums + c0);
      for (int64_t ow0 = 0; ow0 < OW; ow0 += OWB) {
        vf acc[OWB];
        for (int b = 0; b < OWB; ++b) acc[b] = vf{};
        for (int kh = 0; kh < K; ++kh) {
          const float* r = rows[kh] + (cb * RW + ow0 * S) * 16 + j;
          for (int kw = 0; kw < K; ++kw)
            for (int b = 0; b < OWB; ++b) acc[b] += ld(r + (b * S + kw) * 16) * wv[kh * K + kw];
        }
        const int nb = int(std::min<int64_t>(OWB, OW - ow0));
        for (int b = 0; b < nb; ++b) {
          vf v = acc[b] * sc + sf;
          if (out_act) v = silu(v);
          total += v;
          st(yrow + (ow0 + b) * C + c0, v);
        }
      }
      st(sums + c0, total);
    }
  }
}

// Validates the output shapes against args (x's H, W, C given) and runs it over the pool.
static ffi::Error Launch(ffi::ThreadPool& pool, Args args, int64_t K, int64_t stride,
                         const ffi::Buffer<ffi::F32>& w, const ffi::Buffer<ffi::F32>& isc,
                         const ffi::Buffer<ffi::F32>& ish, const ffi::Buffer<ffi::F32>& osc,
                         const ffi::Buffer<ffi::F32>& osh, ffi::ResultBuffer<ffi::F32>& y,
                         ffi::ResultBuffer<ffi::F32>& sums) {
  auto wd = w.dimensions(); auto yd = y->dimensions();
  if (wd.size() != 3 || yd.size() != 4) return ffi::Error::InvalidArgument("expected w (K, K, C), y (N, OH, OW, C)");
  const int64_t N = args.N, C = args.C;
  if (C % 16) return ffi::Error::InvalidArgument("channels must be a multiple of 16");
  if (wd[0] != K || wd[1] != K || wd[2] != C || yd[0] != N || yd[3] != C || args.pt < 0 || args.pl < 0 ||
      isc.element_count() != C || ish.element_count() != C || osc.element_count() != C ||
      osh.element_count() != C || sums->element_count() != N * C)
    return ffi::Error::InvalidArgument("shapes of x, w, scales, y and sums do not agree");
  args.OH = yd[1], args.OW = yd[2];
  args.isc = isc.typed_data(), args.ish = ish.typed_data(), args.w = w.typed_data();
  args.osc = osc.typed_data(), args.osh = osh.typed_data(), args.y = y->typed_data();
  void (*fn)(const Args&, int64_t, int64_t, int64_t, float*);
#define CASE(KK, SS) else if (K == KK && stride == SS) fn = run<KK, SS>;
  if (false) {}
  CASE(3, 1) CASE(3, 2) CASE(5, 1) CASE(5, 2)
  else return ffi::Error::InvalidArgument("unsupported kernel size or stride (3 or 5, 1 or 2)");
#undef CASE
  // Units: whole images when there are enough of them, else blocks of channels (independent in a
  // depthwise convolution, so no unit recomputes another's input rows); each writes its channels'
  // SE sums. Every output and every sum is computed whole by one unit, in an order that does not
  // depend on the split: the same bits whatever the pool's size and whichever thread runs what.
  const int64_t threads = std::max<int64_t>(1, pool.num_threads()), CB = C / 16;
  const int64_t per_image = N >= 4 * threads ? 1 : std::min<int64_t>(CB, (4 * threads + N - 1) / N);
  float* sums_out = sums->typed_data();
  parallel_units(pool, N * per_image, [&](int64_t u) {
    const int64_t n = u / per_image, part = u % per_image;
    fn(args, n, part * CB / per_image, (part + 1) * CB / per_image, sums_out + n * C);
  });
  return ffi::Error::Success();
}

static ffi::Error Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> isc,
                       ffi::Buffer<ffi::F32> ish, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> osc,
                       ffi::Buffer<ffi::F32> osh,
                       int64_t stride, int64_t pt, int64_t pl, int64_t in_act, int64_t out_act,
                       ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> sums) {
  auto xd = x.dimensions();
  if (xd.size() != 4) return ffi::Error::InvalidArgument("expected x (N, H, W, C)");
  Args args{x.typed_data(), nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, xd[0], xd[1], xd[2],
            xd[3], 0, 0, pt, pl, in_act != 0, out_act != 0};
  return Launch(pool, args, w.dimensions()[0], stride, w, isc, ish, osc, osh, y, sums);
}

static ffi::Error ExpandImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xin, ffi::Buffer<ffi::F32> we,
                             ffi::Buffer<ffi::F32> isc, ffi::Buffer<ffi::F32> ish, ffi::Buffer<ffi::F32> w,
                             ffi::Buffer<ffi::F32> osc, ffi::Buffer<ffi::F32> osh,
                             int64_t stride, int64_t pt, int64_t pl, int64_t out_act,
                             ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> sums) {
  auto xd = xin.dimensions(); auto ed = we.dimensions(); auto wd = w.dimensions();
  if (xd.size() != 4 || ed.size() != 3 || wd.size() != 3)
    return ffi::Error::InvalidArgument("expected xin (N, H, W, Cin), we (P, Cin, 32), w (K, K, C)");
  const int64_t C = wd[2];
  if (ed[1] != xd[3] || ed[2] != gemm::kPanel || ed[0] != (C + gemm::kPanel - 1) / gemm::kPanel)
    return ffi::Error::InvalidArgument("shapes of xin, we and w do not agree");
  Args args{xin.typed_data(), nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, xd[0], xd[1], xd[2],
            C, 0, 0, pt, pl, true, out_act != 0, we.typed_data(), xd[3]};
  return Launch(pool, args, wd[0], stride, w, isc, ish, osc, osh, y, sums);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoFusedDepthwise, Impl,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Attr<int64_t>("stride").Attr<int64_t>("pt").Attr<int64_t>("pl").Attr<int64_t>("in_act")
    .Attr<int64_t>("out_act").Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoExpandDepthwise, ExpandImpl,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Attr<int64_t>("stride").Attr<int64_t>("pt").Attr<int64_t>("pl").Attr<int64_t>("out_act")
    .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
