//! Client behaviour the emulator cannot produce (5xx, 429, quota errors,
//! jobs that are not complete yet, OAuth token exchange), against a small
//! scripted HTTP server on loopback.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use contact_sync_bigquery::{
    BigQueryClient, ClientConfig, InsertRow, MetadataServer, NoAuth, QueryParam, ServiceAccountKey,
    TokenProvider,
};
use contact_sync_connector::RetryClass;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    auth: Option<String>,
    body: String,
}

#[derive(Default)]
struct Fake {
    script: Mutex<VecDeque<(u16, Value)>>,
    seen: Mutex<Vec<Seen>>,
}

async fn handle(State(st): State<Arc<Fake>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    st.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        auth: parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: String::from_utf8_lossy(&body).to_string(),
    });
    let next = st.script.lock().unwrap().pop_front();
    let (status, v) = next.unwrap_or((
        500,
        json!({"error": {"code": 500, "message": "script exhausted"}}),
    ));
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
        .into_response()
}

async fn fake(script: Vec<(u16, Value)>) -> (String, Arc<Fake>) {
    let st = Arc::new(Fake {
        script: Mutex::new(script.into()),
        seen: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new().fallback(handle).with_state(st.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, st)
}

fn client(url: &str, auth: Arc<dyn TokenProvider>) -> BigQueryClient {
    let mut cfg = ClientConfig::emulator(url, "p");
    cfg.min_backoff = Duration::from_millis(1);
    cfg.max_backoff = Duration::from_millis(5);
    cfg.max_retries = 3;
    BigQueryClient::new(cfg, auth).unwrap()
}

fn done(rows: Value, page_token: Option<&str>) -> Value {
    let mut v = json!({
        "jobComplete": true,
        "jobReference": {"projectId": "p", "jobId": "job-1", "location": "US"},
        "schema": {"fields": [{"name": "n", "type": "INTEGER", "mode": "NULLABLE"},
                              {"name": "ts", "type": "TIMESTAMP", "mode": "NULLABLE"}]},
        "rows": rows,
    });
    if let Some(t) = page_token {
        v["pageToken"] = json!(t);
    }
    v
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff() {
    let (url, st) = fake(vec![
        (503, json!({"error": {"code": 503, "message": "unavailable", "errors": [{"reason": "backendError"}]}})),
        (429, json!({"error": {"code": 429, "message": "slow down", "errors": [{"reason": "rateLimitExceeded"}]}})),
        (200, done(json!([{"f": [{"v": "1"}, {"v": "1700000000000001"}]}]), None)),
    ])
    .await;
    let c = client(&url, Arc::new(NoAuth));
    let res = c
        .query("SELECT 1", &[], "probe on table p.d.t")
        .await
        .expect("retried to success");
    assert_eq!(res.rows[0]["n"], json!(1));
    assert_eq!(res.rows[0]["ts"], json!(1_700_000_000_000_001i64));
    let s = c.stats();
    assert_eq!((s.calls, s.retries), (3, 2));
    let seen = st.seen.lock().unwrap().clone();
    let body: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body["formatOptions"]["useInt64Timestamp"], json!(true));
    assert_eq!(body["useLegacySql"], json!(false));
    assert!(
        seen[0].auth.is_none(),
        "NoAuth sends no Authorization header"
    );
}

#[tokio::test]
async fn retries_are_bounded_and_permanent_errors_are_not_retried() {
    let busy =
        json!({"error": {"code": 500, "message": "boom", "errors": [{"reason": "backendError"}]}});
    let (url, st) = fake(vec![(500, busy.clone()); 10]).await;
    let e = client(&url, Arc::new(NoAuth))
        .query("SELECT 1", &[], "poll of p.d.t")
        .await
        .unwrap_err();
    assert_eq!(e.class, RetryClass::Transient);
    assert_eq!(
        st.seen.lock().unwrap().len(),
        4,
        "one try and three retries"
    );

    let (url, st) = fake(vec![(
        403,
        json!({"error": {"code": 403, "message": "Quota exceeded: too many DML statements",
        "errors": [{"reason": "quotaExceeded", "message": "Quota exceeded"}]}}),
    )])
    .await;
    let e = client(&url, Arc::new(NoAuth))
        .query("MERGE", &[], "MERGE of 3 contacts on table p.d.contacts")
        .await
        .unwrap_err();
    // BigQuery also says quotaExceeded for limits that reset (DML per
    // table, concurrent queries): the engine tries again next cycle.
    assert_eq!(e.class, RetryClass::Transient);
    assert!(
        e.message.contains("p.d.contacts") && e.message.contains("quotaExceeded"),
        "{e}"
    );
    assert_eq!(
        st.seen.lock().unwrap().len(),
        1,
        "a quota error is not retried within the call"
    );

    let (url, _) = fake(vec![(
        403,
        json!({"error": {"code": 403, "message": "Access Denied: Table p:d.contacts",
        "errors": [{"reason": "accessDenied"}]}}),
    )])
    .await;
    let e = client(&url, Arc::new(NoAuth))
        .query("SELECT", &[], "read on table p.d.contacts")
        .await
        .unwrap_err();
    assert!(!e.is_transient() && e.message.contains("permission"), "{e}");
}

#[tokio::test]
async fn errors_in_a_200_body_fail_the_call() {
    // bqemulator style: a failed query as HTTP 200 with errors[].
    let (url, _) = fake(vec![(200, json!({"jobComplete": true, "errors": [{"reason": "invalidQuery", "message": "Syntax error"}]}))]).await;
    let e = client(&url, Arc::new(NoAuth))
        .query("SELEC", &[], "scan on table p.d.t")
        .await
        .unwrap_err();
    assert!(
        e.message.contains("invalidQuery") && e.message.contains("p.d.t"),
        "{e}"
    );
    assert!(!e.is_transient());

    let (url, _) = fake(vec![(200, json!({"insertErrors": [{"index": 1, "errors": [{"reason": "invalid", "message": "no such field: x"}]}]}))]).await;
    let rows = vec![
        InsertRow {
            insert_id: Some("a".into()),
            json: Map::new()
        };
        2
    ];
    let e = client(&url, Arc::new(NoAuth))
        .insert_all("d", "contacts", &rows)
        .await
        .unwrap_err();
    assert!(
        e.message.contains("row 1") && e.message.contains("p.d.contacts"),
        "{e}"
    );
}

#[tokio::test]
async fn unfinished_jobs_are_awaited_and_pages_followed() {
    let (url, st) = fake(vec![
        (200, json!({"jobComplete": false, "jobReference": {"projectId": "p", "jobId": "job-1", "location": "EU"}})),
        (200, json!({"jobComplete": false, "jobReference": {"projectId": "p", "jobId": "job-1", "location": "EU"}})),
        (200, done(json!([{"f": [{"v": "1"}, {"v": null}]}]), Some("tok2"))),
        (200, done(json!([{"f": [{"v": "2"}, {"v": null}]}]), None)),
    ])
    .await;
    let c = client(&url, Arc::new(NoAuth));
    let res = c
        .query(
            "SELECT n FROM t WHERE x = @x",
            &[QueryParam::string("x", "it's; DROP")],
            "q",
        )
        .await
        .expect("query");
    let ns: Vec<Value> = res.rows.iter().map(|r| r["n"].clone()).collect();
    assert_eq!(ns, [json!(1), json!(2)]);
    let seen = st.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[1].method, "GET");
    assert_eq!(seen[1].path, "/bigquery/v2/projects/p/queries/job-1");
    assert!(seen[1].query.contains("location=EU"), "{}", seen[1].query);
    assert!(
        seen[3].query.contains("pageToken=tok2"),
        "{}",
        seen[3].query
    );
    assert!(seen[3]
        .query
        .contains("formatOptions.useInt64Timestamp=true"));
    assert_eq!(c.stats().jobs, 1, "waiting and paging start no new job");
    let body: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert!(
        !body["query"].as_str().unwrap().contains("DROP"),
        "values travel as parameters"
    );
    assert_eq!(
        body["queryParameters"][0]["parameterValue"]["value"],
        json!("it's; DROP")
    );
}

#[tokio::test]
async fn service_account_tokens_are_signed_exchanged_cached_and_never_shown() {
    let (url, st) = fake(vec![
        (200, json!({"access_token": "ya29.SECRET-TOKEN", "expires_in": 3600, "token_type": "Bearer"})),
        (200, json!({"kind": "bigquery#dataset"})),
        (200, json!({"kind": "bigquery#dataset"})),
    ])
    .await;
    let key_json = include_str!("fixtures/test-sa-key.json");
    let sa = ServiceAccountKey::from_json(key_json)
        .expect("key")
        .with_token_url(format!("{url}/token"));
    let shown = format!("{sa:?}");
    assert!(
        !shown.contains("PRIVATE KEY") && shown.contains("redacted"),
        "{shown}"
    );
    let c = client(&url, Arc::new(sa));
    assert!(c.dataset_exists("d").await.expect("get"));
    assert!(c.dataset_exists("d").await.expect("get"));
    let seen = st.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "one token exchange for two calls: {seen:?}");
    assert_eq!(seen[0].path, "/token");
    let form: Vec<(String, String)> = url_decode(&seen[0].body);
    let get = |k: &str| {
        form.iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(
        get("grant_type"),
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    // The assertion is an RS256 JWT signed by the key, for this audience.
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[format!("{url}/token")]);
    let pubkey =
        jsonwebtoken::DecodingKey::from_rsa_pem(include_bytes!("fixtures/test-sa-pub.pem"))
            .unwrap();
    let tok =
        jsonwebtoken::decode::<Value>(&get("assertion"), &pubkey, &validation).expect("valid JWT");
    assert_eq!(
        tok.claims["iss"],
        json!("contact-sync-test@test-project.iam.gserviceaccount.com")
    );
    assert_eq!(
        tok.claims["scope"],
        json!("https://www.googleapis.com/auth/bigquery")
    );
    assert_eq!(tok.header.kid.as_deref(), Some("test-key-id-1"));
    assert_eq!(seen[1].auth.as_deref(), Some("Bearer ya29.SECRET-TOKEN"));
    assert!(!format!("{c:?}").contains("SECRET"));
}

#[tokio::test]
async fn token_errors_are_permanent_and_leak_nothing() {
    let (url, _) = fake(vec![(
        400,
        json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
    )])
    .await;
    let sa = ServiceAccountKey::from_json(include_str!("fixtures/test-sa-key.json"))
        .unwrap()
        .with_token_url(format!("{url}/token"));
    let e = client(&url, Arc::new(sa))
        .dataset_exists("d")
        .await
        .unwrap_err();
    assert_eq!(e.class, RetryClass::Permanent);
    assert!(e.message.contains("invalid_grant"), "{e}");
    assert!(
        !e.message.contains("eyJ"),
        "the signed assertion must not appear: {e}"
    );

    let e = ServiceAccountKey::from_json(
        "{\"client_email\": \"x\", \"private_key\": \"not a key SECRETSTUFF\"}",
    )
    .unwrap_err();
    assert!(!e.message.contains("SECRETSTUFF"), "{e}");
    let e = ServiceAccountKey::from_file("/nonexistent/key.json").unwrap_err();
    assert!(e.message.contains("/nonexistent/key.json"), "{e}");
}

#[tokio::test]
async fn metadata_server_tokens() {
    let (url, st) = fake(vec![
        (
            200,
            json!({"access_token": "meta-token", "expires_in": 120, "token_type": "Bearer"}),
        ),
        (200, json!({"kind": "bigquery#dataset"})),
    ])
    .await;
    let md = MetadataServer::new(format!(
        "{url}/computeMetadata/v1/instance/service-accounts/default/token"
    ));
    let c = client(&url, Arc::new(md));
    c.dataset_exists("d").await.expect("get");
    let seen = st.seen.lock().unwrap().clone();
    assert!(seen[0].path.ends_with("/default/token"));
    assert_eq!(seen[1].auth.as_deref(), Some("Bearer meta-token"));
}

fn url_decode(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (dec(k), dec(v)))
        .collect()
}

fn dec(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?');
                out.push(h);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn clock_skew_compares_current_timestamp_with_the_middle_of_the_call() {
    // BigQuery's clock an hour ahead of this machine's.
    let before = chrono::Utc::now();
    let server_us = (before + chrono::TimeDelta::hours(1)).timestamp_micros();
    let (url, st) = fake(vec![(
        200,
        json!({
            "jobComplete": true,
            "jobReference": {"projectId": "p", "jobId": "job-1", "location": "US"},
            "schema": {"fields": [{"name": "now", "type": "TIMESTAMP", "mode": "NULLABLE"}]},
            "rows": [{"f": [{"v": server_us.to_string()}]}],
        }),
    )])
    .await;
    let s = client(&url, Arc::new(NoAuth))
        .clock_skew()
        .await
        .expect("clock read");
    let after = chrono::Utc::now();
    // The call ran between `before` and `after`: BigQuery's reading was an
    // hour after `before`, so the offset is an hour less part of the call.
    let hour = 3600.0;
    let call = (after - before).num_microseconds().unwrap() as f64 / 1e6;
    // (1e-5 s: both clocks' readings are truncated to microseconds.)
    assert!(
        s.secs() <= hour + 1e-5 && s.secs() >= hour - call - 1e-5,
        "{s:?}"
    );
    assert!(s.uncertainty_secs() <= call / 2.0 + 1e-5, "{s:?}");
    let seen = st.seen.lock().unwrap().clone();
    assert!(
        seen[0].body.contains("CURRENT_TIMESTAMP()"),
        "{}",
        seen[0].body
    );

    // An answer without the timestamp is an error, not a zero skew.
    let (url, _) = fake(vec![(200, done(json!([]), None))]).await;
    let e = client(&url, Arc::new(NoAuth))
        .clock_skew()
        .await
        .unwrap_err();
    assert!(e.message.contains("no timestamp"), "{}", e.message);
}

/// What `status`, `/metrics` and the cycle log report per cycle and day
/// comes from these counters: each job's `totalBytesProcessed` and
/// `totalBytesBilled` (strings in BigQuery's answers) summed, and the
/// bytes of every request and answer body.
#[tokio::test]
async fn bytes_processed_billed_and_on_the_wire_are_counted_per_job() {
    let mut a = done(json!([{"f": [{"v": "1"}, {"v": null}]}]), None);
    a["totalBytesProcessed"] = json!("1000");
    a["totalBytesBilled"] = json!("10485760");
    let mut b = done(json!([]), None);
    b["totalBytesProcessed"] = json!("2500");
    b["totalBytesBilled"] = json!("10485760");
    let answers = [a.to_string().len(), b.to_string().len()];
    let (url, st) = fake(vec![(200, a), (200, b)]).await;
    let c = client(&url, Arc::new(NoAuth));
    c.query("SELECT 1", &[], "one").await.expect("one");
    c.query("SELECT 2", &[], "two").await.expect("two");
    let s = c.stats();
    assert_eq!(s.jobs, 2);
    assert_eq!(s.bytes_processed, 3_500);
    assert_eq!(s.bytes_billed, 20_971_520);
    let sent: usize = st.seen.lock().unwrap().iter().map(|x| x.body.len()).sum();
    assert_eq!(s.bytes_sent, sent as u64);
    assert_eq!(s.bytes_received, answers.iter().sum::<usize>() as u64);
}
