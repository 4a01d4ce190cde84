//! [`PgStore`]: the Postgres store (connection, schema, writes, reads,
//! change capture).

use std::collections::HashMap;

use async_trait::async_trait;
use contact_sync_connector::{
    Checkpoint, Conditional, Expect, HashScan, RecordHash, RecordSink, StoreError, StoreInfo,
    Unreadable, WriteOutcome,
};
use contact_sync_core::hash::tombstone_hash;
use contact_sync_core::model::ALL_FIELDS;
use contact_sync_core::Contact;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, NoTls};

use crate::codec::{self, RowText};
use crate::config::{CdcMode, PgConfig};
use crate::guard::recorded_relid;
use crate::origin::Provenance;

/// Quotes an identifier for SQL.
pub(crate) fn qi(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for DDL (where parameters cannot be used).
pub(crate) fn ql(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Maps a driver error to a [`StoreError`] naming what was being done.
/// Connection loss, serialization failures, lack of resources and shutdowns
/// are transient; everything else (missing objects, permissions, bad data)
/// is permanent. Error details (which may hold row values) are left out.
pub(crate) fn pg_err(store: &str, what: &str, e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let msg = format!("{what}: {} (SQLSTATE {code})", db.message());
            if ["08", "40", "53", "57", "58"]
                .iter()
                .any(|c| code.starts_with(c))
                || code == "55P03"
                || code == "55006"
            {
                StoreError::transient(store, msg)
            } else {
                StoreError::permanent(store, msg)
            }
        }
        None => StoreError::transient(store, format!("{what}: {e}")),
    }
}

pub(crate) fn sqlstate_class(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code()[..2].to_string())
}

/// Opens one connection with the session settings every query relies on
/// (UTC timestamps in ISO format).
///
/// TLS: this is the one place that picks the transport; to add TLS, parse a
/// TLS option from the config and pass a `MakeTlsConnect` instead of `NoTls`.
pub(crate) async fn open(cfg: &PgConfig) -> Result<(Client, JoinHandle<()>), StoreError> {
    let mut pg: tokio_postgres::Config = cfg.url.parse().map_err(|_| {
        StoreError::permanent(
            &cfg.name,
            "the connection string is not valid (expected postgres://user:password@host:port/db or key=value pairs)",
        )
    })?;
    pg.application_name("contact-sync");
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .map_err(|e| pg_err(&cfg.name, "connecting to Postgres", &e))?;
    let name = cfg.name.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(store = %name, error = %e, "Postgres connection closed");
        }
    });
    client
        .batch_execute(
            // A transaction of ours left open by a stalled process (a
            // paused daemon that another took over from) must not hold its
            // row locks for ever: the server ends it after a minute idle.
            "SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 3; \
             SET idle_in_transaction_session_timeout = '60s'",
        )
        .await
        .map_err(|e| pg_err(&cfg.name, "setting up the session", &e))?;
    Ok((client, task))
}

/// Column names and types of the contacts table, read from the catalog.
#[derive(Debug, Clone)]
pub(crate) struct TableInfo {
    /// Column → `format_type` of it.
    pub(crate) types: HashMap<String, String>,
    /// Column → canonical field (or `id`).
    pub(crate) field_of: HashMap<String, &'static str>,
    pub(crate) insert_sql: String,
    pub(crate) insert_new_sql: String,
    pub(crate) select_list: String,
    /// `NULLIF(content_hash, '')`, then `select_list` with every column but
    /// `contact_id` and `deleted_at` left NULL where that hash is set: a
    /// kept hash stands for the row (see [`PgStore::scan_hashes`]).
    pub(crate) hash_select_list: String,
    /// The trigger that clears `content_hash` on other writers' changes is
    /// installed: a row's `content_hash`, when set, is its content's.
    pub(crate) hash_trusted: bool,
    /// The id column is a `uuid` whose default is a random one
    /// (`gen_random_uuid()`, as `migrate` creates it): the rows the engine
    /// inserts get a time-ordered (v7) id from the engine instead, so that
    /// the table's primary key and the state database's index of native
    /// ids grow at their right edge rather than at random pages (a 1M
    /// load wrote 8.6 GB to the state database through that index).
    pub(crate) ordered_ids: bool,
}

/// Replication slot health, for `status`, `check` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotHealth {
    pub mode: CdcMode,
    /// The server's `wal_level` (`logical` is needed in slot mode).
    pub wal_level: String,
    /// The slot exists (slot mode).
    pub exists: bool,
    /// A session is reading the slot right now.
    pub active: bool,
    /// WAL the server keeps for the slot: `pg_current_wal_lsn() - restart_lsn`.
    pub retained_wal_bytes: Option<i64>,
    /// Everything before this position has been acknowledged.
    pub confirmed_flush_lsn: Option<String>,
    /// Rows waiting in the outbox (outbox mode).
    pub outbox_pending: Option<i64>,
    /// How the engine's own writes are told apart in the change stream
    /// (replication origin, or kept content hash and why).
    pub provenance: String,
}

/// The Postgres store: a [`ChangeSource`] (replication slot or outbox), a
/// [`RecordSink`] (batched, version-guarded upserts) and [`StoreInfo`].
///
/// Holds one connection, reopened on the next call after it breaks. Our own
/// writes are left out of the slot's changes by their replication origin,
/// or (without one, see [`crate::Provenance`]) come back carrying their
/// kept content hash.
pub struct PgStore {
    pub(crate) cfg: PgConfig,
    pub(crate) client: Option<Client>,
    pub(crate) conn_task: Option<JoinHandle<()>>,
    pub(crate) table: Option<TableInfo>,
    pub(crate) staging_ready: bool,
    /// The upsert from staging, prepared once per connection.
    pub(crate) insert_stmt: Option<tokio_postgres::Statement>,
    /// The plain insert from staging (see `TableInfo::insert_new_sql`).
    pub(crate) insert_new_stmt: Option<tokio_postgres::Statement>,
    pub(crate) wal_checked: bool,
    /// The store's bookkeeping table is known to exist (see `guard`).
    pub(crate) meta_ready: bool,
    /// The table's oid, as recorded and checked at the last capture start.
    pub(crate) relid: Option<i64>,
    /// Relation oid → column names, from pgoutput Relation messages.
    /// Relation oid → the field of each of its columns, from pgoutput
    /// Relation messages.
    pub(crate) relations: HashMap<u32, std::sync::Arc<[Option<&'static str>]>>,
    /// The highest whole position acknowledged to this store (slot mode).
    pub(crate) acked: Option<crate::pgoutput::Lsn>,
    /// The slot was advanced to this position by this store, at that time.
    pub(crate) advanced_to: crate::pgoutput::Lsn,
    pub(crate) advanced_at: Option<std::time::Instant>,
    /// The last running-transactions record logged for the slot's restart
    /// point (see `capture::PgStore::nudge_restart`), and when.
    pub(crate) restart_nudge: Option<(JoinHandle<()>, std::time::Instant)>,
    /// Changes peeked beyond the last read (slot mode).
    pub(crate) read_ahead: Option<crate::capture::ReadAhead>,
    /// Relation oid → the paused error of the mapped columns it lacks.
    pub(crate) relation_lost: HashMap<u32, StoreError>,
    /// How the engine's writes are told apart (decided at connect).
    pub(crate) provenance: Option<Provenance>,
    /// `server_version_num`, read with the provenance.
    pub(crate) server_version: i32,
    /// Whether the slot is asked for `origin 'none'` (decided once).
    pub(crate) origin_checked: bool,
    pub(crate) origin_none: bool,
    /// A write went untagged (warned once per store).
    pub(crate) origin_warned: bool,
    /// Indexes a bulk load into the empty table dropped, to build at its
    /// end: their `CREATE INDEX IF NOT EXISTS` statements (`migrate`
    /// creates them too, so a crash in between loses nothing).
    pub(crate) bulk_dropped: Vec<String>,
    /// In a bulk load into an empty table: batches of inserts where no row
    /// is are copied straight into the table (see `write_tx`); cleared at
    /// its end or after a copy failed.
    pub(crate) bulk_direct: bool,
    /// This store armed the bulk-load watch (see `bulk`).
    pub(crate) bulk_watching: bool,
    /// How far this bulk load has moved the slot over its own WAL so far
    /// (see `bulk::PgStore::bulk_progress`).
    pub(crate) bulk_advance: crate::bulk::BulkAdvance,
    /// WAL bytes between two of those moves.
    pub(crate) bulk_advance_every: u64,
    /// The WAL of a finished bulk load nobody else wrote in (from, to), as
    /// read at the last capture start; the capture skips it (see `bulk`).
    pub(crate) bulk_window: Option<(crate::pgoutput::Lsn, crate::pgoutput::Lsn)>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(t) = self.conn_task.take() {
            t.abort();
        }
        if let Some((t, _)) = self.restart_nudge.take() {
            t.abort();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

pub(crate) const STAGING: &str = "pg_temp.contact_sync_staging";

impl PgStore {
    /// Checks the config and opens a connection. Does not touch the schema:
    /// call [`migrate`](Self::migrate) to create the table and CDC objects.
    pub async fn connect(cfg: PgConfig) -> Result<PgStore, StoreError> {
        cfg.check()
            .map_err(|m| StoreError::permanent(&cfg.name, format!("bad config: {m}")))?;
        let (client, task) = open(&cfg).await?;
        let mut store = PgStore {
            cfg,
            client: Some(client),
            conn_task: Some(task),
            table: None,
            staging_ready: false,
            insert_stmt: None,
            insert_new_stmt: None,
            meta_ready: false,
            relid: None,
            wal_checked: false,
            relations: HashMap::new(),
            read_ahead: None,
            acked: None,
            advanced_to: crate::pgoutput::Lsn(0),
            advanced_at: None,
            restart_nudge: None,
            relation_lost: HashMap::new(),
            provenance: None,
            server_version: 0,
            origin_checked: false,
            origin_none: false,
            bulk_dropped: Vec::new(),
            bulk_direct: false,
            bulk_watching: false,
            bulk_advance: crate::bulk::BulkAdvance::Unchecked,
            bulk_advance_every: crate::bulk::BULK_ADVANCE_EVERY,
            bulk_window: None,
            origin_warned: false,
        };
        if let Err(e) = store.detect_provenance().await {
            let p = Provenance::ContentHash(format!("the role's rights could not be read: {e}"));
            tracing::info!(store = %store.cfg.name, provenance = %p, "provenance of the engine's writes");
            store.provenance = Some(p);
        }
        Ok(store)
    }

    /// The store's configuration.
    /// WAL bytes a bulk load writes between two moves of the slot over
    /// it (tests: 0 moves it after every page).
    #[doc(hidden)]
    pub fn set_bulk_advance_every(&mut self, bytes: u64) {
        self.bulk_advance_every = bytes;
    }

    pub fn config(&self) -> &PgConfig {
        &self.cfg
    }

    pub(crate) fn name(&self) -> &str {
        &self.cfg.name
    }

    pub(crate) fn qtable(&self) -> String {
        format!("{}.{}", qi(&self.cfg.schema), qi(&self.cfg.table))
    }

    pub(crate) fn qoutbox(&self) -> String {
        format!("{}.{}", qi(&self.cfg.schema), qi(&self.cfg.outbox_table))
    }

    pub(crate) fn table_key(&self) -> String {
        format!("{}.{}", self.cfg.schema, self.cfg.table)
    }

    pub(crate) fn col(&self, field: &str) -> String {
        qi(self.cfg.column(field))
    }

    /// The body of the trigger function that clears `content_hash` on every
    /// write but the store's own (which run with `contact_sync.writing` =
    /// `on` for their transaction, see `write_tx`).
    pub(crate) fn forget_hash_body(&self) -> String {
        format!(
            "\nBEGIN\n  IF current_setting('contact_sync.writing', true) IS DISTINCT FROM 'on' THEN\n    \
             NEW.{} := NULL;\n  END IF;\n  RETURN NEW;\nEND\n",
            self.col("content_hash")
        )
    }

    /// The trigger that raises `version` by one on another writer's change
    /// of a row that left the version as it was (an app saving a contact
    /// knows nothing of versions): the row then carries the version
    /// canonical gives that change, and the engine owes it no write of the
    /// version alone afterwards (one more UPDATE, and its WAL, per edit made
    /// there). Not for the store's own writes (`contact_sync.writing`, as
    /// for `content_hash`), not for a save of nothing new, not for logical
    /// replication's apply (a default-enabled trigger). A change of
    /// metadata only raises it too; the engine then raises canonical's
    /// version to it (no edit is merged).
    ///
    /// The rows are compared as text (any column type, `json` included)
    /// and only the version column is named: renamed or dropped, its
    /// `undefined_column` error is caught and nothing is raised, so no
    /// schema change ever makes another app's UPDATE fail. Measured: ~50 µs
    /// per UPDATE (10,000 single-row UPDATEs: 1.25–1.74 s, 0.9–1.3 s
    /// without it; comparing as `jsonb` less the metadata cost ~90 µs).
    pub(crate) fn bump_version_ddl(&self) -> String {
        let s = qi(&self.cfg.schema);
        let t = self.qtable();
        let tname = &self.cfg.table;
        let v = self.col("version");
        let f = format!("{s}.{}", qi(&format!("{tname}_bump_version")));
        format!(
            "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $f$\n\
             BEGIN\n  IF current_setting('contact_sync.writing', true) IS DISTINCT FROM 'on' THEN\n    \
             BEGIN\n      \
             IF NEW.{v} IS NOT DISTINCT FROM OLD.{v} AND NEW::text IS DISTINCT FROM OLD::text THEN\n        \
             NEW.{v} := COALESCE(OLD.{v}, 0) + 1;\n      END IF;\n    \
             EXCEPTION WHEN undefined_column THEN NULL;\n    END;\n  END IF;\n  RETURN NEW;\nEND\n$f$;\n\
             CREATE TRIGGER {trg} BEFORE UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {f}();\n",
            trg = qi(&format!("{tname}_bump_version")),
        )
    }

    /// The live connection, reopened when it was lost.
    pub(crate) async fn client(&mut self) -> Result<&mut Client, StoreError> {
        let closed = self.client.as_ref().map(Client::is_closed).unwrap_or(true);
        if closed {
            if let Some(t) = self.conn_task.take() {
                t.abort();
            }
            self.client = None;
            let (client, task) = open(&self.cfg).await?;
            self.client = Some(client);
            self.conn_task = Some(task);
            self.staging_ready = false;
            self.wal_checked = false;
            self.meta_ready = false;
            self.read_ahead = None;
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::transient(&self.cfg.name, "no connection"))
    }

    /// The server's `wal_level`.
    pub async fn wal_level(&mut self) -> Result<String, StoreError> {
        let name = self.cfg.name.clone();
        let row = self
            .client()
            .await?
            .query_one("SELECT current_setting('wal_level')", &[])
            .await
            .map_err(|e| pg_err(&name, "reading wal_level", &e))?;
        Ok(row.get(0))
    }

    /// How far the server's clock is ahead of this machine's (negative:
    /// behind), measured as the server's `now()` against the midpoint of
    /// the round trip.
    pub async fn clock_skew(&mut self) -> Result<chrono::Duration, StoreError> {
        let name = self.cfg.name.clone();
        let before = chrono::Utc::now();
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT (extract(epoch from clock_timestamp()) * 1000000)::bigint",
                &[],
            )
            .await
            .map_err(|e| pg_err(&name, "reading the server clock", &e))?;
        let after = chrono::Utc::now();
        let server_us: i64 = row.get(0);
        let mid_us =
            before.timestamp_micros() + (after - before).num_microseconds().unwrap_or(0) / 2;
        Ok(chrono::Duration::microseconds(server_us - mid_us))
    }

    pub(crate) fn wal_level_error(&self, level: &str) -> StoreError {
        StoreError::permanent(
            self.name(),
            format!(
                "wal_level is `{level}`, but change capture through a logical replication slot needs \
                 wal_level = logical: set `wal_level = logical` in postgresql.conf (or ALTER SYSTEM SET \
                 wal_level = logical) and restart Postgres, or configure cdc = outbox"
            ),
        )
    }

    pub(crate) async fn check_wal_level(&mut self) -> Result<(), StoreError> {
        if self.wal_checked {
            return Ok(());
        }
        let level = self.wal_level().await?;
        if level != "logical" {
            return Err(self.wal_level_error(&level));
        }
        self.wal_checked = true;
        Ok(())
    }

    /// Creates (or completes) the contacts table, its indexes, the
    /// `updated_at` trigger, the NOTIFY trigger and the CDC objects of the
    /// configured mode: `REPLICA IDENTITY FULL` + publication + logical slot
    /// (slot mode), or outbox table + row trigger (outbox mode).
    /// Idempotent; columns missing from an existing table are added.
    pub async fn migrate(&mut self) -> Result<(), StoreError> {
        let name = self.cfg.name.clone();
        if self.cfg.cdc == CdcMode::Slot {
            self.check_wal_level().await?;
        }
        let t = self.qtable();
        let s = qi(&self.cfg.schema);
        let tname = self.cfg.table.clone();
        let tname = tname.as_str();
        let (schema_name, table_name) = (self.cfg.schema.clone(), self.cfg.table.clone());
        let id = self.col("id");
        let upd = self.col("updated_at");
        let mut ddl = format!("CREATE SCHEMA IF NOT EXISTS {s};\n");
        let mut cols = vec![format!("{id} uuid PRIMARY KEY DEFAULT gen_random_uuid()")];
        for f in ALL_FIELDS {
            let c = self.col(f);
            cols.push(match *f {
                // Byte order, as every store scans in `contact_id` order.
                "contact_id" => format!("{c} text COLLATE \"C\" NOT NULL UNIQUE"),
                "version" => format!("{c} bigint NOT NULL DEFAULT 1"),
                _ => format!("{c} {}", codec::sql_type(f)),
            });
        }
        cols.push(format!("{upd} timestamptz NOT NULL DEFAULT now()"));
        ddl.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n  {}\n);\n",
            cols.join(",\n  ")
        ));
        // Mapped columns missing from an existing table are added, except
        // on a table this store set up (recorded oid): there a missing
        // column was renamed or dropped by someone, and an empty new one
        // would read as cleared values (the capture pauses instead).
        let mut adds: Vec<(String, String)> = vec![(
            self.cfg.column("id").to_string(),
            format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {id} uuid NOT NULL DEFAULT gen_random_uuid();\n"),
        )];
        for f in ALL_FIELDS {
            let extra = match *f {
                "version" => " NOT NULL DEFAULT 1",
                _ => "",
            };
            adds.push((
                self.cfg.column(f).to_string(),
                format!(
                    "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {} {}{extra};\n",
                    self.col(f),
                    codec::sql_type(f)
                ),
            ));
        }
        let mut ddl_rest = format!(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {upd} timestamptz NOT NULL DEFAULT now();\n"
        );
        let idx = |suffix: &str| qi(&format!("{tname}_{suffix}"));
        // updated_at maintained by trigger.
        let touch_fn = format!("{s}.{}", idx("touch_updated_at"));
        // Every trigger is dropped in `ddl_rest` and created again in `creates`,
        // so that clearing kept hashes (below) runs with none of them.
        let mut creates = String::new();
        ddl_rest.push_str(&format!(
            "CREATE OR REPLACE FUNCTION {touch_fn}() RETURNS trigger LANGUAGE plpgsql AS $f$\n\
             BEGIN NEW.{upd} := now(); RETURN NEW; END\n$f$;\n\
             DROP TRIGGER IF EXISTS {trg} ON {t};\n",
            trg = idx("touch_updated_at"),
        ));
        creates.push_str(&format!(
            "CREATE TRIGGER {trg} BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {touch_fn}();\n",
            trg = idx("touch_updated_at"),
        ));
        // content_hash is kept only while the row is as the engine wrote it:
        // every other write clears it (see `forget_hash_body`). ENABLE
        // ALWAYS: also for writes applied by logical replication.
        let forget_fn = format!("{s}.{}", idx("forget_content_hash"));
        let forget_body = self.forget_hash_body();
        ddl_rest.push_str(&format!(
            "CREATE OR REPLACE FUNCTION {forget_fn}() RETURNS trigger LANGUAGE plpgsql AS $f${forget_body}$f$;\n\
             DROP TRIGGER IF EXISTS {trg} ON {t};\n",
            trg = idx("forget_content_hash"),
        ));
        creates.push_str(&format!(
            "CREATE TRIGGER {trg} BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {forget_fn}();\n\
             ALTER TABLE {t} ENABLE ALWAYS TRIGGER {trg};\n",
            trg = idx("forget_content_hash"),
        ));
        // The version raised on other writers' changes (see
        // `bump_version_ddl`): created once the table's columns are known.
        ddl_rest.push_str(&format!(
            "DROP TRIGGER IF EXISTS {} ON {t};\n",
            idx("bump_version")
        ));
        // NOTIFY trigger: wakes the poller, carries no data.
        let notify_fn = format!("{s}.{}", idx("contact_sync_notify"));
        ddl_rest.push_str(&format!(
            "CREATE OR REPLACE FUNCTION {notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $f$\n\
             BEGIN PERFORM pg_notify({chan}, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME); RETURN NULL; END\n$f$;\n\
             DROP TRIGGER IF EXISTS {trg} ON {t};\n",
            chan = ql(&self.cfg.notify_channel),
            trg = idx("contact_sync_notify"),
        ));
        creates.push_str(&format!(
            "CREATE TRIGGER {trg} AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}();\n",
            trg = idx("contact_sync_notify"),
        ));
        match self.cfg.cdc {
            CdcMode::Slot => {
                ddl_rest.push_str(&format!("ALTER TABLE {t} REPLICA IDENTITY FULL;\n"));
            }
            CdcMode::Outbox => {
                let o = self.qoutbox();
                let ofn = format!("{s}.{}", idx("contact_sync_outbox"));
                let lock_key = outbox_lock_key(&self.cfg.schema, &self.cfg.outbox_table);
                ddl_rest.push_str(&format!(
                    "CREATE TABLE IF NOT EXISTS {o} (\n  seq bigserial PRIMARY KEY,\n  tbl text NOT NULL,\n  op text NOT NULL,\n  \
                     old_row jsonb,\n  new_row jsonb,\n  txid bigint NOT NULL DEFAULT txid_current(),\n  at timestamptz NOT NULL DEFAULT now()\n);\n\
                     CREATE INDEX IF NOT EXISTS {oi} ON {o} (tbl, seq);\n\
                     CREATE OR REPLACE FUNCTION {ofn}() RETURNS trigger LANGUAGE plpgsql AS $f$\n\
                     BEGIN\n  -- Writers serialize here until commit, so seq order is commit order.\n  \
                     PERFORM pg_advisory_xact_lock({lock_key});\n  \
                     INSERT INTO {o} (tbl, op, old_row, new_row) VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP,\n    \
                     CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END, \
                     CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END);\n  \
                     RETURN NULL;\nEND\n$f$;\n\
                     DROP TRIGGER IF EXISTS {trg} ON {t};\n\
                     DROP TRIGGER IF EXISTS {trunc} ON {t};\n",
                    oi = qi(&format!("{}_tbl_seq", self.cfg.outbox_table)),
                    trg = idx("contact_sync_outbox"),
                    trunc = idx("contact_sync_outbox_truncate"),
                ));
                // A TRUNCATE fires no row trigger: a statement trigger puts
                // it in the outbox (the capture pauses on it).
                creates.push_str(&format!(
                    "CREATE TRIGGER {trg} AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION {ofn}();\n\
                     CREATE TRIGGER {trunc} AFTER TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {ofn}();\n",
                    trg = idx("contact_sync_outbox"),
                    trunc = idx("contact_sync_outbox_truncate"),
                ));
            }
        }
        let tkey = self.table_key();
        let cid_col = self.cfg.column("contact_id").to_string();
        let identity_indexes = self.identity_indexes();
        let slot_mode = self.cfg.cdc == CdcMode::Slot;
        let publication = self.cfg.publication.clone();
        let hash_col = self.col("content_hash");
        let meta_ddl = self.meta_ddl();
        let qmeta = self.qmeta();
        let bump_ddl = self.bump_version_ddl();
        let client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_err(&name, "migrate: starting a transaction", &e))?;
        // Kept hashes are trusted only under our trigger: the first time it
        // is installed (or after it changed), the values already there (a
        // table made or written elsewhere) are cleared, with none of our
        // triggers in place (no outbox rows, updated_at untouched).
        let trusted = hash_trigger_installed(&tx, &t, &forget_body)
            .await
            .map_err(|e| pg_err(&name, "migrate: reading the table's triggers", &e))?;
        tx.batch_execute(&format!("{ddl}{meta_ddl}"))
            .await
            .map_err(|e| pg_err(&name, &format!("migrate: creating {tkey}"), &e))?;
        let recorded = recorded_relid(&tx, &qmeta, &tkey)
            .await
            .map_err(|e| pg_err(&name, "migrate: reading the store's bookkeeping", &e))?;
        let current: i64 = tx
            .query_one("SELECT to_regclass($1)::oid::bigint", &[&t])
            .await
            .map_err(|e| pg_err(&name, &format!("migrate: reading {tkey}"), &e))?
            .get(0);
        let present: Vec<String> = tx
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) \
                 AND attnum > 0 AND NOT attisdropped",
                &[&t],
            )
            .await
            .map_err(|e| pg_err(&name, "migrate: reading the table's columns", &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let ours = recorded == Some(current);
        let mut add_sql = String::new();
        for (col, sql) in &adds {
            if present.contains(col) {
                continue;
            }
            if ours {
                tracing::warn!(store = %name, table = %tkey, column = %col,
                    "a mapped column is missing from the table contact-sync set up (renamed or dropped?); \
                     not re-creating it: change capture pauses until someone decides");
            } else {
                add_sql.push_str(sql);
            }
        }
        if recorded.is_some_and(|r| r != current) {
            tracing::warn!(store = %name, table = %tkey,
                "the table was dropped and re-created since contact-sync set it up; change capture pauses \
                 until `contact-sync cdc reset` adopts it");
        }
        tx.batch_execute(&format!("{add_sql}{ddl_rest}"))
            .await
            .map_err(|e| pg_err(&name, &format!("migrate: completing {tkey}"), &e))?;
        if recorded.is_none() {
            tx.execute(
                &format!("INSERT INTO {qmeta} (tbl, relid) VALUES ($1, $2::bigint::oid) ON CONFLICT (tbl) DO NOTHING"),
                &[&tkey, &current],
            )
            .await
            .map_err(|e| pg_err(&name, "migrate: recording the table", &e))?;
        }
        if !trusted {
            tx.batch_execute(&format!(
                "UPDATE {t} SET {hash} = NULL WHERE {hash} IS NOT NULL",
                hash = hash_col
            ))
            .await
            .map_err(|e| pg_err(&name, "migrate: clearing content hashes", &e))?;
        }
        tx.batch_execute(&format!("{creates}{bump_ddl}"))
            .await
            .map_err(|e| pg_err(&name, &format!("migrate: creating triggers on {tkey}"), &e))?;
        // contact_id must carry a unique index (existing tables may lack it).
        let has_unique: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
                 AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass($1) AND i.indisunique \
                 AND i.indnkeyatts = 1 AND a.attname = $2 AND i.indpred IS NULL)",
                &[&t, &cid_col],
            )
            .await
            .map_err(|e| pg_err(&name, "migrate: checking the contact_id index", &e))?
            .get(0);
        // scan() orders by contact_id in byte order: an index for that when
        // the column's collation is not already C (existing tables).
        let collation: Option<String> = tx
            .query_one(
                "SELECT c.collname::text FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation \
                 WHERE a.attrelid = to_regclass($1) AND a.attname = $2",
                &[&t, &cid_col],
            )
            .await
            .map_err(|e| pg_err(&name, "migrate: reading the contact_id collation", &e))?
            .get(0);
        if !matches!(collation.as_deref(), Some("C" | "POSIX")) {
            tx.batch_execute(&format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} ({} COLLATE \"C\")",
                qi(&format!("{tname}_contact_id_c")),
                qi(&cid_col)
            ))
            .await
            .map_err(|e| pg_err(&name, "migrate: creating the contact_id index", &e))?;
        }
        if !has_unique {
            tx.batch_execute(&format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {t} ({})",
                qi(&format!("{tname}_contact_id_uniq")),
                qi(&cid_col)
            ))
            .await
            .map_err(|e| {
                pg_err(
                    &name,
                    "migrate: creating the unique index on contact_id",
                    &e,
                )
            })?;
        }
        // Identity lookups: btree indexes on the primary email / phone (the
        // `is_primary` entry, else the first) when emails/phones are jsonb.
        let types: HashMap<String, String> = tx
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                &[&t],
            )
            .await
            .map_err(|e| pg_err(&name, "migrate: reading the table's columns", &e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (col, _, create) in &identity_indexes {
            if types.get(col).map(String::as_str) != Some("jsonb") {
                continue;
            }
            tx.batch_execute(create)
                .await
                .map_err(|e| pg_err(&name, "migrate: creating identity indexes", &e))?;
        }
        if slot_mode {
            let exists: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
                    &[&publication],
                )
                .await
                .map_err(|e| pg_err(&name, "migrate: reading publications", &e))?
                .get(0);
            if !exists {
                tx.batch_execute(&format!(
                    "CREATE PUBLICATION {} FOR TABLE {t} WITH (publish = 'insert, update, delete, truncate')",
                    qi(&publication)
                ))
                .await
                .map_err(|e| pg_err(&name, "migrate: creating the publication", &e))?;
            } else {
                // A TRUNCATE must reach the capture (which pauses on it).
                tx.batch_execute(&format!(
                    "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')",
                    qi(&publication)
                ))
                .await
                .map_err(|e| pg_err(&name, "migrate: publishing truncates", &e))?;
                let has_table: bool = tx
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 \
                         AND schemaname = $2 AND tablename = $3)",
                        &[&publication, &schema_name, &table_name],
                    )
                    .await
                    .map_err(|e| pg_err(&name, "migrate: reading the publication", &e))?
                    .get(0);
                if !has_table {
                    tx.batch_execute(&format!(
                        "ALTER PUBLICATION {} ADD TABLE {t}",
                        qi(&publication)
                    ))
                    .await
                    .map_err(|e| {
                        pg_err(&name, "migrate: adding the table to the publication", &e)
                    })?;
                }
            }
        }
        tx.commit()
            .await
            .map_err(|e| pg_err(&name, "migrate: committing", &e))?;
        self.table = None;
        self.read_ahead = None;
        self.staging_ready = false;
        if slot_mode {
            self.ensure_slot().await?;
        }
        Ok(())
    }

    /// The identity indexes a table can have (btree on the primary email /
    /// phone expression; made where `emails` / `phones` are jsonb):
    /// (column, qualified quoted name, `CREATE INDEX IF NOT EXISTS`).
    pub(crate) fn identity_indexes(&self) -> Vec<(String, String, String)> {
        let t = self.qtable();
        [("emails", "address"), ("phones", "number")]
            .into_iter()
            .map(|(field, key)| {
                let c = self.cfg.column(field);
                let idx = qi(&format!("{}_primary_{c}", self.cfg.table));
                let create = format!(
                    "CREATE INDEX IF NOT EXISTS {idx} ON {t} (({}))",
                    primary_expr(c, key)
                );
                (
                    c.to_string(),
                    format!("{}.{idx}", qi(&self.cfg.schema)),
                    create,
                )
            })
            .collect()
    }

    /// Creates the logical slot when it does not exist. Must run outside a
    /// transaction that wrote.
    pub(crate) async fn ensure_slot(&mut self) -> Result<(), StoreError> {
        let name = self.cfg.name.clone();
        let slot = self.cfg.slot_name.clone();
        let client = self.client().await?;
        let existing = client
            .query_opt(
                "SELECT plugin::text, database::text, current_database()::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| pg_err(&name, "reading replication slots", &e))?;
        if let Some(row) = existing {
            let plugin: Option<String> = row.get(0);
            let db: Option<String> = row.get(1);
            let here: String = row.get(2);
            if plugin.as_deref() != Some("pgoutput") || db.as_deref() != Some(here.as_str()) {
                return Err(StoreError::permanent(
                    &name,
                    format!(
                        "replication slot `{slot}` exists but is not a pgoutput slot of database `{here}`; \
                         choose another slot_name or drop it"
                    ),
                ));
            }
            return Ok(());
        }
        match client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_db_error().map(|d| d.code().code()) == Some("42710") => Ok(()),
            Err(e) => Err(pg_err(
                &name,
                &format!("creating replication slot `{slot}`"),
                &e,
            )),
        }
    }

    /// Loads the table's columns (once per connection and migrate).
    pub(crate) async fn table_info(&mut self) -> Result<TableInfo, StoreError> {
        if let Some(t) = &self.table {
            return Ok(t.clone());
        }
        let name = self.cfg.name.clone();
        let tkey = self.table_key();
        let qt = self.qtable();
        let rows = self
            .client()
            .await?
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                &[&qt],
            )
            .await
            .map_err(|e| pg_err(&name, &format!("reading the columns of {tkey}"), &e))?;
        let types: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if types.is_empty() {
            return Err(StoreError::permanent(
                &name,
                format!("table {tkey} does not exist: run `contact-sync migrate`"),
            ));
        }
        let fields: Vec<&'static str> = std::iter::once("id")
            .chain(ALL_FIELDS.iter().copied())
            .collect();
        let missing: Vec<String> = fields
            .iter()
            .map(|f| self.cfg.column(f).to_string())
            .filter(|c| !types.contains_key(c))
            .collect();
        if !missing.is_empty() {
            // A table this store set up lost them (renamed, dropped): paused;
            // a table never set up: migrate adds them.
            let qmeta = self.qmeta();
            let recorded = recorded_relid(self.client().await?, &qmeta, &tkey)
                .await
                .map_err(|e| pg_err(&name, "reading the store's bookkeeping", &e))?;
            if recorded.is_some() {
                let lost = self.missing_columns(|c| types.contains_key(c));
                return Err(self.missing_column_error(&lost));
            }
            return Err(StoreError::permanent(
                &name,
                format!(
                    "table {tkey} lacks columns {}: run `contact-sync migrate`",
                    missing.join(", ")
                ),
            ));
        }
        let field_of = fields
            .iter()
            .map(|f| (self.cfg.column(f).to_string(), *f))
            .collect();
        let as_text = |f: &str| {
            let c = self.cfg.column(f);
            if types.get(c).map(String::as_str) == Some("text") {
                format!("t.{}", qi(c))
            } else {
                format!("t.{}::text", qi(c))
            }
        };
        let select_list = fields
            .iter()
            .map(|f| as_text(f))
            .collect::<Vec<_>>()
            .join(", ");
        let kept = format!("NULLIF(t.{}::text, '')", self.col("content_hash"));
        let hash_select_list = std::iter::once(kept.clone())
            .chain(fields.iter().map(|f| match *f {
                "contact_id" | "deleted_at" => as_text(f),
                _ => format!("CASE WHEN {kept} IS NULL THEN {} END", as_text(f)),
            }))
            .collect::<Vec<_>>()
            .join(", ");
        let id_col = self.cfg.column("id").to_string();
        let ordered_ids = types.get(&id_col).map(String::as_str) == Some("uuid")
            && id_default(self.client().await?, &qt, &id_col)
                .await
                .map_err(|e| pg_err(&name, &format!("reading the id default of {tkey}"), &e))?
                .is_some_and(|d| d == "gen_random_uuid()");
        let mut target_cols: Vec<String> = ALL_FIELDS.iter().map(|f| self.col(f)).collect();
        let mut casts: Vec<String> = ALL_FIELDS
            .iter()
            .map(|f| format!("s.{}::{}", qi(f), types[self.cfg.column(f)]))
            .collect();
        if ordered_ids {
            // Only an inserted row takes it: the upsert's SET leaves ids alone.
            target_cols.push(self.col("id"));
            casts.push("COALESCE(s.new_id::uuid, gen_random_uuid())".to_string());
        }
        let sets: Vec<String> = ALL_FIELDS
            .iter()
            .filter(|f| **f != "contact_id")
            .map(|f| format!("{c} = EXCLUDED.{c}", c = self.col(f)))
            .collect();
        // Upsert (version-guarded) of the staged rows not marked
        // `ins_only`; plain insert of those marked (conditional writes that
        // expected no row: a row inserted meanwhile by anyone is left
        // alone, see `write_tx`).
        let insert_sql = format!(
            "INSERT INTO {t} AS t ({cols}) SELECT {casts} FROM {STAGING} s WHERE NOT s.ins_only \
             ON CONFLICT ({cid}) DO UPDATE SET {sets} \
             WHERE COALESCE(t.{ver}::bigint, 0) <= EXCLUDED.{ver}::bigint \
             RETURNING t.{cid}::text, t.{id}::text",
            t = self.qtable(),
            cols = target_cols.join(", "),
            casts = casts.join(", "),
            sets = sets.join(", "),
            cid = self.col("contact_id"),
            ver = self.col("version"),
            id = self.col("id"),
        );
        let insert_new_sql = format!(
            "INSERT INTO {t} AS t ({cols}) SELECT {casts} FROM {STAGING} s WHERE s.ins_only \
             ON CONFLICT ({cid}) DO NOTHING \
             RETURNING t.{cid}::text, t.{id}::text",
            t = self.qtable(),
            cols = target_cols.join(", "),
            casts = casts.join(", "),
            cid = self.col("contact_id"),
            id = self.col("id"),
        );
        let body = self.forget_hash_body();
        let hash_trusted = hash_trigger_installed(self.client().await?, &qt, &body)
            .await
            .map_err(|e| pg_err(&name, &format!("reading the triggers of {tkey}"), &e))?;
        let info = TableInfo {
            types,
            field_of,
            insert_sql,
            insert_new_sql,
            select_list,
            hash_select_list,
            hash_trusted,
            ordered_ids,
        };
        self.table = Some(info.clone());
        Ok(info)
    }

    /// Rows of the table matching `where_sql` (parameters `params`), decoded.
    /// Rows that cannot be decoded are logged and left out (the change
    /// stream reports them as undecodable).
    pub(crate) async fn select(
        &mut self,
        where_sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Contact>, StoreError> {
        let info = self.table_info().await?;
        let name = self.cfg.name.clone();
        let sql = format!(
            "SELECT {} FROM {} t {where_sql}",
            info.select_list,
            self.qtable()
        );
        let rows = self
            .client()
            .await?
            .query(&sql, params)
            .await
            .map_err(|e| pg_err(&name, "reading contacts", &e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let row = row_text(&r, 0);
            match codec::decode(&row) {
                Ok(c) => out.push(c),
                Err(e) => {
                    tracing::warn!(store = %name, error = %e.invalid, "skipping a row that is not a valid contact")
                }
            }
        }
        Ok(out)
    }

    /// Replication slot (or outbox) health for `status` and `check`.
    pub async fn slot_health(&mut self) -> Result<SlotHealth, StoreError> {
        let name = self.cfg.name.clone();
        let wal_level = self.wal_level().await?;
        let provenance = self.detect_provenance().await?.to_string();
        let mut h = SlotHealth {
            provenance,
            mode: self.cfg.cdc,
            wal_level,
            exists: false,
            active: false,
            retained_wal_bytes: None,
            confirmed_flush_lsn: None,
            outbox_pending: None,
        };
        match self.cfg.cdc {
            CdcMode::Slot => {
                let slot = self.cfg.slot_name.clone();
                let row = self
                    .client()
                    .await?
                    .query_opt(
                        "SELECT active, (pg_current_wal_lsn() - restart_lsn)::bigint, confirmed_flush_lsn::text \
                         FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await
                    .map_err(|e| pg_err(&name, "reading replication slot health", &e))?;
                if let Some(r) = row {
                    h.exists = true;
                    h.active = r.get(0);
                    h.retained_wal_bytes = r.get(1);
                    h.confirmed_flush_lsn = r.get(2);
                }
            }
            CdcMode::Outbox => {
                let sql = format!("SELECT count(*) FROM {} WHERE tbl = $1", self.qoutbox());
                let tkey = self.table_key();
                let r = self
                    .client()
                    .await?
                    .query_one(&sql, &[&tkey])
                    .await
                    .map_err(|e| pg_err(&name, "reading the outbox", &e))?;
                h.exists = true;
                h.outbox_pending = Some(r.get(0));
            }
        }
        Ok(h)
    }

    /// Drops and recreates the replication slot (slot mode) or empties this
    /// table's outbox (outbox mode). Changes not yet acknowledged are lost:
    /// the caller schedules a full reconcile of this store. Returns the
    /// checkpoint to read from afterwards.
    pub async fn cdc_reset(&mut self) -> Result<Checkpoint, StoreError> {
        let name = self.cfg.name.clone();
        // Forget the table's recorded identity: the next migrate (or
        // capture) adopts the table as it now is (see `guard`).
        let (qmeta, tkey) = (self.qmeta(), self.table_key());
        let client = self.client().await?;
        if recorded_relid(client, &qmeta, &tkey)
            .await
            .map_err(|e| pg_err(&name, "reading the store's bookkeeping", &e))?
            .is_some()
        {
            client
                .execute(&format!("DELETE FROM {qmeta} WHERE tbl = $1"), &[&tkey])
                .await
                .map_err(|e| pg_err(&name, "resetting the store's bookkeeping", &e))?;
        }
        self.relid = None;
        self.table = None;
        self.read_ahead = None;
        self.acked = None;
        self.advanced_to = crate::pgoutput::Lsn(0);
        self.advanced_at = None;
        self.staging_ready = false;
        match self.cfg.cdc {
            CdcMode::Slot => {
                self.check_wal_level().await?;
                let slot = self.cfg.slot_name.clone();
                let client = self.client().await?;
                client
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await
                    .map_err(|e| pg_err(&name, &format!("dropping replication slot `{slot}`"), &e))?;
                self.ensure_slot().await?;
                let slot = self.cfg.slot_name.clone();
                let row = self
                    .client()
                    .await?
                    .query_one(
                        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await
                    .map_err(|e| pg_err(&name, "reading the new slot", &e))?;
                let lsn: Option<String> = row.get(0);
                Ok(Checkpoint::new(lsn.unwrap_or_else(|| "0/0".into())))
            }
            CdcMode::Outbox => {
                let sql = format!(
                    "WITH d AS (DELETE FROM {} WHERE tbl = $1 RETURNING seq) SELECT COALESCE(max(seq), 0) FROM d",
                    self.qoutbox()
                );
                let tkey = self.table_key();
                let row = self
                    .client()
                    .await?
                    .query_one(&sql, &[&tkey])
                    .await
                    .map_err(|e| pg_err(&name, "emptying the outbox", &e))?;
                let seq: i64 = row.get(0);
                Ok(Checkpoint::new(seq.to_string()))
            }
        }
    }

    /// A listener on the NOTIFY channel, on its own connection: the daemon
    /// awaits [`ChangeNotifier::wait`] to read changes as soon as they are
    /// committed instead of at the next poll.
    pub async fn change_notifier(&self) -> Result<crate::notify::ChangeNotifier, StoreError> {
        crate::notify::ChangeNotifier::start(self.cfg.clone()).await
    }
}

/// The row id and the fields of a row read with `select_list` whose
/// columns start at `first`.
pub(crate) fn row_text(r: &tokio_postgres::Row, first: usize) -> RowText {
    let mut row = RowText {
        row_id: r.get(first),
        ..Default::default()
    };
    for (i, f) in ALL_FIELDS.iter().enumerate() {
        row.fields.insert(f, r.get(first + i + 1));
    }
    row
}

/// The default expression of column `col` of table `table` (quoted name),
/// as PostgreSQL prints it.
async fn id_default(
    client: &impl GenericClient,
    table: &str,
    col: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a \
             ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
             WHERE d.adrelid = to_regclass($1) AND a.attname = $2",
            &[&table, &col],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Whether table `qtable` (quoted) has an enabled-always row trigger
/// BEFORE INSERT OR UPDATE (no column list, no WHEN) running a function
/// whose body is `body`: only then does every other writer's change clear
/// the kept `content_hash`. False when the table does not exist.
async fn hash_trigger_installed(
    client: &impl GenericClient,
    qtable: &str,
    body: &str,
) -> Result<bool, tokio_postgres::Error> {
    // tgtype bits: ROW 1, BEFORE 2, INSERT 4, UPDATE 16.
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid \
             WHERE tg.tgrelid = to_regclass($1) AND NOT tg.tgisinternal AND tg.tgenabled = 'A' \
             AND (tg.tgtype::int & 23) = 23 AND tg.tgqual IS NULL \
             AND cardinality(tg.tgattr::int2[]) = 0 AND p.prosrc = $2)",
            &[&qtable, &body],
        )
        .await?
        .get(0))
}

/// The primary entry's `key` of a jsonb array column (the `is_primary`
/// one, else the first; emails lower-cased), as an immutable expression
/// that a btree index can hold. `key` is `address` or `number`.
fn primary_expr(col: &str, key: &str) -> String {
    let c = qi(col);
    let e = format!(
        "COALESCE(jsonb_path_query_first({c}, '$[*] ? (@.is_primary == true).{key}'), {c}->0->'{key}') #>> '{{}}'"
    );
    if key == "address" {
        format!("lower({e})")
    } else {
        e
    }
}

/// A stable advisory-lock key for an outbox (FNV-1a of its name).
pub(crate) fn outbox_lock_key(schema: &str, table: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("contact_sync_outbox:{schema}.{table}").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

#[async_trait]
impl RecordSink for PgStore {
    /// Into an empty table, the identity indexes (random keys: a page
    /// split per few rows, and with `full_page_writes` a page image in the
    /// WAL) are dropped and built once at the end, from sorted input;
    /// `migrate` (every daemon start) builds them after a crash. Reads stay
    /// correct meanwhile; identity lookups scan. Batches of inserts where
    /// no row is are copied straight into the table (see `write_tx`). In
    /// slot mode the load's WAL is skipped by the capture when nobody else
    /// wrote to the table meanwhile (see `bulk`).
    async fn begin_bulk_load(&mut self) -> Result<(), StoreError> {
        self.start_bulk_load().await
    }

    async fn end_bulk_load(&mut self) -> Result<(), StoreError> {
        self.finish_bulk_load().await
    }

    /// [`write_batch_if`](RecordSink::write_batch_if) with no condition.
    async fn write_batch(&mut self, writes: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError> {
        let expect = vec![Expect::Any; writes.len()];
        self.write_all(writes, &expect).await
    }

    /// Atomic: in the write's transaction the target rows are locked
    /// (`SELECT … FOR UPDATE`) and compared with `expect` before the
    /// upsert (see the crate docs, "Conditional writes").
    async fn write_batch_if(
        &mut self,
        writes: Vec<Contact>,
        expect: &[Expect],
    ) -> Result<(Vec<WriteOutcome>, Vec<Contact>), StoreError> {
        if writes.len() != expect.len() {
            return Err(StoreError::permanent(
                self.name(),
                format!(
                    "write_batch_if: {} writes but {} conditions",
                    writes.len(),
                    expect.len()
                ),
            ));
        }
        let outcomes = self.write_all(&writes, expect).await?;
        Ok((outcomes, writes))
    }

    async fn read(&mut self, contact_ids: &[String]) -> Result<Vec<Contact>, StoreError> {
        if contact_ids.is_empty() {
            return Ok(Vec::new());
        }
        let cid = self.col("contact_id");
        let ids = contact_ids.to_vec();
        self.select(&format!("WHERE t.{cid}::text = ANY($1)"), &[&ids])
            .await
    }

    async fn scan(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        let cid = self.col("contact_id");
        let lim = limit as i64;
        match after {
            Some(a) => {
                let a = a.to_string();
                self.select(
                    &format!(
                        "WHERE t.{cid} COLLATE \"C\" > $1 ORDER BY t.{cid} COLLATE \"C\" LIMIT $2"
                    ),
                    &[&a, &lim],
                )
                .await
            }
            None => {
                self.select(&format!("ORDER BY t.{cid} COLLATE \"C\" LIMIT $1"), &[&lim])
                    .await
            }
        }
    }

    /// A row whose `content_hash` is set holds the hash the engine wrote
    /// (the trigger clears it on any other writer's change): only its id is
    /// read (tombstones: the tombstone hash). The rest are read in full,
    /// decoded and hashed; undecodable rows are left out, as in `scan`.
    /// Without the trigger (no `migrate` since), every row is hashed.
    async fn scan_hashes(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecordHash>, StoreError> {
        let scan = self.scan_hashes_checked(after, limit).await?;
        for u in &scan.unreadable {
            tracing::warn!(store = %self.cfg.name, error = %u.invalid, "skipping a row that is not a valid contact");
        }
        Ok(scan.hashes)
    }

    /// As `scan_hashes`, with the undecodable rows named (when the trigger
    /// keeps hashes, i.e. after `migrate`; otherwise left out, as in
    /// `scan`).
    async fn scan_hashes_checked(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<HashScan, StoreError> {
        let info = self.table_info().await?;
        if !info.hash_trusted {
            let hashes: Vec<RecordHash> = self
                .scan(after, limit)
                .await?
                .into_iter()
                .map(RecordHash::of)
                .collect();
            return Ok(HashScan::readable(hashes));
        }
        let name = self.cfg.name.clone();
        let cid = self.col("contact_id");
        let lim = limit as i64;
        let base = format!("SELECT {} FROM {} t", info.hash_select_list, self.qtable());
        let client = self.client().await?;
        let rows = match after {
            Some(a) => {
                client
                    .query(
                        &format!(
                            "{base} WHERE t.{cid} COLLATE \"C\" > $1 ORDER BY t.{cid} COLLATE \"C\" LIMIT $2"
                        ),
                        &[&a, &lim],
                    )
                    .await
            }
            None => {
                client
                    .query(
                        &format!("{base} ORDER BY t.{cid} COLLATE \"C\" LIMIT $1"),
                        &[&lim],
                    )
                    .await
            }
        }
        .map_err(|e| pg_err(&name, "scanning contact hashes", &e))?;
        let mut out = HashScan {
            hashes: Vec::with_capacity(rows.len()),
            ..HashScan::default()
        };
        for r in rows {
            let kept: Option<String> = r.get(0);
            let row = row_text(&r, 1);
            let id = row.get("contact_id").unwrap_or("").trim().to_string();
            if !id.is_empty() {
                out.last = Some(id.clone());
            }
            if let Some(hash) = kept {
                let deleted = row.get("deleted_at").is_some_and(|d| !d.trim().is_empty());
                out.hashes.push(RecordHash {
                    contact_id: id,
                    hash: if deleted {
                        tombstone_hash().to_string()
                    } else {
                        hash
                    },
                });
                continue;
            }
            match codec::decode(&row) {
                Ok(c) => out.hashes.push(RecordHash::of(c)),
                Err(e) if !id.is_empty() => out.unreadable.push(Unreadable {
                    native_id: id.clone(),
                    contact_id: id,
                    invalid: e.invalid,
                }),
                Err(e) => {
                    tracing::warn!(store = %name, error = %e.invalid, "skipping a row that is not a valid contact")
                }
            }
        }
        Ok(out)
    }

    async fn count(&mut self) -> Result<u64, StoreError> {
        let name = self.cfg.name.clone();
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {} IS NULL",
            self.qtable(),
            self.col("deleted_at")
        );
        let row = self
            .client()
            .await?
            .query_one(&sql, &[])
            .await
            .map_err(|e| pg_err(&name, "counting contacts", &e))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    async fn find_by_identity(
        &mut self,
        emails: &[String],
        phones: &[String],
    ) -> Result<Vec<Contact>, StoreError> {
        if emails.is_empty() && phones.is_empty() {
            return Ok(Vec::new());
        }
        let info = self.table_info().await?;
        let emails: Vec<String> = emails.iter().map(|e| e.trim().to_lowercase()).collect();
        let phones: Vec<String> = phones.iter().map(|p| p.trim().to_string()).collect();
        // jsonb columns: the indexed primary-value expression; text columns
        // (a user's table): a substring prefilter, checked exactly below.
        let cond = |field: &str, key: &str, param: usize| {
            let col = self.cfg.column(field);
            if info.types.get(col).map(String::as_str) == Some("jsonb") {
                format!("{} = ANY(${param}::text[])", primary_expr(col, key))
            } else {
                format!(
                    "EXISTS (SELECT 1 FROM unnest(${param}::text[]) k WHERE strpos(lower(t.{}::text), lower(k)) > 0)",
                    qi(col)
                )
            }
        };
        let where_sql = format!(
            "WHERE t.{} IS NULL AND ({} OR {})",
            self.col("deleted_at"),
            cond("emails", "address", 1),
            cond("phones", "number", 2)
        );
        let (e_probe, p_probe) = (emails.clone(), phones.clone());
        let found = self.select(&where_sql, &[&e_probe, &p_probe]).await?;
        Ok(found
            .into_iter()
            .filter(|c| {
                c.primary_email()
                    .is_some_and(|e| emails.iter().any(|x| x == e))
                    || c.primary_phone()
                        .is_some_and(|p| phones.iter().any(|x| x == p))
            })
            .collect())
    }
}

impl StoreInfo for PgStore {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn keeps_version(&self) -> bool {
        true
    }

    /// The rows a conditional write targets are locked and compared in the
    /// write's own transaction.
    fn conditional_writes(&self) -> Conditional {
        Conditional::Atomic
    }

    /// The slot (and the outbox) deliver every committed change with its
    /// row image, in commit order.
    fn logs_every_change(&self) -> bool {
        true
    }

    /// Once the table's columns are loaded (before any record is read):
    /// whether its trigger clears `content_hash` on every write but the
    /// store's own (installed by `migrate`, which clears older values).
    fn keeps_content_hash(&self) -> bool {
        self.table.as_ref().is_some_and(|t| t.hash_trusted)
    }
}
