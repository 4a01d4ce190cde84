//! Alerts from a real state database, POSTed to a local webhook receiver;
//! the bodies carry no contact data, and failures never show the URL.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use contact_sync_core::model::now;
use contact_sync_ops::alert::evaluate;
use contact_sync_ops::{
    serve, Alert, AlertThresholds, Alerter, MetricsSnapshot, NotifyError, OpsHandle, ServerConfig,
    StoreSample, WebhookNotifier,
};
use support::{add_dead_letter_and_conflict, record_failures, World};

#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<String>>>);

async fn receive(State(inbox): State<Inbox>, body: String) -> StatusCode {
    inbox.0.lock().unwrap().push(body);
    StatusCode::NO_CONTENT
}

async fn refuse() -> StatusCode {
    StatusCode::INTERNAL_SERVER_ERROR
}

/// A receiver on 127.0.0.1: `/hook/<token>` stores bodies, `/broken/<token>` answers 500.
async fn receiver(inbox: Inbox) -> contact_sync_ops::ServerHandle {
    let routes = Router::new()
        .route("/hook/{token}", post(receive))
        .with_state(inbox)
        .route("/broken/{token}", post(refuse));
    serve(&ServerConfig::loopback(0), OpsHandle::default(), routes)
        .await
        .expect("receiver")
}

#[tokio::test]
async fn alerts_reach_the_webhook_without_contact_data() {
    let w = World::new(10);
    let mut engine = w.synced_engine().await;
    // Real causes: a store failing with an error that quotes a contact's
    // email, an open conflict, drift recorded by a verification.
    let victim = &w.contacts[3];
    let email = victim
        .emails
        .first()
        .map(|e| e.address.clone())
        .unwrap_or_default();
    assert!(!email.is_empty());
    record_failures(
        engine.state_mut(),
        "local",
        2,
        &format!(
            "local: duplicate key (email)=({email}) for {}",
            victim.canonical_name
        ),
    );
    add_dead_letter_and_conflict(engine.state_mut(), victim);
    {
        let tx = engine.state_mut().tx().unwrap();
        tx.set_meta(
            "drift:local",
            r#"{"checked_at":"2026-01-01T00:00:00.000000Z","drift_pct":9.5,"missing":1,"differing":0,"extra":0,"expected":10}"#,
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let snap = MetricsSnapshot::from_state(
        engine.state(),
        &[
            StoreSample::new("canonical", Some(10)),
            StoreSample {
                name: "local".into(),
                contacts: Some(10),
                retained_wal_bytes: Some(3 << 30),
            },
        ],
        now(),
    )
    .unwrap();

    let expected = evaluate(&snap, &AlertThresholds::default());
    let kinds: Vec<&str> = expected.iter().map(Alert::kind).collect();
    assert_eq!(
        kinds,
        vec!["sync_failure", "conflict_detected", "drift", "slot_wal"]
    );

    let inbox = Inbox::default();
    let server = receiver(inbox.clone()).await;
    let url = format!("http://{}/hook/T0KEN-abc", server.local_addr());
    let notifier = WebhookNotifier::new(&url, Duration::from_secs(10)).unwrap();
    assert!(!format!("{notifier:?}").contains("T0KEN"));
    let mut alerter = Alerter::new(AlertThresholds::default(), Some(notifier));
    let fired = alerter.process(&snap).await;
    assert_eq!(fired, expected);
    // Nothing new: nothing sent again.
    assert!(alerter.process(&snap).await.is_empty());
    server.shutdown().await.unwrap();

    let bodies = inbox.0.lock().unwrap().clone();
    assert_eq!(bodies.len(), 4, "{bodies:?}");
    let parsed: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert_eq!(parsed[0]["alert"], "sync_failure");
    assert_eq!(parsed[0]["store"], "local");
    assert_eq!(parsed[0]["severity"], "critical");
    assert_eq!(parsed[0]["value"], 2.0);
    assert_eq!(parsed[2]["alert"], "drift");
    assert_eq!(parsed[2]["value"], 9.5);
    assert_eq!(parsed[3]["alert"], "slot_wal");
    assert_eq!(parsed[3]["value"], (3u64 << 30) as f64);
    for b in &bodies {
        assert!(!b.contains("duplicate key"), "error text leaked: {b}");
        for t in w.contact_texts() {
            assert!(!b.contains(&t), "contact data {t:?} leaked: {b}");
        }
        assert!(!b.contains(&victim.contact_id), "contact id leaked: {b}");
    }
}

#[tokio::test]
async fn failed_notifications_never_show_the_url() {
    let server = receiver(Inbox::default()).await;
    let addr = server.local_addr();
    let alert = Alert::Latency {
        store: "twenty".into(),
        seconds: 900.0,
    };
    let n = WebhookNotifier::new(
        &format!("http://{addr}/broken/T0KEN-abc"),
        Duration::from_secs(10),
    )
    .unwrap();
    let e = n.notify(&alert, now()).await.unwrap_err();
    assert!(matches!(e, NotifyError::Status(500)), "{e:?}");
    server.shutdown().await.unwrap();
    // The receiver is gone: connection refused, and still no URL in the text.
    let e = n.notify(&alert, now()).await.unwrap_err();
    assert!(matches!(e, NotifyError::Send(_)), "{e:?}");
    let text = format!("{e} {e:?}");
    assert!(
        !text.contains("T0KEN") && !text.contains("/broken"),
        "{text}"
    );

    assert!(matches!(
        WebhookNotifier::new("ftp://example.org/x", Duration::from_secs(1)),
        Err(NotifyError::InvalidUrl(_))
    ));
}
