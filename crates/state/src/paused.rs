//! Stores held back by a guard until a person decides (mass change, schema
//! change). A decision is written by any process (the CLI while the daemon
//! runs: an ordinary state transaction, no lock) and carried out by the
//! daemon at its next cycle.

use contact_sync_core::model::{format_ts, parse_ts};
use contact_sync_core::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::{Result, StateDb, StateError, StateTx};

/// Why a store is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseKind {
    /// More deletes or blankings from the store in one cycle than the
    /// guard allows; nothing of them was merged.
    MassChange,
    /// The store's table, columns or change stream changed under the engine.
    Schema,
}

impl PauseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseKind::MassChange => "mass_change",
            PauseKind::Schema => "schema",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "mass_change" => Some(PauseKind::MassChange),
            "schema" => Some(PauseKind::Schema),
            _ => None,
        }
    }
}

/// What a person decided about a paused store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Apply the held changes (mass change).
    Approve,
    /// Discard the held changes and write canonical's records back.
    Reject,
    /// Try the store again (a schema pause, once fixed).
    Resume,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
            Decision::Resume => "resume",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Decision::Approve),
            "reject" => Some(Decision::Reject),
            "resume" => Some(Decision::Resume),
            _ => None,
        }
    }
}

/// A paused store as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PausedStore {
    pub store: String,
    pub kind: PauseKind,
    /// One line for people (no contact data).
    pub reason: String,
    /// What is held back (counts per kind of change, per field, the
    /// checkpoint range), as JSON.
    pub details: serde_json::Value,
    pub since: Timestamp,
    /// A decision waiting for the daemon.
    pub decision: Option<Decision>,
    pub decided_at: Option<Timestamp>,
}

const COLS: &str = "store, kind, reason, details, since, decision, decided_at";

fn corrupt(store: &str, what: &str, v: impl std::fmt::Display) -> StateError {
    StateError::Corrupt {
        what: format!("paused store {store} ({what})"),
        message: v.to_string(),
    }
}

fn row(r: &Row<'_>) -> Result<PausedStore> {
    let store: String = r.get(0)?;
    let kind: String = r.get(1)?;
    let details: String = r.get(3)?;
    let since: String = r.get(4)?;
    let decision: Option<String> = r.get(5)?;
    let decided_at: Option<String> = r.get(6)?;
    Ok(PausedStore {
        kind: PauseKind::parse(&kind).ok_or_else(|| corrupt(&store, "kind", &kind))?,
        reason: r.get(2)?,
        details: serde_json::from_str(&details).map_err(|e| corrupt(&store, "details", e))?,
        since: parse_ts(&since).ok_or_else(|| corrupt(&store, "since", &since))?,
        decision: match decision {
            Some(d) => Some(Decision::parse(&d).ok_or_else(|| corrupt(&store, "decision", &d))?),
            None => None,
        },
        decided_at: match decided_at {
            Some(t) => Some(parse_ts(&t).ok_or_else(|| corrupt(&store, "decided_at", &t))?),
            None => None,
        },
        store,
    })
}

pub(crate) fn paused(conn: &Connection, store: &str) -> Result<Option<PausedStore>> {
    conn.prepare_cached(&format!(
        "SELECT {COLS} FROM paused_stores WHERE store = ?1"
    ))?
    .query_row([store], |r| Ok(row(r)))
    .optional()?
    .transpose()
}

pub(crate) fn all_paused(conn: &Connection) -> Result<Vec<PausedStore>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLS} FROM paused_stores ORDER BY store"))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(row(r)?);
    }
    Ok(out)
}

impl StateDb {
    /// The store's pause, if it is paused.
    pub fn paused(&self, store: &str) -> Result<Option<PausedStore>> {
        paused(self.conn(), store)
    }
    /// Every paused store, by name.
    pub fn paused_stores(&self) -> Result<Vec<PausedStore>> {
        all_paused(self.conn())
    }
}

impl StateTx<'_> {
    /// As [`StateDb::paused`].
    pub fn paused(&self, store: &str) -> Result<Option<PausedStore>> {
        paused(self.conn(), store)
    }
    /// Pauses a store (replacing an earlier pause of it, decision cleared).
    pub fn pause_store(&self, p: &PausedStore) -> Result<()> {
        self.conn()
            .prepare_cached(
                "INSERT INTO paused_stores (store, kind, reason, details, since, decision, decided_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL)
                 ON CONFLICT (store) DO UPDATE SET kind = excluded.kind, reason = excluded.reason,
                     details = excluded.details, since = excluded.since,
                     decision = NULL, decided_at = NULL",
            )?
            .execute(params![
                p.store,
                p.kind.as_str(),
                p.reason,
                p.details.to_string(),
                format_ts(&p.since)
            ])?;
        Ok(())
    }
    /// Records a person's decision; false when the store is not paused.
    pub fn decide(&self, store: &str, decision: Decision, at: Timestamp) -> Result<bool> {
        let n = self
            .conn()
            .prepare_cached(
                "UPDATE paused_stores SET decision = ?2, decided_at = ?3 WHERE store = ?1",
            )?
            .execute(params![store, decision.as_str(), format_ts(&at)])?;
        Ok(n > 0)
    }
    /// Ends a store's pause.
    pub fn unpause_store(&self, store: &str) -> Result<()> {
        self.conn()
            .prepare_cached("DELETE FROM paused_stores WHERE store = ?1")?
            .execute([store])?;
        Ok(())
    }
}
