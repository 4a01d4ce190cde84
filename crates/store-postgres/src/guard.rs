//! The schema guard: a table that changed under the store (a mapped column
//! renamed or dropped, the table left out of the publication, truncated,
//! or dropped and re-created) pauses the store with an error that names the
//! table, the column and what to do, instead of being read as cleared
//! values or silently not captured.
//!
//! The store's bookkeeping: table `contact_sync_meta` in the store's schema,
//! one row per contacts table it set up (`tbl` = `schema.table`, `relid` =
//! the table's oid when it was set up, by `migrate` or the first capture).
//! `cdc_reset` forgets the row, so the next `migrate` (or capture) adopts
//! the table as it then is.

use contact_sync_connector::StoreError;
use contact_sync_core::model::ALL_FIELDS;
use tokio_postgres::GenericClient;

use crate::config::CdcMode;
use crate::store::{pg_err, qi, PgStore};

/// Name of the bookkeeping table, in the store's schema.
pub(crate) const META_TABLE: &str = "contact_sync_meta";

impl PgStore {
    pub(crate) fn qmeta(&self) -> String {
        format!("{}.{}", qi(&self.cfg.schema), qi(META_TABLE))
    }

    /// DDL of the bookkeeping table.
    pub(crate) fn meta_ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (tbl text PRIMARY KEY, relid oid NOT NULL, \
             recorded_at timestamptz NOT NULL DEFAULT now());\n",
            self.qmeta()
        )
    }

    /// Every (field, column) the store maps: the row id and the 33 fields.
    pub(crate) fn mapped_columns(&self) -> Vec<(&'static str, String)> {
        std::iter::once("id")
            .chain(ALL_FIELDS.iter().copied())
            .map(|f| (f, self.cfg.column(f).to_string()))
            .collect()
    }

    /// The mapped columns (field, column) not among `present`.
    pub(crate) fn missing_columns<'a>(
        &self,
        present: impl Fn(&str) -> bool + 'a,
    ) -> Vec<(&'static str, String)> {
        self.mapped_columns()
            .into_iter()
            .filter(|(_, c)| !present(c))
            .collect()
    }

    /// The paused error of mapped columns missing from the table.
    pub(crate) fn missing_column_error(&self, missing: &[(&'static str, String)]) -> StoreError {
        let tkey = self.table_key();
        let store = &self.cfg.name;
        let names: Vec<String> = missing
            .iter()
            .map(|(f, c)| {
                if f == c {
                    format!("column {c}")
                } else {
                    format!("column {c} (field {f})")
                }
            })
            .collect();
        let (field, _) = &missing[0];
        StoreError::paused(
            store,
            format!(
                "{} {} missing from table {tkey} (renamed or dropped?): contact-sync will not read \
                 its absence as cleared values, so capture and writes of {store} are paused. Rename it \
                 back, or map the field to the new column (`columns.{field}` in the configuration of \
                 store {store}), then run `contact-sync cdc reset {store}`; if it was dropped on \
                 purpose, run `contact-sync cdc reset {store}` then `contact-sync migrate` to \
                 re-create it and copy canonical to it again",
                names.join(", "),
                if missing.len() == 1 { "is" } else { "are" },
            ),
        )
    }

    /// Checked at the start of every capture (one round trip): the table
    /// still exists, is the one the store set up (same oid; the first
    /// capture records it when nothing is recorded yet), has every mapped
    /// column, and (slot mode) is still in the publication. Otherwise a
    /// paused error saying what happened and what to do.
    pub(crate) async fn check_identity(&mut self) -> Result<(), StoreError> {
        let name = self.cfg.name.clone();
        let store = name.clone();
        let qt = self.qtable();
        let tkey = self.table_key();
        let meta = self.qmeta();
        if !self.meta_ready {
            let ddl = self.meta_ddl();
            let client = self.client().await?;
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&meta])
                .await
                .map_err(|e| pg_err(&name, "reading the store's bookkeeping", &e))?
                .get(0);
            if !exists {
                client
                    .batch_execute(&ddl)
                    .await
                    .map_err(|e| pg_err(&name, "creating the store's bookkeeping table", &e))?;
            }
            self.meta_ready = true;
        }
        let publication = self.cfg.publication.clone();
        let (schema, table) = (self.cfg.schema.clone(), self.cfg.table.clone());
        let row = self
            .client()
            .await?
            .query_one(
                &format!(
                    "SELECT to_regclass($1)::oid::bigint, \
                     (SELECT relid::bigint FROM {meta} WHERE tbl = $2), \
                     EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $3 \
                       AND schemaname = $4 AND tablename = $5), \
                     ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) \
                       AND attnum > 0 AND NOT attisdropped), \
                     (SELECT to_jsonb(m) ->> 'bulk_from' FROM {meta} m WHERE tbl = $2), \
                     (SELECT to_jsonb(m) ->> 'bulk_to' FROM {meta} m WHERE tbl = $2)"
                ),
                &[&qt, &tkey, &publication, &schema, &table],
            )
            .await
            .map_err(|e| pg_err(&name, &format!("checking table {tkey}"), &e))?;
        let current: Option<i64> = row.get(0);
        let recorded: Option<i64> = row.get(1);
        let published: bool = row.get(2);
        let columns: Vec<String> = row.get(3);
        // A bulk load's WAL to skip (see `bulk`; the columns exist once a
        // bulk load ran).
        let (from, to): (Option<String>, Option<String>) = (row.get(4), row.get(5));
        self.bulk_window = from
            .as_deref()
            .and_then(crate::pgoutput::Lsn::parse)
            .zip(to.as_deref().and_then(crate::pgoutput::Lsn::parse));
        let Some(current) = current else {
            return Err(StoreError::paused(
                &store,
                format!(
                    "table {tkey} no longer exists (dropped or renamed?): changes made there cannot be \
                     captured, so {store} is paused. Restore it, or run `contact-sync migrate` to create \
                     it and `contact-sync cdc reset {store}` to copy canonical to it again"
                ),
            ));
        };
        match recorded {
            None => {
                self.client()
                    .await?
                    .execute(
                        &format!(
                            "INSERT INTO {meta} (tbl, relid) VALUES ($1, $2::bigint::oid) \
                             ON CONFLICT (tbl) DO NOTHING"
                        ),
                        &[&tkey, &current],
                    )
                    .await
                    .map_err(|e| {
                        pg_err(&name, "recording the table in the store's bookkeeping", &e)
                    })?;
            }
            Some(r) if r != current => {
                return Err(StoreError::paused(
                    &store,
                    format!(
                        "table {tkey} was dropped and re-created since contact-sync set it up (its oid is \
                         {current}, was {r}): its rows are not the ones synced, and changes made in \
                         between were not captured, so {store} is paused. Run `contact-sync cdc reset \
                         {store}` to adopt the new table and copy canonical to it again"
                    ),
                ));
            }
            Some(_) => {}
        }
        let missing = self.missing_columns(|c| columns.iter().any(|x| x == c));
        if !missing.is_empty() {
            self.table = None;
            self.read_ahead = None;
            return Err(self.missing_column_error(&missing));
        }
        if self.cfg.cdc == CdcMode::Slot && !published {
            return Err(StoreError::paused(
                &store,
                format!(
                    "publication {publication} no longer contains table {tkey} (ALTER PUBLICATION … \
                     DROP TABLE?): changes made there are not captured, so {store} is paused. Run \
                     `contact-sync migrate` to add it back, then `contact-sync cdc reset {store}` to \
                     copy canonical to it again (changes made in between were not captured)"
                ),
            ));
        }
        self.relid = Some(current);
        Ok(())
    }

    /// `err` of a statement that failed, or the paused error of the schema
    /// change behind it: a column or the table gone (SQLSTATE 42703,
    /// 42P01) is checked again from the catalog.
    pub(crate) async fn schema_error(&mut self, err: StoreError) -> StoreError {
        if !(err.message.contains("SQLSTATE 42703") || err.message.contains("SQLSTATE 42P01")) {
            return err;
        }
        self.table = None;
        self.read_ahead = None;
        self.staging_ready = false;
        match self.check_identity().await {
            Err(e) => e,
            Ok(()) => err,
        }
    }
}

/// The oid recorded for table `tkey` (`schema.table`) in the bookkeeping
/// table `qmeta` (quoted), when that table exists and holds it.
pub(crate) async fn recorded_relid(
    client: &impl GenericClient,
    qmeta: &str,
    tkey: &str,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qmeta])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(client
        .query_opt(
            &format!("SELECT relid::bigint FROM {qmeta} WHERE tbl = $1"),
            &[&tkey],
        )
        .await?
        .map(|r| r.get(0)))
}
