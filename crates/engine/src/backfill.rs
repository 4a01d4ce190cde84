//! Initial sync (backfill canonical → every store, resumable after a crash)
//! and verification (every canonical contact present and equal in each store).

use std::collections::HashMap;

use contact_sync_core::{content_hash, validate, Contact, DeadLetter, JournalEntry};
use contact_sync_state::StoreRecord;
use serde::Serialize;

use crate::{CycleReport, Engine, EngineError, CANONICAL};

/// Called as a backfill advances: (store, contacts done, contacts in canonical).
pub type BackfillProgress<'a> = &'a mut (dyn FnMut(&str, u64, u64) + Send);

/// How one store compares with canonical.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoreVerification {
    pub store: String,
    /// Valid live contacts in canonical that this store should hold.
    pub expected: u64,
    /// Of those, present with the same content.
    pub matching: u64,
    /// Expected but absent (or a tombstone) in the store.
    pub missing: u64,
    /// Present in both but with different content.
    pub differing: u64,
    /// Live in the store but not live in canonical.
    pub extra: u64,
    /// (missing + differing + extra) / expected, in percent.
    pub drift_pct: f64,
    /// Up to 20 of the ids that differ, for a person to look at.
    pub sample: Vec<String>,
}

fn meta_key(store: &str) -> String {
    format!("backfill:{store}")
}

impl Engine {
    /// Copies every canonical contact to every store that lacks it, page by
    /// page, resuming where a crashed run stopped; then verifies each store.
    /// Invalid canonical records go to dead letters (once) and are not copied.
    pub async fn initial_sync(
        &mut self,
        progress: BackfillProgress<'_>,
    ) -> Result<Vec<StoreVerification>, EngineError> {
        let mut report = CycleReport::default();
        self.apply_canonical(&mut report).await?;
        let total = self
            .canonical
            .count()
            .await
            .map_err(EngineError::Canonical)?;
        for i in 0..self.stores.len() {
            if self.stopping() {
                break;
            }
            self.backfill_store(i, total, progress).await?;
        }
        if self.stopping() {
            return Ok(vec![]);
        }
        self.verify().await
    }

    async fn backfill_store(
        &mut self,
        i: usize,
        total: u64,
        progress: BackfillProgress<'_>,
    ) -> Result<(), EngineError> {
        let name = self.stores[i].name().to_string();
        let key = meta_key(&name);
        // Resume state: "<journal seq at start>\t<last contact id done>".
        let (start_seq, mut after) = match self.state.meta(&key)?.filter(|s| !s.is_empty()) {
            Some(s) => {
                let (seq, id) = s.split_once('\t').unwrap_or((s.as_str(), ""));
                (
                    seq.parse::<i64>().unwrap_or(0),
                    (!id.is_empty()).then(|| id.to_string()),
                )
            }
            None => {
                let seq = self.state.cursor(CANONICAL)?;
                let tx = self.state.tx()?;
                tx.set_meta(&key, &format!("{seq}\t"))?;
                tx.commit()?;
                (seq, None)
            }
        };
        let mut done: u64 = 0;
        let now = (self.clock)();
        loop {
            if self.stopping() {
                return Ok(());
            }
            let page = self
                .canonical
                .scan(after.as_deref(), self.opts.backfill_page.max(1))
                .await
                .map_err(EngineError::Canonical)?;
            let Some(last) = page.last().map(|c| c.contact_id.clone()) else {
                break;
            };
            let ids: Vec<String> = page.iter().map(|c| c.contact_id.clone()).collect();
            let recs: HashMap<String, StoreRecord> = self
                .state
                .store_records(&name, &ids)?
                .into_iter()
                .map(|r| (r.contact_id.clone(), r))
                .collect();
            let mut invalid = Vec::new();
            let mut entries = Vec::with_capacity(page.len());
            for mut c in page {
                c.normalize();
                if let Err(bad) = validate(&c) {
                    invalid.push((bad, c));
                    continue;
                }
                entries.push(JournalEntry::snapshot(c, CANONICAL, now));
            }
            let refs: Vec<&JournalEntry> = entries.iter().collect();
            let store = &self.stores[i];
            let plans = crate::propagate::plan(&name, |c| store.accepts(c), &refs, &recs);
            done += refs.len() as u64;
            self.send(i, &name, plans, 0).await?;
            let tx = self.state.tx()?;
            for (bad, c) in &invalid {
                // Reported once: the canonical sync record remembers the
                // refused content, so a re-run does not report it again.
                let hash = content_hash(c);
                let known = tx.store_record(CANONICAL, &c.contact_id)?;
                if known.is_some_and(|r| r.hash == hash) || c.contact_id.is_empty() {
                    continue;
                }
                tracing::warn!(record = %bad.record, field = %bad.field, reason = %bad.reason,
                    "canonical record refused; kept in dead letters");
                tx.add_dead_letter(&DeadLetter {
                    id: 0,
                    store: CANONICAL.to_string(),
                    record: bad.record.clone(),
                    field: bad.field.clone(),
                    reason: bad.reason.clone(),
                    payload: serde_json::to_value(c).ok(),
                    at: now,
                })?;
                tx.put_store_record(&StoreRecord {
                    store: CANONICAL.to_string(),
                    contact_id: c.contact_id.clone(),
                    native_id: None,
                    synced_version: c.version,
                    hash,
                    deleted: c.is_deleted(),
                })?;
            }
            tx.set_meta(&key, &format!("{start_seq}\t{last}"))?;
            tx.commit()?;
            progress(&name, done, total);
            after = Some(last);
        }
        let tx = self.state.tx()?;
        if tx.cursor(&name)? < start_seq {
            tx.set_cursor(&name, start_seq)?;
        }
        tx.set_meta(&key, "")?;
        tx.set_meta(
            &format!("backfill_completed_at:{name}"),
            &contact_sync_core::model::format_ts(&now),
        )?;
        tx.commit()?;
        progress(&name, done, total);
        Ok(())
    }

    /// Compares every store with canonical, contact by contact (ordered
    /// scans merged like a join, page by page: bounded memory), and records
    /// the drift per store in the state database (`drift:<store>`).
    pub async fn verify(&mut self) -> Result<Vec<StoreVerification>, EngineError> {
        let mut out = Vec::new();
        for i in 0..self.stores.len() {
            let v = self.compare_store(i, false).await?.0;
            let tx = self.state.tx()?;
            tx.set_meta(
                &format!("drift:{}", v.store),
                &serde_json::json!({
                    "checked_at": contact_sync_core::model::format_ts(&(self.clock)()),
                    "drift_pct": v.drift_pct,
                    "missing": v.missing,
                    "differing": v.differing,
                    "extra": v.extra,
                    "expected": v.expected,
                })
                .to_string(),
            )?;
            tx.commit()?;
            if v.drift_pct > 5.0 {
                tracing::warn!(store = %v.store, drift_pct = v.drift_pct, alert = "drift",
                    "store differs from canonical by more than 5 %");
            }
            out.push(v);
        }
        Ok(out)
    }

    /// Settles an open conflict. `keep_incoming` writes the incoming value
    /// as a new canonical version (journaled with origin `manual`, then
    /// propagated everywhere); otherwise canonical stays as it is.
    pub async fn resolve_conflict(
        &mut self,
        id: i64,
        keep_incoming: bool,
    ) -> Result<(), EngineError> {
        let now = (self.clock)();
        let row = self
            .state
            .conflict(id)?
            .ok_or_else(|| EngineError::Request(format!("no conflict with id {id}")))?;
        if row.status != "open" {
            return Err(EngineError::Request(format!(
                "conflict {id} is already settled ({})",
                row.status
            )));
        }
        let mut report = CycleReport::default();
        self.apply_canonical(&mut report).await?;
        if !keep_incoming {
            let tx = self.state.tx()?;
            tx.resolve_conflict(id, "kept_canonical", now)?;
            tx.commit()?;
            return Ok(());
        }
        let current = self
            .canonical
            .read(std::slice::from_ref(&row.contact_id))
            .await
            .map_err(EngineError::Canonical)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                EngineError::Request(format!(
                    "contact {} is no longer in canonical",
                    row.contact_id
                ))
            })?;
        let mut next: Contact = current.clone();
        let field = row.conflict.field.as_str();
        if field == "deleted_at" {
            next.deleted_at = if row.conflict.incoming.is_null() {
                None
            } else {
                Some(now)
            };
        } else {
            let mut m = serde_json::Map::new();
            m.insert(field.to_string(), row.conflict.incoming.clone());
            next.set_fields(&m)
                .map_err(|e| EngineError::Request(e.to_string()))?;
        }
        next.normalize();
        next.version = current.version + 1;
        next.last_updated = Some(now);
        next.last_updated_by = Some("manual".into());
        let hash = content_hash(&next);
        next.content_hash = Some(hash.clone());
        let entry = JournalEntry {
            seq: 0,
            contact_id: row.contact_id.clone(),
            version: next.version,
            prev_version: current.version,
            op: contact_sync_core::Op::of(&next),
            origin: "manual".into(),
            changes: contact_sync_core::diff(Some(&current), &next),
            conflicts: vec![],
            hash,
            after: next,
            at: now,
        };
        let tx = self.state.tx()?;
        tx.append_journal(&entry)?;
        tx.resolve_conflict(id, "kept_incoming", now)?;
        tx.commit()?;
        self.apply_canonical(&mut report).await?;
        Ok(())
    }
}
