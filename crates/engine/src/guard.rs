//! Guards: a store is paused, and nothing of what it says is merged, when
//! it reports more deletes or blankings in one window than a person would
//! make by hand (a `DELETE FROM contacts`, an `UPDATE … SET organization =
//! NULL`), or when its schema or change stream changed under the engine (a
//! lost column, a dropped publication, a truncate). A person then decides:
//! approve (merge the held changes), reject (keep canonical and write it
//! back to the store) or resume (after fixing the schema). Decisions are
//! rows in the state database, so the CLI can make them while the daemon
//! runs; the daemon carries them out at its next cycle. Nothing else stops.

use std::collections::{BTreeMap, HashMap};

use contact_sync_connector::RetryClass;
use contact_sync_connector::{ChangeBatch, ChangeKind, Checkpoint};
use contact_sync_core::{content_hash, Contact, JournalEntry, Op};
use contact_sync_state::{Decision, Parked, PauseKind, PausedStore, StoreRecord};
use serde_json::json;

use crate::{CycleReport, Engine, EngineError, CANONICAL};

/// The mass-change guard's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MassChangeGuard {
    /// Off: every change is merged as it comes.
    pub enabled: bool,
    /// Percent of the store's live contacts that one window may delete, or
    /// blank one field of.
    pub percent: f64,
    /// Never more than this many (large stores).
    pub max: u64,
    /// Always at least this many (small stores).
    pub min: u64,
    /// Changes read ahead and checked before any of them is merged.
    pub window: usize,
}

impl Default for MassChangeGuard {
    fn default() -> Self {
        MassChangeGuard {
            enabled: true,
            percent: 10.0,
            max: 500,
            min: 25,
            window: 5000,
        }
    }
}

impl MassChangeGuard {
    /// How many deletes (or blankings of one field) a window of a store
    /// holding `live` contacts may carry.
    pub fn threshold(&self, live: u64) -> u64 {
        let pct = (live as f64 * self.percent / 100.0).floor() as u64;
        pct.min(self.max).max(self.min)
    }
}

/// Changes read ahead from a store, not merged yet.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// The stored checkpoint the window starts after.
    pub from: Option<Checkpoint>,
    pub batches: Vec<ChangeBatch>,
    /// The store has no more changes after the window.
    pub drained: bool,
}

impl Window {
    fn upto(&self) -> Option<&Checkpoint> {
        self.batches.last().map(|b| &b.checkpoint)
    }
}

impl Engine {
    /// Counts what a window would delete or blank in canonical; over the
    /// threshold, the pause to record.
    pub(crate) async fn mass_change_verdict(
        &mut self,
        i: usize,
        window: &Window,
    ) -> Result<Option<PausedStore>, EngineError> {
        let guard = self.opts.guard.clone();
        if !guard.enabled {
            return Ok(None);
        }
        let name = self.stores[i].name().to_string();
        let kept_hashes = self.stores[i].keeps_content_hash();
        // The last change of each record in the window.
        let mut last: HashMap<String, &ChangeKind> = HashMap::new();
        let mut changes = 0usize;
        for b in &window.batches {
            for ch in &b.changes {
                changes += 1;
                last.insert(ch.native_id.clone(), &ch.kind);
            }
        }
        // Cheap bounds first: fewer changed records than the threshold
        // cannot exceed it, and no threshold is below `min` (counting the
        // store's records costs ~100 ms at 1M: not for every small window).
        if (last.len() as u64) <= guard.min {
            return Ok(None);
        }
        let live = self.state.store_record_count(&name)?;
        let threshold = guard.threshold(live);
        if (last.len() as u64) <= threshold {
            return Ok(None);
        }
        let mut deletes = 0u64;
        // Live records the change would leave with blank fields, compared
        // with canonical's record below.
        let mut edited: Vec<Contact> = Vec::new();
        // The store's records of the changes with a contact id, in one read.
        let with_id: Vec<String> = last
            .values()
            .filter_map(|kind| match kind {
                ChangeKind::Delete {
                    contact_id: Some(id),
                } => Some(id.clone()),
                ChangeKind::Upsert(c) => Some(c.contact_id.clone()),
                _ => None,
            })
            .filter(|id| !id.is_empty())
            .collect();
        let recs: HashMap<String, StoreRecord> = self
            .state
            .store_records(&name, &with_id)?
            .into_iter()
            .map(|r| (r.contact_id.clone(), r))
            .collect();
        for (native, kind) in last {
            let (contact_id, incoming): (Option<String>, Option<&Contact>) = match kind {
                ChangeKind::Delete { contact_id } => (contact_id.clone(), None),
                ChangeKind::Upsert(c) => (Some(c.contact_id.clone()), Some(&**c)),
                ChangeKind::Undecodable { .. } => continue,
            };
            let rec = match contact_id.filter(|id| !id.is_empty()) {
                Some(id) => recs.get(&id).cloned(),
                None => self.state.store_record_by_native(&name, &native)?,
            };
            // Only what the engine knows the store held can be lost.
            let Some(rec) = rec.filter(|r| !r.deleted) else {
                continue;
            };
            let Some(c) = incoming else {
                deletes += 1;
                continue;
            };
            let mut c = c.clone();
            c.normalize();
            let hash = content_hash(&c);
            if hash == rec.hash
                || rec.late.contains(&hash)
                || (kept_hashes && c.content_hash.as_deref() == Some(hash.as_str()))
            {
                continue; // an echo or an image of the engine's own write
            }
            if c.is_deleted() {
                deletes += 1;
                continue;
            }
            c.contact_id = rec.contact_id;
            edited.push(c);
        }
        let mut blanked: BTreeMap<String, u64> = BTreeMap::new();
        for chunk in edited.chunks(500) {
            let ids: Vec<String> = chunk.iter().map(|c| c.contact_id.clone()).collect();
            let held = self.read_canonical(&ids).await?;
            for c in chunk {
                let Some(before) = held.get(&c.contact_id).filter(|b| !b.is_deleted()) else {
                    continue;
                };
                // Typed: no JSON map per side (issue 18 item 2).
                for field in contact_sync_core::fields::blanked_fields(before, c) {
                    *blanked.entry(field.to_string()).or_default() += 1;
                }
            }
        }
        let worst_field = blanked.iter().max_by_key(|(_, n)| **n);
        let over_deletes = deletes > threshold;
        let over_blank = worst_field.is_some_and(|(_, n)| *n > threshold);
        if !over_deletes && !over_blank {
            return Ok(None);
        }
        let mut what = Vec::new();
        if over_deletes {
            what.push(format!("{deletes} deletes"));
        }
        if let Some((field, n)) = worst_field.filter(|_| over_blank) {
            what.push(format!("{n} blankings of {field}"));
        }
        let reason = format!(
            "{} in one window of changes from {name} exceed the mass-change guard ({threshold} of {live} contacts); nothing of them was merged. \
             Run `contact-sync approve {name}` to apply them everywhere, or `contact-sync reject {name}` to restore canonical's records in {name}",
            what.join(" and ")
        );
        Ok(Some(PausedStore {
            store: name,
            kind: PauseKind::MassChange,
            reason,
            details: json!({
                "deletes": deletes,
                "blanked": blanked,
                "threshold": threshold,
                "live_contacts": live,
                "changes": changes,
                "from": window.from.as_ref().map(|c| c.as_str()),
                "upto": window.upto().map(|c| c.as_str()),
            }),
            since: (self.clock)(),
            decision: None,
            decided_at: None,
            parked: None,
        }))
    }

    /// Records a pause and raises its alert.
    pub(crate) fn pause(&mut self, p: PausedStore) -> Result<(), EngineError> {
        tracing::error!(store = %p.store, kind = p.kind.as_str(), reason = %p.reason,
            alert = "store_paused", "store paused; a person must decide");
        self.carry.remove(&p.store);
        let tx = self.state.tx()?;
        tx.pause_store(&p)?;
        tx.commit()?;
        Ok(())
    }

    /// Pauses store `name` when its error says its schema or change stream
    /// changed, or parks it when the error is permanent (retrying cannot
    /// help: bad credentials, a permission or object missing, a value the
    /// store refuses for good) instead of failing the same way every
    /// cycle. True when the store is paused (now or already).
    ///
    /// The daemon also calls it for a step it runs outside the cycles (a
    /// store's initial sync), so that step is not retried either until
    /// `resume` or a changed configuration.
    pub fn pause_on_error(
        &mut self,
        name: &str,
        step: &str,
        e: &EngineError,
    ) -> Result<bool, EngineError> {
        let EngineError::Store(err) = e else {
            return Ok(false);
        };
        let (store, class, message) = (&err.store, &err.class, err.detail());
        let parks = *class == RetryClass::Permanent && store == name && name != CANONICAL;
        if *class != RetryClass::Paused && !parks {
            return Ok(false);
        }
        if self.state.paused(store)?.is_some() {
            return Ok(true);
        }
        let p = match class {
            RetryClass::Paused => PausedStore {
                store: store.clone(),
                kind: PauseKind::Schema,
                reason: format!(
                    "{message}. Nothing from {store} is merged or written until `contact-sync resume {store}`"
                ),
                details: json!({}),
                since: (self.clock)(),
                decision: None,
                decided_at: None,
                parked: None,
            },
            _ => PausedStore {
                store: store.clone(),
                kind: PauseKind::Schema,
                reason: format!(
                    "{step} failed with an error retrying cannot fix: {message}. Nothing from {store} is \
                     merged or written until it is fixed and `contact-sync resume {store}` is run \
                     (or the daemon is started with a changed configuration for {store})"
                ),
                details: json!({ "step": step }),
                since: (self.clock)(),
                decision: None,
                decided_at: None,
                parked: Some(Parked {
                    config_hash: self.opts.config_hashes.get(store).cloned(),
                }),
            },
        };
        self.pause(p)?;
        Ok(true)
    }

    /// Carries out a person's decision about paused store `i`, if one is
    /// waiting. Returns whether the store may run this cycle, and whether
    /// its capture skips the mass-change guard once (approved).
    pub(crate) async fn settle_pause(
        &mut self,
        i: usize,
        report: &mut CycleReport,
    ) -> Result<(bool, bool), EngineError> {
        let name = self.stores[i].name().to_string();
        let Some(p) = self.state.paused(&name)? else {
            return Ok((true, false));
        };
        // A store parked with another configuration than this engine's
        // (someone changed it to fix what failed): tried again. Unknown on
        // either side: only a person resumes it.
        let reconfigured = p.parked.as_ref().is_some_and(|x| {
            matches!((&x.config_hash, self.opts.config_hashes.get(&name)),
                (Some(then), Some(now)) if then != now)
        });
        if reconfigured && p.decision.is_none() {
            tracing::info!(store = %name, "parked store's configuration changed; trying it again");
            self.unpause(&name)?;
            return Ok((true, false));
        }
        match p.decision {
            None => {
                report.entry(&name).error = Some(format!("paused: {}", p.reason));
                Ok((false, false))
            }
            Some(Decision::Resume) => {
                tracing::info!(store = %name, "resumed by a person");
                self.unpause(&name)?;
                Ok((true, false))
            }
            Some(Decision::Approve) => {
                tracing::info!(store = %name, "held changes approved by a person; merging them");
                self.unpause(&name)?;
                Ok((true, true))
            }
            Some(Decision::Reject) => {
                self.reject_window(i, &p, report).await?;
                Ok((true, false))
            }
        }
    }

    fn unpause(&mut self, name: &str) -> Result<(), EngineError> {
        let tx = self.state.tx()?;
        tx.unpause_store(name)?;
        tx.commit()?;
        Ok(())
    }

    /// Rejects the held changes of a store paused by the mass-change guard:
    /// they are passed over (the store's checkpoint moves past them), the
    /// engine notes what the store now holds for each contact they touched,
    /// and canonical's record of each is journaled again so that the store
    /// is written back (conditionally, on what it now holds).
    async fn reject_window(
        &mut self,
        i: usize,
        p: &PausedStore,
        report: &mut CycleReport,
    ) -> Result<(), EngineError> {
        let name = self.stores[i].name().to_string();
        let upto = p
            .details
            .get("upto")
            .and_then(|v| v.as_str())
            .map(Checkpoint::new);
        let now = (self.clock)();
        // Read the held changes again, up to where the pause saw them.
        let mut from = self.state.checkpoint(&name)?.map(Checkpoint);
        let mut last: HashMap<String, (String, Option<Contact>)> = HashMap::new();
        let mut reached = from.clone();
        for _ in 0..self.opts.max_batches_per_cycle.max(1) * 10 {
            if upto.is_none() || reached == upto {
                break;
            }
            let batch = self.stores[i]
                .read_changes(from.as_ref(), self.opts.batch_size)
                .await?;
            if batch.changes.is_empty() {
                break;
            }
            for ch in batch.changes {
                match ch.kind {
                    ChangeKind::Upsert(c) => {
                        let mut c = *c;
                        c.normalize();
                        let id = c.contact_id.clone();
                        last.insert(ch.native_id.clone(), (id, Some(c)));
                    }
                    ChangeKind::Delete { contact_id } => {
                        last.insert(ch.native_id.clone(), (contact_id.unwrap_or_default(), None));
                    }
                    ChangeKind::Undecodable { .. } => {}
                }
            }
            reached = Some(batch.checkpoint.clone());
            from = reached.clone();
            if !batch.has_more {
                break;
            }
        }
        // What the store now holds for each contact the held changes touched.
        let mut held: Vec<StoreRecord> = Vec::new();
        for (native, (id, image)) in last {
            let rec = if id.is_empty() {
                self.state.store_record_by_native(&name, &native)?
            } else {
                self.state.store_record(&name, &id)?
            };
            let Some(mut rec) = rec else { continue };
            match &image {
                Some(c) => {
                    rec.hash = content_hash(c);
                    rec.deleted = c.is_deleted();
                }
                None => {
                    rec.hash = contact_sync_core::hash::tombstone_hash().to_string();
                    rec.deleted = true;
                }
            }
            held.push(rec);
        }
        // Canonical's record of each, journaled again one version up (above
        // the journal's newest), so every store takes it, the write back to
        // this store is conditional on what it now holds, and the audit
        // trail says a person decided.
        let mut entries: Vec<JournalEntry> = Vec::new();
        let mut canon_seen: Vec<StoreRecord> = Vec::new();
        for chunk in held.chunks(500) {
            let ids: Vec<String> = chunk.iter().map(|r| r.contact_id.clone()).collect();
            let canon = self.read_canonical(&ids).await?;
            canon_seen.extend(self.canonical_seen(&canon)?);
            for rec in chunk {
                let Some(c) = canon.get(&rec.contact_id) else {
                    continue;
                };
                let newest = self
                    .state
                    .journal_of(&rec.contact_id, 1)?
                    .into_iter()
                    .next()
                    .map_or(0, |e| e.version);
                let mut after = c.clone();
                after.version = c.version.max(newest) + 1;
                after.last_updated = Some(now);
                let hash = content_hash(&after);
                if hash == rec.hash && rec.deleted == after.is_deleted() {
                    continue;
                }
                after.content_hash = Some(hash.clone());
                entries.push(JournalEntry {
                    seq: 0,
                    contact_id: rec.contact_id.clone(),
                    version: after.version,
                    prev_version: c.version,
                    op: Op::of(&after),
                    origin: CANONICAL.to_string(),
                    changes: vec![],
                    conflicts: vec![],
                    hash,
                    after,
                    at: now,
                });
            }
        }
        let recs = held;
        tracing::warn!(store = %name, restored = entries.len(),
            "held changes rejected by a person; canonical's records are written back");
        let stored = self.state.checkpoint(&name)?.map(Checkpoint);
        {
            let tx = self.state.tx()?;
            for e in &entries {
                tx.append_journal(e)?;
            }
            tx.put_store_records(&recs)?;
            tx.put_store_records(&canon_seen)?;
            if let Some(cp) = reached.filter(|r| Some(r) != stored.as_ref()) {
                tx.set_checkpoint(&name, cp.as_str())?;
            }
            tx.unpause_store(&name)?;
            tx.commit()?;
        }
        if let Some(cp) = self.state.checkpoint(&name)? {
            if let Err(e) = self.stores[i].acknowledge(&Checkpoint(cp)).await {
                tracing::debug!(store = %name, error = %e, "acknowledge after reject failed");
            }
        }
        self.apply_canonical(report).await
    }
}
