//! Operator requests: what a command asked the running daemon to do
//! between its cycles, because only the daemon may drive the stores while
//! it holds the lock (settle a conflict, repair drift, reset a store's
//! change capture). The command writes a row (an ordinary transaction, no
//! lock) and may wait for its outcome; the daemon takes the oldest queued
//! row, carries it out on its own engine and records how it went.
//!
//! A row is `queued`, then `running` while the daemon carries it out, then
//! `done` (with a JSON result) or `failed` (with the error). A daemon that
//! stopped in the middle of one fails it at its next start (`interrupted`)
//! rather than repeating it unasked.

use crate::db::{p, Backend as Connection, Row};
use contact_sync_core::model::{format_ts, parse_ts};
use contact_sync_core::Timestamp;
use serde::Serialize;

use crate::{Result, StateDb, StateError, StateTx};

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// Settle an open conflict (`conflicts resolve`).
    ResolveConflict,
    /// Compare every store with canonical and repair what differs
    /// (`drift --repair`).
    RepairDrift,
    /// Recreate a Postgres store's change capture (`cdc reset`).
    CdcReset,
    /// Import address-book records into canonical (`import`).
    Import,
    /// Merge one contact into another (`merge KEEP OTHER`).
    Merge,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::ResolveConflict => "resolve_conflict",
            RequestKind::RepairDrift => "repair_drift",
            RequestKind::CdcReset => "cdc_reset",
            RequestKind::Import => "import",
            RequestKind::Merge => "merge",
        }
    }
    /// `None` for a kind this build does not know (written by a newer one).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "resolve_conflict" => Some(RequestKind::ResolveConflict),
            "repair_drift" => Some(RequestKind::RepairDrift),
            "cdc_reset" => Some(RequestKind::CdcReset),
            "import" => Some(RequestKind::Import),
            "merge" => Some(RequestKind::Merge),
            _ => None,
        }
    }
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Queued,
    Running,
    Done,
    Failed,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Queued => "queued",
            RequestStatus::Running => "running",
            RequestStatus::Done => "done",
            RequestStatus::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(RequestStatus::Queued),
            "running" => Some(RequestStatus::Running),
            "done" => Some(RequestStatus::Done),
            "failed" => Some(RequestStatus::Failed),
            _ => None,
        }
    }
    /// Done or failed: nothing more happens to it.
    pub fn is_finished(self) -> bool {
        matches!(self, RequestStatus::Done | RequestStatus::Failed)
    }
}

/// A request as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    pub id: i64,
    /// A [`RequestKind`] name (kept as text: a newer build may write one
    /// this build does not know).
    pub kind: String,
    /// What the request is about (a conflict id, a store), as JSON.
    pub args: serde_json::Value,
    pub status: RequestStatus,
    /// What it did (`done`), as JSON.
    pub result: Option<serde_json::Value>,
    /// Why it failed (`failed`).
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

const COLS: &str = "id, kind, args, status, result, error, created_at, started_at, finished_at";

/// Text kept of a failed request's error.
const MAX_ERROR_LEN: usize = 4000;

fn corrupt(id: i64, what: &str, v: impl std::fmt::Display) -> StateError {
    StateError::Corrupt {
        what: format!("operator request {id} ({what})"),
        message: v.to_string(),
    }
}

fn ts(id: i64, what: &str, s: Option<String>) -> Result<Option<Timestamp>> {
    match s {
        Some(t) => Ok(Some(parse_ts(&t).ok_or_else(|| corrupt(id, what, &t))?)),
        None => Ok(None),
    }
}

fn json(id: i64, what: &str, s: Option<String>) -> Result<Option<serde_json::Value>> {
    match s {
        Some(t) => Ok(Some(
            serde_json::from_str(&t).map_err(|e| corrupt(id, what, e))?,
        )),
        None => Ok(None),
    }
}

fn row(r: &Row) -> Result<Request> {
    let id: i64 = r.get(0)?;
    let status: String = r.get(3)?;
    let created: String = r.get(6)?;
    Ok(Request {
        id,
        kind: r.get(1)?,
        args: json(id, "args", Some(r.get(2)?))?.unwrap_or_default(),
        status: RequestStatus::parse(&status).ok_or_else(|| corrupt(id, "status", &status))?,
        result: json(id, "result", r.get(4)?)?,
        error: r.get(5)?,
        created_at: parse_ts(&created).ok_or_else(|| corrupt(id, "created_at", &created))?,
        started_at: ts(id, "started_at", r.get(7)?)?,
        finished_at: ts(id, "finished_at", r.get(8)?)?,
    })
}

fn one(conn: &Connection, id: i64) -> Result<Option<Request>> {
    conn.query_opt(
        &format!("SELECT {COLS} FROM operator_requests WHERE id = ?1"),
        p![id],
    )?
    .as_ref()
    .map(row)
    .transpose()
}

fn unfinished(conn: &Connection) -> Result<Vec<Request>> {
    conn.query(
        &format!(
            "SELECT {COLS} FROM operator_requests WHERE status IN ('queued', 'running') ORDER BY id"
        ),
        p![],
    )?
    .iter()
    .map(row)
    .collect()
}

impl StateDb {
    /// The request with this id.
    pub fn request(&self, id: i64) -> Result<Option<Request>> {
        one(self.conn(), id)
    }
    /// Requests queued or being carried out, oldest first.
    pub fn unfinished_requests(&self) -> Result<Vec<Request>> {
        unfinished(self.conn())
    }
    /// Whether a request waits for the daemon (one cheap indexed query).
    pub fn has_queued_request(&self) -> Result<bool> {
        Ok(self
            .conn()
            .query_opt(
                "SELECT 1 FROM operator_requests WHERE status = 'queued' LIMIT 1",
                p![],
            )?
            .is_some())
    }
}

impl StateTx<'_> {
    /// Queues a request for the daemon; returns its id.
    pub fn queue_request(
        &self,
        kind: RequestKind,
        args: &serde_json::Value,
        at: Timestamp,
    ) -> Result<i64> {
        self.conn().query_value(
            "INSERT INTO operator_requests (kind, args, created_at) VALUES (?1, ?2, ?3) RETURNING id",
            p![kind.as_str(), args.to_string(), format_ts(&at)],
        )
    }
    /// Takes the oldest queued request (it is `running` from now on).
    pub fn start_next_request(&self, at: Timestamp) -> Result<Option<Request>> {
        let id: Option<i64> = self
            .conn()
            .query_opt(
                "SELECT id FROM operator_requests WHERE status = 'queued' ORDER BY id LIMIT 1",
                p![],
            )?
            .map(|r| r.get(0))
            .transpose()?;
        let Some(id) = id else {
            return Ok(None);
        };
        self.conn().execute(
            "UPDATE operator_requests SET status = 'running', started_at = ?2 WHERE id = ?1",
            p![id, format_ts(&at)],
        )?;
        one(self.conn(), id)
    }
    /// Records how a request went: `Ok(result)` is done, `Err(error)`
    /// failed. An unknown id is [`StateError::NotFound`].
    pub fn finish_request(
        &self,
        id: i64,
        outcome: std::result::Result<&serde_json::Value, &str>,
        at: Timestamp,
    ) -> Result<()> {
        let (status, result, error) = match outcome {
            Ok(v) => (RequestStatus::Done, Some(v.to_string()), None),
            Err(e) => (
                RequestStatus::Failed,
                None,
                Some(crate::truncate(e, MAX_ERROR_LEN)),
            ),
        };
        let n = self.conn().execute(
            "UPDATE operator_requests SET status = ?2, result = ?3, error = ?4, finished_at = ?5
             WHERE id = ?1",
            p![id, status.as_str(), result, error, format_ts(&at)],
        )?;
        if n == 0 {
            return Err(StateError::NotFound {
                what: format!("operator request {id}"),
            });
        }
        Ok(())
    }
    /// Fails every request left `running` (the daemon stopped in the
    /// middle of it): it is not repeated unasked. Returns how many.
    pub fn fail_interrupted_requests(&self, at: Timestamp) -> Result<u64> {
        self.conn().execute(
            "UPDATE operator_requests SET status = 'failed', finished_at = ?1,
                 error = 'interrupted: the daemon stopped while carrying it out (it may be partly done; run the command again)'
             WHERE status = 'running'",
            p![format_ts(&at)],
        )
    }
}
