// pybind11 bindings of the CUDA kernels. Arguments are raw device pointers (ints) taken by the
// Python adapter from torch CUDA tensors or cupy arrays, plus the CUDA stream to queue on.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "kernels_cuda.h"

namespace py = pybind11;
using namespace ce::cuda;

namespace {

template <typename T>
T* ptr(uintptr_t address) { return reinterpret_cast<T*>(address); }
cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

Operand operand(uintptr_t data, bool is_float32, bool packed) { return Operand{ptr<const void>(data), is_float32, packed}; }

std::vector<Stream> streams_of(const py::list& seeds) {
  std::vector<Stream> streams;
  for (auto item : seeds) {
    std::string s = py::bytes(py::reinterpret_borrow<py::object>(item));
    if (s.size() != 32) throw py::value_error("seed must be 32 bytes");
    streams.push_back(make_stream(reinterpret_cast<const uint8_t*>(s.data())));
  }
  return streams;
}

int device_count() {
  int count = 0;
  check(cudaGetDeviceCount(&count), "counting devices");
  return count;
}

}  // namespace

PYBIND11_MODULE(_kernels_cuda, m) {
  m.doc() = "CUDA kernels of collabedit_secure (device pointers; see collabedit_secure.kernels)";
  m.def("device_count", &device_count);
  m.def("covariance_accumulate",
        [](uintptr_t acc, bool packed, int64_t d, uintptr_t keys, int key_type, int64_t n, int64_t rs, int64_t cs,
           uintptr_t mask, int64_t ms, uintptr_t stream) {
          py::gil_scoped_release release;
          covariance_accumulate(ptr<double>(acc), packed, d, ptr<const void>(keys), key_type, n, rs, cs,
                                ptr<const uint8_t>(mask), ms, as_stream(stream));
        });
  m.def("regularized_solve",
        [](uintptr_t c0, bool c0_f32, double lam, uintptr_t c_acc, bool acc_f32, bool acc_packed, uintptr_t s_kk,
           bool skk_f32, bool skk_packed, int64_t d, uintptr_t x, int64_t d_out, bool refine, int max_iter,
           uintptr_t stream) {
          py::gil_scoped_release release;
          return regularized_solve(operand(c0, c0_f32, false), lam, operand(c_acc, acc_f32, acc_packed),
                                   operand(s_kk, skk_f32, skk_packed), d, ptr<double>(x), d_out, refine, max_iter,
                                   as_stream(stream));
        });
  m.def("prg_mask", [](py::bytes seed, int64_t n, uintptr_t out, uintptr_t stream) {
    py::list seeds;
    seeds.append(seed);
    Stream s = streams_of(seeds)[0];
    py::gil_scoped_release release;
    prg_mask(s, n, ptr<uint64_t>(out), as_stream(stream));
  });
  m.def("mask_encode", [](uintptr_t values, int64_t n, int scale_bits, int64_t bound, py::list seeds,
                          std::vector<int8_t> signs, uintptr_t out, uintptr_t stream) {
    std::vector<Stream> streams = streams_of(seeds);
    if (signs.size() != streams.size()) throw py::value_error("one sign per seed");
    py::gil_scoped_release release;
    return mask_encode(ptr<const double>(values), n, scale_bits, bound, streams.data(), signs.data(),
                       static_cast<int>(streams.size()), ptr<uint64_t>(out), as_stream(stream));
  });
  m.def("ring_op", [](uintptr_t a, uintptr_t b, uintptr_t out, int64_t n, bool subtract, uintptr_t stream) {
    py::gil_scoped_release release;
    ring_op(ptr<const uint64_t>(a), ptr<const uint64_t>(b), ptr<uint64_t>(out), n, subtract, as_stream(stream));
  });
  m.def("mask_decode", [](uintptr_t sum, int64_t n, int scale_bits, uintptr_t out, uintptr_t stream) {
    py::gil_scoped_release release;
    mask_decode(ptr<const uint64_t>(sum), n, scale_bits, ptr<double>(out), as_stream(stream));
  });
  m.def("prg_mask_host", [](py::bytes seed, int64_t n) {
    py::list seeds;
    seeds.append(seed);
    Stream s = streams_of(seeds)[0];
    py::array_t<uint64_t> out(n);
    prg_mask_host(s, n, out.mutable_data());
    return out;
  }, "the device AES-CTR code, run on the host (testable without a GPU)");
}
