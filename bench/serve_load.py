"""Load on `edgeai serve`: 1, 4 and 8 concurrent streaming clients, and llama.cpp's server on the same load.

Each client sends --requests streaming chat requests one after another (greedy, --max-tokens each, a
different question per request) through the official `openai` client. Per level: aggregate tokens/s
(completion tokens of all requests / wall time of the level), p50/p95 time to first token, p50/p95 gap
between streamed tokens, and errors. Loopback only; bounded in requests (clients x requests) and in time
(--time-limit per level: no new request starts after it). A first row runs the same requests on the engine
alone (edgeai.LLM in a child process, no HTTP), as the baseline for what the server costs.

The peer is llama-cpp-python's `llama_cpp.server` on the GGUF file the edgeai model was converted from,
started from --peer-python where that interpreter has llama_cpp (bench/peers/setup_peers.sh builds it);
it is skipped otherwise. Servers run one at a time; the levels alternate which server goes first.

    python bench/serve_load.py [--model qwen2.5-coder-0.5b] [--gguf FILE] [--clients 1 4 8] [--requests 4]
                               [--max-tokens 64] [--threads 2] [--batch 4] [--json OUT]

--batch is `edgeai serve --batch` (rows decoded together, continuous batching; 1 = one at a time). With a
model folder, name the GGUF it came from, e.g.
    python bench/serve_load.py --model /work/models/q05-q4 \
        --gguf /work/dl/gguf/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

QUESTIONS = ["What is the capital of France?", "Name three primary colours.", "What does a compiler do?",
             "Why is the sky blue?", "Give me a tip for learning Python.", "What is a prime number?",
             "How many days are in a leap year?", "What is photosynthesis?", "Explain what an API is.",
             "What is the boiling point of water?", "Who wrote Hamlet?", "What is a list in Python?"]
MAX_CLIENTS, MAX_REQUESTS = 16, 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


class Server:
    def __init__(self, name, cmd, url=None, env=None):
        self.name = name
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env=dict(os.environ, **(env or {})))
        if url is None:  # edgeai serve --port 0 announces where it listens
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"{name} did not start")
            url = json.loads(line)["url"]
        self.url = url
        import openai
        self.client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=300)
        t0 = time.time()
        while True:
            try:
                self.model = self.client.models.list().data[0].id
                break
            except Exception:  # noqa: BLE001 - still loading
                if self.p.poll() is not None or time.time() - t0 > 300:
                    raise RuntimeError(f"{name} did not come up")
                time.sleep(0.5)

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()


def one_request(srv: Server, question: str, max_tokens: int, logit_bias=None) -> dict:
    t0 = time.perf_counter()
    stamps, usage = [], None
    stream = srv.client.chat.completions.create(
        model=srv.model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True}, **({"logit_bias": logit_bias} if logit_bias else {}))
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    tokens = usage.completion_tokens if usage else len(stamps)
    # per-token latency: the gaps between streamed pieces (a piece is one token, or the few tokens of one
    # multi-byte character; drafted tokens confirmed in one step arrive together, gap ~0)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"ttft": stamps[0] - t0 if stamps else None, "gaps": gaps, "tokens": tokens,
            "seconds": time.perf_counter() - t0}


def run_level(srv: Server, clients: int, requests: int, max_tokens: int, time_limit: float, logit_bias=None) -> dict:
    results, errors, lock = [], [], threading.Lock()
    deadline = time.perf_counter() + time_limit

    def client(c):
        for r in range(requests):
            if time.perf_counter() > deadline:
                return
            q = QUESTIONS[(c * requests + r) % len(QUESTIONS)]
            try:
                out = one_request(srv, q, max_tokens, logit_bias)
            except Exception as exc:  # noqa: BLE001 - counted, the load goes on
                with lock:
                    errors.append(repr(exc)[:200])
                continue
            with lock:
                results.append(out)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in results)
    return {"server": srv.name, "clients": clients, "requests": len(results), "errors": len(errors),
            "error_samples": errors[:3], "tokens": tokens, "wall_s": round(wall, 3),
            "tok_per_s": round(tokens / wall, 2) if wall else 0.0,
            "ttft_p50_ms": round(1000 * _pct(ttft, 0.5), 1) if ttft else None,
            "ttft_p95_ms": round(1000 * _pct(ttft, 0.95), 1) if ttft else None,
            "token_p50_ms": round(1000 * _pct(gaps, 0.5), 2) if gaps else None,
            "token_p95_ms": round(1000 * _pct(gaps, 0.95), 2) if gaps else None}


def direct_baseline(model: str, threads: int, requests: int, max_tokens: int, logit_bias=None) -> dict:
    """The engine alone, no server: the same requests one after another through edgeai.LLM.stream, in a
    child process (so its memory and threads are gone before a server starts)."""
    code = f"""
import json, sys, time, edgeai
qs = {QUESTIONS!r}
llm = edgeai.LLM({model!r}, threads={threads})
llm.chat([{{"role": "user", "content": qs[0]}}], max_new_tokens=4)
tokens, ttft, gaps, t0 = 0, [], [], time.perf_counter()
for i in range({requests}):
    s, stamps = time.perf_counter(), []
    for piece in llm.chat([{{"role": "user", "content": qs[i % len(qs)]}}], stream=True, max_new_tokens={max_tokens},
                          logit_bias={ {int(k): float(v) for k, v in (logit_bias or {}).items()} !r}):
        stamps.append(time.perf_counter())
    tokens += len(llm.last_generation.token_ids)
    ttft.append(stamps[0] - s)
    gaps += [b - a for a, b in zip(stamps, stamps[1:])]
print(json.dumps({{"tokens": tokens, "wall": time.perf_counter() - t0, "ttft": ttft, "gaps": gaps}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    return {"server": "engine alone", "clients": 1, "requests": requests, "errors": 0, "error_samples": [],
            "tokens": out["tokens"], "wall_s": round(out["wall"], 3), "tok_per_s": round(out["tokens"] / out["wall"], 2),
            "ttft_p50_ms": round(1000 * _pct(out["ttft"], 0.5), 1), "ttft_p95_ms": round(1000 * _pct(out["ttft"], 0.95), 1),
            "token_p50_ms": round(1000 * _pct(out["gaps"], 0.5), 2),
            "token_p95_ms": round(1000 * _pct(out["gaps"], 0.95), 2)}


def peer_available(python) -> bool:
    if not python or not os.path.exists(python):
        return False
    return subprocess.run([python, "-c", "import llama_cpp.server.app"], capture_output=True).returncode == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from edgeai.recipes import DEFAULT_LLM

    ap.add_argument("--model", default=DEFAULT_LLM, help="edgeai model name or folder")
    ap.add_argument("--gguf", default=None, help="GGUF for the llama.cpp server (default: the model's source)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--requests", type=int, default=4, help="requests per client per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="edgeai serve --batch (rows decoded together)")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per level before no new request")
    ap.add_argument("--peer-python", default="/work/peers/venv/bin/python")
    ap.add_argument("--ban-eos", action="store_true",
                    help="every request runs to --max-tokens (logit_bias -100 on the model's end tokens, for both "
                         "servers): short answers otherwise make TTFT dominate the tokens/s")
    ap.add_argument("--ab-prefix-cache", action="store_true",
                    help="also run edgeai serve --prompt-cache-mb 0 at each level (what the prefix cache buys)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if max(args.clients) > MAX_CLIENTS or max(args.clients) * args.requests > MAX_REQUESTS or min(args.clients) < 1:
        ap.error(f"at most {MAX_CLIENTS} clients and {MAX_REQUESTS} requests per level")

    def edgeai(name, *extra):
        return lambda: Server(name, [sys.executable, "-m", "edgeai.cli", "serve", "--model", args.model, "--port",
                                     "0", "--no-log", "--max-queue", "64", "--threads", str(args.threads),
                                     "--batch", str(args.batch), *extra])

    servers = {"edgeai": edgeai("edgeai")}
    if args.ab_prefix_cache:  # the same server without its prefix cache, interleaved with it
        servers["edgeai-nocache"] = edgeai("edgeai-nocache", "--prompt-cache-mb", "0")
    gguf = args.gguf
    if gguf is None:
        from edgeai.pull import source_dir
        from edgeai.recipes import get_recipe
        try:
            gguf = str(source_dir(args.model) / os.path.basename(get_recipe(args.model).source["file"]))
        except (ValueError, KeyError):
            gguf = None
    if peer_available(args.peer_python) and gguf and os.path.exists(gguf):
        port = _free_port()
        servers["llama.cpp"] = lambda: Server(
            "llama.cpp", [args.peer_python, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                          "--port", str(port), "--n_threads", str(args.threads), "--n_ctx", "2048",
                          "--model_alias", "peer", "--interrupt_requests", "False"],
            url=f"http://127.0.0.1:{port}/v1")  # by default a new request interrupts the one streaming
    else:
        print(f"llama.cpp server: not run (needs llama_cpp in {args.peer_python} and the GGUF {gguf})",
              file=sys.stderr)

    bias = None
    if args.ban_eos:
        from edgeai.pull import resolve_model
        from edgeai.tokenizer import Tokenizer
        bias = {str(t): -100 for t in Tokenizer.from_folder(resolve_model(args.model)).eos_token_ids}
    rows = [direct_baseline(args.model, args.threads, args.requests, args.max_tokens, bias)]
    print(json.dumps(rows[-1]), file=sys.stderr)
    for i, clients in enumerate(args.clients):
        order = list(servers) if i % 2 == 0 else list(reversed(servers))
        for name in order:
            srv = servers[name]()
            try:
                one_request(srv, QUESTIONS[0], 4)  # warm-up: first-request costs out of the figures
                rows.append(run_level(srv, clients, args.requests, args.max_tokens, args.time_limit, bias))
            finally:
                srv.stop()
            print(json.dumps(rows[-1]), file=sys.stderr)

    print(f"{'server':12} {'clients':>7} {'req':>4} {'err':>4} {'tok/s':>8} {'TTFT p50':>9} {'p95':>8} "
          f"{'tok p50':>8} {'p95':>7}  (ms)")
    for r in rows:
        print(f"{r['server']:12} {r['clients']:>7} {r['requests']:>4} {r['errors']:>4} {r['tok_per_s']:>8.1f} "
              f"{r['ttft_p50_ms'] or 0:>9.0f} {r['ttft_p95_ms'] or 0:>8.0f} {r['token_p50_ms'] or 0:>8.1f} "
              f"{r['token_p95_ms'] or 0:>7.1f}")
    alone = rows[0]["tok_per_s"]
    for r in rows[1:]:
        if r["clients"] == 1 and alone:
            print(f"{r['server']}: 1 client gets x{r['tok_per_s'] / alone:.2f} the engine-alone tokens/s")
    for name in servers:
        base = next((r for r in rows if r["server"] == name and r["clients"] == 1), None)
        for r in rows:
            if base and r["server"] == name and r["clients"] > 1 and base["tok_per_s"]:
                print(f"{name}: {r['clients']} clients give x{r['tok_per_s'] / base['tok_per_s']:.2f} "
                      f"the aggregate tokens/s of 1 client")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
