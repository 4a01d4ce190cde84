//! The history: every user write the soak made, in the order the stores
//! acknowledged them (Jepsen-style). A write whose outcome is unknown (the
//! connection broke after the statement was sent) is kept too, marked
//! `acked: false`: it may have happened, so it may supersede an earlier
//! write, but it is never required to have survived.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::snapshot::{StoreId, FIELDS};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// Field `FIELDS[field]` set to `value` (unique across the run).
    Edit {
        field: usize,
        value: String,
        /// Whether the write moved `last_updated` to now (only BigQuery's
        /// user chooses; an edit that does not is found by the sweep).
        bumped: bool,
    },
    /// A new contact with this primary email (unique across the run).
    Create { email: String },
    /// The contact deleted (`hard`: the row removed; else a tombstone or
    /// Twenty's soft delete); its primary email when known.
    Delete { email: Option<String>, hard: bool },
}

#[derive(Clone, Debug)]
pub struct Event {
    /// Global order: the order of the acknowledgements.
    pub n: u64,
    pub store: StoreId,
    /// `None` for a person created in Twenty (Twenty knows no contact id).
    pub contact_id: Option<String>,
    pub what: What,
    /// `false`: the outcome is unknown (maybe applied).
    pub acked: bool,
    /// Since the start of the run.
    pub at: Duration,
}

impl Event {
    /// Whether `self`, coming later, may have overwritten `earlier`'s
    /// effect: a write of the same field of the same contact, or a delete
    /// of the contact.
    pub fn supersedes(&self, earlier: &Event) -> bool {
        if self.n <= earlier.n {
            return false;
        }
        match (&earlier.what, &self.what) {
            (What::Edit { field: a, .. }, What::Edit { field: b, .. }) => {
                a == b && same_contact(earlier, self)
            }
            (What::Edit { .. }, What::Delete { .. }) => same_contact(earlier, self),
            (What::Create { email }, What::Delete { email: Some(e), .. }) => email == e,
            _ => false,
        }
    }

    pub fn describe(&self) -> String {
        let id = self.contact_id.as_deref().unwrap_or("(new person)");
        let what = match &self.what {
            What::Edit {
                field,
                value,
                bumped,
            } => format!(
                "{id}.{} = {value:?}{}",
                FIELDS[*field].0,
                if *bumped {
                    ""
                } else {
                    " (last_updated not bumped)"
                }
            ),
            What::Create { email } => format!("create {email}"),
            What::Delete { hard: true, .. } => format!("hard delete {id}"),
            What::Delete { .. } => format!("delete {id}"),
        };
        format!(
            "#{} at {:.1} s in {}: {what}{}",
            self.n,
            self.at.as_secs_f64(),
            self.store.name(),
            if self.acked { "" } else { " (outcome unknown)" }
        )
    }
}

fn same_contact(a: &Event, b: &Event) -> bool {
    a.contact_id.is_some() && a.contact_id == b.contact_id
}

/// Counts of user actions, for the report.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub acked: u64,
    pub unknown: u64,
    /// Refused or failed before having any effect (row gone, store down,
    /// 404, 429, …): not writes at all.
    pub not_done: u64,
}

#[derive(Debug, Default)]
pub struct History {
    pub events: Vec<Event>,
    pub per_store: BTreeMap<StoreId, Tally>,
}

impl History {
    /// Appends an event; returns it (with its number).
    pub fn push(
        &mut self,
        store: StoreId,
        contact_id: Option<String>,
        what: What,
        acked: bool,
        at: Duration,
    ) -> Event {
        let ev = Event {
            n: self.events.len() as u64 + 1,
            store,
            contact_id,
            what,
            acked,
            at,
        };
        let t = self.per_store.entry(store).or_default();
        if acked {
            t.acked += 1;
        } else {
            t.unknown += 1;
        }
        self.events.push(ev.clone());
        ev
    }

    pub fn not_done(&mut self, store: StoreId) {
        self.per_store.entry(store).or_default().not_done += 1;
    }

    pub fn acked(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(|e| e.acked)
    }
}
