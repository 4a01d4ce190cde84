//! Drift: every store compared with canonical, contact by contact, by
//! content hash; and repair of what differs.
//!
//! Both sides are scanned in `contact_id` order, one page at a time, and
//! merged like a join, so memory stays bounded whatever the table size.
//! A record the store holds but cannot read as a contact (issue 13,
//! observation 7: a Twenty person whose `contactTags` is an object) is
//! reported by name (store, native id, contact id, field, reason) and
//! counted as drift; the rest is compared as usual, and a repair leaves it
//! alone (rewriting it would overwrite what a person has to look at).

use std::collections::{HashMap, VecDeque};

use contact_sync_core::hash::tombstone_hash;
use contact_sync_core::{content_hash, validate, JournalEntry};

use crate::backfill::StoreVerification;
use crate::{CycleReport, Engine, EngineError, CANONICAL};

/// The hash standing for "held, but cannot be read" in a store's side of
/// the join (no content hash looks like it).
const UNREADABLE: &str = "\u{0}unreadable";

/// A record a store holds that cannot be read as a contact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnreadableRecord {
    pub store: String,
    /// The store's own id (Twenty: the person id).
    pub native_id: String,
    /// The `contact_id` it carries; empty when none.
    pub contact_id: String,
    pub field: String,
    /// Why, with contact values masked unless PII logging is on.
    pub reason: String,
}

/// One side of the join: a store's live contacts, page by page.
struct Side {
    page: VecDeque<(String, String)>,
    after: Option<String>,
    done: bool,
    /// The store's records that cannot be read, in scan order.
    unreadable: Vec<UnreadableRecord>,
}

impl Side {
    fn new() -> Side {
        Side {
            page: VecDeque::new(),
            after: None,
            done: false,
            unreadable: Vec::new(),
        }
    }
}

/// Counts of a merge-join of canonical's and a store's (contact id, hash)
/// pairs, both in `contact_id` order.
pub(crate) struct Tally {
    v: StoreVerification,
    /// Collect the ids a repair would rewrite (missing and differing).
    collect: bool,
    ids: Vec<String>,
}

impl Tally {
    pub(crate) fn new(store: &str, collect: bool) -> Tally {
        Tally {
            v: StoreVerification {
                store: store.to_string(),
                ..Default::default()
            },
            collect,
            ids: Vec::new(),
        }
    }

    fn note(&mut self, id: String, repair: bool) {
        if self.v.sample.len() < 20 {
            self.v.sample.push(id.clone());
        }
        if repair && self.collect {
            self.ids.push(id);
        }
    }

    /// Takes the smaller front id of canonical's `c` and the store's `s`
    /// (both when equal) and counts it. False when both are empty. The
    /// caller makes sure each queue holds every pair up to the other's
    /// front (or is exhausted).
    pub(crate) fn join_step(
        &mut self,
        c: &mut VecDeque<(String, String)>,
        s: &mut VecDeque<(String, String)>,
    ) -> bool {
        match (c.front(), s.front()) {
            (None, None) => return false,
            (cf, Some((sid, sh))) if sh == UNREADABLE && cf.is_none_or(|(cid, _)| cid >= sid) => {
                // Named in `unreadable`; canonical's record of that id (if
                // any) is expected there but neither matching nor missing.
                let (sid, _) = s.pop_front().expect("front exists");
                if c.front().is_some_and(|(cid, _)| *cid == sid) {
                    c.pop_front();
                    self.v.expected += 1;
                }
            }
            (Some((cid, _)), Some((sid, _))) if cid == sid => {
                let (cid, ch) = c.pop_front().expect("front exists");
                let (_, sh) = s.pop_front().expect("front exists");
                self.v.expected += 1;
                if ch == sh {
                    self.v.matching += 1;
                } else {
                    self.v.differing += 1;
                    self.note(cid, true);
                }
            }
            (Some((cid, _)), s_front) if s_front.is_none_or(|(sid, _)| cid < sid) => {
                let (cid, _) = c.pop_front().expect("front exists");
                self.v.expected += 1;
                self.v.missing += 1;
                self.note(cid, true);
            }
            _ => {
                let (sid, _) = s.pop_front().expect("front exists");
                self.v.extra += 1;
                self.note(sid, false);
            }
        }
        true
    }

    /// The verification with its drift %, and the collected ids.
    pub(crate) fn finish(self) -> (StoreVerification, Vec<String>) {
        let mut v = self.v;
        let bad = (v.missing + v.differing + v.extra + v.unreadable.len() as u64) as f64;
        v.drift_pct = match (v.expected, bad > 0.0) {
            (0, true) => 100.0,
            (0, false) => 0.0,
            (n, _) => bad * 100.0 / n as f64,
        };
        (v, self.ids)
    }
}

/// What repairing one store did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RepairReport {
    pub store: String,
    /// Contacts written again from canonical (missing or differing).
    pub rewritten: u64,
    /// Live in the store but not in canonical: reported, never deleted
    /// (they may be new records the next cycle brings in).
    pub extra: u64,
    /// Contacts whose record in the store was not what the engine last saw
    /// there (someone edited or removed it): merged into canonical like a
    /// captured change instead of overwritten.
    pub merged: u64,
}

impl Engine {
    /// Fills `side` with the next page of `store` (canonical when `None`):
    /// (contact id, content hash) of live contacts; canonical's side keeps
    /// only valid contacts the store accepts.
    async fn next_page(
        &mut self,
        store: Option<usize>,
        accepted_by: usize,
        side: &mut Side,
    ) -> Result<(), EngineError> {
        let page = self.opts.backfill_page.max(1);
        while side.page.is_empty() && !side.done {
            let last = match store {
                None => {
                    let scan = self
                        .canonical
                        .scan_checked(side.after.as_deref(), page)
                        .await
                        .map_err(EngineError::Canonical)?;
                    let (rows, last) = (scan.records, scan.last);
                    // Canonical's unreadable records are named too (they
                    // reach no store); a store's copy of one counts as extra.
                    side.unreadable
                        .extend(scan.unreadable.into_iter().map(|u| UnreadableRecord {
                            store: CANONICAL.to_string(),
                            native_id: u.native_id,
                            contact_id: u.contact_id,
                            field: u.invalid.field.clone(),
                            reason: u.invalid.log_reason().to_string(),
                        }));
                    let kept_hashes = self.canonical.keeps_content_hash();
                    // Reads come normalized (RecordSink contract).
                    for c in rows {
                        if c.is_deleted()
                            || validate(&c).is_err()
                            || !self.stores[accepted_by].accepts(&c)
                        {
                            continue;
                        }
                        let hash = match c.content_hash {
                            Some(h) if kept_hashes => h,
                            _ => content_hash(&c),
                        };
                        side.page.push_back((c.contact_id, hash));
                    }
                    last
                }
                Some(i) => {
                    let scan = self.stores[i]
                        .scan_hashes_checked(side.after.as_deref(), page)
                        .await?;
                    let name = self.stores[i].name().to_string();
                    let mut rows: Vec<(String, String)> = scan
                        .hashes
                        .into_iter()
                        .filter(|r| r.hash != tombstone_hash())
                        .map(|r| (r.contact_id, r.hash))
                        .collect();
                    let mut bad = Vec::new();
                    for u in scan.unreadable {
                        if !u.contact_id.is_empty() {
                            bad.push((u.contact_id.clone(), UNREADABLE.to_string()));
                        }
                        side.unreadable.push(UnreadableRecord {
                            store: name.clone(),
                            native_id: u.native_id,
                            contact_id: u.contact_id,
                            field: u.invalid.field.clone(),
                            reason: u.invalid.log_reason().to_string(),
                        });
                    }
                    if !bad.is_empty() {
                        // Both in the store's `contact_id` order: merged so.
                        rows = merge_sorted(rows, bad);
                    }
                    side.page.extend(rows);
                    scan.last
                }
            };
            match last {
                Some(last) => side.after = Some(last),
                None => side.done = true,
            }
        }
        Ok(())
    }

    /// Compares store `i` with canonical. With `collect`, also returns the
    /// ids that are missing in the store or differ from canonical.
    pub(crate) async fn compare_store(
        &mut self,
        i: usize,
        collect: bool,
    ) -> Result<(StoreVerification, Vec<String>), EngineError> {
        let mut tally = Tally::new(self.stores[i].name(), collect);
        let (mut c, mut s) = (Side::new(), Side::new());
        loop {
            self.next_page(None, i, &mut c).await?;
            self.next_page(Some(i), i, &mut s).await?;
            if !tally.join_step(&mut c.page, &mut s.page) {
                break;
            }
        }
        tally.v.unreadable = c.unreadable;
        tally.v.unreadable.extend(s.unreadable);
        Ok(tally.finish())
    }

    /// Writes canonical's record again to store `name` for every contact
    /// that is missing there or differs (the engine's memory of what the
    /// store holds is reset for those first, so nothing is skipped as
    /// "already there"). Extra records are only counted.
    pub async fn repair(&mut self, name: &str) -> Result<RepairReport, EngineError> {
        let i = self
            .stores
            .iter()
            .position(|s| s.name() == name)
            .ok_or_else(|| EngineError::Request(format!("no store named {name:?}")))?;
        let (v, ids) = self.compare_store(i, true).await?;
        let mut report = RepairReport {
            store: name.to_string(),
            rewritten: 0,
            extra: v.extra,
            merged: 0,
        };
        let now = (self.clock)();
        let mut cycle = CycleReport::default();
        for chunk in ids.chunks(self.opts.backfill_page.max(1)) {
            // Each is written again, on condition that the store still holds
            // what the engine last saw there: content someone else put there
            // (or a record someone removed) is merged, not overwritten.
            let mut recs = HashMap::new();
            let tx = self.state.tx()?;
            for mut r in tx.store_records(name, chunk)? {
                r.needs_write = true;
                tx.put_store_record(&r)?;
                recs.insert(r.contact_id.clone(), r);
            }
            tx.commit()?;
            let mut entries = Vec::with_capacity(chunk.len());
            for mut c in self
                .canonical
                .read(chunk)
                .await
                .map_err(EngineError::Canonical)?
            {
                c.normalize();
                entries.push(JournalEntry::snapshot(c, CANONICAL, now));
            }
            let store = &self.stores[i];
            let plans = crate::propagate::plan(name, |c| store.accepts(c), entries, &recs);
            let recorded = self.send(i, name, plans, 0).await?;
            report.rewritten += recorded.stats.written;
            report.merged += recorded.changed.len() as u64;
            self.recapture(i, recorded.changed, &mut cycle).await?;
        }
        tracing::info!(store = %name, rewritten = report.rewritten, extra = report.extra, "drift repaired");
        Ok(report)
    }
}

/// Two lists sorted by id, merged into one (the first's entry first on a
/// tie).
fn merge_sorted(a: Vec<(String, String)>, b: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.0 <= y.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(items: &[(&str, &str)]) -> VecDeque<(String, String)> {
        items
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// An unreadable record of the store is neither missing nor differing
    /// nor extra, whatever comes before it on either side.
    #[test]
    fn an_unreadable_record_is_only_unreadable() {
        let mut t = Tally::new("s", true);
        let mut c = q(&[("a", "h1"), ("x", "h2"), ("z", "h4")]);
        let mut s = q(&[("x", UNREADABLE), ("y", UNREADABLE), ("z", "h4")]);
        while t.join_step(&mut c, &mut s) {}
        let (v, ids) = t.finish();
        assert_eq!((v.expected, v.matching, v.missing), (3, 1, 1), "{v:?}");
        assert_eq!((v.differing, v.extra), (0, 0), "{v:?}");
        assert_eq!(
            ids,
            vec!["a".to_string()],
            "only the missing one is repaired"
        );
    }

    #[test]
    fn merge_sorted_keeps_order() {
        let a = vec![("a".into(), "1".into()), ("c".into(), "3".into())];
        let b = vec![
            ("b".into(), UNREADABLE.into()),
            ("d".into(), UNREADABLE.into()),
        ];
        let ids: Vec<String> = merge_sorted(a, b).into_iter().map(|(i, _)| i).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
    }
}
