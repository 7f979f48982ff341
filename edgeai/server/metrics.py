"""Prometheus text exposition (format 0.0.4) of the server's counters, gauges and histograms.

A few dozen lines instead of a prometheus_client dependency: the server needs counters and histograms
with labels, rendered on GET /metrics, nothing else.
"""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
SPEED_BUCKETS = (1, 2, 5, 10, 20, 40, 80, 160, 320, 640, 1280)


def _labels(pairs) -> str:
    if not pairs:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, esc)) + "}"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._counters = defaultdict(float)   # (name, labels) -> value
        self._gauges = {}
        self._hists = {}                      # (name, labels) -> [bucket counts..., sum, count]
        self._help = {}
        self._buckets = {}

    def describe(self, name: str, kind: str, help_text: str, buckets=None) -> None:
        self._help[name] = (kind, help_text)
        if buckets is not None:
            self._buckets[name] = tuple(buckets)

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        with self._lock:
            self._counters[(name, tuple(sorted(labels.items())))] += value

    def set(self, name: str, value: float, **labels) -> None:
        with self._lock:
            self._gauges[(name, tuple(sorted(labels.items())))] = value

    def observe(self, name: str, value: float, **labels) -> None:
        buckets = self._buckets[name]
        with self._lock:
            h = self._hists.setdefault((name, tuple(sorted(labels.items()))), [0] * (len(buckets) + 2))
            i = bisect.bisect_left(buckets, value)  # first bucket whose bound is >= value
            if i < len(buckets):
                h[i] += 1
            h[-2] += value
            h[-1] += 1

    def render(self) -> str:
        out = []
        with self._lock:
            series = defaultdict(list)
            for (name, labels), v in list(self._counters.items()) + list(self._gauges.items()):
                series[name].append((labels, v))
            for (name, labels), h in self._hists.items():
                series[name].append((labels, h))
            for name in sorted(set(self._help) | set(series)):
                kind, help_text = self._help.get(name, ("untyped", ""))
                out.append(f"# HELP {name} {help_text}")
                out.append(f"# TYPE {name} {kind}")
                for labels, v in sorted(series.get(name, []), key=lambda s: s[0]):
                    if kind != "histogram":
                        out.append(f"{name}{_labels(labels)} {v:g}")
                        continue
                    running = 0
                    for bound, n in zip(self._buckets[name], v):
                        running += n
                        out.append(f"{name}_bucket{_labels(labels + (('le', f'{bound:g}'),))} {running}")
                    out.append(f"{name}_bucket{_labels(labels + (('le', '+Inf'),))} {v[-1]}")
                    out.append(f"{name}_sum{_labels(labels)} {v[-2]:g}")
                    out.append(f"{name}_count{_labels(labels)} {v[-1]}")
        return "\n".join(out) + "\n"


def server_metrics() -> Metrics:
    m = Metrics()
    m.describe("edgeai_requests_total", "counter", "Requests answered, by endpoint, model and HTTP status.")
    m.describe("edgeai_prompt_tokens_total", "counter", "Prompt tokens processed, by model.")
    m.describe("edgeai_completion_tokens_total", "counter", "Tokens generated, by model.")
    m.describe("edgeai_cache_hits_total", "counter", "Responses served from the output cache, by model.")
    m.describe("edgeai_ttft_seconds", "histogram", "Time from request arrival to the first token, queue wait "
                                                    "included.", TTFT_BUCKETS)
    m.describe("edgeai_decode_tokens_per_second", "histogram", "Decode speed of each generation (tokens after "
                                                                "the first / decode time).", SPEED_BUCKETS)
    m.describe("edgeai_queue_depth", "gauge", "Generations waiting for the engine.")
    m.describe("edgeai_requests_in_flight", "gauge", "Requests being answered.")
    m.describe("edgeai_batch_decode_steps_total", "counter", "Decode steps of the batch engine, by model.")
    m.describe("edgeai_batch_decode_rows_total", "counter", "Rows those steps decoded (rows / steps: mean batch).")
    m.describe("edgeai_batch_prefill_chunks_total", "counter", "Prompt chunks the batch engine prefilled.")
    m.describe("edgeai_batch_prompt_tokens_total", "counter", "Prompt tokens the batch engine admitted.")
    m.describe("edgeai_batch_reused_prompt_tokens_total", "counter",
               "Prompt tokens whose keys/values came from the batch engine's prefix cache.")
    m.describe("edgeai_batch_rows_running", "gauge", "Sequences holding a batch row now.")
    return m
