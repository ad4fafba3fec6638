// See pool.h. One pool per process, created on first use and never destroyed
// (its threads are detached and sleep until the next job).
#include "ops/cpu/pool.h"

#include <pthread.h>
#include <unistd.h>

#include <cstdio>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

namespace semimoe {
namespace cpu {
namespace {

struct Job {
  ChunkFn fn;
  void* ctx;
  int64_t n, grain;
  int helpers;                     // pool threads that may join
  std::atomic<int64_t> next{0};    // first unclaimed item
  int joined = 0, active = 0;      // guarded by Pool::mu
  bool open = true;                // guarded by Pool::mu
  std::exception_ptr error;        // guarded by Pool::mu
};

thread_local bool t_in_pool = false;

class Pool {
 public:
  void run(int64_t n, int64_t grain, int threads, ChunkFn fn, void* ctx) {
    Job job;
    job.fn = fn;
    job.ctx = ctx;
    job.n = n;
    job.grain = grain;
    job.helpers = threads - 1;
    std::unique_lock<std::mutex> submit(submit_mu_, std::try_to_lock);
    if (!submit.owns_lock()) {  // another call is running: do this one alone
      fn(ctx, 0, n, 0);
      return;
    }
    start_threads(job.helpers);
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &job;
      ++epoch_;
    }
    cv_work_.notify_all();
    std::exception_ptr mine;
    t_in_pool = true;  // a chunk that calls parallel_run runs it on this thread
    try {
      work(job, 0);
    } catch (...) {
      mine = std::current_exception();
      job.next.store(n);  // stop handing out chunks
    }
    t_in_pool = false;
    std::unique_lock<std::mutex> lk(mu_);
    job.open = false;
    job_ = nullptr;
    cv_done_.wait(lk, [&] { return job.active == 0; });
    if (mine) std::rethrow_exception(mine);
    if (job.error) std::rethrow_exception(job.error);
  }

  int size() {
    std::lock_guard<std::mutex> lk(mu_);
    return started_;
  }

 private:
  static void work(Job& job, int worker) {
    for (;;) {
      const int64_t b = job.next.fetch_add(job.grain, std::memory_order_relaxed);
      if (b >= job.n) return;
      job.fn(job.ctx, b, std::min(job.n, b + job.grain), worker);
    }
  }

  void start_threads(int want) {
    std::lock_guard<std::mutex> lk(mu_);
    while (started_ < want) {
      std::thread([this] { loop(); }).detach();
      ++started_;
    }
  }

  void loop() {
    t_in_pool = true;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_work_.wait(lk, [&] { return epoch_ != seen; });
      seen = epoch_;
      Job* job = job_;
      if (job == nullptr || !job->open || job->joined >= job->helpers) continue;
      const int worker = ++job->joined;
      ++job->active;
      lk.unlock();
      try {
        work(*job, worker);
      } catch (...) {
        job->next.store(job->n);
        lk.lock();
        if (!job->error) job->error = std::current_exception();
        lk.unlock();
      }
      lk.lock();
      if (--job->active == 0) cv_done_.notify_all();
    }
  }

  std::mutex submit_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable cv_work_, cv_done_;
  Job* job_ = nullptr;
  uint64_t epoch_ = 0;
  int started_ = 0;
};

std::atomic<Pool*> g_pool{nullptr};
std::once_flag g_atfork_once;

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return *p;
  std::call_once(g_atfork_once, [] {
    // The child of a fork has none of the pool's threads (and its mutexes may
    // be held): it forgets the pool (leaked, never touched) and starts anew.
    pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); });
  });
  Pool* fresh = new Pool();
  Pool* expected = nullptr;
  if (!g_pool.compare_exchange_strong(expected, fresh)) {
    delete fresh;
    return *expected;
  }
  return *fresh;
}

// Cores not running anything right now: online CPUs minus the runnable
// threads the kernel counts in /proc/loadavg (4th field "running/total",
// which includes the calling thread). -1 when unknown (not Linux).
int idle_cores() {
#if defined(__linux__)
  FILE* f = std::fopen("/proc/loadavg", "r");
  if (!f) return -1;
  double l1, l5, l15;
  long running = 0, total = 0;
  const int got = std::fscanf(f, "%lf %lf %lf %ld/%ld", &l1, &l5, &l15, &running, &total);
  std::fclose(f);
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (got != 5 || cpus <= 0 || running <= 0) return -1;
  return int(std::max<long>(0, cpus - running));
#else
  return -1;
#endif
}

}  // namespace

int available_threads(int requested) {
  if (requested <= 1) return requested;
  const int idle = idle_cores();
  // The calling thread plus one helper per idle core: a helper that has to
  // wait for a core would hold up the whole call (measured: 2 threads 3x
  // slower than 1 with both cores of a 2-core machine busy).
  return idle < 0 ? requested : std::min(requested, 1 + idle);
}

void parallel_run(int64_t n, int64_t grain, int threads, ChunkFn fn, void* ctx) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  threads = int(std::min<int64_t>(threads, (n + grain - 1) / grain));
  if (threads > 1 && !t_in_pool) threads = available_threads(threads);
  if (threads <= 1 || t_in_pool) {
    fn(ctx, 0, n, 0);
    return;
  }
  pool().run(n, grain, threads, fn, ctx);
}

int pool_size() { return pool().size(); }

}  // namespace cpu
}  // namespace semimoe
