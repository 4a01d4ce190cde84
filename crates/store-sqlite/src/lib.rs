//! The embedded SQLite store.
//!
//! One implementation serves two roles: the embedded canonical store
//! (`canonical.db`, store name `canonical`) and the local copy (`local.db`,
//! store name `local`). [`SqliteStore`] implements
//! [`ChangeSource`], [`RecordSink`] and [`StoreInfo`].
//!
//! # Schema
//! - `contacts`: `id INTEGER PRIMARY KEY` (the store's native id) and one
//!   column per canonical field, named as in
//!   [`contact_sync_core::model::ALL_FIELDS`]. `contact_id TEXT UNIQUE` may
//!   be NULL (a row a user inserted by hand). Text fields are TEXT;
//!   `external_ids`, `tags`, `emails`, `phones` and the five rich fields are
//!   JSON text (objects with their keys sorted: contact-sync's JSON objects
//!   always are); timestamps
//!   are RFC 3339 text (`YYYY-MM-DD HH:MM:SS` is accepted on read);
//!   `version INTEGER NOT NULL DEFAULT 1`.
//! - Identity matching: two store-maintained columns, `_primary_email`
//!   (lower-cased) and `_primary_phone`, each with an index. This store's
//!   writer sets them; for edits made by anyone else (the sqlite3 CLI), the
//!   triggers `_contact_sync_identity_insert/_update` recompute them from
//!   the JSON with the same rule as [`Contact::primary_email`] (first entry
//!   flagged primary, else the first). SQLite's `lower()` folds ASCII only,
//!   so a hand-typed non-ASCII upper-case address may not match. During a
//!   bulk load ([`RecordSink::begin_bulk_load`]) both indexes are dropped
//!   and built once at the end; opening the file creates them if a crash
//!   left them missing.
//! - Change capture: AFTER INSERT/UPDATE/DELETE triggers append to
//!   `_contact_sync_changes(seq, row_id, contact_id, op, image)`, where
//!   `image` is `json_object(...)` of the whole new row (JSON columns kept as
//!   their raw text, so a broken value reaches the decoder and becomes
//!   [`ChangeKind::Undecodable`] instead of failing the user's statement).
//!   The triggers fire only when `_contact_sync_control.suppress = 0`.
//!   [`RecordSink::write_batch`] runs in one IMMEDIATE transaction that sets
//!   `suppress = 1` first and `0` again before COMMIT, so the engine's own
//!   writes never come back as changes while every other connection only
//!   ever sees `0`. A crash mid-batch rolls back to `0` as well.
//! - `content_hash` holds the content hash of the row as the engine wrote
//!   it (the engine sets it on every write, see [`RecordSink`]). The
//!   capture triggers clear it when anyone else inserts or updates the row,
//!   so [`RecordSink::scan_hashes`] can trust a non-NULL value and decode
//!   only the rows without one.
//! - A `contacts` table that already exists is kept: missing canonical
//!   columns and the identity columns are added (and back-filled), and a
//!   unique index on `contact_id` is created when none exists. The triggers
//!   are re-created on every open.
//!
//! # Writes
//! One IMMEDIATE transaction per batch. Per contact: a lookup by
//! `contact_id`, then a plain INSERT or an UPDATE by row id (version guard:
//! a lower version than the stored one is [`WriteOutcome::Stale`]).
//! Write-back of a minted id: when `external_ids[<store name>]` holds the row
//! id of a row without `contact_id`, that row is updated instead of a new one
//! inserted (no version guard: the row was never synced); if the contact
//! already has a row here, that row is updated and the hand-made duplicate
//! deleted (its content was merged through the change it produced). A
//! constraint of the user's table that refuses one record (CHECK, NOT NULL)
//! makes that record [`WriteOutcome::Rejected`]; only IO errors fail the
//! batch (busy/locked → transient, the rest permanent).
//!
//! While the only triggers on `contacts` are this store's, triggers are
//! switched off on the store's own connection
//! (`SQLITE_DBCONFIG_ENABLE_TRIGGER`, per connection): statements then need
//! no statement journal, which halves the CPU cost of a write. Other
//! connections are unaffected. When a user has triggers of their own on
//! `contacts` (checked at every batch), triggers stay on so those still see
//! the sync's writes, and the suppress flag alone keeps capture quiet.
//!
//! # Connection
//! WAL mode, `synchronous = FULL` (a committed batch survives power loss:
//! the engine advances its cursors only after a durable write), busy timeout
//! 5 s (users edit the file with the sqlite3 CLI while the daemon runs),
//! 16 KiB pages for new files, statement journals in memory, 32 MiB cache.
//!
//! # Async
//! rusqlite is synchronous. The database is a local file, so most async
//! trait methods do their work directly, on the calling task; a batch of
//! 1,000 contacts takes a few milliseconds. Full scans (`scan`,
//! `scan_hashes`) and `write_batch_owned` run on a blocking thread instead,
//! so that the engine can read and check the next page of canonical while
//! it writes the current page to another store (initial sync uses both
//! cores). The connection sits behind a
//! mutex for that; the trait's `&mut self` means the engine never contends
//! for it.
//!
//! # Rows that cannot be decoded
//! Change capture reports them as [`ChangeKind::Undecodable`] (they go to
//! dead letters). [`RecordSink::read`], [`scan`](RecordSink::scan) and
//! [`find_by_identity`](RecordSink::find_by_identity) leave such rows out
//! and log a warning naming the record and the field (never the value); a
//! `scan` page is still filled up to `limit` from the rows after them.

mod codec;
mod schema;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use contact_sync_connector::{
    Change, ChangeBatch, ChangeKind, ChangeSource, Checkpoint, Conditional, Expect, HashScan,
    RecordHash, RecordSink, StoreError, StoreInfo, Unreadable, WriteOutcome,
};
use contact_sync_core::model::ALL_FIELDS;
use contact_sync_core::{Contact, Invalid};
use rusqlite::config::DbConfig;
use rusqlite::ffi::ErrorCode;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use codec::{Encoded, Raw, NCOLS};

/// Most bound parameters in one `IN (…)` list of [`RecordSink::read`].
const READ_CHUNK: usize = 500;

/// The embedded SQLite store (see the crate docs for schema and behaviour).
pub struct SqliteStore {
    path: PathBuf,
    name: String,
    /// The connection and what goes with it. Behind a mutex so that full
    /// scans can run on a blocking thread (see the crate docs, "Async");
    /// `&mut self` on every trait method means it is never contended by the
    /// engine.
    inner: Arc<Mutex<Inner>>,
}

/// The store's connection with its prepared SQL and writer state.
struct Inner {
    conn: Connection,
    name: String,
    sql: Sql,
    /// Whether triggers are on for this connection (see `write_batch_sync`).
    triggers_on: bool,
    /// Reused encoding buffers of the writer.
    scratch: Encoded,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// SQL text built once per store (also the keys of the statement cache).
struct Sql {
    insert: String,
    update: String,
    write_back: String,
    scan: String,
    find_by_identity: String,
    select: String,
}

impl Sql {
    fn new() -> Self {
        let cols = schema::select_columns();
        let mut insert_cols: Vec<&str> = ALL_FIELDS.to_vec();
        insert_cols.push(schema::PRIMARY_EMAIL);
        insert_cols.push(schema::PRIMARY_PHONE);
        let placeholders: Vec<String> = (1..=insert_cols.len()).map(|i| format!("?{i}")).collect();
        let insert = format!(
            "INSERT INTO contacts ({}) VALUES ({})",
            insert_cols.join(", "),
            placeholders.join(", ")
        );
        let sets: Vec<String> = insert_cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 1))
            .collect();
        let write_back = format!(
            "UPDATE contacts SET {} WHERE id = ?{}",
            sets.join(", "),
            insert_cols.len() + 1
        );
        // A row found by its contact_id keeps it: leaving `contact_id` out
        // of the SET spares its unique index an update (?1 stays unused).
        let update = format!(
            "UPDATE contacts SET {} WHERE id = ?{}",
            sets[1..].join(", "),
            insert_cols.len() + 1
        );
        let scan = format!(
            "SELECT {cols} FROM contacts WHERE contact_id > ?1 ORDER BY contact_id LIMIT ?2"
        );
        let find_by_identity = format!(
            "SELECT {cols} FROM contacts WHERE id IN (\
               SELECT id FROM contacts WHERE {pe} IN (SELECT value FROM json_each(?1)) \
               UNION SELECT id FROM contacts WHERE {pp} IN (SELECT value FROM json_each(?2))) \
             AND contact_id > '' AND (deleted_at IS NULL OR trim(deleted_at) = '') \
             ORDER BY contact_id",
            pe = schema::PRIMARY_EMAIL,
            pp = schema::PRIMARY_PHONE,
        );
        Sql {
            insert,
            update,
            write_back,
            scan,
            find_by_identity,
            select: cols,
        }
    }
}

/// The kept content hash of a row the engine wrote (id and hash only:
/// SQLite extracts columns lazily), or `None` when the row has none (it
/// must be read in full).
fn kept_hash(row: &rusqlite::Row<'_>, stored_id: &str) -> Option<RecordHash> {
    const HASH_COL: usize = NCOLS - 1;
    debug_assert_eq!(ALL_FIELDS[HASH_COL - 1], "content_hash");
    let id = stored_id.trim();
    match row.get_ref(HASH_COL) {
        Ok(ValueRef::Text(h)) if !h.is_empty() && !id.is_empty() => Some(RecordHash {
            contact_id: id.to_string(),
            hash: String::from_utf8_lossy(h).into_owned(),
        }),
        _ => None,
    }
}

/// Classifies a SQLite error: busy/locked are transient, the rest permanent.
fn store_error(store: &str, what: &str, e: &rusqlite::Error) -> StoreError {
    let message = format!("{what}: {e}");
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::transient(store, message)
        }
        _ => StoreError::permanent(store, message),
    }
}

/// A statement failed for this record only (a constraint the user added, a
/// value too big): the record is refused, the batch goes on.
fn rejection(e: &rusqlite::Error) -> Option<WriteOutcome> {
    let (err, msg) = match e {
        rusqlite::Error::SqliteFailure(err, msg) => (err, msg.clone().unwrap_or_default()),
        _ => return None,
    };
    if !matches!(
        err.code,
        ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig
    ) {
        return None;
    }
    // "UNIQUE constraint failed: contacts.contact_id" names the column.
    let field = msg
        .split("contacts.")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
                .collect::<String>()
        })
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| "record".to_string());
    let reason = if msg.is_empty() { err.to_string() } else { msg };
    Some(WriteOutcome::Rejected { field, reason })
}

/// Text of a column that may hold anything (a user may type an integer).
fn opt_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Null | ValueRef::Blob(_) => None,
    }
}

/// Decodes a selected row; an undecodable one is logged and left out.
fn decode_row(store: &str, row: &Row<'_>) -> rusqlite::Result<Option<Contact>> {
    let raw = raw_row(row)?;
    match codec::decode(&raw) {
        Ok(c) if !c.contact_id.is_empty() => Ok(Some(c)),
        Ok(_) => Ok(None),
        Err(invalid) => {
            tracing::warn!(
                store,
                record = %invalid.record,
                field = %invalid.field,
                reason = %invalid.log_reason(),
                "row left out of a read: it cannot be decoded (fix it in the database)"
            );
            Ok(None)
        }
    }
}

/// The selected columns of a row as [`Raw`] values.
fn raw_row<'r>(row: &'r Row<'_>) -> rusqlite::Result<[Raw<'r>; NCOLS]> {
    let mut raw = [Raw::Null; NCOLS];
    for (i, slot) in raw.iter_mut().enumerate() {
        *slot = Raw::from(row.get_ref(i)?);
    }
    Ok(raw)
}

impl SqliteStore {
    /// Opens (creating when missing) the SQLite file at `path` as the store
    /// named `name` (`canonical`, `local`), and creates or upgrades the
    /// schema. Fails when the file cannot be opened or its `contacts` table
    /// has no `id INTEGER PRIMARY KEY`.
    pub fn open(path: &Path, name: &str) -> Result<SqliteStore, StoreError> {
        let ctx = |what: &str| format!("{what} {}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::permanent(name, format!("{}: {e}", ctx("creating the folder of")))
            })?;
        }
        let mut conn =
            Connection::open(path).map_err(|e| store_error(name, &ctx("opening"), &e))?;
        let setup = |conn: &Connection| -> rusqlite::Result<()> {
            conn.busy_timeout(Duration::from_secs(5))?;
            // 16 KiB pages (a no-op on an existing file): contacts are ~2 KB
            // rows, and larger pages halve the write cost of a batch (fewer
            // WAL frames and syscalls). Must come before WAL mode is set.
            conn.pragma_update(None, "page_size", 16_384)?;
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(store = name, mode, "SQLite did not switch to WAL mode");
            }
            conn.pragma_update(None, "synchronous", "FULL")?;
            // 16 MiB of page cache per connection: the indexes a write
            // touches stay cached (more only raises the peak RSS of a large
            // initial sync; the OS caches the file anyway).
            conn.pragma_update(None, "cache_size", -16_384)?;
            // Statement journals (a write on a table with triggers needs
            // one) in memory: on disk they cost a temp-file write per page.
            conn.pragma_update(None, "temp_store", "MEMORY")?;
            conn.set_prepared_statement_cache_capacity(64);
            // One plan per statement text: SQLite otherwise prepares a
            // statement with a bound `LIMIT ?` again after every new
            // binding (the value is a planner hint).
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
            Ok(())
        };
        setup(&conn).map_err(|e| store_error(name, &ctx("configuring"), &e))?;
        schema::ensure(&mut conn)
            .map_err(|e| store_error(name, &ctx("creating the schema of"), &e))?;
        let ok = schema::id_is_rowid(&conn)
            .map_err(|e| store_error(name, &ctx("inspecting the schema of"), &e))?;
        if !ok {
            return Err(StoreError::permanent(
                name,
                format!(
                    "{}: table `contacts` must have `id INTEGER PRIMARY KEY` (the row id)",
                    path.display()
                ),
            ));
        }
        Ok(SqliteStore {
            path: path.to_path_buf(),
            name: name.to_string(),
            inner: Arc::new(Mutex::new(Inner {
                conn,
                name: name.to_string(),
                sql: Sql::new(),
                triggers_on: true,
                scratch: Encoded::default(),
            })),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for work done on the calling thread.
    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| poisoned(&self.name))
    }

    /// Runs `f` on the connection on a blocking thread: a full scan decodes
    /// thousands of rows, and the caller (the engine's backfill) overlaps it
    /// with writes to another store.
    async fn on_blocking_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock().map_err(|_| poisoned(&name))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::permanent(&self.name, format!("a store task failed: {e}")))?
    }
}

fn poisoned(store: &str) -> StoreError {
    StoreError::permanent(
        store,
        "the connection is unusable: an earlier operation panicked",
    )
}

impl Inner {
    fn err(&self, what: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        let what = what.to_string();
        move |e| store_error(&self.name, &what, &e)
    }

    /// Writes the batch in one IMMEDIATE transaction; `expect[k]` (when
    /// given) is the condition of `writes[k]`, checked inside the same
    /// transaction, so the check and the write are one atomic step.
    fn write_batch_sync(
        &mut self,
        writes: &[Contact],
        expect: Option<&[Expect]>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let store = self.name.as_str();
        let e = |what: &'static str| move |err: rusqlite::Error| store_error(store, what, &err);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e("starting a write transaction"))?;
        // Only our own triggers on `contacts`: switch triggers off for this
        // connection (no trigger code in our statements, no statement
        // journal). Someone else's triggers (an FTS index, an audit table)
        // must still see our writes: then keep triggers on and rely on the
        // suppress flag alone.
        let foreign: i64 = tx
            .prepare_cached(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' \
                 AND tbl_name = 'contacts' AND substr(name, 1, 14) <> '_contact_sync_'",
            )
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(e("listing triggers"))?;
        let want_triggers = foreign > 0;
        if want_triggers != self.triggers_on {
            tx.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, want_triggers)
                .map_err(e("switching triggers"))?;
            // Statements compiled under the other setting are dropped.
            tx.flush_prepared_statement_cache();
            self.triggers_on = want_triggers;
        }
        tx.prepare_cached("UPDATE _contact_sync_control SET suppress = 1 WHERE id = 0")
            .and_then(|mut s| s.execute([]))
            .map_err(e("suppressing change capture"))?;
        let mut stmts = Statements::prepare(&tx, &self.sql).map_err(e("preparing writes"))?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for (k, c) in writes.iter().enumerate() {
            let cond = expect.map_or(&Expect::Any, |e| &e[k]);
            let outcome = match write_one(
                &tx,
                &mut stmts,
                &self.sql,
                &mut self.scratch,
                store,
                c,
                cond,
            ) {
                Ok(o) => o,
                Err(err) => match rejection(&err) {
                    Some(r) => r,
                    None => {
                        return Err(store_error(
                            store,
                            &format!("writing contact {}", c.contact_id),
                            &err,
                        ))
                    }
                },
            };
            outcomes.push(outcome);
        }
        drop(stmts);
        tx.prepare_cached("UPDATE _contact_sync_control SET suppress = 0 WHERE id = 0")
            .and_then(|mut s| s.execute([]))
            .map_err(e("re-enabling change capture"))?;
        tx.commit().map_err(e("committing a write batch"))?;
        Ok(outcomes)
    }

    fn read_sync(&mut self, ids: &[String]) -> Result<Vec<Contact>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(READ_CHUNK) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT {} FROM contacts WHERE contact_id IN ({marks})",
                self.sql.select
            );
            let mut stmt = self
                .conn
                .prepare_cached(&sql)
                .map_err(self.err("reading contacts"))?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(chunk.iter()))
                .map_err(self.err("reading contacts"))?;
            while let Some(row) = rows.next().map_err(self.err("reading contacts"))? {
                if let Some(c) =
                    decode_row(&self.name, row).map_err(self.err("reading contacts"))?
                {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    fn scan_sync(&mut self, after: Option<&str>, limit: usize) -> Result<Vec<Contact>, StoreError> {
        let name = &self.name;
        self.scan_rows(after, limit, "scanning contacts", |row, _| {
            decode_row(name, row)
        })
    }

    /// `scan`'s rows as (contact_id, hash): a row whose `content_hash` the
    /// engine wrote (any other writer clears it) is not decoded; the rest
    /// are decoded and hashed (undecodable ones left out, as in `scan`).
    fn scan_hashes_sync(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecordHash>, StoreError> {
        let name = &self.name;
        self.scan_rows(after, limit, "scanning contact hashes", |row, stored_id| {
            if let Some(h) = kept_hash(row, stored_id) {
                return Ok(Some(h));
            }
            Ok(decode_row(name, row)?.map(RecordHash::of))
        })
    }

    /// As `scan_hashes_sync`, with the rows that cannot be decoded named
    /// (drift reports them) instead of left out; they count in `limit`.
    fn scan_hashes_checked_sync(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<HashScan, StoreError> {
        let items = self.scan_rows(after, limit, "scanning contact hashes", |row, stored_id| {
            if let Some(h) = kept_hash(row, stored_id) {
                return Ok(Some(Ok(h)));
            }
            let id = stored_id.trim();
            let raw = raw_row(row)?;
            Ok(match codec::decode(&raw) {
                Ok(c) if !c.contact_id.is_empty() => Some(Ok(RecordHash::of(c))),
                Ok(_) => None,
                // Without an id it cannot be named by one, nor paged past.
                Err(_) if id.is_empty() => None,
                Err(invalid) => Some(Err(Unreadable {
                    contact_id: id.to_string(),
                    native_id: id.to_string(),
                    invalid,
                })),
            })
        })?;
        let mut scan = HashScan::default();
        for item in items {
            match item {
                Ok(h) => {
                    scan.last = Some(h.contact_id.clone());
                    scan.hashes.push(h);
                }
                Err(u) => {
                    scan.last = Some(u.contact_id.clone());
                    scan.unreadable.push(u);
                }
            }
        }
        Ok(scan)
    }

    /// Up to `limit` items made by `take` from the rows after `after` in
    /// `contact_id` order (`take` gets the row and its stored contact_id,
    /// and returns `None` to leave a row out). Rows left out do not count:
    /// reading goes on until the page is full, so a short page still means
    /// "no more rows".
    fn scan_rows<T>(
        &self,
        after: Option<&str>,
        limit: usize,
        what: &str,
        mut take: impl FnMut(&Row<'_>, &str) -> rusqlite::Result<Option<T>>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(10_000));
        let mut cursor = after.unwrap_or("").to_string();
        while out.len() < limit {
            let want = limit - out.len();
            let mut stmt = self
                .conn
                .prepare_cached(&self.sql.scan)
                .map_err(self.err(what))?;
            let mut rows = stmt
                .query(rusqlite::params![cursor, want as i64])
                .map_err(self.err(what))?;
            let mut seen = 0usize;
            // The stored (untrimmed) contact_id of the last row read: the
            // next query continues after it.
            let mut last = String::new();
            while let Some(row) = rows.next().map_err(self.err(what))? {
                seen += 1;
                last.clear();
                if let Ok(ValueRef::Text(t)) = row.get_ref(1) {
                    last.push_str(&String::from_utf8_lossy(t));
                }
                if let Some(item) = take(row, &last).map_err(self.err(what))? {
                    out.push(item);
                }
            }
            if seen < want || last.is_empty() {
                break;
            }
            cursor = last;
        }
        Ok(out)
    }

    fn count_sync(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM contacts WHERE contact_id > '' AND trim(contact_id) <> '' \
                 AND (deleted_at IS NULL OR trim(deleted_at) = '')",
            )
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(self.err("counting contacts"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn find_by_identity_sync(
        &mut self,
        emails: &[String],
        phones: &[String],
    ) -> Result<Vec<Contact>, StoreError> {
        if emails.is_empty() && phones.is_empty() {
            return Ok(Vec::new());
        }
        let emails: Vec<String> = emails.iter().map(|e| e.trim().to_lowercase()).collect();
        let phones: Vec<&str> = phones.iter().map(|p| p.trim()).collect();
        let (emails, phones) = (
            serde_json::to_string(&emails).unwrap_or_else(|_| "[]".into()),
            serde_json::to_string(&phones).unwrap_or_else(|_| "[]".into()),
        );
        let what = "finding contacts by email or phone";
        let mut stmt = self
            .conn
            .prepare_cached(&self.sql.find_by_identity)
            .map_err(self.err(what))?;
        let mut rows = stmt
            .query(rusqlite::params![emails, phones])
            .map_err(self.err(what))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(self.err(what))? {
            if let Some(c) = decode_row(&self.name, row).map_err(self.err(what))? {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn parse_checkpoint(&self, cp: Option<&Checkpoint>) -> Result<i64, StoreError> {
        match cp {
            None => Ok(0),
            Some(cp) => cp.as_str().trim().parse::<i64>().map_err(|_| {
                StoreError::permanent(
                    &self.name,
                    format!(
                        "checkpoint `{cp}` is not a change sequence number of this store \
                         (expected decimal digits)"
                    ),
                )
            }),
        }
    }

    fn read_changes_sync(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        let start = self.parse_checkpoint(from)?;
        let what = "reading the change table";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, row_id, contact_id, op, image FROM _contact_sync_changes \
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(self.err(what))?;
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let mut rows = stmt
            .query(rusqlite::params![start, fetch])
            .map_err(self.err(what))?;
        let mut changes = Vec::with_capacity(limit.min(10_000));
        let mut last = start;
        let mut has_more = false;
        while let Some(row) = rows.next().map_err(self.err(what))? {
            if changes.len() == limit {
                has_more = true;
                break;
            }
            let seq: i64 = row.get(0).map_err(self.err(what))?;
            let row_id = row.get_ref(1).ok().and_then(opt_text).unwrap_or_default();
            let contact_id = row
                .get_ref(2)
                .ok()
                .and_then(opt_text)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            let op = row.get_ref(3).ok().and_then(opt_text).unwrap_or_default();
            let image = row.get_ref(4).ok().and_then(opt_text);
            let kind = if op == "delete" {
                ChangeKind::Delete { contact_id }
            } else {
                decode_image(&row_id, contact_id.as_deref(), image.as_deref())
            };
            changes.push(Change {
                native_id: row_id,
                kind,
            });
            last = seq;
        }
        drop(rows);
        drop(stmt);
        self.refuse_invalid_utf8(&mut changes)?;
        let checkpoint = match (changes.is_empty(), from) {
            (true, Some(cp)) => cp.clone(),
            _ => Checkpoint::new(last.to_string()),
        };
        Ok(ChangeBatch {
            changes,
            checkpoint,
            has_more,
        })
    }

    /// SQLite keeps whatever bytes a writer puts in a TEXT column, and the
    /// capture triggers' JSON image turns invalid UTF-8 into U+FFFD: a
    /// change whose image holds U+FFFD is checked against the row's own
    /// bytes, and one whose bytes are not UTF-8 is refused (a dead letter
    /// naming the record and the column), never passed on altered.
    fn refuse_invalid_utf8(&self, changes: &mut [Change]) -> Result<(), StoreError> {
        let what = "checking a changed row's text";
        for ch in changes.iter_mut() {
            let ChangeKind::Upsert(c) = &ch.kind else {
                continue;
            };
            let suspicious = serde_json::to_string(&**c).is_ok_and(|j| j.contains('\u{FFFD}'));
            let Ok(row_id) = ch.native_id.parse::<i64>() else {
                continue;
            };
            if !suspicious {
                continue;
            }
            let sql = format!(
                "SELECT {} FROM contacts WHERE id = ?1",
                ALL_FIELDS.join(", ")
            );
            let mut stmt = self.conn.prepare_cached(&sql).map_err(self.err(what))?;
            let mut rows = stmt.query([row_id]).map_err(self.err(what))?;
            let Some(row) = rows.next().map_err(self.err(what))? else {
                continue;
            };
            for (i, field) in ALL_FIELDS.iter().enumerate() {
                if let Ok(ValueRef::Text(bytes)) = row.get_ref(i) {
                    if let Err(e) = std::str::from_utf8(bytes) {
                        let record = if c.contact_id.is_empty() {
                            format!("row {}", ch.native_id)
                        } else {
                            c.contact_id.clone()
                        };
                        ch.kind = ChangeKind::Undecodable {
                            invalid: Invalid::new(
                                record,
                                *field,
                                format!(
                                    "is not valid UTF-8 (invalid byte at offset {}); fix the text in the database",
                                    e.valid_up_to()
                                ),
                            ),
                            payload: None,
                        };
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn acknowledge_sync(&mut self, upto: &Checkpoint) -> Result<(), StoreError> {
        let upto = self.parse_checkpoint(Some(upto))?;
        self.conn
            .prepare_cached("DELETE FROM _contact_sync_changes WHERE seq <= ?1")
            .and_then(|mut s| s.execute([upto]))
            .map_err(self.err("discarding acknowledged changes"))?;
        Ok(())
    }
}

/// The statements every write of a batch uses, prepared once per batch
/// (looking a statement up in the cache hashes its whole SQL text).
struct Statements<'c> {
    lookup: rusqlite::CachedStatement<'c>,
    /// The whole row by row id (the condition of a conditional write).
    held: rusqlite::CachedStatement<'c>,
    insert: rusqlite::CachedStatement<'c>,
    update: rusqlite::CachedStatement<'c>,
}

impl<'c> Statements<'c> {
    fn prepare(tx: &'c Transaction<'_>, sql: &Sql) -> rusqlite::Result<Self> {
        Ok(Statements {
            lookup: tx.prepare_cached(
                "SELECT id, coalesce(CAST(version AS INTEGER), 0) FROM contacts \
                 WHERE contact_id = ?1",
            )?,
            held: tx.prepare_cached(&format!(
                "SELECT {} FROM contacts WHERE id = ?1",
                sql.select
            ))?,
            insert: tx.prepare_cached(&sql.insert)?,
            update: tx.prepare_cached(&sql.update)?,
        })
    }
}

/// One write inside the batch transaction. A constraint failure comes back
/// as `Err` and is turned into a per-record rejection by the caller.
///
/// A lookup by `contact_id` decides: no row → insert (or write-back into
/// the hinted row), a higher stored version → stale, else update by row id.
/// Plain INSERT/UPDATE-by-rowid (not `INSERT … ON CONFLICT DO UPDATE`):
/// with triggers off on this connection they need no statement journal,
/// which halves the CPU cost of a write.
fn write_one(
    tx: &Transaction<'_>,
    stmts: &mut Statements<'_>,
    sql: &Sql,
    scratch: &mut Encoded,
    store: &str,
    c: &Contact,
    expect: &Expect,
) -> rusqlite::Result<WriteOutcome> {
    if c.contact_id.trim().is_empty() {
        return Ok(WriteOutcome::Rejected {
            field: "contact_id".into(),
            reason: "is missing".into(),
        });
    }
    let existing: Option<(i64, i64)> = stmts
        .lookup
        .query_row([&c.contact_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;

    // Write-back of a minted id: the write names a row of this store that
    // has no contact_id yet (a row a user inserted).
    let mut unnamed_row: Option<i64> = None;
    if let Some(row_id) = c
        .external_ids
        .get(store)
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        let hinted: Option<Option<String>> = tx
            .prepare_cached("SELECT contact_id FROM contacts WHERE id = ?1")?
            .query_row([row_id], |r| Ok(r.get_ref(0).ok().and_then(opt_text)))
            .optional()?;
        if hinted.is_some_and(|id| id.is_none_or(|s| s.trim().is_empty())) {
            unnamed_row = Some(row_id);
        }
    }

    // The condition, inside the write transaction (the write lock is held):
    // the row the write would replace must still be what the engine saw.
    if *expect != Expect::Any {
        let target = existing.map(|(id, _)| id).or(unnamed_row);
        let admitted = match target {
            None => expect.admits(None),
            Some(row_id) => {
                let mut rows = stmts.held.query([row_id])?;
                match rows.next()? {
                    None => expect.admits(None),
                    Some(row) => match codec::decode(&raw_row(row)?) {
                        Ok(mut held) => {
                            // The engine's kept hash is the content's while
                            // the triggers are in place (they clear it on
                            // any other write): no hashing needed then.
                            let kept = held.content_hash.take();
                            match (expect.hash(), kept) {
                                (Some(e), Some(k)) if e == k => true,
                                _ => {
                                    held.normalize();
                                    expect.admits(Some(&held))
                                }
                            }
                        }
                        // Someone wrote what the engine cannot even read.
                        Err(_) => false,
                    },
                }
            }
        };
        if !admitted {
            return Ok(WriteOutcome::Changed);
        }
    }
    if let Some((_, stored_version)) = existing {
        if stored_version > c.version {
            return Ok(WriteOutcome::Stale { stored_version });
        }
    }

    scratch.fill(c);
    let row_id = scratch.with_params(c, |params| -> rusqlite::Result<i64> {
        // The statement's parameters followed by the row id.
        fn with_row<'a>(
            params: &[&'a dyn rusqlite::ToSql],
            row_id: &'a i64,
        ) -> Vec<&'a dyn rusqlite::ToSql> {
            let mut all = Vec::with_capacity(params.len() + 1);
            all.extend_from_slice(params);
            all.push(row_id as &dyn rusqlite::ToSql);
            all
        }
        Ok(match (existing, unnamed_row) {
            (Some((id, _)), dup) => {
                stmts.update.execute(with_row(params, &id).as_slice())?;
                if let Some(dup) = dup.filter(|d| *d != id) {
                    // The contact already has a row here: the hand-made row
                    // was matched to it, so it is a duplicate, merged into
                    // this one.
                    tx.prepare_cached("DELETE FROM contacts WHERE id = ?1")?
                        .execute([dup])?;
                }
                id
            }
            (None, Some(row)) => {
                tx.prepare_cached(&sql.write_back)?
                    .execute(with_row(params, &row).as_slice())?;
                row
            }
            (None, None) => {
                stmts.insert.execute(&params[..])?;
                tx.last_insert_rowid()
            }
        })
    })?;
    Ok(WriteOutcome::Applied {
        native_id: row_id.to_string(),
    })
}

/// Decodes a change image into an upsert, or an undecodable change naming
/// the record and the field.
fn decode_image(row_id: &str, contact_id: Option<&str>, image: Option<&str>) -> ChangeKind {
    let record = || match contact_id {
        Some(id) => id.to_string(),
        None => format!("row {row_id}"),
    };
    let Some(image) = image else {
        return ChangeKind::Undecodable {
            invalid: Invalid::new(record(), "record", "the change has no row image"),
            payload: None,
        };
    };
    let map = match serde_json::from_str::<serde_json::Value>(image) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => {
            return ChangeKind::Undecodable {
                invalid: Invalid::new(
                    record(),
                    "record",
                    "the change's row image is not a JSON object",
                ),
                payload: None,
            }
        }
    };
    let raw = codec::raw_from_image(&map);
    match codec::decode(&raw) {
        Ok(c) => ChangeKind::Upsert(Box::new(c)),
        Err(invalid) => ChangeKind::Undecodable {
            invalid,
            payload: Some(serde_json::Value::Object(map)),
        },
    }
}

#[async_trait]
impl ChangeSource for SqliteStore {
    /// Changes made by anyone but this store's own writer (the sqlite3 CLI,
    /// an application), after `from`, in commit order. The checkpoint is the
    /// last change's sequence number as decimal text.
    async fn read_changes(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        self.lock()?.read_changes_sync(from, limit)
    }

    /// Deletes the captured changes up to and including `upto`.
    async fn acknowledge(&mut self, upto: &Checkpoint) -> Result<(), StoreError> {
        self.lock()?.acknowledge_sync(upto)
    }

    /// The newest captured change's sequence number (`None` when the
    /// change table is empty: reading from the start then reads nothing old).
    async fn current_position(&mut self) -> Result<Option<Checkpoint>, StoreError> {
        let inner = self.lock()?;
        let seq: Option<i64> = inner
            .conn
            .query_row("SELECT MAX(seq) FROM _contact_sync_changes", [], |r| {
                r.get(0)
            })
            .map_err(inner.err("reading the change table's position"))?;
        Ok(seq.map(|s| Checkpoint::new(s.to_string())))
    }
}

#[async_trait]
impl RecordSink for SqliteStore {
    /// One IMMEDIATE transaction per batch, change capture suppressed.
    /// Upsert keyed by `contact_id` with the version guard; a write whose
    /// `external_ids[<store name>]` names a row without `contact_id` updates
    /// that row (write-back of a minted id; no version guard, since the row
    /// was unknown to the sync). If the contact already has another row
    /// here, that row is updated and the hand-made duplicate is removed.
    async fn write_batch(&mut self, writes: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.lock()?.write_batch_sync(writes, None)
    }

    /// Conditional writes, checked and written in one IMMEDIATE
    /// transaction ([`Conditional::Atomic`]), on a blocking thread.
    async fn write_batch_if(
        &mut self,
        writes: Vec<Contact>,
        expect: &[Expect],
    ) -> Result<(Vec<WriteOutcome>, Vec<Contact>), StoreError> {
        assert_eq!(writes.len(), expect.len(), "one condition per write");
        let expect = expect.to_vec();
        self.on_blocking_thread(move |inner| {
            let outcomes = inner.write_batch_sync(&writes, Some(&expect))?;
            Ok((outcomes, writes))
        })
        .await
    }

    /// On a blocking thread: the engine's backfill reads canonical while
    /// this writes.
    async fn write_batch_owned(
        &mut self,
        writes: Vec<Contact>,
    ) -> Result<(Vec<WriteOutcome>, Vec<Contact>), StoreError> {
        self.on_blocking_thread(move |inner| {
            let outcomes = inner.write_batch_sync(&writes, None)?;
            Ok((outcomes, writes))
        })
        .await
    }

    /// Drops the identity indexes (see `schema::drop_identity_indexes`);
    /// `find_by_identity` scans the table meanwhile.
    async fn begin_bulk_load(&mut self) -> Result<(), StoreError> {
        let inner = self.lock()?;
        schema::drop_identity_indexes(&inner.conn).map_err(inner.err("starting a bulk load"))
    }

    /// Builds the identity indexes again (opening the file does it too,
    /// after a crash).
    async fn end_bulk_load(&mut self) -> Result<(), StoreError> {
        self.on_blocking_thread(|inner| {
            // The index sort spills to temporary files: on disk, not in
            // memory (the connection keeps statement journals in memory).
            let conn = &inner.conn;
            let built = conn
                .pragma_update(None, "temp_store", "FILE")
                .and_then(|()| schema::create_identity_indexes(conn));
            let restored = conn.pragma_update(None, "temp_store", "MEMORY");
            built.and(restored).map_err(inner.err("ending a bulk load"))
        })
        .await
    }

    async fn read(&mut self, contact_ids: &[String]) -> Result<Vec<Contact>, StoreError> {
        self.lock()?.read_sync(contact_ids)
    }

    async fn scan(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        let after = after.map(str::to_string);
        self.on_blocking_thread(move |inner| inner.scan_sync(after.as_deref(), limit))
            .await
    }

    /// Rows the engine wrote keep the hash in `content_hash` (any other
    /// writer's change clears it, see the crate docs): only the rest are
    /// read and hashed.
    async fn scan_hashes(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecordHash>, StoreError> {
        let after = after.map(str::to_string);
        self.on_blocking_thread(move |inner| inner.scan_hashes_sync(after.as_deref(), limit))
            .await
    }

    /// Undecodable rows (broken JSON in a text column written by another
    /// program) are named, not left out.
    async fn scan_hashes_checked(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<HashScan, StoreError> {
        let after = after.map(str::to_string);
        self.on_blocking_thread(move |inner| {
            inner.scan_hashes_checked_sync(after.as_deref(), limit)
        })
        .await
    }

    /// Rows with a `contact_id` and no `deleted_at`.
    async fn count(&mut self) -> Result<u64, StoreError> {
        self.lock()?.count_sync()
    }

    /// Uses the indexes on `_primary_email` / `_primary_phone`.
    async fn find_by_identity(
        &mut self,
        emails: &[String],
        phones: &[String],
    ) -> Result<Vec<Contact>, StoreError> {
        self.lock()?.find_by_identity_sync(emails, phones)
    }
}

impl StoreInfo for SqliteStore {
    fn name(&self) -> &str {
        &self.name
    }

    /// The `version` column is kept.
    fn keeps_version(&self) -> bool {
        true
    }

    /// The triggers clear `content_hash` on every write but the engine's
    /// (and opening a file whose triggers did not clears them all).
    fn conditional_writes(&self) -> Conditional {
        Conditional::Atomic
    }

    /// The capture triggers log every change with its row image.
    fn logs_every_change(&self) -> bool {
        true
    }

    fn keeps_content_hash(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `find_by_identity` must search the identity indexes, never scan the
    /// table.
    #[test]
    fn find_by_identity_uses_the_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db"), "local").expect("open");
        let inner = store.lock().expect("lock");
        let mut stmt = inner
            .conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                inner.sql.find_by_identity
            ))
            .expect("explain");
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params!["[\"a@b.c\"]", "[\"+15550001\"]"], |r| {
                r.get::<_, String>(3)
            })
            .expect("plan")
            .collect::<rusqlite::Result<_>>()
            .expect("plan rows");
        let plan = plan.join("\n");
        assert!(plan.contains(schema::PRIMARY_EMAIL_INDEX), "{plan}");
        assert!(plan.contains(schema::PRIMARY_PHONE_INDEX), "{plan}");
        assert!(!plan.contains("SCAN contacts"), "{plan}");
    }

    /// Scanning must walk the contact_id index, not sort the table.
    #[test]
    fn scan_walks_the_contact_id_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db"), "local").expect("open");
        let inner = store.lock().expect("lock");
        let mut stmt = inner
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", inner.sql.scan))
            .expect("explain");
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params!["", 10], |r| r.get::<_, String>(3))
            .expect("plan")
            .collect::<rusqlite::Result<_>>()
            .expect("plan rows");
        let plan = plan.join("\n");
        assert!(plan.contains("USING INDEX"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
