//! [`BigQueryStore`]: the contacts table as a [`RecordSink`] and a
//! [`ChangeSource`].

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use contact_sync_connector::{
    Change, ChangeBatch, ChangeKind, ChangeSource, Checkpoint, RecordSink, StoreError, StoreInfo,
    WriteOutcome,
};
use contact_sync_core::clock::ClockSkew;
use contact_sync_core::model::format_ts;
use contact_sync_core::pii::Reason;
use contact_sync_core::{Contact, Email, Invalid, JournalEntry, Phone, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::client::{BigQueryClient, InsertRow, ParamType, ParamValue, QueryParam};
use crate::error::BqError;
use crate::schema::{
    column_problems, contacts_schema, journal_schema, ColumnMap, ColumnProblem, Kind, Layout,
};

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
    /// How far before the watermark each change poll looks again, to catch
    /// rows whose `last_updated` is earlier than rows already seen (clock
    /// skew between writers, slow commits). Default 10 s.
    pub overlap: Duration,
}

impl BigQueryStoreConfig {
    /// Defaults: name `canonical`, table `contacts`, journal
    /// `contact_changes`, canonical column names, 10 s overlap.
    pub fn new(dataset: impl Into<String>) -> Self {
        BigQueryStoreConfig {
            name: "canonical".into(),
            dataset: dataset.into(),
            table: "contacts".into(),
            journal_table: Some("contact_changes".into()),
            columns: ColumnMap::default(),
            overlap: Duration::from_secs(10),
        }
    }
}

/// What [`BigQueryStore::migrate`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub created_dataset: bool,
    pub created_table: bool,
    pub created_journal_table: bool,
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
}

/// BigQuery as a store: batched MERGE writes guarded by `version`, reads by
/// id / page / identity, and change capture by `last_updated` watermark.
///
/// Jobs: [`write_batch`](RecordSink::write_batch) runs one MERGE job per
/// batch, plus one outcome query only when the MERGE touched fewer rows
/// than it was given (some rows were stale). Every other call is one query
/// job (plus result pages).
pub struct BigQueryStore {
    client: BigQueryClient,
    cfg: BigQueryStoreConfig,
    layout: Layout,
    /// `project.dataset.table`, for messages.
    full_name: String,
    /// The table reference, backquoted for SQL.
    table_sql: String,
    merge_sql: String,
    row_type: ParamType,
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
const MAX_PAGE: usize = 50_000;

/// Dataset and table names come from configuration, never from data; they
/// cannot be parameters, so backquotes are stripped before quoting.
fn sql_ident(s: &str) -> String {
    s.replace('`', "")
}

/// The change-capture position (see [`BigQueryStore`]'s `ChangeSource`).
///
/// Encoded as JSON: `{"v":1,"wm":<µs>,"seen":[["<contact_id>",<version>,<last_updated µs>],...]}`.
/// `wm` is the highest `last_updated` delivered (µs since the epoch, absent
/// before the first change); `seen` lists the rows already delivered whose
/// `last_updated` lies inside the overlap window `[wm - overlap, wm]`.
/// A poll reads rows with `last_updated >= wm - overlap` ordered by
/// (`last_updated`, `contact_id`) and skips those in `seen`: a late row
/// inside the window is delivered once, and a row changed again (new
/// `version` or `last_updated`) is delivered again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    v: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wm: Option<i64>,
    #[serde(default)]
    seen: BTreeSet<(String, i64, i64)>,
}

impl Cursor {
    fn parse(store: &str, cp: Option<&Checkpoint>) -> Result<Cursor, StoreError> {
        let Some(cp) = cp else {
            return Ok(Cursor {
                v: 1,
                ..Cursor::default()
            });
        };
        let c: Cursor = serde_json::from_str(cp.as_str()).map_err(|e| {
            StoreError::permanent(
                store,
                format!("checkpoint is not a BigQuery watermark checkpoint ({e})"),
            )
        })?;
        if c.v != 1 {
            return Err(StoreError::permanent(
                store,
                format!("checkpoint version {} is not supported", c.v),
            ));
        }
        Ok(c)
    }

    fn encode(&self) -> Checkpoint {
        Checkpoint(serde_json::to_string(self).unwrap_or_else(|_| unreachable!("plain data")))
    }
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
                client
                    .create_table(
                        &cfg.dataset,
                        &cfg.table,
                        &contacts_schema(&cfg.columns),
                        "contact-sync canonical contacts (one row per contact_id)",
                    )
                    .await
                    .map_err(e)?;
                report.created_table = true;
            }
        }
        if let Some(j) = &cfg.journal_table {
            if client
                .table_schema(&cfg.dataset, j)
                .await
                .map_err(e)?
                .is_none()
            {
                client
                    .create_table(
                        &cfg.dataset,
                        j,
                        &journal_schema(),
                        "contact-sync change journal (analytics copy; append-only)",
                    )
                    .await
                    .map_err(e)?;
                report.created_journal_table = true;
            }
        }
        Ok(report)
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
        Ok(BigQueryStore {
            client,
            cfg,
            layout,
            full_name,
            table_sql,
            merge_sql,
            row_type,
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

    /// `project.dataset.table` of the contacts table.
    pub fn table_name(&self) -> &str {
        &self.full_name
    }

    fn err(&self, e: BqError) -> StoreError {
        e.into_store(&self.cfg.name)
    }

    async fn query(
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
    fn id_filter(&self, ids: &[String]) -> (String, QueryParam) {
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

    /// Appends journal entries to the analytics table with tabledata.insertAll
    /// (`insertId` = `contact_id:version:seq`, so a retried append is
    /// deduplicated where BigQuery can). A no-op without a journal table.
    pub async fn append_journal_rows(&self, entries: &[JournalEntry]) -> Result<(), StoreError> {
        let Some(table) = &self.cfg.journal_table else {
            return Ok(());
        };
        let rows: Vec<InsertRow> = entries
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("seq".into(), json!(e.seq.to_string()));
                m.insert("contact_id".into(), json!(e.contact_id));
                m.insert("version".into(), json!(e.version.to_string()));
                m.insert("prev_version".into(), json!(e.prev_version.to_string()));
                m.insert("op".into(), json!(e.op.as_str()));
                m.insert("origin".into(), json!(e.origin));
                m.insert(
                    "changed_fields".into(),
                    Value::Array(e.changes.iter().map(|c| json!(c.field)).collect()),
                );
                let js = |v: &dyn erased::Ser| json!(v.to_json_string());
                m.insert("changes".into(), js(&e.changes));
                m.insert("conflicts".into(), js(&e.conflicts));
                m.insert("after".into(), js(&e.after));
                m.insert("content_hash".into(), json!(e.hash));
                m.insert("at".into(), json!(format_ts(&e.at)));
                InsertRow {
                    insert_id: Some(format!("{}:{}:{}", e.contact_id, e.version, e.seq)),
                    json: m,
                }
            })
            .collect();
        for chunk in rows.chunks(500) {
            self.client
                .insert_all(&self.cfg.dataset, table, chunk)
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}

mod erased {
    /// Serializes anything serde can, to JSON text, for JSON columns.
    pub trait Ser {
        fn to_json_string(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json_string(&self) -> String {
            serde_json::to_string(self).unwrap_or_else(|_| "null".into())
        }
    }
}

/// The MERGE statement and the type of its `@rows` parameter.
fn build_merge(layout: &Layout, table_sql: &str) -> (String, ParamType) {
    let text = || ParamType::Scalar("STRING");
    let record = |first: &str| {
        ParamType::Array(Box::new(ParamType::Struct(vec![
            (first.into(), text()),
            ("label".into(), text()),
            ("is_primary".into(), ParamType::Scalar("BOOL")),
        ])))
    };
    let mut types = Vec::new();
    let mut select = Vec::new();
    for c in &layout.columns {
        let f = c.field;
        let (ty, expr) = match c.kind {
            Kind::Id if c.ty == "INT64" => (text(), format!("CAST(r.{f} AS INT64)")),
            Kind::Json if c.ty == "JSON" => (text(), format!("PARSE_JSON(r.{f})")),
            Kind::Tags => (ParamType::Array(Box::new(text())), format!("r.{f}")),
            Kind::Timestamp if f == "last_updated" => (
                ParamType::Scalar("TIMESTAMP"),
                format!("COALESCE(r.{f}, CURRENT_TIMESTAMP())"),
            ),
            Kind::Timestamp => (ParamType::Scalar("TIMESTAMP"), format!("r.{f}")),
            Kind::Emails => (record("address"), format!("r.{f}")),
            Kind::Phones => (record("number"), format!("r.{f}")),
            Kind::Version => (ParamType::Scalar("INT64"), format!("r.{f}")),
            _ => (text(), format!("r.{f}")),
        };
        types.push((f.to_string(), ty));
        select.push(format!("{expr} AS {f}"));
    }
    let id = &layout.col("contact_id").quoted;
    let ver = &layout.col("version").quoted;
    let updates: Vec<String> = layout
        .columns
        .iter()
        .filter(|c| c.field != "contact_id")
        .map(|c| format!("{} = s.{}", c.quoted, c.field))
        .collect();
    let cols: Vec<&str> = layout.columns.iter().map(|c| c.quoted.as_str()).collect();
    let vals: Vec<String> = layout
        .columns
        .iter()
        .map(|c| format!("s.{}", c.field))
        .collect();
    let sql = format!(
        "MERGE {table_sql} t USING (SELECT {} FROM UNNEST(@rows) AS r) s ON t.{id} = s.contact_id \
         WHEN MATCHED AND (t.{ver} IS NULL OR s.version >= t.{ver}) THEN UPDATE SET {} \
         WHEN NOT MATCHED THEN INSERT ({}) VALUES ({})",
        select.join(", "),
        updates.join(", "),
        cols.join(", "),
        vals.join(", ")
    );
    (sql, ParamType::Array(Box::new(ParamType::Struct(types))))
}

fn opt_text(v: &Option<String>) -> ParamValue {
    match v {
        Some(s) => ParamValue::Scalar(s.clone()),
        None => ParamValue::Null,
    }
}

fn opt_ts(v: &Option<Timestamp>) -> ParamValue {
    match v {
        Some(t) => ParamValue::Scalar(format_ts(t)),
        None => ParamValue::Null,
    }
}

fn opt_json(v: &Option<Value>) -> ParamValue {
    match v {
        Some(Value::Null) | None => ParamValue::Null,
        Some(j) => ParamValue::Scalar(j.to_string()),
    }
}

/// One contact as a `@rows` element (fields by canonical name).
fn row_value(c: &Contact) -> ParamValue {
    let rec = |first: &str, items: Vec<(&str, &Option<String>, bool)>| {
        ParamValue::Array(
            items
                .into_iter()
                .map(|(a, label, primary)| {
                    ParamValue::Struct(vec![
                        (first.to_string(), ParamValue::Scalar(a.to_string())),
                        ("label".to_string(), opt_text(label)),
                        (
                            "is_primary".to_string(),
                            ParamValue::Scalar(primary.to_string()),
                        ),
                    ])
                })
                .collect(),
        )
    };
    let ext = if c.external_ids.is_empty() {
        ParamValue::Null
    } else {
        ParamValue::Scalar(serde_json::to_string(&c.external_ids).unwrap_or_default())
    };
    let t = |s: &str| ParamValue::Scalar(s.to_string());
    ParamValue::Struct(vec![
        ("contact_id".into(), t(&c.contact_id)),
        ("external_ids".into(), ext),
        ("canonical_name".into(), t(&c.canonical_name)),
        ("display_name".into(), opt_text(&c.display_name)),
        ("first_name".into(), opt_text(&c.first_name)),
        ("middle_name".into(), opt_text(&c.middle_name)),
        ("last_name".into(), opt_text(&c.last_name)),
        ("name_prefix".into(), opt_text(&c.name_prefix)),
        ("name_suffix".into(), opt_text(&c.name_suffix)),
        ("nickname".into(), opt_text(&c.nickname)),
        ("phonetic_name".into(), opt_text(&c.phonetic_name)),
        ("organization".into(), opt_text(&c.organization)),
        ("job_title".into(), opt_text(&c.job_title)),
        ("department".into(), opt_text(&c.department)),
        ("category_code".into(), opt_text(&c.category_code)),
        ("subcategory_code".into(), opt_text(&c.subcategory_code)),
        ("relationship_label".into(), opt_text(&c.relationship_label)),
        ("notes".into(), opt_text(&c.notes)),
        (
            "tags".into(),
            ParamValue::Array(c.tags.iter().map(|s| t(s)).collect()),
        ),
        ("source".into(), opt_text(&c.source)),
        ("created_at".into(), opt_ts(&c.created_at)),
        ("llm_context".into(), opt_json(&c.llm_context)),
        ("relationships".into(), opt_json(&c.relationships)),
        (
            "communication_stats".into(),
            opt_json(&c.communication_stats),
        ),
        ("social_profiles".into(), opt_json(&c.social_profiles)),
        ("custom_attributes".into(), opt_json(&c.custom_attributes)),
        (
            "emails".into(),
            rec(
                "address",
                c.emails
                    .iter()
                    .map(|e| (e.address.as_str(), &e.label, e.is_primary))
                    .collect(),
            ),
        ),
        (
            "phones".into(),
            rec(
                "number",
                c.phones
                    .iter()
                    .map(|p| (p.number.as_str(), &p.label, p.is_primary))
                    .collect(),
            ),
        ),
        ("version".into(), ParamValue::Scalar(c.version.to_string())),
        ("last_updated".into(), opt_ts(&c.last_updated)),
        ("last_updated_by".into(), opt_text(&c.last_updated_by)),
        ("deleted_at".into(), opt_ts(&c.deleted_at)),
        ("content_hash".into(), opt_text(&c.content_hash)),
    ])
}

/// A row read by [`Layout::select_list`] as a normalized contact; the
/// error names the contact and the field that cannot be read.
pub(crate) fn decode_contact(row: &Map<String, Value>) -> Result<Contact, Invalid> {
    let id = match row.get("contact_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(Invalid::new("", "contact_id", "is NULL or empty")),
    };
    let bad = |field: &str, reason: String| Invalid::new(&id, field, reason);
    // A reason quoting a value of the row: masked in logs (core's `pii`).
    let quoting = |field: &str, reason: Reason| Invalid::with_reason(&id, field, reason);
    let text = |f: &str| -> Result<Option<String>, Invalid> {
        match row.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(quoting(
                f,
                Reason::quoting(|q| format!("expected text, found {}", q.json(other))),
            )),
        }
    };
    let ts = |f: &str| -> Result<Option<Timestamp>, Invalid> {
        match row.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .and_then(chrono::DateTime::from_timestamp_micros)
                .map(Some)
                .ok_or_else(|| bad(f, format!("timestamp {n} out of range"))),
            Some(other) => Err(quoting(
                f,
                Reason::quoting(|q| format!("expected a timestamp, found {}", q.json(other))),
            )),
        }
    };
    let jsonf = |f: &str| -> Result<Option<Value>, Invalid> {
        match row.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                .map(|v| if v.is_null() { None } else { Some(v) })
                .map_err(|e| {
                    quoting(
                        f,
                        Reason::quoting(|q| {
                            format!("is not valid JSON ({})", q.detail(&e.to_string()))
                        }),
                    )
                }),
            Some(other) => Ok(Some(other.clone())),
        }
    };
    let deleted_at = ts("deleted_at")?;
    let canonical_name = match text("canonical_name")? {
        Some(n) => n,
        None if deleted_at.is_some() => String::new(),
        None => return Err(bad("canonical_name", "is NULL".into())),
    };
    let mut c = Contact::new(id.clone(), canonical_name);
    if let Some(v) = jsonf("external_ids")? {
        let Value::Object(m) = v else {
            return Err(bad("external_ids", "is not a JSON object".into()));
        };
        for (k, v) in m {
            let s = match v {
                Value::String(s) => s,
                Value::Null => continue,
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(quoting(
                        "external_ids",
                        Reason::quoting(|q| {
                            format!("id for `{k}` is not text: {}", q.json(&other))
                        }),
                    ))
                }
            };
            c.external_ids.insert(k, s);
        }
    }
    c.display_name = text("display_name")?;
    c.first_name = text("first_name")?;
    c.middle_name = text("middle_name")?;
    c.last_name = text("last_name")?;
    c.name_prefix = text("name_prefix")?;
    c.name_suffix = text("name_suffix")?;
    c.nickname = text("nickname")?;
    c.phonetic_name = text("phonetic_name")?;
    c.organization = text("organization")?;
    c.job_title = text("job_title")?;
    c.department = text("department")?;
    c.category_code = text("category_code")?;
    c.subcategory_code = text("subcategory_code")?;
    c.relationship_label = text("relationship_label")?;
    c.notes = text("notes")?;
    c.tags = match row.get("tags") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    c.source = text("source")?;
    c.created_at = ts("created_at")?;
    c.llm_context = jsonf("llm_context")?;
    c.relationships = jsonf("relationships")?;
    c.communication_stats = jsonf("communication_stats")?;
    c.social_profiles = jsonf("social_profiles")?;
    c.custom_attributes = jsonf("custom_attributes")?;
    let records = |f: &str, first: &str| -> Result<Vec<(String, Option<String>, bool)>, Invalid> {
        let Some(Value::Array(a)) = row.get(f) else {
            return Ok(Vec::new());
        };
        a.iter()
            .enumerate()
            .map(|(i, r)| {
                let addr = r
                    .get(first)
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(f, format!("entry {i} has no {first}")))?;
                Ok((
                    addr.to_string(),
                    r.get("label").and_then(Value::as_str).map(str::to_string),
                    r.get("is_primary")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                ))
            })
            .collect()
    };
    c.emails = records("emails", "address")?
        .into_iter()
        .map(|(address, label, is_primary)| Email {
            address,
            label,
            is_primary,
        })
        .collect();
    c.phones = records("phones", "number")?
        .into_iter()
        .map(|(number, label, is_primary)| Phone {
            number,
            label,
            is_primary,
        })
        .collect();
    c.version = match row.get("version") {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| bad("version", format!("{n} is not an integer")))?,
        _ => return Err(bad("version", "is NULL".into())),
    };
    c.last_updated = ts("last_updated")?;
    c.last_updated_by = text("last_updated_by")?;
    c.deleted_at = deleted_at;
    c.content_hash = text("content_hash")?;
    c.normalize();
    Ok(c)
}

/// `Ok` for rows that can be written; `Rejected` outcomes otherwise.
fn precheck(c: &Contact, int_id: bool) -> Option<WriteOutcome> {
    if c.contact_id.is_empty() {
        return Some(WriteOutcome::Rejected {
            field: "contact_id".into(),
            reason: "is empty".into(),
        });
    }
    if int_id && c.contact_id.parse::<i64>().is_err() {
        return Some(WriteOutcome::Rejected {
            field: "contact_id".into(),
            reason: format!(
                "{:?} is not an integer and the table's id column is INT64",
                c.contact_id
            ),
        });
    }
    None
}

#[async_trait]
impl RecordSink for BigQueryStore {
    /// One MERGE job for the batch (one `@rows` ARRAY<STRUCT> parameter).
    /// Duplicates of a `contact_id` in the batch are reduced to the last of
    /// the highest version before the MERGE (an earlier lower version in the
    /// batch counts as Applied, a later lower one as Stale). When the MERGE
    /// reports fewer affected rows than it was given, one more query reads
    /// the stored versions to tell which writes were Stale.
    async fn write_batch(&mut self, writes: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; writes.len()];
        let int_id = self.layout.int_id();
        // Normalized copies; the winner per contact_id.
        let mut winners: HashMap<String, usize> = HashMap::new();
        let mut running_max: HashMap<String, i64> = HashMap::new();
        let mut normalized: Vec<Contact> = Vec::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            let mut c = w.clone();
            c.normalize();
            if let Some(o) = precheck(&c, int_id) {
                outcomes[i] = Some(o);
                normalized.push(c);
                continue;
            }
            let max = running_max.entry(c.contact_id.clone()).or_insert(i64::MIN);
            if c.version < *max {
                outcomes[i] = Some(WriteOutcome::Stale {
                    stored_version: *max,
                });
            } else {
                *max = c.version;
                winners.insert(c.contact_id.clone(), i);
            }
            normalized.push(c);
        }
        if winners.is_empty() {
            return Ok(outcomes.into_iter().flatten().collect());
        }
        let mut order: Vec<usize> = winners.values().copied().collect();
        order.sort_unstable();
        let rows = ParamValue::Array(order.iter().map(|i| row_value(&normalized[*i])).collect());
        let param = QueryParam::new("rows", self.row_type.clone(), rows);
        let what = format!("MERGE of {} contacts", order.len());
        let res = self.query(&self.merge_sql, &[param], &what).await?;
        let affected = res.dml_affected_rows;
        let mut stored: HashMap<String, i64> = HashMap::new();
        if affected.is_none_or(|a| a < order.len() as u64) {
            let ids: Vec<String> = order
                .iter()
                .map(|i| normalized[*i].contact_id.clone())
                .collect();
            let (filter, p) = self.id_filter(&ids);
            let sql = format!(
                "SELECT {} AS contact_id, t.{} AS version FROM {} t WHERE {filter}",
                self.layout.id_text("t"),
                self.layout.col("version").quoted,
                self.table_sql
            );
            let res = self
                .query(&sql, &[p], "reading stored versions after MERGE")
                .await?;
            for r in res.rows {
                if let (Some(id), Some(v)) = (
                    r.get("contact_id").and_then(Value::as_str),
                    r.get("version").and_then(Value::as_i64),
                ) {
                    stored.insert(id.to_string(), v);
                }
            }
        }
        // The winner's outcome, shared by its earlier duplicates.
        let mut by_id: HashMap<&str, WriteOutcome> = HashMap::new();
        for i in &order {
            let c = &normalized[*i];
            let o = match stored.get(&c.contact_id) {
                Some(v) if *v > c.version => WriteOutcome::Stale { stored_version: *v },
                _ => WriteOutcome::Applied {
                    native_id: c.contact_id.clone(),
                },
            };
            by_id.insert(c.contact_id.as_str(), o);
        }
        Ok(outcomes
            .into_iter()
            .zip(&normalized)
            .map(|(o, c)| {
                o.or_else(|| by_id.get(c.contact_id.as_str()).cloned())
                    .unwrap_or_else(|| WriteOutcome::Applied {
                        native_id: c.contact_id.clone(),
                    })
            })
            .collect())
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

    async fn scan(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        let mut out = Vec::new();
        let mut cursor = after.map(str::to_string);
        let id = self.layout.id_text("t");
        while out.len() < limit {
            let want = (limit - out.len()).min(MAX_PAGE);
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
            cursor = res
                .rows
                .last()
                .and_then(|r| r.get("contact_id"))
                .and_then(Value::as_str)
                .map(str::to_string);
            out.extend(self.decode_rows(&res.rows));
            // A short page is the end; undecodable rows left out are made up
            // by reading on.
            if fetched < want || cursor.is_none() {
                break;
            }
        }
        Ok(out)
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

/// Reads a µs timestamp, a version and an id from a raw row, for the
/// checkpoint (also for rows that do not decode).
fn row_key(row: &Map<String, Value>) -> (String, i64, i64) {
    let id = match row.get("contact_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let version = row.get("version").and_then(Value::as_i64).unwrap_or(0);
    let lu = row.get("last_updated").and_then(Value::as_i64).unwrap_or(0);
    (id, version, lu)
}

#[async_trait]
impl ChangeSource for BigQueryStore {
    /// Rows whose `last_updated` is at or after the watermark minus the
    /// overlap, in (`last_updated`, `contact_id`) order, each row version
    /// once (see the checkpoint encoding on [`BigQueryStore`]'s module
    /// docs). Each change is the row as it is now. Rows that do not decode
    /// come as [`ChangeKind::Undecodable`] naming the contact and field.
    /// Rows with a NULL `last_updated` are never seen.
    async fn read_changes(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let cur = Cursor::parse(&self.cfg.name, from)?;
        let overlap = self.cfg.overlap.as_micros() as i64;
        let lu = &self.layout.col("last_updated").quoted;
        let mut params = Vec::new();
        let mut filter = format!("t.{lu} IS NOT NULL");
        if let Some(wm) = cur.wm {
            let since = chrono::DateTime::from_timestamp_micros(wm.saturating_sub(overlap))
                .unwrap_or_default();
            params.push(QueryParam::timestamp("since", &since));
            filter.push_str(&format!(" AND t.{lu} >= @since"));
        }
        if !cur.seen.is_empty() {
            // Rows already delivered inside the window are left out by the
            // query itself, so a page costs `limit + 1` rows however many
            // rows share the window. The key's last two parts are numbers,
            // so an id containing `|` stays unambiguous.
            let keys: Vec<String> = cur
                .seen
                .iter()
                .map(|(id, v, t)| format!("{id}|{v}|{t}"))
                .collect();
            params.push(QueryParam::strings("seen", &keys));
            filter.push_str(&format!(
                " AND CONCAT({}, '|', COALESCE(CAST(t.{} AS STRING), '0'), '|', CAST(UNIX_MICROS(t.{lu}) AS STRING)) NOT IN UNNEST(@seen)",
                self.layout.id_text("t"),
                self.layout.col("version").quoted,
            ));
        }
        let fetch = limit + 1;
        let sql = format!(
            "SELECT {} FROM {} t WHERE {filter} ORDER BY t.{lu}, {} LIMIT {fetch}",
            self.layout.select_list("t"),
            self.table_sql,
            self.layout.id_text("t"),
        );
        let res = self.query(&sql, &params, "change poll").await?;
        let fresh: Vec<&Map<String, Value>> = res
            .rows
            .iter()
            .filter(|r| !cur.seen.contains(&row_key(r)))
            .collect();
        let has_more = fresh.len() > limit;
        let mut next = cur.clone();
        let mut changes = Vec::new();
        for row in fresh.into_iter().take(limit) {
            let key = row_key(row);
            next.wm = Some(next.wm.map_or(key.2, |w| w.max(key.2)));
            let kind = match decode_contact(row) {
                Ok(c) => ChangeKind::Upsert(Box::new(c)),
                Err(invalid) => ChangeKind::Undecodable {
                    invalid,
                    payload: Some(Value::Object(row.clone())),
                },
            };
            changes.push(Change {
                native_id: key.0.clone(),
                kind,
            });
            next.seen.insert(key);
        }
        if changes.is_empty() {
            return Ok(ChangeBatch {
                changes,
                checkpoint: from.cloned().unwrap_or_else(|| cur.encode()),
                has_more: false,
            });
        }
        if let Some(wm) = next.wm {
            let floor = wm.saturating_sub(overlap);
            next.seen.retain(|(_, _, t)| *t >= floor);
        }
        Ok(ChangeBatch {
            changes,
            checkpoint: next.encode(),
            has_more,
        })
    }

    /// Nothing to discard: the table is the change log.
    async fn acknowledge(&mut self, _upto: &Checkpoint) -> Result<(), StoreError> {
        Ok(())
    }
}

impl StoreInfo for BigQueryStore {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn keeps_version(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        let mut c = Cursor {
            v: 1,
            wm: Some(1_700_000_000_000_000),
            seen: BTreeSet::new(),
        };
        c.seen.insert(("a".into(), 2, 1_699_999_999_000_000));
        let cp = c.encode();
        assert_eq!(Cursor::parse("s", Some(&cp)).unwrap(), c);
        assert!(Cursor::parse("s", Some(&Checkpoint::new("17"))).is_err());
    }

    #[test]
    fn decode_reports_the_field() {
        let mut row = Map::new();
        row.insert("contact_id".into(), json!("c1"));
        row.insert("canonical_name".into(), json!("Ann"));
        row.insert("version".into(), json!(1));
        row.insert("llm_context".into(), json!("{not json"));
        let e = decode_contact(&row).unwrap_err();
        assert_eq!((e.record.as_str(), e.field.as_str()), ("c1", "llm_context"));
        row.insert("llm_context".into(), json!("{\"a\":1}"));
        row.remove("canonical_name");
        let e = decode_contact(&row).unwrap_err();
        assert_eq!(e.field, "canonical_name");
        row.insert("canonical_name".into(), json!("Ann"));
        let c = decode_contact(&row).unwrap();
        assert_eq!(c.llm_context, Some(json!({"a": 1})));
    }
}
