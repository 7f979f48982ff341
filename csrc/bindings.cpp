// The Python binding: a thin layer. Arrays come in without copying (float32 / int32, C order);
// the GIL is released while the core computes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <limits>

#include "beam_search.h"
#include "py_args.h"
#include "sampling.h"

namespace py = pybind11;
using namespace edgeai;

using edgeai::py_args::integer;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using WideIntArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
constexpr int32_t kMaxInt = std::numeric_limits<int32_t>::max();

namespace {

const float* logits_1d(const FloatArray& logits, int32_t& n) {
    if (logits.ndim() != 1) throw std::invalid_argument("logits must be a 1-D array of vocabulary size");
    if (logits.shape(0) > kMaxInt) throw std::invalid_argument("logits: vocabulary larger than 2**31 - 1");
    n = static_cast<int32_t>(logits.shape(0));
    return logits.data();
}

// Token ids as int32, each checked: a plain cast would wrap an id of 2**32 + 5 into the valid id 5.
std::vector<int32_t> history_of(const py::object& h) {
    if (h.is_none()) return {};
    if (!py::isinstance<py::array>(h)) return edgeai::py_args::int32_list(h, "history token id");
    auto arr = py::reinterpret_borrow<py::array>(h);
    const char kind = arr.dtype().kind();
    if (kind != 'i' && kind != 'u') throw py::type_error("history must hold integer token ids");
    if (arr.size() == 0) return {};
    if (arr.ndim() != 1) throw std::invalid_argument("history must be a 1-D array of token ids");
    if (kind == 'u' && arr.itemsize() == 8) arr = arr.attr("astype")("int64");  // values past 2**63 turn negative: caught below
    auto a = WideIntArray::ensure(arr);
    if (!a) throw py::error_already_set();
    std::vector<int32_t> out;
    out.reserve(static_cast<size_t>(a.size()));
    for (py::ssize_t i = 0; i < a.size(); ++i) {
        const int64_t t = a.data()[i];
        if (t < 0 || t > kMaxInt)
            throw py::value_error("history token id must be in [0, 2147483647], got " + std::to_string(t));
        out.push_back(static_cast<int32_t>(t));
    }
    return out;
}

void bind_sampling(py::module_& m) {
    py::class_<SamplerChain>(m, "SamplerChain",
                             "A chain of samplers applied in order; the last one (greedy or dist) picks the token.\n"
                             "Calls on one chain are serialised by a lock; use one chain per generation stream.")
        .def(py::init<>())
        .def("add_logit_bias", [](SamplerChain& c, const py::dict& bias) {
            std::vector<std::pair<int32_t, float>> b;
            for (auto item : bias)
                b.emplace_back(integer<int32_t>(item.first, "logit_bias token id", 0, kMaxInt), item.second.cast<float>());
            c.add(make_logit_bias(std::move(b)));
        }, py::arg("bias"))
        .def("add_penalties", [](SamplerChain& c, float repetition, float presence, float frequency, py::handle last_n) {
            c.add(make_penalties(repetition, presence, frequency, integer<int32_t>(last_n, "penalty_last_n", 0, kMaxInt)));
        }, py::arg("repetition") = 1.0f, py::arg("presence") = 0.0f, py::arg("frequency") = 0.0f, py::arg("last_n") = 0)
        .def("add_temperature", [](SamplerChain& c, float t) { c.add(make_temperature(t)); }, py::arg("t"))
        .def("add_top_k", [](SamplerChain& c, py::handle k) {
            c.add(make_top_k(integer<int32_t>(k, "top_k", 0, kMaxInt)));
        }, py::arg("k"))
        .def("add_top_p", [](SamplerChain& c, float p) { c.add(make_top_p(p)); }, py::arg("p"))
        .def("add_min_p", [](SamplerChain& c, float p) { c.add(make_min_p(p)); }, py::arg("p"))
        .def("add_greedy", [](SamplerChain& c) { c.add(make_greedy()); })
        .def("add_dist", [](SamplerChain& c, py::handle seed) {
            c.add(make_dist(integer<uint64_t>(seed, "seed")));
        }, py::arg("seed"))
        .def("sample", [](SamplerChain& c, const FloatArray& logits, const py::object& history) {
            int32_t n;
            const float* x = logits_1d(logits, n);
            const std::vector<int32_t> ids = history_of(history);
            TokenHistory h{ids.data(), ids.size()};
            py::gil_scoped_release release;
            return c.sample(x, n, h);
        }, py::arg("logits"), py::arg("history") = py::none())
        .def("candidates", [](SamplerChain& c, const FloatArray& logits, const py::object& history) {
            int32_t n;
            const float* x = logits_1d(logits, n);
            const std::vector<int32_t> hist = history_of(history);
            TokenHistory h{hist.data(), hist.size()};
            std::vector<int32_t> ids;
            std::vector<float> probs;
            {
                py::gil_scoped_release release;
                c.candidates(x, n, h, ids, probs);
            }
            return py::make_tuple(py::array_t<int32_t>(ids.size(), ids.data()),
                                  py::array_t<float>(probs.size(), probs.data()));
        }, py::arg("logits"), py::arg("history") = py::none(),
           "Runs the filters (not the chooser); returns (token ids, probabilities) of the survivors.")
        .def("reseed", [](SamplerChain& c, py::handle seed) { c.reseed(integer<uint64_t>(seed, "seed")); }, py::arg("seed"))
        .def_property_readonly("names", &SamplerChain::names);
}

void bind_beam_search(py::module_& m) {
    m.def("log_softmax", [](const FloatArray& x) {
        py::array_t<float> out(x.request().shape);
        size_t n = x.ndim() == 0 ? 1 : static_cast<size_t>(x.shape(x.ndim() - 1));
        size_t rows = n ? static_cast<size_t>(x.size()) / n : 0;
        const float* in = x.data();
        float* o = out.mutable_data();
        py::gil_scoped_release release;
        for (size_t r = 0; r < rows; ++r) log_softmax(in + r * n, n, o + r * n);
        return out;
    }, py::arg("x"), "log(softmax(x)) along the last axis.");

    py::enum_<EarlyStopping>(m, "EarlyStopping")
        .value("HEURISTIC", EarlyStopping::kHeuristic)
        .value("TRUE", EarlyStopping::kTrue)
        .value("NEVER", EarlyStopping::kNever);

    py::class_<BeamSearch>(m, "BeamSearch", "Beam bookkeeping with transformers' beam-search semantics.")
        .def(py::init([](py::handle num_beams, py::handle n_vocab, py::handle eos_ids, float length_penalty,
                         EarlyStopping early_stopping, py::handle max_new_tokens) {
            return std::make_unique<BeamSearch>(integer<int>(num_beams, "num_beams", 1, kMaxInt),
                                                integer<int>(n_vocab, "n_vocab", 1, kMaxInt),
                                                edgeai::py_args::int32_list(eos_ids, "eos token id"), length_penalty,
                                                early_stopping, integer<int>(max_new_tokens, "max_new_tokens", 1, kMaxInt));
        }), py::arg("num_beams"), py::arg("n_vocab"), py::arg("eos_ids"), py::arg("length_penalty") = 1.0f,
            py::arg("early_stopping") = EarlyStopping::kHeuristic, py::arg("max_new_tokens") = 20)
        .def("step", [](BeamSearch& b, const FloatArray& logits) {
            if (logits.ndim() != 2 || logits.shape(0) != b.num_beams() || logits.shape(1) != b.n_vocab())
                throw std::invalid_argument("logits must have shape [num_beams, n_vocab] = [" +
                                            std::to_string(b.num_beams()) + ", " + std::to_string(b.n_vocab()) + "]");
            const float* x = logits.data();
            {
                py::gil_scoped_release release;
                b.step(x);
            }
            return py::make_tuple(py::array_t<int32_t>(b.next_tokens().size(), b.next_tokens().data()),
                                  py::array_t<int32_t>(b.parents().size(), b.parents().data()));
        }, py::arg("logits"), "Advance one step; returns (next token per beam, parent beam per beam).")
        .def_property_readonly("done", &BeamSearch::done)
        .def_property_readonly("generated", &BeamSearch::generated)
        .def_property_readonly("running_scores", &BeamSearch::running_scores)
        .def_property_readonly("running_sequences", &BeamSearch::running_sequences)
        .def("finalize", [](const BeamSearch& b, py::handle n) {
            py::list out;
            for (const auto& h : b.finalize(integer<int>(n, "n", 1, kMaxInt))) out.append(py::make_tuple(h.tokens, h.score, h.finished));
            return out;
        }, py::arg("n") = 1, "Best n hypotheses as (tokens, score, finished), best first.");
}

}  // namespace

void bind_engine(py::module_& m);  // bind_engine.cpp
void bind_index_helpers(py::module_& m);  // bind_index.cpp
void bind_batch_engine(py::module_& m);  // bind_batch.cpp

PYBIND11_MODULE(_core, m) {
    m.doc() = "edgeai native core: sampling chain, beam search, decode engine";
#define EDGEAI_STRINGIFY(x) #x
#define EDGEAI_VERSION_STRING(x) EDGEAI_STRINGIFY(x)
#ifdef VERSION_INFO
    m.attr("__version__") = EDGEAI_VERSION_STRING(VERSION_INFO);  // pyproject.toml's version (setup.py)
#else
    m.attr("__version__") = "dev";
#endif
    bind_sampling(m);
    bind_beam_search(m);
    bind_engine(m);
    bind_index_helpers(m);
    bind_batch_engine(m);
}
