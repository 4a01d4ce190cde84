//! The two traits every store implements, with their contracts.
//!
//! - [`ChangeSource`]: changes a store has seen, from a durable [`Checkpoint`].
//! - [`RecordSink`]: idempotent, batched writes and reads keyed by `contact_id`.
//!
//! A store is usually both ([`Store`]). The engine owns all sync state; a store
//! keeps none of the engine's bookkeeping (no journal, no cursors), only what
//! its own change capture needs.

mod error;

pub use error::{RetryClass, StoreError};

use async_trait::async_trait;
use contact_sync_core::{Contact, Invalid};
use serde::{Deserialize, Serialize};

/// A position in a store's change stream, opaque to the engine (a sequence
/// number, an LSN, a watermark). The engine stores it in the state database
/// and hands it back; only the store that made it interprets it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checkpoint(pub String);

impl Checkpoint {
    pub fn new(s: impl Into<String>) -> Self {
        Checkpoint(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One change seen in a store.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The store's own id for the record (row id, person id); for stores
    /// whose key is `contact_id`, the `contact_id`.
    pub native_id: String,
    /// What happened.
    pub kind: ChangeKind,
}

/// What a change says about the record.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeKind {
    /// The record as it was at the change (or as it is now, for stores that
    /// can only read the current row). `contact_id` is empty when the store
    /// does not know it yet (a record created there): the engine matches or
    /// mints one and writes it back. A record with `deleted_at` set is a
    /// soft delete.
    Upsert(Box<Contact>),
    /// The record was removed outright. `contact_id` when the store still
    /// knows it; otherwise the engine finds it by `native_id`.
    Delete { contact_id: Option<String> },
    /// The row could not be read as a contact (broken JSON in a text column,
    /// a column of the wrong type). Goes to the dead-letter list.
    Undecodable {
        invalid: Invalid,
        payload: Option<serde_json::Value>,
    },
}

/// A page of changes.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeBatch {
    /// In commit order. Several changes of one record may appear; the
    /// engine applies them in order.
    pub changes: Vec<Change>,
    /// The checkpoint that covers every change in this batch: reading from
    /// it returns only later changes. Equal to the input when empty.
    pub checkpoint: Checkpoint,
    /// More changes are ready after `checkpoint`.
    pub has_more: bool,
}

/// Changes a store has seen since a checkpoint.
///
/// Contract:
/// - **Durable and repeatable**: reading does not consume. Until
///   [`acknowledge`](ChangeSource::acknowledge) is called with a checkpoint
///   at or after a change, reading from an earlier checkpoint returns that
///   change again (at-least-once). The engine stores the checkpoint only
///   after it has durably applied the batch.
/// - **Ordered**: changes come in commit order; a later change of a record
///   never comes before an earlier one.
/// - `from = None` means "from the oldest change still kept".
#[async_trait]
pub trait ChangeSource: Send {
    /// Up to `limit` changes after `from`.
    async fn read_changes(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError>;

    /// Everything up to and including `upto` is durably applied; the store
    /// may discard it (delete change-table rows, advance a replication
    /// slot). Idempotent; acknowledging an older checkpoint is a no-op.
    async fn acknowledge(&mut self, upto: &Checkpoint) -> Result<(), StoreError>;

    /// A checkpoint for "now": reading from it returns the changes made
    /// from this call on (and perhaps a few earlier ones again), not the
    /// records already there. The engine takes it at the start of an
    /// initial sync, whose copy then carries everything before it, and
    /// stores it as the store's checkpoint when the sync commits, so the
    /// first cycle after does not read the whole store again as changes
    /// (issue 14, observation 9). A store whose first read already starts
    /// at the present (a log that begins when capture was installed) may
    /// return `None` (the default): the engine then reads from `None`.
    async fn current_position(&mut self) -> Result<Option<Checkpoint>, StoreError> {
        Ok(None)
    }

    /// Whether the store wants to be told [`held`](ChangeSource::held):
    /// a store whose change stream cannot show a record removed while no
    /// engine was reading it (Twenty's destroys) until it has been told.
    /// Default: false.
    fn wants_held(&self) -> bool {
        false
    }

    /// What the engine's state database says this store holds: (contact
    /// id, native id) of every live record the engine wrote or read there.
    /// Given before the engine's first read of a store that
    /// [`wants_held`](ChangeSource::wants_held); a record of it the store no
    /// longer has is reported by a later read as a `Delete`. Default: ignored.
    fn held(&mut self, records: Vec<(String, String)>) {
        let _ = records;
    }

    /// Whether every read costs a request of a budget the store shares with
    /// its writes (Twenty's per-key rate limit). In a cycle that goes on
    /// with a backlog another store left (the engine's capture budget), the
    /// engine reads such a store only every
    /// few seconds, not in each short cycle. Default: false.
    fn metered_reads(&self) -> bool {
        false
    }
}

/// The result of one write in a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Durably applied (or already there). `native_id` is the store's own id
    /// for the record.
    Applied { native_id: String },
    /// The store holds a higher version; nothing was written.
    Stale { stored_version: i64 },
    /// The store refused this record for good (bad value for its schema,
    /// unique clash). Retrying will not help: it goes to dead letters.
    Rejected { field: String, reason: String },
    /// A conditional write ([`RecordSink::write_batch_if`]) found the record
    /// no longer as the engine last saw it: someone else wrote it since.
    /// Nothing was written. The engine reads the record and merges it like
    /// a captured change; it never retries the write blindly.
    Changed,
}

/// The condition of one conditional write: what the engine last saw of the
/// record in this store. The write applies only while the store still
/// holds that (compare-and-set); otherwise its outcome is
/// [`WriteOutcome::Changed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No condition: seeding, tools, an operator's explicit overwrite.
    Any,
    /// The store holds no live record for the contact (none, or a tombstone).
    Absent,
    /// The store's record, normalized, has this content hash. The tombstone
    /// hash ([`contact_sync_core::hash::tombstone_hash`]) also matches a
    /// record that is gone outright.
    Hash(String),
}

impl Expect {
    /// Whether a store holding `held` (normalized; `None` when it holds no
    /// record for the contact) may take the write.
    pub fn admits(&self, held: Option<&Contact>) -> bool {
        match (self, held) {
            (Expect::Any, _) => true,
            (Expect::Absent, None) => true,
            (Expect::Absent, Some(h)) => h.is_deleted(),
            (Expect::Hash(e), None) => e == contact_sync_core::hash::tombstone_hash(),
            (Expect::Hash(e), Some(h)) => contact_sync_core::content_hash(h) == *e,
        }
    }

    /// The hash this condition names, if any.
    pub fn hash(&self) -> Option<&str> {
        match self {
            Expect::Hash(h) => Some(h),
            _ => None,
        }
    }
}

/// How a store honours [`Expect`] (see [`StoreInfo::conditional_writes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    /// The check and the write are one atomic step (a row lock, a guarded
    /// statement, a filtered update): no edit can slip in between.
    Atomic,
    /// The store's record is read, compared, then written: an edit landing
    /// between the read and the write (a window of one round trip) is
    /// overwritten. The store documents the window.
    ReadThenWrite,
}

/// A record's id and content hash (tombstones have
/// [`contact_sync_core::hash::tombstone_hash`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHash {
    pub contact_id: String,
    pub hash: String,
}

impl RecordHash {
    /// The id and content hash of a record read in full (normalized first).
    pub fn of(mut c: Contact) -> Self {
        c.normalize();
        RecordHash {
            hash: contact_sync_core::content_hash(&c),
            contact_id: c.contact_id,
        }
    }
}

/// A record a scan found but could not read as a contact (a JSON field of
/// the wrong shape, a column of the wrong type): drift reports it, per
/// record, instead of leaving it out unseen.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    /// The `contact_id` the record carries (readable even when another
    /// field is not); empty when it has none.
    pub contact_id: String,
    /// The store's own id for it (person id, row id).
    pub native_id: String,
    /// Which field cannot be read, and why.
    pub invalid: Invalid,
}

/// A page of [`RecordSink::scan_hashes_checked`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HashScan {
    /// As [`RecordSink::scan_hashes`].
    pub hashes: Vec<RecordHash>,
    /// The records of the same range that could not be read, in
    /// `contact_id` order.
    pub unreadable: Vec<Unreadable>,
    /// The last `contact_id` the page covered, readable or not: the next
    /// page starts after it. `None` when the page is empty (the end).
    pub last: Option<String>,
}

impl HashScan {
    /// A page in which every record could be read.
    pub fn readable(hashes: Vec<RecordHash>) -> Self {
        HashScan {
            last: hashes.last().map(|h| h.contact_id.clone()),
            hashes,
            unreadable: Vec::new(),
        }
    }
}

/// A page of [`RecordSink::scan_checked`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordScan {
    /// As [`RecordSink::scan`].
    pub records: Vec<Contact>,
    /// The records of the same range that could not be read, in
    /// `contact_id` order.
    pub unreadable: Vec<Unreadable>,
    /// The last `contact_id` the page covered, readable or not: the next
    /// page starts after it. `None` when the page is empty (the end).
    pub last: Option<String>,
}

/// Idempotent, batched writes and reads keyed by `contact_id`.
///
/// Contract:
/// - **Idempotent**: applying the same write twice leaves the store as
///   applying it once. Creates use `contact_id` (or an id derived from it)
///   as the key, so a retry never duplicates.
/// - **Version guard**: a write applies only when the store holds no record
///   for the contact, or one whose `version` is not higher than the write's;
///   otherwise its outcome is [`WriteOutcome::Stale`]. Stores that cannot
///   keep a version apply every write.
/// - **Tombstones**: a contact with `deleted_at` set is written as the
///   store's delete (a row with `deleted_at`, a soft delete).
/// - **Outcomes**: `Ok` holds one outcome per write, in order. `Err` means
///   the batch may be partly applied; the engine retries it whole, which
///   idempotency makes safe.
/// - **Reads** return the store's current record (tombstones included),
///   normalized ([`Contact::normalize`]), with `contact_id` set.
/// - **Content hash**: the engine writes every contact with
///   [`Contact::content_hash`] set to `content_hash(contact)`. A store may
///   keep it as the hash of what it holds, and answer
///   [`scan_hashes`](RecordSink::scan_hashes) from it, as long as any other
///   writer's change to the record makes the store forget it.
#[async_trait]
pub trait RecordSink: Send {
    async fn write_batch(&mut self, writes: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError>;

    /// [`write_batch`](RecordSink::write_batch) taking the batch by value
    /// and handing it back with the outcomes: a store that writes on a
    /// blocking thread moves the batch there instead of copying it.
    async fn write_batch_owned(
        &mut self,
        writes: Vec<Contact>,
    ) -> Result<(Vec<WriteOutcome>, Vec<Contact>), StoreError> {
        let outcomes = self.write_batch(&writes).await?;
        Ok((outcomes, writes))
    }

    /// Conditional writes: `writes[k]` applies only if the store's record
    /// for its contact still satisfies `expect[k]` (same length); otherwise
    /// its outcome is [`WriteOutcome::Changed`] and nothing is written for
    /// it. Everything else as [`write_batch`](RecordSink::write_batch)
    /// (version guard, idempotence, one outcome per write in order). The
    /// batch comes back with the outcomes.
    ///
    /// The default reads the records, compares, and writes the admitted
    /// ones ([`Conditional::ReadThenWrite`]); a store that can check and
    /// write atomically overrides it and says so in
    /// [`StoreInfo::conditional_writes`].
    async fn write_batch_if(
        &mut self,
        writes: Vec<Contact>,
        expect: &[Expect],
    ) -> Result<(Vec<WriteOutcome>, Vec<Contact>), StoreError> {
        assert_eq!(writes.len(), expect.len(), "one condition per write");
        if expect.iter().all(|e| *e == Expect::Any) {
            return self.write_batch_owned(writes).await;
        }
        let ids: Vec<String> = writes.iter().map(|w| w.contact_id.clone()).collect();
        let held: std::collections::HashMap<String, Contact> = self
            .read(&ids)
            .await?
            .into_iter()
            .map(|mut c| {
                c.normalize();
                (c.contact_id.clone(), c)
            })
            .collect();
        let admitted: Vec<bool> = writes
            .iter()
            .zip(expect)
            .map(|(w, e)| e.admits(held.get(&w.contact_id)))
            .collect();
        let mut go = Vec::new();
        let mut back: Vec<Option<Contact>> = Vec::with_capacity(writes.len());
        for (w, ok) in writes.into_iter().zip(&admitted) {
            if *ok {
                go.push(w);
                back.push(None);
            } else {
                back.push(Some(w));
            }
        }
        let (outcomes, written) = if go.is_empty() {
            (vec![], vec![])
        } else {
            self.write_batch_owned(go).await?
        };
        let mut outcomes = outcomes.into_iter();
        let mut written = written.into_iter();
        let mut all_outcomes = Vec::with_capacity(back.len());
        let mut all_writes = Vec::with_capacity(back.len());
        for (slot, ok) in back.into_iter().zip(admitted) {
            if ok {
                all_outcomes.push(outcomes.next().ok_or_else(|| {
                    StoreError::permanent("store", "returned fewer outcomes than writes")
                })?);
                all_writes.push(written.next().expect("every admitted write comes back"));
            } else {
                all_outcomes.push(WriteOutcome::Changed);
                all_writes.push(slot.expect("a refused write stays here"));
            }
        }
        Ok((all_outcomes, all_writes))
    }

    /// Many writes follow (an initial sync): the store may suspend what it
    /// rebuilds faster in one go afterwards (secondary indexes). Reads and
    /// writes keep working, perhaps slower. Default: nothing.
    async fn begin_bulk_load(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Ends [`begin_bulk_load`](RecordSink::begin_bulk_load): what was
    /// suspended is rebuilt. A store also rebuilds it when it opens after a
    /// crash interrupted a bulk load. Default: nothing.
    async fn end_bulk_load(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The records for these ids that exist (in any order).
    async fn read(&mut self, contact_ids: &[String]) -> Result<Vec<Contact>, StoreError>;

    /// Up to `limit` records with `contact_id > after`, ordered by
    /// `contact_id`, tombstones included: the full-scan path of initial sync
    /// and drift checks, one page at a time.
    async fn scan(&mut self, after: Option<&str>, limit: usize)
        -> Result<Vec<Contact>, StoreError>;

    /// The same records as [`scan`](RecordSink::scan), as (`contact_id`,
    /// content hash) pairs: what verification and drift checks compare.
    /// The default reads and hashes every record; a store that keeps the
    /// hash of what the engine wrote (and forgets it when anyone else
    /// writes) answers without transferring or decoding records.
    async fn scan_hashes(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecordHash>, StoreError> {
        Ok(self
            .scan(after, limit)
            .await?
            .into_iter()
            .map(RecordHash::of)
            .collect())
    }

    /// [`scan_hashes`](RecordSink::scan_hashes) and, beside it, the
    /// records of that range that could not be read as contacts (which
    /// `scan` leaves out): what drift reports per record. The default has
    /// none to report; a store that can name them overrides it.
    async fn scan_hashes_checked(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<HashScan, StoreError> {
        Ok(HashScan::readable(self.scan_hashes(after, limit).await?))
    }

    /// [`scan`](RecordSink::scan) and, beside it, the records of that
    /// range that could not be read as contacts (which `scan` leaves out):
    /// what drift reports of canonical. The default has none to report; a
    /// store that can name them overrides it.
    async fn scan_checked(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RecordScan, StoreError> {
        let records = self.scan(after, limit).await?;
        Ok(RecordScan {
            last: records.last().map(|c| c.contact_id.clone()),
            records,
            unreadable: Vec::new(),
        })
    }

    /// Number of live (not deleted) records.
    async fn count(&mut self) -> Result<u64, StoreError>;

    /// Live records whose primary email or primary phone is one of these
    /// (emails lower-cased, phones E.164): identity matching of records
    /// that arrive without a `contact_id`.
    async fn find_by_identity(
        &mut self,
        emails: &[String],
        phones: &[String],
    ) -> Result<Vec<Contact>, StoreError>;
}

/// What the engine needs to know about a store besides its data.
pub trait StoreInfo {
    /// The store's name in config, logs and the state database (`local`,
    /// `supabase`, `twenty`, `canonical`).
    fn name(&self) -> &str;

    /// Whether records read from this store carry a real `version` (else an
    /// incoming change counts as base version + 1).
    fn keeps_version(&self) -> bool;

    /// Whether this store should hold `contact` at all (a CRM may leave out
    /// category X). A contact a store does not accept is written there as a
    /// tombstone if the store has it, and left out otherwise.
    fn accepts(&self, contact: &Contact) -> bool {
        let _ = contact;
        true
    }

    /// Whether a record read from this store, when its `content_hash` is
    /// set, always has `content_hash == content_hash(record)`: the store
    /// keeps the engine's hash and forgets it when anyone else writes the
    /// record (see [`RecordSink`], "Content hash"). The engine then does not
    /// hash such records again. False unless a store guarantees it.
    fn keeps_content_hash(&self) -> bool {
        false
    }

    /// Whether [`ChangeSource::read_changes`] delivers every change, in
    /// commit order, each with the record as it was then (a log: capture
    /// triggers, a replication slot), rather than the current state of
    /// changed records (polling). The engine then knows that, after it read
    /// a record out of turn, the stream's images up to that state's own are
    /// older than what it merged. False unless a store guarantees it.
    fn logs_every_change(&self) -> bool {
        false
    }

    /// How [`RecordSink::write_batch_if`] honours its conditions.
    fn conditional_writes(&self) -> Conditional {
        Conditional::ReadThenWrite
    }
}

/// A store: a change source, a record sink, and its description.
pub trait Store: ChangeSource + RecordSink + StoreInfo {}

impl<T: ChangeSource + RecordSink + StoreInfo> Store for T {}
