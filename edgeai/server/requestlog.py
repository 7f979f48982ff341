"""The request log: one SQLite row per request, feedback rows pointing at them, export for evaluation.

SQLite in WAL mode with synchronous=NORMAL: a row is committed before its response ends (the last SSE
event or the JSON body), and a committed transaction survives the process being killed (WAL only loses
commits on power loss, which NORMAL accepts). Prompt and answer text are stored only with `--log-text`.

Export (`edgeai feedback export`): rated responses as JSONL, either golden cases for `edgeai eval golden`
({"id", "messages" | "prompt", "expect": {"exact": answer}, "max_new_tokens"}) or chat transcripts for
distillation / fine-tuning ({"messages": [..., {"role": "assistant", "content": answer}]}).
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Optional

from ..durable import fsync_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT,
    model_digest TEXT,
    status INTEGER NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    ttft_s REAL,
    decode_tokens_per_s REAL,
    total_s REAL,
    finish_reason TEXT,
    error TEXT,
    cached INTEGER NOT NULL DEFAULT 0,
    user TEXT,
    params TEXT,
    prompt_text TEXT,
    completion_text TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    response_id TEXT NOT NULL REFERENCES requests(id),
    created REAL NOT NULL,
    rating INTEGER NOT NULL,
    comment TEXT
);
CREATE INDEX IF NOT EXISTS feedback_response ON feedback(response_id);
"""
COLUMNS = ("id", "created", "endpoint", "model", "model_digest", "status", "prompt_tokens", "completion_tokens",
           "ttft_s", "decode_tokens_per_s", "total_s", "finish_reason", "error", "cached", "user", "params",
           "prompt_text", "completion_text")
RATING_MIN, RATING_MAX = -1, 5  # -1 / 1 thumbs, or a 1..5 scale: the export filters with --min-rating


class RequestLog:
    def __init__(self, path, log_text: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log_text = log_text
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"request log {self.path} cannot be opened ({exc}); move it away or pass "
                             f"another --log") from exc
        self._lock = threading.Lock()

    def write(self, row: dict) -> None:
        row = dict(row)
        if not self.log_text:
            row.pop("prompt_text", None)
            row.pop("completion_text", None)
        row.setdefault("created", time.time())
        if isinstance(row.get("params"), dict):
            row["params"] = json.dumps(row["params"], sort_keys=True)
        cols = [c for c in COLUMNS if c in row]
        with self._lock, self._db:
            self._db.execute(f"INSERT OR REPLACE INTO requests ({', '.join(cols)}) VALUES "
                             f"({', '.join('?' * len(cols))})", [row[c] for c in cols])

    def get(self, response_id: str) -> Optional[dict]:
        with self._lock:
            cur = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM requests WHERE id = ?", (response_id,))
            r = cur.fetchone()
        return dict(zip(COLUMNS, r)) if r else None

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def add_feedback(self, response_id: str, rating: int, comment: Optional[str]) -> int:
        with self._lock, self._db:
            if self._db.execute("SELECT 1 FROM requests WHERE id = ?", (response_id,)).fetchone() is None:
                raise KeyError(response_id)
            cur = self._db.execute("INSERT INTO feedback (response_id, created, rating, comment) VALUES (?,?,?,?)",
                                   (response_id, time.time(), rating, comment))
            return cur.lastrowid

    def close(self) -> None:
        with self._lock:
            self._db.close()


def export_feedback(db_path, out_path, min_rating: int, fmt: str = "golden") -> dict:
    """Write the responses whose latest rating is >= min_rating as JSONL (atomically). Returns counts."""
    if fmt not in ("golden", "chat"):
        raise ValueError(f"format must be golden or chat, not {fmt!r}")
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"no request log at {db_path}")
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT r.id, r.endpoint, r.completion_tokens, r.prompt_text, r.completion_text, f.rating, f.comment "
            "FROM requests r JOIN feedback f ON f.response_id = r.id "
            "WHERE f.id = (SELECT MAX(id) FROM feedback WHERE response_id = r.id) AND f.rating >= ? "
            "ORDER BY r.created", (min_rating,)).fetchall()
    finally:
        db.close()
    written, no_text = [], 0
    for rid, endpoint, n_tokens, prompt, answer, rating, comment in rows:
        if prompt is None or answer is None:
            no_text += 1  # logged without --log-text: nothing to learn from
            continue
        chat = endpoint in ("chat", "ask")
        source = {"messages": json.loads(prompt)} if chat else {"prompt": prompt}
        if fmt == "golden":
            case = {"id": rid, **source, "expect": {"exact": answer},
                    "max_new_tokens": max(1, int(n_tokens or 256))}
        else:
            if not chat:
                continue  # a raw completion is not a conversation
            case = {"messages": source["messages"] + [{"role": "assistant", "content": answer}]}
        case["meta"] = {"response_id": rid, "rating": rating, "comment": comment}
        written.append(case)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text("".join(json.dumps(case, ensure_ascii=False) + "\n" for case in written), encoding="utf-8")
    fsync_path(tmp)
    os.replace(tmp, out_path)
    fsync_path(out_path.parent)
    return {"rated": len(rows), "written": len(written), "without_text": no_text}
