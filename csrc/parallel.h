// Minimal fork-join helper: the kernels split work into contiguous ranges, one per thread.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace ce {

// Threads the kernels use: the calling thread's budget if a ScopedThreads set one, else the
// process default (hardware concurrency; COLLABEDIT_NUM_THREADS or set_num_threads override it).
// The default is atomic and a budget is thread-local, so calls from several server threads at
// once never change each other's threading.
int num_threads();
void set_num_threads(int n);

// A per-call thread budget for the calling thread (n <= 0: keep the process default).
class ScopedThreads {
 public:
  explicit ScopedThreads(int n);
  ~ScopedThreads();
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;

 private:
  int previous_;
};

// Calls body(begin, end) on `parts` disjoint ranges covering [0, n); range starts are multiples
// of `align`. Runs inline when n is small or only one thread is allowed.
void parallel_ranges(int64_t n, int64_t align, int64_t min_per_thread,
                     const std::function<void(int64_t, int64_t)>& body);

// Calls body(task, worker) for every task in [0, n_tasks), handed out one at a time to at most
// num_threads() workers (worker in [0, workers)). Dynamic hand-out keeps all cores busy when one
// thread is descheduled by other processes sharing the machine; a static split would wait for it.
void parallel_tasks(int64_t n_tasks, const std::function<void(int64_t, int)>& body);

// Boundaries b_0 = 0 < ... < b_parts = d splitting a triangle whose row (or column) i holds d - i
// entries into `parts` ranges of equal area.
std::vector<int64_t> equal_area_split(int64_t d, int64_t parts);

}  // namespace ce
