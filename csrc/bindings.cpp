// pybind11 bindings of the CPU kernels. The Python layer (collabedit_secure/kernels) converts
// torch tensors and checks user input; these checks guard the raw memory the kernels touch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "blas.h"
#include "kernels.h"
#include "parallel.h"

namespace py = pybind11;

namespace {

template <typename T>
bool has_dtype(const py::array& a) { return a.dtype().is(py::dtype::of<T>()); }

void require(bool ok, const std::string& what) {
  if (!ok) throw py::value_error(what);
}

void require_dtype(bool ok, const std::string& what) {
  if (!ok) throw py::type_error(what);
}

bool c_contiguous(const py::array& a) { return a.flags() & py::array::c_style; }

template <typename T>
T* writable_data(py::array& a, const char* name) {
  require_dtype(has_dtype<T>(a), std::string(name) + ": wrong dtype");
  require(c_contiguous(a) && a.writeable(), std::string(name) + " must be C-contiguous and writable");
  return static_cast<T*>(a.mutable_data());
}

template <typename T>
const T* contiguous_data(const py::array& a, const char* name) {
  require_dtype(has_dtype<T>(a), std::string(name) + ": wrong dtype");
  require(c_contiguous(a), std::string(name) + " must be C-contiguous");
  return static_cast<const T*>(a.data());
}

void covariance(py::array acc, py::array keys, bool bfloat16, py::object mask, bool mixed, int threads) {
  require(keys.ndim() == 2, "keys must be 2-D (n, d)");
  const int64_t n = keys.shape(0), d = keys.shape(1);
  double* acc_data = writable_data<double>(acc, "acc");
  const bool packed = acc.ndim() == 1;
  require(packed ? acc.shape(0) == d * (d + 1) / 2
                 : acc.ndim() == 2 && acc.shape(0) == d && acc.shape(1) == d,
          "acc must be d x d or packed of length d(d+1)/2 with d = keys.shape[1]");
  ce::KeyView view{keys.data(), ce::KeyType::Float64, n, d, 0, 0};
  if (bfloat16) {
    require_dtype(has_dtype<uint16_t>(keys) || has_dtype<int16_t>(keys), "bfloat16 keys must be passed as 16-bit words");
    view.type = ce::KeyType::BFloat16;
  } else if (has_dtype<float>(keys)) {
    view.type = ce::KeyType::Float32;
  } else {
    require_dtype(has_dtype<double>(keys), "keys must be float32, bfloat16 or float64");
  }
  const int64_t item = keys.itemsize();
  require(keys.strides(0) % item == 0 && keys.strides(1) % item == 0, "keys strides must be whole elements");
  view.row_stride = keys.strides(0) / item;
  view.col_stride = keys.strides(1) / item;
  const uint8_t* mask_data = nullptr;
  int64_t mask_stride = 0;
  py::array mask_array;
  if (!mask.is_none()) {
    mask_array = py::array::ensure(mask);
    require_dtype(has_dtype<bool>(mask_array) || has_dtype<uint8_t>(mask_array), "mask must be bool or uint8");
    require(mask_array.ndim() == 1 && mask_array.shape(0) == n, "mask must have shape (n,)");
    mask_data = static_cast<const uint8_t*>(mask_array.data());
    mask_stride = mask_array.strides(0);
  }
  py::gil_scoped_release release;
  ce::ScopedThreads budget(threads);
  ce::covariance_accumulate(acc_data, packed, view, mask_data, mask_stride,
                            mixed ? ce::Precision::Mixed : ce::Precision::Float64);
}

// `keep` holds the array the operand points into until the call returns: ensure() may convert
// (copy) its input, and that copy must outlive the released-GIL computation that reads it.
ce::SymOperand sym_operand(const py::object& obj, int64_t d, const char* name, std::vector<py::array>& keep) {
  ce::SymOperand op;
  if (obj.is_none()) return op;
  py::array a = py::array::ensure(obj);
  require(a.ptr() != nullptr, std::string(name) + " is not an array");
  keep.push_back(a);
  require_dtype(has_dtype<double>(a) || has_dtype<float>(a), std::string(name) + " must be float32 or float64");
  require(c_contiguous(a), std::string(name) + " must be C-contiguous");
  op.packed = a.ndim() == 1;
  require(op.packed ? a.shape(0) == d * (d + 1) / 2 : a.ndim() == 2 && a.shape(0) == d && a.shape(1) == d,
          std::string(name) + " must be d x d or packed of length d(d+1)/2");
  op.data = a.data();
  op.is_float32 = has_dtype<float>(a);
  return op;
}

// `system`: the d x d float64 scratch the system is assembled and factored in; None allocates one.
// It may be c0 itself (the caller's C0 is then overwritten): each entry is read before it is written.
int64_t solve(py::object c0, double lam, py::object c_acc, py::object s_kk, py::array x, int threads,
              py::object system) {
  require(x.ndim() == 2, "s_rk must be 2-D (d_out, d)");
  double* x_data = writable_data<double>(x, "s_rk");
  const int64_t d_out = x.shape(0), d = x.shape(1);
  std::vector<py::array> keep;
  ce::SymOperand c0_op = sym_operand(c0, d, "c0", keep), acc_op = sym_operand(c_acc, d, "c_acc", keep),
                 skk_op = sym_operand(s_kk, d, "s_kk", keep);
  require(c0_op.data && !c0_op.packed, "c0 must be a full d x d matrix");
  py::array scratch = system.is_none() ? py::array(py::array_t<double>({d, d})) : py::array::ensure(system);
  require(scratch.ptr() != nullptr && scratch.ndim() == 2 && scratch.shape(0) == d && scratch.shape(1) == d,
          "system must be a d x d array");
  require(c_contiguous(scratch), "system must be C-contiguous");
  double* system_data = writable_data<double>(scratch, "system");
  for (const ce::SymOperand* op : {&acc_op, &skk_op})
    require(op->data != system_data, "system may alias c0 only");
  py::gil_scoped_release release;
  ce::ScopedThreads budget(threads);
  return ce::regularized_solve(c0_op, lam, acc_op, skk_op, d, system_data, x_data, d_out);
}

void prg(py::bytes seed, py::array out) {
  std::string s = seed;
  require(s.size() == 32, "seed must be 32 bytes");
  uint64_t* o = writable_data<uint64_t>(out, "out");
  const int64_t n = out.size();
  py::gil_scoped_release release;
  ce::prg_mask(reinterpret_cast<const uint8_t*>(s.data()), n, o);
}

void bound(py::bytes seeds, int64_t n) {
  std::string sd = seeds;
  require(sd.size() % 32 == 0 && n >= 0, "seeds must be 32-byte seeds, n >= 0");
  py::gil_scoped_release release;
  ce::keystream_bound(reinterpret_cast<const uint8_t*>(sd.data()), static_cast<int>(sd.size() / 32), n);
}

int64_t encode(py::array values, int scale_bits, int64_t bound, py::bytes seeds, py::array signs, py::array out,
               int threads) {
  const double* v = contiguous_data<double>(values, "values");
  uint64_t* o = writable_data<uint64_t>(out, "out");
  const int8_t* sg = contiguous_data<int8_t>(signs, "signs");
  std::string sd = seeds;
  require(out.size() == values.size(), "out must have as many elements as values");
  require(sd.size() == 32 * static_cast<size_t>(signs.size()), "one 32-byte seed per sign");
  require(scale_bits >= 0 && scale_bits <= 62 && bound >= 0, "scale_bits in [0, 62], bound >= 0");
  const int64_t n = values.size();
  const int n_seeds = static_cast<int>(signs.size());
  py::gil_scoped_release release;
  ce::ScopedThreads budget(threads);
  return ce::mask_encode(v, n, scale_bits, bound, reinterpret_cast<const uint8_t*>(sd.data()), sg, n_seeds, o);
}

int64_t unencodable(py::array values, int scale_bits, int64_t bound) {
  const double* v = contiguous_data<double>(values, "values");
  require(scale_bits >= 0 && scale_bits <= 62 && bound >= 0, "scale_bits in [0, 62], bound >= 0");
  const int64_t n = values.size();
  py::gil_scoped_release release;
  return ce::first_unencodable(v, n, scale_bits, bound);
}

template <void (*Op)(const uint64_t*, const uint64_t*, uint64_t*, int64_t)>
void ring_op(py::array a, py::array b, py::array out) {
  const uint64_t* pa = contiguous_data<uint64_t>(a, "a");
  const uint64_t* pb = contiguous_data<uint64_t>(b, "b");
  uint64_t* po = writable_data<uint64_t>(out, "out");
  require(a.size() == b.size() && a.size() == out.size(), "a, b and out must have the same size");
  const int64_t n = a.size();
  py::gil_scoped_release release;
  Op(pa, pb, po, n);
}

void decode(py::array sum, int scale_bits, py::array out) {
  const uint64_t* s = contiguous_data<uint64_t>(sum, "sum");
  double* o = writable_data<double>(out, "out");
  require(sum.size() == out.size(), "out must have as many elements as sum");
  const int64_t n = sum.size();
  py::gil_scoped_release release;
  ce::mask_decode(s, n, scale_bits, o);
}

void set_threads(int n) { ce::set_num_threads(n); }

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  // The kernels parallelise coarsely themselves; OpenBLAS's own threads would oversubscribe.
  scipy_openblas_set_num_threads64_(1);
  m.doc() = "CPU kernels of collabedit_secure (see collabedit_secure.kernels for the public API)";
  // threads: this call's budget (0 = the process default); see parallel.h.
  m.def("covariance_accumulate", &covariance, py::arg("acc"), py::arg("keys"), py::arg("bfloat16"), py::arg("mask"),
        py::arg("mixed") = false, py::arg("threads") = 0);
  m.def("regularized_solve", &solve, py::arg("c0"), py::arg("lam"), py::arg("c_acc"), py::arg("s_kk"), py::arg("x"),
        py::arg("threads") = 0, py::arg("system") = py::none());
  m.def("prg_mask", &prg, py::arg("seed"), py::arg("out"));
  m.def("keystream_bound", &bound, py::arg("seeds"), py::arg("n"));
  m.def("mask_encode", &encode, py::arg("values"), py::arg("scale_bits"), py::arg("bound"), py::arg("seeds"),
        py::arg("signs"), py::arg("out"), py::arg("threads") = 0);
  m.def("first_unencodable", &unencodable, py::arg("values"), py::arg("scale_bits"), py::arg("bound"));
  m.def("ring_add", &ring_op<ce::ring_add>, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("ring_sub", &ring_op<ce::ring_sub>, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("mask_decode", &decode, py::arg("sum"), py::arg("scale_bits"), py::arg("out"));
  m.def("set_num_threads", &set_threads, py::arg("n"));
  m.def("get_num_threads", &ce::num_threads);
}
