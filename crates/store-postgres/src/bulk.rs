//! Bulk loads (an initial sync): identity indexes suspended, inserts copied
//! straight into an empty table, and the load's WAL skipped by the capture
//! without decoding it.
//!
//! **The skipped window.** A logical slot decodes every transaction in its
//! WAL to find the ones worth delivering; after a 1M-contact load that is
//! ~2 GB, which PostgreSQL 15 (no origin filter in pgoutput) decodes and
//! sends at ~25 MB/s, and 16+ (`origin 'none'`) still reads through. But a
//! stretch of WAL in which nobody but the engine wrote to the table holds
//! nothing to deliver, and `pg_replication_slot_advance` moves a slot over
//! it in fast-forward mode (no row is decoded). So during a bulk load a
//! statement trigger (`<table>_contact_sync_bulk_watch`, ENABLE ALWAYS,
//! SECURITY DEFINER) records every write statement on the table that is
//! not the engine's (`contact_sync.writing` unset; a TRUNCATE too) in
//! `contact_sync_foreign_writes`; the window is the WAL from the trigger's
//! creation (`bulk_from` in `contact_sync_meta`) to the load's end
//! (`bulk_to`, recorded only when no foreign write was recorded). The
//! capture, once everything before `bulk_from` is delivered and
//! acknowledged, advances the slot to `bulk_to` instead of peeking through
//! the window. Any foreign write in the window (even one that changed no
//! row) leaves `bulk_to` unset: the window is then read like any other WAL,
//! and the user's edit arrives as always.
//!
//! **The slot follows the load.** Skipping the whole window at the first
//! capture still reads it (fast-forward: ~900 MB at 1M contacts, 1.1–1.4 s
//! before a user's edit made right after the load is delivered). So every
//! [`BULK_ADVANCE_EVERY`] of WAL during the load, when the foreign-writes
//! table is still empty (the same position-then-lock check as at the end),
//! the slot is advanced to the position read, after a running-transactions
//! record that lets its restart point follow; the first capture then skips
//! only the last stretch. Before the first move the slot's changes up to
//! `bulk_from` are peeked: someone else's change there (not delivered yet,
//! the store's capture waits for its initial sync) keeps the slot where it
//! is for the whole load, as does any foreign write during it.
//!
//! Why nothing is lost: CREATE TRIGGER waits for every transaction holding
//! a write lock on the table, so a foreign transaction that committed after
//! `bulk_from` ran its write statements with the trigger in place; at the
//! end, `bulk_to` is read before `LOCK … IN SHARE MODE` on the foreign
//! writes table, which waits for every transaction that recorded a write
//! and is still running, so a foreign transaction whose commit lies before
//! `bulk_to` is visible to the check. A transaction committed after
//! `bulk_to` is read from the slot as usual.

use contact_sync_connector::StoreError;

use crate::config::CdcMode;
use crate::pgoutput::Lsn;
use crate::store::{pg_err, qi, ql, PgStore};

/// Table of the foreign writes seen during a bulk load, in the store's
/// schema.
pub(crate) const FOREIGN_WRITES: &str = "contact_sync_foreign_writes";

/// WAL a bulk load writes between two moves of the slot over it.
pub(crate) const BULK_ADVANCE_EVERY: u64 = 128 << 20;

/// Most messages peeked before a load's start to see whether the slot
/// holds someone else's changes there (more: it is taken to).
const MAX_PRE_LOAD: i32 = 4096;

/// How far a watched bulk load has moved the slot over its own WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BulkAdvance {
    /// Not looked at yet in this load.
    Unchecked,
    /// Moved to this position (nobody else wrote before it).
    At(Lsn),
    /// Not moved during this load: the slot held someone's changes before
    /// the load, someone wrote during it, or a step failed. The first
    /// capture after the load reads or skips the rest as before.
    Off,
}

/// Whether someone else wrote to the table since the watch was armed, as
/// of a WAL position read before this call: `LOCK … IN SHARE MODE` waits
/// for every transaction that recorded a write and is still running, so a
/// foreign transaction committed before that position is seen. In `tx`,
/// which holds the lock until it ends.
async fn foreign_writes_seen(
    tx: &tokio_postgres::Transaction<'_>,
    foreign: &str,
    tkey: &str,
    lock_timeout: Option<&str>,
) -> Result<bool, tokio_postgres::Error> {
    if let Some(t) = lock_timeout {
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{t}'"))
            .await?;
    }
    tx.batch_execute(&format!("LOCK TABLE {foreign} IN SHARE MODE"))
        .await?;
    Ok(tx
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {foreign} WHERE tbl = $1)"),
            &[&tkey],
        )
        .await?
        .get(0))
}

impl PgStore {
    fn qforeign(&self) -> String {
        format!("{}.{}", qi(&self.cfg.schema), qi(FOREIGN_WRITES))
    }

    /// (trigger name, qualified function name) of the bulk-load watch.
    fn watch_names(&self) -> (String, String) {
        let name = format!("{}_contact_sync_bulk_watch", self.cfg.table);
        (qi(&name), format!("{}.{}", qi(&self.cfg.schema), qi(&name)))
    }

    /// Starts a bulk load: drops the identity indexes of an empty table
    /// (built again at the end) and, in slot mode, arms the watch.
    pub(crate) async fn start_bulk_load(&mut self) -> Result<(), StoreError> {
        if self.cfg.cdc == CdcMode::Slot {
            if let Err(e) = self.arm_watch().await {
                // The capture then reads the load's WAL: slower, not lossy.
                tracing::warn!(store = %self.cfg.name, error = %e,
                    "could not watch the table during the initial sync; the first capture after it reads the sync's WAL");
                self.bulk_watching = false;
            }
        }
        let name = self.cfg.name.clone();
        let info = self.table_info().await?;
        let t = self.qtable();
        let indexes = self.identity_indexes();
        let empty: bool = self
            .client()
            .await?
            .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {t})"), &[])
            .await
            .map_err(|e| pg_err(&name, "starting a bulk load", &e))?
            .get(0);
        if !empty {
            return Ok(());
        }
        self.bulk_direct = true;
        for (col, idx, create) in indexes {
            if info.types.get(&col).map(String::as_str) != Some("jsonb") {
                continue;
            }
            let client = self.client().await?;
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&idx])
                .await
                .map_err(|e| pg_err(&name, "starting a bulk load", &e))?
                .get(0);
            if exists {
                client
                    .batch_execute(&format!("DROP INDEX IF EXISTS {idx}"))
                    .await
                    .map_err(|e| pg_err(&name, "starting a bulk load: dropping an index", &e))?;
                self.bulk_dropped.push(create);
            }
        }
        Ok(())
    }

    /// Ends a bulk load: builds the dropped indexes, then closes the watch.
    pub(crate) async fn finish_bulk_load(&mut self) -> Result<(), StoreError> {
        let name = self.cfg.name.clone();
        self.bulk_direct = false;
        while let Some(create) = self.bulk_dropped.first().cloned() {
            self.client()
                .await?
                .batch_execute(&create)
                .await
                .map_err(|e| pg_err(&name, "ending a bulk load: building an index", &e))?;
            self.bulk_dropped.remove(0);
        }
        if self.bulk_watching {
            self.bulk_watching = false;
            if let Err(e) = self.close_watch().await {
                tracing::warn!(store = %name, error = %e,
                    "could not close the watch of the initial sync; the first capture after it reads the sync's WAL");
            }
        }
        Ok(())
    }

    /// Installs the watch trigger and records where the window starts. A
    /// watch left armed by a load that did not finish (a crash) is kept:
    /// the window started then, and the writes seen since are kept too.
    async fn arm_watch(&mut self) -> Result<(), StoreError> {
        let name = self.cfg.name.clone();
        let (t, meta, foreign, tkey) = (
            self.qtable(),
            self.qmeta(),
            self.qforeign(),
            self.table_key(),
        );
        let (trg, func) = self.watch_names();
        let trg_name = format!("{}_contact_sync_bulk_watch", self.cfg.table);
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "ALTER TABLE {meta} ADD COLUMN IF NOT EXISTS bulk_from pg_lsn, \
                   ADD COLUMN IF NOT EXISTS bulk_to pg_lsn;\n\
                 CREATE TABLE IF NOT EXISTS {foreign} (tbl text NOT NULL, \
                   txid bigint NOT NULL DEFAULT txid_current(), at timestamptz NOT NULL DEFAULT now());"
            ))
            .await
            .map_err(|e| pg_err(&name, "creating the bulk-load bookkeeping", &e))?;
        let resumed: bool = client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {meta} WHERE tbl = $1 AND bulk_from IS NOT NULL \
                       AND bulk_to IS NULL) \
                     AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($2) \
                       AND tgname = $3 AND tgenabled = 'A')"
                ),
                &[&tkey, &t, &trg_name],
            )
            .await
            .map_err(|e| pg_err(&name, "reading the bulk-load bookkeeping", &e))?
            .get(0);
        if resumed {
            self.bulk_watching = true;
            self.bulk_advance = BulkAdvance::Unchecked;
            return Ok(());
        }
        // The function runs as its owner (the store's role, owner of the
        // table it writes): a user's role needs no rights to it.
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_err(&name, "installing the bulk-load watch", &e))?;
        tx.batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql \
               SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n\
             BEGIN\n  IF current_setting('contact_sync.writing', true) IS DISTINCT FROM 'on' THEN\n    \
               INSERT INTO {foreign} (tbl) SELECT {lit} WHERE NOT EXISTS \
               (SELECT 1 FROM {foreign} WHERE tbl = {lit});\n  END IF;\n  RETURN NULL;\nEND\n$f$;\n\
             DROP TRIGGER IF EXISTS {trg} ON {t};\n\
             CREATE TRIGGER {trg} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t} \
               FOR EACH STATEMENT EXECUTE FUNCTION {func}();\n\
             ALTER TABLE {t} ENABLE ALWAYS TRIGGER {trg};",
            lit = ql(&tkey),
        ))
        .await
        .map_err(|e| pg_err(&name, "installing the bulk-load watch", &e))?;
        for sql in [
            format!("DELETE FROM {foreign} WHERE tbl = $1"),
            format!("UPDATE {meta} SET bulk_from = NULL, bulk_to = NULL WHERE tbl = $1"),
        ] {
            tx.execute(&sql, &[&tkey])
                .await
                .map_err(|e| pg_err(&name, "installing the bulk-load watch", &e))?;
        }
        tx.commit()
            .await
            .map_err(|e| pg_err(&name, "installing the bulk-load watch", &e))?;
        // Read after the trigger committed: every foreign transaction that
        // commits after this position wrote with the trigger in place.
        client
            .execute(
                &format!(
                    "UPDATE {meta} SET bulk_from = pg_current_wal_insert_lsn(), bulk_to = NULL WHERE tbl = $1"
                ),
                &[&tkey],
            )
            .await
            .map_err(|e| pg_err(&name, "recording the start of the bulk load", &e))?;
        self.bulk_watching = true;
        self.bulk_advance = BulkAdvance::Unchecked;
        Ok(())
    }

    /// Records the window's end when nobody else wrote to the table during
    /// it, then removes the trigger.
    async fn close_watch(&mut self) -> Result<(), StoreError> {
        let name = self.cfg.name.clone();
        let (t, meta, foreign, tkey) = (
            self.qtable(),
            self.qmeta(),
            self.qforeign(),
            self.table_key(),
        );
        let (trg, _) = self.watch_names();
        self.log_running_xacts("bulk_end").await;
        let end = self.insert_lsn().await?.to_string();
        let client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_err(&name, "closing the bulk-load watch", &e))?;
        let foreign_writes = foreign_writes_seen(&tx, &foreign, &tkey, None)
            .await
            .map_err(|e| pg_err(&name, "closing the bulk-load watch", &e))?;
        let recorded = if foreign_writes {
            tx.execute(
                &format!("UPDATE {meta} SET bulk_from = NULL, bulk_to = NULL WHERE tbl = $1"),
                &[&tkey],
            )
            .await
        } else {
            tx.execute(
                &format!(
                    "UPDATE {meta} SET bulk_to = $2::text::pg_lsn WHERE tbl = $1 \
                     AND bulk_from IS NOT NULL AND bulk_to IS NULL"
                ),
                &[&tkey, &end],
            )
            .await
        };
        recorded.map_err(|e| pg_err(&name, "recording the end of the bulk load", &e))?;
        tx.commit()
            .await
            .map_err(|e| pg_err(&name, "closing the bulk-load watch", &e))?;
        if foreign_writes {
            tracing::info!(store = %name, table = %tkey,
                "someone else wrote to the table during the initial sync: the capture reads the sync's WAL to find those writes");
        }
        client
            .batch_execute(&format!("DROP TRIGGER IF EXISTS {trg} ON {t}"))
            .await
            .map_err(|e| pg_err(&name, "removing the bulk-load watch", &e))?;
        client
            .execute(&format!("DELETE FROM {foreign} WHERE tbl = $1"), &[&tkey])
            .await
            .map_err(|e| pg_err(&name, "removing the bulk-load watch", &e))?;
        Ok(())
    }

    /// Logs an `xl_running_xacts` record now (see [`log_running_xacts`]),
    /// on the store's connection.
    async fn log_running_xacts(&mut self, what: &str) {
        let (name, slot) = (self.cfg.name.clone(), self.cfg.slot_name.clone());
        if let Ok(client) = self.client().await {
            log_running_xacts(client, &name, &slot, what).await;
        }
    }

    /// During a watched bulk load, every [`BULK_ADVANCE_EVERY`] of WAL:
    /// moves the slot over the load's WAL written so far, when nobody but
    /// the engine wrote to the table in it, so that the first capture after
    /// the load has only the last stretch to skip (at 1M contacts the skip
    /// of the whole load read ~900 MB of WAL: 1.1–1.4 s before a user's
    /// edit made right after the load was delivered).
    ///
    /// Safe for the same reasons as the window (module docs): the position
    /// is read before `LOCK … IN SHARE MODE` on the foreign writes, so a
    /// foreign transaction that committed before it is seen. Before the
    /// first move, the slot's changes up to the load's start are peeked:
    /// any change of someone else's there (not yet delivered: the capture
    /// of this store waits for its initial sync) leaves the slot where it
    /// is for the whole load. Best effort: a failed step is logged and
    /// turns the moves off for this load.
    pub(crate) async fn bulk_progress(&mut self) {
        if !self.bulk_watching
            || self.cfg.cdc != CdcMode::Slot
            || self.bulk_advance == BulkAdvance::Off
        {
            return;
        }
        if let Err(e) = self.bulk_step().await {
            tracing::info!(store = %self.cfg.name, error = %e,
                "could not move the slot over the initial sync's WAL during it; the first capture after it skips all of it");
            self.bulk_advance = BulkAdvance::Off;
        }
    }

    async fn bulk_step(&mut self) -> Result<(), StoreError> {
        let name = self.cfg.name.clone();
        let (meta, foreign, tkey) = (self.qmeta(), self.qforeign(), self.table_key());
        let now = self.insert_lsn().await?;
        if let BulkAdvance::At(at) = self.bulk_advance {
            if now.0.saturating_sub(at.0) < self.bulk_advance_every {
                return Ok(());
            }
        }
        let from: Option<String> = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT bulk_from::text FROM {meta} WHERE tbl = $1 AND bulk_to IS NULL"),
                &[&tkey],
            )
            .await
            .map_err(|e| pg_err(&name, "reading the bulk-load bookkeeping", &e))?
            .and_then(|r| r.get(0));
        let Some(from) = from.as_deref().and_then(Lsn::parse) else {
            self.bulk_advance = BulkAdvance::Off;
            return Ok(());
        };
        if self.bulk_advance == BulkAdvance::Unchecked {
            // What the slot holds before the load: delivered by nobody yet.
            let rows = self.peek(MAX_PRE_LOAD, Some(from)).await?;
            let foreign_before = rows.len() as i32 >= MAX_PRE_LOAD
                || self
                    .parse_txns(&rows)?
                    .iter()
                    .any(|t| !t.own && !t.changes.is_empty());
            if foreign_before {
                tracing::info!(store = %name,
                    "the slot holds changes made before the initial sync: it is not moved during it");
                self.bulk_advance = BulkAdvance::Off;
                return Ok(());
            }
        }
        // Logged first, so that the restart point can follow the move.
        self.log_running_xacts("bulk_step").await;
        let x = self.insert_lsn().await?;
        let client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_err(&name, "checking the foreign writes", &e))?;
        // A writer holding the table long stops the moves for this load
        // (the load's end waits for it).
        let foreign_writes = foreign_writes_seen(&tx, &foreign, &tkey, Some("2s"))
            .await
            .map_err(|e| pg_err(&name, "checking the foreign writes", &e))?;
        tx.commit()
            .await
            .map_err(|e| pg_err(&name, "checking the foreign writes", &e))?;
        if foreign_writes {
            self.bulk_advance = BulkAdvance::Off;
            return Ok(());
        }
        let started = std::time::Instant::now();
        if x > self.confirmed_lsn().await? {
            self.advance_slot(x).await?;
        }
        tracing::debug!(store = %name, to = %x, secs = started.elapsed().as_secs_f64(),
            "moved the slot over the initial sync's WAL so far");
        self.bulk_advance = BulkAdvance::At(x);
        Ok(())
    }

    /// `pg_current_wal_insert_lsn()`.
    async fn insert_lsn(&mut self) -> Result<Lsn, StoreError> {
        self.wal_lsn("pg_current_wal_insert_lsn").await
    }

    /// Forgets a window the slot has passed.
    pub(crate) async fn forget_bulk_window(&mut self, to: Lsn) -> Result<(), StoreError> {
        self.bulk_window = None;
        let name = self.cfg.name.clone();
        let (meta, tkey) = (self.qmeta(), self.table_key());
        let to = to.to_string();
        self.client()
            .await?
            .execute(
                &format!(
                    "UPDATE {meta} SET bulk_from = NULL, bulk_to = NULL WHERE tbl = $1 \
                     AND bulk_to = $2::text::pg_lsn"
                ),
                &[&tkey, &to],
            )
            .await
            .map_err(|e| pg_err(&name, "forgetting the bulk load's window", &e))?;
        Ok(())
    }
}

/// Logs an `xl_running_xacts` record now, so that the slot's restart point
/// (from which every peek and advance decodes) can move up to here:
/// PostgreSQL logs one only every 15 s of activity, and creating a logical
/// slot logs one (no PostgreSQL 15 function does otherwise without
/// superuser). Best effort, bounded wait (a transaction running since
/// before it is waited for at most 2 s).
pub(crate) async fn log_running_xacts(
    client: &tokio_postgres::Client,
    name: &str,
    slot: &str,
    what: &str,
) {
    let mark = format!("{}_{what}", &slot[..slot.len().min(63 - what.len() - 1)]);
    let logged = async {
        client.batch_execute("SET lock_timeout = '2s'").await?;
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput', true)",
                &[&mark],
            )
            .await?;
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&mark])
            .await?;
        client.batch_execute("RESET lock_timeout").await
    }
    .await;
    if let Err(e) = logged {
        tracing::debug!(store = %name, error = %e, "could not log a running-transactions record");
        // A temporary slot goes with the session; this one is still open.
        let _ = client.batch_execute("RESET lock_timeout").await;
        let _ = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND temporary",
                &[&mark],
            )
            .await;
    }
}
