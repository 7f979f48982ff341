"""`edgeai serve`: a local OpenAI-compatible HTTP server; `edgeai feedback export`: rated answers as JSONL.

Needs the server extra: pip install "edgeai[server]".
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..recipes import DEFAULT_LLM


def _default_log() -> Path:
    from ..paths import cache_dir
    return cache_dir() / "serve" / "requests.sqlite"


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API (pip install edgeai[server])")
    p.add_argument("--model", action="append", default=None, metavar="NAME_OR_FOLDER",
                   help="a catalogue name, a model folder, or ID=either (repeatable; default: smollm2-135m)")
    p.add_argument("--embedder", default=None, metavar="NAME_OR_FOLDER",
                   help="embedding model for /v1/embeddings (default with --index: minilm-l6)")
    p.add_argument("--index", type=Path, default=None, metavar="FOLDER",
                   help="document index (from `edgeai index --index FOLDER`) for POST /v1/ask")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="port (0: pick a free one and print it)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (also $EDGEAI_API_KEY)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without --api-key")
    p.add_argument("--log", type=Path, default=None, help="request log (SQLite; default <cache>/serve/requests.sqlite)")
    p.add_argument("--no-log", action="store_true", help="keep no request log (and no feedback)")
    p.add_argument("--log-text", action="store_true", help="store prompt and answer text in the request log")
    p.add_argument("--cache", type=int, default=0, metavar="ENTRIES",
                   help="exact-match output cache for deterministic requests, in entries (default 0: off)")
    p.add_argument("--batch", type=int, default=4, metavar="ROWS",
                   help="generations per model decoded together, sharing each forward step (continuous "
                        "batching; default 4). 1 runs one at a time")
    p.add_argument("--batch-invariant", action="store_true",
                   help="q4/q8 models: a result never depends on whether its request was decoded alone or with "
                        "others (a lone request then decodes as a two-row step; docs/server.md)")
    p.add_argument("--prompt-cache-mb", type=int, default=64, metavar="MB",
                   help="prefix cache per model: a prompt that starts like an earlier one (the same system "
                        "prompt, earlier chat turns) reuses those tokens' keys/values, bit-exactly "
                        "(default 64; 0: off)")
    p.add_argument("--max-queue", type=int, default=16, help="generations that may wait (more get 429)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take, queue wait included")
    p.add_argument("--max-body-kb", type=int, default=2048, help="largest request body accepted (413 beyond)")
    p.add_argument("--threads", type=int, default=None, help="compute threads per model")
    p.add_argument("--draft", default=None, metavar="NAME_OR_FOLDER",
                   help="draft model for speculative decoding of every --model (same tokenizer required)")
    p.add_argument("--context", type=int, default=None, help="context length (default: the model's, at most 4096)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="on SIGTERM, seconds in-flight requests get to finish before they are cancelled")
    p.set_defaults(func=cmd_serve)

    f = sub.add_parser("feedback", help="work with the feedback given to `edgeai serve` answers")
    fsub = f.add_subparsers(dest="feedback_command", metavar="SUBCOMMAND", required=True)
    e = fsub.add_parser("export", help="rated answers as JSONL: golden cases (edgeai eval golden) or chat data")
    e.add_argument("out", type=Path, help="output .jsonl file")
    e.add_argument("--min-rating", type=int, default=1, help="keep answers whose latest rating is >= this")
    e.add_argument("--format", choices=["golden", "chat"], default="golden",
                   help="golden: {messages, expect: {exact}}; chat: {messages + the answer} for distillation")
    e.add_argument("--log", type=Path, default=None, help="request log (default: the server's default)")
    e.set_defaults(func=cmd_feedback_export)


def _positive(name, v):
    if v is not None and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")


def cmd_serve(args) -> int:
    import os

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"edgeai: error: `edgeai serve` needs the server extra ({exc.name} is missing): "
              f"pip install 'edgeai[server]'", file=sys.stderr)
        return 1
    from ..server.app import EdgeServer, ServerConfig
    from ..server.registry import load_embedder, load_llms
    from ..server.run import check_exposure, serve

    api_key = args.api_key or os.environ.get("EDGEAI_API_KEY") or None
    check_exposure(args.host, api_key, args.insecure)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    for name in ("max_queue", "timeout", "max_body_kb", "shutdown_timeout"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    if not 1 <= args.batch <= 64:
        raise ValueError(f"--batch must be in [1, 64], got {args.batch}")
    if args.cache < 0:
        raise ValueError("--cache must be >= 0")
    if not 0 <= args.prompt_cache_mb <= 1 << 16:
        raise ValueError(f"--prompt-cache-mb must be in [0, 65536], got {args.prompt_cache_mb}")
    if args.no_log and args.log_text:
        raise ValueError("--log-text needs a request log: drop --no-log")
    llms = load_llms(args.model or [DEFAULT_LLM], threads=args.threads, context_length=args.context,
                     max_batch=args.batch, batch_invariant=args.batch_invariant, draft=args.draft,
                     prompt_cache_mb=args.prompt_cache_mb)
    embedders, rag, rag_model = {}, None, None
    if args.embedder or args.index:
        from ..retrieval.embedder import DEFAULT_MODEL
        emb = load_embedder(args.embedder or DEFAULT_MODEL, threads=args.threads)
        embedders[emb.id] = emb
        if args.index:
            from ..retrieval.rag import RAG
            if not args.index.is_dir():
                raise FileNotFoundError(f"--index {args.index} is not a folder: build it with "
                                        f"`edgeai index --index {args.index} DOCS...`")
            rag_model = next(iter(llms))
            rag = RAG(llms[rag_model].llm, emb.embedder, args.index)
            if rag.store.count() == 0:
                raise ValueError(f"--index {args.index} holds no documents: `edgeai index --index {args.index} DOCS...`")
    config = ServerConfig(api_key=api_key, max_body_bytes=args.max_body_kb << 10, max_queue=args.max_queue,
                          timeout_s=args.timeout, cache_entries=args.cache,
                          log_path=None if args.no_log else str(args.log or _default_log()), log_text=args.log_text)
    server = EdgeServer(llms, config, embedders, rag, rag_model)
    print(f"edgeai serve: {', '.join(list(llms) + list(embedders))}"
          + (f"; request log {config.log_path}" + (" (with text)" if args.log_text else "") if config.log_path
             else "; no request log"), file=sys.stderr)
    serve(server, args.host, args.port, shutdown_timeout=args.shutdown_timeout)
    return 0


def cmd_feedback_export(args) -> int:
    from ..server.requestlog import export_feedback

    r = export_feedback(args.log or _default_log(), args.out, args.min_rating, args.format)
    print(f"wrote {r['written']} of {r['rated']} answers rated >= {args.min_rating} to {args.out}"
          + (f" ({r['without_text']} logged without text: start the server with --log-text)"
             if r["without_text"] else ""))
    return 0
