//! Retention: the state database stays bounded at steady state.
//!
//! [`StateDb::compact`] removes, for a cutoff (now minus the audit window):
//! - **journal entries** that no one needs any more: an entry is kept when
//!   it is after the lowest cursor (a store's, canonical's, or an outside
//!   consumer's kept in meta under `journal_consumer:` such as the BigQuery
//!   journal table), or newer than the cutoff, or the newest entry of its
//!   contact, or the merge base of a store (the version a store record
//!   last agreed with: the engine rebuilds bases from the journal). So
//!   beyond the window the journal holds one entry per contact (plus
//!   bases), and every cursor still finds everything after it;
//! - **settled conflicts** (`kept_canonical`, `kept_incoming`) settled
//!   before the cutoff (open ones stay);
//! - **closed dead letters** (dismissed or retried) closed — and, for a
//!   dismissed one, last seen — before the cutoff (open ones stay);
//! - **finished operator requests** finished before the cutoff;
//! - **run history** (the console's charts) older than
//!   [`crate::HISTORY_DAYS`], whatever the audit window.
//!
//! Deletes run in short transactions (a few thousand journal rows each),
//! so the daemon's own transactions wait at most a moment: `contact-sync
//! compact` works while the daemon runs. Freed pages are reused by SQLite
//! (the file does not grow again for the same volume); it is not
//! vacuumed.

use crate::db::p;
use contact_sync_core::model::format_ts;
use contact_sync_core::Timestamp;
use serde::Serialize;

use crate::{Result, StateDb};

/// Meta key prefix of journal consumers outside the engine; their value is
/// the last seq they have taken.
pub const JOURNAL_CONSUMER_PREFIX: &str = "journal_consumer:";

/// Meta key holding when [`StateDb::compact`] last ran (RFC 3339).
pub const LAST_COMPACTED_META: &str = "retention:last_compacted";

/// Journal rows looked at per delete transaction.
const CHUNK: i64 = 5_000;

/// What [`StateDb::compact`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    /// Journal entries at or below this seq were candidates (the lowest
    /// cursor).
    pub floor_seq: i64,
    pub journal_removed: u64,
    pub journal_kept: u64,
    pub conflicts_removed: u64,
    pub dead_letters_removed: u64,
    pub requests_removed: u64,
    /// Run-history buckets older than [`crate::HISTORY_DAYS`].
    pub history_removed: u64,
}

impl StateDb {
    /// The lowest journal position any consumer still needs: the minimum
    /// of every cursor and every `journal_consumer:` meta value.
    pub fn journal_floor(&self) -> Result<i64> {
        let c = self.conn();
        let cursors: Option<i64> = c.query_value("SELECT MIN(seq) FROM cursors", p![])?;
        let outside: Vec<String> = c
            .query(
                "SELECT value FROM meta WHERE key LIKE ?1 || '%'",
                p![JOURNAL_CONSUMER_PREFIX],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect::<Result<_>>()?;
        let mut floor = cursors.unwrap_or(0);
        for v in outside {
            // An unreadable value keeps everything (never guess).
            floor = floor.min(v.trim().parse::<i64>().unwrap_or(0));
        }
        Ok(floor.max(0))
    }

    /// Removes what the audit window no longer keeps (see the module
    /// docs), in short transactions; records when it ran.
    pub fn compact(&mut self, cutoff: Timestamp, now: Timestamp) -> Result<CompactReport> {
        let cutoff = format_ts(&cutoff);
        // Removed entries are not served from the cache either.
        self.journal.clear();
        let floor = self.journal_floor()?;
        let mut report = CompactReport {
            floor_seq: floor,
            ..CompactReport::default()
        };
        let mut lo = 0i64;
        while lo < floor {
            let hi = (lo + CHUNK).min(floor);
            let tx = self.tx()?;
            let n = tx.conn().execute(
                "DELETE FROM journal
                 WHERE seq > ?1 AND seq <= ?2 AND at < ?3
                   AND seq NOT IN (SELECT MAX(j.seq) FROM journal j
                                   WHERE j.contact_id IN (SELECT contact_id FROM journal
                                                          WHERE seq > ?1 AND seq <= ?2)
                                   GROUP BY j.contact_id)
                   AND (contact_id, version) NOT IN
                       (SELECT contact_id, synced_version FROM store_records)",
                p![lo, hi, cutoff],
            )?;
            tx.commit()?;
            report.journal_removed += n;
            lo = hi;
        }
        let tx = self.tx()?;
        report.conflicts_removed = tx.conn().execute(
            "DELETE FROM conflicts WHERE status <> 'open'
               AND COALESCE(resolved_at, created_at) < ?1",
            p![cutoff],
        )?;
        report.dead_letters_removed = tx.conn().execute(
            "DELETE FROM dead_letters WHERE status <> 'open' AND closed_at < ?1
               AND (status = 'retried' OR COALESCE(last_seen, at) < ?1)",
            p![cutoff],
        )?;
        report.requests_removed = tx.conn().execute(
            "DELETE FROM operator_requests WHERE status IN ('done', 'failed') AND finished_at < ?1",
            p![cutoff],
        )?;
        report.history_removed = tx.conn().execute(
            "DELETE FROM run_history WHERE bucket < ?1",
            p![crate::bucket_of(
                &(now - chrono::Duration::days(crate::HISTORY_DAYS)),
            )],
        )?;
        tx.set_meta(LAST_COMPACTED_META, &format_ts(&now))?;
        tx.commit()?;
        let kept: i64 = self
            .conn()
            .query_value("SELECT COUNT(*) FROM journal", p![])?;
        report.journal_kept = kept.max(0) as u64;
        Ok(report)
    }
}
