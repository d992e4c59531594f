"""Storage backends behind one interface (:class:`~llmesh_memory.store.base.MemoryStore`)."""
