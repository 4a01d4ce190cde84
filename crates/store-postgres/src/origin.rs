//! Provenance of the engine's writes in the change stream.
//!
//! In slot mode every write transaction of the engine is tagged with a
//! replication origin of the store's own (`contact_sync_<slot>`): the
//! origin is created once (`pg_replication_origin_create`) and set up on
//! the writing session for the length of each write transaction
//! (`pg_replication_origin_session_setup` … `_session_reset`). pgoutput
//! marks such transactions with an Origin message; the capture skips them
//! whole and moves its checkpoint past them. From PostgreSQL 16 the slot is
//! asked to leave them out (`origin 'none'`) when no other origin exists in
//! the cluster (`none` leaves out every origin, e.g. a subscription's).
//!
//! The functions are superuser-only unless granted (`GRANT EXECUTE ON
//! FUNCTION pg_replication_origin_session_setup(text),
//! pg_replication_origin_session_reset(), pg_replication_origin_create(text)
//! TO role`). Without them the store falls back to the kept `content_hash`
//! (an image whose hash is set is the engine's own write): the engine's
//! writes are then delivered and skipped by the engine, which costs decoding
//! but loses nothing.

use std::fmt;

use contact_sync_connector::StoreError;

use crate::config::CdcMode;
use crate::store::{pg_err, PgStore};

/// How the store's change stream tells the engine's own writes apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// Engine write transactions carry this replication origin; capture
    /// skips them.
    Origin(String),
    /// Engine writes come back carrying their kept `content_hash`; the
    /// reason origins are not used.
    ContentHash(String),
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provenance::Origin(o) => write!(
                f,
                "replication origin `{o}`: the engine's writes are skipped by the capture"
            ),
            Provenance::ContentHash(why) => write!(
                f,
                "kept content_hash ({why}): the engine's writes are read back and skipped by hash"
            ),
        }
    }
}

/// The origin name of a slot.
pub(crate) fn origin_name(slot: &str) -> String {
    format!("contact_sync_{slot}")
}

impl PgStore {
    /// Decides (once per store) whether write transactions are tagged with
    /// the store's replication origin, creating the origin when it is
    /// missing, and logs the decision.
    pub(crate) async fn detect_provenance(&mut self) -> Result<Provenance, StoreError> {
        if let Some(p) = &self.provenance {
            return Ok(p.clone());
        }
        let name = self.cfg.name.clone();
        let mut version = None;
        let p = if self.cfg.cdc != CdcMode::Slot {
            Provenance::ContentHash("outbox mode".into())
        } else {
            let origin = origin_name(&self.cfg.slot_name);
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT has_function_privilege('pg_replication_origin_session_setup(text)', 'EXECUTE') \
                       AND has_function_privilege('pg_replication_origin_session_reset()', 'EXECUTE'), \
                     has_function_privilege('pg_replication_origin_create(text)', 'EXECUTE'), \
                     EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1), \
                     current_setting('server_version_num')::int",
                    &[&origin],
                )
                .await
                .map_err(|e| pg_err(&name, "reading the role's rights on replication origins", &e))?;
            let (use_ok, create_ok, exists): (bool, bool, bool) =
                (row.get(0), row.get(1), row.get(2));
            version = Some(row.get::<_, i32>(3));
            if !use_ok {
                Provenance::ContentHash(
                    "the role may not use replication origins: grant it EXECUTE on \
                     pg_replication_origin_session_setup(text) and pg_replication_origin_session_reset() \
                     to skip them in the capture"
                        .into(),
                )
            } else if exists {
                Provenance::Origin(origin)
            } else if !create_ok {
                Provenance::ContentHash(format!(
                    "replication origin `{origin}` does not exist and the role may not create it: \
                     run SELECT pg_replication_origin_create('{origin}') as a superuser"
                ))
            } else {
                match client
                    .execute("SELECT pg_replication_origin_create($1)", &[&origin])
                    .await
                {
                    Ok(_) => Provenance::Origin(origin),
                    // Created meanwhile by another session.
                    Err(e) if e.as_db_error().map(|d| d.code().code()) == Some("23505") => {
                        Provenance::Origin(origin)
                    }
                    Err(e) => {
                        return Err(pg_err(
                            &name,
                            &format!("creating replication origin `{origin}`"),
                            &e,
                        ))
                    }
                }
            }
        };
        if let Some(v) = version {
            self.server_version = v;
        }
        tracing::info!(store = %name, provenance = %p, "provenance of the engine's writes");
        self.provenance = Some(p.clone());
        Ok(p)
    }

    /// The replication origin this store tags its writes with, if any.
    pub(crate) fn write_origin(&self) -> Option<&str> {
        match &self.provenance {
            Some(Provenance::Origin(o)) => Some(o.as_str()),
            _ => None,
        }
    }

    /// How the engine's writes are told apart in this store's change
    /// stream (shown by `check` and `cdc status`).
    pub async fn provenance(&mut self) -> Result<Provenance, StoreError> {
        self.detect_provenance().await
    }
}
