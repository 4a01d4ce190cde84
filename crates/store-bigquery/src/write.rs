//! Writes: batched MERGE jobs, each row optionally guarded by the
//! fingerprint of the row the engine saw (compare-and-set), split so no
//! request passes BigQuery's 10 MB limit, with rows BigQuery cannot mutate
//! yet (streaming buffer) deferred instead of failing the batch.
//!
//! How a conditional write ([`Expect::Absent`] / [`Expect::Hash`]) stays
//! atomic although BigQuery cannot compute our SHA-256 content hash:
//!
//! 1. one query reads the rows of the batch with a server-side fingerprint
//!    `FARM_FINGERPRINT(TO_JSON_STRING(STRUCT(<every mapped column>)))`;
//! 2. each row is decoded and hashed here; a row whose hash is not the
//!    expected one is refused ([`WriteOutcome::Changed`]) without writing;
//! 3. the MERGE carries, per row, the fingerprint read in step 1 and
//!    applies `WHEN MATCHED AND <fingerprint of t> = s._fp` (and `WHEN NOT
//!    MATCHED AND s._fp IS NULL`): BigQuery evaluates the guard and the
//!    update in one DML statement (mutating DML on a table is serialized),
//!    so an edit landing between step 1 and step 3 makes the MERGE skip
//!    that row;
//! 4. when the MERGE affected fewer rows than it was given, one query reads
//!    the rows back: a guarded row that does not hold what was written is
//!    `Changed`, an unguarded one holding a higher version is `Stale`.

use std::collections::HashMap;

use contact_sync_connector::{Expect, StoreError, WriteOutcome};
use contact_sync_core::hash::tombstone_hash;
use contact_sync_core::{content_hash, Contact};
use serde_json::{Map, Value};

use crate::client::{ParamType, ParamValue, QueryParam};
use crate::error::BqError;
use crate::rows::{decode_contact, row_value};
use crate::schema::{Kind, Layout};
use crate::store::BigQueryStore;

/// BigQuery refuses requests over 10 MB; each MERGE request's `@rows`
/// stays under this many bytes (JSON on the wire), leaving room for the
/// statement and the envelope.
pub(crate) const MAX_REQUEST_ROW_BYTES: usize = 8 * 1024 * 1024;

/// The MERGE statement and the type of its `@rows` parameter. Each row
/// carries `_guard` (true: conditional) and `_fp` (the fingerprint the row
/// must still have; NULL: no row may exist).
pub(crate) fn build_merge(layout: &Layout, table_sql: &str) -> (String, ParamType) {
    let text = || ParamType::Scalar("STRING");
    let record = |first: &str| {
        ParamType::Array(Box::new(ParamType::Struct(vec![
            (first.into(), text()),
            ("label".into(), text()),
            ("is_primary".into(), ParamType::Scalar("BOOL")),
        ])))
    };
    let mut types = Vec::new();
    let mut select = Vec::new();
    for c in &layout.columns {
        let f = c.field;
        let (ty, expr) = match c.kind {
            Kind::Id if c.ty == "INT64" => (text(), format!("CAST(r.{f} AS INT64)")),
            Kind::Json if c.ty == "JSON" => (text(), format!("PARSE_JSON(r.{f})")),
            Kind::Tags => (ParamType::Array(Box::new(text())), format!("r.{f}")),
            Kind::Timestamp if f == "last_updated" => (
                ParamType::Scalar("TIMESTAMP"),
                format!("COALESCE(r.{f}, CURRENT_TIMESTAMP())"),
            ),
            Kind::Timestamp => (ParamType::Scalar("TIMESTAMP"), format!("r.{f}")),
            Kind::Emails => (record("address"), format!("r.{f}")),
            Kind::Phones => (record("number"), format!("r.{f}")),
            Kind::Version => (ParamType::Scalar("INT64"), format!("r.{f}")),
            _ => (text(), format!("r.{f}")),
        };
        types.push((f.to_string(), ty));
        select.push(format!("{expr} AS {f}"));
    }
    types.push(("_guard".into(), ParamType::Scalar("BOOL")));
    types.push(("_fp".into(), ParamType::Scalar("INT64")));
    select.push("COALESCE(r._guard, FALSE) AS _guard".into());
    select.push("r._fp AS _fp".into());
    let id = &layout.col("contact_id").quoted;
    let ver = &layout.col("version").quoted;
    let updates: Vec<String> = layout
        .columns
        .iter()
        .filter(|c| c.field != "contact_id")
        .map(|c| format!("{} = s.{}", c.quoted, c.field))
        .collect();
    let cols: Vec<&str> = layout.columns.iter().map(|c| c.quoted.as_str()).collect();
    let vals: Vec<String> = layout
        .columns
        .iter()
        .map(|c| format!("s.{}", c.field))
        .collect();
    let sql = format!(
        "MERGE {table_sql} t USING (SELECT {} FROM UNNEST(@rows) AS r) s ON t.{id} = s.contact_id \
         WHEN MATCHED AND (NOT s._guard OR {} = s._fp) AND (t.{ver} IS NULL OR s.version >= t.{ver}) \
         THEN UPDATE SET {} \
         WHEN NOT MATCHED AND (NOT s._guard OR s._fp IS NULL) THEN INSERT ({}) VALUES ({})",
        select.join(", "),
        layout.fingerprint("t"),
        updates.join(", "),
        cols.join(", "),
        vals.join(", ")
    );
    (sql, ParamType::Array(Box::new(ParamType::Struct(types))))
}

/// `Ok` for rows that can be written; `Rejected` outcomes otherwise.
fn precheck(c: &Contact, int_id: bool) -> Option<WriteOutcome> {
    if c.contact_id.is_empty() {
        return Some(WriteOutcome::Rejected {
            field: "contact_id".into(),
            reason: "is empty".into(),
        });
    }
    if int_id && c.contact_id.parse::<i64>().is_err() {
        return Some(WriteOutcome::Rejected {
            field: "contact_id".into(),
            reason: format!(
                "{:?} is not an integer and the table's id column is INT64",
                c.contact_id
            ),
        });
    }
    None
}

/// The guard of one MERGE row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// Unconditional (`Expect::Any`).
    None,
    /// The row must still have this fingerprint.
    Fingerprint(i64),
    /// No row may exist.
    NoRow,
}

/// A row ready for the MERGE.
struct Pending {
    /// Index of the winning write in the batch.
    idx: usize,
    guard: Guard,
    value: ParamValue,
    bytes: usize,
}

/// Splits rows into chunks of at most `max_rows` rows and `max_bytes`
/// bytes (a row larger than `max_bytes` goes alone).
pub(crate) fn chunk_by_size(sizes: &[usize], max_rows: usize, max_bytes: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let (mut rows, mut bytes) = (0usize, 0usize);
    for (i, s) in sizes.iter().enumerate() {
        if rows > 0 && (rows + 1 > max_rows || bytes + s > max_bytes) {
            cuts.push(i);
            rows = 0;
            bytes = 0;
        }
        rows += 1;
        bytes += s;
    }
    cuts.push(sizes.len());
    cuts
}

/// True for BigQuery's refusal to UPDATE/DELETE/MERGE rows still in the
/// streaming buffer (rows recently written by `insertAll`, for up to ~90
/// minutes): `UPDATE or DELETE statement over table … would affect rows in
/// the streaming buffer, which is not supported` (reason `invalidQuery`,
/// HTTP 400). Those rows are deferred (`Changed`), not the batch failed.
pub(crate) fn is_streaming_buffer_error(e: &BqError) -> bool {
    let m = e.message.to_ascii_lowercase();
    m.contains("streaming buffer")
}

impl BigQueryStore {
    /// The write path of `write_batch` (`expect == None`) and
    /// `write_batch_if`.
    pub(crate) async fn write_rows(
        &mut self,
        writes: &[Contact],
        expect: Option<&[Expect]>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; writes.len()];
        let int_id = self.layout.int_id();
        // Normalized copies; the winner per contact_id (the last of the
        // highest version; an earlier lower version shares its outcome, a
        // later lower one is Stale).
        let mut winners: HashMap<String, usize> = HashMap::new();
        let mut running_max: HashMap<String, i64> = HashMap::new();
        let mut normalized: Vec<Contact> = Vec::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            let mut c = w.clone();
            c.normalize();
            if let Some(o) = precheck(&c, int_id) {
                outcomes[i] = Some(o);
                normalized.push(c);
                continue;
            }
            let max = running_max.entry(c.contact_id.clone()).or_insert(i64::MIN);
            if c.version < *max {
                outcomes[i] = Some(WriteOutcome::Stale {
                    stored_version: *max,
                });
            } else {
                *max = c.version;
                winners.insert(c.contact_id.clone(), i);
            }
            normalized.push(c);
        }
        let mut order: Vec<usize> = winners.values().copied().collect();
        order.sort_unstable();
        let any_condition = expect.is_some_and(|e| e.iter().any(|x| *x != Expect::Any));
        // Step 1-2: the guards (one read of the batch's rows).
        let mut decided: HashMap<usize, WriteOutcome> = HashMap::new();
        let mut guards: HashMap<usize, Guard> = HashMap::new();
        if any_condition {
            let expect = expect.unwrap_or_default();
            let ids: Vec<String> = order
                .iter()
                .map(|i| normalized[*i].contact_id.clone())
                .collect();
            let held = self.read_with_fingerprints(&ids).await?;
            for i in &order {
                let c = &normalized[*i];
                let rows = held.get(&c.contact_id).map(Vec::as_slice).unwrap_or(&[]);
                let e = expect.get(*i).cloned().unwrap_or(Expect::Any);
                match decide_guard(&e, rows) {
                    Ok(g) => {
                        guards.insert(*i, g);
                    }
                    Err(o) => {
                        if let WriteOutcome::Rejected { reason, .. } = &o {
                            tracing::warn!(store = %self.cfg.name, table = %self.full_name, record = %c.contact_id, "bigquery: {reason}");
                        }
                        decided.insert(*i, o);
                    }
                }
            }
        }
        if any_condition {
            if let Some(hook) = &self.before_merge {
                hook();
            }
        }
        // Step 3: MERGE the rest, in chunks under the request limit.
        let pending: Vec<Pending> = order
            .iter()
            .filter(|i| !decided.contains_key(i))
            .map(|i| {
                let guard = guards.get(i).copied().unwrap_or(Guard::None);
                let value = merge_row(&normalized[*i], guard);
                let bytes = value.wire_size();
                Pending {
                    idx: *i,
                    guard,
                    value,
                    bytes,
                }
            })
            .collect();
        let sizes: Vec<usize> = pending.iter().map(|p| p.bytes).collect();
        let mut start = 0;
        for end in chunk_by_size(&sizes, self.cfg.max_rows_per_request, MAX_REQUEST_ROW_BYTES) {
            if end > start {
                let chunk = &pending[start..end];
                self.merge_chunk(chunk, &normalized, &mut decided).await?;
            }
            start = end;
        }
        // The winner's outcome, shared by its earlier duplicates.
        let mut by_id: HashMap<&str, WriteOutcome> = HashMap::new();
        for i in &order {
            let c = &normalized[*i];
            let o = decided.remove(i).unwrap_or_else(|| WriteOutcome::Applied {
                native_id: c.contact_id.clone(),
            });
            by_id.insert(c.contact_id.as_str(), o);
        }
        Ok(outcomes
            .into_iter()
            .zip(&normalized)
            .map(|(o, c)| {
                o.or_else(|| by_id.get(c.contact_id.as_str()).cloned())
                    .unwrap_or_else(|| WriteOutcome::Applied {
                        native_id: c.contact_id.clone(),
                    })
            })
            .collect())
    }

    /// One MERGE job for `chunk`, then (when it affected fewer rows than
    /// given) one read-back to tell `Stale` and `Changed` rows. Rows in the
    /// streaming buffer: the chunk is halved until the refused rows are
    /// alone, and those are `Changed` (deferred: the engine reads and
    /// merges them, and writes again later).
    async fn merge_chunk(
        &self,
        chunk: &[Pending],
        normalized: &[Contact],
        decided: &mut HashMap<usize, WriteOutcome>,
    ) -> Result<(), StoreError> {
        let mut stack: Vec<&[Pending]> = vec![chunk];
        while let Some(part) = stack.pop() {
            let rows = ParamValue::Array(part.iter().map(|p| p.value.clone()).collect());
            let param = QueryParam::new("rows", self.row_type.clone(), rows);
            let ctx = format!(
                "MERGE of {} contacts on table {}",
                part.len(),
                self.full_name
            );
            let res = match self.client.query(&self.merge_sql, &[param], &ctx).await {
                Ok(r) => r,
                Err(e) if is_streaming_buffer_error(&e) => {
                    if part.len() == 1 {
                        let c = &normalized[part[0].idx];
                        tracing::warn!(store = %self.cfg.name, table = %self.full_name, record = %c.contact_id,
                            "bigquery: row is still in the streaming buffer (written by insertAll); write deferred");
                        decided.insert(part[0].idx, WriteOutcome::Changed);
                    } else {
                        let mid = part.len() / 2;
                        stack.push(&part[mid..]);
                        stack.push(&part[..mid]);
                    }
                    continue;
                }
                Err(e) => return Err(self.err(e)),
            };
            if res
                .dml_affected_rows
                .is_some_and(|a| a >= part.len() as u64)
            {
                continue;
            }
            let ids: Vec<String> = part
                .iter()
                .map(|p| normalized[p.idx].contact_id.clone())
                .collect();
            let (filter, p) = self.id_filter(&ids);
            let sql = format!(
                "SELECT {} FROM {} t WHERE {filter}",
                self.layout.select_list("t"),
                self.table_sql
            );
            let res = self
                .query(&sql, &[p], "reading rows back after a MERGE")
                .await?;
            let mut stored: HashMap<String, Result<Contact, ()>> = HashMap::new();
            for r in &res.rows {
                let id = crate::capture::row_id(r);
                stored.insert(id, decode_contact(r).map_err(|_| ()));
            }
            for p in part {
                let c = &normalized[p.idx];
                let held = stored.get(&c.contact_id);
                let holds_write = matches!(held, Some(Ok(h)) if content_hash(h) == content_hash(c) && h.version == c.version);
                if holds_write {
                    continue;
                }
                let o = match (p.guard, held) {
                    (Guard::None, Some(Ok(h))) if h.version > c.version => WriteOutcome::Stale {
                        stored_version: h.version,
                    },
                    (Guard::None, _) => continue,
                    _ => WriteOutcome::Changed,
                };
                decided.insert(p.idx, o);
            }
        }
        Ok(())
    }

    /// Rows of these ids with their server-side fingerprint (`_fp`), by id
    /// (several rows when the table holds duplicates of an id).
    pub(crate) async fn read_with_fingerprints(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<Map<String, Value>>>, StoreError> {
        let mut out: HashMap<String, Vec<Map<String, Value>>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let (filter, p) = self.id_filter(ids);
        let sql = format!(
            "SELECT {}, {} AS _fp FROM {} t WHERE {filter}",
            self.layout.select_list("t"),
            self.layout.fingerprint("t"),
            self.table_sql
        );
        let what = format!("reading {} rows before a conditional MERGE", ids.len());
        let res = self.query(&sql, &[p], &what).await?;
        for r in res.rows {
            out.entry(crate::capture::row_id(&r)).or_default().push(r);
        }
        Ok(out)
    }
}

/// The guard of a conditional write given the rows the table holds for its
/// id, or its outcome when it cannot apply.
fn decide_guard(e: &Expect, rows: &[Map<String, Value>]) -> Result<Guard, WriteOutcome> {
    if rows.len() > 1 {
        return Err(WriteOutcome::Rejected {
            field: "contact_id".into(),
            reason: format!(
                "the table holds {} rows with this contact_id; remove the duplicates (none is written until then)",
                rows.len()
            ),
        });
    }
    let row = rows.first();
    let fp = row.and_then(|r| r.get("_fp")).and_then(Value::as_i64);
    let held = row.map(decode_contact);
    match (e, held) {
        (Expect::Any, _) => Ok(Guard::None),
        (Expect::Absent, None) => Ok(Guard::NoRow),
        (Expect::Absent, Some(Ok(h))) if h.is_deleted() => {
            fp.map(Guard::Fingerprint).ok_or(WriteOutcome::Changed)
        }
        (Expect::Absent, Some(_)) => Err(WriteOutcome::Changed),
        (Expect::Hash(h), None) if h == tombstone_hash() => Ok(Guard::NoRow),
        (Expect::Hash(_), None) => Err(WriteOutcome::Changed),
        (Expect::Hash(h), Some(Ok(held))) if content_hash(&held) == *h => {
            fp.map(Guard::Fingerprint).ok_or(WriteOutcome::Changed)
        }
        (Expect::Hash(_), Some(_)) => Err(WriteOutcome::Changed),
    }
}

/// A contact as a MERGE row with its guard.
fn merge_row(c: &Contact, guard: Guard) -> ParamValue {
    let ParamValue::Struct(mut fields) = row_value(c) else {
        unreachable!("row_value builds a struct")
    };
    let (g, fp) = match guard {
        Guard::None => (false, ParamValue::Null),
        Guard::NoRow => (true, ParamValue::Null),
        Guard::Fingerprint(f) => (true, ParamValue::Scalar(f.to_string())),
    };
    fields.push(("_guard".into(), ParamValue::Scalar(g.to_string())));
    fields.push(("_fp".into(), fp));
    ParamValue::Struct(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chunks_respect_rows_and_bytes() {
        assert_eq!(chunk_by_size(&[1, 1, 1], 10, 100), vec![3]);
        assert_eq!(chunk_by_size(&[1, 1, 1], 2, 100), vec![2, 3]);
        assert_eq!(chunk_by_size(&[60, 60, 60], 10, 100), vec![1, 2, 3]);
        // A row over the limit goes alone.
        assert_eq!(chunk_by_size(&[10, 200, 10], 10, 100), vec![1, 2, 3]);
        assert_eq!(chunk_by_size(&[], 10, 100), vec![0]);
    }

    #[test]
    fn a_5000_row_merge_of_large_contacts_is_split_under_10_mb() {
        // Issue 14 item 6: 5,000 rows sent one 13.25 MB request.
        let sizes = vec![2_650usize; 5_000];
        let cuts = chunk_by_size(&sizes, 10_000, MAX_REQUEST_ROW_BYTES);
        assert_eq!(cuts.len(), 2, "{cuts:?}");
        let mut start = 0;
        for end in cuts {
            assert!(sizes[start..end].iter().sum::<usize>() <= MAX_REQUEST_ROW_BYTES);
            start = end;
        }
    }

    #[test]
    fn streaming_buffer_refusals_are_recognised() {
        // The message BigQuery returns (HTTP 400, reason invalidQuery) for
        // DML over rows still in the streaming buffer.
        let e = crate::error::from_body(
            "MERGE of 3 contacts on table p.d.contacts",
            Some(400),
            &json!({"code": 400, "message": "UPDATE or DELETE statement over table p.d.contacts would affect rows in the streaming buffer, which is not supported", "errors": [{"reason": "invalidQuery", "message": "UPDATE or DELETE statement over table p.d.contacts would affect rows in the streaming buffer, which is not supported"}]}),
        );
        assert!(is_streaming_buffer_error(&e));
        assert!(
            !e.is_transient(),
            "not retried as a whole: deferred per row"
        );
        let other = crate::error::from_body(
            "q",
            Some(400),
            &json!({"reason": "invalidQuery", "message": "Syntax error"}),
        );
        assert!(!is_streaming_buffer_error(&other));
    }

    fn row(id: &str, name: &str, fp: i64, deleted: bool) -> Map<String, Value> {
        let mut r = Map::new();
        r.insert("contact_id".into(), json!(id));
        r.insert("canonical_name".into(), json!(name));
        r.insert("version".into(), json!(1));
        if deleted {
            r.insert("deleted_at".into(), json!(1_700_000_000_000_000i64));
        }
        r.insert("_fp".into(), json!(fp));
        r
    }

    #[test]
    fn guards_follow_the_expectation() {
        let ann = row("a", "Ann", 7, false);
        let h = content_hash(&decode_contact(&ann).unwrap());
        assert_eq!(
            decide_guard(&Expect::Hash(h.clone()), std::slice::from_ref(&ann)),
            Ok(Guard::Fingerprint(7))
        );
        assert_eq!(
            decide_guard(&Expect::Hash("other".into()), std::slice::from_ref(&ann)),
            Err(WriteOutcome::Changed)
        );
        assert_eq!(
            decide_guard(&Expect::Hash(h), &[]),
            Err(WriteOutcome::Changed)
        );
        assert_eq!(
            decide_guard(&Expect::Hash(tombstone_hash().into()), &[]),
            Ok(Guard::NoRow)
        );
        assert_eq!(decide_guard(&Expect::Absent, &[]), Ok(Guard::NoRow));
        assert_eq!(
            decide_guard(&Expect::Absent, std::slice::from_ref(&ann)),
            Err(WriteOutcome::Changed)
        );
        assert_eq!(
            decide_guard(&Expect::Absent, &[row("a", "Ann", 9, true)]),
            Ok(Guard::Fingerprint(9))
        );
        assert!(matches!(
            decide_guard(&Expect::Any, &[ann.clone(), ann]),
            Err(WriteOutcome::Rejected { .. })
        ));
    }
}
