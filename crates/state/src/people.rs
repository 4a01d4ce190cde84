//! People data: erasure records (a PII-free note that a contact was
//! erased: its id, when, which stores confirmed), scrubbing a contact from
//! the journal, conflicts and dead letters, and everything held about one
//! contact for an access request.
//!
//! The `erasures` table is created by schema version 8 (before, on first
//! use).

use std::collections::BTreeSet;

use contact_sync_core::model::{format_ts, parse_ts};
use contact_sync_core::{Contact, Timestamp};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::db::{p, Backend as Connection, Value as SqlValue};
use crate::{Result, StateDb, StateError, StateTx};

/// A contact that was erased: no personal data, only the id, when, the
/// tombstone's version and the stores that confirmed they hold nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Erasure {
    pub contact_id: String,
    pub erased_at: Timestamp,
    pub version: i64,
    pub confirmed: Vec<String>,
}

fn erasure_of(conn: &Connection, id: &str) -> Result<Option<Erasure>> {
    let row = conn
        .query_opt(
            "SELECT erased_at, version, confirmed FROM erasures WHERE contact_id = ?1",
            p![id],
        )?
        .map(|r| -> Result<(String, i64, String)> { Ok((r.get(0)?, r.get(1)?, r.get(2)?)) })
        .transpose()?;
    row.map(|(at, version, confirmed)| {
        Ok(Erasure {
            contact_id: id.to_string(),
            erased_at: parse_ts(&at).ok_or_else(|| StateError::Corrupt {
                what: format!("erasure of {id}"),
                message: format!("bad time {at:?}"),
            })?,
            version,
            confirmed: serde_json::from_str(&confirmed).map_err(|e| StateError::Corrupt {
                what: format!("erasure of {id}"),
                message: format!("confirmed stores: {e}"),
            })?,
        })
    })
    .transpose()
}

/// Every row of `sql` (one `?1` parameter) as a JSON object by column name.
fn rows_as_json(conn: &Connection, sql: &str, id: &str) -> Result<Vec<Value>> {
    let rows = conn.query(sql, p![id])?;
    Ok(rows
        .iter()
        .map(|r| {
            let mut m = Map::new();
            for (n, v) in r.names.iter().zip(&r.values) {
                let v = match v {
                    SqlValue::Null => Value::Null,
                    SqlValue::Int(x) => Value::from(*x),
                    SqlValue::Real(x) => Value::from(*x),
                    // JSON columns (values, payloads) as JSON.
                    SqlValue::Text(s) => match serde_json::from_str::<Value>(s) {
                        Ok(v @ (Value::Object(_) | Value::Array(_))) => v,
                        _ => Value::String(s.clone()),
                    },
                    SqlValue::TextArray(_) | SqlValue::IntArray(_) => Value::Null,
                };
                m.insert(n.clone(), v);
            }
            Value::Object(m)
        })
        .collect())
}

/// Dead letters that may be of a contact (by record, or its id anywhere in
/// the payload); [`of_contact`] tells.
const DEAD_LETTERS_OF: &str = "SELECT * FROM dead_letters WHERE record = ?1 \
     OR payload LIKE '%' || ?1 || '%' ORDER BY id";

/// Whether a dead letter row (as JSON) is about `id`: its record, or the
/// `contact_id` of its payload.
fn of_contact(row: &Value, id: &str) -> bool {
    row["record"].as_str() == Some(id) || row["payload"]["contact_id"].as_str() == Some(id)
}

impl StateDb {
    /// The erasure record of a contact, if it was erased.
    pub fn erasure(&self, contact_id: &str) -> Result<Option<Erasure>> {
        erasure_of(self.conn(), contact_id)
    }

    /// Which of `ids` were erased (their images are deletes, never edits).
    pub fn erased_among(&self, ids: &[String]) -> Result<BTreeSet<String>> {
        let conn = self.conn();
        let mut out = BTreeSet::new();
        for id in ids {
            if conn
                .query_opt("SELECT 1 FROM erasures WHERE contact_id = ?1", p![id])?
                .is_some()
            {
                out.insert(id.clone());
            }
        }
        Ok(out)
    }

    /// The conflicts recorded about a contact, as JSON rows (any status).
    pub fn conflicts_of(&self, contact_id: &str) -> Result<Vec<Value>> {
        rows_as_json(
            self.conn(),
            "SELECT * FROM conflicts WHERE contact_id = ?1 ORDER BY id",
            contact_id,
        )
    }

    /// The dead letters of a contact (by record or payload id), as JSON rows.
    pub fn dead_letters_of(&self, contact_id: &str) -> Result<Vec<Value>> {
        let mut rows = rows_as_json(self.conn(), DEAD_LETTERS_OF, contact_id)?;
        rows.retain(|r| of_contact(r, contact_id));
        Ok(rows)
    }

    /// The engine's records of a contact in every store, as JSON rows.
    pub fn store_records_json_of(&self, contact_id: &str) -> Result<Vec<Value>> {
        rows_as_json(
            self.conn(),
            "SELECT * FROM store_records WHERE contact_id = ?1 ORDER BY store",
            contact_id,
        )
    }
}

impl StateTx<'_> {
    /// Notes that a contact is erased (from now on its images are deletes).
    pub fn record_erasure(&self, contact_id: &str, at: Timestamp, version: i64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO erasures (contact_id, erased_at, version) VALUES (?1, ?2, ?3)
             ON CONFLICT (contact_id) DO UPDATE SET erased_at = excluded.erased_at,
                 version = excluded.version",
            p![contact_id, format_ts(&at), version],
        )?;
        Ok(())
    }

    /// The stores that confirmed an erasure.
    pub fn set_erasure_confirmed(&self, contact_id: &str, stores: &[String]) -> Result<()> {
        let list = serde_json::to_string(stores).map_err(|e| StateError::Corrupt {
            what: format!("erasure of {contact_id}"),
            message: format!("{e}"),
        })?;
        self.conn().execute(
            "UPDATE erasures SET confirmed = ?2 WHERE contact_id = ?1",
            p![contact_id, list],
        )?;
        Ok(())
    }

    /// Removes a contact's personal data from the journal (each entry keeps
    /// its seq, id, versions, op, origin, hash and time; its record becomes
    /// an empty tombstone at that version and its field changes and
    /// conflicts are dropped), its conflicts and dead letters, and its search index text. Returns
    /// (journal entries scrubbed, conflicts removed, dead letters removed).
    pub fn scrub_contact(
        &self,
        contact_id: &str,
        erased_at: Timestamp,
    ) -> Result<(usize, usize, usize)> {
        // The entries' cached copies hold what is scrubbed here.
        self.journal_rewritten();
        let entries: Vec<(i64, i64)> = self
            .conn()
            .query(
                "SELECT seq, version FROM journal WHERE contact_id = ?1 AND origin != 'erase'",
                p![contact_id],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect::<Result<_>>()?;
        for (seq, version) in &entries {
            let mut t = Contact::new(contact_id, "");
            t.version = *version;
            t.deleted_at = Some(erased_at);
            let after = serde_json::to_string(&t).map_err(|e| StateError::Corrupt {
                what: format!("scrubbing {contact_id}"),
                message: format!("{e}"),
            })?;
            self.conn().execute(
                "UPDATE journal SET after = ?2, changes = '[]', conflicts = '[]' WHERE seq = ?1",
                p![seq, after],
            )?;
        }
        self.unindex_contact(contact_id)?;
        let conflicts = self.conn().execute(
            "DELETE FROM conflicts WHERE contact_id = ?1",
            p![contact_id],
        )?;
        let mut dead = 0;
        for row in rows_as_json(self.conn(), DEAD_LETTERS_OF, contact_id)? {
            if of_contact(&row, contact_id) {
                dead += self.conn().execute(
                    "DELETE FROM dead_letters WHERE id = ?1",
                    p![row["id"].as_i64()],
                )?;
            }
        }
        Ok((entries.len(), conflicts as usize, dead as usize))
    }
}
