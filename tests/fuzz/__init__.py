"""Fuzz suite (issue 19): hostile requests to every public RPC of every service."""
