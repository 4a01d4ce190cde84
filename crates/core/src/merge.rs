//! Three-way, field-by-field merge of an incoming record into canonical
//! (DESIGN.md rule 4).
//!
//! For each content field, against the last synced `base`:
//! - changed on the incoming side only → taken;
//! - changed on the canonical side only → kept;
//! - changed on both sides to different values → the higher version wins;
//!   equal versions → the later `last_updated` wins; still equal → canonical
//!   is kept and the pair is reported as an open conflict.
//!
//! An incoming record from a store that carries no version counts as
//! `base.version + 1`. A delete racing an edit (either way round) is an open
//! conflict and canonical is kept: deletes are never silent.

use serde_json::Value;

use crate::fields::{same_content, FIELDS};
use crate::journal::{FieldChange, FieldConflict, Resolution};
use crate::model::{Contact, Timestamp};

/// What the merge is given.
#[derive(Debug, Clone, Copy)]
pub struct MergeInput<'a> {
    /// What the origin store and canonical last agreed on; `None` when
    /// unknown (every differing field then counts as changed on both sides).
    pub base: Option<&'a Contact>,
    /// The canonical record now; `None` when the contact is new.
    pub canonical: Option<&'a Contact>,
    /// The record the store has now (normalized and validated).
    pub incoming: &'a Contact,
    /// Whether the store keeps a real `version` (else base version + 1).
    pub incoming_versioned: bool,
    /// Name of the origin store, written to `last_updated_by`.
    pub origin: &'a str,
    /// The time the merge happens, written to `last_updated`.
    pub now: Timestamp,
}

/// What the merge decided.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeOutcome {
    /// The new canonical record, or `None` when canonical stays as it is.
    pub write: Option<Contact>,
    /// Field changes from the old canonical to `write` (old → new).
    pub changes: Vec<FieldChange>,
    /// Fields changed on both sides, with how each was settled.
    pub conflicts: Vec<FieldConflict>,
}

impl MergeOutcome {
    /// Conflicts nobody could settle by rule: these go to `sync_conflicts`.
    pub fn open_conflicts(&self) -> impl Iterator<Item = &FieldConflict> {
        self.conflicts
            .iter()
            .filter(|c| c.resolution == Resolution::Open)
    }
}

/// The effective version of the incoming record (rule: no version → base + 1).
pub fn incoming_version(input: &MergeInput<'_>) -> i64 {
    let base_v = input.base.map(|b| b.version);
    match (input.incoming_versioned, base_v) {
        (true, Some(b)) => input.incoming.version.max(b + 1),
        (true, None) => input.incoming.version,
        (false, Some(b)) => b + 1,
        (false, None) => input.canonical.map_or(1, |c| c.version),
    }
}

/// `last_updated` of the merged record: the incoming record's own time when
/// its store keeps one (it moved past the base's), else the merge time.
/// Keeping the origin's time means two edits made at the same moment in two
/// stores still compare equal once one of them has reached canonical.
fn stamp(input: &MergeInput<'_>) -> Timestamp {
    let base = input.base.and_then(|b| b.last_updated);
    match (input.incoming.last_updated, base) {
        (Some(i), Some(b)) if i > b => i,
        (Some(i), None) if input.base.is_none() => i,
        _ => input.now,
    }
}

/// Settles one field changed on both sides.
fn settle(
    canonical: &Contact,
    canonical_v: i64,
    incoming: &Contact,
    incoming_v: i64,
) -> Resolution {
    use std::cmp::Ordering::*;
    match incoming_v.cmp(&canonical_v) {
        Greater => Resolution::IncomingByVersion,
        Less => Resolution::CanonicalByVersion,
        Equal => match incoming.last_updated.cmp(&canonical.last_updated) {
            Greater => Resolution::IncomingByTime,
            Less => Resolution::CanonicalByTime,
            Equal => Resolution::Open,
        },
    }
}

fn ts_value(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(crate::model::format_ts(&t)))
}

/// Merges `input.incoming` into canonical. Pure and deterministic.
pub fn merge(input: MergeInput<'_>) -> MergeOutcome {
    let incoming = input.incoming;
    let v_in = incoming_version(&input);
    let Some(canonical) = input.canonical else {
        // New to canonical. A delete of something canonical never had is a no-op.
        if incoming.is_deleted() {
            return MergeOutcome {
                write: None,
                changes: vec![],
                conflicts: vec![],
            };
        }
        let mut new = incoming.clone();
        new.version = v_in.max(1);
        new.last_updated = Some(stamp(&input));
        new.last_updated_by = Some(input.origin.to_string());
        new.content_hash = Some(crate::hash::content_hash(&new));
        let changes = FIELDS
            .iter()
            .map(|f| (f.name, (f.json)(incoming)))
            .filter(|(_, v)| !v.is_null() && *v != Value::Array(vec![]))
            .map(|(field, new)| FieldChange {
                field: field.to_string(),
                old: Value::Null,
                new,
            })
            .collect();
        return MergeOutcome {
            write: Some(new),
            changes,
            conflicts: vec![],
        };
    };

    // Fields are compared typed, as their JSON forms compare (`fields`).
    let base = input.base;
    let base_deleted = base.map(|b| b.is_deleted());
    let store_changed_content = base.is_none_or(|b| !same_content(b, incoming));
    let canonical_changed_content = base.is_none_or(|b| !same_content(b, canonical));

    let delete_conflict = |resolution| FieldConflict {
        field: "deleted_at".to_string(),
        base: input.base.map_or(Value::Null, |b| ts_value(b.deleted_at)),
        canonical: ts_value(canonical.deleted_at),
        incoming: ts_value(incoming.deleted_at),
        canonical_version: canonical.version,
        incoming_version: v_in,
        resolution,
    };

    match (canonical.is_deleted(), incoming.is_deleted()) {
        (true, true) => {
            return MergeOutcome {
                write: None,
                changes: vec![],
                conflicts: vec![],
            };
        }
        (false, true) => {
            // A delete applies only when canonical has not moved on since the store last saw it.
            if base_deleted == Some(false) && !canonical_changed_content {
                let mut new = canonical.clone();
                new.deleted_at = incoming.deleted_at.or(Some(input.now));
                new.version = (canonical.version + 1).max(v_in);
                new.last_updated = Some(stamp(&input));
                new.last_updated_by = Some(input.origin.to_string());
                new.content_hash = Some(crate::hash::content_hash(&new));
                let changes = vec![FieldChange {
                    field: "deleted_at".to_string(),
                    old: Value::Null,
                    new: ts_value(new.deleted_at),
                }];
                return MergeOutcome {
                    write: Some(new),
                    changes,
                    conflicts: vec![],
                };
            }
            return MergeOutcome {
                write: None,
                changes: vec![],
                conflicts: vec![delete_conflict(Resolution::Open)],
            };
        }
        (true, false) => {
            if base_deleted == Some(false) && !store_changed_content {
                // The store has simply not received the tombstone yet.
                return MergeOutcome {
                    write: None,
                    changes: vec![],
                    conflicts: vec![],
                };
            }
            if base_deleted != Some(true) {
                // An edit racing a delete.
                return MergeOutcome {
                    write: None,
                    changes: vec![],
                    conflicts: vec![delete_conflict(Resolution::Open)],
                };
            }
            // The store saw the tombstone and brought the contact back: an undelete.
        }
        (false, false) => {}
    }

    let mut taken = Vec::new();
    let mut changes = Vec::new();
    let mut conflicts = Vec::new();
    for f in FIELDS {
        if (f.same)(canonical, incoming) {
            continue;
        }
        if base.is_some_and(|b| (f.same)(b, incoming)) {
            continue; // only canonical changed it
        }
        let take = if base.is_some_and(|b| (f.same)(b, canonical)) && !canonical.is_deleted() {
            true // only the store changed it
        } else {
            let resolution = settle(canonical, canonical.version, incoming, v_in);
            conflicts.push(FieldConflict {
                field: f.name.to_string(),
                base: base.map_or(Value::Null, |b| (f.json)(b)),
                canonical: (f.json)(canonical),
                incoming: (f.json)(incoming),
                canonical_version: canonical.version,
                incoming_version: v_in,
                resolution,
            });
            resolution.incoming_won()
        };
        if take {
            taken.push(f);
            changes.push(FieldChange {
                field: f.name.to_string(),
                old: (f.json)(canonical),
                new: (f.json)(incoming),
            });
        }
    }
    let undelete = canonical.is_deleted();
    if taken.is_empty() && !undelete {
        return MergeOutcome {
            write: None,
            changes,
            conflicts,
        };
    }
    let mut new = canonical.clone();
    for f in taken {
        (f.take)(&mut new, incoming);
    }
    // As a trip through JSON leaves it (what the merge once did).
    crate::fields::json_nulls_absent(&mut new);
    if undelete {
        changes.push(FieldChange {
            field: "deleted_at".to_string(),
            old: ts_value(canonical.deleted_at),
            new: Value::Null,
        });
        new.deleted_at = None;
    }
    new.version = (canonical.version + 1).max(v_in);
    new.last_updated = Some(stamp(&input));
    new.last_updated_by = Some(input.origin.to_string());
    new.content_hash = Some(crate::hash::content_hash(&new));
    MergeOutcome {
        write: Some(new),
        changes,
        conflicts,
    }
}

/// Field changes from `old` to `new` over the content fields and the
/// tombstone (`deleted_at`); `old = None` lists every field `new` sets.
pub fn diff(old: Option<&Contact>, new: &Contact) -> Vec<FieldChange> {
    let mut out = Vec::new();
    // In canonical field order.
    for f in FIELDS {
        if old.is_some_and(|o| (f.same)(o, new)) {
            continue;
        }
        let nv = (f.json)(new);
        let ov = old.map_or(Value::Null, |o| (f.json)(o));
        let empty = |v: &Value| v.is_null() || *v == Value::Array(vec![]);
        if ov != nv && !(empty(&ov) && empty(&nv)) {
            out.push(FieldChange {
                field: f.name.to_string(),
                old: ov,
                new: nv,
            });
        }
    }
    let (od, nd) = (old.and_then(|o| o.deleted_at), new.deleted_at);
    if od != nd {
        out.push(FieldChange {
            field: "deleted_at".to_string(),
            old: ts_value(od),
            new: ts_value(nd),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_ts;

    fn t(s: &str) -> Timestamp {
        parse_ts(s).unwrap()
    }

    fn base() -> Contact {
        let mut c = Contact::new("c1", "Ada");
        c.job_title = Some("Analyst".into());
        c.notes = Some("first".into());
        c.last_updated = Some(t("2026-01-01T00:00:00Z"));
        c
    }

    fn input<'a>(b: &'a Contact, c: &'a Contact, i: &'a Contact) -> MergeInput<'a> {
        MergeInput {
            base: Some(b),
            canonical: Some(c),
            incoming: i,
            incoming_versioned: true,
            origin: "local",
            now: t("2026-02-01T00:00:00Z"),
        }
    }

    #[test]
    fn takes_a_field_changed_on_one_side_only() {
        let b = base();
        let mut c = b.clone();
        c.notes = Some("canonical notes".into());
        c.version = 2;
        let mut i = b.clone();
        i.job_title = Some("Engineer".into());
        let out = merge(input(&b, &c, &i));
        let w = out.write.unwrap();
        assert_eq!(w.job_title.as_deref(), Some("Engineer"));
        assert_eq!(w.notes.as_deref(), Some("canonical notes"));
        assert_eq!(w.version, 3);
        assert_eq!(w.last_updated_by.as_deref(), Some("local"));
        assert!(out.conflicts.is_empty());
        assert_eq!(out.changes.len(), 1);
    }

    #[test]
    fn unversioned_store_counts_as_base_plus_one() {
        let b = base();
        let mut i = b.clone();
        i.version = 1; // stale version column
        i.notes = Some("edited".into());
        let mut inp = input(&b, &b, &i);
        inp.incoming_versioned = false;
        assert_eq!(incoming_version(&inp), 2);
        let w = merge(inp).write.unwrap();
        assert_eq!((w.version, w.notes.as_deref()), (2, Some("edited")));
    }

    #[test]
    fn both_changed_higher_version_wins() {
        let b = base();
        let mut c = b.clone();
        c.notes = Some("canonical".into());
        c.version = 3;
        let mut i = b.clone();
        i.notes = Some("incoming".into());
        i.version = 2;
        let out = merge(input(&b, &c, &i));
        assert!(out.write.is_none());
        assert_eq!(out.conflicts[0].resolution, Resolution::CanonicalByVersion);
        i.version = 4;
        let out = merge(input(&b, &c, &i));
        assert_eq!(out.write.unwrap().notes.as_deref(), Some("incoming"));
        assert_eq!(out.conflicts[0].resolution, Resolution::IncomingByVersion);
    }

    #[test]
    fn equal_versions_later_timestamp_wins_then_open_conflict() {
        let b = base();
        let mut c = b.clone();
        c.notes = Some("canonical".into());
        c.version = 2;
        c.last_updated = Some(t("2026-01-05T00:00:00Z"));
        let mut i = c.clone();
        i.notes = Some("incoming".into());
        i.last_updated = Some(t("2026-01-06T00:00:00Z"));
        let out = merge(input(&b, &c, &i));
        assert_eq!(out.conflicts[0].resolution, Resolution::IncomingByTime);
        assert_eq!(out.write.unwrap().notes.as_deref(), Some("incoming"));

        i.last_updated = c.last_updated;
        let out = merge(input(&b, &c, &i));
        assert!(out.write.is_none(), "canonical kept");
        let open: Vec<_> = out.open_conflicts().collect();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].field, "notes");
        assert_eq!(open[0].incoming, Value::String("incoming".into()));
        assert_eq!(open[0].canonical, Value::String("canonical".into()));
    }

    #[test]
    fn delete_applies_only_when_canonical_unchanged() {
        let b = base();
        let mut i = b.clone();
        i.deleted_at = Some(t("2026-01-10T00:00:00Z"));
        let out = merge(input(&b, &b, &i));
        let w = out.write.unwrap();
        assert!(w.is_deleted());
        assert_eq!(w.version, 2);

        let mut c = b.clone();
        c.notes = Some("edited meanwhile".into());
        c.version = 2;
        let out = merge(input(&b, &c, &i));
        assert!(out.write.is_none());
        assert_eq!(out.open_conflicts().next().unwrap().field, "deleted_at");
    }

    #[test]
    fn edit_racing_a_delete_is_a_conflict_but_a_stale_copy_is_not() {
        let b = base();
        let mut c = b.clone();
        c.deleted_at = Some(t("2026-01-10T00:00:00Z"));
        c.version = 2;
        let out = merge(input(&b, &c, &b));
        assert_eq!(
            out,
            MergeOutcome {
                write: None,
                changes: vec![],
                conflicts: vec![]
            }
        );
        let mut i = b.clone();
        i.notes = Some("edited".into());
        let out = merge(input(&b, &c, &i));
        assert!(out.write.is_none());
        assert_eq!(out.open_conflicts().count(), 1);
    }

    #[test]
    fn same_change_on_both_sides_is_no_conflict() {
        let b = base();
        let mut c = b.clone();
        c.notes = Some("same".into());
        c.version = 2;
        let mut i = b.clone();
        i.notes = Some("same".into());
        let out = merge(input(&b, &c, &i));
        assert_eq!(
            out,
            MergeOutcome {
                write: None,
                changes: vec![],
                conflicts: vec![]
            }
        );
    }

    #[test]
    fn new_contact_is_written_with_origin() {
        let i = base();
        let out = merge(MergeInput {
            base: None,
            canonical: None,
            incoming: &i,
            incoming_versioned: false,
            origin: "twenty",
            now: t("2026-02-01T00:00:00Z"),
        });
        let w = out.write.unwrap();
        assert_eq!(w.version, 1);
        assert_eq!(w.last_updated_by.as_deref(), Some("twenty"));
        assert!(out.changes.iter().any(|c| c.field == "job_title"));
    }
}
