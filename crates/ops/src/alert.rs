//! Alerts: conditions a person should hear about, found in a
//! [`MetricsSnapshot`] by [`evaluate`], logged as tracing events with a
//! stable `alert` field (`sync_failure`, `conflict_detected`, `drift`,
//! `latency`, `slot_wal`) and optionally POSTed as JSON to a webhook.
//!
//! An alert never carries contact data or secrets to the webhook: only the
//! kind, severity, store name, a number, the threshold and a fixed summary.
//! Error texts (which may quote a value a store refused) stay in the log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use contact_sync_core::model::format_ts;
use contact_sync_core::Timestamp;
use serde::Serialize;

use crate::metrics::MetricsSnapshot;

/// Something a person should hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum Alert {
    /// A store failed `consecutive_errors` runs in a row, or (`store: None`)
    /// the whole cycle failed. `error` goes to the log only.
    SyncFailure {
        store: Option<String>,
        consecutive_errors: u64,
        error: Option<String>,
    },
    /// `open` conflicts wait for a person.
    ConflictDetected { open: u64 },
    /// The store differed from canonical by `pct` percent at the last verification.
    Drift { store: String, pct: f64 },
    /// The store's last success is `seconds` old.
    Latency { store: String, seconds: f64 },
    /// The store's replication slot retains `bytes` of WAL.
    SlotWal { store: String, bytes: u64 },
}

/// How urgent an alert is; logged at warn or error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Alert {
    /// The stable `alert` field value.
    pub fn kind(&self) -> &'static str {
        match self {
            Alert::SyncFailure { .. } => "sync_failure",
            Alert::ConflictDetected { .. } => "conflict_detected",
            Alert::Drift { .. } => "drift",
            Alert::Latency { .. } => "latency",
            Alert::SlotWal { .. } => "slot_wal",
        }
    }

    /// Sync failures and a swelling replication slot (it fills the
    /// database's disk) are critical; the rest are warnings.
    pub fn severity(&self) -> Severity {
        match self {
            Alert::SyncFailure { .. } | Alert::SlotWal { .. } => Severity::Critical,
            _ => Severity::Warning,
        }
    }

    /// The store concerned, if one.
    pub fn store(&self) -> Option<&str> {
        match self {
            Alert::SyncFailure { store, .. } => store.as_deref(),
            Alert::ConflictDetected { .. } => None,
            Alert::Drift { store, .. }
            | Alert::Latency { store, .. }
            | Alert::SlotWal { store, .. } => Some(store),
        }
    }

    /// The alert's number (errors in a row, open conflicts, percent,
    /// seconds, bytes).
    pub fn value(&self) -> f64 {
        match self {
            Alert::SyncFailure {
                consecutive_errors, ..
            } => *consecutive_errors as f64,
            Alert::ConflictDetected { open } => *open as f64,
            Alert::Drift { pct, .. } => *pct,
            Alert::Latency { seconds, .. } => *seconds,
            Alert::SlotWal { bytes, .. } => *bytes as f64,
        }
    }

    /// Identity for de-duplication: kind and store.
    fn key(&self) -> String {
        format!("{}:{}", self.kind(), self.store().unwrap_or(""))
    }

    /// A one-line summary without contact data or error text.
    pub fn summary(&self) -> String {
        match self {
            Alert::SyncFailure {
                store: Some(store),
                consecutive_errors,
                ..
            } => format!("store {store} failed {consecutive_errors} sync runs in a row"),
            Alert::SyncFailure { store: None, .. } => {
                "the sync cycle failed (canonical store or state database)".to_string()
            }
            Alert::ConflictDetected { open } => {
                format!("{open} conflicts wait for a person (contact-sync conflicts list)")
            }
            Alert::Drift { store, pct } => {
                format!("store {store} differs from canonical by {pct:.2} %")
            }
            Alert::Latency { store, seconds } => {
                format!("store {store} has not synced for {seconds:.0} s")
            }
            Alert::SlotWal { store, bytes } => format!(
                "replication slot of store {store} retains {:.1} MiB of WAL",
                *bytes as f64 / (1024.0 * 1024.0)
            ),
        }
    }

    /// Logs the alert: error level when critical, warn otherwise, with the
    /// fields `alert`, `store`, `value` (and `error` for sync failures).
    pub fn emit(&self) {
        let kind = self.kind();
        let store = self.store().unwrap_or("");
        let value = self.value();
        let summary = self.summary();
        let error = match self {
            Alert::SyncFailure { error, .. } => error.as_deref().unwrap_or(""),
            _ => "",
        };
        match self.severity() {
            Severity::Critical => {
                tracing::error!(alert = kind, store, value, error, "{summary}")
            }
            Severity::Warning => tracing::warn!(alert = kind, store, value, "{summary}"),
        }
    }

    /// The webhook body: `{"source": "contact-sync", "alert", "severity",
    /// "store" (or null), "value", "summary", "at"}`. No error text, no
    /// contact data.
    pub fn webhook_body(&self, at: Timestamp) -> serde_json::Value {
        serde_json::json!({
            "source": "contact-sync",
            "alert": self.kind(),
            "severity": self.severity(),
            "store": self.store(),
            "value": self.value(),
            "summary": self.summary(),
            "at": format_ts(&at),
        })
    }
}

/// When to alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertThresholds {
    /// Drift above this percent.
    pub drift_pct: f64,
    /// A last success older than this.
    pub latency: Duration,
    /// Retained WAL above this many bytes.
    pub slot_wal_bytes: u64,
    /// This many failed runs of a store in a row (at least 1).
    pub sync_failures: u64,
}

impl Default for AlertThresholds {
    /// Drift > 5 %, latency > 300 s, WAL > 1 GiB, any failed run.
    fn default() -> Self {
        AlertThresholds {
            drift_pct: 5.0,
            latency: Duration::from_secs(300),
            slot_wal_bytes: 1 << 30,
            sync_failures: 1,
        }
    }
}

/// The alerts a snapshot calls for. Meant for a snapshot taken right after
/// a cycle (then a store that synced has a lag near zero).
pub fn evaluate(snap: &MetricsSnapshot, t: &AlertThresholds) -> Vec<Alert> {
    let mut out = Vec::new();
    if let Some(error) = snap.last_cycle.as_ref().and_then(|c| c.error.clone()) {
        out.push(Alert::SyncFailure {
            store: None,
            consecutive_errors: 1,
            error: Some(error),
        });
    }
    for s in &snap.stores {
        if s.consecutive_errors >= t.sync_failures.max(1) {
            out.push(Alert::SyncFailure {
                store: Some(s.store.clone()),
                consecutive_errors: s.consecutive_errors,
                error: s.last_error.clone(),
            });
        }
    }
    if snap.conflicts_open > 0 {
        out.push(Alert::ConflictDetected {
            open: snap.conflicts_open,
        });
    }
    for s in &snap.stores {
        if let Some(pct) = s.drift_pct.filter(|p| *p > t.drift_pct) {
            out.push(Alert::Drift {
                store: s.store.clone(),
                pct,
            });
        }
        if let Some(seconds) = s.lag_seconds.filter(|l| *l > t.latency.as_secs_f64()) {
            out.push(Alert::Latency {
                store: s.store.clone(),
                seconds,
            });
        }
        if let Some(bytes) = s.retained_wal_bytes.filter(|b| *b > t.slot_wal_bytes) {
            out.push(Alert::SlotWal {
                store: s.store.clone(),
                bytes,
            });
        }
    }
    out
}

/// Why a webhook notification failed. Never contains the URL (it may hold
/// a token) nor the body.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("alert webhook URL is not usable: {0}")]
    InvalidUrl(String),
    #[error("alert webhook client: {0}")]
    Client(String),
    #[error("alert webhook POST failed: {0}")]
    Send(String),
    #[error("alert webhook answered HTTP {0}")]
    Status(u16),
}

/// POSTs alerts as JSON to a URL (Slack-style incoming webhook, a relay,
/// an alert manager), with a timeout, over rustls. Its `Debug` shows only
/// the host.
#[derive(Clone)]
pub struct WebhookNotifier {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("host", &self.url.host_str().unwrap_or(""))
            .finish_non_exhaustive()
    }
}

impl WebhookNotifier {
    /// `url` must be http or https. Each POST gives up after `timeout`;
    /// redirects are not followed.
    pub fn new(url: &str, timeout: Duration) -> Result<WebhookNotifier, NotifyError> {
        let url = reqwest::Url::parse(url).map_err(|e| NotifyError::InvalidUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(NotifyError::InvalidUrl(format!(
                "scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("contact-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Client(e.without_url().to_string()))?;
        Ok(WebhookNotifier { client, url })
    }

    /// POSTs [`Alert::webhook_body`]; a non-2xx answer is an error.
    pub async fn notify(&self, alert: &Alert, at: Timestamp) -> Result<(), NotifyError> {
        let resp = self
            .client
            .post(self.url.clone())
            .json(&alert.webhook_body(at))
            .send()
            .await
            .map_err(|e| NotifyError::Send(e.without_url().to_string()))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(NotifyError::Status(status.as_u16()))
        }
    }
}

/// Evaluates snapshots cycle after cycle and raises each alert once: when
/// it appears, again every `repeat_after` while it lasts, and for conflicts
/// again whenever the open count grows. An alert that is gone is logged as
/// resolved (info, same `alert` field).
#[derive(Debug)]
pub struct Alerter {
    thresholds: AlertThresholds,
    notifier: Option<WebhookNotifier>,
    repeat_after: Duration,
    active: BTreeMap<String, (Alert, Instant)>,
}

impl Alerter {
    /// Repeats a lasting alert every 6 hours.
    pub fn new(thresholds: AlertThresholds, notifier: Option<WebhookNotifier>) -> Self {
        Alerter {
            thresholds,
            notifier,
            repeat_after: Duration::from_secs(6 * 3600),
            active: BTreeMap::new(),
        }
    }

    pub fn with_repeat_after(mut self, repeat_after: Duration) -> Self {
        self.repeat_after = repeat_after;
        self
    }

    /// Evaluates `snap`, logs and notifies the alerts due, and returns them.
    /// A failed notification is logged (warn) and does not stop the others.
    pub async fn process(&mut self, snap: &MetricsSnapshot) -> Vec<Alert> {
        let now = Instant::now();
        let current = evaluate(snap, &self.thresholds);
        let mut due = Vec::new();
        let keys: Vec<String> = current.iter().map(Alert::key).collect();
        for (alert, key) in current.into_iter().zip(&keys) {
            let fire = match self.active.get(key) {
                None => true,
                Some((prev, at)) => {
                    now.duration_since(*at) >= self.repeat_after
                        || matches!(
                            (prev, &alert),
                            (Alert::ConflictDetected { open: a }, Alert::ConflictDetected { open: b }) if b > a
                        )
                }
            };
            if fire {
                self.active.insert(key.clone(), (alert.clone(), now));
                due.push(alert);
            } else if let Some(entry) = self.active.get_mut(key) {
                // Keep the first firing time, but the latest numbers.
                entry.0 = alert;
            }
        }
        let gone: Vec<String> = self
            .active
            .keys()
            .filter(|k| !keys.contains(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some((alert, _)) = self.active.remove(&key) {
                tracing::info!(
                    alert = alert.kind(),
                    store = alert.store().unwrap_or(""),
                    "resolved: {}",
                    alert.summary()
                );
            }
        }
        for alert in &due {
            alert.emit();
            if let Some(n) = &self.notifier {
                if let Err(e) = n.notify(alert, snap.taken_at).await {
                    tracing::warn!(alert = alert.kind(), error = %e, "could not send the alert webhook");
                }
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::StoreMetrics;

    fn store(name: &str) -> StoreMetrics {
        StoreMetrics {
            store: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn evaluate_finds_each_condition_at_its_threshold() {
        let t = AlertThresholds::default();
        let mut snap = MetricsSnapshot {
            stores: vec![
                StoreMetrics {
                    drift_pct: Some(5.0),
                    lag_seconds: Some(300.0),
                    retained_wal_bytes: Some(1 << 30),
                    ..store("a")
                },
                StoreMetrics {
                    drift_pct: Some(5.01),
                    lag_seconds: Some(301.0),
                    retained_wal_bytes: Some((1 << 30) + 1),
                    consecutive_errors: 2,
                    last_error: Some("b: timed out".into()),
                    ..store("b")
                },
            ],
            ..Default::default()
        };
        // At the thresholds: nothing; above: all four for store b.
        let alerts = evaluate(&snap, &t);
        let kinds: Vec<(&str, Option<&str>)> =
            alerts.iter().map(|a| (a.kind(), a.store())).collect();
        assert_eq!(
            kinds,
            vec![
                ("sync_failure", Some("b")),
                ("drift", Some("b")),
                ("latency", Some("b")),
                ("slot_wal", Some("b")),
            ]
        );
        assert_eq!(
            alerts[1],
            Alert::Drift {
                store: "b".into(),
                pct: 5.01
            }
        );
        snap.conflicts_open = 2;
        assert!(evaluate(&snap, &t).contains(&Alert::ConflictDetected { open: 2 }));
    }

    #[test]
    fn webhook_body_has_no_error_text() {
        let a = Alert::SyncFailure {
            store: Some("supabase".into()),
            consecutive_errors: 3,
            error: Some("duplicate key (email)=(ann@example.com)".into()),
        };
        let body = a.webhook_body(contact_sync_core::model::now()).to_string();
        assert!(!body.contains("ann@example.com"), "{body}");
        assert!(body.contains("\"alert\":\"sync_failure\""), "{body}");
        assert!(body.contains("\"severity\":\"critical\""), "{body}");
    }

    #[tokio::test]
    async fn alerter_raises_each_alert_once_until_it_clears() {
        let mut alerter = Alerter::new(AlertThresholds::default(), None);
        let mut snap = MetricsSnapshot {
            stores: vec![StoreMetrics {
                drift_pct: Some(9.0),
                ..store("twenty")
            }],
            conflicts_open: 1,
            ..Default::default()
        };
        assert_eq!(alerter.process(&snap).await.len(), 2);
        assert!(alerter.process(&snap).await.is_empty());
        snap.conflicts_open = 3;
        assert_eq!(
            alerter.process(&snap).await,
            vec![Alert::ConflictDetected { open: 3 }]
        );
        snap.stores[0].drift_pct = Some(0.0);
        assert!(alerter.process(&snap).await.is_empty());
        snap.stores[0].drift_pct = Some(7.0);
        assert_eq!(
            alerter.process(&snap).await,
            vec![Alert::Drift {
                store: "twenty".into(),
                pct: 7.0
            }]
        );
    }
}
