//! Capture: a store's changes → validate → echo filter → merge → journal.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use contact_sync_connector::{Change, ChangeBatch, ChangeKind, Checkpoint};
use contact_sync_core::identity::mint_contact_id;
use contact_sync_core::pii::Reason;
use contact_sync_core::{
    content_hash, merge, validate, Contact, DeadLetter, FieldConflict, JournalEntry, MergeInput,
    MergeOutcome, Op, Resolution,
};
use contact_sync_state::{RunStats, StoreRecord};

use crate::{CycleReport, Engine, EngineError, CANONICAL};

/// How long reading merge bases from another store may take (see
/// `bases_elsewhere`) before that store is skipped.
const BASE_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One change, resolved to a contact id.
struct Item {
    native_id: String,
    contact_id: String,
    /// `None`: the record was removed outright in the store.
    incoming: Option<Contact>,
    /// The store does not know the contact id yet: write it back.
    writeback: bool,
    /// The hash of what the store holds, when it differs from `incoming`'s
    /// (its phones were brought to E.164): the store is owed the E.164
    /// form, and its own image of that write is then an echo.
    held: Option<String>,
    /// The hash of what the store holds (`held`, else `incoming`'s), taken
    /// once; `None` for a removal.
    hash: Option<String>,
}

/// Out-of-turn copies remembered per contact and store at most.
const MAX_LATE: usize = 8;

/// Rounds of "refused, merged, written again" for one set of contacts
/// before the rest waits for the next cycle.
const RECAPTURE_ROUNDS: usize = 3;

/// How many times a batch is merged again when other daemons keep
/// journaling its contacts under it, before the cycle gives up (and the
/// next cycle tries again).
pub(crate) const MAX_REMERGES: usize = 8;

/// Several daemons (`concurrent`): the seq of each contact's newest
/// journal entry, read before a merge reads anything of them.
pub(crate) fn read_heads(
    concurrent: bool,
    state: &contact_sync_state::StateDb,
    ids: &[String],
) -> Result<HashMap<String, i64>, EngineError> {
    if !concurrent {
        return Ok(HashMap::new());
    }
    Ok(state.journal_newest_seqs(ids)?)
}

/// Several daemons: refuses the commit of a merge (nothing of it is
/// written) when another engine journaled one of its contacts since
/// [`read_heads`]. Runs inside the commit's transaction, under the
/// writers' lock, so nothing can be appended between the check and the
/// commit. Canonical writes thus stay serialised per contact: of two
/// merges of one contact, the second is made on top of the first.
pub(crate) fn check_heads(
    concurrent: bool,
    tx: &contact_sync_state::StateTx<'_>,
    ids: &[String],
    read: &HashMap<String, i64>,
) -> Result<(), EngineError> {
    if !concurrent {
        return Ok(());
    }
    let now = tx.journal_newest_seqs(ids)?;
    match ids.iter().find(|id| now.get(*id) != read.get(*id)) {
        Some(id) => Err(EngineError::JournalMoved(id.clone())),
        None => Ok(()),
    }
}

/// The rest of a window a capture cut short by its time budget: read and
/// checked by the mass-change guard, not merged. Valid while the store's
/// stored checkpoint is still `from`.
pub(crate) struct Carry {
    pub from: Option<Checkpoint>,
    pub window: crate::guard::Window,
}

pub(crate) fn add_stats(into: &mut RunStats, s: &RunStats) {
    into.captured += s.captured;
    into.applied += s.applied;
    into.written += s.written;
    into.skipped_echo += s.skipped_echo;
    into.dead_letters += s.dead_letters;
    into.conflicts += s.conflicts;
}

impl Engine {
    /// Reads and merges a store's changes, batch by batch, until it has no
    /// more (or the per-cycle bound is reached). Returns whether the store's
    /// changes were drained: a store with changes left is not written to in
    /// this cycle (its pending edits would race the writes).
    ///
    /// Changes are read a window at a time ([`crate::guard`]) and checked by
    /// the mass-change guard before any of them is merged; a window over the
    /// guard's threshold pauses the store instead.
    ///
    /// With [`EngineOptions::capture_budget`](crate::EngineOptions), a
    /// capture that has merged for that long stops after the batch it is
    /// in, so that the cycle goes on to write what it merged to the other
    /// stores; the window's batches not merged yet are kept
    /// ([`Carry`]) and merged first by the next cycle, which the report
    /// asks for at once ([`crate::CycleReport::more`]).
    pub(crate) async fn capture_store(
        &mut self,
        i: usize,
        report: &mut CycleReport,
        approved: bool,
    ) -> Result<bool, EngineError> {
        let name = self.stores[i].name().to_string();
        let stored = self.state.checkpoint(&name)?;
        if let Some(cp) = &stored {
            // A previous acknowledge may have been lost; repeating it is harmless.
            if let Err(e) = self.stores[i].acknowledge(&Checkpoint(cp.clone())).await {
                tracing::debug!(store = %name, error = %e, "re-acknowledge failed");
            }
        }
        // Batches a cut-short capture read and checked but did not merge:
        // still the store's next changes only if nothing moved its
        // checkpoint since (a reset, a backfill, another daemon).
        let mut carried = self
            .carry
            .remove(&name)
            .filter(|c| c.from.as_ref().map(|c| c.as_str()) == stored.as_deref());
        let started = std::time::Instant::now();
        let mut batches = 0usize;
        loop {
            if self.stopping() {
                return Ok(false);
            }
            let window = match carried.take() {
                Some(c) => c.window,
                None => {
                    let window = self.read_window(i, &mut batches).await?;
                    if window.batches.is_empty() {
                        return Ok(window.drained);
                    }
                    if !approved {
                        if let Some(pause) = self.mass_change_verdict(i, &window).await? {
                            report.entry(&name).error = Some(format!("paused: {}", pause.reason));
                            self.pause(pause)?;
                            return Ok(false);
                        }
                    }
                    window
                }
            };
            let drained = window.drained;
            let mut rest = window.batches.into_iter();
            while let Some(batch) = rest.next() {
                let stats = self
                    .merge_batch(i, batch.changes, Some(&batch.checkpoint), false)
                    .await?;
                add_stats(&mut report.entry(&name).stats, &stats);
                self.apply_canonical(report).await?;
                if let Err(e) = self.stores[i].acknowledge(&batch.checkpoint).await {
                    // The checkpoint is stored; the next read starts after it anyway.
                    tracing::warn!(store = %name, error = %e, "acknowledge failed; will repeat");
                }
                if self.budget_spent(started) {
                    let left: Vec<ChangeBatch> = rest.collect();
                    if left.is_empty() && drained {
                        return Ok(true);
                    }
                    if !left.is_empty() {
                        self.carry.insert(
                            name.clone(),
                            Carry {
                                from: Some(batch.checkpoint.clone()),
                                window: crate::guard::Window {
                                    from: Some(batch.checkpoint),
                                    batches: left,
                                    drained,
                                },
                            },
                        );
                    }
                    report.more = true;
                    return Ok(false);
                }
            }
            if drained {
                return Ok(true);
            }
            if batches >= self.opts.max_batches_per_cycle {
                report.more = true;
                return Ok(false);
            }
        }
    }

    /// Reads the next window of a store's changes from its checkpoint
    /// without merging anything: batches until the store has no more, the
    /// window holds [`crate::guard::MassChangeGuard::window`] changes, or the
    /// cycle's bound of batches is reached.
    pub(crate) async fn read_window(
        &mut self,
        i: usize,
        batches: &mut usize,
    ) -> Result<crate::guard::Window, EngineError> {
        let name = self.stores[i].name().to_string();
        let limit = self.opts.guard.window.max(self.opts.batch_size);
        let stored = self.state.checkpoint(&name)?.map(Checkpoint);
        let mut from = stored.clone();
        let mut window = crate::guard::Window {
            from: stored.clone(),
            ..Default::default()
        };
        let mut count = 0usize;
        loop {
            let batch = self.stores[i]
                .read_changes(from.as_ref(), self.opts.batch_size)
                .await?;
            *batches += 1;
            if batch.changes.is_empty() {
                if window.batches.is_empty() && stored.as_ref() != Some(&batch.checkpoint) {
                    {
                        let tx = self.state.tx()?;
                        tx.set_checkpoint(&name, batch.checkpoint.as_str())?;
                        tx.commit()?;
                    }
                    // The store may let go of what it skipped (a slot passing
                    // over the engine's own transactions releases their WAL).
                    if let Err(e) = self.stores[i].acknowledge(&batch.checkpoint).await {
                        tracing::debug!(store = %name, error = %e, "acknowledge failed; will repeat");
                    }
                }
                window.drained = true;
                return Ok(window);
            }
            count += batch.changes.len();
            from = Some(batch.checkpoint.clone());
            let more = batch.has_more;
            window.batches.push(batch);
            if !more {
                window.drained = true;
                return Ok(window);
            }
            if count >= limit || *batches >= self.opts.max_batches_per_cycle {
                return Ok(window);
            }
        }
    }

    /// Contacts whose conditional write to store `i` was refused: someone
    /// edited them there since the engine last saw them. Their current
    /// records are read and merged like captured changes (nothing is
    /// overwritten, nothing retried blindly); the store's change stream
    /// delivers the same edits later, and those late copies are not edits
    /// again (`StoreRecord::late`).
    pub(crate) async fn recapture(
        &mut self,
        i: usize,
        mut changed: Vec<(String, Option<String>)>,
        report: &mut CycleReport,
    ) -> Result<(), EngineError> {
        // A writer editing the same records again and again could refuse
        // every write: after a few rounds the rest is left for the next
        // cycle (`needs_write`), never dropped.
        for _round in 0..RECAPTURE_ROUNDS {
            if changed.is_empty() {
                return Ok(());
            }
            let ids = self.merge_out_of_turn(i, changed, report).await?;
            // Canonical's record of each, now that the edits are merged, goes
            // to the store again, on condition of what it was just seen holding.
            changed = self.resend(i, &ids, report).await?;
        }
        if !changed.is_empty() {
            let name = self.stores[i].name().to_string();
            let ids: Vec<String> = changed.into_iter().map(|(id, _)| id).collect();
            let tx = self.state.tx()?;
            for mut r in tx.store_records(&name, &ids)? {
                r.needs_write = true;
                tx.put_store_record(&r)?;
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// Writes canonical's newest record of each contact to store `i` (on
    /// condition of what the engine last saw there), without moving the
    /// store's cursor. Returns the contacts whose write was refused again.
    pub(crate) async fn resend(
        &mut self,
        i: usize,
        ids: &[String],
        report: &mut CycleReport,
    ) -> Result<Vec<(String, Option<String>)>, EngineError> {
        let name = self.stores[i].name().to_string();
        let upto = self.state.cursor(CANONICAL)?;
        let mut latest = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(e) = self.state.journal_of(id, 1)?.into_iter().next() {
                // Not in canonical yet: the store's cursor brings it.
                if e.seq <= upto {
                    latest.push(e);
                }
            }
        }
        let recs: HashMap<String, StoreRecord> = self
            .state
            .store_records(&name, ids)?
            .into_iter()
            .map(|r| (r.contact_id.clone(), r))
            .collect();
        let store = &self.stores[i];
        let plans = crate::propagate::plan(&name, |c| store.accepts(c), latest, &recs);
        let recorded = self.send(i, &name, plans, 0).await?;
        add_stats(&mut report.entry(&name).stats, &recorded.stats);
        Ok(recorded.changed)
    }

    /// Reads the records of store `i` whose conditional write was refused
    /// and merges them like captured changes. Returns their contact ids.
    async fn merge_out_of_turn(
        &mut self,
        i: usize,
        changed: Vec<(String, Option<String>)>,
        report: &mut CycleReport,
    ) -> Result<Vec<String>, EngineError> {
        let name = self.stores[i].name().to_string();
        let ids: Vec<String> = changed.iter().map(|(id, _)| id.clone()).collect();
        let mut held: HashMap<String, Contact> = self.stores[i]
            .read(&ids)
            .await?
            .into_iter()
            .map(|c| (c.contact_id.clone(), c))
            .collect();
        let recs: HashMap<String, StoreRecord> = self
            .state
            .store_records(&name, &ids)?
            .into_iter()
            .map(|r| (r.contact_id.clone(), r))
            .collect();
        let mut changes = Vec::with_capacity(changed.len());
        let mut merged = Vec::with_capacity(changed.len());
        for (id, native) in changed {
            let rec = recs.get(&id);
            let native_id = native
                .or_else(|| rec.and_then(|r| r.native_id.clone()))
                .unwrap_or_else(|| id.clone());
            match (held.remove(&id), rec) {
                (Some(c), _) => changes.push(Change {
                    native_id,
                    kind: ChangeKind::Upsert(Box::new(c)),
                }),
                // A record without its id yet cannot be read by id: the id
                // goes back with its next edit there, captured by native id.
                (None, Some(r)) if r.writeback => {
                    tracing::info!(store = %name, contact_id = %id,
                        "record changed before its id was written back; the id goes back with its next change");
                    let tx = self.state.tx()?;
                    tx.put_store_record(&StoreRecord {
                        needs_write: false,
                        writeback: false,
                        ..r.clone()
                    })?;
                    tx.commit()?;
                    continue;
                }
                (None, _) => changes.push(Change {
                    native_id,
                    kind: ChangeKind::Delete {
                        contact_id: Some(id.clone()),
                    },
                }),
            }
            merged.push(id);
        }
        let stats = self.merge_batch(i, changes, None, true).await?;
        add_stats(&mut report.entry(&name).stats, &stats);
        self.apply_canonical(report).await?;
        Ok(merged)
    }

    /// The agreed versions (`contact_id → (hash, version)`) of contacts
    /// this store last agreed with by hash only, read from the other stores
    /// that still hold exactly that content (their record in the state
    /// database has the same hash, and the record read back hashes so).
    /// Best effort: a store that is paused, fails or is slow is skipped,
    /// and a contact found nowhere has no base, as before.
    async fn bases_elsewhere(
        &mut self,
        i: usize,
        mut wanted: BTreeMap<String, (String, i64)>,
    ) -> Result<HashMap<String, Contact>, EngineError> {
        let mut found = HashMap::new();
        for j in 0..self.stores.len() {
            if wanted.is_empty() {
                break;
            }
            let other = self.stores[j].name().to_string();
            if j == i || self.state.paused(&other)?.is_some() {
                continue;
            }
            let ids: Vec<String> = wanted.keys().cloned().collect();
            let agree: Vec<String> = self
                .state
                .store_records(&other, &ids)?
                .into_iter()
                .filter(|r| {
                    !r.deleted
                        && !r.needs_write
                        && wanted.get(&r.contact_id).is_some_and(|(h, _)| *h == r.hash)
                })
                .map(|r| r.contact_id)
                .collect();
            if agree.is_empty() {
                continue;
            }
            let read =
                match tokio::time::timeout(BASE_READ_TIMEOUT, self.stores[j].read(&agree)).await {
                    Ok(Ok(read)) => read,
                    Ok(Err(e)) => {
                        tracing::debug!(store = %other, error = %e,
                            "reading merge bases from this store failed; trying the others");
                        continue;
                    }
                    Err(_) => {
                        tracing::debug!(store = %other,
                            "reading merge bases from this store timed out; trying the others");
                        continue;
                    }
                };
            for mut c in read {
                c.normalize();
                let Some((hash, version)) = wanted.get(&c.contact_id).cloned() else {
                    continue;
                };
                let mut held = content_hash(&c) == hash;
                if !held {
                    let mut p = c.clone();
                    if contact_sync_core::phone::normalize_phones(&mut p, self.opts.default_region)
                        .is_ok()
                        && content_hash(&p) == hash
                    {
                        c = p;
                        held = true;
                    }
                }
                if held {
                    wanted.remove(&c.contact_id);
                    c.version = version;
                    found.insert(c.contact_id.clone(), c);
                }
            }
        }
        Ok(found)
    }

    /// The record at `version` of a contact, as the last agreed base.
    pub(crate) fn base_at(
        &self,
        contact_id: &str,
        version: i64,
        canonical: Option<&Contact>,
    ) -> Result<Option<Contact>, EngineError> {
        if version <= 0 {
            return Ok(None);
        }
        if let Some(c) = canonical.filter(|c| c.version == version) {
            return Ok(Some(c.clone()));
        }
        if let Some(e) = self.state.journal_version(contact_id, version)? {
            return Ok(Some(e.after));
        }
        if let Some(e) = self.state.journal_after_version(contact_id, version)? {
            return Ok(e.before());
        }
        Ok(None)
    }

    /// Finds the contact id of a record that arrived without one: the id
    /// already mapped to its native id, else a canonical contact with the
    /// same primary email or phone, else a freshly minted (deterministic) id.
    async fn resolve_identity(
        &mut self,
        store: &str,
        native_id: &str,
        c: &Contact,
        minted_in_batch: &HashMap<String, String>,
    ) -> Result<String, EngineError> {
        if let Some(id) = minted_in_batch.get(native_id) {
            return Ok(id.clone());
        }
        if let Some(rec) = self.state.store_record_by_native(store, native_id)? {
            return Ok(rec.contact_id);
        }
        let emails: Vec<String> = c
            .primary_email()
            .map(|e| e.to_lowercase())
            .into_iter()
            .collect();
        let phones: Vec<String> = c.primary_phone().map(str::to_string).into_iter().collect();
        if !emails.is_empty() || !phones.is_empty() {
            let mut found = self
                .canonical
                .find_by_identity(&emails, &phones)
                .await
                .map_err(EngineError::Canonical)?;
            found.retain(|f| !f.is_deleted());
            found.sort_by(|a, b| a.contact_id.cmp(&b.contact_id));
            // Prefer an email match over a phone match.
            let by_email = found
                .iter()
                .find(|f| f.primary_email().is_some() && f.primary_email() == c.primary_email());
            if let Some(m) = by_email.or(found.first()) {
                // The store already links another of its records to this
                // contact: this one is a duplicate there, for a person to merge.
                if let Some(r) = self.state.store_record(store, &m.contact_id)? {
                    if r.native_id.as_deref().is_some_and(|n| n != native_id) && !r.deleted {
                        return Err(EngineError::Request(format!(
                            "duplicates contact {} (same primary email or phone), which {store} already holds as record {}; merge or delete one of them in {store}",
                            m.contact_id,
                            r.native_id.unwrap_or_default()
                        )));
                    }
                }
                return Ok(m.contact_id.clone());
            }
        }
        Ok(mint_contact_id(store, native_id))
    }

    /// Merges one batch of a store's changes and commits the result with the
    /// batch's checkpoint (when it has one) in one state transaction.
    /// `out_of_turn`: the records were read after a refused write, not from
    /// the store's change stream, which will deliver them again later.
    pub(crate) async fn merge_batch(
        &mut self,
        i: usize,
        changes: Vec<Change>,
        checkpoint: Option<&Checkpoint>,
        out_of_turn: bool,
    ) -> Result<RunStats, EngineError> {
        if !self.opts.concurrent {
            return self
                .merge_batch_once(i, changes, checkpoint, out_of_turn)
                .await;
        }
        let mut tries = 0;
        loop {
            match self
                .merge_batch_once(i, changes.clone(), checkpoint, out_of_turn)
                .await
            {
                Err(EngineError::JournalMoved(id)) if tries < MAX_REMERGES => {
                    tries += 1;
                    tracing::debug!(store = %self.stores[i].name(), contact_id = %id,
                        "another daemon journaled a contact of this batch meanwhile: merging again");
                }
                r => return r,
            }
        }
    }

    async fn merge_batch_once(
        &mut self,
        i: usize,
        changes: Vec<Change>,
        checkpoint: Option<&Checkpoint>,
        out_of_turn: bool,
    ) -> Result<RunStats, EngineError> {
        let name = self.stores[i].name().to_string();
        let versioned = self.stores[i].keeps_version();
        let kept_hashes = self.stores[i].keeps_content_hash();
        let logs_every_change = self.stores[i].logs_every_change();
        let now = (self.clock)();
        let mut stats = RunStats {
            captured: changes.len() as u64,
            ..Default::default()
        };
        // Each dead letter with its reason as a log line may show it.
        let mut dead: Vec<(DeadLetter, Reason)> = Vec::new();
        let mut items: Vec<Item> = Vec::with_capacity(changes.len());
        let mut minted: HashMap<String, String> = HashMap::new();

        for ch in changes {
            match ch.kind {
                ChangeKind::Undecodable { invalid, payload } => {
                    let log = invalid.log_reason();
                    dead.push((DeadLetter::refused(&name, invalid, payload, now), log));
                }
                ChangeKind::Upsert(c) => {
                    let mut c = *c;
                    c.normalize();
                    let held_hash = content_hash(&c);
                    let held = match contact_sync_core::phone::normalize_phones(
                        &mut c,
                        self.opts.default_region,
                    ) {
                        Ok(true) => Some(held_hash.clone()),
                        Ok(false) => None,
                        Err(mut invalid) => {
                            if c.contact_id.is_empty() {
                                invalid.record = format!("{name} record {}", ch.native_id);
                            }
                            let log = invalid.log_reason();
                            let payload = serde_json::to_value(&c).ok();
                            dead.push((DeadLetter::refused(&name, invalid, payload, now), log));
                            continue;
                        }
                    };
                    let mut writeback = false;
                    if c.contact_id.is_empty() {
                        let id = match self
                            .resolve_identity(&name, &ch.native_id, &c, &minted)
                            .await
                        {
                            Ok(id) => id,
                            Err(EngineError::Request(reason)) => {
                                // Names contact ids and record ids only.
                                let log = Reason::plain(reason.clone());
                                dead.push((
                                    DeadLetter {
                                        id: 0,
                                        store: name.clone(),
                                        record: format!("{name} record {}", ch.native_id),
                                        field: "contact_id".into(),
                                        reason,
                                        payload: serde_json::to_value(&c).ok(),
                                        at: now,
                                    },
                                    log,
                                ));
                                continue;
                            }
                            Err(e) => return Err(e),
                        };
                        minted.insert(ch.native_id.clone(), id.clone());
                        c.contact_id = id;
                        writeback = true;
                    }
                    if let Err(invalid) = validate(&c) {
                        let log = invalid.log_reason();
                        let mut letter =
                            DeadLetter::refused(&name, invalid, serde_json::to_value(&c).ok(), now);
                        if writeback {
                            letter.record = format!("{name} record {}", ch.native_id);
                        }
                        dead.push((letter, log));
                        continue;
                    }
                    // Unchanged by the phones (else `held`): the hash of what
                    // the store holds is the incoming record's too.
                    items.push(Item {
                        native_id: ch.native_id,
                        contact_id: c.contact_id.clone(),
                        incoming: Some(c),
                        writeback,
                        held,
                        hash: Some(held_hash),
                    });
                }
                ChangeKind::Delete { contact_id } => {
                    let id = match contact_id.filter(|s| !s.is_empty()) {
                        Some(id) => Some(id),
                        None => self
                            .state
                            .store_record_by_native(&name, &ch.native_id)?
                            .map(|r| r.contact_id),
                    };
                    match id {
                        Some(contact_id) => items.push(Item {
                            native_id: ch.native_id,
                            contact_id,
                            incoming: None,
                            writeback: false,
                            held: None,
                            hash: None,
                        }),
                        None => tracing::debug!(store = %name, native_id = %ch.native_id,
                            "delete of a record never synced; nothing to do"),
                    }
                }
            }
        }

        let ids: Vec<String> = items
            .iter()
            .map(|it| it.contact_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Several daemons: what the journal held for these contacts before
        // anything was read of them (checked again at the commit).
        let heads = read_heads(self.opts.concurrent, &self.state, &ids)?;
        let mut canon = self.read_canonical(&ids).await?;
        let canon_seen = self.canonical_seen(&canon)?;
        // The canonical side of each merge is canonical as the engine knows
        // it: the newest journal entry (which canonical holds, or is about
        // to). An edit someone made in canonical that the engine has not
        // journaled yet is not folded into this store's change: canonical
        // capture (or the refused canonical write) merges it on its own, so
        // no two journal entries ever carry one version with two contents.
        let mut journaled = BTreeSet::new();
        for id in &ids {
            if let Some(e) = self.state.journal_of(id, 1)?.into_iter().next() {
                let mut c = e.after;
                c.normalize();
                canon.insert(id.clone(), c);
                journaled.insert(id.clone());
            }
        }
        let mut recs: HashMap<String, StoreRecord> = self
            .state
            .store_records(&name, &ids)?
            .into_iter()
            .map(|r| (r.contact_id.clone(), r))
            .collect();
        // Canonical's first sightings are recorded only where canonical
        // still holds what this store was copied (what it agreed with):
        // content that differs is an edit made in canonical that canonical
        // capture has not journaled yet, and recording it as seen would
        // make that capture skip it as an echo — the edit would be lost.
        // (Another daemon captures canonical at any time; in one daemon an
        // edit between canonical's capture and this store's hit it too.)
        let canon_seen: Vec<StoreRecord> = canon_seen
            .into_iter()
            .filter(|c| {
                recs.get(&c.contact_id)
                    .is_some_and(|r| r.hash == c.hash && r.deleted == c.deleted)
            })
            .collect();

        // Contacts whose agreed version is known here only by its hash
        // (copied by the initial sync, never journaled) while canonical
        // already holds an edit not journaled yet: the base is read from
        // another store that still holds exactly that version.
        let wanted: BTreeMap<String, (String, i64)> = items
            .iter()
            .filter_map(|it| {
                let r = recs.get(&it.contact_id)?;
                let cur = canon.get(&it.contact_id)?;
                // Cheap tests first: the hashes are taken only for the
                // rare contact never journaled whose canonical moved on.
                let echo = || it.hash.as_deref() == Some(r.hash.as_str());
                let needed = r.synced_version > 0
                    && !r.deleted
                    && !r.hash.is_empty()
                    && !journaled.contains(&it.contact_id)
                    && content_hash(cur) != r.hash
                    && !echo();
                needed.then(|| (it.contact_id.clone(), (r.hash.clone(), r.synced_version)))
            })
            .collect();
        let mut bases_elsewhere = if wanted.is_empty() {
            HashMap::new()
        } else {
            self.bases_elsewhere(i, wanted).await?
        };

        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut entries: Vec<JournalEntry> = Vec::new();
        let mut open: Vec<(String, FieldConflict)> = Vec::new();
        // Contacts erased by `forget`: see `erased_image`.
        let erased = self.state.erased_among(&ids)?;
        for it in items {
            if erased.contains(&it.contact_id) {
                // An image at or above the version of the erasure's tombstone
                // (edits made there before the erasure reached the store,
                // which the table's trigger versioned, delivered after it):
                // the tombstone is journaled again above it, or the store's
                // version guard would refuse it for good.
                let prev = canon.get(&it.contact_id).cloned();
                if let (true, Some(inc), Some(p)) = (versioned, it.incoming.as_ref(), prev.as_ref())
                {
                    if inc.version >= p.version {
                        let hash = it.hash.clone().unwrap_or_else(|| content_hash(inc));
                        if let Some((e, _)) = crate::people::reassert_erasure(
                            &name,
                            inc,
                            &it.native_id,
                            inc.version,
                            Some(p),
                            &hash,
                            now,
                        ) {
                            canon.insert(it.contact_id.clone(), e.after.clone());
                            entries.push(e);
                            stats.applied += 1;
                        }
                    }
                }
                if crate::people::erased_image(
                    &name,
                    &it.native_id,
                    &it.contact_id,
                    it.incoming.as_ref(),
                    it.held.as_deref(),
                    &mut recs,
                ) {
                    touched.insert(it.contact_id.clone());
                }
                stats.skipped_echo += 1;
                continue;
            }
            if logs_every_change && !out_of_turn {
                if let Some(r) = recs.get_mut(&it.contact_id).filter(|r| !r.late.is_empty()) {
                    // The engine already merged, out of turn, a later state
                    // of this record than the stream has delivered so far:
                    // every image up to that state's own is older than what
                    // was merged (superseded); the images after it are new.
                    let hash = match &it.hash {
                        Some(h) => h.clone(),
                        None => contact_sync_core::hash::tombstone_hash().to_string(),
                    };
                    if let Some(k) = r.late.iter().position(|h| *h == hash) {
                        r.late.drain(..=k);
                    }
                    touched.insert(it.contact_id.clone());
                    stats.skipped_echo += 1;
                    continue;
                }
            }
            let rec = recs.get(&it.contact_id).cloned();
            let synced_version = rec.as_ref().map_or(0, |r| r.synced_version);
            let current = canon.get(&it.contact_id);
            // Canonical as read (a contact never journaled: copied by an
            // initial sync) is the base only when it holds what this store
            // agreed with. Read with an edit made in canonical that is not
            // journaled yet (BigQuery delivers a bumped row only after its
            // overlap window), it would make the store's older values look
            // like edits and overwrite that edit silently.
            let base_candidate = current.filter(|c| {
                journaled.contains(&it.contact_id)
                    || rec.as_ref().is_some_and(|r| r.hash == content_hash(c))
            });
            let base = match self.base_at(&it.contact_id, synced_version, base_candidate)? {
                Some(b) => Some(b),
                None => bases_elsewhere.remove(&it.contact_id),
            };
            let (incoming, hash) = match it.incoming {
                Some(c) => {
                    let hash = it.hash.clone().unwrap_or_else(|| content_hash(&c));
                    (c, hash)
                }
                None => {
                    // Removed outright: a tombstone of what the store last had.
                    match base.clone().or_else(|| current.cloned()) {
                        Some(mut t) if !t.is_deleted() => {
                            t.deleted_at = Some(now);
                            let hash = content_hash(&t);
                            (t, hash)
                        }
                        _ => {
                            // Nothing to merge, but the engine now knows the
                            // store holds nothing for the contact.
                            if let Some(r) = recs.get_mut(&it.contact_id) {
                                if !r.deleted {
                                    r.hash = contact_sync_core::hash::tombstone_hash().to_string();
                                    r.deleted = true;
                                    touched.insert(it.contact_id.clone());
                                }
                            }
                            continue;
                        }
                    }
                }
            };
            // `hash`: what the store holds (before its phones were brought
            // to E.164).
            // Provenance: a store that keeps the engine's content hash
            // forgets it on anyone else's write, so an image still carrying
            // its content's hash is an image of an engine write: never a
            // user edit, however late it comes (a replayed backfill).
            let own_image = kept_hashes
                && !it.writeback
                && incoming.content_hash.as_deref() == Some(hash.as_str());
            if own_image && out_of_turn {
                // Read back after a refused or unanswered write: what the
                // store holds is a write of the engine's (its answer was
                // lost), not an edit. Noted as what the store holds; the
                // owed write follows.
                let r = recs
                    .entry(it.contact_id.clone())
                    .or_insert_with(|| StoreRecord {
                        store: name.clone(),
                        contact_id: it.contact_id.clone(),
                        native_id: Some(it.native_id.clone()),
                        ..Default::default()
                    });
                r.hash = hash;
                r.deleted = incoming.is_deleted();
                r.needs_write = true;
                touched.insert(it.contact_id.clone());
                stats.skipped_echo += 1;
                continue;
            }
            let mut raise = false;
            if let Some(r) = recs.get_mut(&it.contact_id) {
                let echo = r.hash == hash && r.deleted == incoming.is_deleted() && !it.writeback;
                if own_image && !echo && r.hash.is_empty() {
                    // The store holds a write of the engine's whose answer
                    // was lost: noted, so the owed write is conditional on
                    // it (a later delete there is then seen, never taken
                    // for "nothing there" and written over).
                    r.hash = hash.clone();
                    r.deleted = incoming.is_deleted();
                    r.native_id.get_or_insert_with(|| it.native_id.clone());
                    touched.insert(it.contact_id.clone());
                }
                // What the store held, saved again at a version above
                // canonical's (an app that raises it on every save, or a
                // trigger that raised it for a change that normalizes to
                // the same content): no edit, but the store's version
                // guard would refuse canonical's next write as older, and
                // no capture would ever bring that "newer edit" in.
                // Canonical is raised to the store's version instead.
                raise = echo
                    && !own_image
                    && versioned
                    && current.is_some_and(|c| incoming.version > c.version);
                if (echo || own_image) && !raise {
                    stats.skipped_echo += 1;
                    continue;
                }
            } else if own_image {
                // Same, for a first write whose answer was lost.
                recs.insert(
                    it.contact_id.clone(),
                    StoreRecord {
                        store: name.clone(),
                        contact_id: it.contact_id.clone(),
                        native_id: Some(it.native_id.clone()),
                        hash: hash.clone(),
                        deleted: incoming.is_deleted(),
                        needs_write: true,
                        ..Default::default()
                    },
                );
                touched.insert(it.contact_id.clone());
                stats.skipped_echo += 1;
                continue;
            }
            // A late copy of an older write of ours: a versioned store's
            // image carries the version the engine wrote, so an image at a
            // version older than the one the store has since agreed with,
            // holding exactly that version's content, is that write coming
            // back after a newer one. Not judged by content alone: all
            // tombstones hash alike and a person may restore old content,
            // so "equals some older version" would swallow real edits and
            // deletes. (Unversioned stores get no stale copies from the
            // engine's own order: a store is captured before it is written
            // to, each contact is written once per pass, and a store whose
            // capture failed is not written to in that cycle.)
            if let Some(r) = rec.as_ref().filter(|_| versioned && !it.writeback) {
                if incoming.version < r.synced_version {
                    let old = self
                        .state
                        .journal_version(&it.contact_id, incoming.version)?;
                    if old.is_some_and(|e| e.hash == hash) {
                        stats.skipped_echo += 1;
                        continue;
                    }
                }
            }
            let outcome = if raise {
                let c = current.expect("a raise has canonical's record");
                let mut w = c.clone();
                w.version = incoming.version;
                w.last_updated = Some(now);
                w.last_updated_by = Some(name.clone());
                w.content_hash = Some(content_hash(&w));
                MergeOutcome {
                    write: Some(w),
                    changes: vec![],
                    conflicts: vec![],
                }
            } else {
                merge(MergeInput {
                    base: base.as_ref(),
                    canonical: current,
                    incoming: &incoming,
                    incoming_versioned: versioned,
                    origin: &name,
                    now,
                })
            };
            for c in &outcome.conflicts {
                stats.conflicts += 1;
                if c.resolution == Resolution::Open {
                    tracing::warn!(store = %name, contact_id = %it.contact_id, field = %c.field,
                        alert = "conflict_detected", "conflict needs a person to decide");
                }
                // Every conflict is kept, open or settled by a rule, with both
                // values and the rule (`conflicts list --all`).
                open.push((it.contact_id.clone(), c.clone()));
            }
            let mut note_needed = !outcome.conflicts.is_empty() || it.writeback;
            // The hash of canonical's record after this merge, when known.
            let mut cur_hash: Option<String> = None;
            if let Some(mut w) = outcome.write {
                w.external_ids.insert(name.clone(), it.native_id.clone());
                let prev_version = current.map_or(0, |c| c.version);
                // The merge stamps what it writes with its hash.
                let w_hash = w.content_hash.clone().unwrap_or_else(|| content_hash(&w));
                debug_assert_eq!(w_hash, content_hash(&w));
                cur_hash = Some(w_hash.clone());
                let entry = JournalEntry {
                    seq: 0,
                    contact_id: it.contact_id.clone(),
                    version: w.version,
                    prev_version,
                    op: Op::of(&w),
                    origin: name.clone(),
                    changes: outcome.changes,
                    conflicts: outcome.conflicts.clone(),
                    hash: w_hash,
                    after: w.clone(),
                    at: now,
                };
                entries.push(entry);
                stats.applied += 1;
                canon.insert(it.contact_id.clone(), w);
                note_needed = false;
            }
            if note_needed {
                if let Some(c) = canon.get(&it.contact_id).cloned() {
                    // Canonical unchanged, but the store must be told: the
                    // losers of a conflict are kept in the journal, and a
                    // record without id gets its id written back.
                    let mut after = c.clone();
                    if versioned
                        && incoming.version > c.version
                        && content_hash(&c) != content_hash(&incoming)
                    {
                        // Canonical was kept (a delete racing an edit) against a
                        // record with a higher version: re-assert it above that
                        // version, or the store's version guard would refuse it
                        // for good and the stores would never agree.
                        after.version = incoming.version + 1;
                        after.last_updated = Some(now);
                        stats.applied += 1;
                        canon.insert(it.contact_id.clone(), after.clone());
                    }
                    entries.push(JournalEntry {
                        seq: 0,
                        contact_id: it.contact_id.clone(),
                        version: after.version,
                        prev_version: c.version,
                        op: Op::of(&c),
                        origin: name.clone(),
                        changes: vec![],
                        conflicts: outcome.conflicts,
                        hash: content_hash(&after),
                        after,
                        at: now,
                    });
                }
            }
            let current = canon.get(&it.contact_id);
            touched.insert(it.contact_id.clone());
            let agreed = current.filter(|c| {
                !it.writeback
                    && match &cur_hash {
                        Some(h) => *h == hash,
                        None => content_hash(c) == hash,
                    }
            });
            // Canonical took this store's content at a newer version (an
            // edit that did not bump the version, or a conflict settled
            // for this store's side): a versioned store is owed that
            // version, or its row keeps an older one than every other
            // store (issue 13, observation 8).
            let version_owed = versioned
                && agreed.is_some_and(|c| c.version > incoming.version && !c.is_deleted());
            let rec_owed = rec.as_ref().map(|r| (r.needs_write, r.writeback));
            let mut late = rec.map(|r| r.late).unwrap_or_default();
            if out_of_turn && logs_every_change && !late.contains(&hash) {
                late.push(hash.clone());
                // Bounded: the oldest copies are long delivered or superseded.
                if late.len() > MAX_LATE {
                    late.remove(0);
                }
            }
            recs.insert(
                it.contact_id.clone(),
                StoreRecord {
                    store: name.clone(),
                    contact_id: it.contact_id.clone(),
                    native_id: Some(it.native_id.clone()),
                    synced_version: agreed.map_or(synced_version, |c| c.version),
                    // What the store holds; a record that must get its id
                    // written back is not yet in sync.
                    hash,
                    deleted: incoming.is_deleted(),
                    // Still owed canonical's record (written right after an
                    // out-of-turn merge; kept until a write confirms).
                    needs_write: it.writeback
                        || version_owed
                        || it.held.is_some()
                        || out_of_turn
                        || rec_owed.is_some_and(|(owed, _)| owed),
                    writeback: it.writeback || rec_owed.is_some_and(|(_, wb)| wb),
                    late,
                },
            );
        }

        stats.dead_letters = dead.len() as u64;
        for (d, log) in &dead {
            // The state database keeps the full reason; the log line masks
            // contact values unless --log-pii.
            tracing::warn!(store = %d.store, record = %d.record, field = %d.field,
                reason = %log, "record refused; kept in dead letters");
        }
        let concurrent = self.opts.concurrent;
        // Tests force another engine's commit into this window.
        fail::fail_point!("merge-before-commit");
        let tx = self.state.tx()?;
        check_heads(concurrent, &tx, &ids, &heads)?;
        for e in &entries {
            tx.append_journal(e)?;
        }
        for (id, c) in &open {
            tx.add_conflict(id, &name, c, now)?;
        }
        for (d, _) in &dead {
            tx.add_dead_letter(d)?;
        }
        for id in &touched {
            tx.put_store_record(&recs[id])?;
        }
        if concurrent && !canon_seen.is_empty() {
            // Canonical's first sightings, unless the daemon writing
            // canonical recorded one meanwhile (it knows better).
            let seen: Vec<String> = canon_seen.iter().map(|r| r.contact_id.clone()).collect();
            let known: BTreeSet<String> = tx
                .store_records(CANONICAL, &seen)?
                .into_iter()
                .map(|r| r.contact_id)
                .collect();
            let fresh: Vec<StoreRecord> = canon_seen
                .into_iter()
                .filter(|r| !known.contains(&r.contact_id))
                .collect();
            tx.put_store_records(&fresh)?;
        } else {
            tx.put_store_records(&canon_seen)?;
        }
        if let Some(cp) = checkpoint {
            tx.set_checkpoint(&name, cp.as_str())?;
        }
        tx.commit()?;
        debug_assert!(name != CANONICAL);
        Ok(stats)
    }
}
