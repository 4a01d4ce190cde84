//! Run history for the console's charts: per store and 5-minute bucket,
//! what the cycles did and the largest lag seen (schema V5). Written by
//! [`StateTx::record_run`] (every cycle), so it is one row per store and
//! bucket however often cycles run: a day is 288 rows per store. Bounded
//! by [`StateDb::compact`], which removes buckets older than
//! [`HISTORY_DAYS`].

use crate::db::p;
use contact_sync_core::model::parse_ts;
use contact_sync_core::Timestamp;
use serde::Serialize;

use crate::read::sql_u64;
use crate::{Result, RunStats, StateDb, StateTx};

/// Seconds per history bucket.
pub const BUCKET_SECS: i64 = 300;

/// Days of run history `compact` keeps.
pub const HISTORY_DAYS: i64 = 7;

/// One store's totals over one bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryBucket {
    pub store: String,
    /// Unix seconds of the bucket's start (a multiple of [`BUCKET_SECS`]).
    pub bucket: i64,
    pub runs: u64,
    pub captured: u64,
    /// Merged into canonical.
    pub applied: u64,
    pub written: u64,
    /// Runs that failed.
    pub errors: u64,
    /// The largest lag (seconds since the store's last success) seen in the
    /// bucket; `None` while the store had never succeeded.
    pub max_lag_secs: Option<f64>,
}

/// The bucket `at` falls in.
pub fn bucket_of(at: &Timestamp) -> i64 {
    at.timestamp().div_euclid(BUCKET_SECS) * BUCKET_SECS
}

impl StateTx<'_> {
    /// Adds a run to the store's history bucket (called by `record_run`,
    /// after the store's totals are updated).
    pub(crate) fn record_history(
        &self,
        store: &str,
        stats: &RunStats,
        failed: bool,
        at: &Timestamp,
    ) -> Result<()> {
        let last: Option<String> = self.conn().query_value(
            "SELECT last_success FROM store_stats WHERE store = ?1",
            p![store],
        )?;
        let lag = last
            .as_deref()
            .and_then(parse_ts)
            .map(|t| ((*at - t).num_milliseconds() as f64 / 1000.0).max(0.0));
        self.conn().execute(
                "INSERT INTO run_history (store, bucket, runs, captured, applied, written, errors, max_lag_secs)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (bucket, store) DO UPDATE SET
                     runs = run_history.runs + 1,
                     captured = run_history.captured + excluded.captured,
                     applied = run_history.applied + excluded.applied,
                     written = run_history.written + excluded.written,
                     errors = run_history.errors + excluded.errors,
                     max_lag_secs = CASE
                         WHEN excluded.max_lag_secs IS NULL THEN run_history.max_lag_secs
                         WHEN run_history.max_lag_secs IS NULL
                           OR excluded.max_lag_secs > run_history.max_lag_secs
                         THEN excluded.max_lag_secs
                         ELSE run_history.max_lag_secs END",
            p![
                store,
                bucket_of(at),
                sql_u64(stats.captured),
                sql_u64(stats.applied),
                sql_u64(stats.written),
                i64::from(failed),
                lag,
            ],
        )?;
        Ok(())
    }
}

impl StateDb {
    /// Every store's history buckets from `since` on, oldest first.
    pub fn run_history(&self, since: &Timestamp) -> Result<Vec<HistoryBucket>> {
        let rows = self.conn().query(
            "SELECT store, bucket, runs, captured, applied, written, errors, max_lag_secs
             FROM run_history WHERE bucket >= ?1 ORDER BY bucket, store",
            p![bucket_of(since)],
        )?;
        rows.iter()
            .map(|r| {
                let n = |i: usize| r.get::<i64>(i).map(|v| v.max(0) as u64);
                Ok(HistoryBucket {
                    store: r.get(0)?,
                    bucket: r.get(1)?,
                    runs: n(2)?,
                    captured: n(3)?,
                    applied: n(4)?,
                    written: n(5)?,
                    errors: n(6)?,
                    max_lag_secs: r.get(7)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};

    fn stats(n: u64) -> RunStats {
        RunStats {
            captured: n,
            applied: n,
            written: n,
            ..RunStats::default()
        }
    }

    #[test]
    fn runs_add_up_per_bucket_lag_is_the_largest_and_compact_bounds_it() {
        for mut db in crate::testing::both() {
            eprintln!("on {}", db.location());
            let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
            let tx = db.tx().unwrap();
            // Never succeeded: lag unknown.
            tx.record_run("twenty", &stats(0), Some("down"), t0)
                .unwrap();
            tx.record_run("twenty", &stats(2), None, t0 + Duration::seconds(10))
                .unwrap();
            tx.record_run("twenty", &stats(3), Some("429"), t0 + Duration::seconds(70))
                .unwrap();
            // The next bucket.
            tx.record_run("twenty", &stats(1), None, t0 + Duration::seconds(310))
                .unwrap();
            tx.record_run("local", &stats(4), None, t0 + Duration::seconds(20))
                .unwrap();
            tx.commit().unwrap();
            let h = db.run_history(&(t0 - Duration::hours(1))).unwrap();
            assert_eq!(h.len(), 3, "{h:?}");
            let first = h.iter().find(|b| b.store == "twenty").unwrap();
            assert_eq!(first.bucket, bucket_of(&t0));
            assert_eq!((first.runs, first.captured, first.errors), (3, 5, 2));
            assert_eq!(first.max_lag_secs, Some(60.0));
            let second = h.iter().rfind(|b| b.store == "twenty").unwrap();
            assert_eq!(second.bucket, bucket_of(&t0) + BUCKET_SECS);
            assert_eq!(second.max_lag_secs, Some(0.0));
            // Only what is asked for.
            assert_eq!(
                db.run_history(&(t0 + Duration::seconds(300)))
                    .unwrap()
                    .len(),
                1
            );
            // compact keeps HISTORY_DAYS.
            let later = t0 + Duration::days(HISTORY_DAYS) + Duration::seconds(301);
            let r = db.compact(later, later).unwrap();
            assert_eq!(r.history_removed, 2);
            assert_eq!(db.run_history(&t0).unwrap().len(), 1);
        }
    }
}
