//! Several daemons on one state database in Postgres (`[state] url`).
//!
//! The work (every store's capture and propagation, the initial syncs, the
//! operator's requests) is one lease, `engine`: the daemon holding it runs
//! the cycles; the others wait as standbys, serving `/health` and
//! `/metrics`, and take the lease over when its holder stops renewing it
//! (a crash, a pause, a partition) or hands it over (a clean shutdown).
//! Every commit to the state database checks the lease's fencing token in
//! the same transaction, so a holder that lost its lease while paused
//! cannot commit anything when it wakes up. Canonical writes stay
//! serialised: only the holder writes.

use std::sync::Arc;
use std::time::Duration;

use contact_sync_ops::LeaseGauge;
use contact_sync_state::lease::{holder_id, Held, LeaseTimings, Leases};
use contact_sync_state::Fence;

use crate::config::Config;

/// The one lease of this version: the whole engine.
pub const ENGINE_LEASE: &str = "engine";

/// This daemon's membership of a cluster.
pub struct Cluster {
    leases: Arc<Leases>,
    holder: String,
    info: String,
    pub timings: LeaseTimings,
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
        Ok(Some(Cluster {
            leases: Arc::new(leases),
            holder,
            info,
            timings: LeaseTimings::for_failover(Duration::from_secs(cfg.cluster.failover_secs)),
        }))
    }

    /// Waits for the engine lease (None when `stop` says to give up).
    pub async fn acquire(&self, stop: impl Fn() -> bool) -> anyhow::Result<Option<Held>> {
        Held::acquire(
            self.leases.clone(),
            ENGINE_LEASE,
            &self.holder,
            &self.info,
            self.timings,
            stop,
        )
        .await
        .map_err(|e| anyhow::anyhow!("state database: {e}"))
    }

    /// Who holds the engine lease, in words.
    pub async fn describe_holder(&self) -> String {
        match self.leases.live(ENGINE_LEASE).await {
            Ok(Some(r)) => format!("{}, {}, since {}", r.holder, r.info, r.acquired_at),
            Ok(None) => "it was just released".into(),
            Err(e) => e.to_string(),
        }
    }

    /// What `/metrics` says of this daemon's part.
    pub fn gauge(&self, held: Option<&Held>) -> LeaseGauge {
        LeaseGauge {
            name: ENGINE_LEASE.into(),
            holder: self.holder.clone(),
            held: held.is_some(),
            token: held.map(|h| h.token),
        }
    }
}

/// The state database's URL when it is on Postgres.
pub fn state_url(cfg: &Config) -> anyhow::Result<Option<String>> {
    Ok(match cfg.state_target()? {
        contact_sync_state::StateTarget::Url(url) => Some(url),
        contact_sync_state::StateTarget::Path(_) => None,
    })
}

/// The fence of the lease this process holds, applied to every state
/// database connection it opens (the engine's, the initial syncs', the
/// operator requests').
static FENCE: std::sync::Mutex<Option<Fence>> = std::sync::Mutex::new(None);

pub fn current_fence() -> Option<Fence> {
    FENCE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Sets (or, with None, clears) the fence for connections opened from now.
pub fn set_fence(held: Option<&Held>) {
    *FENCE.lock().unwrap_or_else(|p| p.into_inner()) = held.map(|h| Fence {
        lease: h.name.clone(),
        holder: h.holder.clone(),
        token: h.token,
    });
}
