"""llmesh inference service."""
