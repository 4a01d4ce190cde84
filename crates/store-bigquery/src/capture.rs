//! Change capture that trusts no writer.
//!
//! - **Fast path**: rows whose `last_updated` is past a keyset cursor
//!   (`last_updated`, `contact_id`) and at most the *server's*
//!   `CURRENT_TIMESTAMP()` minus the overlap, in that order. The cursor
//!   never passes the server's clock, so a row stamped in the future (a
//!   skewed writer, a typo) cannot blind capture: it is found by the sweep
//!   now and by the fast path when its time comes. The checkpoint is a
//!   fixed-size JSON object whatever number of rows share a timestamp.
//! - **Sweep**: one query compares every row's server-side fingerprint
//!   ([`Layout::fingerprint`](crate::schema::Layout::fingerprint)) with the
//!   fingerprint sidecar table the store keeps (`<table>_sync_fingerprints`:
//!   the fingerprint of each row as last delivered and acknowledged); only
//!   the ids that differ travel. It finds what the fast path cannot:
//!   UPDATEs that left `last_updated` alone, back-dated rows, rows written
//!   by load jobs or `insertAll` without `last_updated`, and hard `DELETE`s
//!   (delivered as [`ChangeKind::Delete`]). It runs on a schedule that
//!   holds under load: on the first poll after `open`, whenever
//!   `sweep_interval` has passed since the last sweep (before the fast
//!   path, caught up or not), and on every `sweep_every`-th caught-up
//!   poll. Rows the fast path is about to deliver (past the cursor, up to
//!   the server's clock minus the overlap) and rows delivered but not yet
//!   acknowledged are left out of its findings, so under load it does not
//!   deliver them twice. While the ids it found are being delivered,
//!   batches alternate with the fast path, so neither starves the other.
//!   (Before, it ran only when the fast path was caught up, which a steady
//!   stream of edits never allowed: unbumped edits and hard deletes waited
//!   20 minutes in the soak benchmark, issue 15.)
//! - **Idle polls cost nothing**: with `idle_check`, a poll first reads the
//!   table's metadata (`tables.get`: free, no job); when it is unchanged
//!   since the last poll and a sweep has run since it last changed, no
//!   query runs.
//!
//! Why a sidecar table and not the checkpoint: the checkpoint would have to
//! hold one fingerprint per contact (≈ 3 MB at 100k contacts, travelling
//! through the state database every batch), and the engine's state
//! database is not the store's to write. The sidecar lives next to the
//! data, is compared server-side (only differing ids travel) and is
//! written only with fingerprints the engine has acknowledged; losing it
//! (or an update of it) only makes the next sweep deliver those rows again
//! (at-least-once; the engine's echo filter skips what it already has).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Instant;

use async_trait::async_trait;
use contact_sync_connector::{
    Change, ChangeBatch, ChangeKind, ChangeSource, Checkpoint, StoreError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client::{ParamType, ParamValue, QueryParam};
use crate::rows::decode_contact;
use crate::store::{BigQueryStore, MAX_PAGE};

/// The change-capture position: `{"v":2,"wm":<µs>,"id":"<contact_id>","n":<u64>}`.
/// `wm`/`id` is the last row the fast path delivered (absent before the
/// first); `n` numbers the batches, so the store knows which delivered
/// fingerprints an acknowledgement covers. Version 1 checkpoints
/// (`{"v":1,"wm":…,"seen":[…]}`) are read as `wm - overlap` (the window is
/// delivered once more).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cursor {
    v: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wm: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    id: String,
    #[serde(default)]
    n: u64,
}

/// A version 1 checkpoint (unbounded `seen` set).
#[derive(Deserialize)]
struct CursorV1 {
    #[serde(default)]
    wm: Option<i64>,
}

impl Cursor {
    pub(crate) fn parse(
        store: &str,
        cp: Option<&Checkpoint>,
        overlap_us: i64,
    ) -> Result<Cursor, StoreError> {
        let Some(cp) = cp else {
            return Ok(Cursor {
                v: 2,
                ..Cursor::default()
            });
        };
        let bad = |e: String| {
            StoreError::permanent(
                store,
                format!("checkpoint is not a BigQuery change-capture checkpoint ({e})"),
            )
        };
        let v: Value = serde_json::from_str(cp.as_str()).map_err(|e| bad(e.to_string()))?;
        match v.get("v").and_then(Value::as_u64) {
            Some(1) => {
                let old: CursorV1 = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
                Ok(Cursor {
                    v: 2,
                    wm: old.wm.map(|w| w.saturating_sub(overlap_us)),
                    ..Cursor::default()
                })
            }
            Some(2) => serde_json::from_value(v).map_err(|e| bad(e.to_string())),
            other => Err(StoreError::permanent(
                store,
                format!("checkpoint version {other:?} is not supported"),
            )),
        }
    }

    pub(crate) fn encode(&self) -> Checkpoint {
        Checkpoint(serde_json::to_string(self).unwrap_or_else(|_| unreachable!("plain data")))
    }
}

/// Delivered rows' ids with their fingerprints (`None`: gone).
type Fingerprints = Vec<(String, Option<i64>)>;

/// A batch delivered: the checkpoint it was read from, the one it returned
/// (its number `n` is one above), and its rows' fingerprints.
#[derive(Debug)]
struct Delivered {
    n: u64,
    from: String,
    to: String,
    fps: Fingerprints,
}

/// What capture keeps in memory between calls (nothing of it is needed for
/// correctness after a restart: a restart sweeps on its first caught-up
/// poll).
#[derive(Debug, Default)]
pub(crate) struct CaptureState {
    /// Table metadata at the last poll that ran.
    last_sig: Option<String>,
    /// Table metadata when the last sweep ran.
    swept_sig: Option<String>,
    /// Caught-up polls since the last sweep; `None` before the first.
    polls_since_sweep: Option<u32>,
    /// When the last sweep started; `None` before the first.
    last_sweep: Option<std::time::Instant>,
    /// While the sweep's ids are delivered: the next batch tries the fast
    /// path first (batches alternate).
    fast_turn: bool,
    /// Ids the last sweep found changed and not yet delivered, with the
    /// fingerprint it saw (`None`: the row is gone).
    queue: VecDeque<String>,
    /// Batches delivered and not yet acknowledged.
    pending: Vec<Delivered>,
    /// Acknowledged fingerprints not yet written to the sidecar.
    acked: BTreeMap<String, Option<i64>>,
}

/// Counters of what change capture did (see [`BigQueryStore::usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureCounters {
    /// Polls answered from table metadata alone (no query job).
    pub idle_polls_skipped: u64,
    /// Fast-path poll queries.
    pub polls: u64,
    /// Sweeps run.
    pub sweeps: u64,
    /// Rows the sweeps found changed or gone.
    pub sweep_found: u64,
    /// Sidecar updates (MERGE jobs).
    pub sidecar_writes: u64,
}

/// The id of a raw row (`contact_id` as text).
pub(crate) fn row_id(row: &Map<String, Value>) -> String {
    match row.get("contact_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// A raw row as a change, with its fingerprint.
fn row_change(row: &Map<String, Value>) -> (Change, Option<i64>) {
    let kind = match decode_contact(row) {
        Ok(c) => ChangeKind::Upsert(Box::new(c)),
        Err(invalid) => {
            let mut payload = row.clone();
            payload.remove("_fp");
            ChangeKind::Undecodable {
                invalid,
                payload: Some(Value::Object(payload)),
            }
        }
    };
    (
        Change {
            native_id: row_id(row),
            kind,
        },
        row.get("_fp").and_then(Value::as_i64),
    )
}

/// The parts of a table resource that change when its data changes:
/// `lastModifiedTime` (DML, loads, copies), `numRows`/`numBytes`, and the
/// streaming buffer's estimates (rows streamed by `insertAll` before they
/// are committed to storage).
pub(crate) fn table_signature(resource: &Value) -> String {
    let g = |p: &str| resource.pointer(p).cloned().unwrap_or(Value::Null);
    serde_json::json!([
        g("/lastModifiedTime"),
        g("/numRows"),
        g("/numBytes"),
        g("/etag"),
        g("/streamingBuffer/estimatedRows"),
        g("/streamingBuffer/estimatedBytes"),
        g("/streamingBuffer/oldestEntryTime"),
    ])
    .to_string()
}

impl BigQueryStore {
    fn fp_table_sql(&self) -> String {
        format!(
            "`{}.{}.{}`",
            crate::store::sql_ident(self.client.project()),
            crate::store::sql_ident(&self.cfg.dataset),
            crate::store::sql_ident(&self.cfg.fingerprint_table())
        )
    }

    /// The fast-path query: up to `limit + 1` rows after the cursor and not
    /// after the server's clock minus the overlap.
    async fn poll(
        &mut self,
        cur: &Cursor,
        limit: usize,
    ) -> Result<(Vec<(Change, Option<i64>)>, Cursor, bool), StoreError> {
        let lu = self.layout.col("last_updated").quoted.clone();
        let id = self.layout.id_text("t");
        let mut params = vec![QueryParam::int64(
            "overlap",
            self.cfg.overlap.as_micros() as i64,
        )];
        let mut filter = format!(
            "t.{lu} IS NOT NULL AND t.{lu} <= TIMESTAMP_MICROS(UNIX_MICROS(CURRENT_TIMESTAMP()) - @overlap)"
        );
        if let Some(wm) = cur.wm {
            let since = chrono::DateTime::from_timestamp_micros(wm).unwrap_or_default();
            params.push(QueryParam::timestamp("wm", &since));
            params.push(QueryParam::string("wid", cur.id.clone()));
            filter.push_str(&format!(
                " AND (t.{lu} > @wm OR (t.{lu} = @wm AND {id} > @wid))"
            ));
        }
        let sql = format!(
            "SELECT {}, {} AS _fp FROM {} t WHERE {filter} ORDER BY t.{lu}, {id} LIMIT {}",
            self.layout.select_list("t"),
            self.layout.fingerprint("t"),
            self.table_sql,
            limit + 1
        );
        self.counters.polls += 1;
        let res = self.query(&sql, &params, "change poll").await?;
        let has_more = res.rows.len() > limit;
        let mut next = cur.clone();
        let mut out = Vec::new();
        for row in res.rows.iter().take(limit) {
            next.wm = row.get("last_updated").and_then(Value::as_i64).or(next.wm);
            next.id = row_id(row);
            out.push(row_change(row));
        }
        Ok((out, next, has_more))
    }

    /// The sweep: ids whose row fingerprint differs from the sidecar's
    /// (changed, new, or gone). Fills the queue. Left out: rows the fast
    /// path will deliver from `cur` (past the cursor and not after the
    /// server's clock minus the overlap), and rows delivered as they are
    /// now and not yet acknowledged.
    async fn sweep(&mut self, cur: &Cursor) -> Result<(), StoreError> {
        self.flush_acked().await?;
        let lu = self.layout.col("last_updated").quoted.clone();
        let id = self.layout.id_text("t");
        let mut params = vec![QueryParam::int64(
            "overlap",
            self.cfg.overlap.as_micros() as i64,
        )];
        let mut ahead = format!(
            "t.{lu} IS NOT NULL AND t.{lu} <= TIMESTAMP_MICROS(UNIX_MICROS(CURRENT_TIMESTAMP()) - @overlap)"
        );
        if let Some(wm) = cur.wm {
            let since = chrono::DateTime::from_timestamp_micros(wm).unwrap_or_default();
            params.push(QueryParam::timestamp("wm", &since));
            params.push(QueryParam::string("wid", cur.id.clone()));
            ahead.push_str(&format!(
                " AND (t.{lu} > @wm OR (t.{lu} = @wm AND {id} > @wid))"
            ));
        }
        let sql = format!(
            "SELECT COALESCE(c.contact_id, s.contact_id) AS contact_id, c.fp AS fp FROM \
             (SELECT {id} AS contact_id, {} AS fp, ({ahead}) AS ahead FROM {} t) c \
             FULL OUTER JOIN {} s ON c.contact_id = s.contact_id \
             WHERE (c.contact_id IS NULL OR s.contact_id IS NULL OR c.fp != s.fp) \
             AND NOT COALESCE(c.ahead, FALSE) \
             ORDER BY 1",
            self.layout.fingerprint("t"),
            self.table_sql,
            self.fp_table_sql(),
        );
        self.counters.sweeps += 1;
        self.cap.last_sweep = Some(Instant::now());
        let res = self.query(&sql, &params, "fingerprint sweep").await?;
        let unacked: HashSet<(&str, Option<i64>)> = self
            .cap
            .pending
            .iter()
            .flat_map(|d| d.fps.iter().map(|(i, f)| (i.as_str(), *f)))
            .collect();
        let mut found = Vec::new();
        let mut last: Option<String> = None;
        for r in &res.rows {
            let id = row_id(r);
            // Duplicate rows of one id come once.
            if id.is_empty() || last.as_ref() == Some(&id) {
                continue;
            }
            last = Some(id.clone());
            let fp = r.get("fp").and_then(Value::as_i64);
            if !unacked.contains(&(id.as_str(), fp)) {
                found.push(id);
            }
        }
        self.counters.sweep_found += found.len() as u64;
        self.cap.queue.extend(found);
        if !self.cap.queue.is_empty() {
            tracing::info!(store = %self.cfg.name, table = %self.full_name, rows = self.cap.queue.len(),
                "bigquery: the sweep found rows changed without a newer last_updated (or gone)");
        }
        Ok(())
    }

    /// Whether `sweep_interval` has passed since the last sweep (or none
    /// ran since `open`).
    fn sweep_due_by_time(&self) -> bool {
        self.cfg.sweep_every.is_some()
            && match (self.cfg.sweep_interval, self.cap.last_sweep) {
                (_, None) => true,
                (Some(every), Some(at)) => at.elapsed() >= every,
                (None, Some(_)) => false,
            }
    }

    /// Up to `limit` ids from the sweep queue, read as they are now.
    async fn deliver_swept(
        &mut self,
        limit: usize,
    ) -> Result<Vec<(Change, Option<i64>)>, StoreError> {
        let n = limit.min(self.cap.queue.len());
        let ids: Vec<String> = self.cap.queue.drain(..n).collect();
        let held = self.read_with_fingerprints(&ids).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match held.get(&id) {
                Some(rows) => out.extend(rows.iter().map(row_change)),
                None => out.push((
                    Change {
                        native_id: id.clone(),
                        kind: ChangeKind::Delete {
                            contact_id: Some(id),
                        },
                    },
                    None,
                )),
            }
        }
        Ok(out)
    }

    /// Writes acknowledged fingerprints to the sidecar (one MERGE job).
    pub(crate) async fn flush_acked(&mut self) -> Result<(), StoreError> {
        if self.cap.acked.is_empty() || self.cfg.sweep_every.is_none() {
            self.cap.acked.clear();
            return Ok(());
        }
        let acked = std::mem::take(&mut self.cap.acked);
        let ty = ParamType::Array(Box::new(ParamType::Struct(vec![
            ("contact_id".into(), ParamType::Scalar("STRING")),
            ("fp".into(), ParamType::Scalar("INT64")),
        ])));
        let rows: Vec<ParamValue> = acked
            .iter()
            .map(|(id, fp)| {
                ParamValue::Struct(vec![
                    ("contact_id".into(), ParamValue::Scalar(id.clone())),
                    (
                        "fp".into(),
                        fp.map_or(ParamValue::Null, |f| ParamValue::Scalar(f.to_string())),
                    ),
                ])
            })
            .collect();
        let sql = format!(
            "MERGE {} s USING (SELECT r.contact_id AS contact_id, r.fp AS fp FROM UNNEST(@rows) AS r) u \
             ON s.contact_id = u.contact_id \
             WHEN MATCHED AND u.fp IS NULL THEN DELETE \
             WHEN MATCHED THEN UPDATE SET fp = u.fp \
             WHEN NOT MATCHED AND u.fp IS NOT NULL THEN INSERT (contact_id, fp) VALUES (u.contact_id, u.fp)",
            self.fp_table_sql()
        );
        self.counters.sidecar_writes += 1;
        let res = self
            .query(
                &sql,
                &[QueryParam::new("rows", ty, ParamValue::Array(rows))],
                "recording delivered fingerprints",
            )
            .await;
        if let Err(e) = res {
            // Kept for the next try; at worst the sweep delivers them again.
            for (k, v) in acked {
                self.cap.acked.entry(k).or_insert(v);
            }
            return Err(e);
        }
        Ok(())
    }

    /// The sweep's baseline: the sidecar made to hold every row's
    /// fingerprint as it is now (two DML jobs, server-side: only the
    /// statements travel). Rows with several copies of one id keep the smallest
    /// fingerprint (the sweep keeps finding such an id, as before).
    async fn baseline_fingerprints(&mut self) -> Result<(), StoreError> {
        self.cap.acked.clear();
        let fp = self.fp_table_sql();
        self.query(
            &format!("DELETE FROM {fp} WHERE TRUE"),
            &[],
            "clearing the fingerprint sidecar",
        )
        .await?;
        let id = self.layout.id_text("t");
        let sql = format!(
            "INSERT INTO {fp} (contact_id, fp) SELECT {id} AS contact_id, MIN({}) AS fp              FROM {} t WHERE {id} IS NOT NULL GROUP BY 1",
            self.layout.fingerprint("t"),
            self.table_sql,
        );
        self.counters.sidecar_writes += 1;
        self.query(&sql, &[], "recording every row's fingerprint")
            .await?;
        Ok(())
    }

    /// The table's metadata signature (one `tables.get`, no job).
    async fn signature(&self) -> Result<Option<String>, StoreError> {
        if !self.cfg.idle_check {
            return Ok(None);
        }
        let r = self
            .client
            .table_resource(&self.cfg.dataset, &self.cfg.table)
            .await
            .map_err(|e| self.err(e))?;
        match r {
            Some(res) => Ok(Some(table_signature(&res))),
            None => Err(StoreError::paused(
                &self.cfg.name,
                format!(
                    "table {} no longer exists: was it dropped or renamed? Re-create it (`contact-sync migrate`) and re-sync, then resume",
                    self.full_name
                ),
            )),
        }
    }

    fn batch(
        &mut self,
        from: &Cursor,
        cur: Cursor,
        changes: Vec<(Change, Option<i64>)>,
        has_more: bool,
    ) -> ChangeBatch {
        // Derived from the input alone: reading again from the same
        // checkpoint returns the same checkpoint.
        let mut next = cur;
        next.n += 1;
        let fps: Vec<(String, Option<i64>)> = changes
            .iter()
            .filter(|(c, _)| !c.native_id.is_empty())
            .map(|(c, fp)| (c.native_id.clone(), *fp))
            .collect();
        let checkpoint = next.encode();
        if self.cfg.sweep_every.is_some() {
            self.cap.pending.push(Delivered {
                n: next.n,
                from: from.encode().0,
                to: checkpoint.0.clone(),
                fps,
            });
        }
        ChangeBatch {
            changes: changes.into_iter().map(|(c, _)| c).collect(),
            checkpoint,
            has_more,
        }
    }
}

#[async_trait]
impl ChangeSource for BigQueryStore {
    /// See the module docs: what a sweep found (alternating with the fast
    /// path) first; then, unless the table is idle, a sweep when
    /// `sweep_interval` has passed, the fast path, and a sweep on every
    /// `sweep_every`-th caught-up poll. Each change is the row as it is now; rows
    /// that do not decode come as [`ChangeKind::Undecodable`] naming the
    /// contact and field; rows gone from the table as [`ChangeKind::Delete`].
    async fn read_changes(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let overlap = self.cfg.overlap.as_micros() as i64;
        let cur = Cursor::parse(&self.cfg.name, from, overlap)?;
        let unchanged = |cur: &Cursor| ChangeBatch {
            changes: Vec::new(),
            checkpoint: from.cloned().unwrap_or_else(|| cur.encode()),
            has_more: false,
        };
        if !self.cap.queue.is_empty() {
            // Delivering what a sweep found: batches alternate with the
            // fast path, so neither starves.
            if std::mem::take(&mut self.cap.fast_turn) {
                let (changes, next, _) = self.poll(&cur, limit).await?;
                if !changes.is_empty() {
                    return Ok(self.batch(&cur, next, changes, true));
                }
            }
            let changes = self.deliver_swept(limit).await?;
            self.cap.fast_turn = true;
            return Ok(self.batch(&cur, cur.clone(), changes, true));
        }
        let sig = self.signature().await?;
        if sig.is_some() && sig == self.cap.last_sig && sig == self.cap.swept_sig {
            self.counters.idle_polls_skipped += 1;
            return Ok(unchanged(&cur));
        }
        // A sweep due by time runs whether or not the fast path is caught
        // up (unless the table is unchanged since the last sweep).
        let mut swept_now = false;
        if self.sweep_due_by_time() && (sig.is_none() || sig != self.cap.swept_sig) {
            self.sweep(&cur).await?;
            swept_now = true;
            self.cap.polls_since_sweep = Some(0);
            self.cap.swept_sig = sig.clone();
            if !self.cap.queue.is_empty() {
                let changes = self.deliver_swept(limit).await?;
                self.cap.fast_turn = true;
                return Ok(self.batch(&cur, cur.clone(), changes, true));
            }
        }
        let (changes, next, has_more) = self.poll(&cur, limit).await?;
        if !changes.is_empty() {
            return Ok(self.batch(&cur, next, changes, has_more));
        }
        self.cap.last_sig = sig.clone();
        if let Some(every) = self.cfg.sweep_every {
            let due = !swept_now
                && match self.cap.polls_since_sweep {
                    None => true,
                    Some(p) => p + 1 >= every.max(1),
                };
            if due {
                self.sweep(&cur).await?;
                self.cap.polls_since_sweep = Some(0);
                self.cap.swept_sig = sig;
                if !self.cap.queue.is_empty() {
                    let changes = self.deliver_swept(limit).await?;
                    let more = !self.cap.queue.is_empty();
                    return Ok(self.batch(&cur, cur.clone(), changes, more));
                }
            } else if !swept_now {
                self.cap.polls_since_sweep = self.cap.polls_since_sweep.map(|p| p + 1);
            }
        } else {
            self.cap.swept_sig = sig;
        }
        Ok(unchanged(&cur))
    }

    /// "Now" for an initial sync (issue 14, observation 9): the fast path
    /// from the server's `CURRENT_TIMESTAMP()` minus the overlap, and the
    /// sweep's sidecar holding every row's fingerprint as it is now. The
    /// sync's copy starts after this returns, so it carries every row as
    /// it was here or later; an edit from here on is past the cursor
    /// (bumped `last_updated`) or differs from the baseline (anything else,
    /// hard deletes included) and is delivered. Three jobs (the clock, the
    /// sidecar's DELETE and INSERT … SELECT) once per initial sync, instead
    /// of the whole table read back as changes by the first cycle.
    async fn current_position(&mut self) -> Result<Option<Checkpoint>, StoreError> {
        let res = self
            .query(
                "SELECT UNIX_MICROS(CURRENT_TIMESTAMP()) AS now",
                &[],
                "reading BigQuery's clock",
            )
            .await?;
        let now = res
            .rows
            .first()
            .and_then(|r| r.get("now"))
            .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
            .ok_or_else(|| {
                StoreError::permanent(
                    &self.cfg.name,
                    "reading BigQuery's clock: no timestamp in the answer",
                )
            })?;
        if self.cfg.sweep_every.is_some() {
            self.baseline_fingerprints().await?;
        }
        self.cap.pending.clear();
        self.cap.queue.clear();
        let overlap = self.cfg.overlap.as_micros() as i64;
        Ok(Some(
            Cursor {
                v: 2,
                wm: Some(now.saturating_sub(overlap)),
                ..Cursor::default()
            }
            .encode(),
        ))
    }

    /// Takes the fingerprints of the batches up to `upto` as applied: they
    /// go to the sidecar now (one MERGE job). The sweep sees a hard DELETE
    /// only of a row whose fingerprint the sidecar holds: kept in memory
    /// until the next sweep, they were lost with the process (every `run
    /// --once`, every restart), and deletes of those rows never arrived
    /// (found by the soak benchmark, issue 15). A failed write keeps them
    /// for the next acknowledgement or sweep.
    async fn acknowledge(&mut self, upto: &Checkpoint) -> Result<(), StoreError> {
        let overlap = self.cfg.overlap.as_micros() as i64;
        let n = Cursor::parse(&self.cfg.name, Some(upto), overlap)?.n;
        // The batches applied are the chain that led to `upto`. Another
        // batch numbered up to `n` was read and then abandoned (the engine
        // read again from an earlier checkpoint, e.g. after a failed
        // cycle): its fingerprints are dropped, not taken as applied (a
        // delete it carried would vanish from the sidecar unapplied); the
        // next sweep finds its rows again.
        let mut chain = vec![false; self.cap.pending.len()];
        let mut want = upto.as_str().to_string();
        loop {
            let mut from = None;
            for (i, d) in self.cap.pending.iter().enumerate() {
                if !chain[i] && d.to == want {
                    chain[i] = true;
                    from = Some(d.from.clone());
                }
            }
            match from {
                Some(f) => want = f,
                None => break,
            }
        }
        let pending = std::mem::take(&mut self.cap.pending);
        for (d, applied) in pending.into_iter().zip(chain) {
            if applied {
                for (id, fp) in d.fps {
                    self.cap.acked.insert(id, fp);
                }
            } else if d.n > n {
                self.cap.pending.push(d);
            }
        }
        if !self.cap.acked.is_empty() {
            self.flush_acked().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cursor_round_trip_and_is_bounded() {
        let c = Cursor {
            v: 2,
            wm: Some(1_700_000_000_000_000),
            id: "a".into(),
            n: 3,
        };
        let cp = c.encode();
        assert_eq!(Cursor::parse("s", Some(&cp), 0).unwrap(), c);
        assert!(cp.as_str().len() < 100, "{cp}");
        assert!(Cursor::parse("s", Some(&Checkpoint::new("17")), 0).is_err());
    }

    #[test]
    fn version_1_checkpoints_are_read_back_by_the_overlap() {
        let v1 = Checkpoint::new(r#"{"v":1,"wm":1000000,"seen":[["a",2,999999]]}"#);
        let c = Cursor::parse("s", Some(&v1), 10).unwrap();
        assert_eq!((c.wm, c.id.as_str()), (Some(999_990), ""));
    }

    #[test]
    fn the_signature_follows_data_changes_only() {
        let a = json!({"lastModifiedTime": "1", "numRows": "3", "etag": "x", "creationTime": "0"});
        let mut b = a.clone();
        b["creationTime"] = json!("9");
        assert_eq!(table_signature(&a), table_signature(&b));
        b["lastModifiedTime"] = json!("2");
        assert_ne!(table_signature(&a), table_signature(&b));
        let mut s = a.clone();
        s["streamingBuffer"] = json!({"estimatedRows": "1", "oldestEntryTime": "5"});
        assert_ne!(table_signature(&a), table_signature(&s));
    }
}
