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

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

typedef float v16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t vi16 __attribute__((vector_size(64), aligned(4), may_alias));
static inline v16 ld(const float* p) { v16 v; std::memcpy(&v, p, 64); return v; }
static inline void st(float* p, v16 v) { std::memcpy(p, &v, 64); }

// exp(x) for x <= 0: Cephes' expf polynomial, 2^n by exponent bits.
static inline v16 vexp_neg(v16 x) {
  x = x < -87.0f ? v16{} - 87.0f : x;
  v16 fl = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  x = x - fl * 0.693359375f + fl * 2.12194440e-4f;
  v16 y = v16{} + 1.9875691500E-4f;
  y = y * x + 1.3981999507E-3f; y = y * x + 8.3334519073E-3f; y = y * x + 4.1665795894E-2f;
  y = y * x + 1.6666665459E-1f; y = y * x + 5.0000001201E-1f; y = y * x * x + x + 1.0f;
  vi16 e = (__builtin_convertvector(fl, vi16) + 127) << 23;
  v16 p; std::memcpy(&p, &e, 64);
  return y * p;
}

// sigmoid(v) from exp(-|v|), so that nothing overflows.
static inline v16 sigmoid(v16 v) {
  v16 e = vexp_neg(v < 0 ? v : -v);
  v16 s = 1.0f / (1.0f + e);
  return v < 0 ? e * s : s;  // e / (1 + e) for v < 0
}

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
