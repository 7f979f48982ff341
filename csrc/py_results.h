// Python views shared by the engine bindings (bind_engine.cpp, bind_batch.cpp): a generation's result as a
// dict, and a Python token callback as the engine's TokenCallback. Glue only: no decisions are made here.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "engine.h"

namespace edgeai {
namespace py_results {

namespace py = pybind11;

inline py::dict result_dict(const GenerateResult& r) {
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
    if (!r.speculative.steps_by_width.empty()) {  // a draft model ran this request
        const SpeculativeStats& s = r.speculative;
        py::dict sp;
        sp["rounds"] = s.rounds;
        sp["model_rounds"] = s.model_rounds;
        sp["lookup_rounds"] = s.lookup_rounds;
        sp["model_proposed"] = s.model_proposed;
        sp["model_accepted"] = s.model_accepted;
        sp["lookup_proposed"] = s.lookup_proposed;
        sp["lookup_accepted"] = s.lookup_accepted;
        sp["draft_steps"] = s.draft_steps;
        sp["draft_prefill_s"] = s.draft_prefill_s;
        sp["draft_s"] = s.draft_s;
        sp["target_s"] = s.target_s;
        sp["steps_by_width"] = s.steps_by_width;
        sp["seconds_by_width"] = s.seconds_by_width;
        d["speculative"] = sp;
    }
    return d;
}

// The engine calls this from the thread running generate() with the GIL released; it takes the GIL per token.
// `fn` must outlive the generation (the binding's argument does). None gives an empty callback.
inline TokenCallback token_callback(const py::object& fn) {
    if (fn.is_none()) return {};
    return [&fn](int32_t t) {
        py::gil_scoped_acquire gil;
        return fn(t).cast<bool>();
    };
}

}  // namespace py_results
}  // namespace edgeai
