// Python binding of the decode engine (thin: argument conversion, GIL handling).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "engine.h"
#include "py_args.h"
#include "py_results.h"

namespace py = pybind11;
using namespace edgeai;
using edgeai::py_args::int32_list;
using edgeai::py_args::integer;
using edgeai::py_results::result_dict;
using edgeai::py_results::token_callback;

namespace {

// Forward implemented in Python (ONNX Runtime with I/O binding, edgeai/ort_forward.py). The callable
// gets (batch, n_tokens, past_len, tokens_address, logits_address, kv_version, n_logits) and must write the
// logits of the last n_logits positions of each row;
// it runs with the GIL held, and ONNX Runtime releases it while the model computes.
class PyForward : public Forward {
public:
    explicit PyForward(py::object fn) : fn_(std::move(fn)) {}
    ~PyForward() override {
        py::gil_scoped_acquire gil;
        fn_ = py::object();
    }
    void run(KVCache& kv, int batch, int n_tokens, int past_len, const int64_t* tokens, float* logits,
             int n_logits) override {
        py::gil_scoped_acquire gil;
        fn_(batch, n_tokens, past_len, reinterpret_cast<uintptr_t>(tokens), reinterpret_cast<uintptr_t>(logits),
            kv.version(), n_logits);  // the engine holds its lock: read the KV directly
    }

private:
    py::object fn_;
};

}  // namespace

void bind_engine(py::module_& m) {
    py::class_<Forward, std::shared_ptr<Forward>>(m, "Forward");
    py::class_<FakeForward, Forward, std::shared_ptr<FakeForward>>(m, "FakeForward",
        "Deterministic stand-in for a model: logits depend on every token in the KV cache row.")
        .def(py::init<int, int>(), py::arg("n_vocab"), py::arg("repeat_period") = 0)
        .def_readonly("calls", &FakeForward::calls)
        .def_readonly("tokens_processed", &FakeForward::tokens_processed);

    py::class_<Engine>(m, "Engine", "KV-cache decode engine; generate() calls are serialised (they queue).")
        .def(py::init([](py::object forward, py::handle layers, py::handle kv_heads, py::handle head_dim,
                         py::handle max_seq, py::handle n_vocab, py::handle cache_bytes, py::handle prefill_chunk) {
            std::shared_ptr<Forward> f;
            if (py::isinstance<Forward>(forward))
                f = forward.cast<std::shared_ptr<Forward>>();
            else if (PyCallable_Check(forward.ptr()))
                f = std::make_shared<PyForward>(forward);
            else
                throw py::type_error("forward must be a FakeForward or a callable");
            constexpr int kMax = std::numeric_limits<int32_t>::max();
            return std::make_unique<Engine>(f, integer<int>(layers, "layers", 1, kMax),
                                            integer<int>(kv_heads, "kv_heads", 1, kMax),
                                            integer<int>(head_dim, "head_dim", 1, kMax),
                                            integer<int>(max_seq, "max_seq", 1, kMax),
                                            integer<int>(n_vocab, "n_vocab", 1, kMax),
                                            integer<size_t>(cache_bytes, "prompt_cache_bytes"),
                                            integer<int>(prefill_chunk, "prefill_chunk", 1, kMax));
        }), py::arg("forward"), py::arg("layers"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("max_seq"),
            py::arg("n_vocab"), py::arg("prompt_cache_bytes") = 64u << 20, py::arg("prefill_chunk") = 128)
        .def("generate", [](Engine& e, py::handle prompt, SamplerChain* chain, py::handle max_new_tokens,
                            py::handle eos_ids, py::handle num_beams, float length_penalty,
                            EarlyStopping early_stopping, py::handle num_return_sequences, bool use_prompt_cache,
                            py::object on_token, py::handle draft_tokens, Engine* draft, double draft_cost,
                            double verify_cost, py::handle draft_window, py::handle seed, bool fixed_draft) {
            constexpr int kMax = std::numeric_limits<int32_t>::max();
            const std::vector<int32_t> ids = int32_list(prompt, "prompt token id");
            GenerateParams p;
            p.max_new_tokens = integer<int>(max_new_tokens, "max_new_tokens", 1, kMax);
            p.eos_ids = int32_list(eos_ids, "eos token id");
            p.num_beams = integer<int>(num_beams, "num_beams", 1, kMax);
            p.length_penalty = length_penalty;
            p.early_stopping = early_stopping;
            p.num_return_sequences = integer<int>(num_return_sequences, "num_return_sequences", 1, kMax);
            p.use_prompt_cache = use_prompt_cache;
            p.draft_tokens = integer<int>(draft_tokens, "draft_tokens", 0, 1 << 16);
            p.draft = draft;
            if (!(draft_cost >= 0.0 && draft_cost <= 100.0)) throw py::value_error("draft_cost must be in [0, 100]");
            p.draft_cost = draft_cost;
            if (!(verify_cost >= 0.0 && verify_cost <= 100.0)) throw py::value_error("verify_cost must be in [0, 100]");
            p.verify_cost = verify_cost;
            p.draft_window = integer<int>(draft_window, "draft_window", 0, kMax);
            p.seed = integer<uint64_t>(seed, "seed");
            p.fixed_draft = fixed_draft;
            const TokenCallback cb = token_callback(on_token);
            GenerateResult r;
            {
                py::gil_scoped_release release;
                r = e.generate(ids, chain, p, cb);
            }
            return result_dict(r);
        }, py::arg("prompt"), py::arg("chain"), py::arg("max_new_tokens") = 128, py::arg("eos_ids") = py::list(),
           py::arg("num_beams") = 1, py::arg("length_penalty") = 1.0f, py::arg("early_stopping") = EarlyStopping::kHeuristic,
           py::arg("num_return_sequences") = 1, py::arg("use_prompt_cache") = true, py::arg("on_token") = py::none(),
           py::arg("draft_tokens") = 0, py::arg("draft") = nullptr, py::arg("draft_cost") = 0.4,
           py::arg("verify_cost") = 0.1, py::arg("draft_window") = 0, py::arg("seed") = 0,
           py::arg("fixed_draft") = false)
        .def("cancel", &Engine::cancel,
             "Stop the generation in flight at its next token, and every request already queued (any thread).")
        .def("clear_cache", [](Engine& e) { py::gil_scoped_release r; e.clear_cache(); })
        .def_property_readonly("max_seq", &Engine::max_seq)
        .def_property_readonly("n_vocab", &Engine::n_vocab)
        .def_property_readonly("prefill_chunk", &Engine::prefill_chunk)
        .def_property_readonly("kv_version", &Engine::kv_version)
        .def_property_readonly("kv_shape", [](Engine& e) {
            const auto s = e.kv_shape();
            return py::make_tuple(s.batch, s.kv_heads, s.max_seq, s.head_dim);
        })
        .def("kv_address", [](Engine& e, py::handle layer, bool value) {
            return reinterpret_cast<uintptr_t>(e.kv_address(integer<int>(layer, "layer"), value));
        }, py::arg("layer"), py::arg("value"))
        .def_property_readonly("cache_bytes", &Engine::cache_bytes)
        .def_property_readonly("cache_entries", &Engine::cache_entries);
}
