//! Queries and row decoding, shared by [`crate::StateDb`] and
//! [`crate::StateTx`] (a transaction reads its own uncommitted writes).

use contact_sync_core::model::parse_ts;
use contact_sync_core::{DeadLetter, FieldConflict, JournalEntry, Op, Resolution, Timestamp};
use serde::de::DeserializeOwned;

use crate::db::{p, Backend as Connection, FromValue, Row};

use crate::{ConflictRow, Result, RunStats, StateError, StoreRecord, StoreStatus};

/// Bound parameters per query at most (SQLite's old default limit was 999;
/// 500 keeps statements small and the cache of prepared shapes tiny).
pub(crate) const MAX_PARAMS: usize = 500;

/// A `usize` limit as an SQL `LIMIT` value (saturating).
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A `u64` counter as SQLite INTEGER (saturating).
pub(crate) fn sql_u64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn corrupt(what: String, message: impl std::fmt::Display) -> StateError {
    StateError::Corrupt {
        what,
        message: message.to_string(),
    }
}

/// One column; a value of the wrong type is `Corrupt` naming `what`.
fn col<T: FromValue>(row: &Row, idx: usize, what: impl FnOnce() -> String) -> Result<T> {
    row.get(idx).map_err(|e| match e {
        StateError::Corrupt { message, .. } => corrupt(what(), message),
        e => e,
    })
}

fn ts(text: &str, what: impl FnOnce() -> String) -> Result<Timestamp> {
    parse_ts(text).ok_or_else(|| corrupt(what(), format!("not an RFC 3339 timestamp: {text:?}")))
}

fn opt_ts(text: Option<String>, what: impl FnOnce() -> String) -> Result<Option<Timestamp>> {
    text.map(|t| ts(&t, what)).transpose()
}

fn json<T: DeserializeOwned>(text: &str, what: impl FnOnce() -> String) -> Result<T> {
    serde_json::from_str(text).map_err(|e| corrupt(what(), e))
}

fn count(n: i64, what: impl FnOnce() -> String) -> Result<u64> {
    u64::try_from(n).map_err(|_| corrupt(what(), format!("negative count {n}")))
}

// --- journal ---

pub(crate) const JOURNAL_COLS: &str =
    "seq, contact_id, version, prev_version, op, origin, changes, conflicts, after, hash, at";

pub(crate) fn journal_row(row: &Row) -> Result<JournalEntry> {
    let seq: i64 = col(row, 0, || "journal seq".to_string())?;
    let what = |c: &str| format!("journal entry seq {seq} ({c})");
    let op: String = col(row, 4, || what("op"))?;
    let changes: String = col(row, 6, || what("changes"))?;
    let conflicts: String = col(row, 7, || what("conflicts"))?;
    let after: String = col(row, 8, || what("after"))?;
    let at: String = col(row, 10, || what("at"))?;
    Ok(JournalEntry {
        seq,
        contact_id: col(row, 1, || what("contact_id"))?,
        version: col(row, 2, || what("version"))?,
        prev_version: col(row, 3, || what("prev_version"))?,
        op: Op::parse(&op).ok_or_else(|| corrupt(what("op"), format!("unknown op {op:?}")))?,
        origin: col(row, 5, || what("origin"))?,
        changes: json(&changes, || what("changes"))?,
        conflicts: json(&conflicts, || what("conflicts"))?,
        after: json(&after, || what("after"))?,
        hash: col(row, 9, || what("hash"))?,
        at: ts(&at, || what("at"))?,
    })
}

fn journal_query(
    conn: &Connection,
    sql: &str,
    params: Vec<crate::db::Value>,
) -> Result<Vec<JournalEntry>> {
    conn.query(sql, params)?.iter().map(journal_row).collect()
}

pub(crate) fn journal_head(conn: &Connection) -> Result<i64> {
    conn.query_value("SELECT COALESCE(MAX(seq), 0) FROM journal", p![])
}

pub(crate) fn journal_after(
    conn: &Connection,
    after: i64,
    upto: i64,
    limit: usize,
) -> Result<Vec<JournalEntry>> {
    journal_query(
        conn,
        &format!(
            "SELECT {JOURNAL_COLS} FROM journal WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3"
        ),
        p![after, upto, sql_limit(limit)],
    )
}

pub(crate) fn journal_of(
    conn: &Connection,
    contact_id: &str,
    limit: usize,
) -> Result<Vec<JournalEntry>> {
    journal_query(
        conn,
        &format!(
            "SELECT {JOURNAL_COLS} FROM journal WHERE contact_id = ?1 ORDER BY seq DESC LIMIT ?2"
        ),
        p![contact_id, sql_limit(limit)],
    )
}

pub(crate) fn journal_version(
    conn: &Connection,
    contact_id: &str,
    version: i64,
) -> Result<Option<JournalEntry>> {
    Ok(journal_query(
        conn,
        &format!(
            "SELECT {JOURNAL_COLS} FROM journal WHERE contact_id = ?1 AND version = ?2 ORDER BY seq DESC LIMIT 1"
        ),
        p![contact_id, version],
    )?
    .pop())
}

pub(crate) fn journal_after_version(
    conn: &Connection,
    contact_id: &str,
    version: i64,
) -> Result<Option<JournalEntry>> {
    Ok(journal_query(
        conn,
        &format!(
            "SELECT {JOURNAL_COLS} FROM journal WHERE contact_id = ?1 AND prev_version = ?2 ORDER BY seq DESC LIMIT 1"
        ),
        p![contact_id, version],
    )?
    .pop())
}

// --- checkpoints, cursors, meta ---

pub(crate) fn checkpoint(conn: &Connection, store: &str) -> Result<Option<String>> {
    conn.query_opt(
        "SELECT checkpoint FROM checkpoints WHERE store = ?1",
        p![store],
    )?
    .map(|r| r.get(0))
    .transpose()
}

pub(crate) fn cursor(conn: &Connection, consumer: &str) -> Result<i64> {
    Ok(conn
        .query_opt("SELECT seq FROM cursors WHERE consumer = ?1", p![consumer])?
        .map(|r| r.get(0))
        .transpose()?
        .unwrap_or(0))
}

pub(crate) fn meta(conn: &Connection, key: &str) -> Result<Option<String>> {
    conn.query_opt("SELECT value FROM meta WHERE key = ?1", p![key])?
        .map(|r| r.get(0))
        .transpose()
}

// --- store records ---

pub(crate) const RECORD_COLS: &str =
    "store, contact_id, native_id, synced_version, hash, deleted, needs_write, late";

pub(crate) fn record_row(row: &Row) -> Result<StoreRecord> {
    let store: String = col(row, 0, || "store record (store)".to_string())?;
    let contact_id: String = col(row, 1, || format!("store record of {store} (contact_id)"))?;
    let what = |c: &str| format!("store record {store}/{contact_id} ({c})");
    let native_id = col(row, 2, || what("native_id"))?;
    let synced_version = col(row, 3, || what("synced_version"))?;
    let hash = col(row, 4, || what("hash"))?;
    let deleted = col(row, 5, || what("deleted"))?;
    let owed: i64 = col(row, 6, || what("needs_write"))?;
    let late: String = col(row, 7, || what("late"))?;
    Ok(StoreRecord {
        store,
        contact_id,
        native_id,
        synced_version,
        hash,
        deleted,
        needs_write: owed != 0,
        writeback: owed == 2,
        late: late.split_whitespace().map(str::to_string).collect(),
    })
}

pub(crate) fn store_record(
    conn: &Connection,
    store: &str,
    contact_id: &str,
) -> Result<Option<StoreRecord>> {
    conn.query_opt(
        &format!("SELECT {RECORD_COLS} FROM store_records WHERE store = ?1 AND contact_id = ?2"),
        p![store, contact_id],
    )?
    .as_ref()
    .map(record_row)
    .transpose()
}

/// `?2, ?3, …, ?{n+1}` (parameter 1 is the store).
fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 5);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push('?');
        s.push_str(&(i + 2).to_string());
    }
    s
}

pub(crate) fn store_records(
    conn: &Connection,
    store: &str,
    contact_ids: &[String],
) -> Result<Vec<StoreRecord>> {
    let mut out = Vec::with_capacity(contact_ids.len());
    if conn.is_pg() {
        // One statement shape whatever the number of ids.
        for chunk in contact_ids.chunks(10_000) {
            let rows = conn.query(
                &format!(
                    "SELECT {RECORD_COLS} FROM store_records WHERE store = ?1 AND contact_id = ANY(?2::text[])"
                ),
                vec![
                    crate::db::Value::Text(store.to_string()),
                    crate::db::Value::TextArray(chunk.iter().cloned().map(Some).collect()),
                ],
            )?;
            for row in rows {
                out.push(record_row(&row)?);
            }
        }
        return Ok(out);
    }
    // One parameter is the store.
    for chunk in contact_ids.chunks(MAX_PARAMS - 1) {
        let sql = format!(
            "SELECT {RECORD_COLS} FROM store_records WHERE store = ?1 AND contact_id IN ({})",
            placeholders(chunk.len())
        );
        let params = std::iter::once(store)
            .chain(chunk.iter().map(String::as_str))
            .map(|s| crate::db::Value::Text(s.to_string()))
            .collect();
        for row in conn.query(&sql, params)? {
            out.push(record_row(&row)?);
        }
    }
    Ok(out)
}

pub(crate) fn store_record_by_native(
    conn: &Connection,
    store: &str,
    native_id: &str,
) -> Result<Option<StoreRecord>> {
    conn.query_opt(
        &format!(
            "SELECT {RECORD_COLS} FROM store_records WHERE store = ?1 AND native_id = ?2 \
             ORDER BY deleted, contact_id LIMIT 1"
        ),
        p![store, native_id],
    )?
    .as_ref()
    .map(record_row)
    .transpose()
}

/// Owed records of a store, after a contact id, in pages: read every cycle,
/// so served by the partial index `store_records_owed` (never a scan).
/// (Named: on the primary key's range the planner would walk every record
/// of the store, having no statistics to tell how few are owed.)
const OWED_FROM: &str = "FROM store_records INDEXED BY store_records_owed \
     WHERE store = ?1 AND needs_write <> 0 \
     AND contact_id > ?2 ORDER BY contact_id LIMIT ?3";

pub(crate) fn store_records_needing_write(
    conn: &Connection,
    store: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<StoreRecord>> {
    conn.query(
        &format!("SELECT {RECORD_COLS} {OWED_FROM}"),
        p![store, after.unwrap_or(""), sql_limit(limit)],
    )?
    .iter()
    .map(record_row)
    .collect()
}

/// Live records of a store that carry a native id, after a contact id, in
/// pages (what the engine last knew the store to hold). Records whose
/// content is unknown (empty hash: a write whose answer was lost) are left
/// out: the store may never have had them.
pub(crate) fn store_records_held(
    conn: &Connection,
    store: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<StoreRecord>> {
    conn.query(
        &format!(
            "SELECT {RECORD_COLS} FROM store_records WHERE store = ?1 AND deleted = 0 \
             AND native_id IS NOT NULL AND native_id <> '' AND hash <> '' AND contact_id > ?2 \
             ORDER BY contact_id LIMIT ?3"
        ),
        p![store, after.unwrap_or(""), sql_limit(limit)],
    )?
    .iter()
    .map(record_row)
    .collect()
}

pub(crate) fn store_record_count(conn: &Connection, store: &str) -> Result<u64> {
    let n: i64 = conn.query_value(
        "SELECT COUNT(*) FROM store_records WHERE store = ?1 AND deleted = 0",
        p![store],
    )?;
    count(n, || format!("store record count of {store}"))
}

// --- conflicts ---

pub(crate) const CONFLICT_COLS: &str = "id, contact_id, store, field, base, canonical, incoming, \
     canonical_version, incoming_version, resolution, status, created_at, resolved_at";

pub(crate) fn conflict_row(row: &Row) -> Result<ConflictRow> {
    let id: i64 = col(row, 0, || "conflict id".to_string())?;
    let what = |c: &str| format!("conflict {id} ({c})");
    let base: String = col(row, 4, || what("base"))?;
    let canonical: String = col(row, 5, || what("canonical"))?;
    let incoming: String = col(row, 6, || what("incoming"))?;
    let resolution: String = col(row, 9, || what("resolution"))?;
    let created_at: String = col(row, 11, || what("created_at"))?;
    let resolved_at: Option<String> = col(row, 12, || what("resolved_at"))?;
    Ok(ConflictRow {
        id,
        contact_id: col(row, 1, || what("contact_id"))?,
        store: col(row, 2, || what("store"))?,
        conflict: FieldConflict {
            field: col(row, 3, || what("field"))?,
            base: json(&base, || what("base"))?,
            canonical: json(&canonical, || what("canonical"))?,
            incoming: json(&incoming, || what("incoming"))?,
            canonical_version: col(row, 7, || what("canonical_version"))?,
            incoming_version: col(row, 8, || what("incoming_version"))?,
            resolution: Resolution::parse(&resolution).ok_or_else(|| {
                corrupt(
                    what("resolution"),
                    format!("unknown resolution {resolution:?}"),
                )
            })?,
        },
        status: col(row, 10, || what("status"))?,
        created_at: ts(&created_at, || what("created_at"))?,
        resolved_at: opt_ts(resolved_at, || what("resolved_at"))?,
    })
}

pub(crate) fn conflicts(conn: &Connection, open_only: bool) -> Result<Vec<ConflictRow>> {
    let sql = if open_only {
        format!("SELECT {CONFLICT_COLS} FROM conflicts WHERE status = 'open' ORDER BY id DESC")
    } else {
        format!("SELECT {CONFLICT_COLS} FROM conflicts ORDER BY id DESC")
    };
    conn.query(&sql, p![])?.iter().map(conflict_row).collect()
}

pub(crate) fn conflict(conn: &Connection, id: i64) -> Result<Option<ConflictRow>> {
    conn.query_opt(
        &format!("SELECT {CONFLICT_COLS} FROM conflicts WHERE id = ?1"),
        p![id],
    )?
    .as_ref()
    .map(conflict_row)
    .transpose()
}

pub(crate) fn open_conflict_count(conn: &Connection) -> Result<u64> {
    let n: i64 = conn.query_value("SELECT COUNT(*) FROM conflicts WHERE status = 'open'", p![])?;
    count(n, || "open conflict count".to_string())
}

// --- dead letters ---

pub(crate) fn dead_letter_row(row: &Row) -> Result<DeadLetter> {
    let id: i64 = col(row, 0, || "dead letter id".to_string())?;
    let what = |c: &str| format!("dead letter {id} ({c})");
    let payload: Option<String> = col(row, 5, || what("payload"))?;
    let at: String = col(row, 6, || what("at"))?;
    Ok(DeadLetter {
        id,
        store: col(row, 1, || what("store"))?,
        record: col(row, 2, || what("record"))?,
        field: col(row, 3, || what("field"))?,
        reason: col(row, 4, || what("reason"))?,
        payload: payload.map(|p| json(&p, || what("payload"))).transpose()?,
        at: ts(&at, || what("at"))?,
    })
}

pub(crate) fn dead_letters(conn: &Connection, limit: usize) -> Result<Vec<DeadLetter>> {
    conn.query(
        "SELECT id, store, record, field, reason, payload, at FROM dead_letters \
         ORDER BY id DESC LIMIT ?1",
        p![sql_limit(limit)],
    )?
    .iter()
    .map(dead_letter_row)
    .collect()
}

pub(crate) fn dead_letter_count(conn: &Connection) -> Result<u64> {
    let n: i64 = conn.query_value("SELECT COUNT(*) FROM dead_letters", p![])?;
    count(n, || "dead letter count".to_string())
}

// --- run stats ---

pub(crate) fn store_status(conn: &Connection, store: &str) -> Result<StoreStatus> {
    let Some(row) = conn.query_opt(
        "SELECT captured, applied, written, skipped_echo, dead_letters, conflicts, \
                last_success, last_error, last_error_at, consecutive_errors \
         FROM store_stats WHERE store = ?1",
        p![store],
    )?
    else {
        return Ok(StoreStatus {
            store: store.to_string(),
            ..StoreStatus::default()
        });
    };
    let what = |c: &str| format!("run stats of {store} ({c})");
    let counter = |idx: usize, c: &str| -> Result<u64> {
        let n: i64 = col(&row, idx, || what(c))?;
        count(n, || what(c))
    };
    let totals = RunStats {
        captured: counter(0, "captured")?,
        applied: counter(1, "applied")?,
        written: counter(2, "written")?,
        skipped_echo: counter(3, "skipped_echo")?,
        dead_letters: counter(4, "dead_letters")?,
        conflicts: counter(5, "conflicts")?,
    };
    Ok(StoreStatus {
        store: store.to_string(),
        last_success: opt_ts(col(&row, 6, || what("last_success"))?, || {
            what("last_success")
        })?,
        last_error: col(&row, 7, || what("last_error"))?,
        last_error_at: opt_ts(col(&row, 8, || what("last_error_at"))?, || {
            what("last_error_at")
        })?,
        consecutive_errors: counter(9, "consecutive_errors")?,
        totals,
    })
}

pub(crate) fn known_stores(conn: &Connection) -> Result<Vec<String>> {
    // The distinct stores of store_records by walking its primary key from
    // one store to the next (a loose index scan), not by reading every row.
    conn.query(
        "WITH RECURSIVE rec(store) AS (
             SELECT MIN(store) FROM store_records
             UNION ALL
             SELECT (SELECT MIN(store) FROM store_records WHERE store > rec.store)
             FROM rec WHERE rec.store IS NOT NULL
         )
         SELECT store FROM rec WHERE store IS NOT NULL
         UNION SELECT store FROM checkpoints
         UNION SELECT consumer FROM cursors
         UNION SELECT store FROM store_stats
         ORDER BY 1",
        p![],
    )?
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The newest journal seq of each of `contact_ids` that has an entry
/// (seqs only: no entry is read or decoded).
pub(crate) fn journal_newest_seqs(
    conn: &Connection,
    contact_ids: &[String],
) -> Result<std::collections::HashMap<String, i64>> {
    let mut out = std::collections::HashMap::with_capacity(contact_ids.len());
    let mut take = |rows: Vec<Row>| -> Result<()> {
        for row in rows {
            let id: String = col(&row, 0, || "journal contact_id".to_string())?;
            let seq: i64 = col(&row, 1, || format!("journal seq of {id}"))?;
            out.insert(id, seq);
        }
        Ok(())
    };
    if conn.is_pg() {
        for chunk in contact_ids.chunks(10_000) {
            take(conn.query(
                "SELECT contact_id, MAX(seq) FROM journal WHERE contact_id = ANY(?1::text[]) GROUP BY contact_id",
                vec![crate::db::Value::TextArray(
                    chunk.iter().cloned().map(Some).collect(),
                )],
            )?)?;
        }
        return Ok(out);
    }
    for chunk in contact_ids.chunks(MAX_PARAMS) {
        let sql = format!(
            "SELECT contact_id, MAX(seq) FROM journal WHERE contact_id IN ({}) GROUP BY contact_id",
            (1..=chunk.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let params = chunk
            .iter()
            .map(|s| crate::db::Value::Text(s.clone()))
            .collect();
        take(conn.query(&sql, params)?)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::OWED_FROM;

    /// The owed-writes page runs every cycle: at 1M records a scan of the
    /// store's records cost 120-180 ms per idle cycle.
    #[test]
    fn the_owed_writes_page_is_served_by_its_partial_index() {
        let db = crate::StateDb::open_in_memory().unwrap();
        let crate::db::Backend::Sqlite(conn) = db.conn() else {
            unreachable!()
        };
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN SELECT contact_id {OWED_FROM}"))
            .unwrap()
            .query_map(rusqlite::params!["local", "", 100], |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|p| p.contains("INDEX store_records_owed")),
            "{plan:?}"
        );
    }
}
