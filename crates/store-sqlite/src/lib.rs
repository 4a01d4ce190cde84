//! The embedded SQLite store: one implementation for the embedded canonical
//! store (`canonical.db`) and the local copy (`local.db`).
//!
//! - Table `contacts`: `id INTEGER PRIMARY KEY` (the native id) and one
//!   column per canonical field (JSON as text, timestamps as RFC 3339 text),
//!   plus `_primary_email` / `_primary_phone`, indexed, for identity matching.
//! - Change capture: triggers append the full new row image to
//!   `_contact_sync_changes`. They are silent while `_contact_sync_control.
//!   suppress = 1`, which only this store's own write transaction sets (and
//!   clears before it commits), so the engine's writes never come back.
//! - rusqlite is synchronous: the async trait methods do their (local disk)
//!   work directly.

mod codec;
mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use codec::{decode, raw_from_image, record_label, row_id_text, Encoded, Raw, NCOLS};
use contact_sync_connector::{
    Change, ChangeBatch, ChangeKind, ChangeSource, Checkpoint, RecordSink, StoreError, StoreInfo,
    WriteOutcome,
};
use contact_sync_core::model::ALL_FIELDS;
use contact_sync_core::Contact;
use rusqlite::{params_from_iter, Connection, OptionalExtension, TransactionBehavior};

/// Most parameters bound in one `IN (…)` list.
const CHUNK: usize = 500;

/// An SQLite file holding contacts. See the crate docs.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    name: String,
    insert_sql: String,
    update_sql: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

fn classify(name: &str, what: &str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    let msg = format!("{what}: {e}");
    match e.sqlite_error_code() {
        Some(DatabaseBusy) | Some(DatabaseLocked) => StoreError::transient(name, msg),
        _ => StoreError::permanent(name, msg),
    }
}

fn insert_sql() -> String {
    let mut cols: Vec<&str> = ALL_FIELDS.to_vec();
    cols.push(schema::PRIMARY_EMAIL);
    cols.push(schema::PRIMARY_PHONE);
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO contacts ({}) VALUES ({})",
        cols.join(", "),
        marks.join(", ")
    )
}

fn update_sql() -> String {
    let mut cols: Vec<&str> = ALL_FIELDS.to_vec();
    cols.push(schema::PRIMARY_EMAIL);
    cols.push(schema::PRIMARY_PHONE);
    let sets: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", i + 1))
        .collect();
    format!(
        "UPDATE contacts SET {} WHERE id = ?{}",
        sets.join(", "),
        cols.len() + 1
    )
}

impl SqliteStore {
    /// Opens (creating when missing) the store at `path` under `name`.
    pub fn open(path: &Path, name: &str) -> Result<SqliteStore, StoreError> {
        let what = format!("cannot open {}", path.display());
        let mut conn = Connection::open(path).map_err(|e| classify(name, &what, e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| classify(name, &what, e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| classify(name, &what, e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| classify(name, &what, e))?;
        schema::ensure(&mut conn)
            .map_err(|e| classify(name, &format!("schema of {}", path.display()), e))?;
        if !schema::id_is_rowid(&conn).map_err(|e| classify(name, &what, e))? {
            return Err(StoreError::permanent(
                name,
                format!(
                    "{}: table contacts must have `id INTEGER PRIMARY KEY`",
                    path.display()
                ),
            ));
        }
        conn.set_prepared_statement_cache_capacity(32);
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            name: name.to_string(),
            insert_sql: insert_sql(),
            update_sql: update_sql(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, what: &str, e: rusqlite::Error) -> StoreError {
        classify(&self.name, what, e)
    }

    /// Rows selected by `sql` (which selects [`schema::select_columns`]),
    /// decoded; rows that cannot be read are skipped with a warning (their
    /// change was reported as undecodable when it was made).
    fn query_contacts(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Contact>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(sql)
            .map_err(|e| self.err("read", e))?;
        let mut rows = stmt.query(params).map_err(|e| self.err("read", e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err("read", e))? {
            let mut raw = [Raw::Null; NCOLS];
            for (i, r) in raw.iter_mut().enumerate() {
                *r = Raw::from(row.get_ref(i).map_err(|e| self.err("read", e))?);
            }
            match decode(&raw) {
                Ok(c) => out.push(c),
                Err(invalid) => tracing::warn!(store = %self.name, record = %invalid.record,
                    field = %invalid.field, "row cannot be read; skipped"),
            }
        }
        Ok(out)
    }

    fn write_one(
        (name, insert_sql, update_sql): (&str, &str, &str),
        tx: &rusqlite::Transaction<'_>,
        c: &Contact,
    ) -> Result<WriteOutcome, rusqlite::Error> {
        let enc = Encoded::new(c);
        let params = enc.params(c);
        let existing: Option<(i64, i64)> = tx
            .prepare_cached("SELECT id, version FROM contacts WHERE contact_id = ?1")?
            .query_row([&c.contact_id], |r| {
                Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.unwrap_or(1)))
            })
            .optional()?;
        let target = match existing {
            Some((id, stored)) => {
                if stored > c.version {
                    return Ok(WriteOutcome::Stale {
                        stored_version: stored,
                    });
                }
                Some(id)
            }
            None => {
                // Write-back of an id minted for a row created without one.
                let native = c.external_ids.get(name).and_then(|s| s.parse::<i64>().ok());
                match native {
                    Some(id) => tx
                        .prepare_cached(
                            "SELECT id FROM contacts WHERE id = ?1 AND (contact_id IS NULL OR contact_id = '')",
                        )?
                        .query_row([id], |r| r.get::<_, i64>(0))
                        .optional()?,
                    None => None,
                }
            }
        };
        let id = match target {
            Some(id) => {
                let mut all: Vec<&dyn rusqlite::ToSql> = params.to_vec();
                all.push(&id);
                tx.prepare_cached(update_sql)?
                    .execute(params_from_iter(all))?;
                id
            }
            None => {
                tx.prepare_cached(insert_sql)?
                    .execute(params_from_iter(params))?;
                tx.last_insert_rowid()
            }
        };
        Ok(WriteOutcome::Applied {
            native_id: id.to_string(),
        })
    }
}

impl StoreInfo for SqliteStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn keeps_version(&self) -> bool {
        true
    }
}

#[async_trait]
impl ChangeSource for SqliteStore {
    async fn read_changes(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        let after: i64 = match from {
            None => 0,
            Some(cp) => cp.as_str().parse().map_err(|_| {
                StoreError::permanent(
                    &self.name,
                    format!("checkpoint {cp:?} is not a change sequence number"),
                )
            })?,
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, row_id, contact_id, op, image FROM _contact_sync_changes
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(|e| self.err("read changes", e))?;
        let rows = stmt
            .query_map(rusqlite::params![after, (limit + 1) as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })
            .map_err(|e| self.err("read changes", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err("read changes", e))?;
        let has_more = rows.len() > limit;
        let mut last = after;
        let mut changes = Vec::with_capacity(rows.len().min(limit));
        for (seq, row_id, contact_id, op, image) in rows.into_iter().take(limit) {
            last = seq;
            let native_id = row_id.to_string();
            let kind = if op == "delete" {
                ChangeKind::Delete {
                    contact_id: contact_id.filter(|s| !s.trim().is_empty()),
                }
            } else {
                let parsed: Option<serde_json::Map<String, serde_json::Value>> =
                    image.as_deref().and_then(|s| serde_json::from_str(s).ok());
                match parsed {
                    None => ChangeKind::Undecodable {
                        invalid: contact_sync_core::Invalid::new(
                            contact_id
                                .clone()
                                .unwrap_or_else(|| format!("row {row_id}")),
                            "record",
                            "the change image is not readable JSON",
                        ),
                        payload: None,
                    },
                    Some(map) => {
                        let raw = raw_from_image(&map);
                        match decode(&raw) {
                            Ok(c) => ChangeKind::Upsert(Box::new(c)),
                            Err(invalid) => {
                                debug_assert!(
                                    !record_label(&raw).is_empty() && !row_id_text(&raw).is_empty()
                                );
                                ChangeKind::Undecodable {
                                    invalid,
                                    payload: Some(serde_json::Value::Object(map.clone())),
                                }
                            }
                        }
                    }
                }
            };
            changes.push(Change { native_id, kind });
        }
        Ok(ChangeBatch {
            changes,
            checkpoint: Checkpoint::new(last.to_string()),
            has_more,
        })
    }

    async fn acknowledge(&mut self, upto: &Checkpoint) -> Result<(), StoreError> {
        let seq: i64 = upto.as_str().parse().map_err(|_| {
            StoreError::permanent(
                &self.name,
                format!("checkpoint {upto:?} is not a change sequence number"),
            )
        })?;
        self.conn
            .prepare_cached("DELETE FROM _contact_sync_changes WHERE seq <= ?1")
            .and_then(|mut s| s.execute([seq]))
            .map_err(|e| self.err("acknowledge changes", e))?;
        Ok(())
    }
}

#[async_trait]
impl RecordSink for SqliteStore {
    async fn write_batch(&mut self, writes: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError> {
        let name = self.name.clone();
        let (insert, update) = (self.insert_sql.clone(), self.update_sql.clone());
        let fail = |e: rusqlite::Error| classify(&name, "write batch", e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        tx.execute(
            "UPDATE _contact_sync_control SET suppress = 1 WHERE id = 0",
            [],
        )
        .map_err(fail)?;
        let mut out = Vec::with_capacity(writes.len());
        for c in writes {
            if c.contact_id.trim().is_empty() {
                out.push(WriteOutcome::Rejected {
                    field: "contact_id".into(),
                    reason: "is missing".into(),
                });
                continue;
            }
            let outcome = match Self::write_one((&name, &insert, &update), &tx, c) {
                Ok(o) => o,
                Err(rusqlite::Error::SqliteFailure(f, msg))
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    WriteOutcome::Rejected {
                        field: "record".into(),
                        reason: format!(
                            "refused by a table constraint: {}",
                            msg.unwrap_or_default()
                        ),
                    }
                }
                Err(e) => return Err(fail(e)),
            };
            out.push(outcome);
        }
        tx.execute(
            "UPDATE _contact_sync_control SET suppress = 0 WHERE id = 0",
            [],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        Ok(out)
    }

    async fn read(&mut self, contact_ids: &[String]) -> Result<Vec<Contact>, StoreError> {
        let mut out = Vec::with_capacity(contact_ids.len());
        for chunk in contact_ids.chunks(CHUNK) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT {} FROM contacts WHERE contact_id IN ({marks})",
                schema::select_columns()
            );
            let params: Vec<&dyn rusqlite::ToSql> =
                chunk.iter().map(|s| s as &dyn rusqlite::ToSql).collect();
            out.extend(self.query_contacts(&sql, &params)?);
        }
        Ok(out)
    }

    async fn scan(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        let sql = format!(
            "SELECT {} FROM contacts WHERE contact_id > ?1 AND contact_id <> '' ORDER BY contact_id LIMIT ?2",
            schema::select_columns()
        );
        let after = after.unwrap_or("");
        let limit = limit as i64;
        self.query_contacts(&sql, &[&after, &limit])
    }

    async fn count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM contacts WHERE deleted_at IS NULL OR deleted_at = ''",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err("count", e))?;
        Ok(n as u64)
    }

    async fn find_by_identity(
        &mut self,
        emails: &[String],
        phones: &[String],
    ) -> Result<Vec<Contact>, StoreError> {
        let mut out = Vec::new();
        for (col, keys) in [
            (schema::PRIMARY_EMAIL, emails),
            (schema::PRIMARY_PHONE, phones),
        ] {
            for chunk in keys.chunks(CHUNK) {
                if chunk.is_empty() {
                    continue;
                }
                let marks = vec!["?"; chunk.len()].join(", ");
                let sql = format!(
                    "SELECT {} FROM contacts WHERE {col} IN ({marks})
                     AND (deleted_at IS NULL OR deleted_at = '') AND contact_id <> ''",
                    schema::select_columns()
                );
                let lowered: Vec<String> = chunk
                    .iter()
                    .map(|k| {
                        if col == schema::PRIMARY_EMAIL {
                            k.trim().to_lowercase()
                        } else {
                            k.trim().to_string()
                        }
                    })
                    .collect();
                let params: Vec<&dyn rusqlite::ToSql> =
                    lowered.iter().map(|s| s as &dyn rusqlite::ToSql).collect();
                for c in self.query_contacts(&sql, &params)? {
                    if !out.iter().any(|o: &Contact| o.contact_id == c.contact_id) {
                        out.push(c);
                    }
                }
            }
        }
        Ok(out)
    }
}
