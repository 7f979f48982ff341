"""`edgeai index PATH...` and `edgeai ask "question"`: local retrieval from the command line."""
from __future__ import annotations

import sys
from pathlib import Path

from edgeai.recipes import DEFAULT_LLM


def _default_index() -> Path:
    from edgeai.paths import cache_dir
    return cache_dir() / "index" / "default"


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="index documents (.txt .md .rst .html, folders) for `edgeai ask`")
    p.add_argument("paths", nargs="+", help="files or folders")
    p.add_argument("--index", type=Path, default=None, help="index folder (default: <cache>/index/default)")
    p.add_argument("--model", default=None, help="embedding model name or folder (default: minilm-l6)")
    p.set_defaults(func=cmd_index)

    a = sub.add_parser("ask", help="answer a question from indexed documents")
    a.add_argument("question")
    a.add_argument("--index", type=Path, default=None, help="index folder (default: <cache>/index/default)")
    a.add_argument("--docs", action="append", default=None, metavar="PATH",
                   help="index this file or folder first (repeatable: --docs a.md --docs notes/)")
    a.add_argument("--model", default=None, help="embedding model name or folder (default: minilm-l6)")
    a.add_argument("--llm", default=None, help=f"language model name or folder (default: {DEFAULT_LLM})")
    a.add_argument("--draft", default=None, metavar="NAME_OR_FOLDER",
                   help="draft model for speculative decoding (a smaller model with the LLM's tokenizer)")
    a.add_argument("--mode", choices=("hybrid", "dense", "lexical"), default="hybrid",
                   help="retrieval: embeddings and keywords fused (default), or one of them")
    a.add_argument("--min-score", type=float, default=None,
                   help="answer 'the documents do not answer this' without the LLM when the best source's "
                        "cosine similarity is below this (default: measured for the default embedder)")
    a.add_argument("-k", type=int, default=3, help="number of sources to retrieve (small models do best with few)")
    a.add_argument("--max-new-tokens", type=int, default=384)
    a.add_argument("--repetition-penalty", type=float, default=None,
                   help="discourages the loops small models fall into under greedy decoding (1 = off; default: "
                        "measured per model, 1.1 for SmolLM2, 1.0 for Qwen2.5)")
    a.add_argument("--penalty-last-n", type=int, default=64,
                   help="the penalty looks at the last N tokens only (0 = all). Over the whole prompt it also "
                        "penalizes the retrieved sources' words, and answers drift away from the sources")
    a.add_argument("--source-tokens", type=int, default=None,
                   help="cut each source to its lines most about the question within N tokens: a shorter prompt "
                        "and a faster first token, at some cost in correctness (default: whole sources)")
    a.add_argument("--no-expand", action="store_true",
                   help="don't ask the LLM for a code sketch of the question to search for the APIs it "
                        "names (a faster first token, lower recall: docs/retrieval.md)")
    a.add_argument("--sources-only", action="store_true", help="print the retrieved sources, no LLM")
    a.set_defaults(func=cmd_ask)


def _open(args, llm=None):
    from edgeai.retrieval.embedder import DEFAULT_MODEL, Embedder
    from edgeai.retrieval.rag import MIN_SCORE, RAG
    folder = args.index or _default_index()
    floor = getattr(args, "min_score", None)
    rag = RAG(llm, Embedder(args.model or DEFAULT_MODEL), folder, mode=getattr(args, "mode", None) or "hybrid",
              min_score=MIN_SCORE if floor is None else floor, source_tokens=getattr(args, "source_tokens", None),
              expand=not getattr(args, "no_expand", False))
    return rag, folder


def ensure_documents(rag, folder, docs=None) -> None:
    """Index `docs` if given; with nothing indexed yet, index the Python standard library's docs."""
    if docs:
        _print_stats(rag.add(docs, show_progress=True), folder)
    elif rag.store.count() == 0:
        from edgeai.retrieval.pydoc_corpus import build_corpus
        corpus = build_corpus()
        print(f"nothing indexed yet: indexing the Python standard library docs ({corpus})", file=sys.stderr)
        _print_stats(rag.add([corpus], show_progress=True), folder)


def _print_stats(stats, folder) -> None:
    print(f"indexed {stats['added']} new, {stats['updated']} changed, {stats['unchanged']} unchanged files "
          f"({stats['chunks']} chunks) -> {folder}", file=sys.stderr)


def cmd_index(args) -> int:
    rag, folder = _open(args)
    _print_stats(rag.add(args.paths, show_progress=True), folder)
    return 0


def _load_llm(name, draft=None):
    try:
        from edgeai import LLM
    except (ImportError, AttributeError) as exc:
        return None, f"the language model runtime is not available ({exc})"
    try:
        return LLM(name, draft=draft), None
    except Exception as exc:  # noqa: BLE001 - still show the sources, say why there is no answer
        return None, f"could not load language model {name!r}: {exc}"


def cmd_ask(args) -> int:
    from edgeai.retrieval.rag import STORE_FILE, penalty_kwargs

    if args.index is not None and not args.docs and not (args.index / STORE_FILE).is_file():
        # A mistyped --index must not quietly become a new index of the standard library docs.
        raise FileNotFoundError(f"{args.index} is not an edgeai index (no {STORE_FILE}); build one with "
                                f"`edgeai index PATH... --index {args.index}`, or pass --docs PATH to index "
                                "files there first")
    rag, folder = _open(args)
    ensure_documents(rag, folder, args.docs)

    llm, why = (None, "--sources-only") if args.sources_only else _load_llm(args.llm or DEFAULT_LLM, args.draft)
    if llm is None:
        retrieved = rag.retrieve(args.question, k=args.k)
        print(f"No answer generated: {why}. Retrieved sources:")
        for n, (chunk, score) in enumerate(retrieved, 1):
            section = " > ".join(chunk["section"])
            print(f"\n[{n}] {chunk['path']}" + (f" | {section}" if section else "") + f"  (score {score:.3f})")
            print("    " + chunk["text"][:400].replace("\n", "\n    "))
        return 0 if args.sources_only else 1
    rag.llm = llm
    extra = penalty_kwargs(llm, args.repetition_penalty, args.penalty_last_n)
    answer = rag.ask(args.question, k=args.k, stream=True, max_new_tokens=args.max_new_tokens, **extra)
    for piece in answer:
        sys.stdout.write(piece)
        sys.stdout.flush()
    if answer.refused:
        print(f"\n\n(no indexed source is close enough to the question: best similarity below {rag.min_score}; "
              "--min-score changes this)")
        return 0
    cited = set(answer.citations)
    print("\n\nSources" + (" (the model cited none; the Source line above is edgeai's match):"
                             if answer.attributed else ":"))
    for n, path, section, score in answer.sources:
        print(f"  [{n}] {path}" + (f" | {section}" if section else "") + f"  ({score:.3f})"
              + ("" if n in cited or not cited else "  (not cited)"))
    if answer.invalid_citations:
        print("  note: the answer cites " + ", ".join(f"[{n}]" for n in answer.invalid_citations)
              + ", which is not among these sources")
    return 0
