//! The state database (SQLite): everything the engine must remember between
//! cycles and across crashes.
//!
//! - `checkpoints`: per store, the change-capture position (opaque text).
//! - `cursors`: per store, the last journal `seq` it has durably applied.
//! - `store_records`: per (store, contact): the store's own id, the canonical
//!   version the store last agreed with (the merge base), and the content
//!   hash last written to or read from it (the echo filter).
//! - `journal`: append-only change log (audit trail and propagation feed).
//! - `conflicts`, `dead_letters`, `runs`, `meta`.
//!
//! Writes go through a [`StateTx`] so that one batch's journal entries,
//! conflicts, dead letters, sync records and checkpoint commit together.
//! Single-instance: [`StateDb::lock`] takes an OS file lock beside the
//! database; a second daemon gets [`StateError::Locked`].

use std::path::{Path, PathBuf};

use contact_sync_core::{DeadLetter, FieldConflict, JournalEntry, Timestamp};
use serde::Serialize;

/// Errors of the state database.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the lock. The message says who and how to check.
    #[error("state database {path} is in use by another contact-sync (pid {pid}, since {since}); stop it first, or point --config at another data directory")]
    Locked {
        path: PathBuf,
        pid: String,
        since: String,
    },
    #[error("state database {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database: corrupt {what}: {message}")]
    Corrupt { what: String, message: String },
}

pub type Result<T> = std::result::Result<T, StateError>;

/// What the engine remembers about one contact in one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    pub last_error: Option<String>,
    pub last_error_at: Option<Timestamp>,
    /// Errors since the last success.
    pub consecutive_errors: u64,
    /// Sum of all run stats so far.
    pub totals: RunStats,
}

/// The held single-instance lock; released on drop (and by the OS when the
/// process dies, even by kill -9).
pub struct StateLock {
    // the open lock file (flock'd)
}

/// The state database.
pub struct StateDb {
    conn: rusqlite::Connection,
    path: Option<PathBuf>,
}

/// One write transaction; nothing is visible to others until [`StateTx::commit`].
pub struct StateTx<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl StateDb {
    /// Opens (creating and migrating when needed) the state database at
    /// `path`, in WAL mode. Does not take the lock.
    pub fn open(path: &Path) -> Result<StateDb> {
        todo!()
    }
    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<StateDb> {
        todo!()
    }
    /// Takes the single-instance lock (`<path>.lock`, flock, non-blocking),
    /// writing pid and start time into it. In-memory: always succeeds.
    pub fn lock(&self) -> Result<StateLock> {
        todo!()
    }
    /// Whether some process holds the lock now (for `status`): Some((pid, since)).
    pub fn lock_holder(&self) -> Result<Option<(String, String)>> {
        todo!()
    }

    pub fn tx(&mut self) -> Result<StateTx<'_>> {
        todo!()
    }

    // --- reads ---
    pub fn checkpoint(&self, store: &str) -> Result<Option<String>> {
        todo!()
    }
    /// Last journal seq applied by `consumer` (a store name); 0 when none.
    pub fn cursor(&self, consumer: &str) -> Result<i64> {
        todo!()
    }
    /// Highest journal seq; 0 when empty.
    pub fn journal_head(&self) -> Result<i64> {
        todo!()
    }
    /// Entries with `seq > after` and `seq <= upto`, in seq order, at most `limit`.
    pub fn journal_after(&self, after: i64, upto: i64, limit: usize) -> Result<Vec<JournalEntry>> {
        todo!()
    }
    /// Entries of one contact, newest first, at most `limit`.
    pub fn journal_of(&self, contact_id: &str, limit: usize) -> Result<Vec<JournalEntry>> {
        todo!()
    }
    /// The entry that produced `version` of `contact_id`, if any.
    pub fn journal_version(&self, contact_id: &str, version: i64) -> Result<Option<JournalEntry>> {
        todo!()
    }
    /// The entry whose `prev_version` is `version` (to rebuild the record at `version` from its before-image).
    pub fn journal_after_version(
        &self,
        contact_id: &str,
        version: i64,
    ) -> Result<Option<JournalEntry>> {
        todo!()
    }
    pub fn store_record(&self, store: &str, contact_id: &str) -> Result<Option<StoreRecord>> {
        todo!()
    }
    /// Many at once (one query per chunk of ids); missing ids are absent.
    pub fn store_records(&self, store: &str, contact_ids: &[String]) -> Result<Vec<StoreRecord>> {
        todo!()
    }
    pub fn store_record_by_native(
        &self,
        store: &str,
        native_id: &str,
    ) -> Result<Option<StoreRecord>> {
        todo!()
    }
    /// Number of sync records of a store, live ones only.
    pub fn store_record_count(&self, store: &str) -> Result<u64> {
        todo!()
    }
    /// `status = 'open'` only when `open_only`. Newest first.
    pub fn conflicts(&self, open_only: bool) -> Result<Vec<ConflictRow>> {
        todo!()
    }
    pub fn conflict(&self, id: i64) -> Result<Option<ConflictRow>> {
        todo!()
    }
    pub fn open_conflict_count(&self) -> Result<u64> {
        todo!()
    }
    /// Newest first, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        todo!()
    }
    pub fn dead_letter_count(&self) -> Result<u64> {
        todo!()
    }
    pub fn store_status(&self, store: &str) -> Result<StoreStatus> {
        todo!()
    }
    /// Every store that has a checkpoint, cursor, record or run, sorted.
    pub fn known_stores(&self) -> Result<Vec<String>> {
        todo!()
    }
    /// Free-form key/value (e.g. `initial_sync_done`, `backfill:<store>`).
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        todo!()
    }
}

impl StateTx<'_> {
    pub fn set_checkpoint(&self, store: &str, checkpoint: &str) -> Result<()> {
        todo!()
    }
    pub fn set_cursor(&self, consumer: &str, seq: i64) -> Result<()> {
        todo!()
    }
    /// Appends an entry, assigning and returning its `seq` (the entry's own `seq` is ignored).
    pub fn append_journal(&self, entry: &JournalEntry) -> Result<i64> {
        todo!()
    }
    /// Inserts or replaces the record keyed by (store, contact_id).
    pub fn put_store_record(&self, rec: &StoreRecord) -> Result<()> {
        todo!()
    }
    pub fn delete_store_record(&self, store: &str, contact_id: &str) -> Result<()> {
        todo!()
    }
    pub fn add_conflict(
        &self,
        contact_id: &str,
        store: &str,
        conflict: &FieldConflict,
        at: Timestamp,
    ) -> Result<i64> {
        todo!()
    }
    /// Marks a conflict settled (`kept_canonical` / `kept_incoming`).
    pub fn resolve_conflict(&self, id: i64, status: &str, at: Timestamp) -> Result<()> {
        todo!()
    }
    /// Appends a dead letter (its `id` is ignored); returns the new id.
    pub fn add_dead_letter(&self, dl: &DeadLetter) -> Result<i64> {
        todo!()
    }
    /// Adds a run's stats to the store's totals; `error = None` marks a success at `at`
    /// (resets consecutive errors), `Some` records the error.
    pub fn record_run(
        &self,
        store: &str,
        stats: &RunStats,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<()> {
        todo!()
    }
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        todo!()
    }
    pub fn commit(self) -> Result<()> {
        todo!()
    }
}
