"""`edgeai bench MODEL...`: speed and memory of models (and peers), each run in its own process."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _ints(s):
    return tuple(int(x) for x in str(s).split(",") if x.strip())


def _peer_spec(args) -> dict:
    from ..bench import apply_peer_overrides

    spec = {}
    if args.peer_config:
        p = Path(args.peer_config)
        spec = json.loads(p.read_text() if p.is_file() else args.peer_config)
    elif args.peers:
        from ..bench import default_peer_config

        spec = default_peer_config()
    spec = apply_peer_overrides(spec, args.peer_model, args.peer_python)
    if args.only_peers:
        spec = {k: v for k, v in spec.items() if k in args.only_peers.split(",")}
    return spec


def _metrics_view(res: dict) -> dict:
    """{label: {metric: {median, min, max, n}}} of a bench result (its configs are a list)."""
    return {c["label"]: c.get("metrics", {}) for c in res.get("configs", [])}


def _bench(args) -> int:
    from ..bench import format_table, retrieval_section, run_bench
    from ..evaluate.report import compare, format_compare, load_json, save_json

    models = args.models or ["smollm2-135m-q4"]
    peers = _peer_spec(args) if (args.peers or args.peer_config or args.peer_model) else {}
    res = run_bench(models, peers=peers, reps=args.reps, threads=args.threads, new=args.new,
                    lengths=_ints(args.prompt_lengths), contexts=_ints(args.contexts), text=args.text,
                    max_busy=args.max_busy, max_reruns=args.max_reruns, quiet_wait_s=args.quiet_wait,
                    bw_mb=args.bw_mb, timeout=args.timeout)
    if args.retrieval:
        res["retrieval"] = retrieval_section(n=args.retrieval_n, dim=args.retrieval_dim, threads=args.threads)
    print(format_table(res))
    if res.get("retrieval"):
        from ..bench import format_retrieval

        print(format_retrieval(res["retrieval"]))
    if args.compare:
        print(f"\ncompared with {args.compare} (medians):")
        print(format_compare(compare(_metrics_view(load_json(args.compare)), _metrics_view(res),
                                     keys=(".median",))))
    if args.json:
        save_json(res, args.json)
        print(f"saved {args.json}")
    if args.plot:
        try:
            from ..bench.plot import plot
        except ImportError as exc:  # pragma: no cover
            print(f"no chart: {exc}", file=sys.stderr)
        else:
            try:
                plot(res, args.plot)
                print(f"chart {args.plot}")
            except ImportError:
                print("no chart: matplotlib is not installed (pip install matplotlib, or edgeai[bench])",
                      file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark load time, TTFT, decode speed and memory (optionally vs peers)")
    p.add_argument("models", nargs="*", help="model folders or names (default: smollm2-135m-q4); e.g. "
                                             "smollm2-135m-q4 smollm2-135m-q8")
    p.add_argument("--reps", type=int, default=3, help="runs per configuration, interleaved (default 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new", type=int, default=128, help="new tokens per decode measurement")
    p.add_argument("--prompt-lengths", default="32,128,512,1024", help="TTFT prompt lengths (token ids)")
    p.add_argument("--contexts", default="32,512", help="prompt lengths before the decode measurements")
    p.add_argument("--text", default="/usr/share/common-licenses/GPL-3", help="text the prompts are cut from")
    p.add_argument("--max-busy", type=float, default=0.25,
                   help="a run during which other processes used more cores than this is re-run")
    p.add_argument("--max-reruns", type=int, default=None, help="re-runs per configuration (default: --reps)")
    p.add_argument("--quiet-wait", type=float, default=20.0, help="seconds to wait for a quiet machine per run")
    p.add_argument("--bw-mb", type=int, default=1024, help="array size for the read-bandwidth measurement")
    p.add_argument("--timeout", type=int, default=900, help="seconds per child run")
    p.add_argument("--peers", action="store_true",
                   help="also run llama.cpp, ONNX Runtime GenAI and optimum (see bench/peers/setup_peers.sh)")
    p.add_argument("--peer-config", metavar="JSON", help='file or JSON: {"genai": {"python": ..., "model": ...}, ...}'
                   " (default: $EDGEAI_PEERS/peer_models.json, /work/peers/peer_models.json)")
    p.add_argument("--peer-model", action="append", metavar="KIND=PATH", help="model of one peer (repeatable)")
    p.add_argument("--peer-python", action="append", metavar="[KIND=]PYTHON",
                   help="python executable of one peer, or of all peers (repeatable)")
    p.add_argument("--only-peers", metavar="KINDS", help="comma list: llamacpp,genai,optimum")
    p.add_argument("--retrieval", action="store_true", help="add the vector-index section (synthetic data)")
    p.add_argument("--retrieval-n", type=int, default=50000)
    p.add_argument("--retrieval-dim", type=int, default=128)
    p.add_argument("--json", metavar="OUT.json", help="save every run and the summary")
    p.add_argument("--plot", metavar="OUT.png", help="chart (needs matplotlib)")
    p.add_argument("--compare", metavar="OLD.json", help="compare medians with a saved --json")
    p.set_defaults(func=_bench)
