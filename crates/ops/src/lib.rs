//! Operating contact-sync for months: the pieces the CLI and the daemon use
//! to make "never requires manual intervention" and "nothing hidden"
//! checkable.
//!
//! - [`metrics`]: a [`MetricsSnapshot`] built from the state database plus
//!   per-store counts, [`render_prometheus`] (text exposition format 0.0.4),
//!   and the shared [`OpsHandle`] the daemon updates after every cycle.
//! - [`health`]: [`HealthStatus`] (healthy, or unhealthy with reasons) → HTTP
//!   200 / 503 with a JSON body.
//! - [`server`]: [`serve`] runs `GET /health`, `GET /metrics` and any extra
//!   routes (the Twenty webhook receiver) with axum; loopback only unless
//!   explicitly allowed; graceful shutdown through [`ServerHandle`].
//! - [`console`]: the operator console (HTML pages and a JSON API) on the
//!   same listener.
//! - [`check`]: the safety checks of `contact-sync check` ([`Check`],
//!   [`Verdict`], [`CheckReport`], the built-in checks and the
//!   [`SafetyCheck`] trait for store-specific ones).
//! - [`alert`]: [`Alert`]s evaluated from a snapshot, logged as tracing
//!   events with a stable `alert` field, optionally POSTed to a webhook.
//! - [`service`]: systemd unit and launchd plist text for the current install.
//!
//! Nothing here logs or sends contact data or secrets: metrics carry only
//! store names and numbers; alert webhooks carry only store names, numbers
//! and fixed texts.

pub mod alert;
pub mod check;
pub mod console;
pub mod health;
pub mod metrics;
pub mod server;
pub mod service;

pub use alert::{Alert, AlertThresholds, Alerter, NotifyError, Severity, WebhookNotifier};
pub use check::{
    run_checks, Check, CheckInputs, CheckReport, CheckThresholds, Level, SafetyCheck, Verdict,
};
pub use health::{HealthStatus, HealthThresholds, UnhealthyReason};
pub use metrics::{
    render_prometheus, CycleOutcome, LeaseGauge, MetricsSnapshot, OpsHandle, QueryCost,
    StoreMetrics, StoreSample,
};
pub use server::{serve, ServeError, ServerConfig, ServerHandle};
pub use service::{launchd_plist, systemd_unit, ServiceError};

/// An error reading the state database for metrics or checks.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    State(#[from] contact_sync_state::StateError),
}
