#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <thread>
#include <vector>

namespace ce {

static std::atomic<int> g_threads{0};
static thread_local int t_budget = 0;  // this thread's per-call budget (ScopedThreads), 0 = none

int num_threads() {
  if (t_budget > 0) return t_budget;
  int n = g_threads.load(std::memory_order_relaxed);
  if (n > 0) return n;
  const char* env = std::getenv("COLLABEDIT_NUM_THREADS");
  n = env ? std::atoi(env) : 0;
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  int unset = 0;  // the first caller fixes the default; a racing one reads what it fixed
  g_threads.compare_exchange_strong(unset, std::max(1, n));
  return g_threads.load(std::memory_order_relaxed);
}

void set_num_threads(int n) { g_threads.store(std::max(1, n), std::memory_order_relaxed); }

ScopedThreads::ScopedThreads(int n) : previous_(t_budget) {
  if (n > 0) t_budget = n;
}

ScopedThreads::~ScopedThreads() { t_budget = previous_; }

void parallel_ranges(int64_t n, int64_t align, int64_t min_per_thread,
                     const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  int64_t parts = std::min<int64_t>(num_threads(), std::max<int64_t>(1, n / std::max<int64_t>(1, min_per_thread)));
  if (parts <= 1) {
    body(0, n);
    return;
  }
  int64_t step = (n + parts - 1) / parts;
  step = (step + align - 1) / align * align;
  std::vector<std::thread> workers;
  std::vector<std::exception_ptr> errors(parts);
  for (int64_t p = 1; p < parts; ++p) {
    int64_t begin = p * step, end = std::min(n, begin + step);
    if (begin >= end) break;
    workers.emplace_back([&, p, begin, end] {
      try { body(begin, end); } catch (...) { errors[p] = std::current_exception(); }
    });
  }
  try { body(0, std::min(n, step)); } catch (...) { errors[0] = std::current_exception(); }
  for (auto& w : workers) w.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

void parallel_tasks(int64_t n_tasks, const std::function<void(int64_t, int)>& body) {
  if (n_tasks <= 0) return;
  const int workers = static_cast<int>(std::min<int64_t>(num_threads(), n_tasks));
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<std::exception_ptr> errors(workers);
  auto work = [&](int w) {
    try {
      for (int64_t t = next.fetch_add(1); t < n_tasks && !failed.load(); t = next.fetch_add(1)) body(t, w);
    } catch (...) {
      errors[w] = std::current_exception();
      failed = true;
    }
  };
  std::vector<std::thread> threads;
  for (int w = 1; w < workers; ++w) threads.emplace_back(work, w);
  work(0);
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

std::vector<int64_t> equal_area_split(int64_t d, int64_t parts) {
  std::vector<int64_t> bounds{0};
  for (int64_t t = 1; t < parts; ++t) {
    const auto b = static_cast<int64_t>(double(d) * (1.0 - std::sqrt(1.0 - double(t) / double(parts))));
    bounds.push_back(std::clamp<int64_t>(b, bounds.back(), d));
  }
  bounds.push_back(d);
  return bounds;
}

}  // namespace ce
