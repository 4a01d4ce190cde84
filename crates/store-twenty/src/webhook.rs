//! Twenty's signed webhooks: verification and the daemon's receiver.
//!
//! Twenty signs each delivery with `X-Twenty-Webhook-Signature` = hex
//! HMAC-SHA256(secret, `timestamp + ":" + raw body`), where
//! `X-Twenty-Webhook-Timestamp` is milliseconds since the epoch, and adds a
//! random `X-Twenty-Webhook-Nonce`. [`verify`] checks all three (constant-time
//! compare, ±5 minutes, nonce not seen before) and a size limit, then
//! decodes the event. [`router`] serves `POST /webhooks/twenty`, verifies,
//! queues the change for the store's next `read_changes` and wakes the
//! daemon through a [`tokio::sync::Notify`].
//!
//! Twenty never retries a webhook, so a lost one is only caught up by
//! polling: webhooks are the fast path, polling the durable one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Notify;

use crate::client::StatsInner;
use crate::config::Secret;

/// Largest webhook body accepted (a person with all five JSON fields at
/// their validation maximum stays below it).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Accepted clock difference between Twenty and us.
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);
/// The route the daemon serves.
pub const PATH: &str = "/webhooks/twenty";

/// Why a delivery was refused. The text never holds the secret or the
/// signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("malformed header {0}")]
    MalformedHeader(&'static str),
    #[error("signature does not match")]
    BadSignature,
    #[error("timestamp is {skew_secs} s away from now (limit {} s)", MAX_SKEW.as_secs())]
    StaleTimestamp { skew_secs: i64 },
    #[error("nonce was already used")]
    ReplayedNonce,
    #[error("body of {0} bytes exceeds the limit of {MAX_BODY_BYTES} bytes")]
    TooLarge(usize),
    #[error("body is not a webhook event: {0}")]
    BadBody(String),
}

/// Nonces seen within the accepted window; a second delivery with the same
/// nonce is a replay. Entries older than twice [`MAX_SKEW`] are forgotten
/// (a replay that old fails the timestamp check anyway).
#[derive(Debug, Default)]
pub struct NonceCache {
    seen: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl NonceCache {
    pub fn new() -> Self {
        NonceCache::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, DateTime<Utc>>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `nonce`; false if it was seen already.
    fn insert(&self, nonce: &str, now: DateTime<Utc>) -> bool {
        let mut seen = self.lock();
        let horizon = now - chrono::Duration::from_std(MAX_SKEW * 2).unwrap_or_default();
        if seen.len() > 1024 {
            seen.retain(|_, t| *t > horizon);
        }
        match seen.get(nonce) {
            Some(t) if *t > horizon => false,
            _ => {
                seen.insert(nonce.to_string(), now);
                true
            }
        }
    }

    /// Nonces currently remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A verified webhook event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `person.created`, `person.updated`, `person.deleted`,
    /// `person.destroyed`, `person.restored`, …
    pub event_name: String,
    /// The record as Twenty sent it.
    pub record: Value,
    /// The fields the change touched, when Twenty says.
    pub updated_fields: Option<Vec<String>>,
    pub webhook_id: Option<String>,
    pub workspace_id: Option<String>,
    pub event_date: Option<String>,
    /// The nonce of the delivery.
    pub nonce: String,
}

impl Event {
    /// The object the event is about (`person`).
    pub fn object(&self) -> &str {
        self.event_name.split('.').next().unwrap_or_default()
    }
    /// The operation (`created`, `updated`, `deleted`, `destroyed`, …).
    pub fn operation(&self) -> &str {
        self.event_name.split('.').nth(1).unwrap_or_default()
    }
}

fn header<'a>(h: &'a HeaderMap, name: &'static str) -> Result<&'a str, WebhookError> {
    h.get(name)
        .ok_or(WebhookError::MissingHeader(name))?
        .to_str()
        .map(str::trim)
        .map_err(|_| WebhookError::MalformedHeader(name))
}

/// Verifies one delivery and decodes it.
///
/// Checks, in order: body size, the three headers present, timestamp within
/// ±5 minutes of `now` (milliseconds; seconds accepted too), signature
/// (constant-time), nonce unused (recorded only once the signature passed,
/// so forged requests cannot burn nonces), then the body is a JSON event
/// with `eventName` and `record`.
pub fn verify(
    secret: &Secret,
    headers: &HeaderMap,
    raw_body: &[u8],
    now: DateTime<Utc>,
    nonces: &NonceCache,
) -> Result<Event, WebhookError> {
    if raw_body.len() > MAX_BODY_BYTES {
        return Err(WebhookError::TooLarge(raw_body.len()));
    }
    let ts = header(headers, "x-twenty-webhook-timestamp")?;
    let sig = header(headers, "x-twenty-webhook-signature")?;
    let nonce = header(headers, "x-twenty-webhook-nonce")?;
    if nonce.is_empty() {
        return Err(WebhookError::MalformedHeader("x-twenty-webhook-nonce"));
    }
    let n: i64 = ts
        .parse()
        .map_err(|_| WebhookError::MalformedHeader("x-twenty-webhook-timestamp"))?;
    // Twenty sends milliseconds; accept seconds as well.
    let millis = if n.abs() < 100_000_000_000 {
        n.saturating_mul(1000)
    } else {
        n
    };
    let skew_ms = now.timestamp_millis() - millis;
    if skew_ms.unsigned_abs() > MAX_SKEW.as_millis() as u64 {
        return Err(WebhookError::StaleTimestamp {
            skew_secs: skew_ms / 1000,
        });
    }
    let expected = hex::decode(sig)
        .map_err(|_| WebhookError::MalformedHeader("x-twenty-webhook-signature"))?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| WebhookError::BadSignature)?;
    mac.update(ts.as_bytes());
    mac.update(b":");
    mac.update(raw_body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| WebhookError::BadSignature)?;
    if !nonces.insert(nonce, now) {
        return Err(WebhookError::ReplayedNonce);
    }
    let body: Value =
        serde_json::from_slice(raw_body).map_err(|e| WebhookError::BadBody(e.to_string()))?;
    let event_name = body
        .get("eventName")
        .and_then(Value::as_str)
        .ok_or_else(|| WebhookError::BadBody("no eventName".into()))?
        .to_string();
    let record = body
        .get("record")
        .filter(|r| r.is_object())
        .cloned()
        .ok_or_else(|| WebhookError::BadBody("no record object".into()))?;
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(Event {
        event_name,
        record,
        updated_fields: body.get("updatedFields").and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
        }),
        webhook_id: text("webhookId"),
        workspace_id: text("workspaceId"),
        event_date: text("eventDate"),
        nonce: nonce.to_string(),
    })
}

/// Shared between the receiver (HTTP handler) and the store: the queue of
/// verified person events and the wake-up signal.
#[derive(Clone)]
pub struct WebhookReceiver {
    pub(crate) secret: Secret,
    pub(crate) nonces: Arc<NonceCache>,
    pub(crate) queue: Arc<Mutex<VecDeque<Event>>>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) stats: Arc<StatsInner>,
    pub(crate) store: String,
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("store", &self.store)
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

impl WebhookReceiver {
    /// Notified after each accepted event: the daemon awaits
    /// `notify().notified()` to run a sync cycle at once.
    pub fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// Events waiting for `read_changes`.
    pub fn queued(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Verifies a delivery and queues it (what the HTTP handler does).
    pub fn receive(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), WebhookError> {
        match verify(&self.secret, headers, body, Utc::now(), &self.nonces) {
            Ok(ev) => {
                if ev.object() == "person" {
                    self.queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(ev);
                    StatsInner::add(&self.stats.webhooks_accepted, 1);
                    self.notify.notify_one();
                }
                Ok(())
            }
            Err(e) => {
                StatsInner::add(&self.stats.webhooks_rejected, 1);
                // Never log the secret or the signature.
                tracing::warn!(store = %self.store, reason = %e, bytes = body.len(), "rejected a Twenty webhook");
                Err(e)
            }
        }
    }

    /// Takes up to `limit` queued events.
    pub(crate) fn drain(&self, limit: usize) -> Vec<Event> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let n = q.len().min(limit);
        q.drain(..n).collect()
    }
}

async fn handle(State(rx): State<WebhookReceiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    match rx.receive(&headers, &body) {
        Ok(()) => StatusCode::OK,
        Err(WebhookError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
        Err(WebhookError::BadBody(_)) => StatusCode::BAD_REQUEST,
        Err(_) => StatusCode::UNAUTHORIZED,
    }
}

/// The axum router serving `POST /webhooks/twenty` for `receiver`; merge it
/// into the daemon's router.
pub fn router(receiver: WebhookReceiver) -> Router {
    router_at(receiver, PATH)
}

/// The route of the Twenty store `store`: `/webhooks/twenty/<store>`, so
/// every Twenty store of a daemon has its own (the first also keeps
/// [`PATH`]).
pub fn path_for(store: &str) -> String {
    format!("{PATH}/{store}")
}

/// The axum router serving `POST <path>` for `receiver`.
pub fn router_at(receiver: WebhookReceiver, path: &str) -> Router {
    Router::new()
        .route(path, post(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn sign(secret: &str, ts: &str, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(ts.as_bytes());
        mac.update(b":");
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn headers(ts: &str, sig: &str, nonce: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "X-Twenty-Webhook-Timestamp",
            HeaderValue::from_str(ts).unwrap(),
        );
        h.insert(
            "X-Twenty-Webhook-Signature",
            HeaderValue::from_str(sig).unwrap(),
        );
        h.insert(
            "X-Twenty-Webhook-Nonce",
            HeaderValue::from_str(nonce).unwrap(),
        );
        h
    }

    #[test]
    fn accepts_good_and_rejects_bad_stale_and_replayed() {
        let secret = Secret::new("s3cr3t-value");
        let now = Utc::now();
        let ts = now.timestamp_millis().to_string();
        let body = br#"{"eventName":"person.updated","record":{"id":"p1"}}"#;
        let sig = sign("s3cr3t-value", &ts, body);
        let cache = NonceCache::new();
        let ev = verify(&secret, &headers(&ts, &sig, "n1"), body, now, &cache).unwrap();
        assert_eq!(ev.operation(), "updated");
        assert_eq!(
            verify(&secret, &headers(&ts, &sig, "n1"), body, now, &cache),
            Err(WebhookError::ReplayedNonce)
        );
        let forged = sign("other", &ts, body);
        let e = verify(&secret, &headers(&ts, &forged, "n2"), body, now, &cache).unwrap_err();
        assert_eq!(e, WebhookError::BadSignature);
        let old = (now - chrono::Duration::minutes(6))
            .timestamp_millis()
            .to_string();
        let sig_old = sign("s3cr3t-value", &old, body);
        let e = verify(&secret, &headers(&old, &sig_old, "n3"), body, now, &cache).unwrap_err();
        assert!(matches!(e, WebhookError::StaleTimestamp { .. }));
        for e in [e, WebhookError::BadSignature] {
            let text = e.to_string();
            assert!(!text.contains("s3cr3t") && !text.contains(&sig), "{text}");
        }
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            verify(&secret, &headers(&ts, &sig, "n4"), &big, now, &cache),
            Err(WebhookError::TooLarge(MAX_BODY_BYTES + 1))
        );
    }
}
