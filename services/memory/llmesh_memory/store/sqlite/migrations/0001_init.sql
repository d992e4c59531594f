-- Sessions, messages, idempotency keys, memories with FTS5 terms and float32 vectors.
CREATE TABLE sessions (
    namespace TEXT NOT NULL,
    session_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    message_count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL,
    PRIMARY KEY (namespace, session_id)
) WITHOUT ROWID;
CREATE INDEX sessions_by_update ON sessions (namespace, updated_at DESC, session_id DESC);
CREATE INDEX sessions_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE messages (
    namespace TEXT NOT NULL,
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role INTEGER NOT NULL,
    content TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (namespace, session_id, seq)
) WITHOUT ROWID;

CREATE TABLE idempotency (
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (namespace, kind, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_age ON idempotency (created_at);

CREATE TABLE memories (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    text TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    metadata TEXT NOT NULL,
    terms TEXT NOT NULL,
    n_terms INTEGER NOT NULL,
    vector BLOB,
    created_at REAL NOT NULL,
    expires_at REAL,
    UNIQUE (namespace, dedupe_key)
);
CREATE INDEX memories_by_namespace ON memories (namespace, created_at);
CREATE INDEX memories_pending ON memories (created_at) WHERE vector IS NULL;
CREATE INDEX memories_expiry ON memories (expires_at) WHERE expires_at IS NOT NULL;

-- One row per memory (rowid = memories.rowid); terms are pre-tokenised, space-joined;
-- ns holds one token naming the namespace, so a search only walks its own documents.
CREATE VIRTUAL TABLE memory_fts USING fts5 (
    terms,
    ns,
    tokenize = "unicode61 remove_diacritics 0 tokenchars '-.:/@_'"
);

CREATE TABLE term_stats (
    namespace TEXT NOT NULL,
    term TEXT NOT NULL,
    df INTEGER NOT NULL,
    PRIMARY KEY (namespace, term)
) WITHOUT ROWID;

CREATE TABLE namespace_stats (
    namespace TEXT PRIMARY KEY,
    docs INTEGER NOT NULL,
    total_terms INTEGER NOT NULL
) WITHOUT ROWID;
