"""Helpers of the gateway's service tests (importable through ../conftest.py)."""
