"""llmesh gateway service."""
