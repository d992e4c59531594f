"""Incremental text of one generation: detokenize token by token, honour stop sequences.

Text that could be the start of a stop sequence is held back until the next
tokens show whether it is one; a stop sequence and everything after it is never
sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TextStream:
    """Turns generated token ids into text chunks, cut at the first stop sequence."""

    def __init__(self, detokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._detok = detokenizer
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False

    def _hold_back(self) -> int:
        """Length of the longest suffix of the held text that starts a stop sequence."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(self._held)), best, -1):
                if self._held.endswith(stop[:n]):
                    best = n
                    break
        return best

    def _emit(self, segment: str) -> str:
        if self.stopped:
            return ""
        self._held += segment
        if not self._stop:
            out, self._held = self._held, ""
            return out
        cut = min((i for i in (self._held.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        keep = self._hold_back()
        split = len(self._held) - keep
        out, self._held = self._held[:split], self._held[split:]
        return out

    def add(self, token: int) -> str:
        """Add one token; returns the text that may be sent now (possibly empty)."""
        self._detok.add_token(token)
        return self._emit(self._detok.last_segment)

    def finish(self) -> str:
        """Flush at the end of generation: held-back text that is no stop sequence."""
        if self.stopped:
            return ""
        self._detok.finalize()
        out = self._emit(self._detok.last_segment)
        if not self.stopped:
            out += self._held
            self._held = ""
        return out
