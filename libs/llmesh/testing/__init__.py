"""Helpers for tests: throwaway servers, ports and polling (not used in production)."""
