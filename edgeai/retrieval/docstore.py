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
        self._open_file: Optional[str] = None  # the file begin_file opened, until commit/rollback
        self._open_count = 0
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
        self.begin_file(path)
        try:
            self.add_chunks(path, chunks, vectors)
            self.commit_file(path, sha256, size)
        except BaseException:
            self.rollback_file()
            raise

    # A file written in parts (`RAG.add` streams a big file's chunks as they are embedded): begin_file, any
    # number of add_chunks, then commit_file, all in one transaction, or rollback_file. The store's lock is
    # held from begin to commit/rollback, so no other thread's statement lands inside (or commits) it.
    def begin_file(self, path: str) -> List[str]:
        """Open the transaction that replaces `path`'s chunks; returns the ids of the chunks it replaces."""
        self._lock.acquire()
        try:
            if self._open_file is not None:
                raise RuntimeError(f"{self._open_file} is still being written")
            self._db.execute("BEGIN")
            ids = [r[0] for r in self._db.execute("SELECT id FROM chunks WHERE path=?", (path,))]
            self._delete_chunks(path)
            self._open_file, self._open_count = path, 0
        except BaseException:
            if self._db.in_transaction:
                self._db.rollback()
            self._lock.release()
            raise
        return ids

    def add_chunks(self, path: str, chunks: List[dict], vectors: np.ndarray) -> None:
        if self._open_file != path:
            raise RuntimeError(f"add_chunks({path!r}) outside begin_file/commit_file")
        with self._lock:
            for c, v in zip(chunks, vectors):
                cur = self._db.execute("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                                       (c["id"], path, json.dumps(list(c["section"])), c["start"], c["end"],
                                        c["text"], np.ascontiguousarray(v, np.float32).tobytes()))
                self._db.execute("INSERT INTO chunks_fts(rowid, title, body) VALUES (?, ?, ?)",
                                 (cur.lastrowid, *_fts_row(c["section"], c["text"])))
            self._open_count += len(chunks)

    def commit_file(self, path: str, sha256: str, size: int) -> None:
        if self._open_file != path:
            raise RuntimeError(f"commit_file({path!r}) without begin_file")
        try:
            self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (path, sha256, size, self._open_count))
            self._bump()
            self._db.commit()
        except BaseException:
            self.rollback_file()
            raise
        self._open_file = None
        self._lock.release()

    def rollback_file(self) -> None:
        """Drop the open file's transaction (no-op when none is open)."""
        if self._open_file is None:
            return
        try:
            self._db.rollback()
        finally:
            self._open_file = None
            self._lock.release()

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
        return self._bm25(match_expression(question), k)

    def search_terms(self, terms: List[str], k: int = 20) -> List[Tuple[str, float]]:
        """Like search_lexical, for index terms given as they are (lexical.terms forms: `json_dumps`)."""
        return self._bm25(" OR ".join(f'"{t}"' for t in terms if '"' not in t), k)

    def _bm25(self, expr: str, k: int) -> List[Tuple[str, float]]:
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
        """(ids, metadata, vectors) in batches of rows read as they are used, to rebuild an index."""
        last = 0
        while True:
            with self._lock:
                rows = self._db.execute('SELECT rowid, id, path, section, vector FROM chunks WHERE rowid > ? '
                                        'ORDER BY rowid LIMIT ?', (last, batch)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield ([r[1] for r in rows], [{"path": r[2], "section": " > ".join(json.loads(r[3]))} for r in rows],
                   np.stack([np.frombuffer(r[4], np.float32) for r in rows]))

    def file_vectors(self, path: str) -> Tuple[List[str], List[dict], np.ndarray]:
        """(ids, metadata, vectors) of one file's chunks, in order."""
        with self._lock:
            rows = self._db.execute('SELECT id, path, section, vector FROM chunks WHERE path=? ORDER BY rowid',
                                    (path,)).fetchall()
        return ([r[0] for r in rows], [{"path": r[1], "section": " > ".join(json.loads(r[2]))} for r in rows],
                np.stack([np.frombuffer(r[3], np.float32) for r in rows]) if rows else np.zeros((0, 0), np.float32))


def _fts_row(section, text: str) -> Tuple[str, str]:
    # A heading's parameter list (`json.dumps(obj, *, skipkeys=False, ...)`) names arguments, not the topic:
    # only the name goes into the weighted title column (the parameters stay searchable in the body).
    return index_text(" ".join(TITLE_PARAMS.sub("", t) for t in section)), index_text(text)


TITLE_PARAMS = re.compile(r"(?<=\w)\(.*\)\s*(->.*)?$")
