"""`edgeai eval perplexity|fidelity|golden|retrieval|rag`: model quality checks, each printing a summary and
optionally saving JSON (`--json`), and comparing against a saved JSON (`--compare`)."""
from __future__ import annotations

import sys
from pathlib import Path


def _read_text(path) -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace")


def _finish(args, result, summary_lines, compare_keys=None):
    from ..evaluate.report import compare, format_compare, load_json, save_json

    print("\n".join(summary_lines))
    if getattr(args, "compare", None):
        print(f"\ncompared with {args.compare}:")
        print(format_compare(compare(load_json(args.compare), result, rel_tol=1e-9, keys=compare_keys)))
    if args.json:
        save_json(result, args.json)
        print(f"saved {args.json}")
    return 0


def _perplexity(args) -> int:
    from ..evaluate.fidelity import perplexity_eval

    r = perplexity_eval(args.model, text=_read_text(args.text), max_tokens=args.max_tokens, window=args.window,
                        stride=args.stride, threads=args.threads, build=not args.no_build)
    lines = [f"perplexity {r['ppl']:.4f} over {r['tokens_scored']} scored tokens "
             f"({r['tokens_in_text']} tokens of {args.text}, window {r['window']}"
             + (f", stride {r['stride']}" if r.get("stride") else "") + f"; {r['seconds']:.1f}s)",
             f"graph: {r['scored_graph']}"
             + ("" if r["all_logits_graph"] else " (last-position logits: one run per token)")]
    return _finish(args, r, lines, compare_keys=("ppl", "nll"))


def _fidelity(args) -> int:
    from ..evaluate.fidelity import fidelity

    text = _read_text(args.text) if args.text else None
    r = fidelity(args.reference, args.candidate, text=text, max_tokens=args.max_tokens, topk=args.topk,
                 threads=args.threads, save_reference=args.save_reference, build=not args.no_build)
    k = r["kl"]
    ref = r["reference"].get("reference_file") or r["reference"]["model"]
    lines = [f"reference {ref}  vs  candidate {args.candidate}",
             f"tokens scored        {r['tokens_scored']}",
             f"KL(ref||cand) nats   mean {k['mean']:.5f}  median {k['median']:.5f}  p95 {k['p95']:.5f}  "
             f"p99 {k['p99']:.5f}  max {k['max']:.5f}",
             f"  ({r['kl_method']}; reference top-k mass {r['ref_topk_mass']:.3f})",
             f"top-1 agreement      {r['top1_agreement'] * 100:.2f}%",
             f"perplexity           reference {r['ppl_reference']:.4f}  candidate {r['ppl_candidate']:.4f}  "
             f"ratio {r['ppl_ratio']:.4f}"]
    if args.save_reference:
        lines.append(f"reference saved to {args.save_reference} (reuse: --reference {args.save_reference})")
    return _finish(args, r, lines, compare_keys=("kl", "top1", "ppl"))


def _golden(args) -> int:
    from ..evaluate.golden import SMOLLM2_GOLDEN, compare_golden, format_report, golden
    from ..evaluate.report import load_json, save_json

    r = golden(args.file or SMOLLM2_GOLDEN, model=args.model, threads=args.threads)
    cmp = compare_golden(load_json(args.compare), r) if args.compare else None
    if cmp is not None:
        r["comparison"] = {"against": args.compare, **cmp}
    print(format_report(r, cmp))
    if args.json:
        save_json(r, args.json)
        print(f"saved {args.json}")
    return 1 if (cmp and cmp["regressions"]) or (args.strict and r["failed"]) else 0


def _retrieval(args) -> int:
    from ..evaluate.retrieval_eval import format_report, retrieval_eval

    r = retrieval_eval(args.index, args.questions, ks=tuple(args.k), embedder=args.embedder, ef=args.ef)
    return _finish(args, r, [format_report(r)], compare_keys=("recall", "mrr"))


def _rag(args) -> int:
    from ..evaluate.rag_eval import PYDOC_CASES, format_report, load_cases, rag_eval
    from ..retrieval.rag import penalty_kwargs
    from .retrieval import DEFAULT_LLM, _load_llm, _open, ensure_documents

    cases = load_cases(args.questions or PYDOC_CASES)
    rag, folder = _open(args)
    ensure_documents(rag, folder, args.docs)
    if not args.retrieval_only or rag.expand:
        rag.llm, why = _load_llm(args.llm or DEFAULT_LLM)
        if rag.llm is None and not args.retrieval_only:
            raise SystemExit(f"edgeai eval rag: {why} (--retrieval-only skips the answers)")
        if rag.llm is None:  # as `edgeai ask` without its LLM: retrieval without the code sketch
            print(f"edgeai eval rag: {why}; retrieving without the LLM's code sketch", file=sys.stderr)
    r = rag_eval(cases, rag, k=args.k, answer=not args.retrieval_only, max_new_tokens=args.max_new_tokens,
                 progress=True, **({} if args.retrieval_only else
                                   penalty_kwargs(rag.llm, args.repetition_penalty)))
    r["meta"].update(questions=str(args.questions or PYDOC_CASES), index=str(folder),
                     llm=None if rag.llm is None else str(args.llm or DEFAULT_LLM))
    return _finish(args, r, [format_report(r)], compare_keys=("retrieval", "answers"))


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate model quality: perplexity, fidelity, golden answers, retrieval, "
                                    "RAG answers")
    ev = p.add_subparsers(dest="eval_command", metavar="WHAT")

    def common(q, compare=True):
        q.add_argument("--json", metavar="OUT.json", help="save the result as JSON")
        if compare:
            q.add_argument("--compare", metavar="OLD.json", help="compare with a saved result")
        q.add_argument("--threads", type=int, default=None)

    q = ev.add_parser("perplexity", help="perplexity of a model on a text file")
    q.add_argument("model", help="model folder or name (e.g. smollm2-135m-q4)")
    q.add_argument("--text", required=True, help="a UTF-8 text file (scored raw, no BOS)")
    q.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens")
    q.add_argument("--window", type=int, default=None, help="context tokens per run (default: all)")
    q.add_argument("--stride", type=int, default=None, help="window advance (default: window/2)")
    q.add_argument("--no-build", action="store_true",
                   help="never build an all-logits twin (a last-position graph then runs one token per call)")
    common(q)
    q.set_defaults(func=_perplexity)

    q = ev.add_parser("fidelity", help="KL, top-1 agreement and perplexity ratio of a candidate vs a reference")
    q.add_argument("--reference", required=True, help="model folder/name, or a saved reference .npz")
    q.add_argument("--candidate", required=True, help="model folder or name")
    q.add_argument("--text", help="UTF-8 text file (not needed with a saved reference)")
    q.add_argument("--max-tokens", type=int, default=2048)
    q.add_argument("--topk", type=int, default=256, help="reference log-probs kept per position (plus the rest)")
    q.add_argument("--save-reference", metavar="REF.npz", help="save the reference for reuse")
    q.add_argument("--no-build", action="store_true", help="never build all-logits twins")
    common(q)
    q.set_defaults(func=_fidelity)

    q = ev.add_parser("golden", help="greedy answers to fixed prompts checked by exact/regex/contains")
    q.add_argument("file", nargs="?", help="cases .jsonl (default: the shipped SmolLM2 set)")
    q.add_argument("--model", default="smollm2-135m", help="model folder or name")
    q.add_argument("--strict", action="store_true", help="exit status 1 when any case fails")
    common(q)
    q.set_defaults(func=_golden)

    q = ev.add_parser("retrieval", help="recall@k and MRR of a vector index on questions with known sources")
    q.add_argument("--index", required=True, help="index folder (edgeai index / RAG store)")
    q.add_argument("--questions", required=True,
                   help='JSONL: {"question": ..., "source": "file" or "sources": [...]}')
    q.add_argument("-k", type=int, nargs="+", default=[1, 5, 10])
    q.add_argument("--embedder", default=None, help="embedding model (default: the one the index records)")
    q.add_argument("--ef", type=int, default=None, help="HNSW ef_search")
    common(q)
    q.set_defaults(func=_retrieval)

    q = ev.add_parser("rag", help="retrieval recall/MRR, answer correctness, citation precision, refusals and "
                                  "latency of `ask` on questions with known answers")
    q.add_argument("questions", nargs="?", help="cases .jsonl (default: the shipped set over the Python docs)")
    q.add_argument("--index", type=Path, default=None, help="index folder (default: <cache>/index/default)")
    q.add_argument("--docs", nargs="*", default=None, help="index these files/folders first")
    q.add_argument("--model", default=None, help="embedding model name or folder (default: minilm-l6)")
    q.add_argument("--llm", default=None, help="language model name or folder (default: as `edgeai ask`)")
    q.add_argument("--mode", choices=("hybrid", "dense", "lexical"), default="hybrid")
    q.add_argument("--min-score", type=float, default=None, help="refusal floor (default: as `edgeai ask`)")
    q.add_argument("-k", type=int, default=3, help="sources given to the model (default 3, as `edgeai ask`)")
    q.add_argument("--max-new-tokens", type=int, default=384)
    q.add_argument("--retrieval-only", action="store_true",
                   help="retrieval metrics only (the LLM still writes each question's code sketch unless --no-expand)")
    q.add_argument("--no-expand", action="store_true", help="as `edgeai ask --no-expand`")
    q.add_argument("--repetition-penalty", type=float, default=None,
                   help="as `edgeai ask` (default: measured per model)")
    q.add_argument("--source-tokens", type=int, default=None,
                   help="cut each source to its lines most about the question within N tokens (default: whole)")
    common(q)
    q.set_defaults(func=_rag)

    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
