"""SQLite store of indexed files and chunks (text, position, vector): the source of truth behind an index.

The HNSW file is derived data: if it is lost, damaged or out of step, `DocStore.vectors()` rebuilds it.
A file's sha256 decides whether re-adding it does anything.

Lexical search: an FTS5 table `chunks_fts` (rowid = the chunk's rowid) holds each chunk's section path and
text as `lexical.index_text` terms, so identifiers match whole and by parts. It changes in the same
transaction as `chunks` (replace_file, remove_file), and a store whose FTS rows are out of step (one written
before lexical search existed) gets them rebuilt when it opens.
"""
from __future__ import annotations

import json
import re
import sqlite3
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from .lexical import FTS_TOKENIZE, index_text, match_expression

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER, n_chunks INTEGER);
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, section TEXT NOT NULL, start INTEGER, "end" INTEGER,
    text TEXT NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(title, body, tokenize="%s");
""" % FTS_TOKENIZE.replace('"', '""')
# bm25 column weights (title, body): a term in the heading path says more about the chunk than one in its text.
FTS_WEIGHTS = (2.0, 1.0)
FTS_VERSION = 2  # bump when _fts_row changes: stores with other rows get them rebuilt on open


class DocStore:
    def __init__(self, path=":memory:"):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ValueError(f"{self.path} is not a usable edgeai document store ({exc})") from None
        self._lock = threading.RLock()
        self._sync_fts()

    def _sync_fts(self) -> None:
        """Rebuild the FTS rows when they do not match the chunks (a store from before lexical search, or
        from another FTS_VERSION)."""
        with self._lock:
            n_fts = self._db.execute("SELECT COUNT(*) FROM chunks_fts").fetchone()[0]
            n = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            if n_fts == n and self.get_meta("fts_version") == FTS_VERSION:
                return
            with self._db:
                self._db.execute("DELETE FROM chunks_fts")
                rows = self._db.execute("SELECT rowid, section, text FROM chunks").fetchall()
                self._db.executemany("INSERT INTO chunks_fts(rowid, title, body) VALUES (?, ?, ?)",
                                     [(r, *_fts_row(json.loads(sec), text)) for r, sec, text in rows])
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('fts_version', ?)", (json.dumps(FTS_VERSION),))

    def close(self):
        with self._lock:
            self._db.close()

    # meta ------------------------------------------------------------------------------------------------------
    def get_meta(self, key: str, default=None):
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def generation(self) -> int:
        """Counts the commits that changed chunks: an index saved at another generation is out of date."""
        return int(self.get_meta("generation", 0))

    def _bump(self) -> None:  # inside the transaction that changes chunks, so both commit or neither
        self._db.execute("INSERT INTO meta VALUES ('generation', '1') ON CONFLICT(key) "
                         "DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    # files -----------------------------------------------------------------------------------------------------
    def file_digest(self, path: str) -> Optional[str]:
        with self._lock:
            row = self._db.execute("SELECT sha256 FROM files WHERE path=?", (path,)).fetchone()
        return row[0] if row else None

    def files(self) -> List[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT path FROM files ORDER BY path")]

    def chunk_ids(self, path: Optional[str] = None) -> List[str]:
        with self._lock:
            if path is None:
                return [r[0] for r in self._db.execute("SELECT id FROM chunks")]
            return [r[0] for r in self._db.execute("SELECT id FROM chunks WHERE path=?", (path,))]

    def replace_file(self, path: str, sha256: str, size: int, chunks: List[dict], vectors: np.ndarray) -> None:
        """Swap a file's chunks in one transaction (chunks: id, section (list), start, end, text)."""
        rows = [(c["id"], path, json.dumps(list(c["section"])), c["start"], c["end"], c["text"],
                 np.ascontiguousarray(v, np.float32).tobytes()) for c, v in zip(chunks, vectors)]
        fts = [_fts_row(c["section"], c["text"]) for c in chunks]
        with self._lock, self._db:
            self._delete_chunks(path)
            for row, (title, body) in zip(rows, fts):
                cur = self._db.execute("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                self._db.execute("INSERT INTO chunks_fts(rowid, title, body) VALUES (?, ?, ?)",
                                 (cur.lastrowid, title, body))
            self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (path, sha256, size, len(rows)))
            self._bump()

    def _delete_chunks(self, path: str) -> None:
        # Caller holds the lock and the transaction: FTS rows go with their chunks.
        self._db.execute("DELETE FROM chunks_fts WHERE rowid IN (SELECT rowid FROM chunks WHERE path=?)", (path,))
        self._db.execute("DELETE FROM chunks WHERE path=?", (path,))

    def remove_file(self, path: str) -> List[str]:
        with self._lock, self._db:
            ids = [r[0] for r in self._db.execute("SELECT id FROM chunks WHERE path=?", (path,))]
            self._delete_chunks(path)
            self._db.execute("DELETE FROM files WHERE path=?", (path,))
            self._bump()
        return ids

    # chunks ----------------------------------------------------------------------------------------------------
    def get_chunks(self, ids: List[str]) -> Dict[str, dict]:
        if not ids:
            return {}
        with self._lock:
            q = f'SELECT id, path, section, start, "end", text FROM chunks WHERE id IN ({",".join("?" * len(ids))})'
            return {r[0]: {"id": r[0], "path": r[1], "section": json.loads(r[2]), "start": r[3], "end": r[4],
                           "text": r[5]} for r in self._db.execute(q, ids)}

    def search_lexical(self, question: str, k: int = 20) -> List[Tuple[str, float]]:
        """(chunk id, bm25 score: higher is better) of the k best lexical matches; [] when nothing matches."""
        expr = match_expression(question)
        if not expr:
            return []
        q = ("SELECT c.id, -bm25(chunks_fts, ?, ?) AS s FROM chunks_fts JOIN chunks c ON c.rowid = chunks_fts.rowid "
             "WHERE chunks_fts MATCH ? ORDER BY s DESC LIMIT ?")
        with self._lock:
            return [(r[0], float(r[1])) for r in self._db.execute(q, (*FTS_WEIGHTS, expr, int(k)))]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def vectors(self, batch: int = 4096) -> Iterator[Tuple[List[str], List[dict], np.ndarray]]:
        """(ids, metadata, vectors) in batches, to rebuild an index."""
        with self._lock:
            rows = self._db.execute('SELECT id, path, section, vector FROM chunks ORDER BY rowid').fetchall()
        for i in range(0, len(rows), batch):
            part = rows[i:i + batch]
            yield ([r[0] for r in part], [{"path": r[1], "section": " > ".join(json.loads(r[2]))} for r in part],
                   np.stack([np.frombuffer(r[3], np.float32) for r in part]))


def _fts_row(section, text: str) -> Tuple[str, str]:
    # A heading's parameter list (`json.dumps(obj, *, skipkeys=False, ...)`) names arguments, not the topic:
    # only the name goes into the weighted title column (the parameters stay searchable in the body).
    return index_text(" ".join(TITLE_PARAMS.sub("", t) for t in section)), index_text(text)


TITLE_PARAMS = re.compile(r"(?<=\w)\(.*\)\s*(->.*)?$")
