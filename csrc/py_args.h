// Argument conversion for the bindings: integers and token-id lists are range-checked here, so an
// over-range value (top_k=10**12, seed=2**70, a token id of 2**40) raises a ValueError that names the field,
// instead of pybind11's TypeError with a dump of every overload's signature.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace edgeai {
namespace py_args {

namespace py = pybind11;

// An integer (Python int, or anything with __index__ such as a NumPy integer; never bool) in [lo, hi].
template <typename T>
T integer(py::handle v, const char* name, T lo = std::numeric_limits<T>::min(), T hi = std::numeric_limits<T>::max()) {
    static_assert(std::is_integral<T>::value, "integer<T> needs an integral type");
    if (PyBool_Check(v.ptr()) || !PyIndex_Check(v.ptr()))
        throw py::type_error(std::string(name) + " must be an integer, got " + std::string(py::str(py::type::of(v).attr("__name__"))));
    py::int_ i = py::reinterpret_steal<py::int_>(PyNumber_Index(v.ptr()));
    if (!i) throw py::error_already_set();
    const std::string range = " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got ";
    if (std::is_signed<T>::value) {
        int overflow = 0;
        const long long x = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
        if (x == -1 && PyErr_Occurred()) throw py::error_already_set();
        if (overflow || x < static_cast<long long>(lo) || x > static_cast<long long>(hi))
            throw py::value_error(std::string(name) + range + std::string(py::str(i)));
        return static_cast<T>(x);
    }
    if (PyObject_RichCompareBool(i.ptr(), py::int_(0).ptr(), Py_LT) == 1)
        throw py::value_error(std::string(name) + range + std::string(py::str(i)));
    const unsigned long long x = PyLong_AsUnsignedLongLong(i.ptr());
    if (x == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
        PyErr_Clear();
        throw py::value_error(std::string(name) + range + std::string(py::str(i)));
    }
    if (x < static_cast<unsigned long long>(lo) || x > static_cast<unsigned long long>(hi))
        throw py::value_error(std::string(name) + range + std::string(py::str(i)));
    return static_cast<T>(x);
}

// A sequence of integers in [lo, hi] (a list, a tuple or a 1-D NumPy array), as int32 token ids.
inline std::vector<int32_t> int32_list(py::handle seq, const char* name, int32_t lo = 0,
                                       int32_t hi = std::numeric_limits<int32_t>::max()) {
    if (PyUnicode_Check(seq.ptr()) || PyBytes_Check(seq.ptr()) || !PySequence_Check(seq.ptr()))
        throw py::type_error(std::string(name) + " must be a sequence of integers");
    py::sequence s = py::reinterpret_borrow<py::sequence>(seq);
    std::vector<int32_t> out;
    out.reserve(s.size());
    for (py::handle item : s) out.push_back(integer<int32_t>(item, name, lo, hi));
    return out;
}

}  // namespace py_args
}  // namespace edgeai
