-- FTS terms carry their namespace as a prefix ("n<hash>_e4417"), so every posting list
-- and FTS5's BM25 statistics belong to one namespace and a search needs no AND with a
-- namespace-wide posting list (about 5 ms less per search at 100k memories).
-- llmesh_fts_terms(namespace, terms) is registered by the migration runner.
DELETE FROM memory_fts;
INSERT INTO memory_fts (rowid, terms, ns)
    SELECT rowid, llmesh_fts_terms(namespace, terms), '' FROM memories
