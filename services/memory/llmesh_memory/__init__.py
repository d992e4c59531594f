"""llmesh memory service."""
