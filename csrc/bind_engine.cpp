// Python binding of the decode engine (thin: argument conversion, GIL handling).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "engine.h"

namespace py = pybind11;
using namespace edgeai;

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
            kv.version(), n_logits);
    }

private:
    py::object fn_;
};

py::dict result_dict(const GenerateResult& r) {
    py::dict d;
    d["sequences"] = r.sequences;
    d["scores"] = r.scores;
    d["finish_reason"] = r.finish_reason;
    d["prompt_tokens"] = r.prompt_tokens;
    d["reused_tokens"] = r.reused_tokens;
    d["ttft_s"] = r.ttft_s;
    d["prefill_s"] = r.prefill_s;
    d["decode_s"] = r.decode_s;
    d["forward_s"] = r.forward_s;
    d["decode_forward_s"] = r.decode_forward_s;
    d["decode_steps"] = r.decode_steps;
    d["draft_proposed"] = r.draft_proposed;
    d["draft_accepted"] = r.draft_accepted;
    return d;
}

}  // namespace

void bind_engine(py::module_& m) {
    py::class_<Forward, std::shared_ptr<Forward>>(m, "Forward");
    py::class_<FakeForward, Forward, std::shared_ptr<FakeForward>>(m, "FakeForward",
        "Deterministic stand-in for a model: logits depend on every token in the KV cache row.")
        .def(py::init<int, int>(), py::arg("n_vocab"), py::arg("repeat_period") = 0)
        .def_readonly("calls", &FakeForward::calls)
        .def_readonly("tokens_processed", &FakeForward::tokens_processed);

    py::class_<Engine>(m, "Engine", "KV-cache decode engine; generate() calls are serialised (they queue).")
        .def(py::init([](py::object forward, int layers, int kv_heads, int head_dim, int max_seq, int n_vocab,
                         size_t cache_bytes, int prefill_chunk) {
            std::shared_ptr<Forward> f;
            if (py::isinstance<Forward>(forward))
                f = forward.cast<std::shared_ptr<Forward>>();
            else if (PyCallable_Check(forward.ptr()))
                f = std::make_shared<PyForward>(forward);
            else
                throw py::type_error("forward must be a FakeForward or a callable");
            return std::make_unique<Engine>(f, layers, kv_heads, head_dim, max_seq, n_vocab, cache_bytes, prefill_chunk);
        }), py::arg("forward"), py::arg("layers"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("max_seq"),
            py::arg("n_vocab"), py::arg("prompt_cache_bytes") = 64u << 20, py::arg("prefill_chunk") = 128)
        .def("generate", [](Engine& e, const std::vector<int32_t>& prompt, SamplerChain* chain, int max_new_tokens,
                            const std::vector<int32_t>& eos_ids, int num_beams, float length_penalty,
                            EarlyStopping early_stopping, int num_return_sequences, bool use_prompt_cache,
                            py::object on_token, int draft_tokens) {
            GenerateParams p;
            p.max_new_tokens = max_new_tokens;
            p.eos_ids = eos_ids;
            p.num_beams = num_beams;
            p.length_penalty = length_penalty;
            p.early_stopping = early_stopping;
            p.num_return_sequences = num_return_sequences;
            p.use_prompt_cache = use_prompt_cache;
            p.draft_tokens = draft_tokens;
            TokenCallback cb;
            if (!on_token.is_none())
                cb = [&on_token](int32_t t) {
                    py::gil_scoped_acquire gil;
                    return on_token(t).cast<bool>();
                };
            GenerateResult r;
            {
                py::gil_scoped_release release;
                r = e.generate(prompt, chain, p, cb);
            }
            return result_dict(r);
        }, py::arg("prompt"), py::arg("chain"), py::arg("max_new_tokens") = 128, py::arg("eos_ids") = std::vector<int32_t>{},
           py::arg("num_beams") = 1, py::arg("length_penalty") = 1.0f, py::arg("early_stopping") = EarlyStopping::kHeuristic,
           py::arg("num_return_sequences") = 1, py::arg("use_prompt_cache") = true, py::arg("on_token") = py::none(),
           py::arg("draft_tokens") = 0)
        .def("cancel", &Engine::cancel, "Stop the generation in flight at its next token (any thread).")
        .def("clear_cache", [](Engine& e) { py::gil_scoped_release r; e.clear_cache(); })
        .def_property_readonly("max_seq", &Engine::max_seq)
        .def_property_readonly("n_vocab", &Engine::n_vocab)
        .def_property_readonly("kv_version", [](Engine& e) { return e.kv().version(); })
        .def_property_readonly("kv_shape", [](Engine& e) {
            auto& kv = e.kv();
            return py::make_tuple(kv.batch_capacity(), kv.kv_heads(), kv.max_seq(), kv.head_dim());
        })
        .def("kv_address", [](Engine& e, int layer, bool value) {
            if (layer < 0 || layer >= e.kv().layers()) throw py::index_error("layer out of range");
            return reinterpret_cast<uintptr_t>(value ? e.kv().value(layer) : e.kv().key(layer));
        }, py::arg("layer"), py::arg("value"))
        .def_property_readonly("cache_bytes", [](Engine& e) { return e.prompt_cache().used_bytes(); })
        .def_property_readonly("cache_entries", [](Engine& e) { return e.prompt_cache().size(); });
}
