"""Tokenisation for keyword search: codes stay whole, stop words drop out.

``db-replica-07``, ``3.14.2``, ``E4417`` and ``user@example.com`` are single
tokens (a search for one of them must not match its near twins). A compound token
is indexed whole *and* by its parts, so ``replica`` still finds ``db-replica-07``;
queries use whole tokens only. Text is case-folded and NFKC-normalised.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# A word, optionally joined to more words by - . : / @ _ (no trailing punctuation).
_TOKEN = re.compile(r"\w+(?:[-.:/@]\w+)*")
_PARTS = re.compile(r"[^\W_]+")
_POSSESSIVE = re.compile("['\u2019]s\\b")
_SPACES = re.compile(r"\s+")

_STOP_TEXT = """
    a about above after again against all am an and any are aren as at be because been
    before being below between both but by can cannot could couldn did didn do does doesn
    doing don down during each few for from further had hadn has hasn have haven having he
    her here hers herself him himself his how i if in into is isn it its itself just let ll
    me more most mustn my myself no nor not now of off on once only or other ought our ours
    ourselves out over own re same shan she should shouldn so some such t than that the
    their theirs them themselves then there these they this those through to too under until
    up us ve very was wasn we were weren what when where which while who whom why will with
    won would wouldn you your yours yourself yourselves also get got may might must shall s
    d m o y ever else yet anything something tell know like
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())


def normalise(text: str) -> str:
    """Case-folded, NFKC, whitespace-collapsed text (the duplicate-detection key)."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def dedupe_key(namespace: str, text: str) -> str:
    """SHA-256 of the namespace and the normalised text."""
    return hashlib.sha256(f"{namespace}\x00{normalise(text)}".encode()).hexdigest()


def tokens(text: str) -> list[str]:
    """Whole tokens of ``text`` in order (case-folded; stop words kept)."""
    return _TOKEN.findall(_POSSESSIVE.sub("", normalise(text)))


def index_terms(text: str) -> list[str]:
    """Terms stored for a document: whole tokens plus the parts of compound ones."""
    out: list[str] = []
    for token in tokens(text):
        if token in STOP_WORDS:
            continue
        out.append(token)
        parts = _PARTS.findall(token)
        if len(parts) > 1:
            out.extend(p for p in parts if p not in STOP_WORDS)
    return out


def query_terms(text: str) -> list[str]:
    """Distinct whole tokens of a query, stop words removed, in first-seen order."""
    return list(dict.fromkeys(t for t in tokens(text) if t not in STOP_WORDS))
