"""Stop strings over streamed text.

Text arrives in pieces (one per token), so a stop string can straddle tokens. The matcher searches the
text accumulated so far and holds back any tail that could still grow into a stop string: the caller
never sees a stop string, nor half of one.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union


def normalize_stops(stop: Union[None, str, Sequence[str]]) -> List[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise ValueError("stop must be a non-empty string or a list of non-empty strings")
    return list(stop)


class StopMatcher:
    def __init__(self, stop: Union[None, str, Sequence[str]]):
        self.stops = normalize_stops(stop)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._buf = ""
        self._emitted = 0
        self.hit: Optional[str] = None

    @property
    def text(self) -> str:
        """Everything released so far (never contains a stop string)."""
        return self._buf[:self._emitted]

    def feed(self, piece: str, final: bool = False) -> Tuple[str, bool]:
        """Add decoded text; returns (text safe to release now, whether a stop string was found)."""
        if self.hit is not None:
            return "", True
        search_from = max(0, len(self._buf) - self._longest + 1)
        self._buf += piece
        found = [(i, s) for s in self.stops if (i := self._buf.find(s, search_from)) >= 0]
        if found:
            end, self.hit = min(found)
        elif final:
            end = len(self._buf)
        else:
            end = len(self._buf) - self._held_back()
        end = max(end, self._emitted)
        out = self._buf[self._emitted:end]
        self._emitted = end
        return out, self.hit is not None

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        for n in range(min(self._longest - 1, len(self._buf)), 0, -1):
            tail = self._buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
