"""`edgeai generate` and `edgeai chat`: text generation from the terminal, streamed as it is decoded."""
from __future__ import annotations

import sys

from ..recipes import DEFAULT_LLM


def _llm_args(p):
    p.add_argument("--model", default=DEFAULT_LLM, help=f"model folder or recipe name (default: {DEFAULT_LLM})")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--draft", default=None, metavar="NAME_OR_FOLDER",
                   help="draft model for speculative decoding (a smaller model with the same tokenizer)")


def _params(a) -> dict:
    return dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                min_p=a.min_p, repetition_penalty=a.repetition_penalty, seed=a.seed, stop=a.stop)


def _generate(a) -> int:
    from ..llm import LLM

    if not a.prompt:  # the API's check, before minutes of model loading
        raise ValueError("prompt is empty")
    with LLM(a.model, threads=a.threads, draft=a.draft) as llm:
        params = _params(a)
        if a.raw:
            pieces = llm.stream(a.prompt, **params)
        else:
            pieces = llm.chat([{"role": "user", "content": a.prompt}], stream=True, **params)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        g = llm.last_generation
        if a.verbose and g is not None:
            t = g.timings
            print(f"[{g.prompt_tokens} prompt tokens, {len(g.token_ids)} generated, finish={g.finish_reason}, "
                  f"TTFT {t['ttft_s'] * 1000:.0f} ms, {t['decode_tokens_per_s']:.1f} tok/s]", file=sys.stderr)
            s = t.get("speculative")
            if s:
                print(f"[draft: {s['model_accepted']}/{s['model_proposed']} accepted "
                      f"({s['model_acceptance']:.0%}), prompt lookup {s['lookup_accepted']}/{s['lookup_proposed']}, "
                      f"{s['target_steps']} target steps; draft {s['draft_s'] + s['draft_prefill_s']:.2f} s, "
                      f"target {s['target_s']:.2f} s]", file=sys.stderr)
    return 0


def _chat(a) -> int:
    from ..llm import LLM

    with LLM(a.model, threads=a.threads, draft=a.draft) as llm:
        messages = [{"role": "system", "content": a.system}] if a.system else []
        print("edgeai chat: empty line or Ctrl-D to quit; Ctrl-C stops an answer.", file=sys.stderr)
        while True:
            try:
                user = input("> ")
            except EOFError:
                break
            if not user.strip():
                break
            messages.append({"role": "user", "content": user})
            reply = []
            try:
                for piece in llm.chat(messages, stream=True, **_params(a)):
                    reply.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                llm.cancel()
            sys.stdout.write("\n")
            messages.append({"role": "assistant", "content": "".join(reply)})
    return 0


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="answer a prompt (streams the answer)")
    g.add_argument("prompt")
    g.add_argument("--raw", action="store_true", help="continue the text as is, without the chat template")
    g.add_argument("-v", "--verbose", action="store_true", help="print timings to stderr")
    _llm_args(g)
    g.set_defaults(func=_generate)
    c = sub.add_parser("chat", help="interactive chat in the terminal (streams; keeps the conversation)")
    c.add_argument("--system", default=None, help="system prompt")
    _llm_args(c)
    c.set_defaults(func=_chat)
