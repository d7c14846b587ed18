// Gradients of a depthwise convolution for XLA:CPU (loaded through jax.ffi by cpu_kernels.py).
//
//   forward:  y[n, i, j, c] = sum over (p, q) of xp[n, i*S + p, j*S + q, c] * w[p, q, c]
//   dw[p, q, c] = sum over (n, i, j) of xp[n, i*S + p, j*S + q, c] * g[n, i, j, c]
//   dx = the scatter of g[n, i, j, c] * w[p, q, c] to padded position (i*S + p, j*S + q), cropped
//        by the padding (top/left pt, pl; dx's shape fixes the rest)
//
// xp is the zero-padded input, g the output gradient; NHWC float32, C a multiple of 16, square
// kernels 3, 5 or 7, stride 1 or 2. One pass over g and xp computes both: XLA's form computed the
// kernel gradient as one full-size product per tap (9 or 25 of them), each recomputing g's whole
// producer chain (batch norm and SiLU backward). The scattered input gradient accumulates in a ring
// of K padded rows, written to dx as rows complete. Work is split over XLA's intra-op pool by
// image, each worker with its own kernel-gradient sums.
#include <vector>

#include "cpu_kernels.h"

struct GradArgs {
  const float *xp, *g, *w;
  float* dx;
  int64_t Hp, Wp, C, OH, OW, H, W, pt, pl;
};

// Image n: its dx rows, and its kernel-gradient terms added to dk[K*K*C].
template <int K, int S>
static void grad_image(const GradArgs& a, int64_t n, float* dk) {
  constexpr int OWB = 4;                  // output columns per register block
  constexpr int R = (OWB - 1) * S + K;    // padded input columns one block touches
  const int64_t C = a.C, Wp = a.Wp, OW = a.OW, Hp = a.Hp;
  const int64_t RW = Wp + OWB * S + K;    // ring row width in columns (blocks may run past Wp)
  std::vector<float> ring(static_cast<size_t>(K * RW * C), 0.0f);  // [slot][column][C]
  const float* xn = a.xp + n * Hp * Wp * C;
  const float* gn = a.g + n * a.OH * OW * C;
  float* dxn = a.dx + n * a.H * a.W * C;
  int64_t flushed = 0;  // padded rows below this one are complete and written to dx
  auto flush = [&](int64_t upto) {
    for (; flushed < upto; ++flushed) {
      float* slot = ring.data() + (flushed % K) * RW * C;
      const int64_t ih = flushed - a.pt;
      if (ih >= 0 && ih < a.H) std::memcpy(dxn + ih * a.W * C, slot + a.pl * C, a.W * C * sizeof(float));
      std::memset(slot, 0, RW * C * sizeof(float));
    }
  };
  for (int64_t oh = 0; oh < a.OH; ++oh) {
    const float* grow = gn + oh * OW * C;
    const float* xrows[K];
    float* drows[K];
    for (int p = 0; p < K; ++p) {
      xrows[p] = xn + (oh * S + p) * Wp * C;
      drows[p] = ring.data() + ((oh * S + p) % K) * RW * C;
    }
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      v16 wv[K * K], dka[K * K];
      for (int t = 0; t < K * K; ++t) { wv[t] = ld(a.w + t * C + c0); dka[t] = v16{}; }
      for (int64_t ow0 = 0; ow0 < OW; ow0 += OWB) {
        const int nb = int(std::min<int64_t>(OWB, OW - ow0));
        v16 gv[OWB];
        for (int b = 0; b < OWB; ++b) gv[b] = b < nb ? ld(grow + (ow0 + b) * C + c0) : v16{};
        for (int p = 0; p < K; ++p) {
          v16 acc[R];
          for (int r = 0; r < R; ++r) acc[r] = v16{};
          for (int q = 0; q < K; ++q)
            for (int b = 0; b < OWB; ++b) acc[b * S + q] += gv[b] * wv[p * K + q];
          float* dr = drows[p] + ow0 * S * C + c0;
          for (int r = 0; r < R; ++r) st(dr + r * C, ld(dr + r * C) + acc[r]);
          const float* xr = xrows[p] + ow0 * S * C + c0;
          if (nb == OWB) {
            for (int q = 0; q < K; ++q) {
              v16 t = ld(xr + q * C) * gv[0];
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
                      Hp, Wp, C, OH, OW, H, W, pt, pl};
  void (*fn)(const GradArgs&, int64_t, float*);
#define CASE(KK, SS) else if (K == KK && stride == SS) fn = grad_image<KK, SS>;
  if (false) {}
  CASE(3, 1) CASE(3, 2) CASE(5, 1) CASE(5, 2) CASE(7, 1) CASE(7, 2)
  else return ffi::Error::InvalidArgument("unsupported kernel size or stride (3, 5 or 7; 1 or 2)");
#undef CASE
  const int64_t workers = num_workers(pool, N);
  std::vector<float> partial(static_cast<size_t>(workers * K * K * C), 0.0f);
  parallel_units(pool, N, [&](int64_t worker, int64_t n) { fn(args, n, partial.data() + worker * K * K * C); });
  float* out = dk->typed_data();
  std::memset(out, 0, K * K * C * sizeof(float));
  for (int64_t t = 0; t < workers; ++t)
    for (int64_t i = 0; i < K * K * C; ++i) out[i] += partial[t * K * K * C + i];
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoDepthwiseGrad, GradImpl,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Attr<int64_t>("stride").Attr<int64_t>("pt").Attr<int64_t>("pl")
    .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
