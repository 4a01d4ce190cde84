//! Webhooks: recorded Twenty signatures verify; the fake's signed
//! deliveries reach the store's receiver and come out of `read_changes`;
//! forged, stale and replayed deliveries are refused without leaking the
//! secret; lost webhooks are caught up by polling.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue};
use common::{eventually, hash, target};
use contact_sync_connector::{ChangeKind, ChangeSource, Checkpoint};
use contact_sync_twenty::mapping::person_to_contact;
use contact_sync_twenty::webhook::{self, verify, NonceCache, WebhookError};
use contact_sync_twenty::{Secret, TwentyStore};
use contact_sync_twenty_fake::FakeConfig;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

/// JSON text without the whitespace between tokens (key order kept).
fn compact(json: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::with_capacity(json.len()), false, false);
    for ch in json.chars() {
        if in_string {
            out.push(ch);
            match (escaped, ch) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if ch == '"' {
            in_string = true;
            out.push(ch);
        } else if !ch.is_whitespace() {
            out.push(ch);
        }
    }
    out
}

fn sample(name: &str) -> Value {
    let path = format!("{}/tests/samples/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn recorded_twenty_deliveries_verify_and_decode() {
    // The recording workspace's webhook secret (metadata_webhooks.json).
    let secret = sample("metadata_webhooks.json")[0]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let secret = Secret::new(secret);
    let events = sample("webhook_events.json");
    // The bodies as recorded (a parsed Value sorts object keys).
    let text = std::fs::read_to_string(format!(
        "{}/tests/samples/webhook_events.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    #[derive(serde::Deserialize)]
    struct Recorded<'a> {
        #[serde(borrow)]
        body: &'a serde_json::value::RawValue,
    }
    let raw_bodies: std::collections::BTreeMap<String, &serde_json::value::RawValue> =
        serde_json::from_str::<std::collections::BTreeMap<String, Recorded<'_>>>(&text)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.body))
            .collect();
    let nonces = NonceCache::new();
    for (name, ev) in events.as_object().unwrap() {
        let mut h = HeaderMap::new();
        for (k, v) in ev["headers"].as_object().unwrap() {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v.as_str().unwrap()).unwrap(),
            );
        }
        // Twenty signs the compact JSON it sends, keys in its own order.
        let raw = compact(raw_bodies.get(name.as_str()).unwrap().get()).into_bytes();
        let ts: i64 = ev["headers"]["X-Twenty-Webhook-Timestamp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let at = chrono::DateTime::from_timestamp_millis(ts + 2_000).unwrap();
        let got = verify(&secret, &h, &raw, at, &nonces).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.event_name, ev["body"]["eventName"].as_str().unwrap());
        let c = person_to_contact(&got.record, "twenty").unwrap();
        assert_eq!(c.is_deleted(), !got.record["deletedAt"].is_null(), "{name}");
        assert_eq!(
            c.primary_email(),
            got.record["emails"]["primaryEmail"]
                .as_str()
                .filter(|s| !s.is_empty())
        );
        // The same delivery again is a replay.
        assert_eq!(
            verify(&secret, &h, &raw, at, &nonces),
            Err(WebhookError::ReplayedNonce)
        );
        // A tampered body fails.
        let mut tampered = raw.clone();
        tampered.push(b' ');
        let mut h2 = h.clone();
        h2.insert("x-twenty-webhook-nonce", HeaderValue::from_static("fresh"));
        assert_eq!(
            verify(&secret, &h2, &tampered, at, &nonces),
            Err(WebhookError::BadSignature)
        );
    }
}

/// A loopback listener for the receiver and its URL.
async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, format!("http://{addr}{}", webhook::PATH))
}

/// Serves the store's receiver on `listener`.
fn serve(store: &TwentyStore, listener: tokio::net::TcpListener) {
    let rx = store.webhook_receiver().expect("receiver configured");
    tokio::spawn(async move {
        let _ = axum::serve(listener, webhook::router(rx)).await;
    });
}

#[tokio::test]
#[cfg_attr(
    twenty_live,
    ignore = "a live Twenty cannot reach this test's loopback receiver: skipped"
)]
async fn fake_signed_webhooks_reach_read_changes() {
    let t = target(FakeConfig::default()).await;
    assert!(
        t.fake.is_some(),
        "a live Twenty cannot reach this test's loopback receiver: skipped"
    );
    let mut cfg = t.config();
    cfg.webhook_secret = Some(Secret::new("whsec-for-tests-123"));
    let (listener, url) = listen().await;
    cfg.webhook_url = Some(url);
    let mut store = TwentyStore::new(cfg).unwrap();
    serve(&store, listener);
    let rx = store.webhook_receiver().unwrap();
    let report = store.migrate().await.expect("migrate");
    assert!(report.webhook_created && report.webhook_id.is_some());
    let again = store.migrate().await.expect("migrate again");
    assert!(!again.webhook_created, "webhook registered once");

    let cs = t.contacts(3);
    let notify = rx.notify();
    let woke = notify.notified();
    contact_sync_connector::RecordSink::write_batch(&mut store, &cs)
        .await
        .expect("write");
    tokio::time::timeout(std::time::Duration::from_secs(10), woke)
        .await
        .expect("the receiver notifies the daemon");
    eventually("3 person.created webhooks queued", || rx.queued() >= 3).await;
    let cp = Checkpoint::new("");
    let b = store.read_changes(Some(&cp), 100).await.expect("read");
    assert_eq!(
        b.checkpoint, cp,
        "webhook changes do not advance the checkpoint"
    );
    assert!(b.has_more);
    for c in &cs {
        let got = b
            .changes
            .iter()
            .find_map(|ch| match &ch.kind {
                ChangeKind::Upsert(x) if x.contact_id == c.contact_id => Some(x),
                _ => None,
            })
            .expect("webhook change for each write");
        assert_eq!(
            hash(got),
            hash(c),
            "our own write comes back with the same hash (echo)"
        );
    }

    // An edit in Twenty arrives decoded.
    let pid = store.person_id_for(&cs[0].contact_id);
    let http = t.http();
    http.req(
        Method::PATCH,
        &format!("/rest/people/{pid}"),
        Some(json!({"jobTitle": "Via webhook"})),
    )
    .await;
    eventually("person.updated queued", || rx.queued() >= 1).await;
    let b = store.read_changes(Some(&cp), 100).await.expect("read");
    let ch = &b.changes[0];
    assert_eq!(ch.native_id, pid);
    match &ch.kind {
        ChangeKind::Upsert(c) => assert_eq!(c.job_title.as_deref(), Some("Via webhook")),
        other => panic!("{other:?}"),
    }
    // Destroy → Delete with the contact id.
    http.req(Method::DELETE, &format!("/rest/people/{pid}"), None)
        .await;
    eventually("person.destroyed queued", || rx.queued() >= 1).await;
    let b = store.read_changes(Some(&cp), 100).await.expect("read");
    assert_eq!(
        b.changes[0].kind,
        ChangeKind::Delete {
            contact_id: Some(cs[0].contact_id.clone())
        }
    );
    let f = t.fake();
    eventually("5 deliveries answered 2xx", || {
        f.counters().webhooks_delivered >= 5
    })
    .await;
    assert_eq!(store.stats().webhooks_rejected, 0);

    // Webhooks lost: polling still catches the edit.
    f.set_drop_webhooks(true);
    let start = {
        let mut cp: Option<Checkpoint> = None;
        loop {
            let b = store.read_changes(cp.as_ref(), 500).await.unwrap();
            cp = Some(b.checkpoint);
            if !b.has_more {
                break cp.unwrap();
            }
        }
    };
    let p1 = store.person_id_for(&cs[1].contact_id);
    http.req(
        Method::PATCH,
        &format!("/rest/people/{p1}"),
        Some(json!({"jobTitle": "Webhook lost"})),
    )
    .await;
    assert!(f.counters().webhooks_dropped >= 1);
    assert_eq!(rx.queued(), 0);
    let b = store.read_changes(Some(&start), 100).await.unwrap();
    let found = b.changes.iter().any(|ch| matches!(&ch.kind, ChangeKind::Upsert(c) if c.job_title.as_deref() == Some("Webhook lost")));
    assert!(found, "polling is the catch-up path: {:?}", b.changes);
}

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sign(secret: &str, ts: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}:").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn forged_stale_and_replayed_deliveries_are_refused_without_leaking() {
    let logs = Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let secret = "very-secret-webhook-key";
    let mut cfg = contact_sync_twenty::TwentyConfig::new("http://127.0.0.1:9", Secret::new("k"));
    cfg.webhook_secret = Some(Secret::new(secret));
    let store = TwentyStore::new(cfg).unwrap();
    let (listener, url) = listen().await;
    serve(&store, listener);
    let rx = store.webhook_receiver().unwrap();
    let http = reqwest::Client::new();
    let body = serde_json::to_vec(&json!({"eventName": "person.updated", "record": {"id": "7f1e0d8a-0000-4000-8000-000000000001", "updatedAt": "2026-11-23T05:50:05.770Z", "deletedAt": null}})).unwrap();
    let post = |ts: String, sig: String, nonce: &'static str, body: Vec<u8>| {
        let http = http.clone();
        let url = url.clone();
        async move {
            http.post(&url)
                .header("X-Twenty-Webhook-Timestamp", ts)
                .header("X-Twenty-Webhook-Signature", sig)
                .header("X-Twenty-Webhook-Nonce", nonce)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let now = chrono::Utc::now().timestamp_millis().to_string();
    let good = sign(secret, &now, &body);
    assert_eq!(
        post(now.clone(), good.clone(), "n-1", body.clone()).await,
        200
    );
    assert_eq!(rx.queued(), 1);
    // Replayed nonce.
    assert_eq!(
        post(now.clone(), good.clone(), "n-1", body.clone()).await,
        401
    );
    // Forged signature.
    let forged = sign("guessed-secret", &now, &body);
    assert_eq!(
        post(now.clone(), forged.clone(), "n-2", body.clone()).await,
        401
    );
    // Stale timestamp, correctly signed.
    let old = (chrono::Utc::now().timestamp_millis() - 6 * 60 * 1000).to_string();
    let old_sig = sign(secret, &old, &body);
    assert_eq!(post(old, old_sig.clone(), "n-3", body.clone()).await, 401);
    // Too large.
    let big = vec![b'x'; webhook::MAX_BODY_BYTES + 10];
    assert_eq!(
        post(now.clone(), sign(secret, &now, &big), "n-4", big).await,
        413
    );
    assert_eq!(rx.queued(), 1, "only the good delivery was queued");
    assert!(store.stats().webhooks_rejected >= 3);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("rejected a Twenty webhook"),
        "rejections are logged: {text}"
    );
    for leak in [secret, good.as_str(), forged.as_str(), old_sig.as_str()] {
        assert!(!text.contains(leak), "logs leak {leak}: {text}");
    }
}

/// A webhook of a person's state older than what the store itself wrote
/// since (the engine merged that edit out of turn and wrote the result) is
/// not delivered: its stale fields would undo the newer state (found by the
/// soak benchmark, issue 15: an organization written by the engine was
/// cleared by a late copy of a user's earlier edit).
#[tokio::test]
#[cfg_attr(
    twenty_live,
    ignore = "a live Twenty cannot reach this test's loopback receiver: skipped"
)]
async fn a_webhook_older_than_the_stores_own_write_is_not_delivered() {
    let t = target(FakeConfig::default()).await;
    assert!(t.fake.is_some(), "needs the fake: skipped");
    let mut cfg = t.config();
    cfg.webhook_secret = Some(Secret::new("whsec-for-tests-123"));
    let (listener, url) = listen().await;
    cfg.webhook_url = Some(url);
    let mut store = TwentyStore::new(cfg).unwrap();
    serve(&store, listener);
    let rx = store.webhook_receiver().unwrap();
    store.migrate().await.expect("migrate");
    let cs = t.contacts(1);
    contact_sync_connector::RecordSink::write_batch(&mut store, &cs)
        .await
        .expect("write");
    eventually("person.created queued", || rx.queued() >= 1).await;
    let cp = Checkpoint::new("");
    store.read_changes(Some(&cp), 100).await.expect("drain");

    // A user edits the person; its webhook waits in the queue while the
    // engine writes the merged record (the user's edit and its own).
    let pid = store.person_id_for(&cs[0].contact_id);
    t.http()
        .req(
            Method::PATCH,
            &format!("/rest/people/{pid}"),
            Some(json!({"jobTitle": "User edit"})),
        )
        .await;
    eventually("person.updated queued", || rx.queued() >= 1).await;
    let mut merged = cs[0].clone();
    merged.job_title = Some("User edit".into());
    merged.organization = Some("Written by the engine".into());
    contact_sync_connector::RecordSink::write_batch(&mut store, std::slice::from_ref(&merged))
        .await
        .expect("engine write");
    eventually("the engine write's webhook queued", || rx.queued() >= 2).await;

    let b = store.read_changes(Some(&cp), 100).await.expect("read");
    let images: Vec<Option<String>> = b
        .changes
        .iter()
        .filter_map(|ch| match &ch.kind {
            ChangeKind::Upsert(c) if c.contact_id == cs[0].contact_id => {
                Some(c.organization.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        images,
        vec![Some("Written by the engine".to_string())],
        "only the newest state, not the late copy of the user's edit"
    );
}
