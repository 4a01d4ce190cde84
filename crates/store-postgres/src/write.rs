//! Writes: COPY into a staging table, then one guarded upsert, in one
//! transaction that first locks and checks the rows of conditional writes.

use std::collections::{HashMap, HashSet};

use contact_sync_connector::{Expect, StoreError, WriteOutcome};
use contact_sync_core::hash::tombstone_hash;
use contact_sync_core::model::ALL_FIELDS;
use contact_sync_core::Contact;
use futures_util::SinkExt;

use crate::codec::{self, RowText};
use crate::store::{pg_err, qi, row_text, sqlstate_class, PgStore, STAGING};

/// One write of a batch: its position in the caller's batch, the contact,
/// its condition.
pub(crate) type Write<'a> = (usize, &'a Contact, &'a Expect);

/// What the write's transaction found of a contact's row before writing:
/// the kept `content_hash` (set only while the row is as the engine wrote
/// it, and only when the table's trigger vouches for it) and the row.
struct Held {
    kept: Option<String>,
    row: RowText,
}

impl Held {
    fn deleted(&self) -> bool {
        self.row
            .get("deleted_at")
            .is_some_and(|d| !d.trim().is_empty())
    }
}

/// Whether a row in the state `held` (`None`: no row) satisfies `expect`.
/// A row whose kept hash equals the expected one is admitted without being
/// decoded; otherwise it is decoded, normalized and hashed. A row that
/// cannot be decoded is not what anyone expected.
fn admits(expect: &Expect, held: Option<&Held>) -> bool {
    let tomb = tombstone_hash();
    match (expect, held) {
        (Expect::Any, _) => true,
        (Expect::Absent, None) => true,
        (Expect::Absent, Some(h)) => h.deleted(),
        (Expect::Hash(e), None) => e == tomb,
        (Expect::Hash(e), Some(h)) if h.deleted() => e == tomb,
        (Expect::Hash(e), Some(h)) => match &h.kept {
            Some(k) if k == e => true,
            _ => codec::decode(&h.row)
                .map(|c| contact_sync_core::content_hash(&c) == *e)
                .unwrap_or(false),
        },
    }
}

/// `s` has the text form of a uuid (so that it can be cast to one).
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

impl PgStore {
    pub(crate) async fn ensure_staging(&mut self) -> Result<(), StoreError> {
        if self.staging_ready {
            return Ok(());
        }
        let name = self.cfg.name.clone();
        let cols: Vec<String> = ALL_FIELDS
            .iter()
            .map(|f| format!("{} text", qi(f)))
            .collect();
        let sql = format!(
            "CREATE TEMP TABLE IF NOT EXISTS contact_sync_staging (ord int4 NOT NULL, ins_only bool NOT NULL, new_id text, {}) \
             ON COMMIT DELETE ROWS",
            cols.join(", ")
        );
        self.client()
            .await?
            .batch_execute(&sql)
            .await
            .map_err(|e| pg_err(&name, "creating the staging table", &e))?;
        let info = self.table_info().await?;
        let client = self.client().await?;
        let stmt = client
            .prepare(&info.insert_sql)
            .await
            .map_err(|e| pg_err(&name, "preparing the upsert", &e))?;
        let new_stmt = client
            .prepare(&info.insert_new_sql)
            .await
            .map_err(|e| pg_err(&name, "preparing the insert", &e))?;
        self.insert_stmt = Some(stmt);
        self.insert_new_stmt = Some(new_stmt);
        self.staging_ready = true;
        Ok(())
    }

    /// Every write of a batch, in one transaction when the table takes them
    /// all; else record by record, so that a value the table refuses
    /// (SQLSTATE classes 22, 23) rejects only its own record.
    pub(crate) async fn write_all(
        &mut self,
        writes: &[Contact],
        expect: &[Expect],
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; writes.len()];
        let mut todo: Vec<Write<'_>> = Vec::with_capacity(writes.len());
        for (i, (c, e)) in writes.iter().zip(expect).enumerate() {
            if c.contact_id.trim().is_empty() {
                outcomes[i] = Some(WriteOutcome::Rejected {
                    field: "contact_id".into(),
                    reason: "is missing".into(),
                });
            } else {
                todo.push((i, c, e));
            }
        }
        if !todo.is_empty() {
            self.client().await?;
            self.table_info().await?;
            self.ensure_staging().await?;
            match self.write_tx(&todo).await {
                Ok(done) => {
                    for (i, o) in done {
                        outcomes[i] = Some(o);
                    }
                }
                Err(e) if matches!(sqlstate_class(&e).as_deref(), Some("22" | "23" | "P0")) => {
                    // A value the table refuses, or a trigger raising (a
                    // user's own validation): find it record by record. A
                    // trigger refusing every record of the batch refuses
                    // the store's writes, not a record: that is the
                    // store's error (naming the first record), which parks
                    // it, rather than a dead letter per record.
                    let mut raised: Vec<(usize, tokio_postgres::Error)> = Vec::new();
                    for w in &todo {
                        match self.write_tx(std::slice::from_ref(w)).await {
                            Ok(done) => {
                                for (j, o) in done {
                                    outcomes[j] = Some(o);
                                }
                            }
                            Err(e) if sqlstate_class(&e).as_deref() == Some("P0") => {
                                raised.push((w.0, e));
                            }
                            Err(e)
                                if matches!(sqlstate_class(&e).as_deref(), Some("22" | "23")) =>
                            {
                                outcomes[w.0] = Some(self.rejection(&e));
                            }
                            Err(e) => return Err(self.write_error(&e).await),
                        }
                    }
                    if raised.len() == todo.len() {
                        let (i, e) = &raised[0];
                        let mut err = self
                            .write_error(e)
                            .await
                            .with_record(writes[*i].contact_id.clone());
                        if let WriteOutcome::Rejected { field, .. } = self.rejection(e) {
                            if field != "record" {
                                err = err.with_field(field);
                            }
                        }
                        return Err(err);
                    }
                    for (i, e) in raised {
                        outcomes[i] = Some(self.rejection(&e));
                    }
                }
                Err(e) => return Err(self.write_error(&e).await),
            }
        }
        // An initial sync: the slot follows the load over its own WAL.
        self.bulk_progress().await;
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(WriteOutcome::Rejected {
                    field: "record".into(),
                    reason: "no outcome".into(),
                })
            })
            .collect())
    }

    /// The refusal of one record by the table: the field named by the
    /// column Postgres reports (`record` when none), and its message.
    fn rejection(&self, e: &tokio_postgres::Error) -> WriteOutcome {
        let db = e.as_db_error();
        let field = db
            .and_then(|d| d.column())
            .and_then(|col| {
                std::iter::once("id")
                    .chain(ALL_FIELDS.iter().copied())
                    .find(|f| self.cfg.column(f) == col)
            })
            .unwrap_or("record")
            .to_string();
        let reason = db
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string());
        WriteOutcome::Rejected { field, reason }
    }

    /// The error of a failed write; a table that lost a column or went
    /// away under the store (SQLSTATE 42703, 42P01) pauses it.
    async fn write_error(&mut self, e: &tokio_postgres::Error) -> StoreError {
        let err = pg_err(&self.cfg.name, "writing contacts", e);
        self.schema_error(err).await
    }

    /// One transaction:
    ///
    /// 1. **Blank-id rows** (inserted by someone without a `contact_id`):
    ///    a write carrying `external_ids[store]` = the row's id (the native
    ///    id the change capture reported) gives that row the write's
    ///    `contact_id` in place, when no row holds that id yet.
    /// 2. **Conditions**: the rows of the conditional writes are locked
    ///    (`SELECT … FOR UPDATE`, waiting for a writer holding them) and
    ///    compared with their [`Expect`]; a refused write is
    ///    [`WriteOutcome::Changed`] and is not written. A write admitted
    ///    with no row there is a plain insert (`ON CONFLICT DO NOTHING`):
    ///    a row someone inserted meanwhile is kept and the write is
    ///    `Changed`.
    /// 3. COPY the admitted winners into staging, upsert them with the
    ///    version guard, then find the stored version of any the guard
    ///    refused.
    ///
    /// Several writes of one contact in a batch: each condition is checked
    /// against the row as it was before the batch; of the admitted ones the
    /// winner is the highest version (the last of equals), as applying them
    /// in order would leave. Writes after the winner are stale against it;
    /// writes before it are reported applied when it applied (they were
    /// overwritten by a newer version of the same contact) and stale when
    /// it was refused.
    ///
    /// In slot mode with a replication origin (see `origin`), the session
    /// carries the store's origin for the length of the transaction, so
    /// the capture can skip it whole; when the origin is busy (another
    /// session of this store writing right now) the transaction goes
    /// untagged and its images are recognised by their kept hash.
    pub(crate) async fn write_tx(
        &mut self,
        writes: &[Write<'_>],
    ) -> Result<Vec<(usize, WriteOutcome)>, tokio_postgres::Error> {
        let origin = self.write_origin().map(str::to_owned);
        let mut tagged = false;
        if let (Some(o), Some(client)) = (&origin, self.client.as_ref()) {
            match client
                .execute("SELECT pg_replication_origin_session_setup($1)", &[o])
                .await
            {
                Ok(_) => tagged = true,
                Err(e) => {
                    // Busy (another session of this store writing), or no
                    // free replication state (max_replication_slots): the
                    // kept hash still tells the write apart.
                    if self.origin_warned {
                        tracing::debug!(store = %self.cfg.name, origin = %o, error = %e,
                            "write not tagged with the replication origin");
                    } else {
                        self.origin_warned = true;
                        tracing::warn!(store = %self.cfg.name, origin = %o, error = %e,
                            "write not tagged with the replication origin; the capture reads it back and skips it by its kept hash");
                    }
                }
            }
        }
        let out = self.write_tx_tagged(writes).await;
        if tagged {
            if let Some(client) = self.client.as_ref() {
                if let Err(e) = client
                    .execute("SELECT pg_replication_origin_session_reset()", &[])
                    .await
                {
                    tracing::debug!(store = %self.cfg.name, error = %e,
                        "resetting the session's replication origin");
                }
            }
        }
        out
    }

    async fn write_tx_tagged(
        &mut self,
        writes: &[Write<'_>],
    ) -> Result<Vec<(usize, WriteOutcome)>, tokio_postgres::Error> {
        let qtable = self.qtable();
        let cid = self.col("contact_id");
        let ver = self.col("version");
        let idc = self.col("id");
        let Some(info) = self.table.clone() else {
            unreachable!("write_tx runs after table_info")
        };
        let (Some(insert_stmt), Some(insert_new_stmt)) =
            (self.insert_stmt.clone(), self.insert_new_stmt.clone())
        else {
            unreachable!("write_tx runs after ensure_staging")
        };
        let store = self.cfg.name.clone();
        let id_is_uuid = info.types.get(self.cfg.column("id")).map(String::as_str) == Some("uuid");
        let bulk_direct = self.bulk_direct && info.ordered_ids;
        let direct_sql = format!(
            "COPY {qtable} ({idc}, {}) FROM STDIN",
            ALL_FIELDS
                .iter()
                .map(|f| self.col(f))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let Some(client) = self.client.as_mut() else {
            unreachable!("write_tx runs after client()")
        };
        let tx = client.transaction().await?;
        // Our writes keep the content_hash they carry (the trigger clears
        // it on everyone else's). A writer holding a row longer than this
        // makes the batch fail as transient, to be retried.
        tx.batch_execute("SET LOCAL contact_sync.writing = 'on'; SET LOCAL lock_timeout = '30s'")
            .await?;

        // 1. Blank-id rows named by their native id get the contact's id.
        let (claim_cids, claim_nids): (Vec<String>, Vec<String>) = writes
            .iter()
            .filter_map(|(_, c, _)| {
                let nid = c.external_ids.get(&store)?;
                (!id_is_uuid || is_uuid(nid)).then(|| (c.contact_id.clone(), nid.clone()))
            })
            .unzip();
        if !claim_cids.is_empty() {
            let id_match = if id_is_uuid {
                format!("t.{idc} = w.nid::uuid")
            } else {
                format!("t.{idc}::text = w.nid")
            };
            tx.execute(
                &format!(
                    "UPDATE {qtable} AS t SET {cid} = w.cid FROM unnest($1::text[], $2::text[]) AS w(cid, nid) \
                     WHERE {id_match} AND (t.{cid} IS NULL OR btrim(t.{cid}::text) = '') \
                     AND NOT EXISTS (SELECT 1 FROM {qtable} t2 WHERE t2.{cid}::text = w.cid)"
                ),
                &[&claim_cids, &claim_nids],
            )
            .await?;
        }

        // 2. Lock and check the rows of conditional writes.
        let mut cond_ids: Vec<String> = writes
            .iter()
            .filter(|(_, _, e)| **e != Expect::Any)
            .map(|(_, c, _)| c.contact_id.clone())
            .collect();
        cond_ids.sort();
        cond_ids.dedup();
        let mut held: HashMap<String, Held> = HashMap::with_capacity(cond_ids.len());
        if !cond_ids.is_empty() {
            let list = if info.hash_trusted {
                info.hash_select_list.clone()
            } else {
                format!("NULL::text, {}", info.select_list)
            };
            let rows = tx
                .query(
                    &format!(
                        "SELECT {list} FROM {qtable} t WHERE t.{cid}::text = ANY($1) \
                         ORDER BY t.{cid} COLLATE \"C\" FOR UPDATE OF t"
                    ),
                    &[&cond_ids],
                )
                .await?;
            for r in rows {
                let row = row_text(&r, 1);
                let id = row.get("contact_id").unwrap_or("").trim().to_string();
                held.insert(
                    id,
                    Held {
                        kept: r.get(0),
                        row,
                    },
                );
            }
        }
        let admitted: Vec<bool> = writes
            .iter()
            .map(|(_, c, e)| admits(e, held.get(c.contact_id.as_str())))
            .collect();
        // Conditional writes admitted with no row there: insert only.
        let ins_only: HashSet<&str> = writes
            .iter()
            .filter(|(_, c, e)| **e != Expect::Any && !held.contains_key(c.contact_id.as_str()))
            .map(|(_, c, _)| c.contact_id.as_str())
            .collect();

        // 3. Winner per contact among the admitted: highest version, last
        // among equals.
        let mut winner: HashMap<&str, (usize, i64)> = HashMap::with_capacity(writes.len());
        for (pos, (_, c, _)) in writes.iter().enumerate() {
            if !admitted[pos] {
                continue;
            }
            let e = winner
                .entry(c.contact_id.as_str())
                .or_insert((pos, c.version));
            if c.version >= e.1 {
                *e = (pos, c.version);
            }
        }
        let mut row_ids: HashMap<String, String> = HashMap::with_capacity(winner.len());
        // A bulk load into what was an empty table, every write an insert
        // where no row is: COPY straight into the table (no staging, no
        // ON CONFLICT), the ids being ours. A row someone inserted since the
        // lock fails the COPY (unique violation): the batch is then written
        // again through staging, record by record (`write_all`), and that
        // row is `Changed`.
        let direct = bulk_direct
            && claim_cids.is_empty()
            && !winner.is_empty()
            && winner.keys().all(|c| ins_only.contains(c));
        if direct {
            let sink = tx.copy_in::<_, bytes::Bytes>(&direct_sql).await;
            let sent = async {
                let sink = sink?;
                futures_util::pin_mut!(sink);
                let mut buf = bytes::BytesMut::with_capacity(1 << 20);
                for (pos, (_, c, _)) in writes.iter().enumerate() {
                    if winner.get(c.contact_id.as_str()).map(|w| w.0) != Some(pos) {
                        continue;
                    }
                    let id = uuid::Uuid::now_v7().to_string();
                    buf.extend_from_slice(id.as_bytes());
                    push_fields(&mut buf, &codec::encode(c));
                    buf.extend_from_slice(b"\n");
                    row_ids.insert(c.contact_id.clone(), id);
                    if buf.len() >= 1 << 20 {
                        sink.as_mut().send(buf.split().freeze()).await?;
                    }
                }
                if !buf.is_empty() {
                    sink.as_mut().send(buf.split().freeze()).await?;
                }
                sink.as_mut().finish().await
            }
            .await;
            if let Err(e) = sent {
                self.bulk_direct = false;
                return Err(e);
            }
        } else if !winner.is_empty() {
            let copy_sql = format!(
                "COPY {STAGING} (ord, ins_only, new_id, {}) FROM STDIN",
                ALL_FIELDS
                    .iter()
                    .map(|f| qi(f))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            // Text COPY, built into large chunks: far fewer messages and
            // syscalls than one small write per value.
            let sink = tx.copy_in::<_, bytes::Bytes>(&copy_sql).await?;
            futures_util::pin_mut!(sink);
            let mut buf = bytes::BytesMut::with_capacity(1 << 20);
            let (mut any_upsert, mut any_insert) = (false, false);
            for (pos, (ord, c, _)) in writes.iter().enumerate() {
                if winner.get(c.contact_id.as_str()).map(|w| w.0) != Some(pos) {
                    continue;
                }
                let only = ins_only.contains(c.contact_id.as_str());
                any_insert |= only;
                any_upsert |= !only;
                // Generated in the batch's order: v7 ids only grow.
                let new_id = info.ordered_ids.then(|| uuid::Uuid::now_v7().to_string());
                copy_row(&mut buf, *ord, only, new_id.as_deref(), &codec::encode(c));
                if buf.len() >= 1 << 20 {
                    sink.as_mut().send(buf.split().freeze()).await?;
                }
            }
            if !buf.is_empty() {
                sink.as_mut().send(buf.split().freeze()).await?;
            }
            sink.as_mut().finish().await?;
            let mut returned = Vec::new();
            if any_upsert {
                returned.extend(tx.query(&insert_stmt, &[]).await?);
            }
            if any_insert {
                returned.extend(tx.query(&insert_new_stmt, &[]).await?);
            }
            for r in &returned {
                let c: String = r.get(0);
                let i: Option<String> = r.get(1);
                row_ids.insert(c.clone(), i.unwrap_or(c));
            }
        }
        let refused: Vec<String> = winner
            .keys()
            .filter(|c| !row_ids.contains_key(**c) && !ins_only.contains(**c))
            .map(|c| c.to_string())
            .collect();
        let mut stored: HashMap<String, i64> = HashMap::new();
        if !refused.is_empty() {
            let rows = tx
                .query(
                    &format!(
                        "SELECT t.{cid}::text, t.{ver}::bigint FROM {qtable} t WHERE t.{cid}::text = ANY($1)"
                    ),
                    &[&refused],
                )
                .await?;
            for r in rows {
                stored.insert(r.get(0), r.get::<_, Option<i64>>(1).unwrap_or(0));
            }
        }
        tx.commit().await?;
        Ok(writes
            .iter()
            .enumerate()
            .map(|(pos, (ord, c, _))| {
                let id = c.contact_id.as_str();
                let o = if !admitted[pos] {
                    WriteOutcome::Changed
                } else {
                    let (wpos, wver) = winner[id];
                    match row_ids.get(id) {
                        Some(native_id) if pos <= wpos => WriteOutcome::Applied {
                            native_id: native_id.clone(),
                        },
                        Some(_) => WriteOutcome::Stale {
                            stored_version: wver,
                        },
                        // A row inserted meanwhile by someone else.
                        None if ins_only.contains(id) => WriteOutcome::Changed,
                        None => WriteOutcome::Stale {
                            stored_version: stored.get(id).copied().unwrap_or(wver),
                        },
                    }
                };
                (*ord, o)
            })
            .collect())
    }
}

/// Appends one row in COPY text format (tab-separated, `\\N` for NULL,
/// backslash escapes): position, insert-only flag, the id for a new row
/// (a uuid, no escaping needed), the values.
pub(crate) fn copy_row(
    buf: &mut bytes::BytesMut,
    ord: usize,
    ins_only: bool,
    new_id: Option<&str>,
    values: &[Option<String>],
) {
    buf.extend_from_slice(ord.to_string().as_bytes());
    buf.extend_from_slice(if ins_only { b"\tt\t" } else { b"\tf\t" });
    buf.extend_from_slice(new_id.map_or(b"\\N".as_slice(), str::as_bytes));
    push_fields(buf, values);
    buf.extend_from_slice(b"\n");
}

/// Appends `values` in COPY text format, each after a tab (`\\N` for NULL,
/// backslash escapes).
fn push_fields(buf: &mut bytes::BytesMut, values: &[Option<String>]) {
    for v in values {
        buf.extend_from_slice(b"\t");
        match v {
            None => buf.extend_from_slice(b"\\N"),
            Some(s) => {
                let bytes = s.as_bytes();
                let mut start = 0;
                for (i, b) in bytes.iter().enumerate() {
                    let esc: &[u8] = match b {
                        b'\\' => b"\\\\",
                        b'\t' => b"\\t",
                        b'\n' => b"\\n",
                        b'\r' => b"\\r",
                        _ => continue,
                    };
                    buf.extend_from_slice(&bytes[start..i]);
                    buf.extend_from_slice(esc);
                    start = i + 1;
                }
                buf.extend_from_slice(&bytes[start..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_form() {
        assert!(is_uuid("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(!is_uuid("0f8fad5b-d9cb-469f-a165-70867728950"));
        assert!(!is_uuid("c-1"));
    }
}
