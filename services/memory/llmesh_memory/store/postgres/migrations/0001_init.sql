-- Sessions, messages, idempotency keys, memories with tsvector terms and pgvector vectors.
-- Times are Unix seconds (double precision), as in the SQLite backend.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE sessions (
    namespace text NOT NULL,
    session_id text NOT NULL,
    version bigint NOT NULL,
    message_count bigint NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    expires_at double precision,
    PRIMARY KEY (namespace, session_id)
);
CREATE INDEX sessions_by_update ON sessions (namespace, updated_at DESC, session_id DESC);
CREATE INDEX sessions_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE messages (
    namespace text NOT NULL,
    session_id text NOT NULL,
    seq bigint NOT NULL,
    role smallint NOT NULL,
    content text NOT NULL,
    created_at double precision NOT NULL,
    PRIMARY KEY (namespace, session_id, seq)
);

CREATE TABLE idempotency (
    namespace text NOT NULL,
    kind text NOT NULL,
    key text NOT NULL,
    fingerprint text NOT NULL,
    result jsonb NOT NULL,
    created_at double precision NOT NULL,
    PRIMARY KEY (namespace, kind, key)
);
CREATE INDEX idempotency_age ON idempotency (created_at);

CREATE TABLE memories (
    id text PRIMARY KEY,
    namespace text NOT NULL,
    text text NOT NULL,
    dedupe_key text NOT NULL,
    metadata jsonb NOT NULL,
    terms text[] NOT NULL,
    n_terms integer NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (array_to_tsvector(terms)) STORED,
    embedding vector(384),
    created_at double precision NOT NULL,
    expires_at double precision,
    UNIQUE (namespace, dedupe_key)
);
CREATE INDEX memories_tsv ON memories USING gin (tsv);
CREATE INDEX memories_metadata ON memories USING gin (metadata jsonb_path_ops);
CREATE INDEX memories_embedding ON memories
    USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);
CREATE INDEX memories_by_namespace ON memories (namespace, created_at);
CREATE INDEX memories_pending ON memories (created_at) WHERE embedding IS NULL;
CREATE INDEX memories_expiry ON memories (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE term_stats (
    namespace text NOT NULL,
    term text NOT NULL,
    df bigint NOT NULL,
    PRIMARY KEY (namespace, term)
);

CREATE TABLE namespace_stats (
    namespace text PRIMARY KEY,
    docs bigint NOT NULL,
    total_terms bigint NOT NULL
);
