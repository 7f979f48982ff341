"""Sequence-level distillation data: the teacher answers the prompts, and the student trains on its answers
(Kim & Rush 2016). Greedy answers from edgeai's own engine, one JSON line per answer in `answers.jsonl`.

Resumable: each line records which prompt it answers (its index and a digest of the messages); a rerun keeps
the lines that still match and answers the rest. A line cut short by a crash is dropped and re-answered.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from .data import Document

ANSWERS = "answers.jsonl"


def _digest(messages) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def _prompt(doc: Document) -> list:
    """The messages up to the last user turn: an existing assistant answer is what the teacher replaces."""
    msgs = list(doc.messages)
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs


def _read_answers(path: Path) -> dict:
    """{(index, digest): answer} from the lines that parse; the file is rewritten without a torn last line."""
    if not path.is_file():
        return {}
    good, out = [], {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            out[(int(rec["index"]), rec["prompt_sha"])] = str(rec["answer"])
            good.append(line)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(g + "\n" for g in good), encoding="utf-8")
    os.replace(tmp, path)
    return out


def teacher_answers(teacher_folder, docs: list, n: int, work_dir, max_new_tokens: int = 256,
                    threads: int | None = None, progress: bool = True) -> list:
    """`docs` with the first n chats answered by the teacher (greedy): prompts get an answer, and an existing
    last assistant turn is replaced by the teacher's. Other documents are returned unchanged."""
    chats = [i for i, d in enumerate(docs) if d.messages is not None and _prompt(d)][:n]
    if n > 0 and not chats:
        raise ValueError("--generate needs prompts: JSONL lines with \"prompt\" or \"messages\"")
    path = Path(work_dir) / ANSWERS
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _read_answers(path)
    todo = [i for i in chats if (i, _digest(_prompt(docs[i]))) not in done]
    if todo:
        from tqdm import tqdm

        from ..llm import LLM

        with LLM(str(teacher_folder), threads=threads) as llm, open(path, "a", encoding="utf-8") as f, \
                tqdm(total=len(chats), initial=len(chats) - len(todo), unit="answer", desc="teacher answers",
                     disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
            for i in todo:
                msgs = _prompt(docs[i])
                g = llm.chat(msgs, max_new_tokens=max_new_tokens, temperature=0.0)
                rec = {"index": i, "prompt_sha": _digest(msgs), "answer": g.text}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                done[(i, rec["prompt_sha"])] = g.text
                bar.update(1)
    out = list(docs)
    for i in chats:
        msgs = _prompt(docs[i])
        out[i] = Document(messages=msgs + [{"role": "assistant", "content": done[(i, _digest(msgs))]}],
                          source=docs[i].source + " (teacher answer)")
    return out
