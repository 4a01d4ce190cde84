//! Health: whether the daemon is doing its job, for `/health`: healthy
//! (200), degraded (200, with reasons: a store failed its last runs but
//! not yet often enough to call the daemon unhealthy) or unhealthy (503).

use std::time::Duration;

use serde::Serialize;

use crate::metrics::MetricsSnapshot;

/// When the daemon counts as unhealthy.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthThresholds {
    /// A store failing this many runs in a row makes the daemon unhealthy.
    pub max_store_failures: u64,
    /// A store whose last success is older than this makes it unhealthy.
    pub max_lag: Duration,
}

impl Default for HealthThresholds {
    /// 3 failed runs in a row; 30 minutes without a success (six default
    /// 5-minute intervals).
    fn default() -> Self {
        HealthThresholds {
            max_store_failures: 3,
            max_lag: Duration::from_secs(30 * 60),
        }
    }
}

/// Why the daemon is unhealthy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum UnhealthyReason {
    /// The last cycle failed as a whole (canonical store or state database).
    LastCycleFailed { error: String },
    /// A store failed `consecutive_errors` runs in a row (its capture or the
    /// propagation to it): unhealthy from `max_store_failures` on, degraded
    /// below.
    StoreFailing {
        store: String,
        consecutive_errors: u64,
        last_error: Option<String>,
    },
    /// A guard paused the store; nothing of it is merged or written until
    /// a person decides (`contact-sync paused`).
    StorePaused {
        store: String,
        kind: String,
        message: String,
    },
    /// A store's last success is `lag_seconds` old, over `max_lag_seconds`.
    Lagging {
        store: String,
        lag_seconds: f64,
        max_lag_seconds: f64,
    },
}

impl std::fmt::Display for UnhealthyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnhealthyReason::LastCycleFailed { error } => write!(f, "last cycle failed: {error}"),
            UnhealthyReason::StoreFailing {
                store,
                consecutive_errors,
                last_error,
            } => {
                write!(f, "store {store} failed {consecutive_errors} runs in a row")?;
                if let Some(e) = last_error {
                    write!(f, ": {e}")?;
                }
                Ok(())
            }
            UnhealthyReason::StorePaused {
                store,
                kind,
                message,
            } => write!(f, "store {store} is paused ({kind}): {message}"),
            UnhealthyReason::Lagging {
                store,
                lag_seconds,
                max_lag_seconds,
            } => write!(
                f,
                "store {store} last synced {lag_seconds:.0} s ago (limit {max_lag_seconds:.0} s)"
            ),
        }
    }
}

/// Healthy, degraded or unhealthy, with every reason found.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthStatus {
    Healthy,
    /// Working, but something failed recently (each reason named); still
    /// 200, so a load balancer keeps the daemon.
    Degraded(Vec<UnhealthyReason>),
    /// Not doing its job: 503.
    Unhealthy(Vec<UnhealthyReason>),
}

/// Longest error text put in a health body.
const MAX_ERROR_LEN: usize = 300;

fn clip(s: &str) -> String {
    if s.len() <= MAX_ERROR_LEN {
        return s.to_string();
    }
    let mut end = MAX_ERROR_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl HealthStatus {
    /// Judges a snapshot (whose lag is already as of "now"). Before the
    /// first cycle nothing has failed, so a fresh daemon is healthy.
    pub fn evaluate(snap: &MetricsSnapshot, t: &HealthThresholds) -> HealthStatus {
        let mut reasons = Vec::new();
        let mut minor = Vec::new();
        if let Some(error) = snap.last_cycle.as_ref().and_then(|c| c.error.as_ref()) {
            reasons.push(UnhealthyReason::LastCycleFailed { error: clip(error) });
        }
        let max_lag = t.max_lag.as_secs_f64();
        for s in &snap.stores {
            if let Some((kind, message)) = &s.paused {
                reasons.push(UnhealthyReason::StorePaused {
                    store: s.store.clone(),
                    kind: kind.clone(),
                    message: clip(message),
                });
            }
            if s.consecutive_errors > 0 {
                let r = UnhealthyReason::StoreFailing {
                    store: s.store.clone(),
                    consecutive_errors: s.consecutive_errors,
                    last_error: s.last_error.as_deref().map(clip),
                };
                if t.max_store_failures > 0 && s.consecutive_errors >= t.max_store_failures {
                    reasons.push(r);
                } else {
                    minor.push(r);
                }
            }
            if let Some(lag) = s.lag_seconds.filter(|l| *l > max_lag) {
                reasons.push(UnhealthyReason::Lagging {
                    store: s.store.clone(),
                    lag_seconds: lag,
                    max_lag_seconds: max_lag,
                });
            }
        }
        if !reasons.is_empty() {
            reasons.extend(minor);
            HealthStatus::Unhealthy(reasons)
        } else if !minor.is_empty() {
            HealthStatus::Degraded(minor)
        } else {
            HealthStatus::Healthy
        }
    }

    pub fn is_healthy(&self) -> bool {
        matches!(self, HealthStatus::Healthy)
    }

    /// 200 when healthy or degraded, 503 when unhealthy.
    pub fn http_status(&self) -> u16 {
        match self {
            HealthStatus::Unhealthy(_) => 503,
            _ => 200,
        }
    }

    /// `healthy`, `degraded` or `unhealthy`.
    pub fn label(&self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded(_) => "degraded",
            HealthStatus::Unhealthy(_) => "unhealthy",
        }
    }

    /// The reasons (empty when healthy).
    pub fn reasons(&self) -> &[UnhealthyReason] {
        match self {
            HealthStatus::Healthy => &[],
            HealthStatus::Degraded(r) | HealthStatus::Unhealthy(r) => r,
        }
    }

    /// The `/health` body:
    /// `{"status": "healthy"|"degraded"|"unhealthy", "reasons": [{"reason": …, "message": …, …}],
    ///   "checked_at": …, "last_cycle": {…}|null, "stores": [{"store", "lag_seconds", "consecutive_errors", "pending"}]}`.
    pub fn to_json(&self, snap: &MetricsSnapshot) -> serde_json::Value {
        let reasons: Vec<serde_json::Value> = self
            .reasons()
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("message".into(), r.to_string().into());
                }
                v
            })
            .collect();
        let stores: Vec<serde_json::Value> = snap
            .stores
            .iter()
            .map(|s| {
                serde_json::json!({
                    "store": s.store,
                    "lag_seconds": s.lag_seconds,
                    "consecutive_errors": s.consecutive_errors,
                    "pending": s.pending,
                })
            })
            .collect();
        serde_json::json!({
            "status": self.label(),
            "reasons": reasons,
            "checked_at": contact_sync_core::model::format_ts(&snap.taken_at),
            "last_cycle": snap.last_cycle.as_ref().map(|c| serde_json::json!({
                "finished_at": contact_sync_core::model::format_ts(&c.finished_at),
                "duration_seconds": c.duration_secs,
                "completed": c.completed(),
                "failed_stores": c.failed_stores,
            })),
            "stores": stores,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{CycleOutcome, StoreMetrics};

    fn snap_with(store: StoreMetrics) -> MetricsSnapshot {
        MetricsSnapshot {
            stores: vec![store],
            ..Default::default()
        }
    }

    #[test]
    fn fresh_daemon_is_healthy() {
        let s = MetricsSnapshot::default();
        let h = HealthStatus::evaluate(&s, &HealthThresholds::default());
        assert_eq!(h, HealthStatus::Healthy);
        assert_eq!(h.http_status(), 200);
        assert_eq!(h.to_json(&s)["status"], "healthy");
    }

    #[test]
    fn each_cause_gives_its_reason() {
        let t = HealthThresholds::default();
        let failing = snap_with(StoreMetrics {
            store: "twenty".into(),
            consecutive_errors: 3,
            last_error: Some("twenty: 401 unauthorized".into()),
            ..Default::default()
        });
        let h = HealthStatus::evaluate(&failing, &t);
        assert_eq!(h.http_status(), 503);
        assert!(h.reasons()[0].to_string().contains("twenty failed 3 runs"));
        // Below the threshold: degraded (200), the store and error named.
        let two = snap_with(StoreMetrics {
            store: "supabase".into(),
            consecutive_errors: 2,
            last_error: Some("supabase: writing a batch: permission denied".into()),
            ..Default::default()
        });
        let h = HealthStatus::evaluate(&two, &t);
        assert_eq!(h.http_status(), 200);
        assert!(!h.is_healthy());
        let body = h.to_json(&two);
        assert_eq!(body["status"], "degraded");
        assert!(body["reasons"][0]["message"].as_str().is_some_and(|m| m
            .contains("supabase failed 2 runs")
            && m.contains("permission denied")));

        // A paused store is unhealthy at once, with the guard's reason.
        let paused = snap_with(StoreMetrics {
            store: "supabase".into(),
            paused: Some((
                "mass_change".into(),
                "2000 deletes in one window of changes from supabase exceed the mass-change guard"
                    .into(),
            )),
            ..Default::default()
        });
        let h = HealthStatus::evaluate(&paused, &t);
        assert_eq!(h.http_status(), 503);
        let m = h.reasons()[0].to_string();
        assert!(
            m.contains("supabase is paused (mass_change)") && m.contains("2000 deletes"),
            "{m}"
        );

        let lagging = snap_with(StoreMetrics {
            store: "local".into(),
            lag_seconds: Some(4000.0),
            ..Default::default()
        });
        let h = HealthStatus::evaluate(&lagging, &t);
        assert!(
            matches!(&h.reasons()[0], UnhealthyReason::Lagging { store, .. } if store == "local")
        );

        let failed_cycle = MetricsSnapshot {
            last_cycle: Some(CycleOutcome::failed(
                "canonical: connection refused",
                Duration::from_secs(1),
                contact_sync_core::model::now(),
            )),
            ..Default::default()
        };
        let h = HealthStatus::evaluate(&failed_cycle, &t);
        let body = h.to_json(&failed_cycle);
        assert_eq!(body["status"], "unhealthy");
        assert_eq!(body["reasons"][0]["reason"], "last_cycle_failed");
        assert!(body["reasons"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("connection refused")));
    }
}
