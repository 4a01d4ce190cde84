//! The canonical store's two duties: receive journal entries (the journal is
//! its write-ahead log) and report changes other tools made to it directly.

use std::collections::{BTreeSet, HashMap};

use contact_sync_connector::{ChangeKind, Checkpoint, WriteOutcome};
use contact_sync_core::pii::Reason;
use contact_sync_core::{
    content_hash, diff, merge, validate, Contact, DeadLetter, FieldConflict, JournalEntry,
    MergeInput, Op, Resolution,
};
use contact_sync_state::{RunStats, StoreRecord};

use crate::capture::add_stats;
use crate::{CycleReport, Engine, EngineError, CANONICAL};

/// The last entry of each contact, in journal order (earlier entries of the
/// same contact are superseded: each entry carries the full record).
pub(crate) fn latest_per_contact(entries: Vec<JournalEntry>) -> Vec<JournalEntry> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        last.insert(e.contact_id.as_str(), i);
    }
    let mut keep = vec![false; entries.len()];
    for i in last.into_values() {
        keep[i] = true;
    }
    entries
        .into_iter()
        .zip(keep)
        .filter_map(|(e, k)| k.then_some(e))
        .collect()
}

impl Engine {
    /// Canonical's records of these ids as they are now, normalized, by id.
    pub(crate) async fn read_canonical(
        &mut self,
        ids: &[String],
    ) -> Result<HashMap<String, Contact>, EngineError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self
            .canonical
            .read(ids)
            .await
            .map_err(EngineError::Canonical)?
            .into_iter()
            .map(|mut c| {
                c.normalize();
                (c.contact_id.clone(), c)
            })
            .collect())
    }

    /// What canonical was just read holding, for the contacts the engine
    /// has no record of there yet (copied by an initial sync, or made
    /// there): recorded, it is the condition of the canonical write that
    /// follows.
    pub(crate) fn canonical_seen(
        &self,
        read: &HashMap<String, Contact>,
    ) -> Result<Vec<StoreRecord>, EngineError> {
        if read.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<String> = read.keys().cloned().collect();
        let known: BTreeSet<String> = self
            .state
            .store_records(CANONICAL, &ids)?
            .into_iter()
            .map(|r| r.contact_id)
            .collect();
        Ok(read
            .values()
            .filter(|c| !known.contains(&c.contact_id))
            .map(|c| StoreRecord {
                store: CANONICAL.to_string(),
                contact_id: c.contact_id.clone(),
                native_id: Some(c.contact_id.clone()),
                synced_version: c.version,
                hash: content_hash(c),
                deleted: c.is_deleted(),
                ..Default::default()
            })
            .collect())
    }

    /// Writes journal entries the canonical store does not have yet, then
    /// advances the canonical cursor in the same transaction that records
    /// what canonical now holds.
    pub(crate) async fn apply_canonical(
        &mut self,
        report: &mut CycleReport,
    ) -> Result<(), EngineError> {
        // Another daemon writes canonical (several daemons).
        if !self.runs(CANONICAL) {
            return Ok(());
        }
        let now = (self.clock)();
        loop {
            let cursor = self.state.cursor(CANONICAL)?;
            let head = self.state.journal_head()?;
            if cursor >= head {
                self.canonical_uncertain = false;
                return Ok(());
            }
            let entries = self
                .state
                .journal_after(cursor, head, self.opts.batch_size.max(1))?;
            let Some(last_seq) = entries.last().map(|e| e.seq) else {
                return Ok(());
            };
            let latest = latest_per_contact(entries);
            let ids: Vec<String> = latest.iter().map(|e| e.contact_id.clone()).collect();
            let recs: HashMap<String, StoreRecord> = self
                .state
                .store_records(CANONICAL, &ids)?
                .into_iter()
                .map(|r| (r.contact_id.clone(), r))
                .collect();
            // Entries canonical already holds (captured from it) need no write.
            let todo: Vec<&JournalEntry> = latest
                .iter()
                .filter(|e| {
                    recs.get(&e.contact_id).is_none_or(|r| {
                        r.synced_version < e.version
                            || (r.synced_version == e.version && r.hash != e.hash)
                    })
                })
                .collect();
            // After a failed or interrupted write the engine cannot know
            // what canonical holds: look before writing, so that a retry at
            // the same version never overwrites an edit made since.
            let mut already: Vec<(&JournalEntry, WriteOutcome)> = Vec::new();
            let todo: Vec<&JournalEntry> = if self.canonical_uncertain && !todo.is_empty() {
                let ids: Vec<String> = todo.iter().map(|e| e.contact_id.clone()).collect();
                let held = self.read_canonical(&ids).await?;
                // Content someone else wrote to canonical since the engine
                // last wrote or read it there (neither what the engine knew,
                // nor this entry, nor an earlier journal version whose write
                // went through unconfirmed): not overwritten, capture merges it.
                let mut foreign_ids = BTreeSet::new();
                for e in &todo {
                    let (Some(h), Some(r)) = (held.get(&e.contact_id), recs.get(&e.contact_id))
                    else {
                        continue;
                    };
                    let held_hash = content_hash(h);
                    if held_hash == e.hash || (r.hash == held_hash && r.deleted == h.is_deleted()) {
                        continue;
                    }
                    let ours = self
                        .state
                        .journal_version(&e.contact_id, h.version)?
                        .is_some_and(|j| j.hash == held_hash);
                    if !ours {
                        foreign_ids.insert(e.contact_id.clone());
                    }
                }
                let foreign = |e: &JournalEntry| foreign_ids.contains(&e.contact_id);
                todo.into_iter()
                    .filter(|e| match held.get(&e.contact_id) {
                        Some(h) if h.version > e.version || foreign(e) => {
                            // Merged now, not left to capture: an edit that
                            // did not bump `last_updated` is not captured.
                            already.push((e, WriteOutcome::Changed));
                            false
                        }
                        Some(h) if h.version == e.version => {
                            let outcome = if content_hash(h) == e.hash {
                                WriteOutcome::Applied {
                                    native_id: e.contact_id.clone(),
                                }
                            } else {
                                WriteOutcome::Stale {
                                    stored_version: h.version,
                                }
                            };
                            already.push((e, outcome));
                            false
                        }
                        _ => true,
                    })
                    .collect()
            } else {
                todo
            };
            let writes: Vec<Contact> = todo.iter().map(|e| e.after.clone()).collect();
            // Conditional on what canonical held when the engine last wrote
            // or read it: an edit made there since is merged, not overwritten.
            let expects: Vec<_> = todo
                .iter()
                .map(|e| crate::propagate::expect_of(recs.get(&e.contact_id)))
                .collect();
            let outcomes = if writes.is_empty() {
                vec![]
            } else {
                match self.canonical.write_batch_if(writes, &expects).await {
                    Ok((o, _)) => o,
                    Err(e) => {
                        self.canonical_uncertain = true;
                        return Err(EngineError::Canonical(e));
                    }
                }
            };
            if outcomes.len() != todo.len() {
                return Err(EngineError::Canonical(
                    contact_sync_connector::StoreError::permanent(
                        CANONICAL,
                        format!(
                            "returned {} outcomes for {} writes",
                            outcomes.len(),
                            todo.len()
                        ),
                    ),
                ));
            }
            let mut stats = RunStats::default();
            let mut changed = Vec::new();
            {
                let tx = self.state.tx()?;
                for (e, o) in todo.iter().copied().zip(outcomes).chain(already) {
                    match o {
                        WriteOutcome::Applied { native_id } => {
                            stats.written += 1;
                            tx.put_store_record(&StoreRecord {
                                store: CANONICAL.to_string(),
                                contact_id: e.contact_id.clone(),
                                native_id: Some(native_id),
                                synced_version: e.version,
                                hash: e.hash.clone(),
                                deleted: e.after.is_deleted(),
                                ..Default::default()
                            })?;
                        }
                        WriteOutcome::Changed => {
                            tracing::info!(contact_id = %e.contact_id, version = e.version,
                            "canonical record changed since the engine last saw it; not overwritten, merging it");
                            changed.push(contact_sync_connector::Change {
                                native_id: e.contact_id.clone(),
                                kind: ChangeKind::Upsert(Box::new(e.after.clone())),
                            });
                        }
                        WriteOutcome::Stale { stored_version } => {
                            // Another writer got there first; its change comes
                            // back through canonical capture and is merged then.
                            tracing::info!(contact_id = %e.contact_id, version = e.version,
                            stored_version, "canonical holds a newer version; not overwritten");
                        }
                        WriteOutcome::Rejected { field, reason } => {
                            stats.dead_letters += 1;
                            tracing::warn!(contact_id = %e.contact_id, field = %field, reason = %reason,
                            alert = "sync_failure", "canonical store refused a record");
                            tx.add_dead_letter(&DeadLetter {
                                id: 0,
                                store: CANONICAL.to_string(),
                                record: e.contact_id.clone(),
                                field,
                                reason,
                                payload: serde_json::to_value(&e.after).ok(),
                                at: now,
                            })?;
                        }
                    }
                }
                tx.set_cursor(CANONICAL, last_seq)?;
                tx.commit()?;
            }
            add_stats(&mut report.entry(CANONICAL).stats, &stats);
            if !changed.is_empty() {
                // Journals what canonical holds now, merged three-way with
                // the entries it did not take (the journal is ahead of it).
                let stats = self.journal_canonical_batch(changed, None).await?;
                add_stats(&mut report.entry(CANONICAL).stats, &stats);
            }
        }
    }

    /// The highest canonical version any store (canonical included) has
    /// agreed with for this contact while holding other content than
    /// `hash` (a tombstone when `deleted`); 0 when none has.
    fn highest_synced_version(
        &self,
        contact_id: &str,
        hash: &str,
        deleted: bool,
    ) -> Result<i64, EngineError> {
        let mut v = 0;
        let names = std::iter::once(CANONICAL).chain(self.stores.iter().map(|s| s.name()));
        for name in names {
            if let Some(r) = self.state.store_record(name, contact_id)? {
                if r.hash != hash || r.deleted != deleted {
                    v = v.max(r.synced_version);
                }
            }
        }
        Ok(v)
    }

    /// Changes made to the canonical store by other tools: validated,
    /// echo-filtered, versioned and journaled so every store gets them.
    pub(crate) async fn capture_canonical(
        &mut self,
        report: &mut CycleReport,
    ) -> Result<(), EngineError> {
        if let Some(cp) = self.state.checkpoint(CANONICAL)? {
            if let Err(e) = self.canonical.acknowledge(&Checkpoint(cp)).await {
                tracing::debug!(error = %e, "canonical re-acknowledge failed");
            }
        }
        let started = std::time::Instant::now();
        for round in 0..self.opts.max_batches_per_cycle {
            if self.stopping() {
                break;
            }
            // The cycle's bound of batches, or its time budget (see
            // `capture_store`): the rest in the next cycle, at once.
            if round > 0 && self.budget_spent(started) {
                report.more = true;
                break;
            }
            if round + 1 == self.opts.max_batches_per_cycle {
                report.more = true;
            }
            let from = self.state.checkpoint(CANONICAL)?.map(Checkpoint);
            let batch = self
                .canonical
                .read_changes(from.as_ref(), self.opts.batch_size)
                .await
                .map_err(EngineError::Canonical)?;
            if batch.changes.is_empty() {
                if from.as_ref() != Some(&batch.checkpoint) {
                    let tx = self.state.tx()?;
                    tx.set_checkpoint(CANONICAL, batch.checkpoint.as_str())?;
                    tx.commit()?;
                }
                break;
            }
            let stats = self
                .journal_canonical_batch(batch.changes, Some(&batch.checkpoint))
                .await?;
            add_stats(&mut report.entry(CANONICAL).stats, &stats);
            self.apply_canonical(report).await?;
            if let Err(e) = self.canonical.acknowledge(&batch.checkpoint).await {
                tracing::warn!(error = %e, "canonical acknowledge failed; will repeat");
            }
            if !batch.has_more {
                break;
            }
        }
        Ok(())
    }

    /// Journals what canonical holds now for each changed contact. The
    /// change images only say *which* contacts changed: canonical is the
    /// truth, and an image may be older than what the engine wrote since.
    async fn journal_canonical_batch(
        &mut self,
        changes: Vec<contact_sync_connector::Change>,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<RunStats, EngineError> {
        if !self.opts.concurrent {
            return self.journal_canonical_once(changes, checkpoint).await;
        }
        let mut tries = 0;
        loop {
            match self
                .journal_canonical_once(changes.clone(), checkpoint)
                .await
            {
                Err(EngineError::JournalMoved(id)) if tries < crate::capture::MAX_REMERGES => {
                    tries += 1;
                    tracing::debug!(contact_id = %id,
                        "another daemon journaled a contact of this batch meanwhile: merging again");
                }
                r => return r,
            }
        }
    }

    async fn journal_canonical_once(
        &mut self,
        changes: Vec<contact_sync_connector::Change>,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<RunStats, EngineError> {
        let now = (self.clock)();
        let mut stats = RunStats {
            captured: changes.len() as u64,
            ..Default::default()
        };
        // Each dead letter with its reason as a log line may show it.
        let mut dead: Vec<(DeadLetter, Reason)> = Vec::new();
        let mut entries: Vec<JournalEntry> = Vec::new();
        let mut recs: HashMap<String, StoreRecord> = HashMap::new();
        let mut touched = BTreeSet::new();
        let mut open: Vec<(String, FieldConflict)> = Vec::new();
        // Changed contact ids, in order of first appearance, with a native id.
        let mut order: Vec<(String, String)> = Vec::new();
        let mut seen = BTreeSet::new();
        for ch in changes {
            let contact_id = match ch.kind {
                ChangeKind::Undecodable { invalid, payload } => {
                    let log = invalid.log_reason();
                    dead.push((DeadLetter::refused(CANONICAL, invalid, payload, now), log));
                    continue;
                }
                ChangeKind::Upsert(c) => {
                    if c.contact_id.trim().is_empty() {
                        dead.push((
                            DeadLetter {
                                id: 0,
                                store: CANONICAL.to_string(),
                                record: format!("canonical record {}", ch.native_id),
                                field: "contact_id".into(),
                                reason: "is missing".into(),
                                payload: serde_json::to_value(&c).ok(),
                                at: now,
                            },
                            Reason::plain("is missing"),
                        ));
                        continue;
                    }
                    c.contact_id.trim().to_string()
                }
                ChangeKind::Delete { contact_id } => match contact_id.filter(|s| !s.is_empty()) {
                    Some(id) => id,
                    None => match self
                        .state
                        .store_record_by_native(CANONICAL, &ch.native_id)?
                    {
                        Some(r) => r.contact_id,
                        None => continue,
                    },
                },
            };
            if seen.insert(contact_id.clone()) {
                order.push((contact_id, ch.native_id));
            }
        }
        let ids: Vec<String> = order.iter().map(|(id, _)| id.clone()).collect();
        let heads = crate::capture::read_heads(self.opts.concurrent, &self.state, &ids)?;
        let mut current: HashMap<String, Contact> = HashMap::new();
        if !ids.is_empty() {
            for c in self
                .canonical
                .read(&ids)
                .await
                .map_err(EngineError::Canonical)?
            {
                current.insert(c.contact_id.clone(), c);
            }
        }
        let erased = self.state.erased_among(&ids)?;
        for r in self.state.store_records(CANONICAL, &ids)? {
            recs.insert(r.contact_id.clone(), r);
        }
        for (contact_id, native_id) in order {
            let prev = self
                .state
                .journal_of(&contact_id, 1)?
                .into_iter()
                .next()
                .map(|e| e.after);
            let (mut c, held_version) = match current.remove(&contact_id) {
                Some(mut c) => {
                    c.normalize();
                    let v = c.version;
                    (c, v)
                }
                None => {
                    // Removed outright: a tombstone of the last known record
                    // (only its id when the engine never journaled it).
                    let mut t = match prev.clone() {
                        Some(p) if p.is_deleted() => continue,
                        Some(p) => p,
                        None => {
                            // Above every version a store holds, so that no
                            // store mistakes the tombstone for the version it
                            // has (which would make its record look undeleted).
                            let mut t = Contact::new(contact_id.clone(), "");
                            t.deleted_at = Some(now);
                            t.version =
                                self.highest_synced_version(&contact_id, &content_hash(&t), true)?
                                    + 1;
                            t
                        }
                    };
                    t.deleted_at = Some(now);
                    (t, 0)
                }
            };
            let hash = content_hash(&c);
            if erased.contains(&contact_id) {
                // Erased (`forget`): an image in canonical is never an edit.
                if let Some((e, r)) = crate::people::reassert_erasure(
                    CANONICAL,
                    &c,
                    &native_id,
                    held_version,
                    prev.as_ref(),
                    &hash,
                    now,
                ) {
                    entries.push(e);
                    recs.insert(contact_id.clone(), r);
                    touched.insert(contact_id);
                    stats.applied += 1;
                }
                continue;
            }
            // What canonical held, saved again at a version above the
            // journal's (a tool that raises it on every save) is no edit,
            // but it is journaled like one: the engine's next write to
            // canonical (at the journal's next version) would be refused as
            // older, and every store is to hold the version canonical holds.
            let raised = match prev.as_ref() {
                Some(p) => held_version > p.version,
                None => recs
                    .get(&contact_id)
                    .is_some_and(|r| r.synced_version > 0 && held_version > r.synced_version),
            };
            if let Some(r) = recs.get(&contact_id) {
                if r.hash == hash && r.deleted == c.is_deleted() && !raised {
                    stats.skipped_echo += 1;
                    continue;
                }
            }
            if let Err(invalid) = validate(&c) {
                let log = invalid.log_reason();
                let payload = serde_json::to_value(&c).ok();
                dead.push((DeadLetter::refused(CANONICAL, invalid, payload, now), log));
                // Remember the refused content so it is reported once.
                recs.insert(
                    contact_id.clone(),
                    StoreRecord {
                        store: CANONICAL.to_string(),
                        contact_id: contact_id.clone(),
                        native_id: Some(native_id),
                        synced_version: recs.get(&contact_id).map_or(0, |r| r.synced_version),
                        hash,
                        deleted: c.is_deleted(),
                        ..Default::default()
                    },
                );
                touched.insert(contact_id);
                continue;
            }
            let synced = recs.get(&contact_id).map_or(0, |r| r.synced_version);
            if let Some(p) = prev.as_ref().filter(|p| p.version > synced) {
                // The journal is ahead of canonical: an entry canonical has
                // not taken (its write failed, or was held back because of
                // this very edit) raced an edit made in canonical. The edit
                // is merged three-way like any store's, against what
                // canonical last held, so neither side is lost silently.
                // Canonical held the entry's very content under an older
                // version number (its own edit that did not bump the
                // version, journaled one above, not yet written back):
                // the entry is the base, or the edit on top of it would
                // read as a conflict with canonical's own earlier edit.
                let base_version = match recs.get(&contact_id) {
                    Some(r) if r.hash == content_hash(p) && r.deleted == p.is_deleted() => {
                        p.version
                    }
                    _ => synced,
                };
                let base = self.base_at(&contact_id, base_version, None)?;
                let outcome = merge(MergeInput {
                    base: base.as_ref(),
                    canonical: Some(p),
                    incoming: &c,
                    incoming_versioned: self.canonical.keeps_version(),
                    origin: CANONICAL,
                    now,
                });
                for fc in &outcome.conflicts {
                    stats.conflicts += 1;
                    if fc.resolution == Resolution::Open {
                        tracing::warn!(store = CANONICAL, contact_id = %contact_id, field = %fc.field,
                            alert = "conflict_detected", "conflict needs a person to decide");
                    }
                    // Kept open or settled, with both values and the rule.
                    open.push((contact_id.clone(), fc.clone()));
                }
                let (mut after, changes) = match outcome.write {
                    Some(w) => (w, outcome.changes),
                    None => {
                        // The journal's record stands; re-assert it above
                        // the edit's version so canonical takes it.
                        let mut a = p.clone();
                        a.version = p.version.max(held_version) + 1;
                        a.last_updated = Some(now);
                        (a, vec![])
                    }
                };
                // Above what canonical holds: the merge may give the
                // edit's own version (bumped by whoever made it), and
                // canonical would refuse two contents at one version as
                // stale — the entry's side of the merge would never reach
                // it (found by the property test's faults).
                if after.version <= held_version {
                    after.version = held_version + 1;
                }
                let after_hash = content_hash(&after);
                after.content_hash = Some(after_hash.clone());
                stats.applied += 1;
                entries.push(JournalEntry {
                    seq: 0,
                    contact_id: contact_id.clone(),
                    version: after.version,
                    prev_version: p.version,
                    op: Op::of(&after),
                    origin: CANONICAL.to_string(),
                    changes,
                    conflicts: outcome.conflicts,
                    hash: after_hash,
                    after,
                    at: now,
                });
                // What canonical holds now; apply writes the merged record.
                // Its base stays the last version canonical agreed with:
                // the edit's own version number (bumped by whoever made it)
                // may be a journal version of other content (the entry it
                // raced), and a base that is not an ancestor of what
                // canonical holds would read fields canonical never had as
                // fields it cleared.
                let agreed = match self.state.journal_version(&contact_id, held_version)? {
                    Some(e) if e.hash == hash => held_version,
                    _ => synced,
                };
                recs.insert(
                    contact_id.clone(),
                    StoreRecord {
                        store: CANONICAL.to_string(),
                        contact_id: contact_id.clone(),
                        native_id: Some(native_id),
                        synced_version: agreed,
                        hash,
                        deleted: c.is_deleted(),
                        ..Default::default()
                    },
                );
                touched.insert(contact_id);
                continue;
            }
            // A store may hold a version the journal never had (copied by
            // initial sync): the new version must be above it too.
            let prev_version = prev
                .as_ref()
                .map_or(0, |p| p.version)
                .max(synced)
                .max(self.highest_synced_version(&contact_id, &hash, c.is_deleted())?);
            // Another tool may have edited without bumping the version.
            if c.version <= prev_version {
                c.version = prev_version + 1;
            }
            if c.last_updated.is_none() {
                c.last_updated = Some(now);
            }
            if c.last_updated_by.is_none() {
                c.last_updated_by = Some(CANONICAL.to_string());
            }
            c.content_hash = Some(hash.clone());
            stats.applied += 1;
            entries.push(JournalEntry {
                seq: 0,
                contact_id: contact_id.clone(),
                version: c.version,
                prev_version,
                op: Op::of(&c),
                origin: c
                    .last_updated_by
                    .clone()
                    .unwrap_or_else(|| CANONICAL.into()),
                changes: diff(prev.as_ref(), &c),
                conflicts: vec![],
                hash: hash.clone(),
                after: c.clone(),
                at: now,
            });
            // What canonical holds now: apply rewrites it only if the version was bumped.
            recs.insert(
                contact_id.clone(),
                StoreRecord {
                    store: CANONICAL.to_string(),
                    contact_id: contact_id.clone(),
                    native_id: Some(native_id),
                    synced_version: held_version,
                    hash,
                    deleted: c.is_deleted(),
                    ..Default::default()
                },
            );
            touched.insert(contact_id);
        }
        stats.dead_letters = dead.len() as u64;
        let concurrent = self.opts.concurrent;
        let tx = self.state.tx()?;
        crate::capture::check_heads(concurrent, &tx, &ids, &heads)?;
        for e in &entries {
            tx.append_journal(e)?;
        }
        for (d, log) in &dead {
            // The state database keeps the full reason; the log line masks
            // contact values unless --log-pii.
            tracing::warn!(store = CANONICAL, record = %d.record, field = %d.field,
                reason = %log, "record refused; kept in dead letters");
            tx.add_dead_letter(d)?;
        }
        for (id, fc) in &open {
            tx.add_conflict(id, CANONICAL, fc, now)?;
        }
        for id in &touched {
            tx.put_store_record(&recs[id])?;
        }
        if let Some(cp) = checkpoint {
            tx.set_checkpoint(CANONICAL, cp.as_str())?;
        }
        tx.commit()?;
        Ok(stats)
    }
}
