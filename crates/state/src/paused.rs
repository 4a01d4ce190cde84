//! Stores held back until a person decides: by a guard (mass change, schema
//! change), or parked after a store error retrying cannot fix. A decision
//! is written by any process (the CLI while the daemon runs: an ordinary
//! state transaction, no lock) and carried out by the daemon at its next
//! cycle.

use crate::db::{p, Backend as Connection, Row};
use contact_sync_core::model::{format_ts, parse_ts};
use contact_sync_core::Timestamp;
use serde::Serialize;

use crate::{Result, StateDb, StateError, StateTx};

/// Why a store is paused, and so which decision settles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseKind {
    /// More deletes or blankings from the store in one cycle than the
    /// guard allows; nothing of them was merged. Settled by approve or
    /// reject.
    MassChange,
    /// Something must be fixed, then the store is resumed: its table,
    /// columns or change stream changed under the engine, or (with
    /// [`PausedStore::parked`]) it failed with an error retrying cannot fix.
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

/// A store parked after an error retrying cannot fix (bad credentials, a
/// permission or object missing, a value the store refuses for good): its
/// pause is of kind [`PauseKind::Schema`] (settled by `resume`), shown as
/// `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parked {
    /// The fingerprint of the store's configuration when it was parked:
    /// an engine started with another one for the store tries it again
    /// (`None`: not known, only `resume` settles it).
    pub config_hash: Option<String>,
}

/// A paused store as recorded. Serialized with `kind` as
/// [`PausedStore::label`] (`mass_change`, `schema` or `failed`) and the
/// parked store's `config_hash`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(into = "PausedView")]
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
    /// Set when the store was parked after a permanent error.
    pub parked: Option<Parked>,
}

impl PausedStore {
    /// The kind for people: `mass_change`, `schema`, or `failed` for a
    /// store parked after a permanent error.
    pub fn label(&self) -> &'static str {
        if self.parked.is_some() {
            "failed"
        } else {
            self.kind.as_str()
        }
    }
}

/// How a [`PausedStore`] is shown in JSON (`paused --json`, `status
/// --json`, the console's API).
#[derive(Serialize)]
struct PausedView {
    store: String,
    kind: &'static str,
    reason: String,
    details: serde_json::Value,
    since: Timestamp,
    decision: Option<Decision>,
    decided_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_hash: Option<String>,
}

impl From<PausedStore> for PausedView {
    fn from(p: PausedStore) -> Self {
        PausedView {
            kind: p.label(),
            config_hash: p.parked.and_then(|x| x.config_hash),
            store: p.store,
            reason: p.reason,
            details: p.details,
            since: p.since,
            decision: p.decision,
            decided_at: p.decided_at,
        }
    }
}

const COLS: &str = "store, kind, reason, details, since, decision, decided_at, config_hash";

/// The `kind` column: `failed` for a parked store.
const FAILED: &str = "failed";

fn corrupt(store: &str, what: &str, v: impl std::fmt::Display) -> StateError {
    StateError::Corrupt {
        what: format!("paused store {store} ({what})"),
        message: v.to_string(),
    }
}

fn row(r: &Row) -> Result<PausedStore> {
    let store: String = r.get(0)?;
    let kind: String = r.get(1)?;
    let details: String = r.get(3)?;
    let since: String = r.get(4)?;
    let decision: Option<String> = r.get(5)?;
    let decided_at: Option<String> = r.get(6)?;
    let config_hash: Option<String> = r.get(7)?;
    let (kind, parked) = if kind == FAILED {
        (PauseKind::Schema, Some(Parked { config_hash }))
    } else {
        (
            PauseKind::parse(&kind).ok_or_else(|| corrupt(&store, "kind", &kind))?,
            None,
        )
    };
    Ok(PausedStore {
        kind,
        parked,
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
    conn.query_opt(
        &format!("SELECT {COLS} FROM paused_stores WHERE store = ?1"),
        p![store],
    )?
    .as_ref()
    .map(row)
    .transpose()
}

pub(crate) fn all_paused(conn: &Connection) -> Result<Vec<PausedStore>> {
    conn.query(
        &format!("SELECT {COLS} FROM paused_stores ORDER BY store"),
        p![],
    )?
    .iter()
    .map(row)
    .collect()
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
    /// A parked store ([`PausedStore::parked`]) must be of kind
    /// [`PauseKind::Schema`] (settled by resume).
    pub fn pause_store(&self, p: &PausedStore) -> Result<()> {
        let kind = match (&p.parked, p.kind) {
            (None, k) => k.as_str(),
            (Some(_), PauseKind::Schema) => FAILED,
            (Some(_), k) => {
                return Err(StateError::Invalid {
                    what: format!("pause of {}", p.store),
                    message: format!("a parked store is resumed, not a {} pause", k.as_str()),
                })
            }
        };
        let config_hash = p.parked.as_ref().and_then(|x| x.config_hash.as_deref());
        self.conn().execute(
                "INSERT INTO paused_stores (store, kind, reason, details, since, decision, decided_at, config_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL, ?6)
                 ON CONFLICT (store) DO UPDATE SET kind = excluded.kind, reason = excluded.reason,
                     details = excluded.details, since = excluded.since,
                     decision = NULL, decided_at = NULL, config_hash = excluded.config_hash",
            p![
                p.store,
                kind,
                p.reason,
                p.details.to_string(),
                format_ts(&p.since),
                config_hash
            ],
        )?;
        Ok(())
    }
    /// Records a person's decision; false when the store is not paused.
    pub fn decide(&self, store: &str, decision: Decision, at: Timestamp) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE paused_stores SET decision = ?2, decided_at = ?3 WHERE store = ?1",
            p![store, decision.as_str(), format_ts(&at)],
        )?;
        Ok(n > 0)
    }
    /// Ends a store's pause.
    pub fn unpause_store(&self, store: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM paused_stores WHERE store = ?1", p![store])?;
        Ok(())
    }
}
