//! Writes: COPY into a staging table, then one guarded upsert.

use std::collections::HashMap;

use contact_sync_connector::{StoreError, WriteOutcome};
use contact_sync_core::model::ALL_FIELDS;
use contact_sync_core::Contact;
use futures_util::SinkExt;

use crate::codec;
use crate::store::{pg_err, qi, PgStore, STAGING};

impl PgStore {
    // ---- writes ----

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
            "CREATE TEMP TABLE IF NOT EXISTS contact_sync_staging (ord int4 NOT NULL, {}) ON COMMIT DELETE ROWS",
            cols.join(", ")
        );
        self.client()
            .await?
            .batch_execute(&sql)
            .await
            .map_err(|e| pg_err(&name, "creating the staging table", &e))?;
        let info = self.table_info().await?;
        let stmt = self
            .client()
            .await?
            .prepare(&info.insert_sql)
            .await
            .map_err(|e| pg_err(&name, "preparing the upsert", &e))?;
        self.insert_stmt = Some(stmt);
        self.staging_ready = true;
        Ok(())
    }

    /// One transaction: COPY the batch's winners into staging, upsert them
    /// with the version guard, then find the stored version of any the
    /// guard refused.
    ///
    /// Several writes of one contact in a batch: the winner is the highest
    /// version (the last of equals), as applying them in order would leave.
    /// Writes after the winner are stale against it; writes before it are
    /// reported applied when it applied (they were overwritten by a newer
    /// version of the same contact) and stale when it was refused.
    pub(crate) async fn write_tx(
        &mut self,
        writes: &[(usize, &Contact)],
    ) -> Result<Vec<(usize, WriteOutcome)>, tokio_postgres::Error> {
        let qtable = self.qtable();
        let cid = self.col("contact_id");
        let ver = self.col("version");
        let Some(insert_stmt) = self.insert_stmt.clone() else {
            unreachable!("write_tx runs after ensure_staging")
        };
        let Some(client) = self.client.as_mut() else {
            unreachable!("write_tx runs after client()")
        };
        // Winner per contact: highest version, last among equals.
        let mut winner: HashMap<&str, (usize, i64)> = HashMap::with_capacity(writes.len());
        for (pos, (_, c)) in writes.iter().enumerate() {
            let e = winner
                .entry(c.contact_id.as_str())
                .or_insert((pos, c.version));
            if c.version >= e.1 {
                *e = (pos, c.version);
            }
        }
        let tx = client.transaction().await?;
        // Our writes keep the content_hash they carry (the trigger clears
        // it on everyone else's).
        tx.batch_execute("SET LOCAL contact_sync.writing = 'on'")
            .await?;
        let copy_sql = format!(
            "COPY {STAGING} (ord, {}) FROM STDIN",
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
        for (pos, (ord, c)) in writes.iter().enumerate() {
            if winner.get(c.contact_id.as_str()).map(|w| w.0) != Some(pos) {
                continue;
            }
            copy_row(&mut buf, *ord, &codec::encode(c));
            if buf.len() >= 1 << 20 {
                sink.as_mut().send(buf.split().freeze()).await?;
            }
        }
        if !buf.is_empty() {
            sink.as_mut().send(buf.split().freeze()).await?;
        }
        sink.as_mut().finish().await?;
        let returned = tx.query(&insert_stmt, &[]).await?;
        let mut row_ids: HashMap<String, String> = HashMap::with_capacity(returned.len());
        for r in &returned {
            let c: String = r.get(0);
            let i: Option<String> = r.get(1);
            row_ids.insert(c.clone(), i.unwrap_or(c));
        }
        let refused: Vec<String> = winner
            .keys()
            .filter(|c| !row_ids.contains_key(**c))
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
            .map(|(pos, (ord, c))| {
                let (wpos, wver) = winner[c.contact_id.as_str()];
                let o = match row_ids.get(&c.contact_id) {
                    Some(native_id) if pos <= wpos => WriteOutcome::Applied {
                        native_id: native_id.clone(),
                    },
                    Some(_) => WriteOutcome::Stale {
                        stored_version: wver,
                    },
                    None => WriteOutcome::Stale {
                        stored_version: stored.get(&c.contact_id).copied().unwrap_or(wver),
                    },
                };
                (*ord, o)
            })
            .collect())
    }
}

/// Appends one row in COPY text format (tab-separated, `\\N` for NULL,
/// backslash escapes).
pub(crate) fn copy_row(buf: &mut bytes::BytesMut, ord: usize, values: &[Option<String>]) {
    buf.extend_from_slice(ord.to_string().as_bytes());
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
    buf.extend_from_slice(b"\n");
}
