//! The checker: after the run has settled, every acknowledged user write
//! is judged against what the stores hold and the conflicts the daemon
//! recorded, with the rules of the engine's history checker
//! (`crates/engine/tests/history.rs`):
//!
//! - an **edit** ends as the field's value in canonical and in every other
//!   store (converged), or a later write (acknowledged or of unknown
//!   outcome) of that field or a delete of the contact superseded it, or a
//!   conflict of that field holds its value, or a delete-versus-edit
//!   conflict of the contact exists;
//! - a **delete** ends with the contact live nowhere, or as a
//!   delete-versus-edit conflict;
//! - a **create** ends as exactly one live contact with its email in
//!   canonical and every other store, or was deleted later.
//!
//! Anything else is **lost**. Independently of the history, every store
//! must hold exactly canonical's live contacts (Twenty: but category X),
//! each once, with canonical's values; a contact held twice (or two live
//! contacts with one email in canonical) is **duplicated**, any other
//! difference **diverged**.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::history::{Event, History, What};
use crate::snapshot::{Snapshot, StoreId, FIELDS};

pub type Stores = BTreeMap<StoreId, Snapshot>;

#[derive(Debug, Default)]
pub struct Verdict {
    /// Acknowledged writes judged.
    pub checked: u64,
    pub converged: u64,
    pub superseded: u64,
    /// Writes that ended as a recorded conflict.
    pub in_conflict: u64,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub diverged: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.diverged.is_empty()
    }
}

/// The conflicts of `contact-sync conflicts list --all --json`, by contact:
/// (field, [base, canonical, incoming]).
pub struct Conflicts {
    by_contact: BTreeMap<String, Vec<(String, [Value; 3])>>,
    pub total: usize,
    pub open: usize,
}

impl Conflicts {
    pub fn parse(json: &Value) -> anyhow::Result<Conflicts> {
        let rows = json
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("conflicts list --json is not an array: {json}"))?;
        let mut by_contact: BTreeMap<String, Vec<(String, [Value; 3])>> = BTreeMap::new();
        let mut open = 0;
        for r in rows {
            let id = r["contact_id"].as_str().unwrap_or_default().to_string();
            let c = &r["conflict"];
            let field = c["field"].as_str().unwrap_or_default().to_string();
            let values = [
                c["base"].clone(),
                c["canonical"].clone(),
                c["incoming"].clone(),
            ];
            by_contact.entry(id).or_default().push((field, values));
            open += usize::from(r["status"] == "open");
        }
        Ok(Conflicts {
            by_contact,
            total: rows.len(),
            open,
        })
    }

    fn of(&self, contact_id: &str) -> &[(String, [Value; 3])] {
        self.by_contact
            .get(contact_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// A conflict of `field` holding `value` on either side.
    fn holds(&self, contact_id: &str, field: &str, value: &str) -> bool {
        self.of(contact_id)
            .iter()
            .any(|(f, vals)| f == field && vals.iter().any(|v| v.as_str() == Some(value)))
    }

    /// A delete-versus-edit conflict of the contact.
    fn delete_conflict(&self, contact_id: &str) -> bool {
        self.of(contact_id).iter().any(|(f, _)| f == "deleted_at")
    }
}

/// The stores that must hold canonical's live contact `row`: every other
/// one, Twenty only when the contact is not category X.
fn expected(row: &crate::snapshot::Row) -> impl Iterator<Item = StoreId> + '_ {
    StoreId::ALL.into_iter().filter(move |s| {
        *s != StoreId::Canonical && (*s != StoreId::Twenty || row.category.as_deref() != Some("X"))
    })
}

pub fn check(history: &History, stores: &Stores, conflicts: &Conflicts) -> Verdict {
    let mut v = Verdict::default();
    for ev in history.acked() {
        v.checked += 1;
        let later = || history.events.iter().any(|l| l.supersedes(ev));
        let outcome = match &ev.what {
            What::Edit { field, value, .. } => edit(ev, *field, value, stores, conflicts, later),
            What::Delete { .. } => delete(ev, stores, conflicts),
            What::Create { email } => create(ev, email, history, stores, conflicts),
        };
        match outcome {
            Judged::Converged => v.converged += 1,
            Judged::Superseded => v.superseded += 1,
            Judged::Conflict => v.in_conflict += 1,
            Judged::Lost(why) => v.lost.push(format!("LOST {}: {why}", ev.describe())),
            Judged::Duplicated(why) => v
                .duplicated
                .push(format!("DUPLICATED {}: {why}", ev.describe())),
        }
    }
    let (dups, diverged) = compare_stores(stores);
    v.duplicated.extend(dups);
    v.diverged.extend(diverged);
    v
}

enum Judged {
    Converged,
    Superseded,
    Conflict,
    Lost(String),
    Duplicated(String),
}

fn edit(
    ev: &Event,
    field: usize,
    value: &str,
    stores: &Stores,
    conflicts: &Conflicts,
    later: impl Fn() -> bool,
) -> Judged {
    let id = ev.contact_id.as_deref().unwrap_or_default();
    let name = FIELDS[field].0;
    let canon = stores[&StoreId::Canonical].live(id);
    if let Some(row) = canon.filter(|r| r.fields[field].as_deref() == Some(value)) {
        let missing: Vec<String> = expected(row)
            .filter(|s| stores[s].live(id).and_then(|r| r.fields[field].as_deref()) != Some(value))
            .map(|s| s.name().to_string())
            .collect();
        return if missing.is_empty() {
            Judged::Converged
        } else {
            Judged::Lost(format!("in canonical, but not in {}", missing.join(", ")))
        };
    }
    if later() {
        return Judged::Superseded;
    }
    if conflicts.holds(id, name, value) || conflicts.delete_conflict(id) {
        return Judged::Conflict;
    }
    Judged::Lost(match canon {
        Some(r) => format!("canonical has {:?}", r.fields[field]),
        None => "the contact is not live in canonical".into(),
    })
}

fn delete(ev: &Event, stores: &Stores, conflicts: &Conflicts) -> Judged {
    let id = ev.contact_id.as_deref().unwrap_or_default();
    let live_in: Vec<&str> = StoreId::ALL
        .into_iter()
        .filter(|s| stores[s].live(id).is_some())
        .map(StoreId::name)
        .collect();
    if live_in.is_empty() {
        return Judged::Converged;
    }
    if conflicts.delete_conflict(id) {
        return Judged::Conflict;
    }
    Judged::Lost(format!("still live in {}", live_in.join(", ")))
}

fn create(
    ev: &Event,
    email: &str,
    history: &History,
    stores: &Stores,
    conflicts: &Conflicts,
) -> Judged {
    let canonical = &stores[&StoreId::Canonical];
    let found: Vec<(Option<&str>, &crate::snapshot::Row)> =
        canonical.live_with_email(email).collect();
    match found.as_slice() {
        [] => {
            if history.events.iter().any(|l| l.supersedes(ev)) {
                return Judged::Superseded;
            }
            // Deleted by a user through a conflict (its id: any record
            // with that email, live or not).
            let ids: BTreeSet<&str> = canonical
                .rows
                .iter()
                .filter(|(_, rows)| rows.iter().any(|r| r.email.as_deref() == Some(email)))
                .map(|(id, _)| id.as_str())
                .collect();
            if ids.iter().any(|id| conflicts.delete_conflict(id)) {
                return Judged::Conflict;
            }
            Judged::Lost("no live contact with this email in canonical".into())
        }
        [(Some(id), row)] => {
            let mut missing = Vec::new();
            let mut twice = Vec::new();
            for s in expected(row) {
                let n = stores[&s].live_with_email(email).count();
                if n == 0 || stores[&s].live(id).is_none() {
                    missing.push(s.name());
                } else if n > 1 {
                    twice.push(s.name());
                }
            }
            if !twice.is_empty() {
                Judged::Duplicated(format!("{id} held twice in {}", twice.join(", ")))
            } else if !missing.is_empty() {
                Judged::Lost(format!(
                    "{id} is in canonical, but not in {}",
                    missing.join(", ")
                ))
            } else {
                Judged::Converged
            }
        }
        more => Judged::Duplicated(format!(
            "{} live contacts with this email in canonical: {}",
            more.len(),
            more.iter()
                .map(|(id, _)| id.unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Every store against canonical: (duplicated, diverged), one line each.
pub fn compare_stores(stores: &Stores) -> (Vec<String>, Vec<String>) {
    let mut dups = Vec::new();
    let mut diverged = Vec::new();
    let canonical = &stores[&StoreId::Canonical];
    for (s, snap) in stores {
        for (id, rows) in &snap.rows {
            let live = rows.iter().filter(|r| r.live).count();
            if live > 1 {
                dups.push(format!("{} holds {id} {live} times", s.name()));
            }
        }
        let mut by_email: BTreeMap<&str, Vec<Option<&str>>> = BTreeMap::new();
        for (id, r) in snap.live_rows() {
            if let Some(e) = r.email.as_deref() {
                by_email.entry(e).or_default().push(id);
            }
        }
        for (email, ids) in by_email {
            let distinct: BTreeSet<_> = ids.iter().collect();
            if distinct.len() > 1 {
                dups.push(format!(
                    "{} holds {} live records with the email {email}: {:?}",
                    s.name(),
                    ids.len(),
                    ids
                ));
            }
        }
        if *s == StoreId::Canonical {
            continue;
        }
        for r in snap.unidentified.iter().filter(|r| r.live) {
            diverged.push(format!(
                "{} holds a record without contact_id (email {:?})",
                s.name(),
                r.email
            ));
        }
        for (id, rows) in &canonical.rows {
            let Some(c) = rows.iter().find(|r| r.live) else {
                continue;
            };
            if !expected(c).any(|e| e == *s) {
                continue;
            }
            match snap.live(id) {
                None => diverged.push(format!("{} lacks {id}", s.name())),
                Some(r) => {
                    for (i, (f, _)) in FIELDS.iter().enumerate() {
                        if r.fields[i] != c.fields[i] {
                            diverged.push(format!(
                                "{} differs on {id}.{f}: {:?}, canonical {:?}",
                                s.name(),
                                r.fields[i],
                                c.fields[i]
                            ));
                        }
                    }
                }
            }
        }
        for (id, _) in snap.rows.iter().filter(|(id, _)| snap.live(id).is_some()) {
            match canonical.live(id) {
                None => diverged.push(format!("{} holds {id} live; canonical does not", s.name())),
                Some(c) if !expected(c).any(|e| e == *s) => diverged.push(format!(
                    "{} holds {id}, which is category X (not for {})",
                    s.name(),
                    s.name()
                )),
                Some(_) => {}
            }
        }
    }
    (dups, diverged)
}
