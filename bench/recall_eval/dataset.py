"""The labelled retrieval-quality set (``dataset.json``): loading and integrity checks.

Four namespaces of ~35 memories each (ops incidents, a personal CRM, a release log,
recipes) full of near-twin distractors, and three kinds of queries:

- ``paraphrase``: shares no content word (after stop words and a light stemmer) with any
  of its relevant memories, so only meaning can find them;
- ``exact``: hinges on one rare token (``E4417``, ``db-replica-07``, ``3.14.2``, a
  surname) that appears in its relevant memories and in no other memory of the
  namespace, while a near twin (``E4471``, ``db-replica-70``, ``3.14.1``) does;
- ``mixed``: a rare token or a few shared words plus paraphrased context.

``load_dataset()`` checks every one of those properties and raises ``ValueError`` if the
file breaks one, so an edit cannot silently weaken the set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DATASET_PATH = Path(__file__).resolve().parent / "dataset.json"
QueryKind = Literal["paraphrase", "exact", "mixed"]
KINDS: tuple[QueryKind, ...] = ("paraphrase", "exact", "mixed")

_STOP_TEXT = """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself yourselves s t don get got us may might must
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
_WORD = re.compile(r"[a-z0-9]+")
_SUFFIXES = ("ing", "ed", "es", "s", "e", "ly")


@dataclass(frozen=True, slots=True)
class Memory:
    """One memory to store: a stable dataset id and its text."""

    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Namespace:
    """A tenant namespace and the memories stored in it."""

    name: str
    description: str
    memories: tuple[Memory, ...]


@dataclass(frozen=True, slots=True)
class Query:
    """A search with the ids of every memory that answers it."""

    id: str
    namespace: str
    kind: QueryKind
    text: str
    relevant: tuple[str, ...]
    hinge: str | None = None  # the rare exact token the query turns on, if any


@dataclass(frozen=True, slots=True)
class Dataset:
    """Namespaces and queries of the evaluation set."""

    version: int
    namespaces: tuple[Namespace, ...]
    queries: tuple[Query, ...]

    def namespace(self, name: str) -> Namespace:
        """The namespace called ``name`` (``KeyError`` if none)."""
        for namespace in self.namespaces:
            if namespace.name == name:
                return namespace
        raise KeyError(name)

    def queries_of(self, kind: QueryKind) -> tuple[Query, ...]:
        """Queries of one kind, in file order."""
        return tuple(q for q in self.queries if q.kind == kind)


def stem(word: str) -> str:
    """A deliberately eager stemmer, so that the paraphrase check errs on the strict side."""
    word = word.lower()
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    """Stemmed words of ``text`` that are not stop words (codes split at punctuation)."""
    return {stem(w) for w in _WORD.findall(text.lower()) if w not in STOP_WORDS}


def has_token(text: str, token: str) -> bool:
    """Whether ``token`` occurs in ``text`` as a whole token (case-insensitive)."""
    pattern = r"(?<![\w.-])" + re.escape(token.lower()) + r"(?![\w-]|\.\w)"
    return re.search(pattern, text.lower()) is not None


def load_dataset(path: Path = DATASET_PATH) -> Dataset:
    """Read and validate the set; ``ValueError`` names the first broken rule."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    dataset = _parse(raw)
    problems = list(validate(dataset))
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return dataset


def _parse(raw: dict[str, Any]) -> Dataset:
    namespaces = tuple(
        Namespace(
            name=str(ns["name"]),
            description=str(ns.get("description", "")),
            memories=tuple(Memory(id=str(m["id"]), text=str(m["text"])) for m in ns["memories"]),
        )
        for ns in raw["namespaces"]
    )
    queries = []
    for q in raw["queries"]:
        kind = q["kind"]
        if kind not in KINDS:
            raise ValueError(f"query {q.get('id')}: unknown kind {kind!r}")
        queries.append(
            Query(
                id=str(q["id"]),
                namespace=str(q["namespace"]),
                kind=kind,
                text=str(q["text"]),
                relevant=tuple(str(r) for r in q["relevant"]),
                hinge=None if q.get("hinge") is None else str(q["hinge"]),
            )
        )
    return Dataset(version=int(raw["version"]), namespaces=namespaces, queries=tuple(queries))


def validate(dataset: Dataset) -> Iterable[str]:
    """Every rule the set must keep, as messages for those it breaks."""
    ids = [m.id for ns in dataset.namespaces for m in ns.memories]
    ids += [q.id for q in dataset.queries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        yield f"duplicate ids {duplicates}"
    by_name = {ns.name: ns for ns in dataset.namespaces}
    for query in dataset.queries:
        ns = by_name.get(query.namespace)
        if ns is None:
            yield f"{query.id}: unknown namespace {query.namespace}"
            continue
        texts = {m.id: m.text for m in ns.memories}
        if not query.relevant or any(r not in texts for r in query.relevant):
            yield f"{query.id}: relevant ids {query.relevant} not all in {ns.name}"
            continue
        if query.kind == "paraphrase":
            words = content_words(query.text)
            for rid in query.relevant:
                shared = words & content_words(texts[rid])
                if shared:
                    yield f"{query.id}: paraphrase shares {sorted(shared)} with {rid}"
        if query.kind == "exact" and query.hinge is None:
            yield f"{query.id}: exact query without a hinge token"
        if query.hinge is not None:
            yield from _check_hinge(query, query.hinge, texts)


def _check_hinge(query: Query, hinge: str, texts: dict[str, str]) -> Iterable[str]:
    if not has_token(query.text, hinge):
        yield f"{query.id}: hinge {hinge!r} not in the query"
    for mid, text in texts.items():
        present = has_token(text, hinge)
        if mid in query.relevant and not present:
            yield f"{query.id}: hinge {hinge!r} missing from relevant {mid}"
        if mid not in query.relevant and present:
            yield f"{query.id}: hinge {hinge!r} also in non-relevant {mid}"
