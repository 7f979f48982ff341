// Python binding of the continuous-batching engine (thin: argument conversion, GIL handling).
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "batch_engine.h"
#include "py_args.h"
#include "py_results.h"

namespace py = pybind11;
using namespace edgeai;
using edgeai::py_args::int32_list;
using edgeai::py_args::integer;
using edgeai::py_results::result_dict;
using edgeai::py_results::token_callback;

namespace {

// Forward implemented in Python (edgeai/ort_forward.py: OrtForward.rows). The callable gets
// (first_row, batch, n_tokens, past_lens_address, tokens_address, logits_address, kv_version) and must write
// the logits of each row's last position; it runs with the GIL held (ONNX Runtime releases it to compute).
class PyRowsForward : public Forward {
public:
    explicit PyRowsForward(py::object fn) : fn_(std::move(fn)) {}
    ~PyRowsForward() override {
        py::gil_scoped_acquire gil;
        fn_ = py::object();
    }
    void run(KVCache&, int, int, int, const int64_t*, float*, int) override {
        throw std::logic_error("a rows forward serves the batch engine only");
    }
    void run_rows(KVCache& kv, int first_row, int batch, int n_tokens, const int32_t* past_lens,
                  const int64_t* tokens, float* logits) override {
        py::gil_scoped_acquire gil;
        fn_(first_row, batch, n_tokens, reinterpret_cast<uintptr_t>(past_lens), reinterpret_cast<uintptr_t>(tokens),
            reinterpret_cast<uintptr_t>(logits), kv.version());
    }

private:
    py::object fn_;
};

}  // namespace

void bind_batch_engine(py::module_& m) {
    constexpr int kMax = std::numeric_limits<int32_t>::max();
    py::class_<BatchEngine>(m, "BatchEngine",
        "Continuous batching: concurrent generate() calls (from several threads) share each forward step.")
        .def(py::init([](py::object forward, py::handle layers, py::handle kv_heads, py::handle head_dim,
                         py::handle max_seq, py::handle n_vocab, py::handle max_rows, py::handle prefill_chunk,
                         bool interleave_prefill, bool batch_invariant, py::handle prompt_cache_bytes) {
            std::shared_ptr<Forward> f;
            if (py::isinstance<Forward>(forward))
                f = forward.cast<std::shared_ptr<Forward>>();
            else if (PyCallable_Check(forward.ptr()))
                f = std::make_shared<PyRowsForward>(forward);
            else
                throw py::type_error("forward must be a FakeForward or a callable");
            return std::make_unique<BatchEngine>(f, integer<int>(layers, "layers", 1, kMax),
                                                 integer<int>(kv_heads, "kv_heads", 1, kMax),
                                                 integer<int>(head_dim, "head_dim", 1, kMax),
                                                 integer<int>(max_seq, "max_seq", 1, kMax),
                                                 integer<int>(n_vocab, "n_vocab", 1, kMax),
                                                 integer<int>(max_rows, "max_rows", 1, 256),
                                                 integer<int>(prefill_chunk, "prefill_chunk", 1, kMax),
                                                 interleave_prefill, batch_invariant,
                                                 integer<size_t>(prompt_cache_bytes, "prompt_cache_bytes"));
        }), py::arg("forward"), py::arg("layers"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("max_seq"),
            py::arg("n_vocab"), py::arg("max_rows") = 4, py::arg("prefill_chunk") = 128,
            py::arg("interleave_prefill") = true, py::arg("batch_invariant") = false,
            py::arg("prompt_cache_bytes") = 0)
        .def("generate", [](BatchEngine& e, py::handle request_id, py::handle prompt, SamplerChain* chain,
                            py::handle max_new_tokens, py::handle eos_ids, py::object on_token,
                            bool use_prompt_cache) {
            const uint64_t id = integer<uint64_t>(request_id, "request_id");
            const std::vector<int32_t> ids = int32_list(prompt, "prompt token id");
            BatchParams p;
            p.max_new_tokens = integer<int>(max_new_tokens, "max_new_tokens", 1, kMax);
            p.eos_ids = int32_list(eos_ids, "eos token id");
            p.use_prompt_cache = use_prompt_cache;
            const TokenCallback cb = token_callback(on_token);
            GenerateResult r;
            {
                py::gil_scoped_release release;
                r = e.generate(id, ids, chain, p, cb);
            }
            return result_dict(r);
        }, py::arg("request_id"), py::arg("prompt"), py::arg("chain"), py::arg("max_new_tokens") = 128,
           py::arg("eos_ids") = py::list(), py::arg("on_token") = py::none(), py::arg("use_prompt_cache") = true)
        .def("cancel", [](BatchEngine& e, py::handle request_id) {
            return e.cancel(integer<uint64_t>(request_id, "request_id"));
        }, py::arg("request_id"), "Stop that sequence at the next step boundary (any thread); False if unknown.")
        .def("cancel_all", &BatchEngine::cancel_all)
        .def("clear_cache", &BatchEngine::clear_cache, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("stats", [](BatchEngine& e) {
            const auto s = e.stats();
            py::dict d;
            d["decode_steps"] = s.decode_steps;
            d["decode_rows"] = s.decode_rows;
            d["prefill_chunks"] = s.prefill_chunks;
            d["prompt_tokens"] = s.prompt_tokens;
            d["reused_prompt_tokens"] = s.reused_tokens;
            d["cache_bytes"] = s.cache_bytes;
            d["cache_entries"] = s.cache_entries;
            d["running"] = s.running;
            d["queued"] = s.queued;
            return d;
        })
        .def_property_readonly("max_seq", &BatchEngine::max_seq)
        .def_property_readonly("n_vocab", &BatchEngine::n_vocab)
        .def_property_readonly("max_rows", &BatchEngine::max_rows)
        .def_property_readonly("prefill_chunk", &BatchEngine::prefill_chunk)
        .def_property_readonly("kv_version", &BatchEngine::kv_version)
        .def_property_readonly("kv_shape", [](BatchEngine& e) {
            const auto s = e.kv_shape();
            return py::make_tuple(s.batch, s.kv_heads, s.max_seq, s.head_dim);
        })
        .def("kv_address", [](BatchEngine& e, py::handle layer, bool value) {
            return reinterpret_cast<uintptr_t>(e.kv_address(integer<int>(layer, "layer"), value));
        }, py::arg("layer"), py::arg("value"));
}
