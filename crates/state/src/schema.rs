//! Schema creation and forward migrations, versioned with `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`. Migrations
//! are append-only: never edit a released one, add the next.

use rusqlite::{Connection, TransactionBehavior};

/// Version 1: every table of the state database.
const V1: &str = r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE checkpoints (
    store      TEXT PRIMARY KEY NOT NULL,
    checkpoint TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE cursors (
    consumer   TEXT PRIMARY KEY NOT NULL,
    seq        INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE store_records (
    store          TEXT NOT NULL,
    contact_id     TEXT NOT NULL,
    native_id      TEXT,
    synced_version INTEGER NOT NULL,
    hash           TEXT NOT NULL,
    deleted        INTEGER NOT NULL CHECK (deleted IN (0, 1)),
    PRIMARY KEY (store, contact_id)
) WITHOUT ROWID;
CREATE INDEX store_records_native ON store_records (store, native_id);

CREATE TABLE journal (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id   TEXT NOT NULL,
    version      INTEGER NOT NULL,
    prev_version INTEGER NOT NULL,
    op           TEXT NOT NULL,
    origin       TEXT NOT NULL,
    changes      TEXT NOT NULL,
    conflicts    TEXT NOT NULL,
    after        TEXT NOT NULL,
    hash         TEXT NOT NULL,
    at           TEXT NOT NULL
);
CREATE INDEX journal_contact_version ON journal (contact_id, version);
CREATE INDEX journal_contact_prev ON journal (contact_id, prev_version);

CREATE TABLE conflicts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id       TEXT NOT NULL,
    store            TEXT NOT NULL,
    field            TEXT NOT NULL,
    base             TEXT NOT NULL,
    canonical        TEXT NOT NULL,
    incoming         TEXT NOT NULL,
    canonical_version INTEGER NOT NULL,
    incoming_version INTEGER NOT NULL,
    resolution       TEXT NOT NULL,
    status           TEXT NOT NULL
        CHECK (status IN ('open', 'kept_canonical', 'kept_incoming')),
    created_at       TEXT NOT NULL,
    resolved_at      TEXT
);
CREATE INDEX conflicts_status ON conflicts (status, id);

CREATE TABLE dead_letters (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    store   TEXT NOT NULL,
    record  TEXT NOT NULL,
    field   TEXT NOT NULL,
    reason  TEXT NOT NULL,
    payload TEXT,
    at      TEXT NOT NULL
);

CREATE TABLE store_stats (
    store              TEXT PRIMARY KEY NOT NULL,
    runs               INTEGER NOT NULL DEFAULT 0,
    captured           INTEGER NOT NULL DEFAULT 0,
    applied            INTEGER NOT NULL DEFAULT 0,
    written            INTEGER NOT NULL DEFAULT 0,
    skipped_echo       INTEGER NOT NULL DEFAULT 0,
    dead_letters       INTEGER NOT NULL DEFAULT 0,
    conflicts          INTEGER NOT NULL DEFAULT 0,
    last_success       TEXT,
    last_error         TEXT,
    last_error_at      TEXT,
    consecutive_errors INTEGER NOT NULL DEFAULT 0,
    updated_at         TEXT NOT NULL
);
"#;

/// Version 2: conditional writes and guards.
/// - `store_records.needs_write`: the store is owed a write although the
///   engine may know what it holds (`hash`): 1 after a refused write or for
///   a repair, 2 for a minted id to write back.
/// - `store_records.late`: hashes of images the engine read and merged out
///   of turn (after a refused conditional write); the store's own change
///   stream delivers them later, and then they are not edits.
/// - `paused_stores`: stores held back by a guard until a person decides.
const V2: &str = r#"
ALTER TABLE store_records ADD COLUMN needs_write INTEGER NOT NULL DEFAULT 0;
ALTER TABLE store_records ADD COLUMN late TEXT NOT NULL DEFAULT '';
UPDATE store_records SET needs_write = 2 WHERE hash = '';
CREATE INDEX store_records_needs_write ON store_records (store, contact_id) WHERE needs_write = 1;

CREATE TABLE paused_stores (
    store      TEXT PRIMARY KEY NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('mass_change', 'schema')),
    reason     TEXT NOT NULL,
    details    TEXT NOT NULL,
    since      TEXT NOT NULL,
    decision   TEXT CHECK (decision IN ('approve', 'reject', 'resume')),
    decided_at TEXT
);
"#;

/// Version 3: dead letters recorded once, and closed by a person.
/// - `count`, `last_seen`: the same refusal (store, record, field, reason)
///   seen again bumps these instead of adding a row (the
///   `dead_letters_once` trigger, so every writer gets it); rows already
///   repeated are collapsed into their oldest.
/// - `status`: `open`, `dismissed` (a person said leave it; the same
///   refusal later is still counted on it, not reopened) or `retried` (a
///   person asked for the record to be tried again; the same refusal later
///   is a new open row). `closed_at`: when it was dismissed or retried
///   (retention expires closed rows after the audit window).
const V3: &str = r#"
ALTER TABLE dead_letters ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE dead_letters ADD COLUMN last_seen TEXT;
ALTER TABLE dead_letters ADD COLUMN status TEXT NOT NULL DEFAULT 'open'
    CHECK (status IN ('open', 'dismissed', 'retried'));
ALTER TABLE dead_letters ADD COLUMN closed_at TEXT;
UPDATE dead_letters SET
    count = (SELECT COUNT(*) FROM dead_letters d WHERE d.store = dead_letters.store
             AND d.record = dead_letters.record AND d.field = dead_letters.field
             AND d.reason = dead_letters.reason),
    last_seen = (SELECT MAX(d.at) FROM dead_letters d WHERE d.store = dead_letters.store
             AND d.record = dead_letters.record AND d.field = dead_letters.field
             AND d.reason = dead_letters.reason);
DELETE FROM dead_letters WHERE id > (SELECT MIN(d.id) FROM dead_letters d
    WHERE d.store = dead_letters.store AND d.record = dead_letters.record
    AND d.field = dead_letters.field AND d.reason = dead_letters.reason);
CREATE UNIQUE INDEX dead_letters_key ON dead_letters (store, record, field, reason)
    WHERE status IN ('open', 'dismissed');
CREATE INDEX dead_letters_status ON dead_letters (status, id);
CREATE TRIGGER dead_letters_once BEFORE INSERT ON dead_letters
WHEN EXISTS (SELECT 1 FROM dead_letters d WHERE d.store = NEW.store AND d.record = NEW.record
             AND d.field = NEW.field AND d.reason = NEW.reason
             AND d.status IN ('open', 'dismissed'))
BEGIN
    UPDATE dead_letters SET count = count + 1, last_seen = NEW.at,
        payload = COALESCE(NEW.payload, payload)
    WHERE store = NEW.store AND record = NEW.record AND field = NEW.field
      AND reason = NEW.reason AND status IN ('open', 'dismissed');
    SELECT RAISE(IGNORE);
END;
"#;

/// Version 4: stores parked after a permanent error, and operator requests.
/// - `paused_stores.kind` may be `failed` (a store error retrying cannot
///   fix parked the store until a person resumes it), and
///   `paused_stores.config_hash` keeps the fingerprint of the store's
///   configuration then: a daemon started with another configuration for
///   the store tries it again. (SQLite cannot change a CHECK constraint:
///   the table is rebuilt.)
/// - `operator_requests`: what a command asked the running daemon to do
///   between its cycles (settle a conflict, repair drift, reset a store's
///   change capture), and how it went.
const V4: &str = r#"
CREATE TABLE paused_stores_v4 (
    store       TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('mass_change', 'schema', 'failed')),
    reason      TEXT NOT NULL,
    details     TEXT NOT NULL,
    since       TEXT NOT NULL,
    decision    TEXT CHECK (decision IN ('approve', 'reject', 'resume')),
    decided_at  TEXT,
    config_hash TEXT
);
INSERT INTO paused_stores_v4 (store, kind, reason, details, since, decision, decided_at)
    SELECT store, kind, reason, details, since, decision, decided_at FROM paused_stores;
DROP TABLE paused_stores;
ALTER TABLE paused_stores_v4 RENAME TO paused_stores;

CREATE TABLE operator_requests (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    args        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'done', 'failed')),
    result      TEXT,
    error       TEXT,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT
);
CREATE INDEX operator_requests_status ON operator_requests (status, id);
"#;

/// Version 5: run history for the console's charts, and a contact's open
/// conflicts by index.
/// - `run_history`: per store and 5-minute bucket (unix seconds of its
///   start), the cycles' totals (runs, captured, merged, written, errors)
///   and the largest lag seen (seconds since the store's last success, 0
///   right after one; NULL while it never had one). One row per store and bucket however often cycles
///   run; `compact` removes buckets older than its history window.
/// - `conflicts_contact`: the per-field choice reads a contact's open
///   conflicts.
const V5: &str = r#"
CREATE TABLE run_history (
    store        TEXT NOT NULL,
    bucket       INTEGER NOT NULL,
    runs         INTEGER NOT NULL DEFAULT 0,
    captured     INTEGER NOT NULL DEFAULT 0,
    applied      INTEGER NOT NULL DEFAULT 0,
    written      INTEGER NOT NULL DEFAULT 0,
    errors       INTEGER NOT NULL DEFAULT 0,
    max_lag_secs REAL,
    PRIMARY KEY (bucket, store)
) WITHOUT ROWID;
CREATE INDEX conflicts_contact ON conflicts (contact_id, status);
"#;

/// Version 6:
/// - the owed-writes index covers what the engine pages through every
///   cycle (`needs_write <> 0`: owed writes and ids to write back). V2's
///   index (`= 1`) could not serve that query, so each cycle scanned every
///   record of each store: 120-180 ms per idle cycle at 1M contacts.
const V6: &str = r#"
DROP INDEX IF EXISTS store_records_needs_write;
CREATE INDEX IF NOT EXISTS store_records_owed ON store_records (store, contact_id) WHERE needs_write <> 0;
"#;

/// Version 7: the contact search index (see `search.rs`).
/// - `search_docs`: per contact id, the version indexed, whether deleted,
///   the display name and the indexed text (names, emails, phone digits);
///   a deleted or erased contact keeps only its id and version.
/// - `search_fts`: FTS5 over `search_docs` (external content, kept by the
///   triggers; prefixes of 1-3 characters kept as terms, so a search never
///   expands a prefix over the whole vocabulary; `secure-delete`, so
///   removed text leaves the index pages).
/// - (Every statement may run again over its own result.)
/// - meta `search_fill` = '': the index is filled from canonical by the
///   engine (once, resumably), unless an initial sync from the start fills
///   it first.
const V7: &str = r#"
CREATE TABLE IF NOT EXISTS search_docs (
    doc        INTEGER PRIMARY KEY,
    contact_id TEXT NOT NULL UNIQUE,
    version    INTEGER NOT NULL,
    deleted    INTEGER NOT NULL CHECK (deleted IN (0, 1)),
    name       TEXT NOT NULL,
    names      TEXT NOT NULL,
    emails     TEXT NOT NULL,
    phones     TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS search_fts USING fts5(
    names, emails, phones,
    content = 'search_docs', content_rowid = 'doc',
    tokenize = 'unicode61 remove_diacritics 2', prefix = '1 2 3'
);
INSERT INTO search_fts (search_fts, rank) VALUES ('secure-delete', 1);
CREATE TRIGGER IF NOT EXISTS search_docs_ai AFTER INSERT ON search_docs WHEN new.deleted = 0 BEGIN
    INSERT INTO search_fts (rowid, names, emails, phones)
        VALUES (new.doc, new.names, new.emails, new.phones);
END;
CREATE TRIGGER IF NOT EXISTS search_docs_ad AFTER DELETE ON search_docs WHEN old.deleted = 0 BEGIN
    INSERT INTO search_fts (search_fts, rowid, names, emails, phones)
        VALUES ('delete', old.doc, old.names, old.emails, old.phones);
END;
CREATE TRIGGER IF NOT EXISTS search_docs_au AFTER UPDATE ON search_docs BEGIN
    INSERT INTO search_fts (search_fts, rowid, names, emails, phones)
        SELECT 'delete', old.doc, old.names, old.emails, old.phones
        WHERE old.deleted = 0 AND (new.deleted <> 0 OR old.names IS NOT new.names
            OR old.emails IS NOT new.emails OR old.phones IS NOT new.phones);
    INSERT INTO search_fts (rowid, names, emails, phones)
        SELECT new.doc, new.names, new.emails, new.phones
        WHERE new.deleted = 0 AND (old.deleted <> 0 OR old.names IS NOT new.names
            OR old.emails IS NOT new.emails OR old.phones IS NOT new.phones);
END;
INSERT INTO meta (key, value) VALUES ('search_fill', '')
    ON CONFLICT (key) DO UPDATE SET value = excluded.value;
"#;

/// Every migration, in order; the schema version is `MIGRATIONS.len()`.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Reads `PRAGMA user_version`.
pub(crate) fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Brings the schema up to [`SCHEMA_VERSION`], one migration per
/// transaction. Returns an error message (for `StateError::Open`) when the
/// file was written by a newer build or a migration fails.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), String> {
    let current = version(conn).map_err(|e| format!("reading schema version: {e}"))?;
    if current > SCHEMA_VERSION {
        return Err(format!(
            "schema version {current} was written by a newer contact-sync (this build knows up to {SCHEMA_VERSION}); upgrade contact-sync"
        ));
    }
    if current < 0 {
        return Err(format!("invalid schema version {current}"));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let target = i as i64 + 1;
        let step = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Another process may have migrated while we waited for the write lock.
            if version(&tx)? < target {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", target)?;
            }
            tx.commit()
        };
        step(conn).map_err(|e| format!("migrating schema to version {target}: {e}"))?;
    }
    Ok(())
}
