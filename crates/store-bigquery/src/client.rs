//! A thin client over the BigQuery v2 REST endpoints the store needs:
//! datasets get/insert/delete, tables get/insert, tabledata.insertAll,
//! jobs.query and jobs.getQueryResults (waiting and paging).
//!
//! Rules it keeps (see `shared/bigquery/README.md`): TIMESTAMP parameters as
//! RFC 3339 strings and results as i64 microseconds
//! (`formatOptions.useInt64Timestamp=true`); INT64/BOOL parsed from strings;
//! INT64/INTEGER and BOOL/BOOLEAN both accepted; no gzip; nulls omitted; the
//! HTTP status and the body (`error`, `errors[]`, `insertErrors[]`) both
//! checked. Transient failures are retried inside the client with
//! exponential backoff and jitter, a bounded number of times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::{json, Map, Value};

use contact_sync_core::clock::ClockSkew;

use crate::auth::{NoAuth, TokenProvider};
use crate::error::{from_body, truncate, BqError};

/// Where and how to reach BigQuery.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// API root without `/bigquery/v2`: `https://bigquery.googleapis.com`,
    /// or the emulator's `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Project that runs the jobs and holds the dataset.
    pub project: String,
    /// Job and dataset location (`US`, `EU`, ...); `None` lets BigQuery pick.
    pub location: Option<String>,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// How long one jobs.query / getQueryResults call waits server-side.
    pub query_wait: Duration,
    /// Retries of a transient failure (after the first try).
    pub max_retries: usize,
    /// First backoff delay; doubles per retry, with jitter.
    pub min_backoff: Duration,
    /// Longest backoff delay.
    pub max_backoff: Duration,
    /// Rows per result page (`maxResults`).
    pub page_size: u32,
}

impl ClientConfig {
    /// Production defaults for `project` on `https://bigquery.googleapis.com`.
    pub fn new(project: impl Into<String>) -> Self {
        ClientConfig {
            base_url: "https://bigquery.googleapis.com".into(),
            project: project.into(),
            location: None,
            request_timeout: Duration::from_secs(60),
            query_wait: Duration::from_secs(10),
            max_retries: 5,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            page_size: 10_000,
        }
    }

    /// Defaults for a local emulator at `base_url` (`http://127.0.0.1:PORT`).
    pub fn emulator(base_url: impl Into<String>, project: impl Into<String>) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            ..Self::new(project)
        }
    }
}

/// Counters of what the client did (shared by clones of the client).
#[derive(Debug, Default)]
pub struct ClientStats {
    jobs: AtomicU64,
    calls: AtomicU64,
    retries: AtomicU64,
    bytes_processed: AtomicU64,
    bytes_billed: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

/// A snapshot of [`ClientStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// jobs.query calls that were sent (one per query job; a retried send
    /// counts again, since it may have started another job).
    pub jobs: u64,
    /// HTTP calls of any kind (jobs, result pages, insertAll, metadata).
    pub calls: u64,
    /// Calls retried after a transient failure.
    pub retries: u64,
    /// Sum of the finished jobs' `totalBytesProcessed`.
    pub bytes_processed: u64,
    /// Sum of the finished jobs' `totalBytesBilled` (what on-demand
    /// pricing charges: at least 10 MB per table referenced by a query).
    pub bytes_billed: u64,
    /// Request bodies sent (JSON bytes, every attempt; headers not counted).
    pub bytes_sent: u64,
    /// Answer bodies received (JSON bytes; headers not counted).
    pub bytes_received: u64,
}

impl ClientStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            jobs: self.jobs.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            bytes_processed: self.bytes_processed.load(Ordering::Relaxed),
            bytes_billed: self.bytes_billed.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }
}

/// One column of a table or result schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// Upper-case standard SQL type: `STRING`, `INT64`, `BOOL`, `TIMESTAMP`,
    /// `JSON`, `RECORD`, ... (legacy `INTEGER`/`BOOLEAN`/`STRUCT` normalized).
    pub ty: String,
    /// `NULLABLE`, `REQUIRED` or `REPEATED`.
    pub mode: String,
    /// Sub-fields of a `RECORD`.
    pub fields: Vec<Field>,
}

impl Field {
    /// A NULLABLE column.
    pub fn nullable(name: &str, ty: &str) -> Self {
        Field {
            name: name.into(),
            ty: ty.into(),
            mode: "NULLABLE".into(),
            fields: Vec::new(),
        }
    }
    /// A REQUIRED column.
    pub fn required(name: &str, ty: &str) -> Self {
        Field {
            mode: "REQUIRED".into(),
            ..Self::nullable(name, ty)
        }
    }
    /// A REPEATED column.
    pub fn repeated(name: &str, ty: &str) -> Self {
        Field {
            mode: "REPEATED".into(),
            ..Self::nullable(name, ty)
        }
    }
    /// A REPEATED RECORD column.
    pub fn repeated_record(name: &str, fields: Vec<Field>) -> Self {
        Field {
            fields,
            ..Self::repeated(name, "RECORD")
        }
    }
    pub fn is_repeated(&self) -> bool {
        self.mode == "REPEATED"
    }

    fn from_json(v: &Value) -> Field {
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("STRING");
        Field {
            name: v
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            ty: normalize_type(ty).to_string(),
            mode: v
                .get("mode")
                .and_then(Value::as_str)
                .unwrap_or("NULLABLE")
                .to_ascii_uppercase(),
            fields: v
                .get("fields")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(Field::from_json).collect())
                .unwrap_or_default(),
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("type".into(), json!(self.ty));
        m.insert("mode".into(), json!(self.mode));
        if !self.fields.is_empty() {
            m.insert(
                "fields".into(),
                Value::Array(self.fields.iter().map(Field::to_json).collect()),
            );
        }
        Value::Object(m)
    }
}

/// Maps legacy type names to standard SQL ones.
pub fn normalize_type(ty: &str) -> &str {
    match ty.to_ascii_uppercase().as_str() {
        "INTEGER" | "INT64" => "INT64",
        "BOOLEAN" | "BOOL" => "BOOL",
        "FLOAT" | "FLOAT64" => "FLOAT64",
        "RECORD" | "STRUCT" => "RECORD",
        "STRING" => "STRING",
        "TIMESTAMP" => "TIMESTAMP",
        "JSON" => "JSON",
        "NUMERIC" => "NUMERIC",
        "BIGNUMERIC" => "BIGNUMERIC",
        "DATE" => "DATE",
        "DATETIME" => "DATETIME",
        "TIME" => "TIME",
        "BYTES" => "BYTES",
        "GEOGRAPHY" => "GEOGRAPHY",
        _ => "OTHER",
    }
}

/// The type of a query parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamType {
    /// `STRING`, `INT64`, `BOOL`, `TIMESTAMP`, ...
    Scalar(&'static str),
    Array(Box<ParamType>),
    Struct(Vec<(String, ParamType)>),
}

impl ParamType {
    fn to_json(&self) -> Value {
        match self {
            ParamType::Scalar(t) => json!({ "type": t }),
            ParamType::Array(inner) => json!({ "type": "ARRAY", "arrayType": inner.to_json() }),
            ParamType::Struct(fields) => json!({
                "type": "STRUCT",
                "structTypes": fields
                    .iter()
                    .map(|(n, t)| json!({ "name": n, "type": t.to_json() }))
                    .collect::<Vec<_>>(),
            }),
        }
    }
}

/// The value of a query parameter. Scalars are strings in BigQuery's text
/// form (INT64 as decimal, BOOL as `true`/`false`, TIMESTAMP as RFC 3339).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Null,
    Scalar(String),
    Array(Vec<ParamValue>),
    /// Fields by name; `Null` fields are omitted on the wire.
    Struct(Vec<(String, ParamValue)>),
}

impl ParamValue {
    /// Bytes this value takes in a request body (its JSON form).
    pub(crate) fn wire_size(&self) -> usize {
        self.to_json().to_string().len()
    }

    fn to_json(&self) -> Value {
        match self {
            ParamValue::Null => json!({}),
            ParamValue::Scalar(s) => json!({ "value": s }),
            ParamValue::Array(items) => {
                json!({ "arrayValues": items.iter().map(ParamValue::to_json).collect::<Vec<_>>() })
            }
            ParamValue::Struct(fields) => {
                let mut m = Map::new();
                for (n, v) in fields {
                    if *v != ParamValue::Null {
                        m.insert(n.clone(), v.to_json());
                    }
                }
                json!({ "structValues": m })
            }
        }
    }
}

/// A named query parameter (`@name` in SQL).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryParam {
    pub name: String,
    pub ty: ParamType,
    pub value: ParamValue,
}

impl QueryParam {
    pub fn new(name: impl Into<String>, ty: ParamType, value: ParamValue) -> Self {
        QueryParam {
            name: name.into(),
            ty,
            value,
        }
    }
    /// A STRING parameter.
    pub fn string(name: &str, v: impl Into<String>) -> Self {
        Self::new(
            name,
            ParamType::Scalar("STRING"),
            ParamValue::Scalar(v.into()),
        )
    }
    /// An INT64 parameter.
    pub fn int64(name: &str, v: i64) -> Self {
        Self::new(
            name,
            ParamType::Scalar("INT64"),
            ParamValue::Scalar(v.to_string()),
        )
    }
    /// A TIMESTAMP parameter (sent as RFC 3339 with microseconds).
    pub fn timestamp(name: &str, v: &contact_sync_core::Timestamp) -> Self {
        Self::new(
            name,
            ParamType::Scalar("TIMESTAMP"),
            ParamValue::Scalar(contact_sync_core::model::format_ts(v)),
        )
    }
    /// An ARRAY<STRING> parameter.
    pub fn strings(name: &str, v: &[String]) -> Self {
        Self::new(
            name,
            ParamType::Array(Box::new(ParamType::Scalar("STRING"))),
            ParamValue::Array(v.iter().map(|s| ParamValue::Scalar(s.clone())).collect()),
        )
    }
    /// An ARRAY<INT64> parameter.
    pub fn int64s(name: &str, v: &[i64]) -> Self {
        Self::new(
            name,
            ParamType::Array(Box::new(ParamType::Scalar("INT64"))),
            ParamValue::Array(
                v.iter()
                    .map(|i| ParamValue::Scalar(i.to_string()))
                    .collect(),
            ),
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "parameterType": self.ty.to_json(),
            "parameterValue": self.value.to_json(),
        })
    }
}

/// A finished query: decoded rows and DML statistics.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    /// The job's id.
    pub job_id: String,
    /// The result schema (empty for DML).
    pub schema: Vec<Field>,
    /// Rows as JSON objects keyed by column name, typed by the schema:
    /// STRING and JSON as strings (JSON undecoded), INT64 and TIMESTAMP
    /// (microseconds) as integers, BOOL as booleans, RECORD as objects,
    /// REPEATED as arrays, NULL as `null`.
    pub rows: Vec<Map<String, Value>>,
    /// Rows a DML statement inserted, updated or deleted.
    pub dml_affected_rows: Option<u64>,
    /// The job's `totalBytesProcessed` (0 when not reported).
    pub bytes_processed: u64,
    /// The job's `totalBytesBilled` (0 when not reported).
    pub bytes_billed: u64,
}

/// How a new table is laid out, so queries prune instead of scanning it
/// whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableOptions {
    /// Clustering columns (up to four), e.g. `contact_id`.
    pub cluster_by: Vec<String>,
    /// A TIMESTAMP column to partition by month (monthly, so that even a
    /// century of back-dated values stays under BigQuery's 4,000 partitions
    /// per table).
    pub partition_by_month: Option<String>,
}

/// One row for tabledata.insertAll.
#[derive(Debug, Clone)]
pub struct InsertRow {
    /// Deduplication id (best effort on real BigQuery; enforced by the
    /// strict emulator).
    pub insert_id: Option<String>,
    /// Column → value, in insertAll's JSON form (TIMESTAMP as RFC 3339,
    /// JSON columns as JSON-encoded strings, nulls omitted).
    pub json: Map<String, Value>,
}

/// A BigQuery REST client. Cheap to clone (clones share the HTTP pool, the
/// token provider and the counters).
#[derive(Clone)]
pub struct BigQueryClient {
    http: reqwest::Client,
    cfg: Arc<ClientConfig>,
    auth: Arc<dyn TokenProvider>,
    stats: Arc<ClientStats>,
}

impl std::fmt::Debug for BigQueryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigQueryClient")
            .field("base_url", &self.cfg.base_url)
            .field("project", &self.cfg.project)
            .field("location", &self.cfg.location)
            .field("auth", &self.auth)
            .finish()
    }
}

enum Method {
    Get,
    Post,
    Delete,
}

impl BigQueryClient {
    /// A client with the given auth ([`NoAuth`] for the emulator).
    pub fn new(cfg: ClientConfig, auth: Arc<dyn TokenProvider>) -> Result<Self, BqError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .build()
            .map_err(|e| BqError::permanent(format!("building the HTTP client: {e}")))?;
        Ok(BigQueryClient {
            http,
            cfg: Arc::new(cfg),
            auth,
            stats: Arc::new(ClientStats::default()),
        })
    }

    /// An unauthenticated client for an emulator at `base_url`.
    pub fn emulator(base_url: &str, project: &str) -> Result<Self, BqError> {
        Self::new(ClientConfig::emulator(base_url, project), Arc::new(NoAuth))
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    pub fn project(&self) -> &str {
        &self.cfg.project
    }

    /// What this client (and its clones) did so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/bigquery/v2/projects/{}{}",
            self.cfg.base_url.trim_end_matches('/'),
            self.cfg.project,
            path
        )
    }

    /// One HTTP call with bounded retries of transient failures. Returns the
    /// parsed body of a 2xx answer; anything else is an error naming
    /// `context`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        context: &str,
        is_job: bool,
    ) -> Result<Value, BqError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.cfg.min_backoff)
            .with_max_delay(self.cfg.max_backoff)
            .with_max_times(self.cfg.max_retries)
            .with_jitter();
        let url = self.url(path);
        let attempt = || async {
            self.stats.calls.fetch_add(1, Ordering::Relaxed);
            if is_job {
                self.stats.jobs.fetch_add(1, Ordering::Relaxed);
            }
            self.call_once(&method, &url, query, body, context).await
        };
        attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &BqError| e.retry_in_client())
            .notify(|e, d| {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, delay_ms = d.as_millis() as u64, "bigquery: retrying");
            })
            .await
    }

    async fn call_once(
        &self,
        method: &Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        context: &str,
    ) -> Result<Value, BqError> {
        let mut req = match method {
            Method::Get => self.http.get(url),
            Method::Post => self.http.post(url),
            Method::Delete => self.http.delete(url),
        };
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            let bytes = serde_json::to_vec(b)
                .map_err(|e| BqError::permanent(format!("{context}: encoding the request: {e}")))?;
            self.stats
                .bytes_sent
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        if let Some(tok) = self.auth.token(&self.http).await.map_err(|e| BqError {
            message: format!("{context}: {}", e.message),
            ..e
        })? {
            req = req.bearer_auth(tok.secret());
        }
        let resp = req.send().await.map_err(|e| {
            BqError::transient(format!("{context}: request failed: {}", e.without_url()))
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| {
            BqError::transient(format!(
                "{context}: HTTP {status}: reading the answer failed: {}",
                e.without_url()
            ))
        })?;
        self.stats
            .bytes_received
            .fetch_add(text.len() as u64, Ordering::Relaxed);
        let parsed: Option<Value> = if text.trim().is_empty() {
            Some(Value::Object(Map::new()))
        } else {
            serde_json::from_str(&text).ok()
        };
        if status == 401 {
            self.auth.invalidate();
        }
        if !(200..300).contains(&status) {
            if let Some(err) = parsed.as_ref().and_then(|v| v.get("error")) {
                return Err(from_body(context, Some(status), err));
            }
            let class = crate::error::classify(Some(status), None);
            return Err(BqError {
                class,
                status: Some(status),
                reason: None,
                message: format!("{context}: HTTP {status}: {}", truncate(text.trim(), 300)),
            });
        }
        let Some(v) = parsed else {
            return Err(BqError::transient(format!(
                "{context}: HTTP {status}: answer is not JSON"
            )));
        };
        if let Some(err) = v.get("error") {
            return Err(from_body(context, Some(status), err));
        }
        Ok(v)
    }

    /// datasets.get: `Ok(false)` when the dataset does not exist.
    pub async fn dataset_exists(&self, dataset: &str) -> Result<bool, BqError> {
        let ctx = format!("get dataset {}.{dataset}", self.cfg.project);
        match self
            .call(
                Method::Get,
                &format!("/datasets/{dataset}"),
                &[],
                None,
                &ctx,
                false,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// datasets.insert; an existing dataset is not an error.
    pub async fn create_dataset(&self, dataset: &str) -> Result<(), BqError> {
        let ctx = format!("create dataset {}.{dataset}", self.cfg.project);
        let mut body = json!({
            "datasetReference": { "projectId": self.cfg.project, "datasetId": dataset },
        });
        if let Some(loc) = &self.cfg.location {
            body["location"] = json!(loc);
        }
        match self
            .call(Method::Post, "/datasets", &[], Some(&body), &ctx, false)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_duplicate() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// datasets.delete with its tables (`deleteContents=true`); a missing
    /// dataset is not an error.
    pub async fn delete_dataset(&self, dataset: &str) -> Result<(), BqError> {
        let ctx = format!("delete dataset {}.{dataset}", self.cfg.project);
        match self
            .call(
                Method::Delete,
                &format!("/datasets/{dataset}"),
                &[("deleteContents", "true".into())],
                None,
                &ctx,
                false,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// tables.get: the table's schema, or `None` when it does not exist.
    pub async fn table_schema(
        &self,
        dataset: &str,
        table: &str,
    ) -> Result<Option<Vec<Field>>, BqError> {
        let ctx = format!("get table {}.{dataset}.{table}", self.cfg.project);
        match self
            .call(
                Method::Get,
                &format!("/datasets/{dataset}/tables/{table}"),
                &[],
                None,
                &ctx,
                false,
            )
            .await
        {
            Ok(v) => Ok(Some(
                v.pointer("/schema/fields")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(Field::from_json).collect())
                    .unwrap_or_default(),
            )),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// tables.get: the table resource as BigQuery returns it
    /// (`lastModifiedTime`, `numRows`, `streamingBuffer`, `clustering`,
    /// ...), or `None` when the table does not exist. Free: no job.
    pub async fn table_resource(
        &self,
        dataset: &str,
        table: &str,
    ) -> Result<Option<Value>, BqError> {
        let ctx = format!("get table {}.{dataset}.{table}", self.cfg.project);
        match self
            .call(
                Method::Get,
                &format!("/datasets/{dataset}/tables/{table}"),
                &[],
                None,
                &ctx,
                false,
            )
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// tables.insert; an existing table is not an error.
    pub async fn create_table(
        &self,
        dataset: &str,
        table: &str,
        schema: &[Field],
        description: &str,
    ) -> Result<(), BqError> {
        self.create_table_with(
            dataset,
            table,
            schema,
            description,
            &TableOptions::default(),
        )
        .await
    }

    /// tables.insert with clustering and partitioning; an existing table is
    /// not an error (and is left as it is).
    pub async fn create_table_with(
        &self,
        dataset: &str,
        table: &str,
        schema: &[Field],
        description: &str,
        opts: &TableOptions,
    ) -> Result<(), BqError> {
        let ctx = format!("create table {}.{dataset}.{table}", self.cfg.project);
        let mut body = json!({
            "tableReference": { "projectId": self.cfg.project, "datasetId": dataset, "tableId": table },
            "description": description,
            "schema": { "fields": schema.iter().map(Field::to_json).collect::<Vec<_>>() },
        });
        if !opts.cluster_by.is_empty() {
            body["clustering"] = json!({ "fields": opts.cluster_by });
        }
        if let Some(col) = &opts.partition_by_month {
            body["timePartitioning"] = json!({ "type": "MONTH", "field": col });
        }
        match self
            .call(
                Method::Post,
                &format!("/datasets/{dataset}/tables"),
                &[],
                Some(&body),
                &ctx,
                false,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_duplicate() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// tabledata.insertAll (streaming insert). Any `insertErrors[]` fails the
    /// call, naming the table and the first rows' indexes and reasons.
    pub async fn insert_all(
        &self,
        dataset: &str,
        table: &str,
        rows: &[InsertRow],
    ) -> Result<(), BqError> {
        if rows.is_empty() {
            return Ok(());
        }
        let ctx = format!(
            "insertAll of {} rows into {}.{dataset}.{table}",
            rows.len(),
            self.cfg.project
        );
        let body = json!({
            "kind": "bigquery#tableDataInsertAllRequest",
            "rows": rows.iter().map(|r| {
                let mut m = Map::new();
                if let Some(id) = &r.insert_id {
                    m.insert("insertId".into(), json!(id));
                }
                m.insert("json".into(), Value::Object(r.json.clone()));
                Value::Object(m)
            }).collect::<Vec<_>>(),
        });
        let v = self
            .call(
                Method::Post,
                &format!("/datasets/{dataset}/tables/{table}/insertAll"),
                &[],
                Some(&body),
                &ctx,
                false,
            )
            .await?;
        if let Some(errs) = v.get("insertErrors").and_then(Value::as_array) {
            if !errs.is_empty() {
                let detail: Vec<String> = errs
                    .iter()
                    .take(5)
                    .map(|e| {
                        let idx = e.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let first = e.pointer("/errors/0");
                        let reason = first
                            .and_then(|f| f.get("reason"))
                            .and_then(Value::as_str)
                            .unwrap_or("invalid");
                        let msg = first
                            .and_then(|f| f.get("message"))
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        format!("row {idx}: {reason} {}", truncate(msg, 200))
                    })
                    .collect();
                return Err(BqError {
                    class: contact_sync_connector::RetryClass::Permanent,
                    status: Some(200),
                    reason: Some("insertErrors".into()),
                    message: format!("{ctx}: {} rows refused: {}", errs.len(), detail.join("; ")),
                });
            }
        }
        Ok(())
    }

    /// Runs a GoogleSQL query with named parameters (jobs.query), waits
    /// for it (jobs.getQueryResults while `jobComplete` is false) and reads
    /// every result page. `context` names what is being done, with the
    /// table, for error messages.
    pub async fn query(
        &self,
        sql: &str,
        params: &[QueryParam],
        context: &str,
    ) -> Result<QueryResult, BqError> {
        let wait_ms = self.cfg.query_wait.as_millis() as u64;
        let mut body = json!({
            "query": sql,
            "useLegacySql": false,
            "parameterMode": "NAMED",
            "queryParameters": params.iter().map(QueryParam::to_json).collect::<Vec<_>>(),
            "formatOptions": { "useInt64Timestamp": true },
            "timeoutMs": wait_ms,
            "maxResults": self.cfg.page_size,
            // Makes a retried send of the same call idempotent on BigQuery.
            "requestId": uuid::Uuid::new_v4().to_string(),
        });
        if let Some(loc) = &self.cfg.location {
            body["location"] = json!(loc);
        }
        let mut resp = self
            .call(Method::Post, "/queries", &[], Some(&body), context, true)
            .await?;
        check_job_errors(context, &resp)?;
        let job_id = resp
            .pointer("/jobReference/jobId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let location = resp
            .pointer("/jobReference/location")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| self.cfg.location.clone());
        let mut base_q: Vec<(&str, String)> = vec![
            ("formatOptions.useInt64Timestamp", "true".into()),
            ("timeoutMs", wait_ms.to_string()),
            ("maxResults", self.cfg.page_size.to_string()),
        ];
        if let Some(loc) = &location {
            base_q.push(("location", loc.clone()));
        }
        // Wait for the job.
        let mut waited = 0u32;
        while resp.get("jobComplete").and_then(Value::as_bool) == Some(false) {
            if job_id.is_empty() {
                return Err(BqError::permanent(format!(
                    "{context}: job not complete and no jobReference in the answer"
                )));
            }
            waited += 1;
            if waited > 1 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            resp = self
                .call(
                    Method::Get,
                    &format!("/queries/{job_id}"),
                    &base_q,
                    None,
                    context,
                    false,
                )
                .await?;
            check_job_errors(context, &resp)?;
        }
        let num = |k: &str| {
            resp.get(k)
                .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_u64()))
        };
        let processed = num("totalBytesProcessed").unwrap_or(0);
        let billed = num("totalBytesBilled").unwrap_or(0);
        self.stats
            .bytes_processed
            .fetch_add(processed, Ordering::Relaxed);
        self.stats.bytes_billed.fetch_add(billed, Ordering::Relaxed);
        let mut out = QueryResult {
            bytes_processed: processed,
            bytes_billed: billed,
            job_id: job_id.clone(),
            schema: resp
                .pointer("/schema/fields")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(Field::from_json).collect())
                .unwrap_or_default(),
            rows: Vec::new(),
            dml_affected_rows: resp
                .get("numDmlAffectedRows")
                .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_u64())),
        };
        loop {
            if let Some(rows) = resp.get("rows").and_then(Value::as_array) {
                for r in rows {
                    out.rows.push(decode_row(&out.schema, r).map_err(|e| {
                        BqError::permanent(format!("{context}: undecodable result row: {e}"))
                    })?);
                }
            }
            let Some(token) = resp
                .get("pageToken")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                break;
            };
            if job_id.is_empty() {
                break;
            }
            let mut q = base_q.clone();
            q.push(("pageToken", token));
            resp = self
                .call(
                    Method::Get,
                    &format!("/queries/{job_id}"),
                    &q,
                    None,
                    context,
                    false,
                )
                .await?;
            check_job_errors(context, &resp)?;
        }
        Ok(out)
    }

    /// How far BigQuery's clock is from this machine's: `SELECT
    /// CURRENT_TIMESTAMP()` (one query job; BigQuery's time when the job
    /// ran, in µs) against the middle of the whole call, send to result.
    /// Succeeding also shows the credentials can run a query job.
    pub async fn clock_skew(&self) -> Result<ClockSkew, BqError> {
        let ctx = "reading BigQuery's clock (SELECT CURRENT_TIMESTAMP())";
        let sent = contact_sync_core::model::now();
        let r = self
            .query("SELECT CURRENT_TIMESTAMP() AS now", &[], ctx)
            .await?;
        let received = contact_sync_core::model::now();
        let server = r
            .rows
            .first()
            .and_then(|row| row.get("now"))
            .and_then(Value::as_i64)
            .and_then(chrono::DateTime::from_timestamp_micros)
            .ok_or_else(|| BqError::permanent(format!("{ctx}: no timestamp in the answer")))?;
        Ok(ClockSkew::measure(
            server,
            chrono::TimeDelta::zero(),
            sent,
            received,
        ))
    }
}

/// A 200 answer of jobs.query / getQueryResults can still carry a failed
/// job (`errors[]`, or `status.errorResult`).
fn check_job_errors(context: &str, resp: &Value) -> Result<(), BqError> {
    if let Some(err) = resp.pointer("/status/errorResult") {
        return Err(from_body(context, None, err));
    }
    if let Some(errs) = resp.get("errors").and_then(Value::as_array) {
        if let Some(first) = errs.first() {
            return Err(from_body(context, None, first));
        }
    }
    Ok(())
}

/// Decodes one `{"f": [{"v": ...}]}` row by its schema.
fn decode_row(schema: &[Field], row: &Value) -> Result<Map<String, Value>, String> {
    let cells = row
        .get("f")
        .and_then(Value::as_array)
        .ok_or("row without `f`")?;
    let mut out = Map::with_capacity(schema.len());
    for (field, cell) in schema.iter().zip(cells) {
        let v = cell.get("v").unwrap_or(&Value::Null);
        out.insert(field.name.clone(), decode_cell(field, v)?);
    }
    Ok(out)
}

fn decode_cell(field: &Field, v: &Value) -> Result<Value, String> {
    if field.is_repeated() {
        let Some(items) = v.as_array() else {
            return Ok(Value::Array(Vec::new()));
        };
        let scalar = Field {
            mode: "NULLABLE".into(),
            ..field.clone()
        };
        return items
            .iter()
            .map(|i| decode_cell(&scalar, i.get("v").unwrap_or(&Value::Null)))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if v.is_null() {
        return Ok(Value::Null);
    }
    let text = || {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    Ok(match field.ty.as_str() {
        "RECORD" => Value::Object(decode_row(&field.fields, v)?),
        "INT64" | "TIMESTAMP" => {
            let s = text();
            let n: i64 = s
                .parse()
                .or_else(|_| s.parse::<f64>().map(|f| f as i64))
                .map_err(|_| {
                    format!(
                        "column `{}`: {} value {s:?} is not an integer",
                        field.name, field.ty
                    )
                })?;
            Value::from(n)
        }
        "BOOL" => match text().to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => return Err(format!("column `{}`: BOOL value {other:?}", field.name)),
        },
        "FLOAT64" => text()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        _ => Value::String(text()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_typed_rows() {
        let schema = vec![
            Field::nullable("id", "STRING"),
            Field::nullable("n", "INTEGER"),
            Field::nullable("ts", "TIMESTAMP"),
            Field::nullable("b", "BOOLEAN"),
            Field::repeated("tags", "STRING"),
            Field::repeated_record(
                "emails",
                vec![
                    Field::nullable("address", "STRING"),
                    Field::nullable("is_primary", "BOOL"),
                ],
            ),
        ];
        let schema: Vec<Field> = schema
            .into_iter()
            .map(|f| Field::from_json(&f.to_json()))
            .collect();
        let row = json!({"f": [{"v": "a"}, {"v": "42"}, {"v": "1704164645123456"}, {"v": "true"},
            {"v": [{"v": "x"}]}, {"v": [{"v": {"f": [{"v": "a@b.c"}, {"v": null}]}}]}]});
        let m = decode_row(&schema, &row).unwrap();
        assert_eq!(m["id"], json!("a"));
        assert_eq!(m["n"], json!(42));
        assert_eq!(m["ts"], json!(1704164645123456i64));
        assert_eq!(m["b"], json!(true));
        assert_eq!(m["tags"], json!(["x"]));
        assert_eq!(
            m["emails"],
            json!([{"address": "a@b.c", "is_primary": null}])
        );
    }

    #[test]
    fn params_omit_nulls() {
        let p = QueryParam::new(
            "rows",
            ParamType::Array(Box::new(ParamType::Struct(vec![
                ("a".into(), ParamType::Scalar("STRING")),
                ("b".into(), ParamType::Scalar("INT64")),
            ]))),
            ParamValue::Array(vec![ParamValue::Struct(vec![
                ("a".into(), ParamValue::Null),
                ("b".into(), ParamValue::Scalar("1".into())),
            ])]),
        );
        let j = p.to_json();
        assert_eq!(
            j["parameterValue"],
            json!({"arrayValues": [{"structValues": {"b": {"value": "1"}}}]})
        );
        assert_eq!(
            j["parameterType"]["arrayType"]["structTypes"][1]["type"]["type"],
            "INT64"
        );
    }
}
