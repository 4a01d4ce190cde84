//! The canonical store's two duties: receive journal entries (the journal is
//! its write-ahead log) and report changes other tools made to it directly.

use std::collections::{BTreeSet, HashMap};

use contact_sync_connector::{ChangeKind, Checkpoint, WriteOutcome};
use contact_sync_core::{content_hash, diff, validate, Contact, DeadLetter, JournalEntry, Op};
use contact_sync_state::{RunStats, StoreRecord};

use crate::capture::add_stats;
use crate::{CycleReport, Engine, EngineError, CANONICAL};

/// The last entry of each contact, in journal order (earlier entries of the
/// same contact are superseded: each entry carries the full record).
pub(crate) fn latest_per_contact(entries: &[JournalEntry]) -> Vec<&JournalEntry> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        last.insert(e.contact_id.as_str(), i);
    }
    let mut idx: Vec<usize> = last.into_values().collect();
    idx.sort_unstable();
    idx.into_iter().map(|i| &entries[i]).collect()
}

impl Engine {
    /// Writes journal entries the canonical store does not have yet, then
    /// advances the canonical cursor in the same transaction that records
    /// what canonical now holds.
    pub(crate) async fn apply_canonical(
        &mut self,
        report: &mut CycleReport,
    ) -> Result<(), EngineError> {
        let now = (self.clock)();
        loop {
            let cursor = self.state.cursor(CANONICAL)?;
            let head = self.state.journal_head()?;
            if cursor >= head {
                return Ok(());
            }
            let entries = self
                .state
                .journal_after(cursor, head, self.opts.batch_size.max(1))?;
            let Some(last_seq) = entries.last().map(|e| e.seq) else {
                return Ok(());
            };
            let latest = latest_per_contact(&entries);
            let ids: Vec<String> = latest.iter().map(|e| e.contact_id.clone()).collect();
            let recs: HashMap<String, StoreRecord> = self
                .state
                .store_records(CANONICAL, &ids)?
                .into_iter()
                .map(|r| (r.contact_id.clone(), r))
                .collect();
            // Entries canonical already holds (captured from it) need no write.
            let todo: Vec<&JournalEntry> = latest
                .into_iter()
                .filter(|e| {
                    recs.get(&e.contact_id).is_none_or(|r| {
                        r.synced_version < e.version
                            || (r.synced_version == e.version && r.hash != e.hash)
                    })
                })
                .collect();
            let writes: Vec<Contact> = todo.iter().map(|e| e.after.clone()).collect();
            let outcomes = if writes.is_empty() {
                vec![]
            } else {
                self.canonical
                    .write_batch(&writes)
                    .await
                    .map_err(EngineError::Canonical)?
            };
            if outcomes.len() != writes.len() {
                return Err(EngineError::Canonical(
                    contact_sync_connector::StoreError::permanent(
                        CANONICAL,
                        format!(
                            "returned {} outcomes for {} writes",
                            outcomes.len(),
                            writes.len()
                        ),
                    ),
                ));
            }
            let mut stats = RunStats::default();
            let tx = self.state.tx()?;
            for (e, o) in todo.iter().zip(outcomes) {
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
                        })?;
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
            add_stats(&mut report.entry(CANONICAL).stats, &stats);
        }
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
        for _ in 0..self.opts.max_batches_per_cycle {
            if self.stopping() {
                break;
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
            let stats = self.journal_canonical_batch(batch.changes, &batch.checkpoint)?;
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

    fn journal_canonical_batch(
        &mut self,
        changes: Vec<contact_sync_connector::Change>,
        checkpoint: &Checkpoint,
    ) -> Result<RunStats, EngineError> {
        let now = (self.clock)();
        let mut stats = RunStats {
            captured: changes.len() as u64,
            ..Default::default()
        };
        let mut dead = Vec::new();
        let mut entries: Vec<JournalEntry> = Vec::new();
        // The latest known canonical record per contact (journal, then this batch).
        let mut known: HashMap<String, Contact> = HashMap::new();
        let mut recs: HashMap<String, StoreRecord> = HashMap::new();
        let mut touched = BTreeSet::new();
        for ch in changes {
            let (contact_id, incoming) = match ch.kind {
                ChangeKind::Undecodable { invalid, payload } => {
                    dead.push(DeadLetter {
                        id: 0,
                        store: CANONICAL.to_string(),
                        record: invalid.record,
                        field: invalid.field,
                        reason: invalid.reason,
                        payload,
                        at: now,
                    });
                    continue;
                }
                ChangeKind::Upsert(c) => (c.contact_id.clone(), Some(*c)),
                ChangeKind::Delete { contact_id } => {
                    let id = match contact_id.filter(|s| !s.is_empty()) {
                        Some(id) => id,
                        None => match self
                            .state
                            .store_record_by_native(CANONICAL, &ch.native_id)?
                        {
                            Some(r) => r.contact_id,
                            None => continue,
                        },
                    };
                    (id, None)
                }
            };
            if contact_id.is_empty() {
                dead.push(DeadLetter {
                    id: 0,
                    store: CANONICAL.to_string(),
                    record: format!("canonical record {}", ch.native_id),
                    field: "contact_id".into(),
                    reason: "is missing".into(),
                    payload: incoming.and_then(|c| serde_json::to_value(c).ok()),
                    at: now,
                });
                continue;
            }
            if !known.contains_key(&contact_id) {
                if let Some(e) = self.state.journal_of(&contact_id, 1)?.into_iter().next() {
                    known.insert(contact_id.clone(), e.after);
                }
            }
            if !recs.contains_key(&contact_id) {
                if let Some(r) = self.state.store_record(CANONICAL, &contact_id)? {
                    recs.insert(contact_id.clone(), r);
                }
            }
            let prev = known.get(&contact_id).cloned();
            let mut c = match incoming {
                Some(mut c) => {
                    c.normalize();
                    c
                }
                None => {
                    let Some(mut t) = prev.clone() else { continue };
                    if t.is_deleted() {
                        continue;
                    }
                    t.deleted_at = Some(now);
                    t
                }
            };
            let hash = content_hash(&c);
            if let Some(r) = recs.get(&contact_id) {
                if r.hash == hash && r.deleted == c.is_deleted() {
                    stats.skipped_echo += 1;
                    continue;
                }
            }
            if let Err(invalid) = validate(&c) {
                dead.push(DeadLetter {
                    id: 0,
                    store: CANONICAL.to_string(),
                    record: invalid.record,
                    field: invalid.field,
                    reason: invalid.reason,
                    payload: serde_json::to_value(&c).ok(),
                    at: now,
                });
                continue;
            }
            let prev_version = prev
                .as_ref()
                .map_or(0, |p| p.version)
                .max(recs.get(&contact_id).map_or(0, |r| r.synced_version));
            let held_version = c.version;
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
            let entry = JournalEntry {
                seq: 0,
                contact_id: contact_id.clone(),
                version: c.version,
                prev_version,
                op: if c.is_deleted() {
                    Op::Delete
                } else {
                    Op::Upsert
                },
                origin: c
                    .last_updated_by
                    .clone()
                    .unwrap_or_else(|| CANONICAL.into()),
                changes: diff(prev.as_ref(), &c),
                conflicts: vec![],
                hash: hash.clone(),
                after: c.clone(),
                at: now,
            };
            stats.applied += 1;
            entries.push(entry);
            // What canonical holds now: apply rewrites it only if the version was bumped.
            recs.insert(
                contact_id.clone(),
                StoreRecord {
                    store: CANONICAL.to_string(),
                    contact_id: contact_id.clone(),
                    native_id: Some(ch.native_id.clone()),
                    synced_version: held_version,
                    hash,
                    deleted: c.is_deleted(),
                },
            );
            touched.insert(contact_id.clone());
            known.insert(contact_id, c);
        }
        stats.dead_letters = dead.len() as u64;
        let tx = self.state.tx()?;
        for e in &entries {
            tx.append_journal(e)?;
        }
        for d in &dead {
            tracing::warn!(store = CANONICAL, record = %d.record, field = %d.field,
                reason = %d.reason, "record refused; kept in dead letters");
            tx.add_dead_letter(d)?;
        }
        for id in &touched {
            tx.put_store_record(&recs[id])?;
        }
        tx.set_checkpoint(CANONICAL, checkpoint.as_str())?;
        tx.commit()?;
        Ok(stats)
    }
}
