// The CPU kernels' own thread pool (instead of OpenMP).
//
// Why: on a machine shared with other jobs, an OpenMP team that spin-waits at
// its barriers and splits rows statically runs slower at N threads than at 1
// (a descheduled thread holds up the whole team, and spinning threads take
// CPU time from the working ones). Here:
//   * work is claimed dynamically in small chunks from one atomic counter, so
//     a thread that is not running simply claims less;
//   * the calling thread works too, and idle threads sleep on a condition
//     variable (no spinning), so the thread that still holds a chunk gets the
//     core as soon as the others run out of work;
//   * a call from a pool thread, or while another call is running, runs on
//     the calling thread alone (no nesting, no waiting for the pool);
//   * after fork() the child starts a fresh pool on first use (DataLoader
//     workers call the kernels);
//   * a call uses no more helpers than there are idle cores at its start, so
//     no helper waits in a run queue while the others wait for it.
#pragma once

#include <cstdint>
#include <type_traits>

namespace semimoe {
namespace cpu {

using ChunkFn = void (*)(void* ctx, int64_t begin, int64_t end, int worker);

// Calls fn(ctx, begin, end, worker) over disjoint chunks [begin, end) of
// [0, n), each at most `grain` long, on up to `threads` threads (the caller
// included). worker is in [0, threads) and unique among the threads running
// at one time, so callers can keep per-worker scratch. Returns when every
// chunk is done; rethrows the first exception a chunk threw.
void parallel_run(int64_t n, int64_t grain, int threads, ChunkFn fn, void* ctx);

template <class F>
void parallel_for(int64_t n, int64_t grain, int threads, F&& f) {
  using Fn = std::remove_reference_t<F>;
  parallel_run(
      n, grain, threads,
      [](void* c, int64_t b, int64_t e, int w) { (*static_cast<Fn*>(c))(b, e, w); },
      const_cast<void*>(static_cast<const void*>(&f)));
}

// Chunk length for `n` items of `item_cost` units (pixels) each: about 16K
// units per chunk, so claiming a chunk costs nothing next to running it.
inline int64_t grain_for(int64_t item_cost) {
  const int64_t g = (int64_t(1) << 14) / (item_cost > 0 ? item_cost : 1);
  return g > 0 ? g : 1;
}

// f(i) for every item i in [0, n), each costing `item_cost` units (pixels),
// in chunks of grain_for(item_cost) on up to `threads` threads.
template <class F>
void parallel_each(int64_t n, int64_t item_cost, int threads, F&& f) {
  parallel_for(n, grain_for(item_cost), threads, [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) f(i);
  });
}

// At most `requested` threads: the caller plus one per core that is idle now
// (Linux: online CPUs minus the runnable threads in /proc/loadavg), so that
// no helper has to wait for a core. parallel_run applies it.
int available_threads(int requested);

// Threads the pool has started in this process (tests).
int pool_size();

}  // namespace cpu
}  // namespace semimoe
