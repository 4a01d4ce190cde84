//! The journal entries this handle appended, kept decoded (issue 18 item 2).
//!
//! The engine appends a batch's entries, then reads them straight back to
//! write canonical and to propagate them, and reads each captured
//! contact's newest entry as the canonical side of its merge: decoding
//! those entries' JSON was a fifth of the engine's CPU under a busy
//! Postgres. [`StateDb`](crate::StateDb) keeps the entries its own
//! transactions committed, in seq order, and answers the journal reads
//! from them when — and only when — the answer is provably the database's:
//!
//! - the cache holds a *contiguous* run of seqs `lo..=hi`, every one of
//!   them committed by this handle (an entry appended by anyone else, or a
//!   gap a rolled-back Postgres sequence value leaves, starts a new run),
//!   so no other row can exist inside it;
//! - a read that needs to know nothing lies beyond `hi` (the newest entry
//!   of a contact, a range reaching past `hi`) checks the journal's head
//!   first (one indexed `MAX(seq)`), so entries others appended are read
//!   from the database;
//! - whatever rewrites or removes entries through this handle (an
//!   erasure's scrub, compaction, a new fence) empties it; an entry is
//!   served for an hour at most ([`MAX_AGE`]), far inside the shortest
//!   retention window (a day), so `compact` run by another process never
//!   removes an entry the cache still serves;
//! - a cached entry is what decoding its row gives (the timestamp at
//!   microseconds, JSON `null` read back as absent): debug builds check
//!   every hit against the row.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use contact_sync_core::JournalEntry;

/// Entries kept at most (the oldest go first).
pub(crate) const CAPACITY: usize = 8192;

/// Bytes of the entries' JSON (as written to the journal) kept at most: a
/// bound on the memory the cache takes whatever the contacts hold
/// (decoded, an entry takes about twice its JSON).
pub(crate) const CAPACITY_BYTES: usize = 16 << 20;

/// How long an entry is served after its commit.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(3600);

struct Cached {
    entry: JournalEntry,
    at: Instant,
    /// Its JSON's length.
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    /// Seqs `lo..=hi`, contiguous, ascending.
    entries: VecDeque<Cached>,
    /// Contact id → its cached seqs, ascending.
    by_contact: HashMap<String, Vec<i64>>,
    /// Sum of the entries' `bytes`.
    bytes: usize,
}

impl Inner {
    fn lo(&self) -> Option<i64> {
        self.entries.front().map(|c| c.entry.seq)
    }
    fn hi(&self) -> Option<i64> {
        self.entries.back().map(|c| c.entry.seq)
    }
    fn get(&self, seq: i64) -> Option<&JournalEntry> {
        let lo = self.lo()?;
        let i = usize::try_from(seq.checked_sub(lo)?).ok()?;
        self.entries.get(i).map(|c| &c.entry)
    }
    fn pop_front(&mut self) {
        if let Some(c) = self.entries.pop_front() {
            self.bytes -= c.bytes;
            if let Some(seqs) = self.by_contact.get_mut(&c.entry.contact_id) {
                if seqs.first() == Some(&c.entry.seq) {
                    seqs.remove(0);
                }
                if seqs.is_empty() {
                    self.by_contact.remove(&c.entry.contact_id);
                }
            }
        }
    }
    fn expire(&mut self, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|c| now.duration_since(c.at) > MAX_AGE)
        {
            self.pop_front();
        }
    }
    fn clear(&mut self) {
        self.entries.clear();
        self.by_contact.clear();
        self.bytes = 0;
    }
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct JournalCache {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for JournalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("JournalCache")
            .field("lo", &g.lo())
            .field("hi", &g.hi())
            .finish()
    }
}

impl JournalCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it leaves at worst a cache to drop.
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                let mut g = poisoned.into_inner();
                g.clear();
                g
            }
        }
    }

    /// Forgets everything (entries rewritten or removed, a new fence).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// Entries a transaction of this handle committed, in seq order, each
    /// with the length of its JSON.
    pub(crate) fn committed(&self, entries: Vec<(JournalEntry, usize)>) {
        if entries.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut g = self.lock();
        for (e, bytes) in entries {
            if g.hi().is_some_and(|hi| e.seq != hi + 1) {
                // Someone else's entries (or a gap) lie between: a new run.
                g.clear();
            }
            g.by_contact
                .entry(e.contact_id.clone())
                .or_default()
                .push(e.seq);
            g.entries.push_back(Cached {
                entry: e,
                at: now,
                bytes,
            });
            g.bytes += bytes;
            while g.entries.len() > CAPACITY || g.bytes > CAPACITY_BYTES {
                g.pop_front();
            }
        }
    }

    /// Entries with `after < seq <= upto`, at most `limit`, when the cache
    /// holds all of them. `head`: the journal's head, asked only when the
    /// range reaches past the cache.
    pub(crate) fn after(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
        head: impl FnOnce() -> crate::Result<i64>,
    ) -> crate::Result<Option<Vec<JournalEntry>>> {
        let mut g = self.lock();
        g.expire(Instant::now());
        let (Some(lo), Some(hi)) = (g.lo(), g.hi()) else {
            return Ok(None);
        };
        if after + 1 < lo {
            return Ok(None);
        }
        let want_to = upto.min(after.saturating_add(i64::try_from(limit).unwrap_or(i64::MAX)));
        if want_to > hi && head()? != hi {
            return Ok(None);
        }
        let from = after + 1;
        let to = want_to.min(hi);
        let mut out = Vec::with_capacity(usize::try_from(to - from + 1).unwrap_or(0));
        let mut seq = from;
        while seq <= to {
            match g.get(seq) {
                Some(e) => out.push(e.clone()),
                None => return Ok(None),
            }
            seq += 1;
        }
        Ok(Some(out))
    }

    /// The newest entry of `contact_id` (of its `version` when given),
    /// when the cache holds one and reaches the journal's head (`head`);
    /// `None`: the cache cannot tell, read the database.
    pub(crate) fn newest_of(
        &self,
        contact_id: &str,
        version: Option<i64>,
        head: impl FnOnce() -> crate::Result<i64>,
    ) -> crate::Result<Option<JournalEntry>> {
        let mut g = self.lock();
        g.expire(Instant::now());
        let Some(seqs) = g.by_contact.get(contact_id) else {
            return Ok(None);
        };
        let found = seqs
            .iter()
            .rev()
            .filter_map(|s| g.get(*s))
            .find(|e| version.is_none_or(|v| e.version == v));
        let Some(e) = found else {
            // An older entry of that version may lie below the cache.
            return Ok(None);
        };
        if g.hi() != Some(head()?) {
            return Ok(None);
        }
        Ok(Some(e.clone()))
    }
}

/// The entry as decoding its row gives it back: `at` at microseconds, a
/// JSON field holding `null` read back as absent.
pub(crate) fn as_decoded(mut e: JournalEntry, seq: i64) -> JournalEntry {
    e.seq = seq;
    e.at = contact_sync_core::model::micros(e.at);
    for v in [
        &mut e.after.llm_context,
        &mut e.after.relationships,
        &mut e.after.communication_stats,
        &mut e.after.social_profiles,
        &mut e.after.custom_attributes,
    ] {
        if matches!(v, Some(serde_json::Value::Null)) {
            *v = None;
        }
    }
    e
}
