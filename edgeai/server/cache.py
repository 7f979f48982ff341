"""Exact-match output cache for deterministic requests (temperature 0, or a fixed seed).

Such a request gives the same tokens every time on the same model files, so its finished choices can be
replayed. The key is sha256 over the model digest (the digests of the folder's files), the prompt token ids
and every parameter that shapes the output; `stream` and `user` are not part of it. Bounded by entries,
least recently used first out. Only complete answers are stored (no cancelled or timed-out choice).
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Optional


def cache_key(model_digest: str, kind: str, prompt_ids: list, params: dict) -> str:
    blob = json.dumps([model_digest, kind, prompt_ids, params], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class OutputCache:
    def __init__(self, max_entries: int):
        if max_entries < 0:
            raise ValueError("the output cache size must be >= 0")
        self.max_entries = max_entries
        self._items: "OrderedDict[str, object]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[object]:
        with self._lock:
            v = self._items.get(key)
            if v is not None:
                self._items.move_to_end(key)
            return v

    def put(self, key: str, value) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
