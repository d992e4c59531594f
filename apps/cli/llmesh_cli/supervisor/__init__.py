"""Local mode: ``llmesh up`` runs every service as a supervised child process."""
