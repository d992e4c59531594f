"""llmesh_openai: the OpenAI-compatible HTTP door in front of the gateway."""
