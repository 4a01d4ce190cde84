//! [`BigQueryStore`]: the contacts table as a [`RecordSink`] and a
//! [`ChangeSource`].

use std::time::Duration;

use async_trait::async_trait;
use contact_sync_connector::{
    Conditional, Expect, HashScan, RecordHash, RecordScan, RecordSink, StoreError, StoreInfo,
    Unreadable, WriteOutcome,
};
use contact_sync_core::clock::ClockSkew;
use contact_sync_core::Contact;
use serde_json::{Map, Value};

use crate::capture::{CaptureCounters, CaptureState};
use crate::client::{BigQueryClient, ParamType, QueryParam, TableOptions};
use crate::error::BqError;
use crate::rows::decode_contact;
use crate::schema::{
    column_problems, contacts_schema, fingerprint_schema, journal_schema, ColumnMap, ColumnProblem,
    Layout,
};
use crate::write::build_merge;

/// Where the store's tables are and how it reads changes.
#[derive(Debug, Clone)]
pub struct BigQueryStoreConfig {
    /// The store's name in logs, errors and the state database
    /// (`canonical` when BigQuery is the canonical store).
    pub name: String,
    /// Dataset holding the tables.
    pub dataset: String,
    /// The contacts table (default `contacts`).
    pub table: String,
    /// The analytics journal table (`contact_changes`), or `None` to keep no
    /// journal in BigQuery.
    pub journal_table: Option<String>,
    /// Column names of an existing table, where they differ from the
    /// canonical field names.
    pub columns: ColumnMap,
    /// The change poll reads rows up to BigQuery's `CURRENT_TIMESTAMP()`
    /// minus this: a writer whose `last_updated` is a little behind the
    /// server (statement start vs. commit, a clock a little slow) still
    /// lands after the cursor. Fresh edits arrive this much later. Default
    /// 10 s.
    pub overlap: Duration,
    /// Run the fingerprint sweep (edits without a newer `last_updated`,
    /// back-dated and loaded rows, hard deletes) on the first poll after
    /// `open` and then on every this many caught-up polls; `None` turns
    /// the sweep off altogether (only edits that bump `last_updated` are
    /// then seen). Default 3.
    pub sweep_every: Option<u32>,
    /// The longest time between two sweeps whatever the load: a poll this
    /// long after the last sweep sweeps first, whether or not the fast path
    /// is caught up (a steady stream of bumped edits never lets it catch
    /// up). The sweep runs at a poll, so an edit it finds waits at most
    /// this plus one polling interval. `None`: only `sweep_every`. Default
    /// 900 s (three cycles at the default 300 s interval).
    pub sweep_interval: Option<Duration>,
    /// Skip the poll query when `tables.get` (free) shows the table
    /// unchanged since the last poll and a sweep ran since it last changed.
    /// Default on. It rests on `lastModifiedTime`, which BigQuery moves when
    /// the table's data changes; the local-bigquery emulator does not (it
    /// moves it only on a metadata patch), so tests of DELETE on the bare
    /// emulator turn this off, and `tests/bigquery_behaviour.rs` proves it
    /// through a proxy answering `tables.get` as BigQuery does.
    pub idle_check: bool,
    /// Most rows per MERGE request (requests are also split by bytes to
    /// stay under BigQuery's 10 MB limit). Default 5,000.
    pub max_rows_per_request: usize,
}

impl BigQueryStoreConfig {
    /// Defaults: name `canonical`, table `contacts`, journal
    /// `contact_changes`, canonical column names, 10 s overlap, a sweep
    /// every 3 caught-up polls and at least every 900 s.
    pub fn new(dataset: impl Into<String>) -> Self {
        BigQueryStoreConfig {
            name: "canonical".into(),
            dataset: dataset.into(),
            table: "contacts".into(),
            journal_table: Some("contact_changes".into()),
            columns: ColumnMap::default(),
            overlap: Duration::from_secs(10),
            sweep_every: Some(3),
            sweep_interval: Some(Duration::from_secs(900)),
            idle_check: true,
            max_rows_per_request: 5_000,
        }
    }

    /// The fingerprint sidecar table: `<table>_sync_fingerprints`.
    pub fn fingerprint_table(&self) -> String {
        format!("{}_sync_fingerprints", self.table)
    }
}

/// What the store cost and did so far (for `status`, `/metrics`, the cycle
/// log): the client's counters plus change capture's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BigQueryUsage {
    /// Query jobs started (polls, sweeps, reads, MERGEs).
    pub queries: u64,
    /// HTTP calls of any kind (jobs, result pages, `tables.get`, insertAll).
    pub calls: u64,
    /// Sum of `totalBytesProcessed` of the jobs.
    pub bytes_processed: u64,
    /// Sum of `totalBytesBilled` (on-demand pricing bills this).
    pub bytes_billed: u64,
    /// Request bodies sent, answer bodies received (bytes on the wire,
    /// headers aside).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Change capture's counters.
    pub capture: CaptureCounters,
}

/// What [`BigQueryStore::migrate`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub created_dataset: bool,
    pub created_table: bool,
    pub created_journal_table: bool,
    pub created_fingerprint_table: bool,
}

/// What [`BigQueryStore::check_setup`] found (read-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupReport {
    /// `project.dataset.table` of the contacts table.
    pub table: String,
    pub dataset_exists: bool,
    pub table_exists: bool,
    /// The fields the table cannot hold under the column mapping (empty
    /// when it fits, or when it does not exist).
    pub problems: Vec<ColumnProblem>,
    /// Rows in the table, counted by a query job (so the credentials can
    /// run queries on it), or that query's error. `None` when the table is
    /// missing or does not fit.
    pub rows: Option<Result<u64, String>>,
    /// Whether the journal table exists (`None`: none is configured).
    pub journal_table_exists: Option<bool>,
    /// Why the table's layout makes every change poll, read by id and
    /// conditional write scan (and bill) the whole table; `None` when it is
    /// clustered by the contact id column (as `migrate` creates it).
    pub full_scan: Option<String>,
    /// Contact ids held by more than one row (made by another writer; the
    /// store writes none of them until the duplicates are removed): how
    /// many, and up to 10 of them. `None` when not counted (the table is
    /// missing, does not fit, or the count failed).
    pub duplicate_ids: Option<(u64, Vec<String>)>,
}

/// The full-scan warning for a contacts table resource (`tables.get`):
/// not clustered by the contact id column first.
pub(crate) fn full_scan_warning(table: &str, id_column: &str, resource: &Value) -> Option<String> {
    let clustered_by_id = resource["clustering"]["fields"]
        .as_array()
        .and_then(|f| f.first())
        .and_then(Value::as_str)
        .is_some_and(|c| c.eq_ignore_ascii_case(id_column));
    if clustered_by_id {
        return None;
    }
    let size = resource["numBytes"]
        .as_str()
        .and_then(|n| n.parse::<u64>().ok())
        .or_else(|| resource["numBytes"].as_u64());
    let size = match size {
        Some(b) => format!(
            " (now {:.1} MB; BigQuery bills at least 10 MB per query)",
            b as f64 / 1e6
        ),
        None => String::new(),
    };
    Some(format!(
        "table {table} is not clustered by `{id_column}`: every change poll, read by id and conditional write scans and bills the whole table{size}"
    ))
}

/// BigQuery as a store: batched MERGE writes guarded by `version`, reads by
/// id / page / identity, and change capture by `last_updated` watermark.
///
/// Jobs: [`write_batch`](RecordSink::write_batch) runs one MERGE job per
/// batch, plus one outcome query only when the MERGE touched fewer rows
/// than it was given (some rows were stale). Every other call is one query
/// job (plus result pages).
pub struct BigQueryStore {
    pub(crate) client: BigQueryClient,
    pub(crate) cfg: BigQueryStoreConfig,
    pub(crate) layout: Layout,
    /// `project.dataset.table`, for messages.
    pub(crate) full_name: String,
    /// The table reference, backquoted for SQL.
    pub(crate) table_sql: String,
    pub(crate) merge_sql: String,
    pub(crate) row_type: ParamType,
    /// Change capture between calls (see [`crate::capture`]).
    pub(crate) cap: CaptureState,
    pub(crate) counters: CaptureCounters,
    /// Tests: runs between a conditional write's read and its MERGE.
    pub(crate) before_merge: Option<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for BigQueryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigQueryStore")
            .field("name", &self.cfg.name)
            .field("table", &self.full_name)
            .field("client", &self.client)
            .finish()
    }
}

/// Most rows one query asks for (a larger `limit` is served in several
/// queries by `scan`, and as `has_more` by `read_changes`).
pub(crate) const MAX_PAGE: usize = 50_000;

/// Dataset and table names come from configuration, never from data; they
/// cannot be parameters, so backquotes are stripped before quoting.
pub(crate) fn sql_ident(s: &str) -> String {
    s.replace('`', "")
}

impl BigQueryStore {
    /// Creates the dataset, the contacts table (schema per DESIGN.md, with
    /// `cfg.columns` names) and the journal table when they are missing.
    /// Existing tables are left alone, but checked against the column
    /// mapping. Idempotent.
    pub async fn migrate(
        client: &BigQueryClient,
        cfg: &BigQueryStoreConfig,
    ) -> Result<MigrateReport, StoreError> {
        let e = |e: BqError| e.into_store(&cfg.name);
        let mut report = MigrateReport::default();
        if !client.dataset_exists(&cfg.dataset).await.map_err(e)? {
            client.create_dataset(&cfg.dataset).await.map_err(e)?;
            report.created_dataset = true;
        }
        let full = format!("{}.{}.{}", client.project(), cfg.dataset, cfg.table);
        match client
            .table_schema(&cfg.dataset, &cfg.table)
            .await
            .map_err(e)?
        {
            Some(schema) => {
                Layout::from_schema(&full, &schema, &cfg.columns).map_err(e)?;
            }
            None => {
                // Clustered by contact_id: reads by id and MERGEs prune
                // blocks. Partitioned by month of last_updated: the change
                // poll (a range on last_updated) prunes partitions.
                let opts = TableOptions {
                    cluster_by: vec![cfg.columns.column("contact_id").to_string()],
                    partition_by_month: Some(cfg.columns.column("last_updated").to_string()),
                };
                client
                    .create_table_with(
                        &cfg.dataset,
                        &cfg.table,
                        &contacts_schema(&cfg.columns),
                        "contact-sync canonical contacts (one row per contact_id)",
                        &opts,
                    )
                    .await
                    .map_err(e)?;
                report.created_table = true;
            }
        }
        report.created_fingerprint_table = Self::ensure_fingerprint_table(client, cfg).await?;
        if let Some(j) = &cfg.journal_table {
            if client
                .table_schema(&cfg.dataset, j)
                .await
                .map_err(e)?
                .is_none()
            {
                let opts = TableOptions {
                    cluster_by: vec!["contact_id".into()],
                    partition_by_month: Some("at".into()),
                };
                client
                    .create_table_with(
                        &cfg.dataset,
                        j,
                        &journal_schema(),
                        "contact-sync change journal (analytics copy; one row per journal entry, keyed by seq)",
                        &opts,
                    )
                    .await
                    .map_err(e)?;
                report.created_journal_table = true;
            }
        }
        Ok(report)
    }

    /// Creates the fingerprint sidecar when the sweep is on and it is
    /// missing; `Ok(true)` when it was created.
    async fn ensure_fingerprint_table(
        client: &BigQueryClient,
        cfg: &BigQueryStoreConfig,
    ) -> Result<bool, StoreError> {
        let e = |e: BqError| e.into_store(&cfg.name);
        if cfg.sweep_every.is_none() {
            return Ok(false);
        }
        let t = cfg.fingerprint_table();
        if client
            .table_schema(&cfg.dataset, &t)
            .await
            .map_err(e)?
            .is_some()
        {
            return Ok(false);
        }
        let opts = TableOptions {
            cluster_by: vec!["contact_id".into()],
            partition_by_month: None,
        };
        client
            .create_table_with(
                &cfg.dataset,
                &t,
                &fingerprint_schema(),
                "contact-sync: fingerprint of each contacts row as the engine last took it in (change sweep; owned by contact-sync)",
                &opts,
            )
            .await
            .map_err(e)?;
        Ok(true)
    }

    /// Read-only: whether the dataset and the contacts table exist, which
    /// fields the table cannot hold under `cfg.columns`, and (when it
    /// fits) how many rows a `COUNT(*)` query job finds in it. Errors are
    /// only for calls that fail (credentials, network); what is missing is
    /// in the report.
    pub async fn check_setup(
        client: &BigQueryClient,
        cfg: &BigQueryStoreConfig,
    ) -> Result<SetupReport, StoreError> {
        let e = |e: BqError| e.into_store(&cfg.name);
        let mut report = SetupReport {
            table: format!("{}.{}.{}", client.project(), cfg.dataset, cfg.table),
            dataset_exists: client.dataset_exists(&cfg.dataset).await.map_err(e)?,
            table_exists: false,
            problems: Vec::new(),
            rows: None,
            journal_table_exists: None,
            full_scan: None,
            duplicate_ids: None,
        };
        if !report.dataset_exists {
            return Ok(report);
        }
        if let Some(schema) = client
            .table_schema(&cfg.dataset, &cfg.table)
            .await
            .map_err(e)?
        {
            report.table_exists = true;
            report.problems = column_problems(&schema, &cfg.columns);
            if let Some(resource) = client
                .table_resource(&cfg.dataset, &cfg.table)
                .await
                .map_err(e)?
            {
                report.full_scan =
                    full_scan_warning(&report.table, cfg.columns.column("contact_id"), &resource);
            }
        }
        if report.table_exists && report.problems.is_empty() {
            let sql = format!(
                "SELECT COUNT(*) AS n FROM `{}.{}.{}`",
                sql_ident(client.project()),
                sql_ident(&cfg.dataset),
                sql_ident(&cfg.table)
            );
            let ctx = format!("counting the rows of {}", report.table);
            report.rows = Some(match client.query(&sql, &[], &ctx).await {
                Ok(r) => Ok(r
                    .rows
                    .first()
                    .and_then(|row| row.get("n"))
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    .max(0) as u64),
                Err(err) => Err(err.to_string()),
            });
            if matches!(report.rows, Some(Ok(_))) {
                report.duplicate_ids = Self::duplicate_ids(client, cfg).await.ok();
            }
        }
        if let Some(j) = &cfg.journal_table {
            report.journal_table_exists = Some(
                client
                    .table_schema(&cfg.dataset, j)
                    .await
                    .map_err(e)?
                    .is_some(),
            );
        }
        Ok(report)
    }

    /// Contact ids held by more than one row: how many, and the first 10.
    async fn duplicate_ids(
        client: &BigQueryClient,
        cfg: &BigQueryStoreConfig,
    ) -> Result<(u64, Vec<String>), BqError> {
        let id = format!(
            "CAST(t.`{}` AS STRING)",
            sql_ident(cfg.columns.column("contact_id"))
        );
        let sql = format!(
            "SELECT id, COUNT(*) OVER () AS ids FROM (SELECT {id} AS id FROM `{}.{}.{}` t \
             GROUP BY 1 HAVING COUNT(*) > 1) ORDER BY id LIMIT 10",
            sql_ident(client.project()),
            sql_ident(&cfg.dataset),
            sql_ident(&cfg.table)
        );
        let ctx = format!("looking for duplicate contact ids in {}", cfg.table);
        let res = client.query(&sql, &[], &ctx).await?;
        let total = res
            .rows
            .first()
            .and_then(|r| r.get("ids"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .max(0) as u64;
        let ids = res
            .rows
            .iter()
            .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_string))
            .collect();
        Ok((total, ids))
    }

    /// Opens the store on an existing table (see [`migrate`](Self::migrate)):
    /// reads its schema and checks every field has a fitting column. A
    /// missing table is a permanent error naming it.
    pub async fn open(
        client: BigQueryClient,
        cfg: BigQueryStoreConfig,
    ) -> Result<Self, StoreError> {
        let full_name = format!("{}.{}.{}", client.project(), cfg.dataset, cfg.table);
        let schema = client
            .table_schema(&cfg.dataset, &cfg.table)
            .await
            .map_err(|e| e.into_store(&cfg.name))?
            .ok_or_else(|| {
                StoreError::permanent(
                    &cfg.name,
                    format!("table {full_name} not found: run `contact-sync migrate` or fix the dataset/table names"),
                )
            })?;
        let layout = Layout::from_schema(&full_name, &schema, &cfg.columns)
            .map_err(|e| e.into_store(&cfg.name))?;
        let table_sql = format!(
            "`{}.{}.{}`",
            sql_ident(client.project()),
            sql_ident(&cfg.dataset),
            sql_ident(&cfg.table)
        );
        let (merge_sql, row_type) = build_merge(&layout, &table_sql);
        Self::ensure_fingerprint_table(&client, &cfg).await?;
        Ok(BigQueryStore {
            client,
            cfg,
            layout,
            full_name,
            table_sql,
            merge_sql,
            row_type,
            cap: CaptureState::default(),
            counters: CaptureCounters::default(),
            before_merge: None,
        })
    }

    /// The client (shared counters: see [`BigQueryClient::stats`]).
    pub fn client(&self) -> &BigQueryClient {
        &self.client
    }

    /// How far BigQuery's clock is from this machine's (see
    /// [`BigQueryClient::clock_skew`]).
    pub async fn clock_skew(&self) -> Result<ClockSkew, StoreError> {
        self.client.clock_skew().await.map_err(|e| self.err(e))
    }

    /// Query jobs this store's client has issued so far.
    pub fn jobs_issued(&self) -> u64 {
        self.client.stats().jobs
    }

    /// For tests: `f` runs inside every conditional write, after the rows
    /// and their fingerprints were read and before the MERGE (where another
    /// writer's edit would race the write).
    #[doc(hidden)]
    pub fn set_before_merge_hook(&mut self, f: Option<Box<dyn Fn() + Send + Sync>>) {
        self.before_merge = f;
    }

    /// What the store did and cost so far: query jobs, bytes processed and
    /// billed (from each job's statistics), and change capture's counters
    /// (idle polls skipped, sweeps). Cumulative since `open` (the client's
    /// counters are shared with its clones); diff two readings for a cycle.
    pub fn usage(&self) -> BigQueryUsage {
        let s = self.client.stats();
        BigQueryUsage {
            queries: s.jobs,
            calls: s.calls,
            bytes_processed: s.bytes_processed,
            bytes_billed: s.bytes_billed,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            capture: self.counters,
        }
    }

    /// The server-side fingerprint of a row of the table aliased `alias`
    /// (what the sweep and conditional writes compare). For benchmarks
    /// that fill the fingerprint sidecar server-side.
    #[doc(hidden)]
    pub fn fingerprint_sql(&self, alias: &str) -> String {
        self.layout.fingerprint(alias)
    }

    /// `project.dataset.table` of the contacts table.
    pub fn table_name(&self) -> &str {
        &self.full_name
    }

    pub(crate) fn err(&self, e: BqError) -> StoreError {
        e.into_store(&self.cfg.name)
    }

    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[QueryParam],
        what: &str,
    ) -> Result<crate::client::QueryResult, StoreError> {
        let ctx = format!("{what} on table {}", self.full_name);
        self.client
            .query(sql, params, &ctx)
            .await
            .map_err(|e| self.err(e))
    }

    /// The id filter `<id column> IN UNNEST(@ids)` with its parameter
    /// (INT64 ids for an INT64 column; ids that are not integers cannot
    /// match and are left out).
    pub(crate) fn id_filter(&self, ids: &[String]) -> (String, QueryParam) {
        let col = &self.layout.col("contact_id").quoted;
        if self.layout.int_id() {
            let ints: Vec<i64> = ids.iter().filter_map(|i| i.trim().parse().ok()).collect();
            (
                format!("t.{col} IN UNNEST(@ids)"),
                QueryParam::int64s("ids", &ints),
            )
        } else {
            (
                format!("t.{col} IN UNNEST(@ids)"),
                QueryParam::strings("ids", ids),
            )
        }
    }

    /// The scan: pages of rows after `after` in `contact_id` order until
    /// `limit` records (and, with `count_unreadable`, unreadable rows) or
    /// the end.
    async fn scan_rows(
        &mut self,
        after: Option<&str>,
        limit: usize,
        count_unreadable: bool,
    ) -> Result<RecordScan, StoreError> {
        let mut out = RecordScan::default();
        let mut cursor = after.map(str::to_string);
        let id = self.layout.id_text("t");
        let limit = limit.max(1);
        loop {
            let got = out.records.len()
                + if count_unreadable {
                    out.unreadable.len()
                } else {
                    0
                };
            if got >= limit {
                break;
            }
            let want = (limit - got).min(MAX_PAGE);
            let mut params = Vec::new();
            let filter = match &cursor {
                Some(a) => {
                    params.push(QueryParam::string("after", a.clone()));
                    format!("WHERE {id} > @after")
                }
                None => String::new(),
            };
            let sql = format!(
                "SELECT {} FROM {} t {filter} ORDER BY {id} LIMIT {want}",
                self.layout.select_list("t"),
                self.table_sql
            );
            let res = self.query(&sql, &params, "scan").await?;
            let fetched = res.rows.len();
            for row in &res.rows {
                let native = crate::capture::row_id(row);
                match decode_contact(row) {
                    Ok(c) => out.records.push(c),
                    Err(invalid) => out.unreadable.push(Unreadable {
                        contact_id: native.clone(),
                        native_id: native.clone(),
                        invalid,
                    }),
                }
                if !native.is_empty() {
                    cursor = Some(native.clone());
                    out.last = Some(native);
                }
            }
            // A short page is the end.
            if fetched < want || cursor.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Rows as contacts; undecodable rows are left out (with a warning: the
    /// change source reports them as [`ChangeKind::Undecodable`]).
    fn decode_rows(&self, rows: &[Map<String, Value>]) -> Vec<Contact> {
        rows.iter()
            .filter_map(|r| match decode_contact(r) {
                Ok(c) => Some(c),
                Err(inv) => {
                    tracing::warn!(store = %self.cfg.name, table = %self.full_name, record = %inv.record, field = %inv.field, "bigquery: skipping an undecodable row: {}", inv.log_reason());
                    None
                }
            })
            .collect()
    }
}

#[async_trait]
impl RecordSink for BigQueryStore {
    /// Unconditional writes: one MERGE job per request (split under 10 MB)
    /// with the `version` guard; see [`crate::write`].
    async fn write_batch(&mut self, writes: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.write_rows(writes, None).await
    }

    /// Conditional writes, atomic per row (see [`crate::write`]): one read
    /// of the batch's rows with their fingerprints, one guarded MERGE per
    /// request, and a read-back only when the MERGE skipped rows.
    async fn write_batch_if(
        &mut self,
        writes: Vec<Contact>,
        expect: &[Expect],
    ) -> Result<(Vec<WriteOutcome>, Vec<Contact>), StoreError> {
        assert_eq!(writes.len(), expect.len(), "one condition per write");
        let outcomes = self.write_rows(&writes, Some(expect)).await?;
        Ok((outcomes, writes))
    }

    async fn read(&mut self, contact_ids: &[String]) -> Result<Vec<Contact>, StoreError> {
        if contact_ids.is_empty() {
            return Ok(Vec::new());
        }
        let (filter, p) = self.id_filter(contact_ids);
        let sql = format!(
            "SELECT {} FROM {} t WHERE {filter}",
            self.layout.select_list("t"),
            self.table_sql
        );
        let what = format!("read of {} contacts", contact_ids.len());
        let res = self.query(&sql, &[p], &what).await?;
        Ok(self.decode_rows(&res.rows))
    }

    /// Up to `limit` records after `after` in `contact_id` order, reading
    /// on past undecodable rows (left out, with a warning) until `limit`
    /// records or the end.
    async fn scan(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        let page = self.scan_rows(after, limit, false).await?;
        for u in &page.unreadable {
            tracing::warn!(store = %self.cfg.name, table = %self.full_name, record = %u.invalid.record, field = %u.invalid.field, "bigquery: skipping an undecodable row: {}", u.invalid.log_reason());
        }
        Ok(page.records)
    }

    /// Up to `limit` rows after `after` in `contact_id` order, each decoded
    /// or named as unreadable (id, field, reason; values masked unless PII
    /// logging is on).
    async fn scan_checked(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RecordScan, StoreError> {
        self.scan_rows(after, limit, true).await
    }

    /// As `scan_checked`, hashed.
    async fn scan_hashes_checked(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<HashScan, StoreError> {
        let page = self.scan_checked(after, limit).await?;
        Ok(HashScan {
            hashes: page.records.into_iter().map(RecordHash::of).collect(),
            unreadable: page.unreadable,
            last: page.last,
        })
    }

    async fn count(&mut self) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT COUNT(*) AS n FROM {} t WHERE t.{} IS NULL",
            self.table_sql,
            self.layout.col("deleted_at").quoted
        );
        let res = self.query(&sql, &[], "count").await?;
        res.rows
            .first()
            .and_then(|r| r.get("n"))
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                StoreError::permanent(
                    &self.cfg.name,
                    format!("count on table {}: no count in the answer", self.full_name),
                )
            })
    }

    async fn find_by_identity(
        &mut self,
        emails: &[String],
        phones: &[String],
    ) -> Result<Vec<Contact>, StoreError> {
        if emails.is_empty() && phones.is_empty() {
            return Ok(Vec::new());
        }
        let emails: Vec<String> = emails.iter().map(|e| e.trim().to_lowercase()).collect();
        let phones: Vec<String> = phones.iter().map(|p| p.trim().to_string()).collect();
        let sql = format!(
            "SELECT {} FROM {} t WHERE t.{} IS NULL AND (\
             EXISTS(SELECT 1 FROM UNNEST(t.{}) e WHERE LOWER(TRIM(e.address)) IN UNNEST(@emails)) \
             OR EXISTS(SELECT 1 FROM UNNEST(t.{}) p WHERE TRIM(p.number) IN UNNEST(@phones)))",
            self.layout.select_list("t"),
            self.table_sql,
            self.layout.col("deleted_at").quoted,
            self.layout.col("emails").quoted,
            self.layout.col("phones").quoted,
        );
        let params = [
            QueryParam::strings("emails", &emails),
            QueryParam::strings("phones", &phones),
        ];
        let res = self.query(&sql, &params, "identity lookup").await?;
        // Only the primary email / phone identifies a contact.
        Ok(self
            .decode_rows(&res.rows)
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

impl StoreInfo for BigQueryStore {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn keeps_version(&self) -> bool {
        true
    }

    /// The MERGE checks the fingerprint read with the row and writes in one
    /// DML statement (see [`crate::write`]).
    fn conditional_writes(&self) -> Conditional {
        Conditional::Atomic
    }
}

#[cfg(test)]
mod tests {
    use super::full_scan_warning;
    use serde_json::json;

    #[test]
    fn a_table_clustered_by_the_id_column_first_scans_no_more_than_it_needs() {
        let r = json!({"clustering": {"fields": ["id", "last_updated"]}, "numBytes": "5000000"});
        assert_eq!(full_scan_warning("p.d.t", "id", &r), None);
    }

    #[test]
    fn an_unclustered_or_otherwise_clustered_table_is_named_with_its_size() {
        let none = json!({"numBytes": "25000000"});
        let w = full_scan_warning("p.d.t", "contact_id", &none).expect("warning");
        assert!(w.contains("p.d.t is not clustered by `contact_id`"), "{w}");
        assert!(w.contains("now 25.0 MB"), "{w}");
        let other = json!({"clustering": {"fields": ["last_updated", "contact_id"]}});
        let w = full_scan_warning("p.d.t", "contact_id", &other).expect("warning");
        assert!(!w.contains("now "), "{w}");
    }
}
