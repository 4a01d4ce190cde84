//! Merging two contacts that are one person (`contact-sync merge KEEP
//! OTHER`): KEEP takes what it lacks from OTHER (scalar fields it does not
//! have; OTHER's emails, phones and tags are added, KEEP's primary ones
//! stay primary), OTHER becomes a tombstone, both journaled with origin
//! [`MERGE_ORIGIN`] and applied to canonical; the stores follow through
//! the journal like any change.

use contact_sync_core::{diff, validate};
use serde::{Deserialize, Serialize};

use crate::import::overlay;
use crate::{Engine, EngineError};

/// The origin (and `last_updated_by`) of a merge's journal entries.
pub const MERGE_ORIGIN: &str = "merge";

/// What a merge does (or did).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeReport {
    pub keep: String,
    pub other: String,
    /// Fields of KEEP that change.
    pub fields: Vec<String>,
    pub written: bool,
}

impl Engine {
    /// Merges `other` into `keep` (see the module docs). Refused when
    /// either is not a live contact of canonical, or they are the same.
    pub async fn merge_contacts(
        &mut self,
        keep: &str,
        other: &str,
        dry_run: bool,
    ) -> Result<MergeReport, EngineError> {
        if keep == other {
            return Err(EngineError::Request(format!(
                "KEEP and OTHER are the same contact ({keep})"
            )));
        }
        let ids = vec![keep.to_string(), other.to_string()];
        let held = self
            .canonical
            .read(&ids)
            .await
            .map_err(EngineError::Canonical)?;
        let find = |id: &str| {
            held.iter()
                .find(|c| c.contact_id == id && !c.is_deleted())
                .cloned()
                .map(|mut c| {
                    c.normalize();
                    c
                })
                .ok_or_else(|| EngineError::Request(format!("no live contact {id} in canonical")))
        };
        let (k, o) = (find(keep)?, find(other)?);
        let mut merged = k.clone();
        overlay(&mut merged, &o, false);
        merged.normalize();
        validate(&merged).map_err(|inv| {
            EngineError::Request(format!(
                "the merged contact {keep} would be refused: field {}: {}",
                inv.field, inv.reason
            ))
        })?;
        let fields: Vec<String> = diff(Some(&k), &merged)
            .into_iter()
            .map(|f| f.field)
            .collect();
        let mut report = MergeReport {
            keep: keep.to_string(),
            other: other.to_string(),
            fields,
            written: false,
        };
        if dry_run {
            return Ok(report);
        }
        let now = (self.clock)();
        let mut gone = o.clone();
        gone.deleted_at = Some(now);
        let mut writes = Vec::new();
        if !report.fields.is_empty() {
            writes.push((Some(k), merged));
        }
        writes.push((Some(o), gone));
        self.journal_and_apply(writes, MERGE_ORIGIN).await?;
        report.written = true;
        Ok(report)
    }
}
