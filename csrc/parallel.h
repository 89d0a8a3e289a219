// Minimal fork-join helper: the kernels split work into contiguous ranges, one per thread.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace ce {

// Threads the kernels use (default: hardware concurrency; COLLABEDIT_NUM_THREADS overrides).
int num_threads();
void set_num_threads(int n);

// Calls body(begin, end) on `parts` disjoint ranges covering [0, n); range starts are multiples
// of `align`. Runs inline when n is small or only one thread is allowed.
void parallel_ranges(int64_t n, int64_t align, int64_t min_per_thread,
                     const std::function<void(int64_t, int64_t)>& body);

// Boundaries b_0 = 0 < ... < b_parts = d splitting a triangle whose row (or column) i holds d - i
// entries into `parts` ranges of equal area.
std::vector<int64_t> equal_area_split(int64_t d, int64_t parts);

}  // namespace ce
