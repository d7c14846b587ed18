// Shared by the hand-written XLA:CPU kernels (built and loaded by cpu_kernels.py): 16-float
// vectors (GCC/Clang vector extensions; the build compiles for the host, -march=native), SiLU, and
// the split of a kernel's work over XLA's intra-op thread pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

typedef float v16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t vi16 __attribute__((vector_size(64), aligned(4), may_alias));
static inline v16 ld(const float* p) { v16 v; std::memcpy(&v, p, 64); return v; }
static inline void st(float* p, v16 v) { std::memcpy(p, &v, 64); }

// 2^t, t clamped to [-126, 126]: 2^n * 2^f with n = round(t), f in [-0.5, 0.5] by the degree-6
// Taylor polynomial of 2^f (relative error ~1.3e-7). AVX-512: vroundscaleps / vscalefps.
static inline v16 exp2_clamped(v16 t) {
  t = t < -126.0f ? v16{} - 126.0f : t;
  t = t > 126.0f ? v16{} + 126.0f : t;
#if defined(__AVX512F__)
  const v16 n = (v16)_mm512_roundscale_ps((__m512)t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const v16 n = (t + 12582912.0f) - 12582912.0f;
#endif
  const v16 f = t - n;
  v16 p = v16{} + 1.5403530e-4f;
  p = p * f + 1.3333558e-3f; p = p * f + 9.6181291e-3f; p = p * f + 5.5504109e-2f;
  p = p * f + 2.4022651e-1f; p = p * f + 6.9314718e-1f; p = p * f + 1.0f;
#if defined(__AVX512F__)
  return (v16)_mm512_scalef_ps((__m512)p, (__m512)n);
#else
  vi16 e = (__builtin_convertvector(n, vi16) + 127) << 23;
  v16 scale; std::memcpy(&scale, &e, 64);
  return p * scale;
#endif
}

// 1 / d for d >= 1: AVX-512's 14-bit estimate and one Newton step (~1e-8 relative), no division.
static inline v16 reciprocal(v16 d) {
#if defined(__AVX512F__)
  const v16 r = (v16)_mm512_rcp14_ps((__m512)d);
  return r * (2.0f - d * r);
#else
  return 1.0f / d;
#endif
}

// 1 / (1 + exp(-v)), finite for any v (the clamp of exp2_clamped).
static inline v16 sigmoid(v16 v) { return reciprocal(1.0f + exp2_clamped(v * -1.44269504088896341f)); }

static inline v16 silu(v16 v) { return v * sigmoid(v); }

// Workers for `units` independent units on `pool`: the calling thread and up to threads-1 tasks.
static inline int64_t num_workers(const ffi::ThreadPool& pool, int64_t units) {
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), units));
}

// Runs fn(worker, unit) for every unit in [0, units), worker < num_workers(pool, units). Units are
// claimed from a shared counter by the calling thread and by tasks on the pool; the caller waits
// only for units already claimed, so it never waits on a task still queued behind it, and the
// state outlives late tasks (which then find nothing left and never touch fn's captures).
struct ParallelUnits {
  std::function<void(int64_t, int64_t)> fn;
  int64_t units = 0;
  std::atomic<int64_t> next{0}, done{0}, workers{0};
  void drain() {
    const int64_t worker = workers.fetch_add(1);
    for (int64_t u; (u = next.fetch_add(1)) < units; done.fetch_add(1)) fn(worker, u);
  }
};

static inline void parallel_units(ffi::ThreadPool& pool, int64_t units,
                                  std::function<void(int64_t, int64_t)> fn) {
  auto state = std::make_shared<ParallelUnits>();
  state->fn = std::move(fn);
  state->units = units;
  const int64_t workers = num_workers(pool, units);
  for (int64_t t = 1; t < workers; ++t) pool.Schedule([state] { state->drain(); });
  state->drain();
  while (state->done.load() < units) std::this_thread::yield();
}
