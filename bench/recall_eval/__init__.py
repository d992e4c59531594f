"""Retrieval-quality evaluation of memory ``Recall``: labelled set, metrics, runner."""
