// Per-channel statistics of an (M, C) float32 array for XLA:CPU batch norm in training (loaded
// through jax.ffi by cpu_kernels.py):
//
//   HsemoChannelMoments:  x -> mean[c], var[c]   (biased variance over the M rows)
//   HsemoChannelGradSums: g, x, mean -> sum_m g[m, c], sum_m g[m, c] * (x[m, c] - mean[c])
//
// One multi-threaded pass over the inputs each. XLA:CPU wrote (x - mean)^2 and g * x out as
// full-size arrays to sum them (and recomputed their producers into them). The moments are
// computed per block of rows that fits in cache (block mean, then the block's sum of squared
// deviations) and combined with Chan's formula, as accurate as two passes over all of x. The rows
// split into chunks fixed by M alone (FixedChunks), merged in order: the same bits on every call and
// with any number of threads.
#include <vector>

#include "cpu_kernels.h"

// The rows split into chunks of contiguous rows (at least 64 each, at most 64 chunks).
static FixedChunks row_chunks(int64_t M) { return FixedChunks(M, 64); }

// Rows [r0, r1) of x: count, mean and sum of squared deviations per channel (into mean, m2).
static void moments_rows(const float* x, int64_t C, int64_t r0, int64_t r1, float* mean, float* m2) {
  const int64_t block = std::max<int64_t>(8, 8192 / C);  // rows per block: ~32 KiB
  std::vector<float> bm(C), bs(C);
  double n = 0;
  std::fill(mean, mean + C, 0.0f);
  std::fill(m2, m2 + C, 0.0f);
  for (int64_t b0 = r0; b0 < r1; b0 += block) {
    const int64_t b1 = std::min(r1, b0 + block), nb = b1 - b0;
    std::fill(bm.begin(), bm.end(), 0.0f);
    std::fill(bs.begin(), bs.end(), 0.0f);
    for (int64_t r = b0; r < b1; ++r) {
      const float* row = x + r * C;
      int64_t c = 0;
      for (; c + kLanes <= C; c += kLanes) st(&bm[c], ld(&bm[c]) + ld(row + c));
      for (; c < C; ++c) bm[c] += row[c];
    }
    const float inv_nb = 1.0f / float(nb);
    for (int64_t c = 0; c < C; ++c) bm[c] *= inv_nb;
    for (int64_t r = b0; r < b1; ++r) {
      const float* row = x + r * C;
      int64_t c = 0;
      for (; c + kLanes <= C; c += kLanes) {
        vf d = ld(row + c) - ld(&bm[c]);
        st(&bs[c], ld(&bs[c]) + d * d);
      }
      for (; c < C; ++c) { float d = row[c] - bm[c]; bs[c] += d * d; }
    }
    // Chan et al.: merge (n, mean, m2) with the block's (nb, bm, bs)
    const double total = n + nb;
    const float wb = float(nb / total), cross = float(n * nb / total);
    for (int64_t c = 0; c < C; ++c) {
      const float delta = bm[c] - mean[c];
      mean[c] += delta * wb;
      m2[c] += bs[c] + delta * delta * cross;
    }
    n = total;
  }
}

// Chunks of contiguous rows; (rows, mean, m2) of each chunk, merged in chunk order.
static ffi::Error MomentsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                             ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var) {
  auto xd = x.dimensions();
  if (xd.size() != 2 || mean->element_count() != xd[1] || var->element_count() != xd[1])
    return ffi::Error::InvalidArgument("expected x (M, C), mean and var (C,)");
  const int64_t M = xd[0], C = xd[1];
  if (M == 0) return ffi::Error::InvalidArgument("no rows to take statistics over");
  const FixedChunks split = row_chunks(M);
  const int64_t units = split.chunks;
  std::vector<float> um(units * C), us(units * C);
  const float* xp = x.typed_data();
  parallel_units(pool, units, [&](int64_t u) {
    moments_rows(xp, C, split.begin(u), split.begin(u + 1), &um[u * C], &us[u * C]);
  });
  float* mo = mean->typed_data();
  float* vo = var->typed_data();
  std::fill(mo, mo + C, 0.0f);
  std::fill(vo, vo + C, 0.0f);  // m2 until the end
  double n = 0;
  for (int64_t u = 0; u < units; ++u) {
    const int64_t nu = split.begin(u + 1) - split.begin(u);
    const double total = n + nu;
    const float wb = float(nu / total), cross = float(n * nu / total);
    for (int64_t c = 0; c < C; ++c) {
      const float delta = um[u * C + c] - mo[c];
      mo[c] += delta * wb;
      vo[c] += us[u * C + c] + delta * delta * cross;
    }
    n = total;
  }
  for (int64_t c = 0; c < C; ++c) vo[c] = float(vo[c] / double(M));
  return ffi::Error::Success();
}

// Rows [r0, r1): sums of g and of g * (x - mean), per block of rows first, so that float32
// additions stay short.
static void grad_sums_rows(const float* g, const float* x, const float* mean, int64_t C, int64_t r0,
                           int64_t r1, float* sg, float* sgx) {
  const int64_t block = std::max<int64_t>(8, 8192 / C);
  std::vector<float> bg(C), bgx(C);
  std::fill(sg, sg + C, 0.0f);
  std::fill(sgx, sgx + C, 0.0f);
  for (int64_t b0 = r0; b0 < r1; b0 += block) {
    const int64_t b1 = std::min(r1, b0 + block);
    std::fill(bg.begin(), bg.end(), 0.0f);
    std::fill(bgx.begin(), bgx.end(), 0.0f);
    for (int64_t r = b0; r < b1; ++r) {
      const float *gr = g + r * C, *xr = x + r * C;
      int64_t c = 0;
      for (; c + kLanes <= C; c += kLanes) {
        vf gv = ld(gr + c);
        st(&bg[c], ld(&bg[c]) + gv);
        st(&bgx[c], ld(&bgx[c]) + gv * (ld(xr + c) - ld(mean + c)));
      }
      for (; c < C; ++c) { bg[c] += gr[c]; bgx[c] += gr[c] * (xr[c] - mean[c]); }
    }
    for (int64_t c = 0; c < C; ++c) { sg[c] += bg[c]; sgx[c] += bgx[c]; }
  }
}

static ffi::Error GradSumsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> sg,
                               ffi::ResultBuffer<ffi::F32> sgx) {
  auto gd = g.dimensions(); auto xd = x.dimensions();
  if (gd.size() != 2 || xd.size() != 2 || gd[0] != xd[0] || gd[1] != xd[1] ||
      mean.element_count() != xd[1] || sg->element_count() != xd[1] || sgx->element_count() != xd[1])
    return ffi::Error::InvalidArgument("expected g and x (M, C), mean, sums (C,)");
  const int64_t M = xd[0], C = xd[1];
  const FixedChunks split = row_chunks(M);
  const int64_t units = split.chunks;
  std::vector<float> ug(units * C, 0.0f), ugx(units * C, 0.0f);
  parallel_units(pool, units, [&](int64_t u) {
    grad_sums_rows(g.typed_data(), x.typed_data(), mean.typed_data(), C, split.begin(u), split.begin(u + 1),
                   &ug[u * C], &ugx[u * C]);
  });
  float *so = sg->typed_data(), *sxo = sgx->typed_data();
  std::fill(so, so + C, 0.0f);
  std::fill(sxo, sxo + C, 0.0f);
  for (int64_t u = 0; u < units; ++u)
    for (int64_t c = 0; c < C; ++c) { so[c] += ug[u * C + c]; sxo[c] += ugx[u * C + c]; }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoChannelMoments, MomentsImpl,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>()
    .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HsemoChannelGradSums, GradSumsImpl,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
