// Gradients of a depthwise convolution for XLA:CPU (loaded through jax.ffi by cpu_kernels.py).
//
//   forward:  y[n, i, j, c] = sum over (p, q) of xp[n, i*S + p, j*S + q, c] * w[p, q, c]
//   dw[p, q, c] = sum over (n, i, j) of xp[n, i*S + p, j*S + q, c] * g[n, i, j, c]
//   dx = the scatter of g[n, i, j, c] * w[p, q, c] to padded position (i*S + p, j*S + q), cropped
//        by the padding (top/left pt, pl; dx's shape fixes the rest)
//
// xp is the zero-padded input, g the output gradient; NHWC float32, C a multiple of 16, square
// kernels 3, 5 or 7, stride 1 or 2. HsemoDepthwiseGradSilu takes the convolution's input as
// xp = pad(silu(h * scale + shift)) (EfficientNet's training-mode MBConv middle, whose forward is
// fused_depthwise.cc with in_act): it rebuilds xp's rows from h in a ring, as the forward does, and
// returns dh, dscale and dshift in place of dx. One pass over g and xp computes all of it: XLA's
// form computed the kernel gradient as one full-size product per tap (9 or 25 of them), each
// recomputing g's whole producer chain (batch norm and SiLU backward). The scattered input gradient accumulates in a ring
// of K padded rows, written to dx as rows complete. Work is split over XLA's intra-op pool in chunks
// of whole images fixed by N alone (FixedChunks), each chunk with its own kernel-gradient sums, merged
// in chunk order: the same bits on every call and with any number of threads (sums per worker, with
// images claimed by whichever thread came first, made two identical training runs differ).
#include <vector>

#include "cpu_kernels.h"

struct GradArgs {
  const float *xp, *g, *w;
  float* dx;
  int64_t Hp, Wp, C, OH, OW, H, W, pt, pl;
  const float *h, *isc, *ish;  // ACT only: xp = pad(silu(h * isc + ish)), h (N, H, W, C)
};

// Image n: its dx rows (ACT: dh rows), and its kernel-gradient terms added to dk[K*K*C] (ACT: its
// scale and shift gradients added to dsc[C], dsh[C]).
template <int K, int S, bool ACT>
static void grad_image(const GradArgs& a, int64_t n, float* dk, float* dsc, float* dsh) {
  constexpr int OWB = 4;                  // output columns per register block
  constexpr int R = (OWB - 1) * S + K;    // padded input columns one block touches
  const int64_t C = a.C, Wp = a.Wp, OW = a.OW, Hp = a.Hp, W = a.W, pl = a.pl;
  const int64_t RW = Wp + OWB * S + K;    // ring row width in columns (blocks may run past Wp)
  std::vector<float> ring(static_cast<size_t>(K * RW * C), 0.0f);  // [slot][column][C]
  const float* gn = a.g + n * a.OH * OW * C;
  float* dxn = a.dx + n * a.H * W * C;
  // ACT: the activated input rows, rebuilt from h into a ring of K padded rows
  std::vector<float> xring(ACT ? static_cast<size_t>(K * Wp * C) : 0, 0.0f);
  int64_t xrow_of[K];
  for (int p = 0; p < K; ++p) xrow_of[p] = -1;
  const float* hn = ACT ? a.h + n * a.H * W * C : nullptr;
  auto xrow = [&](int64_t pr) -> const float* {  // padded input row pr
    if (!ACT) return a.xp + (n * Hp + pr) * Wp * C;
    float* r = xring.data() + (pr % K) * Wp * C;
    if (xrow_of[pr % K] != pr) {
      xrow_of[pr % K] = pr;
      const int64_t ih = pr - a.pt;
      if (ih < 0 || ih >= a.H) {
        std::memset(r + pl * C, 0, W * C * sizeof(float));
      } else {
        const float* src = hn + ih * W * C;
        for (int64_t i = 0; i < W * C; i += kLanes)
          st(r + pl * C + i, silu(ld(src + i) * ld(a.isc + i % C) + ld(a.ish + i % C)));
      }
    }
    return r;
  };
  int64_t flushed = 0;  // padded rows below this one are complete and written to dx
  auto flush = [&](int64_t upto) {
    for (; flushed < upto; ++flushed) {
      float* slot = ring.data() + (flushed % K) * RW * C;
      const int64_t ih = flushed - a.pt;
      if (ih >= 0 && ih < a.H) {
        if (!ACT) {
          std::memcpy(dxn + ih * W * C, slot + pl * C, W * C * sizeof(float));
        } else {  // through silu(u), u = h * scale + shift
          const float* hr = hn + ih * W * C;
          float* out = dxn + ih * W * C;
          for (int64_t iw = 0; iw < W; ++iw)
            for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
              const vf hv = ld(hr + iw * C + c0), sc = ld(a.isc + c0);
              const vf u = hv * sc + ld(a.ish + c0);
              const vf sig = sigmoid(u);
              const vf gu = ld(slot + (pl + iw) * C + c0) * sig * (1.0f + u * (1.0f - sig));
              st(out + iw * C + c0, gu * sc);
              st(dsc + c0, ld(dsc + c0) + gu * hv);
              st(dsh + c0, ld(dsh + c0) + gu);
            }
        }
      }
      std::memset(slot, 0, RW * C * sizeof(float));
    }
  };
  for (int64_t oh = 0; oh < a.OH; ++oh) {
    const float* grow = gn + oh * OW * C;
    const float* xrows[K];
    float* drows[K];
    for (int p = 0; p < K; ++p) {
      xrows[p] = xrow(oh * S + p);
      drows[p] = ring.data() + ((oh * S + p) % K) * RW * C;
    }
    for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
      vf wv[K * K], dka[K * K];
      for (int t = 0; t < K * K; ++t) { wv[t] = ld(a.w + t * C + c0); dka[t] = vf{}; }
      for (int64_t ow0 = 0; ow0 < OW; ow0 += OWB) {
        const int nb = int(std::min<int64_t>(OWB, OW - ow0));
        vf gv[OWB];
        for (int b = 0; b < OWB; ++b) gv[b] = b < nb ? ld(grow + (ow0 + b) * C + c0) : vf{};
        for (int p = 0; p < K; ++p) {
          vf acc[R];
          for (int r = 0; r < R; ++r) acc[r] = vf{};
          for (int q = 0; q < K; ++q)
            for (int b = 0; b < OWB; ++b) acc[b * S + q] += gv[b] * wv[p * K + q];
          float* dr = drows[p] + ow0 * S * C + c0;
          for (int r = 0; r < R; ++r) st(dr + r * C, ld(dr + r * C) + acc[r]);
          const float* xr = xrows[p] + ow0 * S * C + c0;
          if (nb == OWB) {
            for (int q = 0; q < K; ++q) {
              vf t = ld(xr + q * C) * gv[0];
              for (int b = 1; b < OWB; ++b) t += ld(xr + (b * S + q) * C) * gv[b];
              dka[p * K + q] += t;
            }
          } else {  // last block of the row: read no column past the padded input
            for (int q = 0; q < K; ++q)
              for (int b = 0; b < nb; ++b) dka[p * K + q] += ld(xr + (b * S + q) * C) * gv[b];
          }
        }
      }
      for (int t = 0; t < K * K; ++t) st(dk + t * C + c0, ld(dk + t * C + c0) + dka[t]);
    }
    flush(std::min<int64_t>((oh + 1) * S, Hp));
  }
  flush(Hp);
}

// Chunks of images over the pool; each chunk sums its kernel (and scale, shift) gradients apart, its
// images in order, and the chunks' sums add up in chunk order.
template <bool ACT>
static ffi::Error run_grad(ffi::ThreadPool& pool, const GradArgs& args, int64_t N, int64_t K,
                           int64_t stride, float* dk, float* dsc, float* dsh) {
  void (*fn)(const GradArgs&, int64_t, float*, float*, float*);
#define CASE(KK, SS) else if (K == KK && stride == SS) fn = grad_image<KK, SS, ACT>;
  if (false) {}
  CASE(3, 1) CASE(3, 2) CASE(5, 1) CASE(5, 2) CASE(7, 1) CASE(7, 2)
  else return ffi::Error::InvalidArgument("unsupported kernel size or stride (3, 5 or 7; 1 or 2)");
#undef CASE
  const int64_t C = args.C, size = (K * K + 2) * C;  // per chunk: dk, dsc, dsh
  const FixedChunks split(N);
  std::vector<float> partial(static_cast<size_t>(split.chunks * size), 0.0f);
  parallel_units(pool, split.chunks, [&](int64_t chunk) {
    float* mine = partial.data() + chunk * size;
    for (int64_t n = split.begin(chunk); n < split.begin(chunk + 1); ++n)
      fn(args, n, mine, mine + K * K * C, mine + (K * K + 1) * C);
  });
  std::vector<float> total(size, 0.0f);
  for (int64_t t = 0; t < split.chunks; ++t)
    for (int64_t i = 0; i < size; ++i) total[i] += partial[t * size + i];
  std::memcpy(dk, total.data(), K * K * C * sizeof(float));
  if (ACT) {
    std::memcpy(dsc, total.data() + K * K * C, C * sizeof(float));
    std::memcpy(dsh, total.data() + (K * K + 1) * C, C * sizeof(float));
  }
  return ffi::Error::Success();
}

static ffi::Error GradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp, ffi::Buffer<ffi::F32> g,
                           ffi::Buffer<ffi::F32> w, int64_t stride, int64_t pt, int64_t pl,
                           ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dk) {
  auto xd = xp.dimensions(); auto gd = g.dimensions(); auto wd = w.dimensions();
  auto dd = dx->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 3 || dd.size() != 4)
    return ffi::Error::InvalidArgument("expected xp, g, dx (N, H, W, C) and w (K, K, C)");
  const int64_t N = xd[0], Hp = xd[1], Wp = xd[2], C = xd[3], K = wd[0];
  const int64_t OH = gd[1], OW = gd[2], H = dd[1], W = dd[2];
  if (C % 16) return ffi::Error::InvalidArgument("channels must be a multiple of 16");
  if (wd[1] != K || wd[2] != C || gd[0] != N || gd[3] != C || dd[0] != N || dd[3] != C ||
      pt < 0 || pl < 0 || pt + H > Hp || pl + W > Wp || (OH - 1) * stride + K > Hp ||
      (OW - 1) * stride + K > Wp || dk->element_count() != K * K * C)
    return ffi::Error::InvalidArgument("shapes of xp, g, w, dx and dk do not agree");
  const GradArgs args{xp.typed_data(), g.typed_data(), w.typed_data(), dx->typed_data(),
                      Hp, Wp, C, OH, OW, H, W, pt, pl, nullptr, nullptr, nullptr};
  return run_grad<false>(pool, args, N, K, stride, dk->typed_data(), nullptr, nullptr);
}

static ffi::Error GradSiluImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> isc,
                               ffi::Buffer<ffi::F32> ish, ffi::Buffer<ffi::F32> g,
                               ffi::Buffer<ffi::F32> w, int64_t stride, int64_t pt, int64_t pl,
                               ffi::ResultBuffer<ffi::F32> dh, ffi::ResultBuffer<ffi::F32> dk,
                               ffi::ResultBuffer<ffi::F32> dsc, ffi::ResultBuffer<ffi::F32> dsh) {
  auto hd = h.dimensions(); auto gd = g.dimensions(); auto wd = w.dimensions();
  if (hd.size() != 4 || gd.size() != 4 || wd.size() != 3)
    return ffi::Error::InvalidArgument("expected h, g (N, H, W, C) and w (K, K, C)");
  const int64_t N = hd[0], H = hd[1], W = hd[2], C = hd[3], K = wd[0], OH = gd[1], OW = gd[2];
  if (C % 16) return ffi::Error::InvalidArgument("channels must be a multiple of 16");
  if (wd[1] != K || wd[2] != C || gd[0] != N || gd[3] != C || pt < 0 || pl < 0 ||
      isc.element_count() != C || ish.element_count() != C || dh->element_count() != N * H * W * C ||
      dk->element_count() != K * K * C || dsc->element_count() != C || dsh->element_count() != C)
    return ffi::Error::InvalidArgument("shapes of h, scales, g, w and the gradients do not agree");
  const int64_t Hp = std::max((OH - 1) * stride + K, pt + H), Wp = std::max((OW - 1) * stride + K, pl + W);
  const GradArgs args{nullptr, g.typed_data(), w.typed_data(), dh->typed_data(), Hp, Wp, C, OH, OW,
                      H, W, pt, pl, h.typed_data(), isc.typed_data(), ish.typed_data()};
  return run_grad<true>(pool, args, N, K, stride, dk->typed_data(), dsc->typed_data(), dsh->typed_data());
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoDepthwiseGrad, GradImpl,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Attr<int64_t>("stride").Attr<int64_t>("pt").Attr<int64_t>("pl")
    .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoDepthwiseGradSilu, GradSiluImpl,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Attr<int64_t>("stride").Attr<int64_t>("pt").Attr<int64_t>("pl")
    .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
    .Ret<ffi::Buffer<ffi::F32>>());
