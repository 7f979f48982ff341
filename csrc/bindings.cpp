// The Python binding: a thin layer. Arrays come in without copying (float32 / int32, C order);
// the GIL is released while the core computes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "beam_search.h"
#include "sampling.h"

namespace py = pybind11;
using namespace edgeai;

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IntArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

namespace {

const float* logits_1d(const FloatArray& logits, int32_t& n) {
    if (logits.ndim() != 1) throw std::invalid_argument("logits must be a 1-D array of vocabulary size");
    n = static_cast<int32_t>(logits.shape(0));
    return logits.data();
}

TokenHistory history_of(const std::optional<IntArray>& h) {
    TokenHistory out;
    if (h && h->size() > 0) {
        if (h->ndim() != 1) throw std::invalid_argument("history must be a 1-D array of token ids");
        out.tokens = h->data();
        out.size = static_cast<size_t>(h->shape(0));
    }
    return out;
}

void bind_sampling(py::module_& m) {
    py::class_<SamplerChain>(m, "SamplerChain",
                             "A chain of samplers applied in order; the last one (greedy or dist) picks the token.\n"
                             "Calls on one chain are serialised by a lock; use one chain per generation stream.")
        .def(py::init<>())
        .def("add_logit_bias", [](SamplerChain& c, const std::map<int32_t, float>& bias) {
            c.add(make_logit_bias({bias.begin(), bias.end()}));
        }, py::arg("bias"))
        .def("add_penalties", [](SamplerChain& c, float repetition, float presence, float frequency, int32_t last_n) {
            c.add(make_penalties(repetition, presence, frequency, last_n));
        }, py::arg("repetition") = 1.0f, py::arg("presence") = 0.0f, py::arg("frequency") = 0.0f, py::arg("last_n") = 0)
        .def("add_temperature", [](SamplerChain& c, float t) { c.add(make_temperature(t)); }, py::arg("t"))
        .def("add_top_k", [](SamplerChain& c, int32_t k) { c.add(make_top_k(k)); }, py::arg("k"))
        .def("add_top_p", [](SamplerChain& c, float p) { c.add(make_top_p(p)); }, py::arg("p"))
        .def("add_min_p", [](SamplerChain& c, float p) { c.add(make_min_p(p)); }, py::arg("p"))
        .def("add_greedy", [](SamplerChain& c) { c.add(make_greedy()); })
        .def("add_dist", [](SamplerChain& c, uint64_t seed) { c.add(make_dist(seed)); }, py::arg("seed"))
        .def("sample", [](SamplerChain& c, const FloatArray& logits, const std::optional<IntArray>& history) {
            int32_t n;
            const float* x = logits_1d(logits, n);
            TokenHistory h = history_of(history);
            py::gil_scoped_release release;
            return c.sample(x, n, h);
        }, py::arg("logits"), py::arg("history") = py::none())
        .def("candidates", [](SamplerChain& c, const FloatArray& logits, const std::optional<IntArray>& history) {
            int32_t n;
            const float* x = logits_1d(logits, n);
            TokenHistory h = history_of(history);
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
        .def("reseed", &SamplerChain::reseed, py::arg("seed"))
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
        .def(py::init<int, int, std::vector<int32_t>, float, EarlyStopping, int>(), py::arg("num_beams"),
             py::arg("n_vocab"), py::arg("eos_ids"), py::arg("length_penalty") = 1.0f,
             py::arg("early_stopping") = EarlyStopping::kHeuristic, py::arg("max_new_tokens") = 20)
        .def("step", [](BeamSearch& b, const FloatArray& logits) {
            if (logits.ndim() != 2 || logits.shape(0) != b.num_beams())
                throw std::invalid_argument("logits must have shape [num_beams, n_vocab]");
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
        .def("finalize", [](const BeamSearch& b, int n) {
            py::list out;
            for (const auto& h : b.finalize(n)) out.append(py::make_tuple(h.tokens, h.score, h.finished));
            return out;
        }, py::arg("n") = 1, "Best n hypotheses as (tokens, score, finished), best first.");
}

}  // namespace

void bind_engine(py::module_& m);  // bind_engine.cpp
void bind_index_helpers(py::module_& m);  // bind_index.cpp

PYBIND11_MODULE(_core, m) {
    m.doc() = "edgeai native core: sampling chain, beam search, decode engine";
    bind_sampling(m);
    bind_beam_search(m);
    bind_engine(m);
    bind_index_helpers(m);
}
