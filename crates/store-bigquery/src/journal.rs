//! The analytics copy of the change journal in BigQuery
//! (`journal_table`, default `contact_changes`).
//!
//! Schema (one row per journal entry; see [`crate::journal_schema`]):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `seq` | INT64, required | the entry's position in the engine's journal: unique, the key of the append |
//! | `contact_id` | STRING, required | the contact |
//! | `version` | INT64, required | canonical version the entry produced |
//! | `prev_version` | INT64 | version before (0: new contact) |
//! | `op` | STRING, required | `upsert` (a new contact: `prev_version` 0) or `delete` |
//! | `origin` | STRING | store the change came from |
//! | `changed_fields` | REPEATED STRING | names of the fields that changed |
//! | `changes` | JSON | `[{field, old, new}]` |
//! | `conflicts` | JSON | fields changed on both sides and how each was settled |
//! | `after` | JSON | the canonical record after the entry |
//! | `content_hash` | STRING | content hash of `after` |
//! | `at` | TIMESTAMP, required | when the engine journaled it |
//!
//! New tables are partitioned by month of `at` and clustered by
//! `contact_id` (an analyst's `WHERE contact_id = …` or date range reads
//! little). Appends are one `MERGE … ON t.seq = s.seq WHEN NOT MATCHED THEN
//! INSERT` per request: a retried append (after a timeout, a crash before
//! the engine recorded it) inserts nothing twice, exactly, not only within
//! insertAll's best-effort one-minute dedupe window.

use contact_sync_connector::StoreError;
use contact_sync_core::model::format_ts;
use contact_sync_core::JournalEntry;

use crate::client::{ParamType, ParamValue, QueryParam};
use crate::store::BigQueryStore;
use crate::write::{chunk_by_size, MAX_REQUEST_ROW_BYTES};

fn js<T: serde::Serialize>(v: &T) -> ParamValue {
    ParamValue::Scalar(serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
}

fn journal_row(e: &JournalEntry) -> ParamValue {
    let s = |v: &str| ParamValue::Scalar(v.to_string());
    ParamValue::Struct(vec![
        ("seq".into(), s(&e.seq.to_string())),
        ("contact_id".into(), s(&e.contact_id)),
        ("version".into(), s(&e.version.to_string())),
        ("prev_version".into(), s(&e.prev_version.to_string())),
        ("op".into(), s(e.op.as_str())),
        ("origin".into(), s(&e.origin)),
        (
            "changed_fields".into(),
            ParamValue::Array(e.changes.iter().map(|c| s(&c.field)).collect()),
        ),
        ("changes".into(), js(&e.changes)),
        ("conflicts".into(), js(&e.conflicts)),
        ("after".into(), js(&e.after)),
        ("content_hash".into(), s(&e.hash)),
        ("at".into(), s(&format_ts(&e.at))),
    ])
}

fn journal_row_type() -> ParamType {
    let t = |x: &'static str| ParamType::Scalar(x);
    ParamType::Array(Box::new(ParamType::Struct(vec![
        ("seq".into(), t("INT64")),
        ("contact_id".into(), t("STRING")),
        ("version".into(), t("INT64")),
        ("prev_version".into(), t("INT64")),
        ("op".into(), t("STRING")),
        ("origin".into(), t("STRING")),
        (
            "changed_fields".into(),
            ParamType::Array(Box::new(t("STRING"))),
        ),
        ("changes".into(), t("STRING")),
        ("conflicts".into(), t("STRING")),
        ("after".into(), t("STRING")),
        ("content_hash".into(), t("STRING")),
        ("at".into(), t("TIMESTAMP")),
    ])))
}

impl BigQueryStore {
    /// Appends journal entries (each with its `seq` assigned) to the
    /// journal table, idempotently: an entry whose `seq` is already there
    /// is left as it is, so a retry after any failure is safe. Returns how
    /// many rows were new. A no-op (0) without a journal table.
    ///
    /// One MERGE job per request (requests split by rows and bytes to stay
    /// under BigQuery's 10 MB limit); call it with each batch of entries the
    /// engine journals (e.g. after the canonical write of a cycle).
    pub async fn append_journal_rows(&self, entries: &[JournalEntry]) -> Result<u64, StoreError> {
        let Some(table) = &self.cfg.journal_table else {
            return Ok(0);
        };
        if entries.is_empty() {
            return Ok(0);
        }
        let table_sql = format!(
            "`{}.{}.{}`",
            crate::store::sql_ident(self.client.project()),
            crate::store::sql_ident(&self.cfg.dataset),
            crate::store::sql_ident(table)
        );
        let sql = format!(
            "MERGE {table_sql} t USING (SELECT r.seq AS seq, r.contact_id AS contact_id, \
             r.version AS version, r.prev_version AS prev_version, r.op AS op, r.origin AS origin, \
             r.changed_fields AS changed_fields, PARSE_JSON(r.changes) AS changes, \
             PARSE_JSON(r.conflicts) AS conflicts, PARSE_JSON(r.after) AS after, \
             r.content_hash AS content_hash, r.at AS at FROM UNNEST(@rows) AS r) s \
             ON t.seq = s.seq AND t.at BETWEEN @lo AND @hi \
             WHEN NOT MATCHED THEN INSERT (seq, contact_id, version, prev_version, op, origin, \
             changed_fields, changes, conflicts, after, content_hash, at) VALUES (s.seq, \
             s.contact_id, s.version, s.prev_version, s.op, s.origin, s.changed_fields, s.changes, \
             s.conflicts, s.after, s.content_hash, s.at)"
        );
        let rows: Vec<ParamValue> = entries.iter().map(journal_row).collect();
        let sizes: Vec<usize> = rows.iter().map(ParamValue::wire_size).collect();
        let mut inserted = 0;
        let mut start = 0;
        for end in chunk_by_size(&sizes, self.cfg.max_rows_per_request, MAX_REQUEST_ROW_BYTES) {
            if end == start {
                continue;
            }
            let part = &entries[start..end];
            let lo = part.iter().map(|e| e.at).min().unwrap_or_default();
            let hi = part.iter().map(|e| e.at).max().unwrap_or_default();
            let params = [
                QueryParam::new(
                    "rows",
                    journal_row_type(),
                    ParamValue::Array(rows[start..end].to_vec()),
                ),
                QueryParam::timestamp("lo", &lo),
                QueryParam::timestamp("hi", &hi),
            ];
            let ctx = format!(
                "appending {} journal entries to {}.{}.{table}",
                part.len(),
                self.client.project(),
                self.cfg.dataset
            );
            let res = self
                .client
                .query(&sql, &params, &ctx)
                .await
                .map_err(|e| self.err(e))?;
            inserted += res.dml_affected_rows.unwrap_or(0);
            start = end;
        }
        Ok(inserted)
    }
}
