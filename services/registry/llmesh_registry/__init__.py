"""llmesh registry service."""
