// Native helpers for edgeai.retrieval.index: the read/write lock that guards hnswlib, turning hnswlib's
// (labels, distances) arrays into lists of Hit tuples, and the whole one-query search path.
//
// Why: a single-query search at ef=32 takes 30-60 us, and the issue asks the wrapper to cost almost nothing.
// The search evicts the interpreter's working set from the caches, so every Python step after it runs cold:
// the Python version (lock of three plain locks, checks, a loop building ten Hit tuples) cost 6-17 us per
// query. Here the same work costs about a microsecond. hnswlib's pip wheel ships no C++ headers, so
// hnswlib itself is still called through its Python binding (the same call a raw user makes).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

// Many readers or one writer, writers first: a waiting writer stops new readers, so a stream of searches
// cannot starve an add (std::shared_mutex promises no such order, and glibc's prefers readers). Built on a
// mutex and a condition variable, so it is plain C++17 on every platform. Taking the lock first tries without
// waiting while holding the GIL (the common, uncontended case); only if that fails does it release the GIL and
// wait, so a thread that holds the lock and needs the GIL to finish can always get it. The inner mutex is
// only held for a few instructions and never while waiting for the GIL. Not recursive: a thread must not
// take it twice.
class ReadWriteLock {
public:
    void acquire_read() {
        {
            std::lock_guard<std::mutex> g(mu_);
            if (can_read()) {
                ++readers_;
                return;
            }
        }
        py::gil_scoped_release release;
        std::unique_lock<std::mutex> g(mu_);
        cv_.wait(g, [this] { return can_read(); });
        ++readers_;
    }
    void acquire_write() {
        {
            std::lock_guard<std::mutex> g(mu_);
            if (can_write()) {
                writer_ = true;
                return;
            }
        }
        py::gil_scoped_release release;
        std::unique_lock<std::mutex> g(mu_);
        ++waiting_writers_;
        cv_.wait(g, [this] { return !writer_ && readers_ == 0; });
        --waiting_writers_;
        writer_ = true;
    }
    // Gives back a write hold, or one read hold; false when nothing was held. Never throws (ReadHold's
    // destructor calls it).
    bool release() noexcept {
        {
            std::lock_guard<std::mutex> g(mu_);
            if (writer_)
                writer_ = false;
            else if (readers_ > 0)
                --readers_;
            else
                return false;
        }
        cv_.notify_all();
        return true;
    }

private:
    bool can_read() const { return !writer_ && waiting_writers_ == 0; }
    bool can_write() const { return !writer_ && readers_ == 0 && waiting_writers_ == 0; }
    std::mutex mu_;
    std::condition_variable cv_;
    int readers_ = 0;
    int waiting_writers_ = 0;
    bool writer_ = false;
};

struct ReadHold {  // releases a read hold however the scope ends
    explicit ReadHold(ReadWriteLock& l) : lock(l) { lock.acquire_read(); }
    ~ReadHold() { lock.release(); }
    ReadHold(const ReadHold&) = delete;
    ReadHold& operator=(const ReadHold&) = delete;
    ReadWriteLock& lock;
};

// A C-ordered array of T with `ndim` dimensions, or nullptr. Plain handles rather than typed casters:
// pybind11's generic casting would cost as much as building the hits.
template <typename T>
const T* array_data(py::handle obj, int ndim, py::ssize_t* shape) {
    if (!py::isinstance<py::array>(obj)) return nullptr;
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().is(py::dtype::of<T>()) || a.ndim() != ndim || !(a.flags() & py::array::c_style)) return nullptr;
    for (int i = 0; i < ndim; ++i) shape[i] = a.shape(i);
    return static_cast<const T*>(a.data());
}

// One Hit(id, score, metadata): Hit is a NamedTuple, i.e. a tuple subtype without a __dict__, so it is
// allocated like a tuple of three items and filled in place.
PyObject* new_hit(PyTypeObject* type, PyObject* id, double score, PyObject* meta) {
    PyObject* s = PyFloat_FromDouble(score);
    if (!s) return nullptr;
    PyObject* hit = type->tp_alloc(type, 3);
    if (!hit) {
        Py_DECREF(s);
        return nullptr;
    }
    Py_INCREF(id);
    Py_INCREF(meta);
    PyTuple_SetItem(hit, 0, id);  // each steals one reference
    PyTuple_SetItem(hit, 1, s);
    PyTuple_SetItem(hit, 2, meta);
    return hit;
}

// What turns labels into hits: the Hit type and the label-indexed id and metadata lists. Only the public
// C API is used (no PyListObject internals): items are fetched with bounds checks and held as owned
// references while the hits are allocated, since an allocation can run the garbage collector and with it
// code that changes the lists (and, on free-threaded Python, another thread can).
struct HitTable {
    PyTypeObject* type;
    py::handle ids, metas;
    bool l2;  // score = -distance for l2, 1 - distance for the inner-product spaces

    HitTable(py::handle hit_type, py::handle id_list, py::handle meta_list, bool l2_space)
        : ids(id_list), metas(meta_list), l2(l2_space) {
        if (!PyType_Check(hit_type.ptr()) ||
            !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(hit_type.ptr()), &PyTuple_Type))
            throw py::type_error("hit_type must be a tuple subtype");
        if (!PyList_Check(id_list.ptr()) || !PyList_Check(meta_list.ptr()))
            throw py::type_error("ids and metas must be lists");
        if (PyList_Size(id_list.ptr()) != PyList_Size(meta_list.ptr()))
            throw std::invalid_argument("ids and metas differ in length");
        type = reinterpret_cast<PyTypeObject*>(hit_type.ptr());
    }

    // A new reference to list[label]; a label outside the list is a bug upstream: raise, never guess.
    static py::object item(py::handle list, uint64_t label) {
        if (label >= static_cast<uint64_t>(PyList_Size(list.ptr()))) throw std::out_of_range("hnswlib returned an unknown label");
        PyObject* o = PyList_GetItem(list.ptr(), static_cast<Py_ssize_t>(label));
        if (!o) throw py::error_already_set();
        return py::reinterpret_borrow<py::object>(o);
    }

    // One list of hits per row. A label whose id slot is None (deleted) is a bug upstream too.
    py::list rows(const uint64_t* lab, const float* dist, py::ssize_t rows, py::ssize_t cols) const {
        const py::ssize_t total = rows * cols;
        std::vector<py::object> id_of, meta_of;
        id_of.reserve(static_cast<size_t>(total));
        meta_of.reserve(static_cast<size_t>(total));
        for (py::ssize_t i = 0; i < total; ++i) {
            id_of.push_back(item(ids, lab[i]));
            meta_of.push_back(item(metas, lab[i]));
            if (id_of.back().is_none()) throw std::runtime_error("hnswlib returned a deleted label");
        }
        py::list out(rows);
        for (py::ssize_t r = 0; r < rows; ++r) {
            py::list row(cols);
            for (py::ssize_t c = 0; c < cols; ++c) {
                const py::ssize_t i = r * cols + c;
                const double d = dist[i];
                PyObject* hit = new_hit(type, id_of[i].ptr(), l2 ? -d : 1.0 - d, meta_of[i].ptr());
                if (!hit) throw py::error_already_set();
                PyList_SetItem(row.ptr(), c, hit);  // steals the reference
            }
            PyList_SetItem(out.ptr(), r, row.release().ptr());
        }
        return out;
    }
};

py::list build_hits(py::handle hit_type, py::handle labels, py::handle dists, py::handle ids, py::handle metas,
                    bool l2) {
    py::ssize_t ls[2], ds[2];
    const uint64_t* lab = array_data<uint64_t>(labels, 2, ls);
    const float* dist = array_data<float>(dists, 2, ds);
    if (!lab) throw py::type_error("labels must be a C-ordered 2-D uint64 array");
    if (!dist) throw py::type_error("distances must be a C-ordered 2-D float32 array");
    if (ls[0] != ds[0] || ls[1] != ds[1]) throw std::invalid_argument("labels and distances differ in shape");
    return HitTable(hit_type, ids, metas, l2).rows(lab, dist, ls[0], ls[1]);
}

// The one-query search of a VectorIndex, bound to its state once (VectorIndex rebinds it when it replaces
// any of these objects). Returns None whenever the Python path must decide instead: a query that is not a
// float32 vector of the right size, k < 1, or hnswlib raising (too few reachable elements).
class SingleSearch {
public:
    SingleSearch(py::object knn_query, py::object hit_type, py::list ids, py::list metas, py::dict labels,
                 py::object lock, py::ssize_t dim, bool l2)
        : knn_(std::move(knn_query)), hit_type_(std::move(hit_type)), ids_(std::move(ids)), metas_(std::move(metas)),
          labels_(std::move(labels)), lock_owner_(std::move(lock)), lock_(lock_owner_.cast<ReadWriteLock&>()),
          dim_(dim), l2_(l2) {}

    py::object operator()(py::handle query, py::handle k_obj) {
        py::ssize_t shape[1];
        if (!array_data<float>(query, 1, shape) || shape[0] != dim_ || !PyLong_CheckExact(k_obj.ptr()))
            return py::none();
        const long long k = PyLong_AsLongLong(k_obj.ptr());
        if (k < 1) {
            PyErr_Clear();  // an overflow also lands here; the Python path names the problem
            return py::none();
        }
        ReadHold hold(lock_);
        const py::ssize_t live = PyDict_Size(labels_.ptr());
        if (live == 0) return py::list();
        py::object found;
        try {
            found = knn_(query, static_cast<py::ssize_t>(std::min<long long>(k, live)), -1, py::none());
        } catch (py::error_already_set& e) {
            if (!e.matches(PyExc_RuntimeError)) throw;
            return py::none();  // the Python path falls back to exact scoring
        }
        auto pair = found.cast<py::tuple>();
        py::ssize_t ls[2], ds[2];
        const uint64_t* lab = array_data<uint64_t>(pair[0], 2, ls);
        const float* dist = array_data<float>(pair[1], 2, ds);
        if (!lab || !dist || ls[0] != 1 || ds[0] != 1 || ls[1] != ds[1])
            throw std::runtime_error("unexpected knn_query result from hnswlib");
        return HitTable(hit_type_, ids_, metas_, l2_).rows(lab, dist, 1, ls[1])[0];
    }

private:
    py::object knn_, hit_type_;
    py::list ids_, metas_;
    py::dict labels_;
    py::object lock_owner_;  // keeps lock_ alive
    ReadWriteLock& lock_;
    py::ssize_t dim_;
    bool l2_;
};

}  // namespace

void bind_index_helpers(py::module_& m) {
    py::class_<ReadWriteLock>(m, "ReadWriteLock",
                              "Many readers or one writer, writers first; waits with the GIL released. Not recursive.")
        .def(py::init<>())
        .def("acquire_read", &ReadWriteLock::acquire_read)
        .def("acquire_write", &ReadWriteLock::acquire_write)
        .def("release", [](ReadWriteLock& l) {
            if (!l.release()) throw std::runtime_error("release() without a read or write hold");
        }, "Release a read or a write hold taken by this thread.");
    m.def("build_hits", &build_hits, py::arg("hit_type"), py::arg("labels"), py::arg("distances"), py::arg("ids"),
          py::arg("metas"), py::arg("l2"),
          "Lists of hit_type(ids[label], score, metas[label]) from hnswlib's knn_query arrays "
          "(score = -distance for l2, 1 - distance otherwise).");
    py::class_<SingleSearch>(m, "SingleSearch",
                             "VectorIndex's one-query search path: lock, hnswlib knn_query, hits. Returns None "
                             "where the Python path must decide (other query types, k < 1, hnswlib errors).")
        .def(py::init<py::object, py::object, py::list, py::list, py::dict, py::object, py::ssize_t, bool>(),
             py::arg("knn_query"), py::arg("hit_type"), py::arg("ids"), py::arg("metas"), py::arg("labels"),
             py::arg("lock"), py::arg("dim"), py::arg("l2"))
        .def("__call__", &SingleSearch::operator(), py::arg("query"), py::arg("k"));
}
