//! Several daemons on one state database in Postgres (`[state] url`).
//!
//! The work is split into leases, each held by one daemon at a time:
//!
//! - `engine`: canonical's writes and capture, the initial syncs, the
//!   operator's requests, the console, the drift checks and retention;
//! - `store:<name>`, one per store: that store's capture and propagation.
//!
//! Every daemon holds a membership lease (`member:<holder>`) for as long as
//! it runs, so each knows how many share the work; each takes free leases
//! up to its fair share (the leases divided by the daemons, rounded up) and
//! hands over what is above it at the end of a cycle. A daemon whose
//! holder stops renewing (a crash, a pause, a partition) loses its leases
//! when they expire, and the others take them within `failover_secs`.
//!
//! Every commit to the state database checks the fencing tokens of all the
//! leases its daemon holds, in the same transaction, so a daemon that lost
//! one while paused cannot commit anything when it wakes up. Canonical
//! writes stay serialised (only the `engine` holder writes canonical), and
//! so do merges of one contact: a merge commits only if no other daemon
//! journaled that contact since it read it, and merges again otherwise
//! ([`contact_sync_engine::EngineOptions::concurrent`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use contact_sync_ops::LeaseGauge;
use contact_sync_state::lease::{holder_id, Held, LeaseRow, LeaseTimings, Leases};
use contact_sync_state::Fence;

use crate::config::Config;

/// The lease of canonical's writes and everything that is not one store's.
pub const ENGINE_LEASE: &str = "engine";
/// A daemon's membership, for as long as it runs.
const MEMBER_PREFIX: &str = "member:";
/// Memberships expired this long ago are deleted.
const MEMBER_PRUNE_AFTER: Duration = Duration::from_secs(3600);

/// The lease of store `name`'s capture and propagation.
pub fn store_lease(name: &str) -> String {
    format!("store:{name}")
}

/// This daemon's membership of a cluster and the leases it holds.
pub struct Cluster {
    leases: Arc<Leases>,
    holder: String,
    info: String,
    pub timings: LeaseTimings,
    /// Every lease of the work, `engine` first, then the stores' in
    /// configuration order.
    units: Vec<String>,
    member: Option<Held>,
    held: BTreeMap<String, Held>,
}

impl Cluster {
    /// The cluster of `cfg`: Some when the state database is on Postgres.
    pub async fn from_config(
        cfg: &Config,
        http: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<Option<Cluster>> {
        let Some(url) = state_url(cfg)? else {
            return Ok(None);
        };
        let leases = Leases::connect(&url)
            .await
            .map_err(|e| anyhow::anyhow!("state database: {e}"))?;
        let holder = holder_id();
        let mut info = format!("pid {}", std::process::id());
        if let Some(addr) = http {
            info.push_str(&format!(", http {addr}"));
        }
        let units = std::iter::once(ENGINE_LEASE.to_string())
            .chain(cfg.stores().keys().map(|n| store_lease(n)))
            .collect();
        Ok(Some(Cluster {
            leases: Arc::new(leases),
            holder,
            info,
            timings: LeaseTimings::for_failover(Duration::from_secs(cfg.cluster.failover_secs)),
            units,
            member: None,
            held: BTreeMap::new(),
        }))
    }

    /// Takes this daemon's membership (waiting while the database is
    /// unreachable, until `stop`): the others then leave it its share.
    pub async fn join(&mut self, stop: impl Fn() -> bool) -> anyhow::Result<()> {
        let name = self.member_name();
        self.member = Held::acquire(
            self.leases.clone(),
            &name,
            &self.holder,
            &self.info,
            self.timings,
            stop,
        )
        .await
        .map_err(|e| anyhow::anyhow!("state database: {e}"))?;
        if let Err(e) = self.leases.prune(MEMBER_PREFIX, MEMBER_PRUNE_AFTER).await {
            tracing::debug!(error = %e, "cannot prune old memberships");
        }
        Ok(())
    }

    /// Drops the leases found lost, then takes free leases up to this
    /// daemon's fair share (`share`, or the leases divided by the live
    /// members) and releases those above it. True when what this daemon
    /// holds changed (its work must be set up again).
    pub async fn rebalance(&mut self, share: Option<usize>) -> bool {
        // A membership that ran out (this daemon was paused or cut off past
        // it) is taken again: nobody else takes `member:<holder>`, and until
        // then the others count this daemon out and never leave it a share.
        if self.member.as_ref().is_some_and(|m| m.is_lost()) {
            let name = self.member_name();
            match Held::try_take(
                self.leases.clone(),
                &name,
                &self.holder,
                &self.info,
                self.timings,
            )
            .await
            {
                Ok(Some(m)) => self.member = Some(m),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot renew this daemon's membership"),
            }
        }
        let mut changed = false;
        let lost: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.is_lost())
            .map(|(n, _)| n.clone())
            .collect();
        for name in lost {
            self.held.remove(&name);
            changed = true;
        }
        let rows = match self.leases.list().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the lease table");
                return changed;
            }
        };
        let share = share.unwrap_or_else(|| {
            let members = rows
                .iter()
                .filter(|r| r.live && r.name.starts_with(MEMBER_PREFIX))
                .count()
                .max(1);
            self.units.len().div_ceil(members)
        });
        // Above the share: hand over the last stores first (a daemon
        // that just joined takes them at its next poll).
        while self.held.len() > share {
            let Some(name) = self
                .units
                .iter()
                .rev()
                .find(|u| self.held.contains_key(*u))
                .cloned()
            else {
                break;
            };
            if let Some(h) = self.held.remove(&name) {
                h.release().await;
                changed = true;
            }
        }
        let live: BTreeSet<&str> = rows
            .iter()
            .filter(|r| r.live)
            .map(|r| r.name.as_str())
            .collect();
        for unit in &self.units {
            if self.held.len() >= share {
                break;
            }
            if self.held.contains_key(unit) || live.contains(unit.as_str()) {
                continue;
            }
            match Held::try_take(
                self.leases.clone(),
                unit,
                &self.holder,
                &self.info,
                self.timings,
            )
            .await
            {
                Ok(Some(h)) => {
                    self.held.insert(unit.clone(), h);
                    changed = true;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(lease = %unit, error = %e, "cannot take the lease");
                    break;
                }
            }
        }
        changed
    }

    /// This daemon's membership lease.
    fn member_name(&self) -> String {
        format!("{MEMBER_PREFIX}{}", self.holder)
    }

    /// Whether this daemon holds any lease of the work.
    pub fn holds_any(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether this daemon holds every lease of the work.
    pub fn holds_all(&self) -> bool {
        self.held.len() == self.units.len()
    }

    /// Whether this daemon holds the `engine` lease (canonical's writes,
    /// the initial syncs, the requests, the console).
    pub fn is_primary(&self) -> bool {
        self.held.contains_key(ENGINE_LEASE)
    }

    /// The number of leases of the work.
    pub fn units(&self) -> usize {
        self.units.len()
    }

    /// What the engine of this daemon does
    /// ([`contact_sync_engine::EngineOptions::only`]).
    pub fn work(&self) -> BTreeSet<String> {
        self.held
            .keys()
            .map(|n| match n.strip_prefix("store:") {
                Some(store) => store.to_string(),
                None => contact_sync_engine::CANONICAL.to_string(),
            })
            .collect()
    }

    /// The fences of every lease held: each commit checks them all.
    pub fn fences(&self) -> Vec<Fence> {
        self.held
            .values()
            .map(|h| Fence {
                lease: h.name.clone(),
                holder: h.holder.clone(),
                token: h.token,
            })
            .collect()
    }

    /// The flags the heartbeats set when a lease is lost.
    pub fn lost_flags(&self) -> Vec<Arc<AtomicBool>> {
        self.held.values().map(|h| h.lost_flag()).collect()
    }

    /// Runs `f` when any lease held now is lost (once per lease).
    pub fn on_lost(&self, f: impl Fn() + Send + Sync + 'static) {
        let f = Arc::new(f);
        for h in self.held.values() {
            let f = f.clone();
            h.on_lost(move || f());
        }
    }

    /// Renews every lease held now: false when one turned out to be taken.
    pub async fn confirm(&self) -> bool {
        for h in self.held.values() {
            if !h.confirm(self.timings.ttl).await {
                return false;
            }
        }
        true
    }

    /// Gives every lease up (a clean stop), the membership last.
    pub async fn release_all(&mut self) {
        self.release_work().await;
        if let Some(m) = self.member.take() {
            m.release().await;
        }
    }

    /// Gives up the leases of the work (not the membership): `run --once`
    /// that could not have them all.
    pub async fn release_work(&mut self) {
        for (_, h) in std::mem::take(&mut self.held) {
            h.release().await;
        }
    }

    /// Who holds the leases this daemon does not, in words.
    pub async fn describe_holders(&self) -> String {
        let rows: Vec<LeaseRow> = match self.leases.list().await {
            Ok(rows) => rows,
            Err(e) => return e.to_string(),
        };
        let others: Vec<String> = rows
            .iter()
            .filter(|r| r.live && r.holder != self.holder && self.units.contains(&r.name))
            .map(|r| {
                format!(
                    "{}: {}, {}, since {}",
                    r.name, r.holder, r.info, r.acquired_at
                )
            })
            .collect();
        if others.is_empty() {
            "they were just released".into()
        } else {
            others.join("; ")
        }
    }

    /// The lease table's connection, for a task that watches how far the
    /// shared work has gone ([`Leases::progress`]): a daemon wakes when
    /// another moved it.
    pub fn progress_probe(&self) -> Arc<Leases> {
        self.leases.clone()
    }

    /// What `/metrics` says of this daemon's part: every lease of the work.
    pub fn gauges(&self) -> Vec<LeaseGauge> {
        self.units
            .iter()
            .map(|u| {
                let h = self.held.get(u);
                LeaseGauge {
                    name: u.clone(),
                    holder: self.holder.clone(),
                    held: h.is_some(),
                    token: h.map(|h| h.token),
                }
            })
            .collect()
    }
}

/// The state database's URL when it is on Postgres.
pub fn state_url(cfg: &Config) -> anyhow::Result<Option<String>> {
    Ok(match cfg.state_target()? {
        contact_sync_state::StateTarget::Url(url) => Some(url),
        contact_sync_state::StateTarget::Path(_) => None,
    })
}

/// The fences of the leases this process holds, applied to every state
/// database connection it opens (the engine's, the initial syncs', the
/// operator requests').
static FENCES: std::sync::Mutex<Vec<Fence>> = std::sync::Mutex::new(Vec::new());

pub fn current_fences() -> Vec<Fence> {
    FENCES.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Sets the fences for connections opened from now (empty: none).
pub fn set_fences(fences: Vec<Fence>) {
    *FENCES.lock().unwrap_or_else(|p| p.into_inner()) = fences;
}
