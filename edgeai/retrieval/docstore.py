"""SQLite store of indexed files and chunks (text, position, vector): the source of truth behind an index.

The HNSW file is derived data: if it is lost, damaged or out of step, `DocStore.vectors()` rebuilds it.
A file's sha256 decides whether re-adding it does anything.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER, n_chunks INTEGER);
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, section TEXT NOT NULL, start INTEGER, "end" INTEGER,
    text TEXT NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
"""


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
        with self._lock, self._db:
            self._db.execute("DELETE FROM chunks WHERE path=?", (path,))
            self._db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (path, sha256, size, len(rows)))

    def remove_file(self, path: str) -> List[str]:
        with self._lock, self._db:
            ids = [r[0] for r in self._db.execute("SELECT id FROM chunks WHERE path=?", (path,))]
            self._db.execute("DELETE FROM chunks WHERE path=?", (path,))
            self._db.execute("DELETE FROM files WHERE path=?", (path,))
        return ids

    # chunks ----------------------------------------------------------------------------------------------------
    def get_chunks(self, ids: List[str]) -> Dict[str, dict]:
        if not ids:
            return {}
        with self._lock:
            q = f'SELECT id, path, section, start, "end", text FROM chunks WHERE id IN ({",".join("?" * len(ids))})'
            return {r[0]: {"id": r[0], "path": r[1], "section": json.loads(r[2]), "start": r[3], "end": r[4],
                           "text": r[5]} for r in self._db.execute(q, ids)}

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
