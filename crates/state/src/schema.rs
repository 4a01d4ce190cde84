//! Schema creation and forward migrations for both backends, run by
//! `refinery` (history in `refinery_schema_history`).
//!
//! - SQLite: `V1` … `V7` are the migrations of the hand-written ladder
//!   that came before (unchanged, so a file made by it is adopted by
//!   version: see [`migrate_sqlite`]), then `V8`.
//! - Postgres: `V7` creates the whole schema of SQLite's version 7 in
//!   Postgres terms (no database was ever at an earlier one), then `V8`.
//!   The same version means the same tables on both.
//!
//! Migrations are append-only: never edit a released one (refinery checks
//! their checksums), add the next to both lists. `PRAGMA user_version`
//! follows the latest version, so an older build refuses a newer file.

use refinery::{Migration, Runner};
use rusqlite::Connection;

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

/// Version 8: leases (several daemons on one state database; held and
/// taken over by the lease manager, checked by fenced commits on
/// Postgres), and the erasure records (created on first use before).
const V8: &str = r#"
CREATE TABLE IF NOT EXISTS leases (
    name         TEXT PRIMARY KEY NOT NULL,
    holder       TEXT NOT NULL,
    token        INTEGER NOT NULL,
    acquired_at  TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    info         TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS erasures (
    contact_id TEXT PRIMARY KEY NOT NULL,
    erased_at  TEXT NOT NULL,
    version    INTEGER NOT NULL,
    confirmed  TEXT NOT NULL DEFAULT '[]'
);
"#;

/// SQLite's migrations, in order: (refinery name, SQL).
const SQLITE: &[(&str, &str)] = &[
    ("V1__tables", V1),
    ("V2__conditional_writes", V2),
    ("V3__dead_letters_once", V3),
    ("V4__failed_stores_and_requests", V4),
    ("V5__run_history", V5),
    ("V6__owed_index", V6),
    ("V7__search", V7),
    ("V8__leases", V8),
];

/// Postgres, version 7: SQLite's schema at version 7. Every text column
/// sorts by byte (`COLLATE "C"`), as SQLite's do; integers are BIGINT
/// (flags 0/1 as in SQLite). Differences:
/// - dead letters are recorded once by the code (an `UPDATE` before the
///   `INSERT`), not by a trigger;
/// - the search index is `search_docs.words` (the indexed tokens, folded
///   as FTS5's `unicode61 remove_diacritics 2` does, computed by the code)
///   and `phones` under GIN `tsvector` indexes (`simple` configuration: no
///   extension needed).
const PG_V7: &str = r#"
CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE checkpoints (
    store      TEXT COLLATE "C" PRIMARY KEY,
    checkpoint TEXT NOT NULL,
    updated_at TEXT COLLATE "C" NOT NULL
);
CREATE TABLE cursors (
    consumer   TEXT COLLATE "C" PRIMARY KEY,
    seq        BIGINT NOT NULL,
    updated_at TEXT COLLATE "C" NOT NULL
);
CREATE TABLE store_records (
    store          TEXT COLLATE "C" NOT NULL,
    contact_id     TEXT COLLATE "C" NOT NULL,
    native_id      TEXT COLLATE "C",
    synced_version BIGINT NOT NULL,
    hash           TEXT COLLATE "C" NOT NULL,
    deleted        BIGINT NOT NULL CHECK (deleted IN (0, 1)),
    needs_write    BIGINT NOT NULL DEFAULT 0,
    late           TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (store, contact_id)
);
CREATE INDEX store_records_native ON store_records (store, native_id);
CREATE INDEX store_records_owed ON store_records (store, contact_id) WHERE needs_write <> 0;

CREATE TABLE journal (
    seq          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    contact_id   TEXT COLLATE "C" NOT NULL,
    version      BIGINT NOT NULL,
    prev_version BIGINT NOT NULL,
    op           TEXT NOT NULL,
    origin       TEXT COLLATE "C" NOT NULL,
    changes      TEXT NOT NULL,
    conflicts    TEXT NOT NULL,
    after        TEXT NOT NULL,
    hash         TEXT NOT NULL,
    at           TEXT COLLATE "C" NOT NULL
);
CREATE INDEX journal_contact_version ON journal (contact_id, version);
CREATE INDEX journal_contact_prev ON journal (contact_id, prev_version);

CREATE TABLE conflicts (
    id                BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    contact_id        TEXT COLLATE "C" NOT NULL,
    store             TEXT COLLATE "C" NOT NULL,
    field             TEXT NOT NULL,
    base              TEXT NOT NULL,
    canonical         TEXT NOT NULL,
    incoming          TEXT NOT NULL,
    canonical_version BIGINT NOT NULL,
    incoming_version  BIGINT NOT NULL,
    resolution        TEXT NOT NULL,
    status            TEXT NOT NULL
        CHECK (status IN ('open', 'kept_canonical', 'kept_incoming')),
    created_at        TEXT COLLATE "C" NOT NULL,
    resolved_at       TEXT COLLATE "C"
);
CREATE INDEX conflicts_status ON conflicts (status, id);
CREATE INDEX conflicts_contact ON conflicts (contact_id, status);

CREATE TABLE dead_letters (
    id        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    store     TEXT COLLATE "C" NOT NULL,
    record    TEXT COLLATE "C" NOT NULL,
    field     TEXT COLLATE "C" NOT NULL,
    reason    TEXT COLLATE "C" NOT NULL,
    payload   TEXT,
    at        TEXT COLLATE "C" NOT NULL,
    count     BIGINT NOT NULL DEFAULT 1,
    last_seen TEXT COLLATE "C",
    status    TEXT NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'dismissed', 'retried')),
    closed_at TEXT COLLATE "C"
);
CREATE UNIQUE INDEX dead_letters_key ON dead_letters (store, record, field, reason)
    WHERE status IN ('open', 'dismissed');
CREATE INDEX dead_letters_status ON dead_letters (status, id);

CREATE TABLE store_stats (
    store              TEXT COLLATE "C" PRIMARY KEY,
    runs               BIGINT NOT NULL DEFAULT 0,
    captured           BIGINT NOT NULL DEFAULT 0,
    applied            BIGINT NOT NULL DEFAULT 0,
    written            BIGINT NOT NULL DEFAULT 0,
    skipped_echo       BIGINT NOT NULL DEFAULT 0,
    dead_letters       BIGINT NOT NULL DEFAULT 0,
    conflicts          BIGINT NOT NULL DEFAULT 0,
    last_success       TEXT COLLATE "C",
    last_error         TEXT,
    last_error_at      TEXT COLLATE "C",
    consecutive_errors BIGINT NOT NULL DEFAULT 0,
    updated_at         TEXT COLLATE "C" NOT NULL
);

CREATE TABLE paused_stores (
    store       TEXT COLLATE "C" PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('mass_change', 'schema', 'failed')),
    reason      TEXT NOT NULL,
    details     TEXT NOT NULL,
    since       TEXT COLLATE "C" NOT NULL,
    decision    TEXT CHECK (decision IN ('approve', 'reject', 'resume')),
    decided_at  TEXT COLLATE "C",
    config_hash TEXT
);

CREATE TABLE operator_requests (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    kind        TEXT NOT NULL,
    args        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'done', 'failed')),
    result      TEXT,
    error       TEXT,
    created_at  TEXT COLLATE "C" NOT NULL,
    started_at  TEXT COLLATE "C",
    finished_at TEXT COLLATE "C"
);
CREATE INDEX operator_requests_status ON operator_requests (status, id);

CREATE TABLE run_history (
    store        TEXT COLLATE "C" NOT NULL,
    bucket       BIGINT NOT NULL,
    runs         BIGINT NOT NULL DEFAULT 0,
    captured     BIGINT NOT NULL DEFAULT 0,
    applied      BIGINT NOT NULL DEFAULT 0,
    written      BIGINT NOT NULL DEFAULT 0,
    errors       BIGINT NOT NULL DEFAULT 0,
    max_lag_secs DOUBLE PRECISION,
    PRIMARY KEY (bucket, store)
);

CREATE TABLE search_docs (
    doc        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    contact_id TEXT COLLATE "C" NOT NULL UNIQUE,
    version    BIGINT NOT NULL,
    deleted    BIGINT NOT NULL CHECK (deleted IN (0, 1)),
    name       TEXT NOT NULL,
    names      TEXT NOT NULL,
    emails     TEXT NOT NULL,
    phones     TEXT NOT NULL,
    words      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX search_docs_words ON search_docs
    USING GIN (to_tsvector('simple', words)) WHERE deleted = 0;
CREATE INDEX search_docs_phones ON search_docs
    USING GIN (to_tsvector('simple', phones)) WHERE deleted = 0;

CREATE TABLE erasures (
    contact_id TEXT COLLATE "C" PRIMARY KEY,
    erased_at  TEXT NOT NULL,
    version    BIGINT NOT NULL,
    confirmed  TEXT NOT NULL DEFAULT '[]'
);

INSERT INTO meta (key, value) VALUES ('search_fill', '');
"#;

/// Postgres, version 8: leases (see [`V8`]).
const PG_V8: &str = r#"
CREATE TABLE leases (
    name         TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    token        BIGINT NOT NULL,
    acquired_at  TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    info         TEXT NOT NULL DEFAULT ''
);
"#;

/// Postgres's migrations, in order.
const POSTGRES: &[(&str, &str)] = &[("V7__state", PG_V7), ("V8__leases", PG_V8)];

/// The schema version this build writes (the same on both backends).
pub(crate) const SCHEMA_VERSION: i64 = 8;

/// The last version of the hand-written ladder (`PRAGMA user_version`).
const LADDER_LAST: i64 = 7;

/// refinery's history table.
const HISTORY: &str = "refinery_schema_history";

fn migrations(list: &[(&str, &str)]) -> Result<Vec<Migration>, String> {
    list.iter()
        .map(|(name, sql)| {
            Migration::unapplied(name, sql).map_err(|e| format!("migration {name}: {e}"))
        })
        .collect()
}

fn runner(list: &[(&str, &str)]) -> Result<Runner, String> {
    Ok(Runner::new(&migrations(list)?)
        .set_abort_divergent(true)
        .set_abort_missing(true))
}

fn newer(current: i64) -> String {
    format!(
        "schema version {current} was written by a newer contact-sync (this build knows up to {SCHEMA_VERSION}); upgrade contact-sync"
    )
}

fn has_history(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [HISTORY],
        |r| r.get(0),
    )
}

/// The schema version of a SQLite file: the latest migration refinery
/// applied, or `PRAGMA user_version` for a file it never migrated.
pub(crate) fn version_sqlite(conn: &Connection) -> rusqlite::Result<i64> {
    if has_history(conn)? {
        conn.query_row(
            &format!("SELECT COALESCE(MAX(version), 0) FROM {HISTORY}"),
            [],
            |r| r.get(0),
        )
    } else {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
    }
}

/// Adopts a file of the hand-written ladder (schema version in `PRAGMA
/// user_version`, no history table): its versions are recorded as applied
/// (they are the same migrations), then refinery applies the rest.
fn adopt_sqlite(conn: &mut Connection) -> Result<(), String> {
    // Most opens: nothing to adopt, and no write lock taken (a reader opens
    // beside a writer mid-transaction).
    let ladder: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| format!("reading schema version: {e}"))?;
    if ladder == 0 || has_history(conn).map_err(|e| format!("reading schema version: {e}"))? {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| format!("adopting the schema: {e}"))?;
    let has = has_history(&tx).map_err(|e| format!("adopting the schema: {e}"))?;
    let old: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| format!("reading schema version: {e}"))?;
    if has || old == 0 {
        return Ok(());
    }
    if old > LADDER_LAST {
        return Err(newer(old));
    }
    if old < 0 {
        return Err(format!("invalid schema version {old}"));
    }
    let step = |tx: &rusqlite::Transaction<'_>| -> rusqlite::Result<()> {
        // As refinery creates it (the same text, so the same schema).
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {HISTORY}(
             version int4 PRIMARY KEY,
             name VARCHAR(255),
             applied_on VARCHAR(255),
             checksum VARCHAR(255));"
        ))?;
        let at = contact_sync_core::model::format_ts(&contact_sync_core::model::now());
        for m in
            migrations(&SQLITE[..old as usize]).map_err(rusqlite::Error::InvalidParameterName)?
        {
            tx.execute(
                &format!(
                    "INSERT INTO {HISTORY} (version, name, applied_on, checksum) VALUES (?1, ?2, ?3, ?4)"
                ),
                rusqlite::params![
                    i64::from(m.version()),
                    m.name(),
                    at,
                    m.checksum().to_string()
                ],
            )?;
        }
        Ok(())
    };
    step(&tx).map_err(|e| format!("adopting schema version {old}: {e}"))?;
    tx.commit()
        .map_err(|e| format!("adopting schema version {old}: {e}"))
}

/// Brings a SQLite file up to [`SCHEMA_VERSION`]. Returns an error message
/// (for `StateError::Open`) when the file was written by a newer build or
/// a migration fails.
pub(crate) fn migrate_sqlite(conn: &mut Connection) -> Result<(), String> {
    let once = |conn: &mut Connection| -> Result<(), String> {
        adopt_sqlite(conn)?;
        let current = version_sqlite(conn).map_err(|e| format!("reading schema version: {e}"))?;
        let ladder: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| format!("reading schema version: {e}"))?;
        // A newer build records its version in both.
        if ladder > SCHEMA_VERSION {
            return Err(newer(ladder));
        }
        if current > SCHEMA_VERSION {
            return Err(newer(current));
        }
        if current < SCHEMA_VERSION {
            runner(SQLITE)?
                .run(conn)
                .map_err(|e| format!("migrating the schema: {e}"))?;
        }
        if ladder != SCHEMA_VERSION {
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(|e| format!("recording schema version: {e}"))?;
        }
        Ok(())
    };
    // Two processes opening a new file at once: the second's first try
    // may trip over the first's tables; by the second try they are there.
    once(conn).or_else(|first| once(conn).map_err(|_| first))
}

/// Brings a Postgres database up to [`SCHEMA_VERSION`] (the caller holds
/// the migration lock).
pub(crate) async fn migrate_pg(client: &mut tokio_postgres::Client) -> Result<(), String> {
    let current = pg_version(client)
        .await
        .map_err(|e| format!("reading schema version: {e}"))?;
    if current > SCHEMA_VERSION {
        return Err(newer(current));
    }
    if current < SCHEMA_VERSION {
        runner(POSTGRES)?
            .run_async(client)
            .await
            .map_err(|e| format!("migrating the schema: {e}"))?;
    }
    Ok(())
}

/// The latest migration applied to a Postgres database; 0 when none.
pub(crate) async fn pg_version(
    client: &tokio_postgres::Client,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT to_regclass($1)::text", &[&HISTORY])
        .await?;
    if row.get::<_, Option<String>>(0).is_none() {
        return Ok(0);
    }
    let row = client
        .query_one(
            &format!("SELECT COALESCE(MAX(version), 0)::bigint FROM {HISTORY}"),
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The schema version of an open database.
pub(crate) fn version(db: &crate::db::Backend) -> crate::Result<i64> {
    match db {
        crate::db::Backend::Sqlite(c) => Ok(version_sqlite(c)?),
        crate::db::Backend::Pg(_) => db.query_value(
            &format!("SELECT COALESCE(MAX(version), 0)::bigint FROM {HISTORY}"),
            vec![],
        ),
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! The schema as the hand-written ladder made it (`PRAGMA
    //! user_version` 7), to test adoption.
    pub(crate) const LADDER_V7: &[&str] = &[
        super::V1,
        super::V2,
        super::V3,
        super::V4,
        super::V5,
        super::V6,
        super::V7,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table, index and trigger of a SQLite file, by name.
    fn objects(c: &Connection) -> Vec<(String, String, Option<String>)> {
        let mut st = c
            .prepare(
                "SELECT type, name, sql FROM sqlite_master
                 WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
            )
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_file_of_the_hand_written_ladder_is_adopted_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        // The file as the previous build left it: the ladder's migrations,
        // `PRAGMA user_version` 7, and some state.
        {
            let c = Connection::open(&path).unwrap();
            for sql in fixture::LADDER_V7 {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", 7).unwrap();
            c.execute_batch(
                "INSERT INTO journal (contact_id, version, prev_version, op, origin, changes,
                     conflicts, after, hash, at)
                 VALUES ('c1', 1, 0, 'create', 'local', '[]', '[]', '{}', 'h1',
                     '2026-01-01T00:00:00.000000Z');
                 INSERT INTO cursors VALUES ('twenty', 1, '2026-01-01T00:00:00.000000Z');
                 INSERT INTO store_records (store, contact_id, native_id, synced_version, hash, deleted)
                     VALUES ('twenty', 'c1', 'p1', 1, 'h1', 0);
                 INSERT INTO search_docs (contact_id, version, deleted, name, names, emails, phones)
                     VALUES ('c1', 1, 0, 'Ada', 'Ada Lovelace', 'ada@example.com', '');
                 UPDATE meta SET value = 'done' WHERE key = 'search_fill';",
            )
            .unwrap();
        }
        let ladder = objects(&Connection::open(&path).unwrap());
        let db = crate::StateDb::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(db.cursor("twenty").unwrap(), 1);
        assert_eq!(db.journal_head().unwrap(), 1);
        assert_eq!(
            db.store_record("twenty", "c1").unwrap().unwrap().native_id,
            Some("p1".into())
        );
        assert_eq!(
            db.search_index("lovelace", None, 10).unwrap().items[0].contact_id,
            "c1"
        );
        assert_eq!(db.meta("search_fill").unwrap().as_deref(), Some("done"));
        // Seqs go on from where the ladder's file was.
        let mut db = db;
        let tx = db.tx().unwrap();
        let seq = tx
            .append_journal(&contact_sync_core::JournalEntry::snapshot(
                contact_sync_core::Contact::new("c2", "Grace"),
                "local",
                contact_sync_core::model::now(),
            ))
            .unwrap();
        tx.commit().unwrap();
        assert_eq!(seq, 2);
        drop(db);

        // The adopted file has the ladder's schema plus version 8, and the
        // same schema as a file made new by this build.
        let c = Connection::open(&path).unwrap();
        let adopted = objects(&c);
        let added: Vec<&str> = adopted
            .iter()
            .filter(|o| !ladder.contains(o))
            .map(|o| o.1.as_str())
            .collect();
        assert_eq!(added, ["erasures", "leases", "refinery_schema_history"]);
        assert!(ladder.iter().all(|o| adopted.contains(o)));
        let fresh_dir = tempfile::tempdir().unwrap();
        drop(crate::StateDb::open(&fresh_dir.path().join("state.db")).unwrap());
        let fresh = objects(&Connection::open(fresh_dir.path().join("state.db")).unwrap());
        assert_eq!(adopted, fresh);
        let versions: Vec<i64> = c
            .prepare("SELECT version FROM refinery_schema_history ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        let user_version: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(user_version, SCHEMA_VERSION);
    }
}
