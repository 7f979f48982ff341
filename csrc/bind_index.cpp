// Native helpers for edgeai.retrieval.index: the read/write lock that guards hnswlib, and turning hnswlib's
// (labels, distances) arrays into lists of Hit tuples. Both sit on the path of every search, whose whole budget
// at ef=32 is about 60 us, so each costs a fraction of a microsecond here instead of a few in Python.
//
// Why the hits are built here: a search over a few hundred thousand vectors evicts the interpreter's working set from the
// caches, so the Python loop that built ten Hit tuples afterwards ran cold and cost 10-15 us per query,
// about a fifth of a whole ef=32 search. One call that writes the tuples directly costs a small fraction of that.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <pthread.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace {

// Plain handles rather than typed casters: the arguments are checked here, and pybind11's generic casting
// would cost as much as building the hits themselves.
template <typename T>
const T* typed_data(py::handle obj, const char* what, py::ssize_t& rows, py::ssize_t& cols) {
    if (!py::isinstance<py::array>(obj)) throw py::type_error(std::string(what) + " must be a numpy array");
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().is(py::dtype::of<T>()) || a.ndim() != 2 || !(a.flags() & py::array::c_style))
        throw py::type_error(std::string(what) + " must be a C-ordered 2-D array of " +
                             std::string(py::str(py::dtype::of<T>())));
    rows = a.shape(0);
    cols = a.shape(1);
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
    PyTuple_SET_ITEM(hit, 0, id);
    PyTuple_SET_ITEM(hit, 1, s);
    PyTuple_SET_ITEM(hit, 2, meta);
    return hit;
}

// rows[i] = [Hit(ids[label], score(distance), metas[label]) for each column]; score = -d for l2, 1 - d for
// the inner-product spaces. A label whose id slot is None (deleted) is a bug upstream: raise, never guess.
py::list build_hits(py::handle hit_type, py::handle labels, py::handle dists, py::handle ids, py::handle metas,
                    bool l2) {
    py::ssize_t rows, cols, drows, dcols;
    const uint64_t* lab = typed_data<uint64_t>(labels, "labels", rows, cols);
    const float* dist = typed_data<float>(dists, "distances", drows, dcols);
    if (rows != drows || cols != dcols) throw std::invalid_argument("labels and distances differ in shape");
    if (!PyType_Check(hit_type.ptr()) ||
        !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(hit_type.ptr()), &PyTuple_Type))
        throw py::type_error("hit_type must be a tuple subtype");
    auto* type = reinterpret_cast<PyTypeObject*>(hit_type.ptr());
    if (!PyList_CheckExact(ids.ptr()) || !PyList_CheckExact(metas.ptr()))
        throw py::type_error("ids and metas must be lists");
    const py::ssize_t n = PyList_GET_SIZE(ids.ptr());
    if (PyList_GET_SIZE(metas.ptr()) != n) throw std::invalid_argument("ids and metas differ in length");
    // The id and metadata slots of random labels are cache misses; touch them all first so the misses overlap
    // instead of queuing one behind another.
    PyObject** id_items = reinterpret_cast<PyListObject*>(ids.ptr())->ob_item;
    PyObject** meta_items = reinterpret_cast<PyListObject*>(metas.ptr())->ob_item;
    for (py::ssize_t i = 0; i < rows * cols; ++i) {
        if (lab[i] < static_cast<uint64_t>(n)) {
            __builtin_prefetch(id_items + lab[i]);
            __builtin_prefetch(meta_items + lab[i]);
        }
    }
    for (py::ssize_t i = 0; i < rows * cols; ++i) {
        if (lab[i] < static_cast<uint64_t>(n)) __builtin_prefetch(id_items[lab[i]], 1);  // its refcount is written
    }
    py::list out(rows);
    for (py::ssize_t r = 0; r < rows; ++r) {
        py::list row(cols);
        for (py::ssize_t c = 0; c < cols; ++c) {
            const uint64_t label = lab[r * cols + c];
            if (label >= static_cast<uint64_t>(n)) throw std::out_of_range("hnswlib returned an unknown label");
            PyObject* id = id_items[label];
            if (id == Py_None) throw std::runtime_error("hnswlib returned a deleted label");
            const double d = dist[r * cols + c];
            PyObject* hit = new_hit(type, id, l2 ? -d : 1.0 - d, meta_items[label]);
            if (!hit) throw py::error_already_set();
            PyList_SET_ITEM(row.ptr(), c, hit);
        }
        PyList_SET_ITEM(out.ptr(), r, row.release().ptr());
    }
    return out;
}

// Many readers or one writer, writers first: a waiting writer stops new readers, so a stream of searches
// cannot starve an add. Taking the lock first tries without blocking while holding the GIL (the common,
// uncontended case); only if that fails does it release the GIL and wait, so a thread that holds the lock and
// needs the GIL to finish can always get it. Not recursive: a thread must not take it twice.
class ReadWriteLock {
public:
    ReadWriteLock() {
        pthread_rwlockattr_t attr;
        pthread_rwlockattr_init(&attr);
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        pthread_rwlock_init(&lock_, &attr);
        pthread_rwlockattr_destroy(&attr);
    }
    ~ReadWriteLock() { pthread_rwlock_destroy(&lock_); }
    ReadWriteLock(const ReadWriteLock&) = delete;
    ReadWriteLock& operator=(const ReadWriteLock&) = delete;

    void acquire_read() {
        if (pthread_rwlock_tryrdlock(&lock_) == 0) return;
        py::gil_scoped_release release;
        check(pthread_rwlock_rdlock(&lock_));
    }
    void acquire_write() {
        if (pthread_rwlock_trywrlock(&lock_) == 0) return;
        py::gil_scoped_release release;
        check(pthread_rwlock_wrlock(&lock_));
    }
    void release() { check(pthread_rwlock_unlock(&lock_)); }

private:
    static void check(int rc) {
        if (rc != 0) throw std::runtime_error("read/write lock error " + std::to_string(rc));
    }
    pthread_rwlock_t lock_;
};

}  // namespace

void bind_index_helpers(py::module_& m) {
    py::class_<ReadWriteLock>(m, "ReadWriteLock",
                              "Many readers or one writer, writers first; waits with the GIL released. Not recursive.")
        .def(py::init<>())
        .def("acquire_read", &ReadWriteLock::acquire_read)
        .def("acquire_write", &ReadWriteLock::acquire_write)
        .def("release", &ReadWriteLock::release, "Release a read or a write hold taken by this thread.");
    m.def("build_hits", &build_hits, py::arg("hit_type"), py::arg("labels"), py::arg("distances"), py::arg("ids"),
          py::arg("metas"), py::arg("l2"),
          "Lists of hit_type(ids[label], score, metas[label]) from hnswlib's knn_query arrays "
          "(score = -distance for l2, 1 - distance otherwise).");
}
