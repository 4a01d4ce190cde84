//! People data: erasure records (a PII-free note that a contact was
//! erased: its id, when, which stores confirmed), scrubbing a contact from
//! the journal, conflicts and dead letters, and everything held about one
//! contact for an access request.
//!
//! The `erasures` table is created on first use (`CREATE TABLE IF NOT
//! EXISTS`), so databases of every schema version take it without a
//! migration step.

use std::collections::BTreeSet;

use contact_sync_core::model::{format_ts, parse_ts};
use contact_sync_core::{Contact, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{Result, StateDb, StateError, StateTx};

const ERASURES: &str = "CREATE TABLE IF NOT EXISTS erasures (
    contact_id TEXT PRIMARY KEY NOT NULL,
    erased_at  TEXT NOT NULL,
    version    INTEGER NOT NULL,
    confirmed  TEXT NOT NULL DEFAULT '[]'
)";

/// A contact that was erased: no personal data, only the id, when, the
/// tombstone's version and the stores that confirmed they hold nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Erasure {
    pub contact_id: String,
    pub erased_at: Timestamp,
    pub version: i64,
    pub confirmed: Vec<String>,
}

fn ensure(conn: &Connection) -> Result<()> {
    conn.execute_batch(ERASURES)?;
    Ok(())
}

fn erasure_of(conn: &Connection, id: &str) -> Result<Option<Erasure>> {
    ensure(conn)?;
    let row = conn
        .query_row(
            "SELECT erased_at, version, confirmed FROM erasures WHERE contact_id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?;
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
    let mut st = conn.prepare(sql)?;
    let names: Vec<String> = st.column_names().map(|s| s.to_string()).collect();
    let rows = st.query_map([id], |r| {
        let mut m = Map::new();
        for (i, n) in names.iter().enumerate() {
            let v = match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(x) => Value::from(x),
                rusqlite::types::ValueRef::Real(x) => Value::from(x),
                rusqlite::types::ValueRef::Text(t) => {
                    let s = String::from_utf8_lossy(t).into_owned();
                    // JSON columns (values, payloads) as JSON.
                    match serde_json::from_str::<Value>(&s) {
                        Ok(v @ (Value::Object(_) | Value::Array(_))) => v,
                        _ => Value::String(s),
                    }
                }
                rusqlite::types::ValueRef::Blob(_) => Value::Null,
            };
            m.insert(n.clone(), v);
        }
        Ok(Value::Object(m))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

const DEAD_LETTERS_OF: &str = "SELECT * FROM dead_letters WHERE record = ?1 \
     OR (json_valid(payload) AND json_extract(payload, '$.contact_id') = ?1) ORDER BY id";

impl StateDb {
    /// The erasure record of a contact, if it was erased.
    pub fn erasure(&self, contact_id: &str) -> Result<Option<Erasure>> {
        erasure_of(self.conn(), contact_id)
    }

    /// Which of `ids` were erased (their images are deletes, never edits).
    pub fn erased_among(&self, ids: &[String]) -> Result<BTreeSet<String>> {
        let conn = self.conn();
        ensure(conn)?;
        let mut st = conn.prepare_cached("SELECT 1 FROM erasures WHERE contact_id = ?1")?;
        let mut out = BTreeSet::new();
        for id in ids {
            if st.exists([id])? {
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
        rows_as_json(self.conn(), DEAD_LETTERS_OF, contact_id)
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
        ensure(&self.tx)?;
        self.tx.execute(
            "INSERT INTO erasures (contact_id, erased_at, version) VALUES (?1, ?2, ?3)
             ON CONFLICT (contact_id) DO UPDATE SET erased_at = excluded.erased_at,
                 version = excluded.version",
            params![contact_id, format_ts(&at), version],
        )?;
        Ok(())
    }

    /// The stores that confirmed an erasure.
    pub fn set_erasure_confirmed(&self, contact_id: &str, stores: &[String]) -> Result<()> {
        ensure(&self.tx)?;
        let list = serde_json::to_string(stores).map_err(|e| StateError::Corrupt {
            what: format!("erasure of {contact_id}"),
            message: format!("{e}"),
        })?;
        self.tx.execute(
            "UPDATE erasures SET confirmed = ?2 WHERE contact_id = ?1",
            params![contact_id, list],
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
        let entries: Vec<(i64, i64)> = {
            let mut st = self.tx.prepare(
                "SELECT seq, version FROM journal WHERE contact_id = ?1 AND origin != 'erase'",
            )?;
            let rows = st.query_map([contact_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (seq, version) in &entries {
            let mut t = Contact::new(contact_id, "");
            t.version = *version;
            t.deleted_at = Some(erased_at);
            let after = serde_json::to_string(&t).map_err(|e| StateError::Corrupt {
                what: format!("scrubbing {contact_id}"),
                message: format!("{e}"),
            })?;
            self.tx.execute(
                "UPDATE journal SET after = ?2, changes = '[]', conflicts = '[]' WHERE seq = ?1",
                params![seq, after],
            )?;
        }
        self.unindex_contact(contact_id)?;
        let conflicts = self
            .tx
            .execute("DELETE FROM conflicts WHERE contact_id = ?1", [contact_id])?;
        let dead = self.tx.execute(
            &format!(
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM ({}))",
                DEAD_LETTERS_OF.replace("SELECT *", "SELECT id")
            ),
            [contact_id],
        )?;
        Ok((entries.len(), conflicts, dead))
    }
}
