//! The state database (SQLite, or Postgres with `[state] url`): everything
//! the engine must remember between cycles and across crashes.
//!
//! - `checkpoints`: per store, the change-capture position (opaque text).
//! - `cursors`: per store, the last journal `seq` it has durably applied.
//! - `store_records`: per (store, contact): the store's own id, the canonical
//!   version the store last agreed with (the merge base), and the content
//!   hash last written to or read from it (the echo filter).
//! - `journal`: append-only change log (audit trail and propagation feed).
//! - `conflicts`, `dead_letters`, `store_stats` (run totals per store), `meta`.
//!
//! Opening migrates forward (refinery, both backends: see `schema.rs`) and
//! refuses a database written by a newer build.
//!
//! Writes go through a [`StateTx`] so that one batch's journal entries,
//! conflicts, dead letters, sync records and checkpoint commit together;
//! one write transaction at a time (on Postgres, across connections too),
//! so journal seqs grow in commit order. On Postgres a [`Fence`] makes
//! every commit conditional on a lease still being held.
//! Single-instance: [`StateDb::lock`] takes an OS file lock beside the
//! database (Postgres: a session advisory lock); a second daemon gets
//! [`StateError::Locked`].

mod console;
mod db;
mod pg;
pub use console::{ContactHit, Page};
mod dead_letters;
pub use dead_letters::{DeadLetterClosed, DeadLetterRow, DeadLetterStatus};
mod history;
mod journal_cache;
pub use history::{bucket_of, HistoryBucket, BUCKET_SECS, HISTORY_DAYS};
pub mod lease;
mod lock;
mod migrate_pg;
pub use migrate_pg::{copy_sqlite_to_postgres, MigrateError, MigrationReport, TableRows};
mod paused;
mod people;
pub use paused::{Decision, Parked, PauseKind, PausedStore};
mod requests;
pub use requests::{Request, RequestKind, RequestStatus};

/// The schema version this build writes (the same on both backends).
pub const SCHEMA_VERSION: i64 = schema::SCHEMA_VERSION;
pub use people::Erasure;
mod read;
mod retention;
pub use retention::{CompactReport, JOURNAL_CONSUMER_PREFIX, LAST_COMPACTED_META};
mod schema;
mod search;
pub use search::{SEARCH_FILL_DONE, SEARCH_FILL_META};

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use contact_sync_core::model::{format_ts, now};
use contact_sync_core::{DeadLetter, FieldConflict, JournalEntry, Resolution, Timestamp};
use rusqlite::Connection;
use serde::Serialize;

use crate::db::{p, Backend};

/// Errors of the state database.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the lock. The message says who and how to check.
    #[error("state database {path} is in use by another contact-sync (pid {pid}, since {since}); stop it first (read-only and operator commands work beside it)")]
    Locked {
        path: PathBuf,
        pid: String,
        since: String,
    },
    #[error("state database {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A fenced commit found its lease taken over: the transaction was
    /// rolled back. The engine must stop (another daemon does the work).
    #[error("lease {lease} is no longer held by {holder} (token {token}): another daemon took over; nothing was committed")]
    Fenced {
        lease: String,
        holder: String,
        token: i64,
    },
    #[error("state database: corrupt {what}: {message}")]
    Corrupt { what: String, message: String },
    /// A write named something that does not exist (e.g. an unknown conflict id).
    #[error("state database: no such {what}")]
    NotFound { what: String },
    /// A write was given a value it cannot store (e.g. an unknown conflict status).
    #[error("state database: invalid {what}: {message}")]
    Invalid { what: String, message: String },
}

pub type Result<T> = std::result::Result<T, StateError>;

impl StateError {
    /// A commit refused because the lease it was fenced by is lost.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StateError::Fenced { .. })
    }
}

/// A lease every commit must still hold (Postgres; SQLite ignores it):
/// the commit checks, in its own transaction, that `leases` has the row
/// (`lease`, `holder`, `token`), and otherwise rolls back with
/// [`StateError::Fenced`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lease: String,
    pub holder: String,
    pub token: i64,
}

/// Where the state database is: a SQLite file or a Postgres database.
/// (`Default`: an empty path, for configurations filled in later.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateTarget {
    Path(PathBuf),
    /// A connection string (a secret: never shown whole).
    Url(String),
}

impl Default for StateTarget {
    fn default() -> Self {
        StateTarget::Path(PathBuf::new())
    }
}

impl StateTarget {
    /// For messages: the path, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            StateTarget::Path(p) => p.display().to_string(),
            StateTarget::Url(u) => pg::redact(u),
        }
    }
}

/// What the engine remembers about one contact in one store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreRecord {
    pub store: String,
    pub contact_id: String,
    /// The store's own id for the record (may equal `contact_id`).
    pub native_id: Option<String>,
    /// The canonical version the store last agreed with (merge base); 0 when
    /// the store has never agreed with any version.
    pub synced_version: i64,
    /// Content hash last written to or read from the store.
    pub hash: String,
    /// Whether that content was a tombstone.
    pub deleted: bool,
    /// The store is owed a write of canonical's record (a write refused
    /// because someone edited the record there, a drift repair, a minted id
    /// to write back), even if it holds canonical's content; the write is
    /// conditional on `hash`.
    pub needs_write: bool,
    /// The owed write is a minted `contact_id` going back to a record the
    /// store holds without one (it cannot be read by that id yet).
    pub writeback: bool,
    /// Hashes of images the engine read from the store and merged out of
    /// turn (after a refused conditional write); when the store's change
    /// stream delivers one of them it is not a new edit.
    pub late: Vec<String>,
}

/// An open or settled conflict as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictRow {
    pub id: i64,
    pub contact_id: String,
    /// The store the incoming side came from.
    pub store: String,
    pub conflict: FieldConflict,
    /// `open`, `kept_canonical`, `kept_incoming`.
    pub status: String,
    pub created_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
}

/// Totals of one engine step for one store, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    pub captured: u64,
    pub applied: u64,
    pub written: u64,
    pub skipped_echo: u64,
    pub dead_letters: u64,
    pub conflicts: u64,
}

/// Per-store status summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoreStatus {
    pub store: String,
    pub last_success: Option<Timestamp>,
    /// The most recent error, kept after a later success (then
    /// `consecutive_errors` is 0) so `status` can still show it.
    pub last_error: Option<String>,
    pub last_error_at: Option<Timestamp>,
    /// Errors since the last success.
    pub consecutive_errors: u64,
    /// Sum of all run stats so far.
    pub totals: RunStats,
}

/// The held single-instance lock; released on drop (and by the OS when the
/// process dies, even by kill -9).
#[derive(Debug)]
pub struct StateLock {
    /// The open, flock'd lock file; `None` for an in-memory database.
    file: Option<File>,
    /// Postgres: the connection holding the session advisory lock.
    pg: Option<pg::PgConn>,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            lock::release(file);
        }
        // Closing the file releases the flock.
        if let Some(pg) = &self.pg {
            lock::release_pg(pg);
        }
    }
}

/// The state database.
#[derive(Debug)]
pub struct StateDb {
    db: Backend,
    path: Option<PathBuf>,
    fences: Vec<Fence>,
    /// The entries this handle's transactions committed, decoded
    /// (`journal_cache`).
    journal: journal_cache::JournalCache,
}

/// One write transaction; nothing is visible to others until [`StateTx::commit`].
/// Dropping it without committing rolls everything back.
pub struct StateTx<'a> {
    db: &'a Backend,
    fences: &'a [Fence],
    done: bool,
    journal: &'a journal_cache::JournalCache,
    /// Entries appended in this transaction (with their JSON's length),
    /// for the cache at commit.
    appended: std::cell::RefCell<Vec<(JournalEntry, usize)>>,
    /// Entries rewritten or removed in this transaction: the cache is
    /// emptied at commit.
    rewrote_journal: std::cell::Cell<bool>,
}

impl Drop for StateTx<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.db.rollback();
        }
    }
}

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows per bulk statement on Postgres.
const PG_BULK: usize = 5_000;

/// Longest error text kept by [`StateTx::record_run`].
const MAX_ERROR_LEN: usize = 2000;

/// Pragmas every connection gets. `wal` is false for in-memory databases.
fn configure(conn: &Connection, wal: bool) -> rusqlite::Result<std::result::Result<(), String>> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    // One plan per statement text. Without it SQLite (3.45+) treats a
    // bound `LIMIT ?` as a planner hint and prepares the statement again
    // at every step after a new binding: the journal reads parsed their
    // SQL on every call (7 % of the engine's CPU under a busy Postgres).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    if wal {
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok(Err(format!(
                "cannot switch to WAL mode (journal_mode is {mode}); is the file on a network filesystem?"
            )));
        }
        // NORMAL is durable across a process crash in WAL mode (only an OS
        // crash can lose the last commits), which is what restarts need.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(Ok(()))
}

/// Truncates `s` to at most `max` bytes on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn to_json<T: Serialize + ?Sized>(value: &T, what: impl FnOnce() -> String) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StateError::Invalid {
        what: what(),
        message: e.to_string(),
    })
}

impl StateDb {
    pub(crate) fn conn(&self) -> &Backend {
        &self.db
    }

    fn sqlite(conn: Connection, path: Option<PathBuf>, wal: bool) -> Result<StateDb> {
        let err = |message: String| StateError::Open {
            path: path.clone().unwrap_or_else(|| PathBuf::from(":memory:")),
            message,
        };
        let mut conn = conn;
        configure(&conn, wal)
            .map_err(|e| err(format!("configuring: {e}")))?
            .map_err(err)?;
        schema::migrate_sqlite(&mut conn).map_err(err)?;
        Ok(StateDb {
            db: Backend::Sqlite(conn),
            path,
            fences: Vec::new(),
            journal: Default::default(),
        })
    }

    /// Opens (creating and migrating when needed) the state database at
    /// `path`, in WAL mode. Does not take the lock. Creates the parent
    /// directory when it is missing.
    pub fn open(path: &Path) -> Result<StateDb> {
        let err = |message: String| StateError::Open {
            path: path.to_path_buf(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| err(format!("creating directory {}: {e}", parent.display())))?;
        }
        let conn = Connection::open(path).map_err(|e| err(format!("opening: {e}")))?;
        Self::sqlite(conn, Some(path.to_path_buf()), true)
    }
    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<StateDb> {
        let conn = Connection::open_in_memory().map_err(|e| StateError::Open {
            path: PathBuf::from(":memory:"),
            message: format!("opening: {e}"),
        })?;
        Self::sqlite(conn, None, false)
    }
    /// Opens (migrating when needed) the state database in the Postgres
    /// database at `url` (`postgres://user:password@host:port/db`): a
    /// database the user owns; no extension is needed. Its connection
    /// lives on a thread of its own. Does not take the lock.
    pub fn open_url(url: &str) -> Result<StateDb> {
        Ok(StateDb {
            db: Backend::Pg(pg::PgConn::open(url, BUSY_TIMEOUT)?),
            path: None,
            fences: Vec::new(),
            journal: Default::default(),
        })
    }
    /// [`StateDb::open`] or [`StateDb::open_url`].
    pub fn open_target(target: &StateTarget) -> Result<StateDb> {
        match target {
            StateTarget::Path(p) => Self::open(p),
            StateTarget::Url(u) => Self::open_url(u),
        }
    }
    /// Whether a state database exists at `target` (a SQLite file, or a
    /// Postgres database that was set up by a build of contact-sync);
    /// creates nothing.
    pub fn exists(target: &StateTarget) -> Result<bool> {
        match target {
            StateTarget::Path(p) => Ok(p.exists()),
            StateTarget::Url(u) => pg::has_state(u),
        }
    }
    /// Whether the database is on Postgres.
    pub fn is_postgres(&self) -> bool {
        self.db.is_pg()
    }
    /// The path, or the Postgres URL without its password (for messages).
    pub fn location(&self) -> String {
        match (&self.db, &self.path) {
            (Backend::Pg(pg), _) => pg.location.clone(),
            (_, Some(p)) => p.display().to_string(),
            (_, None) => ":memory:".into(),
        }
    }
    /// Sets (or clears) the lease every later commit must still hold
    /// (Postgres; ignored on SQLite, where the file lock keeps a single
    /// writer process).
    pub fn set_fence(&mut self, fence: Option<Fence>) {
        // Another holder may have written the journal since.
        self.journal.clear();
        self.fences = fence.into_iter().collect();
    }
    /// Sets the leases every later commit must still hold, all of them (a
    /// daemon holding the work of several stores); empty: none.
    pub fn set_fences(&mut self, fences: Vec<Fence>) {
        // Another holder may have written the journal since.
        self.journal.clear();
        self.fences = fences;
    }
    /// The leases commits are fenced by.
    pub fn fences(&self) -> &[Fence] {
        &self.fences
    }
    /// Takes the single-instance lock, non-blocking. SQLite: `<path>.lock`
    /// (flock) holding pid and start time; in memory: always succeeds.
    /// Postgres: a session advisory lock on this database's connection,
    /// the holder ("pid since host") kept in meta.
    ///
    /// Another live holder (another process, or another `StateLock` of this
    /// one) gives [`StateError::Locked`] with the pid and start time it wrote.
    pub fn lock(&self) -> Result<StateLock> {
        if let Backend::Pg(pg) = &self.db {
            lock::acquire_pg(&self.db, pg)?;
            return Ok(StateLock {
                file: None,
                pg: Some(pg.handle()),
            });
        }
        let file = match &self.path {
            Some(path) => Some(lock::acquire(path)?),
            None => None,
        };
        Ok(StateLock { file, pg: None })
    }
    /// Whether some process holds the lock now (for `status`): Some((pid, since)).
    /// This process counts too, when it holds a [`StateLock`].
    pub fn lock_holder(&self) -> Result<Option<(String, String)>> {
        if self.db.is_pg() {
            return lock::holder_pg(&self.db);
        }
        match &self.path {
            Some(path) => lock::holder(path),
            None => Ok(None),
        }
    }

    /// Every lease, by name, with whether it is live by the server's clock
    /// (several daemons on a Postgres state database; none on SQLite).
    pub fn leases(&self) -> Result<Vec<lease::LeaseRow>> {
        if !self.db.is_pg() {
            return Ok(Vec::new());
        }
        lease::rows(&self.db)
    }

    /// Postgres: who holds the instance lock, leases aside (a daemon taking
    /// the engine lease waits until no command holds it). SQLite: None.
    pub fn command_lock_holder(&self) -> Result<Option<(String, String)>> {
        if self.db.is_pg() {
            return lock::command_holder_pg(&self.db);
        }
        Ok(None)
    }

    /// Starts a write transaction. SQLite: `BEGIN IMMEDIATE` (it takes the
    /// write lock now, waiting up to the busy timeout for another writer).
    /// Postgres: the writers' transaction lock, waited for as long.
    pub fn tx(&mut self) -> Result<StateTx<'_>> {
        self.db.begin()?;
        Ok(StateTx {
            db: &self.db,
            fences: &self.fences,
            done: false,
            journal: &self.journal,
            appended: Default::default(),
            rewrote_journal: Default::default(),
        })
    }

    /// The database file, `None` when in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The schema version of the open database (the latest migration).
    pub fn schema_version(&self) -> Result<i64> {
        schema::version(&self.db)
    }

    // --- reads ---
    pub fn checkpoint(&self, store: &str) -> Result<Option<String>> {
        read::checkpoint(&self.db, store)
    }
    /// Last journal seq applied by `consumer` (a store name); 0 when none.
    pub fn cursor(&self, consumer: &str) -> Result<i64> {
        read::cursor(&self.db, consumer)
    }
    /// Highest journal seq; 0 when empty.
    pub fn journal_head(&self) -> Result<i64> {
        read::journal_head(&self.db)
    }
    /// Entries with `seq > after` and `seq <= upto`, in seq order, at most `limit`.
    pub fn journal_after(&self, after: i64, upto: i64, limit: usize) -> Result<Vec<JournalEntry>> {
        let head = || read::journal_head(&self.db);
        if let Some(hit) = self.journal.after(after, upto, limit, head)? {
            debug_assert_eq!(
                hit,
                read::journal_after(&self.db, after, upto, limit)?,
                "cached journal entries after {after} up to {upto}"
            );
            return Ok(hit);
        }
        read::journal_after(&self.db, after, upto, limit)
    }
    /// Entries of one contact, newest first, at most `limit`.
    pub fn journal_of(&self, contact_id: &str, limit: usize) -> Result<Vec<JournalEntry>> {
        if limit == 1 {
            let head = || read::journal_head(&self.db);
            if let Some(e) = self.journal.newest_of(contact_id, None, head)? {
                debug_assert_eq!(
                    vec![e.clone()],
                    read::journal_of(&self.db, contact_id, 1)?,
                    "cached newest journal entry of {contact_id}"
                );
                return Ok(vec![e]);
            }
        }
        read::journal_of(&self.db, contact_id, limit)
    }
    /// The newest journal seq of each of `contact_ids` that has an entry
    /// (no entry is read or decoded).
    pub fn journal_newest_seqs(
        &self,
        contact_ids: &[String],
    ) -> Result<std::collections::HashMap<String, i64>> {
        read::journal_newest_seqs(&self.db, contact_ids)
    }
    /// The entry that produced `version` of `contact_id`, if any.
    pub fn journal_version(&self, contact_id: &str, version: i64) -> Result<Option<JournalEntry>> {
        let head = || read::journal_head(&self.db);
        if let Some(e) = self.journal.newest_of(contact_id, Some(version), head)? {
            debug_assert_eq!(
                Some(e.clone()),
                read::journal_version(&self.db, contact_id, version)?,
                "cached journal entry of {contact_id} v{version}"
            );
            return Ok(Some(e));
        }
        read::journal_version(&self.db, contact_id, version)
    }
    /// The entry whose `prev_version` is `version` (to rebuild the record at `version` from its before-image).
    pub fn journal_after_version(
        &self,
        contact_id: &str,
        version: i64,
    ) -> Result<Option<JournalEntry>> {
        read::journal_after_version(&self.db, contact_id, version)
    }
    pub fn store_record(&self, store: &str, contact_id: &str) -> Result<Option<StoreRecord>> {
        read::store_record(&self.db, store, contact_id)
    }
    /// Many at once (one query per chunk of ids); missing ids are absent.
    /// The order of the result is unspecified.
    pub fn store_records(&self, store: &str, contact_ids: &[String]) -> Result<Vec<StoreRecord>> {
        read::store_records(&self.db, store, contact_ids)
    }
    /// The record of `store` whose native id is `native_id` (a live one
    /// first, should several share it).
    pub fn store_record_by_native(
        &self,
        store: &str,
        native_id: &str,
    ) -> Result<Option<StoreRecord>> {
        read::store_record_by_native(&self.db, store, native_id)
    }
    /// Up to `limit` records of `store` that must be written again
    /// (`needs_write`), by contact id, after `after`.
    pub fn store_records_needing_write(
        &self,
        store: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoreRecord>> {
        read::store_records_needing_write(&self.db, store, after, limit)
    }
    /// Up to `limit` live records of `store` with a native id, by contact
    /// id, after `after`: what the engine last knew the store to hold
    /// (records whose content is unknown, an empty hash, left out).
    pub fn store_records_held(
        &self,
        store: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoreRecord>> {
        read::store_records_held(&self.db, store, after, limit)
    }
    /// Number of sync records of a store, live ones only.
    pub fn store_record_count(&self, store: &str) -> Result<u64> {
        read::store_record_count(&self.db, store)
    }
    /// `status = 'open'` only when `open_only`. Newest first.
    pub fn conflicts(&self, open_only: bool) -> Result<Vec<ConflictRow>> {
        read::conflicts(&self.db, open_only)
    }
    pub fn conflict(&self, id: i64) -> Result<Option<ConflictRow>> {
        read::conflict(&self.db, id)
    }
    pub fn open_conflict_count(&self) -> Result<u64> {
        read::open_conflict_count(&self.db)
    }
    /// Newest first, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        read::dead_letters(&self.db, limit)
    }
    pub fn dead_letter_count(&self) -> Result<u64> {
        read::dead_letter_count(&self.db)
    }
    /// The store's totals and last outcomes; all zero/empty for a store
    /// that never ran.
    pub fn store_status(&self, store: &str) -> Result<StoreStatus> {
        read::store_status(&self.db, store)
    }
    /// Every store that has a checkpoint, cursor, record or run, sorted.
    pub fn known_stores(&self) -> Result<Vec<String>> {
        read::known_stores(&self.db)
    }
    /// Free-form key/value (e.g. `initial_sync_done`, `backfill:<store>`).
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        read::meta(&self.db, key)
    }
}

impl StateTx<'_> {
    pub fn set_checkpoint(&self, store: &str, checkpoint: &str) -> Result<()> {
        self.db.execute(
            "INSERT INTO checkpoints (store, checkpoint, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (store) DO UPDATE
             SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at",
            p![store, checkpoint, format_ts(&now())],
        )?;
        Ok(())
    }
    pub fn set_cursor(&self, consumer: &str, seq: i64) -> Result<()> {
        self.db.execute(
            "INSERT INTO cursors (consumer, seq, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (consumer) DO UPDATE
             SET seq = excluded.seq, updated_at = excluded.updated_at",
            p![consumer, seq, format_ts(&now())],
        )?;
        Ok(())
    }
    /// Appends an entry, assigning and returning its `seq` (the entry's own `seq` is ignored).
    /// Seqs only grow, even across rolled-back or removed entries.
    pub fn append_journal(&self, entry: &JournalEntry) -> Result<i64> {
        let what = |part: &str| {
            format!(
                "journal entry {} v{} ({part})",
                entry.contact_id, entry.version
            )
        };
        let changes = to_json(&entry.changes, || what("changes"))?;
        let conflicts = to_json(&entry.conflicts, || what("conflicts"))?;
        let after = to_json(&entry.after, || what("after"))?;
        let bytes = changes.len() + conflicts.len() + after.len();
        let seq: i64 = self.db.query_value(
            "INSERT INTO journal (contact_id, version, prev_version, op, origin,
                                  changes, conflicts, after, hash, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING seq",
            p![
                entry.contact_id,
                entry.version,
                entry.prev_version,
                entry.op.as_str(),
                entry.origin,
                changes,
                conflicts,
                after,
                entry.hash,
                format_ts(&entry.at),
            ],
        )?;
        // The search index follows canonical in the same transaction.
        self.index_contacts([&entry.after])?;
        self.appended
            .borrow_mut()
            .push((journal_cache::as_decoded(entry.clone(), seq), bytes));
        Ok(seq)
    }
    /// Inserts or replaces the record keyed by (store, contact_id).
    pub fn put_store_record(&self, rec: &StoreRecord) -> Result<()> {
        self.put_store_records(std::slice::from_ref(rec))
    }

    /// [`put_store_record`](StateTx::put_store_record) for many records,
    /// with the statement prepared once (on Postgres, sent in one round
    /// trip).
    pub fn put_store_records(&self, recs: &[StoreRecord]) -> Result<()> {
        if self.db.is_pg() {
            return self.put_store_records_pg(recs);
        }
        let rows = recs
            .iter()
            .map(|rec| {
                p![
                    rec.store,
                    rec.contact_id,
                    rec.native_id,
                    rec.synced_version,
                    rec.hash,
                    rec.deleted,
                    if rec.writeback {
                        2
                    } else {
                        i64::from(rec.needs_write)
                    },
                    rec.late.join(" "),
                ]
            })
            .collect();
        self.db.execute_many(
            "INSERT INTO store_records
                 (store, contact_id, native_id, synced_version, hash, deleted, needs_write, late)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (store, contact_id) DO UPDATE
             SET native_id = excluded.native_id, synced_version = excluded.synced_version,
                 hash = excluded.hash, deleted = excluded.deleted,
                 needs_write = excluded.needs_write, late = excluded.late",
            rows,
        )?;
        Ok(())
    }
    /// [`StateTx::put_store_records`] on Postgres: one statement per
    /// chunk over `UNNEST` of arrays (a statement per record cost ~0.1 ms
    /// of server CPU each). One statement cannot upsert a key twice: the
    /// last record of each key is kept, which is what upserting them one
    /// after another leaves.
    fn put_store_records_pg(&self, recs: &[StoreRecord]) -> Result<()> {
        let mut last: std::collections::HashMap<(&str, &str), usize> =
            std::collections::HashMap::with_capacity(recs.len());
        for (i, r) in recs.iter().enumerate() {
            last.insert((r.store.as_str(), r.contact_id.as_str()), i);
        }
        let kept: Vec<&StoreRecord> = recs
            .iter()
            .enumerate()
            .filter(|(i, r)| last[&(r.store.as_str(), r.contact_id.as_str())] == *i)
            .map(|(_, r)| r)
            .collect();
        use db::Value::{IntArray, TextArray};
        for chunk in kept.chunks(PG_BULK) {
            let text = |f: &dyn Fn(&StoreRecord) -> Option<String>| {
                TextArray(chunk.iter().map(|r| f(r)).collect())
            };
            let int =
                |f: &dyn Fn(&StoreRecord) -> i64| IntArray(chunk.iter().map(|r| f(r)).collect());
            self.db.execute(
                "INSERT INTO store_records
                     (store, contact_id, native_id, synced_version, hash, deleted, needs_write, late)
                 SELECT * FROM UNNEST(?1::text[], ?2::text[], ?3::text[], ?4::int8[], ?5::text[],
                                      ?6::int8[], ?7::int8[], ?8::text[])
                 ON CONFLICT (store, contact_id) DO UPDATE
                 SET native_id = excluded.native_id, synced_version = excluded.synced_version,
                     hash = excluded.hash, deleted = excluded.deleted,
                     needs_write = excluded.needs_write, late = excluded.late",
                vec![
                    text(&|r| Some(r.store.clone())),
                    text(&|r| Some(r.contact_id.clone())),
                    text(&|r| r.native_id.clone()),
                    int(&|r| r.synced_version),
                    text(&|r| Some(r.hash.clone())),
                    int(&|r| i64::from(r.deleted)),
                    int(&|r| {
                        if r.writeback {
                            2
                        } else {
                            i64::from(r.needs_write)
                        }
                    }),
                    text(&|r| Some(r.late.join(" "))),
                ],
            )?;
        }
        Ok(())
    }
    /// Marks every record of `store` as owed a write (its change capture
    /// was lost: what it holds is no longer known). Each is written again on
    /// condition of what the engine last saw there, so a record edited in
    /// the meantime is found and merged. Returns how many.
    pub fn owe_all(&self, store: &str) -> Result<u64> {
        self.db.execute(
            "UPDATE store_records SET needs_write = 1 WHERE store = ?1 AND needs_write = 0",
            p![store],
        )
    }
    /// Removes the record keyed by (store, contact_id); absent is not an error.
    pub fn delete_store_record(&self, store: &str, contact_id: &str) -> Result<()> {
        self.db.execute(
            "DELETE FROM store_records WHERE store = ?1 AND contact_id = ?2",
            p![store, contact_id],
        )?;
        Ok(())
    }
    /// Records a conflict and returns its id. A conflict the merge settled
    /// by rule (`resolution` other than [`Resolution::Open`]) is stored
    /// already settled (`kept_incoming` / `kept_canonical`, resolved at
    /// `at`), so it shows in the audit list but not in the open count; an
    /// [`Resolution::Open`] one is `open` until [`StateTx::resolve_conflict`].
    pub fn add_conflict(
        &self,
        contact_id: &str,
        store: &str,
        conflict: &FieldConflict,
        at: Timestamp,
    ) -> Result<i64> {
        let what = |part: &str| format!("conflict {contact_id}/{} ({part})", conflict.field);
        let base = to_json(&conflict.base, || what("base"))?;
        let canonical = to_json(&conflict.canonical, || what("canonical"))?;
        let incoming = to_json(&conflict.incoming, || what("incoming"))?;
        let at = format_ts(&at);
        let (status, resolved_at) = match conflict.resolution {
            Resolution::Open => ("open", None),
            r if r.incoming_won() => ("kept_incoming", Some(at.as_str())),
            _ => ("kept_canonical", Some(at.as_str())),
        };
        self.db.query_value(
            "INSERT INTO conflicts (contact_id, store, field, base, canonical, incoming,
                 canonical_version, incoming_version, resolution, status, created_at, resolved_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING id",
            p![
                contact_id,
                store,
                conflict.field,
                base,
                canonical,
                incoming,
                conflict.canonical_version,
                conflict.incoming_version,
                conflict.resolution.as_str(),
                status,
                at,
                resolved_at,
            ],
        )
    }
    /// Marks a conflict settled (`kept_canonical` / `kept_incoming`).
    /// An unknown id is [`StateError::NotFound`], another status
    /// [`StateError::Invalid`].
    pub fn resolve_conflict(&self, id: i64, status: &str, at: Timestamp) -> Result<()> {
        if !matches!(status, "kept_canonical" | "kept_incoming") {
            return Err(StateError::Invalid {
                what: format!("status for conflict {id}"),
                message: format!("{status:?} is not kept_canonical or kept_incoming"),
            });
        }
        let n = self.db.execute(
            "UPDATE conflicts SET status = ?1, resolved_at = ?2 WHERE id = ?3",
            p![status, format_ts(&at), id],
        )?;
        if n == 0 {
            return Err(StateError::NotFound {
                what: format!("conflict {id}"),
            });
        }
        Ok(())
    }
    /// Appends a dead letter (its `id` is ignored); returns its id. The
    /// same refusal (store, record, field, reason) while one is open or
    /// dismissed is counted on that one instead (see schema V3).
    pub fn add_dead_letter(&self, dl: &DeadLetter) -> Result<i64> {
        let payload = dl
            .payload
            .as_ref()
            .map(|p| {
                to_json(p, || {
                    format!("dead letter {}/{} (payload)", dl.store, dl.record)
                })
            })
            .transpose()?;
        let at = format_ts(&dl.at);
        if let Some(row) = self.db.query_opt(
            "UPDATE dead_letters SET count = count + 1, last_seen = ?5,
                 payload = COALESCE(?6, payload)
             WHERE store = ?1 AND record = ?2 AND field = ?3 AND reason = ?4
               AND status IN ('open', 'dismissed')
             RETURNING id",
            p![dl.store, dl.record, dl.field, dl.reason, at, payload],
        )? {
            return row.get(0);
        }
        self.db.query_value(
            "INSERT INTO dead_letters (store, record, field, reason, payload, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            p![dl.store, dl.record, dl.field, dl.reason, payload, at],
        )
    }
    /// Adds a run's stats to the store's totals and to its run history
    /// (the console's charts); `error = None` marks a success at `at`
    /// (resets consecutive errors), `Some` records the error.
    /// The error text is kept (at most 2,000 bytes) after later successes
    /// as `last_error`; callers must keep secrets out of it.
    pub fn record_run(
        &self,
        store: &str,
        stats: &RunStats,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<()> {
        let when = at;
        let at = format_ts(&at);
        let (success, error_at) = match error {
            None => (Some(at.as_str()), None),
            Some(_) => (None, Some(at.as_str())),
        };
        let error = error.map(|e| truncate(e, MAX_ERROR_LEN));
        self.db.execute(
            "INSERT INTO store_stats (store, runs, captured, applied, written, skipped_echo,
                 dead_letters, conflicts, last_success, last_error, last_error_at,
                 consecutive_errors, updated_at)
             VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?12, ?11)
             ON CONFLICT (store) DO UPDATE SET
                 runs = store_stats.runs + 1,
                 captured = store_stats.captured + excluded.captured,
                 applied = store_stats.applied + excluded.applied,
                 written = store_stats.written + excluded.written,
                 skipped_echo = store_stats.skipped_echo + excluded.skipped_echo,
                 dead_letters = store_stats.dead_letters + excluded.dead_letters,
                 conflicts = store_stats.conflicts + excluded.conflicts,
                 last_success = COALESCE(excluded.last_success, store_stats.last_success),
                 last_error = COALESCE(excluded.last_error, store_stats.last_error),
                 last_error_at = COALESCE(excluded.last_error_at, store_stats.last_error_at),
                 consecutive_errors = CASE WHEN excluded.last_error IS NULL THEN 0
                                           ELSE store_stats.consecutive_errors + 1 END,
                 updated_at = excluded.updated_at",
            p![
                store,
                read::sql_u64(stats.captured),
                read::sql_u64(stats.applied),
                read::sql_u64(stats.written),
                read::sql_u64(stats.skipped_echo),
                read::sql_u64(stats.dead_letters),
                read::sql_u64(stats.conflicts),
                success,
                error,
                error_at,
                at,
                i64::from(error.is_some()),
            ],
        )?;
        self.record_history(store, stats, error.is_some(), &when)?;
        Ok(())
    }
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            p![key, value],
        )?;
        Ok(())
    }
    /// Removes a meta key; absent is not an error.
    pub fn delete_meta(&self, key: &str) -> Result<()> {
        self.db
            .execute("DELETE FROM meta WHERE key = ?1", p![key])?;
        Ok(())
    }
    pub(crate) fn conn(&self) -> &Backend {
        self.db
    }
    /// This transaction rewrites or removes journal entries: the handle's
    /// cached entries are dropped when it commits.
    pub(crate) fn journal_rewritten(&self) {
        self.rewrote_journal.set(true);
    }
    /// Makes every write of this transaction durable and visible. Under a
    /// fence (Postgres), only while the lease is held: otherwise nothing is
    /// committed and the answer is [`StateError::Fenced`].
    pub fn commit(mut self) -> Result<()> {
        let out = self.db.commit(self.fences);
        if out.is_ok() || self.db.is_pg() {
            // Postgres ends the transaction either way.
            self.done = true;
        }
        if self.rewrote_journal.get() {
            self.journal.clear();
        } else if out.is_ok() {
            self.journal.committed(self.appended.take());
        }
        out
    }

    // --- reads inside the transaction (they see its own writes) ---

    /// As [`StateDb::checkpoint`].
    pub fn checkpoint(&self, store: &str) -> Result<Option<String>> {
        read::checkpoint(self.db, store)
    }
    /// As [`StateDb::cursor`].
    pub fn cursor(&self, consumer: &str) -> Result<i64> {
        read::cursor(self.db, consumer)
    }
    /// As [`StateDb::journal_head`].
    pub fn journal_head(&self) -> Result<i64> {
        read::journal_head(self.db)
    }
    /// As [`StateDb::journal_version`].
    pub fn journal_version(&self, contact_id: &str, version: i64) -> Result<Option<JournalEntry>> {
        read::journal_version(self.db, contact_id, version)
    }
    /// As [`StateDb::store_record`].
    pub fn store_record(&self, store: &str, contact_id: &str) -> Result<Option<StoreRecord>> {
        read::store_record(self.db, store, contact_id)
    }
    /// As [`StateDb::store_records`].
    pub fn store_records(&self, store: &str, contact_ids: &[String]) -> Result<Vec<StoreRecord>> {
        read::store_records(self.db, store, contact_ids)
    }
    /// As [`StateDb::journal_newest_seqs`], inside the transaction (read
    /// from the database, never the cache): the writers' lock is held, so
    /// no other writer can append until it commits (a merge checks here
    /// that the journal did not move under it).
    pub fn journal_newest_seqs(&self, contact_ids: &[String]) -> Result<HashMap<String, i64>> {
        read::journal_newest_seqs(self.db, contact_ids)
    }
    /// As [`StateDb::store_record_by_native`].
    pub fn store_record_by_native(
        &self,
        store: &str,
        native_id: &str,
    ) -> Result<Option<StoreRecord>> {
        read::store_record_by_native(self.db, store, native_id)
    }
    /// As [`StateDb::meta`].
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        read::meta(self.db, key)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::StateDb;

    /// A fresh database on each backend: SQLite in memory, and a new
    /// Postgres database (the store-postgres harness: `CONTACT_SYNC_PG_URL`
    /// or a private cluster; it panics with instructions when there is no
    /// Postgres).
    pub(crate) fn both() -> Vec<StateDb> {
        let url = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(contact_sync_postgres::harness::shared().create_database());
        let dbs = vec![
            StateDb::open_in_memory().unwrap(),
            StateDb::open_url(&url).unwrap(),
        ];
        dbs
    }
}
