//! [`MemoryStore`]: a complete store held in memory, and [`MemoryHandle`],
//! the test's view of the same data.
//!
//! The data lives in the handle, not in the store: a test can drop the store
//! (a crash) and build a new one on the same handle (a restart) with the
//! records and the change log intact.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use contact_sync_connector::{
    Change, ChangeBatch, ChangeKind, ChangeSource, Checkpoint, Conditional, Expect, RecordSink,
    StoreError, StoreInfo, WriteOutcome,
};
use contact_sync_core::{content_hash, Contact, Timestamp};

/// How a [`MemoryStore`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryOptions {
    /// The store's name ([`StoreInfo::name`]).
    pub name: String,
    /// When false the store still stores `version` as given, but
    /// [`StoreInfo::keeps_version`] says false and writes are not guarded by
    /// version (every write applies).
    pub keeps_version: bool,
    /// When true the store assigns its own native ids (like a CRM): a record
    /// written without a known native id gets a new one. When false the
    /// native id is the `contact_id`.
    pub own_ids: bool,
    /// When true (the default) the engine's own writes also appear in the
    /// change log, as a database with triggers or logical replication shows
    /// them, so the engine's echo filter is exercised.
    pub echo_own_writes: bool,
    /// A deliberately broken store for checking the checkers: conditional
    /// writes ignore their condition (they overwrite whatever is there)
    /// while the store still claims [`Conditional::Atomic`].
    pub ignore_conditions: bool,
    /// Says every read costs a request of a shared budget, as Twenty's
    /// polls do ([`ChangeSource::metered_reads`]).
    pub metered_reads: bool,
}

impl MemoryOptions {
    /// Defaults: keeps versions, native id = `contact_id`, echoes own writes.
    pub fn new(name: impl Into<String>) -> Self {
        MemoryOptions {
            name: name.into(),
            keeps_version: true,
            own_ids: false,
            echo_own_writes: true,
            ignore_conditions: false,
            metered_reads: false,
        }
    }

    pub fn metered_reads(mut self, yes: bool) -> Self {
        self.metered_reads = yes;
        self
    }

    pub fn ignore_conditions(mut self, yes: bool) -> Self {
        self.ignore_conditions = yes;
        self
    }

    pub fn keeps_version(mut self, yes: bool) -> Self {
        self.keeps_version = yes;
        self
    }

    pub fn own_ids(mut self, yes: bool) -> Self {
        self.own_ids = yes;
        self
    }

    pub fn echo_own_writes(mut self, yes: bool) -> Self {
        self.echo_own_writes = yes;
        self
    }
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions::new("memory")
    }
}

/// One write the engine sent through [`RecordSink::write_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    pub contact_id: String,
    pub version: i64,
    /// Content hash of the write (normalized).
    pub hash: String,
    /// False when the store already held exactly this record for the
    /// contact (its content, and its version where the store keeps one):
    /// the write was redundant. A write of the same content at a newer
    /// version is not: it brings the store's version to canonical's.
    pub changed_content: bool,
    /// Whether the write was applied (false for `Stale` and `Rejected`).
    pub applied: bool,
}

/// The store's data: records keyed by native id, an index by `contact_id`,
/// the change log and the write log.
#[derive(Debug)]
struct State {
    options: MemoryOptions,
    /// Native id → the record exactly as stored (not normalized).
    records: BTreeMap<String, Contact>,
    /// `contact_id` → native id, for records that have a `contact_id`.
    by_contact: BTreeMap<String, String>,
    /// Counter for native ids the store makes up.
    next_native: u64,
    /// Unacknowledged changes, oldest first, with their sequence numbers.
    log: VecDeque<(u64, Change)>,
    /// The last sequence number assigned (0: none yet).
    head: u64,
    /// Everything up to here is acknowledged and discarded.
    acked: u64,
    writes: Vec<WriteRecord>,
    /// `read_changes` calls so far.
    reads: u64,
}

/// A cheaply cloneable handle on a memory store's data.
///
/// Its `user_*` methods act as a person using that store directly: they
/// store exactly what is given (no version bump, no normalization) and
/// append a change to the store's change log.
#[derive(Debug, Clone)]
pub struct MemoryHandle {
    state: Arc<Mutex<State>>,
}

fn normalized(c: &Contact) -> Contact {
    let mut c = c.clone();
    c.normalize();
    c
}

fn normalized_change(change: &Change) -> Change {
    match &change.kind {
        ChangeKind::Upsert(c) => Change {
            native_id: change.native_id.clone(),
            kind: ChangeKind::Upsert(Box::new(normalized(c))),
        },
        _ => change.clone(),
    }
}

impl State {
    fn alloc_native(&mut self) -> String {
        self.next_native += 1;
        if self.options.own_ids {
            format!("{}-{}", self.options.name, self.next_native)
        } else {
            // A provisional key for a record that has no contact_id yet; it
            // is re-keyed under its contact_id once the engine writes it back.
            format!("~{}-new-{}", self.options.name, self.next_native)
        }
    }

    /// The native id of the record this contact refers to, if the store has
    /// one: its native id in `external_ids`, else its `contact_id`.
    fn existing_native(&self, c: &Contact) -> Option<String> {
        if let Some(n) = c.external_ids.get(&self.options.name) {
            if self.records.contains_key(n) {
                return Some(n.clone());
            }
        }
        if c.contact_id.is_empty() {
            return None;
        }
        self.by_contact.get(&c.contact_id).cloned()
    }

    /// Where a contact is stored: the existing record, else a new key.
    /// `Err` when the contact would take a `contact_id` another record has.
    fn place(&mut self, c: &Contact) -> Result<(Option<String>, String), String> {
        let existing = self.existing_native(c);
        if !c.contact_id.is_empty() {
            if let Some(other) = self.by_contact.get(&c.contact_id) {
                if existing.as_ref() != Some(other) {
                    return Err(format!(
                        "contact_id {} is already held by record {other}",
                        c.contact_id
                    ));
                }
            }
        }
        let target = match &existing {
            // Keyed by contact_id: a provisional record is re-keyed.
            Some(n) if !self.options.own_ids && !c.contact_id.is_empty() => {
                if *n == c.contact_id {
                    n.clone()
                } else {
                    c.contact_id.clone()
                }
            }
            Some(n) => n.clone(),
            None if self.options.own_ids || c.contact_id.is_empty() => self.alloc_native(),
            None => c.contact_id.clone(),
        };
        Ok((existing, target))
    }

    /// Removes the record under a native id, and its index entry.
    fn remove(&mut self, native: &str) {
        if let Some(prev) = self.records.remove(native) {
            if !prev.contact_id.is_empty() {
                self.by_contact.remove(&prev.contact_id);
            }
        }
    }

    /// Stores `c` under `target`, replacing the record at `old` (which may
    /// be the same key), and keeps the index straight.
    fn put(&mut self, old: Option<&str>, target: &str, c: Contact) {
        if let Some(old) = old {
            self.remove(old);
        }
        if !c.contact_id.is_empty() {
            self.by_contact
                .insert(c.contact_id.clone(), target.to_string());
        }
        self.records.insert(target.to_string(), c);
    }

    fn append(&mut self, native_id: &str, kind: ChangeKind) {
        self.head += 1;
        let seq = self.head;
        self.log.push_back((
            seq,
            Change {
                native_id: native_id.to_string(),
                kind,
            },
        ));
    }

    fn get(&self, contact_id: &str) -> Option<&Contact> {
        self.by_contact
            .get(contact_id)
            .and_then(|n| self.records.get(n))
    }

    /// Writes `w` if the record it would replace satisfies `expect`; the
    /// check and the write are one step (the store's lock is held).
    fn write_one(&mut self, w: &Contact, expect: &Expect) -> WriteOutcome {
        let hash = content_hash(&normalized(w));
        let mut record = WriteRecord {
            contact_id: w.contact_id.clone(),
            version: w.version,
            hash: hash.clone(),
            changed_content: true,
            applied: false,
        };
        if w.contact_id.trim().is_empty() {
            self.writes.push(record);
            return WriteOutcome::Rejected {
                field: "contact_id".into(),
                reason: "a write needs a contact_id".into(),
            };
        }
        let (old, target) = match self.place(w) {
            Ok(p) => p,
            Err(reason) => {
                self.writes.push(record);
                return WriteOutcome::Rejected {
                    field: "contact_id".into(),
                    reason,
                };
            }
        };
        let held = old
            .as_ref()
            .and_then(|n| self.records.get(n))
            .map(normalized);
        if !expect.admits(held.as_ref()) {
            self.writes.push(record);
            return WriteOutcome::Changed;
        }
        if let Some(held) = old.as_ref().and_then(|n| self.records.get(n)) {
            record.changed_content = content_hash(&normalized(held)) != hash
                || (self.options.keeps_version && held.version != w.version);
            if self.options.keeps_version && held.version > w.version {
                let stored_version = held.version;
                self.writes.push(record);
                return WriteOutcome::Stale { stored_version };
            }
        }
        record.applied = true;
        self.writes.push(record);
        self.put(old.as_deref(), &target, w.clone());
        if self.options.echo_own_writes {
            self.append(&target, ChangeKind::Upsert(Box::new(w.clone())));
        }
        WriteOutcome::Applied { native_id: target }
    }

    fn parse_checkpoint(&self, cp: &Checkpoint) -> Result<u64, StoreError> {
        cp.as_str().parse::<u64>().map_err(|_| {
            StoreError::permanent(
                &self.options.name,
                format!("checkpoint {:?} is not a sequence number", cp.as_str()),
            )
        })
    }
}

impl MemoryHandle {
    /// An empty store's data.
    pub fn new(options: MemoryOptions) -> Self {
        MemoryHandle {
            state: Arc::new(Mutex::new(State {
                options,
                records: BTreeMap::new(),
                by_contact: BTreeMap::new(),
                next_native: 0,
                log: VecDeque::new(),
                head: 0,
                acked: 0,
                writes: Vec::new(),
                reads: 0,
            })),
        }
    }

    /// A store on this data (a fresh one after a simulated crash).
    pub fn store(&self) -> MemoryStore {
        MemoryStore::new(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in another test thread must not hide this store's data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn options(&self) -> MemoryOptions {
        self.lock().options.clone()
    }

    /// How many times the engine read this store's changes.
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }

    /// A user creates or edits a record. Stores exactly what is given
    /// (version untouched) and appends a change. A contact with an empty
    /// `contact_id` is a new record the engine does not know yet, unless
    /// `external_ids[store name]` names an existing record, which is then
    /// edited. Returns the record's native id.
    ///
    /// Panics when `contact_id` is held by another record (a test bug).
    pub fn user_upsert(&self, mut contact: Contact) -> String {
        // As the SQLite and Postgres triggers do: a write that is not the
        // engine's forgets the engine's content hash.
        contact.content_hash = None;
        let mut s = self.lock();
        let (old, target) = match s.place(&contact) {
            Ok(p) => p,
            Err(e) => panic!("{}: user_upsert: {e}", s.options.name),
        };
        s.put(old.as_deref(), &target, contact.clone());
        s.append(&target, ChangeKind::Upsert(Box::new(contact)));
        target
    }

    /// A user creates a record without a `contact_id` (as in a CRM's UI).
    /// Returns the native id the store gave it.
    pub fn user_create_without_id(&self, mut contact: Contact) -> String {
        let name = self.lock().options.name.clone();
        contact.contact_id.clear();
        contact.external_ids.remove(&name);
        self.user_upsert(contact)
    }

    /// A user deletes a record outright: it is gone, and a
    /// [`ChangeKind::Delete`] is appended. False when there was no record.
    pub fn user_delete(&self, contact_id: &str) -> bool {
        let mut s = self.lock();
        let Some(native) = s.by_contact.get(contact_id).cloned() else {
            return false;
        };
        s.remove(&native);
        s.append(
            &native,
            ChangeKind::Delete {
                contact_id: Some(contact_id.to_string()),
            },
        );
        true
    }

    /// A user soft-deletes a record: `deleted_at` is set, nothing else
    /// changes, and the tombstone is appended as an upsert. False when there
    /// was no record.
    pub fn user_soft_delete(&self, contact_id: &str, at: Timestamp) -> bool {
        let mut s = self.lock();
        let Some(native) = s.by_contact.get(contact_id).cloned() else {
            return false;
        };
        let Some(rec) = s.records.get_mut(&native) else {
            return false;
        };
        rec.deleted_at = Some(at);
        rec.content_hash = None;
        let snapshot = rec.clone();
        s.append(&native, ChangeKind::Upsert(Box::new(snapshot)));
        true
    }

    /// The record for `contact_id` (tombstones included), normalized.
    pub fn get(&self, contact_id: &str) -> Option<Contact> {
        self.lock().get(contact_id).map(normalized)
    }

    /// The record under a native id (also id-less ones), normalized.
    pub fn get_native(&self, native_id: &str) -> Option<Contact> {
        self.lock().records.get(native_id).map(normalized)
    }

    /// Every record, tombstones and records without `contact_id` included,
    /// normalized, sorted by `contact_id` (then native id).
    pub fn all(&self) -> Vec<Contact> {
        let s = self.lock();
        let mut v: Vec<(String, String, Contact)> = s
            .records
            .iter()
            .map(|(n, c)| (c.contact_id.clone(), n.clone(), normalized(c)))
            .collect();
        v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v.into_iter().map(|(_, _, c)| c).collect()
    }

    /// Live (not deleted) records, as [`all`](Self::all).
    pub fn live(&self) -> Vec<Contact> {
        self.all().into_iter().filter(|c| !c.is_deleted()).collect()
    }

    /// Every write the engine sent since the last
    /// [`clear_write_log`](Self::clear_write_log), in order.
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.lock().writes.clone()
    }

    /// Writes whose content equalled what the store already held.
    pub fn redundant_writes(&self) -> usize {
        self.lock()
            .writes
            .iter()
            .filter(|w| !w.changed_content)
            .count()
    }

    pub fn clear_write_log(&self) {
        self.lock().writes.clear();
    }

    /// The changes not yet acknowledged, oldest first, normalized.
    pub fn pending_changes(&self) -> Vec<Change> {
        self.lock()
            .log
            .iter()
            .map(|(_, c)| normalized_change(c))
            .collect()
    }

    /// The checkpoint after the newest change.
    pub fn head_checkpoint(&self) -> Checkpoint {
        Checkpoint::new(self.lock().head.to_string())
    }
}

/// A store held in memory: a [`ChangeSource`], [`RecordSink`] and
/// [`StoreInfo`] over the data of a [`MemoryHandle`].
///
/// Checkpoints are change sequence numbers in decimal. Reads (records and
/// changes) are normalized; records are stored as written.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    handle: MemoryHandle,
    name: String,
    keeps_version: bool,
}

impl MemoryStore {
    pub fn new(handle: MemoryHandle) -> Self {
        let opts = handle.options();
        MemoryStore {
            handle,
            name: opts.name,
            keeps_version: opts.keeps_version,
        }
    }

    /// A new store with its handle.
    pub fn with_options(options: MemoryOptions) -> (MemoryStore, MemoryHandle) {
        let handle = MemoryHandle::new(options);
        (handle.store(), handle)
    }

    pub fn handle(&self) -> &MemoryHandle {
        &self.handle
    }
}

impl StoreInfo for MemoryStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn keeps_version(&self) -> bool {
        self.keeps_version
    }

    fn keeps_content_hash(&self) -> bool {
        true
    }

    fn logs_every_change(&self) -> bool {
        true
    }

    fn conditional_writes(&self) -> Conditional {
        Conditional::Atomic
    }
}

#[async_trait]
impl ChangeSource for MemoryStore {
    async fn read_changes(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        let mut s = self.handle.lock();
        s.reads += 1;
        let after = match from {
            Some(cp) => s.parse_checkpoint(cp)?,
            None => s.acked,
        };
        let mut newer = s.log.iter().filter(|(seq, _)| *seq > after);
        let page: Vec<&(u64, Change)> = newer.by_ref().take(limit).collect();
        let has_more = newer.next().is_some();
        let checkpoint = match page.last() {
            Some((seq, _)) => Checkpoint::new(seq.to_string()),
            None => match from {
                Some(cp) => cp.clone(),
                None => Checkpoint::new(after.to_string()),
            },
        };
        Ok(ChangeBatch {
            changes: page.iter().map(|(_, c)| normalized_change(c)).collect(),
            checkpoint,
            has_more,
        })
    }

    async fn current_position(&mut self) -> Result<Option<Checkpoint>, StoreError> {
        Ok(Some(Checkpoint::new(self.handle.lock().head.to_string())))
    }

    async fn acknowledge(&mut self, upto: &Checkpoint) -> Result<(), StoreError> {
        let mut s = self.handle.lock();
        let seq = s.parse_checkpoint(upto)?;
        if seq > s.head {
            return Err(StoreError::permanent(
                &s.options.name,
                format!(
                    "acknowledge {seq}: beyond the newest change {} (a checkpoint of another store?)",
                    s.head
                ),
            ));
        }
        if seq > s.acked {
            s.acked = seq;
            while s.log.front().is_some_and(|(n, _)| *n <= seq) {
                s.log.pop_front();
            }
        }
        Ok(())
    }

    fn metered_reads(&self) -> bool {
        self.handle.lock().options.metered_reads
    }
}

#[async_trait]
impl RecordSink for MemoryStore {
    async fn write_batch(&mut self, writes: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut s = self.handle.lock();
        Ok(writes
            .iter()
            .map(|w| s.write_one(w, &Expect::Any))
            .collect())
    }

    async fn write_batch_if(
        &mut self,
        writes: Vec<Contact>,
        expect: &[Expect],
    ) -> Result<(Vec<WriteOutcome>, Vec<Contact>), StoreError> {
        assert_eq!(writes.len(), expect.len(), "one condition per write");
        let mut s = self.handle.lock();
        let broken = s.options.ignore_conditions;
        let outcomes = writes
            .iter()
            .zip(expect)
            .map(|(w, e)| s.write_one(w, if broken { &Expect::Any } else { e }))
            .collect();
        Ok((outcomes, writes))
    }

    async fn read(&mut self, contact_ids: &[String]) -> Result<Vec<Contact>, StoreError> {
        let s = self.handle.lock();
        let ids: BTreeSet<&String> = contact_ids.iter().collect();
        Ok(ids
            .into_iter()
            .filter_map(|id| s.get(id))
            .map(normalized)
            .collect())
    }

    async fn scan(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        use std::ops::Bound;
        let s = self.handle.lock();
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Unbounded,
        };
        Ok(s.by_contact
            .range((lower, Bound::Unbounded))
            .filter_map(|(_, n)| s.records.get(n))
            .take(limit)
            .map(normalized)
            .collect())
    }

    async fn count(&mut self) -> Result<u64, StoreError> {
        let s = self.handle.lock();
        Ok(s.records.values().filter(|c| !c.is_deleted()).count() as u64)
    }

    async fn find_by_identity(
        &mut self,
        emails: &[String],
        phones: &[String],
    ) -> Result<Vec<Contact>, StoreError> {
        let emails: BTreeSet<String> = emails.iter().map(|e| e.trim().to_lowercase()).collect();
        let phones: BTreeSet<&str> = phones.iter().map(|p| p.trim()).collect();
        let s = self.handle.lock();
        Ok(s.by_contact
            .values()
            .filter_map(|n| s.records.get(n))
            .map(normalized)
            .filter(|c| !c.is_deleted())
            .filter(|c| {
                c.primary_email().is_some_and(|e| emails.contains(e))
                    || c.primary_phone().is_some_and(|p| phones.contains(p))
            })
            .collect())
    }
}
