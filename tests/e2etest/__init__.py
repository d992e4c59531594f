"""Helpers shared by the cross-service tests (importable through tests/conftest.py)."""
