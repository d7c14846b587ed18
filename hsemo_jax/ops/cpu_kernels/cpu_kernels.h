// Shared by the hand-written XLA:CPU kernels (built and loaded by cpu_kernels.py): the host's
// native float vectors (GCC/Clang vector extensions; the build compiles for the host,
// -march=native), SiLU, and the split of a kernel's work over XLA's intra-op thread pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// vf: the widest float vector the host has registers for, kLanes floats: 16 with AVX-512, else 8
// (AVX2). Channel layouts stay in blocks of 16 (a multiple of kLanes). A vector wider than the
// registers has no machine mode in GCC and lives on the stack: 16-float vectors on a Zen 3 core
// (AVX2) made these kernels 3-20x slower than XLA's own forms.
#if defined(__AVX512F__)
constexpr int kLanes = 16, kVectorRegisters = 32;
#else
constexpr int kLanes = 8, kVectorRegisters = 16;
#endif
typedef float vf __attribute__((vector_size(4 * kLanes), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(4 * kLanes), aligned(4), may_alias));
// Unaligned loads and stores, and a scalar broadcast, as single instructions (GCC expands a 32-byte
// memcpy for Zen 3 as two 16-byte moves through the stack, and `vf{} + x` as an add and a
// broadcast).
#if defined(__AVX512F__)
static inline vf ld(const float* p) { return (vf)_mm512_loadu_ps(p); }
static inline void st(float* p, vf v) { _mm512_storeu_ps(p, (__m512)v); }
static inline vf splat(float x) { return (vf)_mm512_set1_ps(x); }
#elif defined(__AVX__)
static inline vf ld(const float* p) { return (vf)_mm256_loadu_ps(p); }
static inline void st(float* p, vf v) { _mm256_storeu_ps(p, (__m256)v); }
static inline vf splat(float x) { return (vf)_mm256_set1_ps(x); }
#else
static inline vf ld(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
static inline void st(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
static inline vf splat(float x) { return vf{} + x; }
#endif
// The first n <= kLanes floats at p (the rest zero), and their store: a vector's worth at a row's
// end, where a full load or store would run past it.
static inline vf ld_first(const float* p, int64_t n) {
  if (n == kLanes) return ld(p);
  vf v{};
  std::memcpy(&v, p, n * sizeof(float));
  return v;
}
static inline void st_first(float* p, vf v, int64_t n) {
  if (n == kLanes) st(p, v);
  else std::memcpy(p, &v, n * sizeof(float));
}

// 2^t, t clamped above at 126 (1 + 2^t stays finite). AVX-512: f = t - floor(t) in [0, 1] in one
// vreduceps, 2^f by a degree-5 minimax polynomial (float32 relative error 1.6e-7), times
// 2^floor(t) by vscalefps, which floors t itself and underflows to 0 for any t far below (-inf
// included, where f is 0): 9 vector operations. AVX2: t clamped below at -126 too, f = t - round(t)
// in [-0.5, 0.5], its own degree-5 polynomial (2.3e-7), 2^round(t) from exponent bits. (The degree-6
// Taylor form with vroundscaleps, a subtraction and both clamps took 12 on AVX-512.)
static inline vf exp2_clamped(vf t) {
  t = t > 126.0f ? splat(126.0f) : t;
#if defined(__AVX512F__)
  const vf f = (vf)_mm512_reduce_ps((__m512)t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  vf p = splat(1.8775770e-3f);
  p = p * f + 8.9893406e-3f; p = p * f + 5.5826318e-2f; p = p * f + 2.4015361e-1f;
  p = p * f + 6.9315308e-1f; p = p * f + 9.9999994e-1f;
  return (vf)_mm512_scalef_ps((__m512)p, (__m512)t);
#else
  t = t < -126.0f ? splat(-126.0f) : t;
  const vf n = (t + 12582912.0f) - 12582912.0f;
  const vf f = t - n;
  vf p = splat(1.3276475e-3f);
  p = p * f + 9.6755419e-3f; p = p * f + 5.5507131e-2f; p = p * f + 2.4022120e-1f;
  p = p * f + 6.9314694e-1f; p = p * f + 1.0000001f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale; std::memcpy(&scale, &e, sizeof scale);
  return p * scale;
#endif
}

// 1 / d for d >= 1: the hardware's estimate (AVX-512 14 bits, AVX 12) and one Newton step
// (~1e-8 and ~2e-7 relative), no division.
static inline vf reciprocal(vf d) {
#if defined(__AVX512F__)
  const vf r = (vf)_mm512_rcp14_ps((__m512)d);
#elif defined(__AVX__)
  const vf r = (vf)_mm256_rcp_ps((__m256)d);
#else
  return 1.0f / d;
#endif
#if defined(__AVX__)
  return r * (2.0f - d * r);
#endif
}

// 1 / (1 + exp(-v)), finite for any v (the clamp of exp2_clamped).
static inline vf sigmoid(vf v) { return reciprocal(1.0f + exp2_clamped(v * -1.44269504088896341f)); }

static inline vf silu(vf v) { return v * sigmoid(v); }

// Workers for `units` independent units on `pool`: the calling thread and up to threads-1 tasks.
static inline int64_t num_workers(const ffi::ThreadPool& pool, int64_t units) {
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), units));
}

// Runs fn(unit) for every unit in [0, units). Units are claimed from a shared counter by the
// calling thread and by tasks on the pool; the caller waits only for units already claimed, so it
// never waits on a task still queued behind it, and the state outlives late tasks (which then find
// nothing left and never touch fn's captures). Which thread runs which unit changes from call to
// call, so fn is told only its unit: a reduction sums per unit (see FixedChunks), never per thread.
struct ParallelUnits {
  std::function<void(int64_t)> fn;
  int64_t units = 0;
  std::atomic<int64_t> next{0}, done{0};
  void drain() {
    for (int64_t u; (u = next.fetch_add(1)) < units; done.fetch_add(1)) fn(u);
  }
};

static inline void parallel_units(ffi::ThreadPool& pool, int64_t units, std::function<void(int64_t)> fn) {
  auto state = std::make_shared<ParallelUnits>();
  state->fn = std::move(fn);
  state->units = units;
  const int64_t workers = num_workers(pool, units);
  for (int64_t t = 1; t < workers; ++t) pool.Schedule([state] { state->drain(); });
  state->drain();
  while (state->done.load() < units) std::this_thread::yield();
}

// A reduction's split of `items` (images, rows) into contiguous chunks fixed by the problem's size
// alone: at most kMaxChunks of at least `min_items` items each (at least one chunk), chunk i being
// [begin(i), begin(i + 1)). Each chunk sums into its own partial and the partials merge in chunk
// order, so the result has the same bits on every call and on any host, whatever the pool's size
// and whichever thread ran what (per-thread sums made two identical training runs drift apart).
// 64 chunks: 4 per thread up to 16 threads, as the kernels' other splits aim for.
struct FixedChunks {
  static constexpr int64_t kMaxChunks = 64;
  int64_t items, chunks;
  FixedChunks(int64_t items, int64_t min_items = 1)
      : items(items),
        chunks(std::max<int64_t>(1, std::min<int64_t>(kMaxChunks, items / std::max<int64_t>(1, min_items)))) {}
  int64_t begin(int64_t i) const { return i * items / chunks; }
};
