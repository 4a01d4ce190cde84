//! Initial sync (backfill canonical → every store, resumable after a crash)
//! and verification (every canonical contact present and equal in each store).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use contact_sync_connector::{Store, StoreError};
use contact_sync_core::hash::tombstone_hash;
use contact_sync_core::{
    content_hash, validate, Contact, DeadLetter, Invalid, JournalEntry, Timestamp,
};
use contact_sync_state::{StateDb, StateTx, StoreRecord};
use serde::Serialize;

use crate::drift::Tally;
use crate::propagate::{deliver, Delivery, Plan};
use crate::{CycleReport, Engine, EngineError, CANONICAL};

/// Called as a backfill advances: (store, contacts done, contacts in canonical).
pub type BackfillProgress<'a> = &'a mut (dyn FnMut(&str, u64, u64) + Send);

/// How one store compares with canonical.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
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
    /// Records the store holds that cannot be read as contacts, each named
    /// (issue 13, observation 7); counted in `drift_pct`, never repaired
    /// (a person fixes them in the store). See `drift.rs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<crate::drift::UnreadableRecord>,
}

/// One canonical page planned for a store.
struct PlannedPage {
    /// Canonical's (contact id, hash) pairs the store must hold once the
    /// page is written, for the read-back.
    expected: VecDeque<(String, String)>,
    plans: Vec<Plan>,
    invalid: Vec<(Invalid, Contact)>,
}

/// Decides what of `page` store `name` lacks or holds differently.
fn plan_page(
    store: &dyn Store,
    state: &StateDb,
    name: &str,
    page: CanonicalPage,
) -> Result<PlannedPage, EngineError> {
    let expected: VecDeque<(String, String)> = page
        .entries
        .iter()
        .filter(|e| !e.after.is_deleted() && store.accepts(&e.after))
        .map(|e| (e.contact_id.clone(), e.hash.clone()))
        .collect();
    let ids: Vec<String> = page.entries.iter().map(|e| e.contact_id.clone()).collect();
    let recs: HashMap<String, StoreRecord> = state
        .store_records(name, &ids)?
        .into_iter()
        .map(|r| (r.contact_id.clone(), r))
        .collect();
    Ok(PlannedPage {
        expected,
        plans: crate::propagate::plan(name, |c| store.accepts(c), page.entries, &recs),
        invalid: page.invalid,
    })
}

/// A page the store confirmed, waiting to be recorded.
struct DeliveredPage {
    delivery: Delivery,
    invalid: Vec<(Invalid, Contact)>,
    /// The resume point once recorded: `<journal seq at start>\t<last id>`.
    resume: String,
}

impl DeliveredPage {
    /// Commits, in one state transaction, the sync records, the page's
    /// invalid records as dead letters (each content once) and the resume
    /// point `key`.
    fn record(
        self,
        state: &mut StateDb,
        name: &str,
        key: &str,
        now: Timestamp,
    ) -> Result<Vec<(String, Option<String>)>, EngineError> {
        let DeliveredPage {
            delivery,
            invalid,
            resume,
        } = self;
        let extra = |tx: &StateTx<'_>| -> Result<(), EngineError> {
            for (bad, c) in &invalid {
                // Reported once: the canonical sync record remembers the
                // refused content, so a re-run does not report it again.
                let hash = content_hash(c);
                let known = tx.store_record(CANONICAL, &c.contact_id)?;
                if known.is_some_and(|r| r.hash == hash) || c.contact_id.is_empty() {
                    continue;
                }
                tracing::warn!(record = %bad.record, field = %bad.field, reason = %bad.log_reason(),
                    "canonical record refused; kept in dead letters");
                tx.add_dead_letter(&DeadLetter::refused(
                    CANONICAL,
                    bad.clone(),
                    serde_json::to_value(c).ok(),
                    now,
                ))?;
                tx.put_store_record(&StoreRecord {
                    store: CANONICAL.to_string(),
                    contact_id: c.contact_id.clone(),
                    native_id: None,
                    synced_version: c.version,
                    hash,
                    deleted: c.is_deleted(),
                    ..Default::default()
                })?;
            }
            tx.set_meta(key, &resume)?;
            Ok(())
        };
        Ok(delivery.record(state, name, 0, now, extra)?.changed)
    }
}

/// Canonical's change position taken when an initial sync started, until
/// the sync commits it as canonical's checkpoint.
const CANONICAL_POSITION: &str = "backfill_position:canonical";

fn meta_key(store: &str) -> String {
    format!("backfill:{store}")
}

/// One canonical page, normalized, validated and hashed.
struct CanonicalPage {
    /// The page's last `contact_id` (the next page starts after it); `None`
    /// when canonical has no more records.
    last: Option<String>,
    /// Valid records as journal snapshots (with their content hash).
    entries: Vec<JournalEntry>,
    /// Records that fail validation.
    invalid: Vec<(Invalid, Contact)>,
}

/// The canonical records after `after` (none after the last page).
async fn scan_canonical(
    canonical: &mut dyn Store,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Contact>, EngineError> {
    canonical
        .scan(after, limit)
        .await
        .map_err(EngineError::Canonical)
}

/// Validates and hashes a scanned page on a blocking thread (most of a
/// page's CPU time after decoding).
/// `kept_hashes`: canonical keeps content hashes (`StoreInfo::keeps_content_hash`).
async fn check_page(
    rows: Vec<Contact>,
    kept_hashes: bool,
    now: Timestamp,
) -> Result<CanonicalPage, EngineError> {
    tokio::task::spawn_blocking(move || {
        let last = rows.last().map(|c| c.contact_id.clone());
        let mut entries = Vec::with_capacity(rows.len());
        let mut invalid = Vec::new();
        // Reads come normalized (RecordSink contract).
        for c in rows {
            match validate(&c) {
                Ok(()) => {
                    let hash = c
                        .content_hash
                        .clone()
                        .filter(|_| kept_hashes)
                        .unwrap_or_else(|| content_hash(&c));
                    debug_assert_eq!(hash, content_hash(&c), "kept hash of {}", c.contact_id);
                    entries.push(JournalEntry::snapshot_with_hash(c, hash, CANONICAL, now));
                }
                Err(bad) => invalid.push((bad, c)),
            }
        }
        CanonicalPage {
            last,
            entries,
            invalid,
        }
    })
    .await
    .map_err(|e| {
        EngineError::Canonical(StoreError::permanent(
            CANONICAL,
            format!("checking a page failed: {e}"),
        ))
    })
}

/// Reads a store's (contact id, hash) pairs back in `contact_id` order, one
/// id range at a time (tombstones left out). Rows are never read ahead of
/// the range: the backfill is still writing the ranges after it.
#[derive(Default)]
struct ReadBack {
    /// Where the previous range ended.
    after: Option<String>,
}

impl ReadBack {
    /// The pairs with `after < contact_id <= bound` (to the end when `bound`
    /// is `None`).
    async fn take_upto(
        &mut self,
        store: &mut dyn Store,
        bound: Option<&str>,
        limit: usize,
    ) -> Result<VecDeque<(String, String)>, EngineError> {
        let within = |id: &str| bound.is_none_or(|b| id <= b);
        let mut out = VecDeque::new();
        loop {
            let rows = store.scan_hashes(self.after.as_deref(), limit).await?;
            let Some(last) = rows.last().map(|r| r.contact_id.clone()) else {
                break;
            };
            let beyond = !within(&last);
            out.extend(
                rows.into_iter()
                    .take_while(|r| within(&r.contact_id))
                    .filter(|r| r.hash != tombstone_hash())
                    .map(|r| (r.contact_id, r.hash)),
            );
            self.after = Some(last);
            if beyond {
                break;
            }
        }
        if let Some(b) = bound {
            self.after = Some(b.to_string());
        }
        Ok(out)
    }
}

impl Engine {
    /// Copies every canonical contact to every store that lacks it, page by
    /// page, resuming where a crashed run stopped; then verifies each store.
    /// Invalid canonical records go to dead letters (once) and are not copied.
    ///
    /// A store backfilled from the start in this call is verified as it
    /// goes: after each page is written, the store's content hashes for the
    /// page's id range are read back and compared with canonical's (the
    /// same merge-join as [`Engine::verify`], range by range). A resumed
    /// backfill is verified with a full comparison afterwards.
    pub async fn initial_sync(
        &mut self,
        progress: BackfillProgress<'_>,
    ) -> Result<Vec<StoreVerification>, EngineError> {
        let mut report = CycleReport::default();
        self.apply_canonical(&mut report).await?;
        // Canonical's position before the first page is read: the copy
        // carries everything before it, capture takes over from it.
        let position = self.canonical_start_position().await?;
        let total = self
            .canonical
            .count()
            .await
            .map_err(EngineError::Canonical)?;
        let mut verified = Vec::with_capacity(self.stores.len());
        for i in 0..self.stores.len() {
            if self.stopping() {
                break;
            }
            let (v, changed) = self.backfill_store(i, total, progress).await?;
            verified.push(v);
            // Records the store already held otherwise than the engine knew
            // (someone else's): merged, not overwritten.
            self.recapture(i, changed, &mut report).await?;
        }
        if self.stopping() {
            return Ok(vec![]);
        }
        if let Some(p) = position {
            let tx = self.state.tx()?;
            if tx.checkpoint(CANONICAL)?.is_none() {
                tx.set_checkpoint(CANONICAL, &p)?;
            }
            tx.set_meta(CANONICAL_POSITION, "")?;
            tx.commit()?;
        }
        let mut out = Vec::with_capacity(verified.len());
        for (i, v) in verified.into_iter().enumerate() {
            let v = match v {
                Some(v) => v,
                None => self.compare_store(i, false).await?.0,
            };
            self.record_verification(&v)?;
            out.push(v);
        }
        Ok(out)
    }

    /// Canonical's [`current_position`](contact_sync_connector::ChangeSource::current_position)
    /// when capture of canonical has not started (no checkpoint): taken at
    /// the start of the first attempt of an initial sync and kept (meta
    /// `CANONICAL_POSITION`) so a resumed one uses the same. Without it the
    /// first cycle after an initial sync read the whole store again as
    /// changes (issue 14, observation 9: 5,000 BigQuery rows, 51 s, 105
    /// query jobs).
    async fn canonical_start_position(&mut self) -> Result<Option<String>, EngineError> {
        if self.state.checkpoint(CANONICAL)?.is_some() {
            return Ok(None);
        }
        if let Some(p) = self
            .state
            .meta(CANONICAL_POSITION)?
            .filter(|p| !p.is_empty())
        {
            return Ok(Some(p));
        }
        let Some(p) = self
            .canonical
            .current_position()
            .await
            .map_err(EngineError::Canonical)?
        else {
            return Ok(None);
        };
        let tx = self.state.tx()?;
        tx.set_meta(CANONICAL_POSITION, p.as_str())?;
        tx.commit()?;
        Ok(Some(p.0))
    }

    /// Backfills store `i`, page by page, with reading canonical, writing
    /// the store and recording in the state database overlapped (see the
    /// comment in the body). Returns the store's verification when the
    /// backfill ran from the start in this call.
    async fn backfill_store(
        &mut self,
        i: usize,
        total: u64,
        progress: BackfillProgress<'_>,
    ) -> Result<(Option<StoreVerification>, Vec<(String, Option<String>)>), EngineError> {
        let name = self.stores[i].name().to_string();
        let key = meta_key(&name);
        let mut changed = Vec::new();
        // Resume state: "<journal seq at start>\t<last contact id done>".
        let (start_seq, after) = match self.state.meta(&key)?.filter(|s| !s.is_empty()) {
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
        let from_start = after.is_none();
        let mut tally = Tally::new(&name, false);
        let mut read_back = ReadBack::default();
        let mut done: u64 = 0;
        let now = (self.clock)();
        let limit = self.opts.backfill_page.max(1);
        let Engine {
            canonical,
            stores,
            state,
            shutdown,
            ..
        } = self;
        let store = &mut *stores[i];
        // Three things overlap for each page k: reading and checking page
        // k+1 (blocking threads), writing page k to the store and reading it
        // back (a blocking thread), and recording page k-1 in the state
        // database (this task). A page is recorded only after the store
        // confirmed it; a crash before that re-sends it (writes are
        // idempotent).
        store.begin_bulk_load().await?;
        let copied = async {
            let rows = scan_canonical(&mut **canonical, after.as_deref(), limit).await?;
            let kept_hashes = canonical.keeps_content_hash();
            let mut page = check_page(rows, kept_hashes, now).await?;
            let mut delivered: Option<DeliveredPage> = None;
            while let Some(last) = page.last.clone() {
                if shutdown.load(Ordering::SeqCst) {
                    break;
                }
                done += (page.entries.len() + page.invalid.len()) as u64;
                let PlannedPage {
                    mut expected,
                    plans,
                    invalid,
                } = plan_page(store, state, &name, page)?;
                let resume = format!("{start_seq}\t{last}");
                let next = async {
                    let rows = scan_canonical(&mut **canonical, Some(&last), limit).await?;
                    check_page(rows, kept_hashes, now).await
                };
                let write = async {
                    let delivery = deliver(store, &name, plans).await?;
                    if from_start {
                        let mut got = read_back.take_upto(store, Some(&last), limit).await?;
                        while tally.join_step(&mut expected, &mut got) {}
                    }
                    Ok::<_, EngineError>(DeliveredPage {
                        delivery,
                        invalid,
                        resume,
                    })
                };
                let record = async {
                    match delivered.take() {
                        Some(d) => d.record(state, &name, &key, now),
                        None => Ok(vec![]),
                    }
                };
                let (next, written, recorded) = tokio::join!(next, write, record);
                changed.extend(recorded?);
                delivered = Some(written?);
                page = next?;
                progress(&name, done, total);
            }
            if let Some(d) = delivered.take() {
                changed.extend(d.record(state, &name, &key, now)?);
            }
            Ok::<(), EngineError>(())
        }
        .await;
        // Rebuild what the bulk load suspended even when the copy failed.
        let ended = store.end_bulk_load().await;
        copied?;
        ended?;
        if shutdown.load(Ordering::SeqCst) {
            return Ok((None, changed));
        }
        if from_start {
            let mut rest = read_back.take_upto(store, None, limit).await?;
            while tally.join_step(&mut VecDeque::new(), &mut rest) {}
        }
        let tx = state.tx()?;
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
        Ok((from_start.then(|| tally.finish().0), changed))
    }

    /// Compares every store with canonical, contact by contact (ordered
    /// scans merged like a join, page by page: bounded memory), and records
    /// the drift per store in the state database (`drift:<store>`).
    pub async fn verify(&mut self) -> Result<Vec<StoreVerification>, EngineError> {
        let mut out = Vec::new();
        for i in 0..self.stores.len() {
            let v = self.compare_store(i, false).await?.0;
            self.record_verification(&v)?;
            out.push(v);
        }
        Ok(out)
    }

    /// Records a store's drift (`drift:<store>`) and alerts above 5 %.
    fn record_verification(&mut self, v: &StoreVerification) -> Result<(), EngineError> {
        let tx = self.state.tx()?;
        tx.set_meta(
            &format!("drift:{}", v.store),
            &serde_json::json!({
                "checked_at": contact_sync_core::model::format_ts(&(self.clock)()),
                "drift_pct": v.drift_pct,
                "missing": v.missing,
                "differing": v.differing,
                "extra": v.extra,
                "unreadable": v.unreadable.len(),
                "expected": v.expected,
            })
            .to_string(),
        )?;
        tx.commit()?;
        if v.drift_pct > 5.0 {
            tracing::warn!(store = %v.store, drift_pct = v.drift_pct, alert = "drift",
                "store differs from canonical by more than 5 %");
        }
        Ok(())
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
