//! Lag: from a user write's acknowledgement to the first snapshot in which
//! every other store shows it (sampled by polling, so each figure is an
//! upper bound, late by at most one polling round). A probe whose write is
//! superseded before it is seen everywhere is dropped (it never can be);
//! one still waiting at the end is reported (its write ended as a
//! conflict, or was lost: the checker says which).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::history::{Event, What};
use crate::snapshot::{Snapshot, StoreId};

enum Target {
    Field {
        id: String,
        field: usize,
        value: String,
    },
    Live {
        email: String,
    },
    Gone {
        id: String,
    },
}

struct Probe {
    event: Event,
    target: Target,
    acked: Instant,
    waiting: BTreeSet<StoreId>,
    last_seen: Instant,
}

/// One write seen everywhere.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub origin: StoreId,
    pub lag: Duration,
    /// When it was complete (for per-minute figures).
    pub done: Instant,
}

#[derive(Default)]
pub struct Lag {
    pending: Vec<Probe>,
    pub samples: Vec<Sample>,
    pub superseded: u64,
}

impl Lag {
    /// Starts watching an acknowledged write; an event of any outcome
    /// first drops the probes it supersedes.
    pub fn record(&mut self, ev: &Event, acked_at: Instant) {
        let before = self.pending.len();
        self.pending.retain(|p| !ev.supersedes(&p.event));
        // A delete's probe waits for the contact to vanish: a later edit of
        // it (a delete-versus-edit conflict) ends that wait too.
        self.pending.retain(|p| match (&p.target, &ev.contact_id) {
            (Target::Gone { id }, Some(c)) => id != c,
            _ => true,
        });
        self.superseded += (before - self.pending.len()) as u64;
        if !ev.acked {
            return;
        }
        let target = match (&ev.what, &ev.contact_id) {
            (What::Edit { field, value, .. }, Some(id)) => Target::Field {
                id: id.clone(),
                field: *field,
                value: value.clone(),
            },
            (What::Create { email }, _) => Target::Live {
                email: email.clone(),
            },
            (What::Delete { .. }, Some(id)) => Target::Gone { id: id.clone() },
            _ => return,
        };
        let waiting = StoreId::ALL
            .into_iter()
            .filter(|s| *s != ev.store)
            .collect();
        self.pending.push(Probe {
            event: ev.clone(),
            target,
            acked: acked_at,
            waiting,
            last_seen: acked_at,
        });
    }

    /// Marks what `snap` (of `store`) shows. `canonical` tells which
    /// contacts are category X (never in Twenty).
    pub fn observe(&mut self, store: StoreId, snap: &Snapshot, canonical: Option<&Snapshot>) {
        let mut done = Vec::new();
        for (i, p) in self.pending.iter_mut().enumerate() {
            if !p.waiting.contains(&store) {
                continue;
            }
            let excluded = store == StoreId::Twenty
                && match &p.target {
                    Target::Field { id, .. } | Target::Gone { id } => canonical
                        .and_then(|c| c.live(id))
                        .is_some_and(|r| r.category.as_deref() == Some("X")),
                    Target::Live { .. } => false,
                };
            let visible = match &p.target {
                Target::Field { id, field, value } => snap
                    .live(id)
                    .is_some_and(|r| r.fields[*field].as_deref() == Some(value.as_str())),
                Target::Live { email } => snap.live_with_email(email).next().is_some(),
                Target::Gone { id } => snap.live(id).is_none(),
            };
            if excluded || visible {
                p.waiting.remove(&store);
                if visible && !excluded && snap.at > p.last_seen {
                    p.last_seen = snap.at;
                }
            }
            if p.waiting.is_empty() {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let p = self.pending.swap_remove(i);
            self.samples.push(Sample {
                origin: p.event.store,
                lag: p.last_seen.saturating_duration_since(p.acked),
                done: p.last_seen,
            });
        }
    }

    /// Probes still waiting.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// p-quantile (0..=1) of sorted durations.
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
