//! What each store holds, read directly as a user (or an auditor) would:
//! SQL in SQLite and Postgres, a query through the BigQuery REST API, the
//! Twenty fake's stored people. Only what the soak checks: liveness, the
//! five edited fields, the primary email and the category (category X is
//! not pushed to Twenty).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use contact_sync_bigquery::BigQueryClient;
use serde_json::Value;

/// The stores of the soak. `Canonical` is BigQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreId {
    Canonical,
    Local,
    Postgres,
    Twenty,
}

impl StoreId {
    pub const ALL: [StoreId; 4] = [
        StoreId::Canonical,
        StoreId::Local,
        StoreId::Postgres,
        StoreId::Twenty,
    ];

    /// The store's name in the daemon's configuration.
    pub fn name(self) -> &'static str {
        match self {
            StoreId::Canonical => "canonical",
            StoreId::Local => "local",
            StoreId::Postgres => "postgres",
            StoreId::Twenty => "twenty",
        }
    }
}

/// The fields users edit: the canonical name, and Twenty's name for it.
pub const FIELDS: [(&str, &str); 5] = [
    ("job_title", "jobTitle"),
    ("notes", "contactNotes"),
    ("nickname", "nickname"),
    ("organization", "organization"),
    ("department", "department"),
];

/// One record of a store, as far as the soak looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub live: bool,
    /// The values of [`FIELDS`], in order (`None` = empty).
    pub fields: [Option<String>; 5],
    /// The primary email, lower-cased.
    pub email: Option<String>,
    pub category: Option<String>,
    /// Twenty's person id (Twenty only).
    pub person_id: Option<String>,
}

/// A store's records at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// By `contact_id`; more than one row = the contact is held twice.
    pub rows: BTreeMap<String, Vec<Row>>,
    /// Records without a `contact_id` (people created in Twenty that the
    /// daemon has not stamped yet).
    pub unidentified: Vec<Row>,
    /// When the read finished.
    pub at: Instant,
    /// How long the read took.
    pub took: Duration,
}

impl Snapshot {
    fn new(started: Instant) -> Snapshot {
        Snapshot {
            rows: BTreeMap::new(),
            unidentified: Vec::new(),
            at: Instant::now(),
            took: started.elapsed(),
        }
    }

    fn push(&mut self, contact_id: Option<String>, row: Row) {
        match contact_id.filter(|id| !id.trim().is_empty()) {
            Some(id) => self.rows.entry(id).or_default().push(row),
            None => self.unidentified.push(row),
        }
    }

    /// The contact's live record (the first, when held twice).
    pub fn live(&self, contact_id: &str) -> Option<&Row> {
        self.rows.get(contact_id)?.iter().find(|r| r.live)
    }

    /// Every live record: (contact_id or `None`, row).
    pub fn live_rows(&self) -> impl Iterator<Item = (Option<&str>, &Row)> {
        self.rows
            .iter()
            .flat_map(|(id, rows)| rows.iter().map(move |r| (Some(id.as_str()), r)))
            .chain(self.unidentified.iter().map(|r| (None, r)))
            .filter(|(_, r)| r.live)
    }

    /// Live records holding `email` as their primary email.
    pub fn live_with_email<'a>(
        &'a self,
        email: &'a str,
    ) -> impl Iterator<Item = (Option<&'a str>, &'a Row)> + 'a {
        self.live_rows()
            .filter(move |(_, r)| r.email.as_deref() == Some(email))
    }
}

/// Trimmed text, `None` when empty (every store's way of writing nothing).
fn text(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn json_text(v: &Value) -> Option<String> {
    text(v.as_str().map(str::to_string))
}

/// The primary address of an `emails` JSON array: the first flagged
/// `is_primary`, else the first.
fn primary_email(emails: &Value) -> Option<String> {
    let list = emails.as_array()?;
    let pick = list
        .iter()
        .find(|e| e.get("is_primary").and_then(Value::as_bool) == Some(true))
        .or_else(|| list.first())?;
    json_text(pick.get("address")?).map(|a| a.to_lowercase())
}

fn emails_text(s: Option<String>) -> Option<String> {
    let v: Value = serde_json::from_str(s.as_deref()?).ok()?;
    primary_email(&v)
}

const SQL_COLUMNS: &str =
    "contact_id, job_title, notes, nickname, organization, department, category_code";

/// local.db, read-only.
pub fn read_sqlite(path: &Path) -> anyhow::Result<Snapshot> {
    let started = Instant::now();
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {SQL_COLUMNS}, deleted_at IS NULL, emails FROM contacts"
    ))?;
    let mut rows = stmt.query([])?;
    let mut snap = Snapshot::new(started);
    while let Some(r) = rows.next()? {
        let id: Option<String> = r.get(0)?;
        let row = Row {
            fields: [
                text(r.get(1)?),
                text(r.get(2)?),
                text(r.get(3)?),
                text(r.get(4)?),
                text(r.get(5)?),
            ],
            category: text(r.get(6)?),
            live: r.get(7)?,
            email: emails_text(r.get(8)?),
            person_id: None,
        };
        snap.push(id, row);
    }
    snap.at = Instant::now();
    snap.took = started.elapsed();
    Ok(snap)
}

/// The Postgres store's table.
pub async fn read_postgres(client: &tokio_postgres::Client) -> anyhow::Result<Snapshot> {
    let started = Instant::now();
    let rows = client
        .query(
            &format!("SELECT {SQL_COLUMNS}, deleted_at IS NULL, emails::text FROM contacts"),
            &[],
        )
        .await?;
    let mut snap = Snapshot::new(started);
    for r in rows {
        let row = Row {
            fields: [
                text(r.get(1)),
                text(r.get(2)),
                text(r.get(3)),
                text(r.get(4)),
                text(r.get(5)),
            ],
            category: text(r.get(6)),
            live: r.get(7),
            email: emails_text(r.get(8)),
            person_id: None,
        };
        snap.push(r.get(0), row);
    }
    snap.at = Instant::now();
    snap.took = started.elapsed();
    Ok(snap)
}

/// The canonical BigQuery table (`table` backquoted, with project and dataset).
pub async fn read_bigquery(client: &BigQueryClient, table: &str) -> anyhow::Result<Snapshot> {
    let started = Instant::now();
    let res = client
        .query(
            &format!("SELECT {SQL_COLUMNS}, deleted_at, emails FROM {table}"),
            &[],
            "soak: reading the canonical table",
        )
        .await?;
    let mut snap = Snapshot::new(started);
    for r in res.rows {
        let get = |k: &str| r.get(k).and_then(json_text);
        let row = Row {
            fields: [
                get("job_title"),
                get("notes"),
                get("nickname"),
                get("organization"),
                get("department"),
            ],
            category: get("category_code"),
            live: r.get("deleted_at").is_none_or(Value::is_null),
            email: r.get("emails").and_then(primary_email),
            person_id: None,
        };
        snap.push(get("contact_id"), row);
    }
    snap.at = Instant::now();
    snap.took = started.elapsed();
    Ok(snap)
}

/// Twenty's people, as the fake stores them (soft-deleted ones included).
pub fn read_twenty(people: Vec<Value>, started: Instant) -> Snapshot {
    let mut snap = Snapshot::new(started);
    for p in people {
        let get = |k: &str| p.get(k).and_then(json_text);
        let mut fields: [Option<String>; 5] = Default::default();
        for (i, (_, twenty)) in FIELDS.iter().enumerate() {
            fields[i] = get(twenty);
        }
        let row = Row {
            live: p.get("deletedAt").is_none_or(Value::is_null),
            fields,
            email: p
                .pointer("/emails/primaryEmail")
                .and_then(json_text)
                .map(|e| e.to_lowercase()),
            category: get("category"),
            person_id: get("id"),
        };
        snap.push(get("contactId"), row);
    }
    snap.at = Instant::now();
    snap.took = started.elapsed();
    snap
}
