-- Keyword search as one GIN lookup: the tsvector gains a lexeme naming the namespace,
-- and a search asks for `ns:<md5(namespace)> & (term | term ...)`. Without it the
-- planner often filtered a namespace's rows by the btree and re-checked every one.
DROP INDEX IF EXISTS memories_tsv;
ALTER TABLE memories DROP COLUMN tsv;
ALTER TABLE memories ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
    array_to_tsvector(terms || ARRAY['ns:' || md5(namespace)])
) STORED;
CREATE INDEX memories_tsv ON memories USING gin (tsv);
