//! Propagation: each store consumes the journal from its own cursor.

use std::collections::HashMap;

use contact_sync_connector::{Expect, Store, StoreError, WriteOutcome};
use contact_sync_core::pii::Reason;
use contact_sync_core::{Contact, DeadLetter, JournalEntry, Timestamp};
use contact_sync_state::{RunStats, StateDb, StateTx, StoreRecord};

use crate::canonical::latest_per_contact;
use crate::capture::add_stats;
use crate::{CycleReport, Engine, EngineError, CANONICAL};

/// What to send a store for one journal entry.
pub(crate) enum Plan {
    /// Send this record (the entry's version; the contact carries its
    /// content hash), on condition that the store still holds what the
    /// engine last saw there.
    Write {
        version: i64,
        contact: Box<Contact>,
        expect: Expect,
        /// The store record's out-of-turn copies, kept across the write.
        late: Vec<String>,
    },
    /// The store already has this content: only note the agreement.
    Agree(StoreRecord),
}

/// The condition of a write to a store the engine last saw holding `rec`:
/// nothing (no record), a tombstone, or the content it last wrote or read.
pub(crate) fn expect_of(rec: Option<&StoreRecord>) -> Expect {
    match rec {
        None => Expect::Absent,
        // Unknown since a write whose answer was lost: if the store holds
        // anything, it is read and looked at (the engine's own write, or
        // someone's edit of it) before it is written.
        Some(r) if r.hash.is_empty() => Expect::Absent,
        Some(r) if r.deleted => Expect::Hash(contact_sync_core::hash::tombstone_hash().to_string()),
        Some(r) => Expect::Hash(r.hash.clone()),
    }
}

/// Decides, per latest entry, whether the store needs a write. A store is
/// never sent content it already has (the hash it last got or gave equals
/// the entry's), nor a tombstone of something it never had.
pub(crate) fn plan(
    store: &str,
    accepts: impl Fn(&Contact) -> bool,
    latest: Vec<JournalEntry>,
    recs: &HashMap<String, StoreRecord>,
) -> Vec<Plan> {
    let mut out = Vec::with_capacity(latest.len());
    for e in latest {
        let rec = recs.get(&e.contact_id);
        let mut after = e.after;
        let mut hash = e.hash;
        if !after.is_deleted() && !accepts(&after) {
            // Left out of this store: remove it if it is there.
            after.deleted_at = Some(e.at);
            hash = contact_sync_core::content_hash(&after);
        }
        // Nothing to send, but the store agrees with `version` now (and
        // owes no write).
        let agree = |r: &StoreRecord, version: i64| {
            Plan::Agree(StoreRecord {
                synced_version: version,
                needs_write: false,
                writeback: false,
                ..r.clone()
            })
        };
        if let Some(r) = rec {
            if r.synced_version > e.version {
                // The store already agreed with a newer version (a replay).
                if r.needs_write {
                    out.push(agree(r, r.synced_version));
                }
                continue;
            }
            if r.hash == hash && r.deleted == after.is_deleted() && !r.needs_write {
                if r.synced_version < e.version {
                    out.push(Plan::Agree(StoreRecord {
                        synced_version: e.version,
                        ..r.clone()
                    }));
                }
                continue;
            }
        }
        if after.is_deleted() && rec.is_none_or(|r| r.deleted && !r.needs_write) {
            // Deleted there too: nothing to send, but they agree now. (An
            // owed write is sent all the same: after a write whose answer
            // was lost, the store may hold what the engine never noted.)
            if let Some(r) = rec.filter(|r| r.synced_version < e.version) {
                out.push(agree(r, e.version));
            }
            continue;
        }
        if let Some(native) = rec.and_then(|r| r.native_id.clone()) {
            after.external_ids.insert(store.to_string(), native);
        }
        after.content_hash = Some(hash);
        out.push(Plan::Write {
            version: e.version,
            contact: Box::new(after),
            expect: expect_of(rec),
            late: rec.map(|r| r.late.clone()).unwrap_or_default(),
        });
    }
    out
}

impl Engine {
    /// Sends a store every journal entry after its cursor that canonical
    /// already holds, batch by batch; the cursor advances with the records
    /// of what was written, in one transaction, after the store confirmed.
    pub(crate) async fn propagate_store(
        &mut self,
        i: usize,
        report: &mut CycleReport,
    ) -> Result<(), EngineError> {
        let name = self.stores[i].name().to_string();
        let started = std::time::Instant::now();
        loop {
            if self.stopping() {
                return Ok(());
            }
            let cursor = self.state.cursor(&name)?;
            let upto = self.state.cursor(CANONICAL)?;
            if cursor >= upto {
                return self.write_owed(i, report).await;
            }
            let entries = self
                .state
                .journal_after(cursor, upto, self.opts.batch_size.max(1))?;
            let Some(last_seq) = entries.last().map(|e| e.seq) else {
                return Ok(());
            };
            // An entry superseded by a later one that canonical already
            // holds is not sent: the later one carries the full record (a
            // replay must not resurrect, then delete again, a contact the
            // store never had).
            // A batch that reaches `upto` holds every entry up to it, so its
            // latest entry of a contact is the newest canonical holds: only
            // a batch cut short by the batch size needs to look further.
            let whole = last_seq >= upto;
            let mut latest = latest_per_contact(entries);
            if !whole {
                // Only the seqs are needed: one read, nothing decoded.
                let ids: Vec<String> = latest.iter().map(|e| e.contact_id.clone()).collect();
                let newest = self.state.journal_newest_seqs(&ids)?;
                latest.retain(|e| {
                    newest
                        .get(&e.contact_id)
                        .is_none_or(|n| *n <= e.seq || *n > upto)
                });
            }
            let ids: Vec<String> = latest.iter().map(|e| e.contact_id.clone()).collect();
            let recs: HashMap<String, StoreRecord> = self
                .state
                .store_records(&name, &ids)?
                .into_iter()
                .map(|r| (r.contact_id.clone(), r))
                .collect();
            let store = &self.stores[i];
            let plans = plan(&name, |c| store.accepts(c), latest, &recs);
            let recorded = self.send(i, &name, plans, last_seq).await?;
            add_stats(&mut report.entry(&name).stats, &recorded.stats);
            self.recapture(i, recorded.changed, report).await?;
            // The capture budget bounds a store's writes as well: after a
            // backlog (the version write-backs of a busy store's own
            // edits, a mass change), the next cycle reads the stores again
            // before it writes on.
            if self.budget_spent(started) {
                report.more = true;
                return Ok(());
            }
        }
    }

    /// Writes canonical's record again to every contact of store `i` marked
    /// `needs_write` whose journal entries the cursor has passed (a write
    /// refused round after round by a busy writer, a drift repair).
    async fn write_owed(&mut self, i: usize, report: &mut CycleReport) -> Result<(), EngineError> {
        let name = self.stores[i].name().to_string();
        let mut after: Option<String> = None;
        for _ in 0..self.opts.max_batches_per_cycle {
            if self.stopping() {
                return Ok(());
            }
            // Records still owed after their write (refused again) are not
            // taken twice in one pass.
            let ids: Vec<String> = self
                .state
                .store_records_needing_write(&name, after.as_deref(), self.opts.batch_size.max(1))?
                .into_iter()
                .map(|r| r.contact_id)
                .collect();
            let Some(last) = ids.last().cloned() else {
                return Ok(());
            };
            let changed = self.resend(i, &ids, report).await?;
            self.recapture(i, changed, report).await?;
            after = Some(last);
        }
        Ok(())
    }

    /// Writes the planned records to store `i` and commits what happened,
    /// with the store's new cursor when `cursor` is given.
    pub(crate) async fn send(
        &mut self,
        i: usize,
        name: &str,
        plans: Vec<Plan>,
        cursor: i64,
    ) -> Result<Recorded, EngineError> {
        let now = (self.clock)();
        send_to(
            &mut *self.stores[i],
            &mut self.state,
            name,
            plans,
            cursor,
            now,
            |_| Ok(()),
        )
        .await
    }
}

/// [`Engine::send`] with the parts it touches borrowed one by one (the
/// backfill reads canonical while this runs); `extra` adds to the state
/// transaction that records the outcome.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_to(
    store: &mut dyn Store,
    state: &mut StateDb,
    name: &str,
    plans: Vec<Plan>,
    cursor: i64,
    now: Timestamp,
    extra: impl FnOnce(&StateTx<'_>) -> Result<(), EngineError>,
) -> Result<Recorded, EngineError> {
    let sending: Vec<(String, Option<String>)> = plans
        .iter()
        .filter_map(|p| match p {
            Plan::Write { contact, .. } => Some((
                contact.contact_id.clone(),
                contact.external_ids.get(name).cloned(),
            )),
            Plan::Agree(_) => None,
        })
        .collect();
    match deliver(store, name, plans).await {
        Ok(d) => d.record(state, name, cursor, now, extra),
        Err(e) => {
            // The batch may have been applied with its answer lost: the
            // store may now hold records the engine has no note of. Each is
            // owed a write, whose condition finds out what is there.
            owe(state, name, &sending)?;
            Err(e)
        }
    }
}

/// Records that `store` is owed a write of each contact (after a write
/// whose outcome is unknown): a contact without a record is noted as
/// nothing-there, which the next write's condition checks.
pub(crate) fn owe(
    state: &mut StateDb,
    store: &str,
    ids: &[(String, Option<String>)],
) -> Result<(), EngineError> {
    if ids.is_empty() {
        return Ok(());
    }
    let tx = state.tx()?;
    for (id, native) in ids {
        let owed = match tx.store_record(store, id)? {
            Some(r) => StoreRecord {
                needs_write: true,
                ..r
            },
            // Unknown (empty hash): either nothing, or this very write.
            None => StoreRecord {
                store: store.to_string(),
                contact_id: id.clone(),
                native_id: native.clone(),
                synced_version: 0,
                hash: String::new(),
                deleted: false,
                needs_write: true,
                writeback: false,
                late: vec![],
            },
        };
        tx.put_store_record(&owed)?;
    }
    tx.commit()?;
    Ok(())
}

/// Planned records a store has confirmed (or refused), not yet recorded in
/// the state database.
pub(crate) struct Delivery {
    /// What was sent, in order.
    sent: Vec<Sent>,
    outcomes: Vec<WriteOutcome>,
    /// The records written, in order (for the dead letters of refused ones;
    /// freed when the delivery is recorded, which the backfill overlaps
    /// with the next write).
    writes: Vec<Contact>,
    agree: Vec<StoreRecord>,
}

/// What recording a delivery did.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    pub stats: RunStats,
    /// Contacts whose conditional write was refused because someone edited
    /// them since the engine last saw them: (contact id, native id known).
    pub changed: Vec<(String, Option<String>)>,
}

/// What a delivery remembers of each write (the records themselves go to
/// the store).
struct Sent {
    contact_id: String,
    version: i64,
    hash: String,
    deleted: bool,
    late: Vec<String>,
}

/// Writes the planned records to `store` (the first half of
/// [`send_to`]; [`Delivery::record`] is the second).
pub(crate) async fn deliver(
    store: &mut dyn Store,
    name: &str,
    plans: Vec<Plan>,
) -> Result<Delivery, EngineError> {
    let mut writes = Vec::new();
    let mut expects = Vec::new();
    let mut sent = Vec::new();
    let mut agree = Vec::new();
    for p in plans {
        match p {
            Plan::Write {
                version,
                contact,
                expect,
                late,
            } => {
                // Stores may keep this hash as the hash of what they
                // hold (RecordSink contract).
                debug_assert_eq!(
                    contact.content_hash.as_deref(),
                    Some(contact_sync_core::content_hash(&contact).as_str()),
                    "contact {} planned with a content_hash that is not its content's",
                    contact.contact_id
                );
                sent.push(Sent {
                    contact_id: contact.contact_id.clone(),
                    version,
                    hash: contact.content_hash.clone().unwrap_or_default(),
                    deleted: contact.is_deleted(),
                    late,
                });
                writes.push(*contact);
                expects.push(expect);
            }
            Plan::Agree(r) => agree.push(r),
        }
    }
    let (outcomes, writes) = if writes.is_empty() {
        (vec![], writes)
    } else {
        store.write_batch_if(writes, &expects).await?
    };
    if outcomes.len() != sent.len() {
        return Err(StoreError::permanent(
            name,
            format!(
                "returned {} outcomes for {} writes",
                outcomes.len(),
                sent.len()
            ),
        )
        .into());
    }
    Ok(Delivery {
        sent,
        outcomes,
        writes,
        agree,
    })
}

impl Delivery {
    /// Commits what the store confirmed: one transaction with the sync
    /// records, dead letters for refused records, the store's cursor (when
    /// `cursor > 0`) and whatever `extra` adds.
    pub(crate) fn record(
        self,
        state: &mut StateDb,
        name: &str,
        cursor: i64,
        now: Timestamp,
        extra: impl FnOnce(&StateTx<'_>) -> Result<(), EngineError>,
    ) -> Result<Recorded, EngineError> {
        let Delivery {
            sent,
            outcomes,
            writes,
            agree,
        } = self;
        let mut stats = RunStats::default();
        let mut changed = Vec::new();
        let tx = state.tx()?;
        let mut applied = Vec::with_capacity(sent.len());
        for ((s, o), c) in sent.into_iter().zip(outcomes).zip(&writes) {
            match o {
                WriteOutcome::Applied { native_id } => {
                    stats.written += 1;
                    applied.push(StoreRecord {
                        store: name.to_string(),
                        contact_id: s.contact_id,
                        native_id: Some(native_id),
                        synced_version: s.version,
                        hash: s.hash,
                        deleted: s.deleted,
                        needs_write: false,
                        writeback: false,
                        late: s.late,
                    });
                }
                WriteOutcome::Changed => {
                    // Someone edited the record since the engine saw it; the
                    // engine reads and merges it (Engine::recapture). Until a
                    // write confirms, the store is owed canonical's record,
                    // recorded with the cursor so a failure cannot lose it.
                    tracing::info!(store = %name, contact_id = %s.contact_id,
                        "record changed since the engine last saw it; not overwritten, merging it");
                    let native = c.external_ids.get(name).cloned();
                    let owed = match tx.store_record(name, &s.contact_id)? {
                        Some(r) => StoreRecord {
                            needs_write: true,
                            ..r
                        },
                        // Expected absent, found a record: not known yet.
                        None => StoreRecord {
                            store: name.to_string(),
                            contact_id: s.contact_id.clone(),
                            native_id: native.clone(),
                            synced_version: 0,
                            hash: contact_sync_core::hash::tombstone_hash().to_string(),
                            deleted: true,
                            needs_write: true,
                            writeback: false,
                            late: vec![],
                        },
                    };
                    tx.put_store_record(&owed)?;
                    changed.push((s.contact_id, native));
                }
                WriteOutcome::Stale { stored_version } => {
                    // The store has a newer edit of its own; capture brings it in.
                    tracing::debug!(store = %name, contact_id = %s.contact_id,
                        version = s.version, stored_version,
                        "store holds a newer version; not overwritten");
                }
                WriteOutcome::Rejected { field, reason } => {
                    stats.dead_letters += 1;
                    tracing::warn!(store = %name, contact_id = %s.contact_id, field = %field,
                            reason = %Reason::quoting(|q| q.detail(&reason)),
                            alert = "sync_failure", "store refused a record");
                    tx.add_dead_letter(&DeadLetter {
                        id: 0,
                        store: name.to_string(),
                        record: s.contact_id,
                        field,
                        reason,
                        payload: serde_json::to_value(c).ok(),
                        at: now,
                    })?;
                }
            }
        }
        tx.put_store_records(&applied)?;
        tx.put_store_records(&agree)?;
        if cursor > 0 {
            tx.set_cursor(name, cursor)?;
        }
        extra(&tx)?;
        tx.commit()?;
        Ok(Recorded { stats, changed })
    }
}
