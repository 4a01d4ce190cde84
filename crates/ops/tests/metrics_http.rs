//! Metrics from a real state database, parsed back by a Prometheus
//! text-format parser; /health and /metrics over real HTTP on 127.0.0.1.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use contact_sync_core::model::now;
use contact_sync_ops::{
    render_prometheus, serve, CycleOutcome, HealthThresholds, MetricsSnapshot, OpsHandle,
    ServeError, ServerConfig, StoreSample,
};
use support::{add_dead_letter_and_conflict, parse_metrics, record_failures, World};

fn samples(w: &World) -> Vec<StoreSample> {
    vec![
        StoreSample::new("canonical", Some(w.canonical.live().len() as u64)),
        StoreSample {
            name: "local".into(),
            contacts: Some(w.local.live().len() as u64),
            retained_wal_bytes: Some(4096),
        },
    ]
}

#[tokio::test]
async fn prometheus_text_parses_back_to_the_state_numbers() {
    let w = World::new(12);
    let mut engine = w.synced_engine().await;
    add_dead_letter_and_conflict(engine.state_mut(), &w.contacts[0]);
    record_failures(engine.state_mut(), "local", 1, "local: timed out");

    let ops = OpsHandle::new(HealthThresholds::default());
    ops.record_cycle(CycleOutcome::failed(
        "canonical: connection reset",
        Duration::from_millis(1500),
        now(),
    ));
    ops.record_cycle(CycleOutcome {
        finished_at: now(),
        duration_secs: 0.25,
        error: None,
        failed_stores: vec!["local".into()],
    });
    ops.add_webhook_events("local", 4);
    ops.add_cdc_events("local", 2);
    let snap = MetricsSnapshot::from_state(engine.state(), &samples(&w), now()).unwrap();
    ops.update(snap);
    let text = render_prometheus(&ops.snapshot());
    let (_, m) = parse_metrics(&text);
    let get = |name: &str, store: &str| {
        m.get(&(format!("contact_sync_{name}"), store.to_string()))
            .copied()
    };

    let state = engine.state();
    assert_eq!(get("store_contacts", "canonical"), Some(12.0));
    assert_eq!(get("store_contacts", "local"), Some(12.0));
    assert_eq!(get("store_pending", "local"), Some(0.0));
    assert_eq!(
        get("journal_head", ""),
        Some(state.journal_head().unwrap() as f64)
    );
    assert!(get("journal_head", "").unwrap() >= 12.0);
    assert_eq!(get("dead_letters", ""), Some(1.0));
    assert_eq!(get("conflicts_open", ""), Some(1.0));
    assert_eq!(get("store_consecutive_errors", "local"), Some(1.0));
    assert_eq!(get("store_consecutive_errors", "canonical"), Some(0.0));
    assert_eq!(get("store_errors_total", "local"), Some(1.0));
    assert_eq!(get("store_webhook_events_total", "local"), Some(4.0));
    assert_eq!(get("store_cdc_events_total", "local"), Some(2.0));
    assert_eq!(get("store_retained_wal_bytes", "local"), Some(4096.0));
    assert_eq!(get("store_retained_wal_bytes", "canonical"), None);
    assert_eq!(get("store_drift_percent", "local"), Some(0.0));
    let totals = state.store_status("local").unwrap().totals;
    assert_eq!(
        get("store_written_total", "local"),
        Some(totals.written as f64)
    );
    assert_eq!(
        get("store_captured_total", "local"),
        Some(totals.captured as f64)
    );
    let last = state
        .store_status("canonical")
        .unwrap()
        .last_success
        .unwrap();
    assert_eq!(
        get("store_last_success_timestamp_seconds", "canonical"),
        Some(last.timestamp() as f64)
    );
    assert!(get("store_lag_seconds", "canonical").is_some_and(|l| l >= 0.0));
    assert_eq!(get("last_cycle_duration_seconds", ""), Some(0.25));
    assert_eq!(get("last_cycle_success", ""), Some(1.0));
    assert_eq!(get("cycles_total", ""), Some(2.0));
    assert_eq!(get("cycle_failures_total", ""), Some(1.0));
    // No contact data in the metrics.
    for t in w.contact_texts() {
        assert!(!text.contains(&t), "metrics leak {t:?}");
    }
}

async fn get(addr: SocketAddr, path: &str) -> reqwest::Response {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("GET")
}

#[tokio::test]
async fn health_is_200_then_503_after_a_recorded_failure() {
    let w = World::new(5);
    let mut engine = w.synced_engine().await;
    let ops = OpsHandle::new(HealthThresholds::default());
    ops.update(MetricsSnapshot::from_state(engine.state(), &samples(&w), now()).unwrap());
    let server = serve(&ServerConfig::loopback(0), ops.clone(), Router::new())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());

    let r = get(addr, "/health").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["reasons"], serde_json::json!([]));

    // The whole cycle failed.
    ops.record_cycle(CycleOutcome::failed(
        "canonical: connection refused",
        Duration::from_secs(2),
        now(),
    ));
    let r = get(addr, "/health").await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["reasons"][0]["reason"], "last_cycle_failed");
    assert!(body["reasons"][0]["message"]
        .as_str()
        .unwrap()
        .contains("connection refused"));

    // The next cycle completes: healthy again.
    ops.record_cycle(CycleOutcome {
        finished_at: now(),
        duration_secs: 0.1,
        error: None,
        failed_stores: vec![],
    });
    assert_eq!(get(addr, "/health").await.status(), 200);

    // A store failing three runs in a row (as recorded in the state database).
    record_failures(engine.state_mut(), "local", 3, "local: permission denied");
    ops.update(MetricsSnapshot::from_state(engine.state(), &samples(&w), now()).unwrap());
    let r = get(addr, "/health").await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reasons"][0]["reason"], "store_failing");
    assert_eq!(body["reasons"][0]["store"], "local");
    assert_eq!(body["reasons"][0]["consecutive_errors"], 3);

    server.shutdown().await.unwrap();
    assert!(
        reqwest::get(format!("http://{addr}/health")).await.is_err(),
        "server stopped"
    );
}

#[tokio::test]
async fn after_cycle_records_the_engine_result() {
    let w = World::new(4);
    let mut engine = w.synced_engine().await;
    let ops = OpsHandle::default();
    let started = std::time::Instant::now();
    let result = engine.cycle().await;
    let outcome = CycleOutcome::from_result(&result, started.elapsed(), now());
    assert!(outcome.completed());
    let snap = ops
        .after_cycle(engine.state(), &samples(&w), outcome)
        .unwrap();
    assert_eq!(snap.cycles_total, 1);
    assert_eq!(snap.store("local").unwrap().contacts, Some(4));
    assert!(snap
        .last_cycle
        .as_ref()
        .is_some_and(|c| c.failed_stores.is_empty()));
    assert!(ops.health().is_healthy());
}

#[tokio::test]
async fn lag_over_the_threshold_is_unhealthy() {
    let w = World::new(3);
    let engine = w.synced_engine().await;
    let ops = OpsHandle::new(HealthThresholds {
        max_store_failures: 3,
        max_lag: Duration::from_secs(600),
    });
    ops.update(MetricsSnapshot::from_state(engine.state(), &samples(&w), now()).unwrap());
    assert!(ops.health().is_healthy());
    // Twenty minutes later, with no cycle in between.
    let later = now() + chrono::Duration::minutes(20);
    let h = ops.health_at(later);
    assert_eq!(h.http_status(), 503);
    let stores: Vec<String> = h
        .reasons()
        .iter()
        .map(|r| match r {
            contact_sync_ops::UnhealthyReason::Lagging { store, .. } => store.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(stores, vec!["canonical".to_string(), "local".to_string()]);
}

#[tokio::test]
async fn metrics_and_extra_routes_over_http() {
    let w = World::new(7);
    let engine = w.synced_engine().await;
    let ops = OpsHandle::default();
    ops.update(MetricsSnapshot::from_state(engine.state(), &samples(&w), now()).unwrap());
    let webhook_ops = ops.clone();
    let extra = Router::new().route(
        "/webhooks/twenty",
        post(move || {
            let ops = webhook_ops.clone();
            async move {
                ops.add_webhook_events("local", 1);
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let server = serve(&ServerConfig::loopback(0), ops, extra).await.unwrap();
    let addr = server.local_addr();

    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{addr}/webhooks/twenty"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let r = get(addr, "/metrics").await;
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text().await.unwrap();
    let (_, m) = parse_metrics(&text);
    let key = |n: &str, s: &str| (format!("contact_sync_{n}"), s.to_string());
    assert_eq!(m.get(&key("store_contacts", "local")), Some(&7.0));
    assert_eq!(
        m.get(&key("store_webhook_events_total", "local")),
        Some(&1.0)
    );

    assert_eq!(get(addr, "/nope").await.status(), 404);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn non_loopback_address_is_refused_unless_allowed() {
    let config = ServerConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        allow_remote: false,
    };
    let err = serve(&config, OpsHandle::default(), Router::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ServeError::NotLoopback { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("0.0.0.0") && msg.contains("allow_remote"),
        "{msg}"
    );

    // With the explicit flag it binds (and answers on loopback).
    let config = ServerConfig {
        allow_remote: true,
        ..config
    };
    let server = serve(&config, OpsHandle::default(), Router::new())
        .await
        .unwrap();
    let port = server.local_addr().port();
    let r = get(SocketAddr::from(([127, 0, 0, 1], port)), "/health").await;
    assert_eq!(r.status(), 200);
    server.shutdown().await.unwrap();

    // The configuration form the CLI embeds.
    let parsed: ServerConfig = serde_json::from_str(r#"{"listen": "10.0.0.5:9464"}"#).unwrap();
    assert!(!parsed.allow_remote);
    assert!(matches!(
        serve(&parsed, OpsHandle::default(), Router::new()).await,
        Err(ServeError::NotLoopback { .. })
    ));
}
