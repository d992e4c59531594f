"""The one error an import raises: it names what is wrong with the source and what to do."""

from __future__ import annotations


class ModelImportError(ValueError):
    """The source cannot be imported (unsupported architecture, tensor type, layout)."""
