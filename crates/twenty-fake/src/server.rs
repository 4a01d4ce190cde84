//! The HTTP side: routing, auth, rate limit, counters, webhook sending, the
//! simulated workflow, and the start/stop API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{TimeDelta, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::oneshot;

use crate::state::{now_ts, ApiError, Event, ListQuery, State, PERSON_OBJECT_ID, WORKSPACE_ID};

/// A rate limit: `requests` per `window`, Twenty's "N tokens per W ms"
/// token bucket, refilled as Twenty 2.21 refills it (see [`take_token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
}

impl RateLimit {
    /// Twenty's default long window: 100 per 60 s per workspace
    /// (`API_RATE_LIMITING_LONG_LIMIT`/`_TTL_IN_MS`; issue 13, obs. 5).
    pub const TWENTY_LONG: RateLimit = RateLimit {
        requests: 100,
        window: Duration::from_secs(60),
    };
    /// Twenty's default short window: 100 per 1 s per workspace
    /// (`API_RATE_LIMITING_SHORT_LIMIT`/`_TTL_IN_MS`; issue 13, obs. 5).
    pub const TWENTY_SHORT: RateLimit = RateLimit {
        requests: 100,
        window: Duration::from_secs(1),
    };
}

/// How the fake starts.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The API key accepted as `Authorization: Bearer <key>`.
    pub api_key: String,
    /// The API key's name, shown in `createdBy`/`updatedBy`.
    pub key_name: String,
    /// The long window; `None` = unlimited. Twenty's default is
    /// [`RateLimit::TWENTY_LONG`].
    pub rate_limit: Option<RateLimit>,
    /// The short window, checked first; `None` = unlimited. Twenty's
    /// default is [`RateLimit::TWENTY_SHORT`].
    pub short_rate_limit: Option<RateLimit>,
    /// Simulate the new-workspace workflow: link a company to each created
    /// person after this delay (Twenty: about a second).
    pub workflow_delay: Option<Duration>,
    /// Timeout of each webhook delivery (Twenty: 5 s, never retried).
    pub webhook_timeout: Duration,
    /// Port to listen on (0 = random).
    pub port: u16,
    /// How far the fake's clock is ahead of this machine's (negative:
    /// behind), for tests of clock checks: it shifts the `Date` header of
    /// every response, the timestamps of records and those of webhooks.
    pub clock_skew: TimeDelta,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            api_key: "fake-twenty-api-key".into(),
            key_name: "contact-sync".into(),
            rate_limit: None,
            short_rate_limit: None,
            workflow_delay: None,
            webhook_timeout: Duration::from_secs(5),
            port: 0,
            clock_skew: TimeDelta::zero(),
        }
    }
}

/// Request and webhook counters, for tests and benches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests per route (`"POST /rest/batch/people"`,
    /// `"PATCH /rest/people/{id}"`, …), every status included.
    pub by_route: BTreeMap<String, u64>,
    /// All requests.
    pub total: u64,
    /// Requests answered 429.
    pub rate_limited: u64,
    /// Requests answered 401 or 403.
    pub unauthenticated: u64,
    /// Webhook deliveries answered 2xx.
    pub webhooks_delivered: u64,
    /// Webhook deliveries that failed (error status, timeout, refused).
    pub webhooks_failed: u64,
    /// Webhooks not sent because of [`FakeTwenty::set_drop_webhooks`].
    pub webhooks_dropped: u64,
    /// Updates made by the simulated workflow.
    pub workflow_updates: u64,
}

impl Counters {
    /// Requests to one route.
    pub fn route(&self, route: &str) -> u64 {
        self.by_route.get(route).copied().unwrap_or(0)
    }
}

/// One of Twenty's buckets: whole tokens and the time of the last admitted
/// request.
struct Bucket {
    tokens: u64,
    last: Instant,
}

impl Bucket {
    fn full(limit: Option<RateLimit>) -> Bucket {
        Bucket {
            tokens: limit.map(|r| r.requests as u64).unwrap_or(0),
            last: Instant::now(),
        }
    }
}

struct Inner {
    state: Mutex<State>,
    counters: Mutex<Counters>,
    api_key: String,
    rate: Mutex<Option<RateLimit>>,
    bucket: Mutex<Bucket>,
    short_rate: Mutex<Option<RateLimit>>,
    short_bucket: Mutex<Bucket>,
    drop_webhooks: Mutex<bool>,
    workflow: Mutex<Option<Duration>>,
    http: reqwest::Client,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running fake Twenty server. Dropping it stops the server.
pub struct FakeTwenty {
    addr: SocketAddr,
    inner: Arc<Inner>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeTwenty {
    /// Starts the server on 127.0.0.1 (random port unless configured).
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeTwenty> {
        let http = reqwest::Client::builder()
            .timeout(config.webhook_timeout)
            .build()
            .map_err(std::io::Error::other)?;
        let mut state = State::new(&config.key_name);
        state.skew = config.clock_skew;
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            counters: Mutex::new(Counters::default()),
            api_key: config.api_key.clone(),
            rate: Mutex::new(config.rate_limit),
            bucket: Mutex::new(Bucket::full(config.rate_limit)),
            short_rate: Mutex::new(config.short_rate_limit),
            short_bucket: Mutex::new(Bucket::full(config.short_rate_limit)),
            drop_webhooks: Mutex::new(false),
            workflow: Mutex::new(config.workflow_delay),
            http,
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, task) = serve(listener, inner.clone());
        Ok(FakeTwenty {
            addr,
            inner,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// An outage: stops listening (new connections are refused), lets the
    /// requests in flight finish (at most `grace`) and closes every
    /// connection, as a Twenty server that went down would. The stored
    /// people, fields, webhooks and counters stay for [`come_back`](Self::come_back).
    pub async fn go_offline(&mut self, grace: Duration) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut t) = self.task.take() {
            if tokio::time::timeout(grace, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
    }

    /// Ends an outage: listens again on the same address, with the data
    /// it had. Does nothing when the server is up.
    pub async fn come_back(&mut self) -> std::io::Result<()> {
        if self.task.is_some() {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let (shutdown, task) = serve(listener, self.inner.clone());
        self.shutdown = Some(shutdown);
        self.task = Some(task);
        Ok(())
    }

    /// Whether the server is down ([`go_offline`](Self::go_offline)).
    pub fn is_offline(&self) -> bool {
        self.task.is_none()
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The accepted API key.
    pub fn api_key(&self) -> &str {
        &self.inner.api_key
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        lock(&self.inner.counters).clone()
    }

    /// Zeroes the counters.
    pub fn reset_counters(&self) {
        *lock(&self.inner.counters) = Counters::default();
    }

    /// Changes the long rate limit (the bucket starts full).
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        *lock(&self.inner.rate) = limit;
        *lock(&self.inner.bucket) = Bucket::full(limit);
    }

    /// Changes the short rate limit (the bucket starts full).
    pub fn set_short_rate_limit(&self, limit: Option<RateLimit>) {
        *lock(&self.inner.short_rate) = limit;
        *lock(&self.inner.short_bucket) = Bucket::full(limit);
    }

    /// Drops (does not send) every webhook while set, as when the daemon is
    /// unreachable: Twenty never retries.
    pub fn set_drop_webhooks(&self, drop: bool) {
        *lock(&self.inner.drop_webhooks) = drop;
    }

    /// Sets how far the fake's clock is ahead of this machine's (see
    /// [`FakeConfig::clock_skew`]).
    pub fn set_clock_skew(&self, skew: TimeDelta) {
        lock(&self.inner.state).skew = skew;
    }

    /// Turns the simulated workflow on (with its delay) or off.
    pub fn set_workflow(&self, delay: Option<Duration>) {
        *lock(&self.inner.workflow) = delay;
    }

    /// A stored person (soft-deleted ones included), as the API renders it.
    pub fn person(&self, id: &str) -> Option<Value> {
        lock(&self.inner.state).person(id)
    }

    /// Every stored person (soft-deleted ones included), by id.
    pub fn people(&self) -> Vec<Value> {
        lock(&self.inner.state).all_people()
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for FakeTwenty {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves the fake's routes on `listener` until the returned sender fires
/// (or is dropped).
fn serve(
    listener: tokio::net::TcpListener,
    inner: Arc<Inner>,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let app = Router::new().fallback(handle).with_state(inner);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    (tx, task)
}

fn json_response(status: u16, body: &Value, charset: bool) -> Response {
    let ct = if charset {
        "application/json; charset=utf-8"
    } else {
        "application/json"
    };
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [
            (header::CONTENT_TYPE, ct),
            (header::HeaderName::from_static("x-powered-by"), "Express"),
        ],
        bytes,
    )
        .into_response()
}

fn err_response(e: ApiError) -> Response {
    json_response(e.status, &e.body, true)
}

fn parse_query(uri: &Uri) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(q) = uri.query() {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.insert(pct_decode(k), pct_decode(v));
        }
    }
    out
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn route_key(method: &Method, path: &str) -> String {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let norm: Vec<String> = segs
        .iter()
        .map(|s| {
            if uuid::Uuid::parse_str(s).is_ok() {
                "{id}".to_string()
            } else {
                s.to_string()
            }
        })
        .collect();
    format!("{method} {}", norm.join("/"))
}

fn list_query(q: &BTreeMap<String, String>) -> ListQuery {
    ListQuery {
        limit: q.get("limit").cloned(),
        filter: q.get("filter").cloned(),
        order_by: q.get("order_by").cloned(),
        starting_after: q.get("starting_after").cloned(),
    }
}

fn truthy(q: &BTreeMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true")
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))
}

/// Takes one token from one bucket as Twenty 2.21's
/// `ThrottlerService.tokenBucketThrottleOrThrow` does: the tokens available
/// are `min(tokens + floor(elapsed_ms × limit / window_ms), limit)` with
/// `elapsed` counted from the last *admitted* request, which resets it (so
/// requests closer than `window / limit` refill nothing); a refused request
/// changes nothing. `Some(limit)` when refused.
fn take_from(rate: Option<RateLimit>, bucket: &Mutex<Bucket>) -> Option<RateLimit> {
    let rate = rate?;
    let mut b = lock(bucket);
    let now = Instant::now();
    let window_ms = rate.window.as_secs_f64() * 1000.0;
    let elapsed_ms = now.duration_since(b.last).as_secs_f64() * 1000.0;
    let refill = (elapsed_ms * rate.requests as f64 / window_ms.max(1e-9)).floor() as u64;
    let available = (b.tokens + refill).min(rate.requests as u64);
    if available < 1 {
        return Some(rate);
    }
    b.tokens = available - 1;
    b.last = now;
    None
}

/// Twenty checks the short bucket, then the long one (the short token is
/// spent even when the long bucket refuses), per workspace, for API keys
/// (`throttleQueryExecution` in twenty-server; issue 13, observation 5).
fn take_token(inner: &Inner) -> Option<RateLimit> {
    let short = *lock(&inner.short_rate);
    if let Some(r) = take_from(short, &inner.short_bucket) {
        return Some(r);
    }
    let long = *lock(&inner.rate);
    take_from(long, &inner.bucket)
}

/// Every response carries a `Date` header from the fake's clock, as
/// Twenty's (Express) responses do: IMF-fixdate, whole seconds (truncated).
async fn handle(
    AxState(inner): AxState<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut resp = respond(&inner, method, uri, headers, body);
    let now = Utc::now() + lock(&inner.state).skew;
    if let Ok(v) = header::HeaderValue::from_str(&http_date(now)) {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

/// An HTTP date (RFC 9110 IMF-fixdate): `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: chrono::DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn respond(
    inner: &Arc<Inner>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let route = route_key(&method, &path);
    {
        let mut c = lock(&inner.counters);
        c.total += 1;
        *c.by_route.entry(route.clone()).or_insert(0) += 1;
    }
    // Auth first, as Twenty's guard does.
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    match token {
        None => {
            lock(&inner.counters).unauthenticated += 1;
            return json_response(
                403,
                &json!({"statusCode": 403, "messages": ["Missing authentication token"], "error": "FORBIDDEN_EXCEPTION"}),
                false,
            );
        }
        Some(t) if t != inner.api_key => {
            lock(&inner.counters).unauthenticated += 1;
            return json_response(
                401,
                &json!({"statusCode": 401, "messages": ["Token invalid."], "error": "UNAUTHENTICATED"}),
                false,
            );
        }
        Some(_) => {}
    }
    if let Some(rate) = take_token(inner) {
        lock(&inner.counters).rate_limited += 1;
        return json_response(
            429,
            &json!({"statusCode": 429, "error": "HttpException", "messages": [format!("Limit reached ({} tokens per {} ms)", rate.requests, rate.window.as_millis())]}),
            true,
        );
    }
    let q = parse_query(&uri);
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = dispatch(inner, &method, &segs, &q, &body);
    match result {
        Ok((status, value, events)) => {
            if !events.is_empty() {
                deliver(inner, events);
            }
            json_response(status, &value, true)
        }
        Err(e) => err_response(e),
    }
}

type Outcome = Result<(u16, Value, Vec<Event>), ApiError>;

fn dispatch(
    inner: &Arc<Inner>,
    method: &Method,
    segs: &[&str],
    q: &BTreeMap<String, String>,
    body: &Bytes,
) -> Outcome {
    let mut st = lock(&inner.state);
    let upsert = truthy(q, "upsert");
    match (method.as_str(), segs) {
        ("GET", ["rest", "people"]) => Ok((200, st.list_people(&list_query(q))?, vec![])),
        ("POST", ["rest", "people"]) => {
            let b = parse_body(body)?;
            let (mut recs, ev) = st.create_people(std::slice::from_ref(&b), upsert)?;
            let r = recs.pop().unwrap_or(Value::Null);
            Ok((201, json!({"data": {"createPerson": r}}), ev))
        }
        ("POST", ["rest", "batch", "people"]) => {
            let b = parse_body(body)?;
            let Value::Array(items) = b else {
                return Err(ApiError::bad_request("Body must be an array of records"));
            };
            let (recs, ev) = st.create_people(&items, upsert)?;
            Ok((201, json!({"data": {"createPeople": recs}}), ev))
        }
        ("PATCH", ["rest", "people"]) => {
            let b = parse_body(body)?;
            let (recs, ev) = st.update_many(&list_query(q), &b)?;
            Ok((200, json!({"data": {"updatePeople": recs}}), ev))
        }
        ("GET", ["rest", "people", id]) => Ok((200, st.get_person(id)?, vec![])),
        ("PATCH", ["rest", "people", id]) => {
            let b = parse_body(body)?;
            let (r, ev) = st.update_person(id, &b)?;
            Ok((200, json!({"data": {"updatePerson": r}}), ev))
        }
        ("DELETE", ["rest", "people", id]) => {
            let (r, ev) = st.delete_person(id, truthy(q, "soft_delete"))?;
            Ok((200, json!({"data": {"deletePerson": r}}), ev))
        }
        // Live Twenty 2.21 has no REST restore route
        // (samples/live13/rest_restore_by_id.json).
        ("PATCH", ["rest", "restore", ..]) => Err(ApiError::bad_request(format!(
            "Query path '/{}' invalid. Valid examples: /rest/companies/id or /rest/companies or /rest/batch/companies",
            segs.join("/")
        ))),
        ("GET", ["rest", "companies"]) => Ok((200, st.list_companies(&list_query(q))?, vec![])),
        ("POST", ["rest", "companies"]) => {
            let b = parse_body(body)?;
            Ok((201, st.create_company(&b)?, vec![]))
        }
        ("POST", ["rest", "batch", "companies"]) => {
            let b = parse_body(body)?;
            let Value::Array(items) = b else {
                return Err(ApiError::bad_request("Body must be an array of records"));
            };
            Ok((201, st.create_companies(&items, upsert)?, vec![]))
        }
        ("GET", ["rest", "companies", id]) => Ok((200, st.get_company(id)?, vec![])),
        ("GET", ["rest", "metadata", "objects"]) => Ok((200, st.objects(), vec![])),
        ("GET", ["rest", "metadata", "fields"]) => Ok((200, st.fields(), vec![])),
        ("POST", ["rest", "metadata", "fields"]) => {
            let b = parse_body(body)?;
            Ok((201, st.create_field(&b)?, vec![]))
        }
        ("GET", ["rest", "metadata", "webhooks"]) => Ok((200, st.webhooks(), vec![])),
        ("POST", ["rest", "metadata", "webhooks"]) => {
            let b = parse_body(body)?;
            Ok((201, st.create_webhook(&b)?, vec![]))
        }
        ("DELETE", ["rest", "metadata", "webhooks", id]) => {
            Ok((200, st.delete_webhook(id)?, vec![]))
        }
        ("POST", ["graphql"]) => {
            let b = parse_body(body)?;
            let query = b.get("query").and_then(Value::as_str).unwrap_or_default();
            if !query.contains("restorePerson") {
                return Err(ApiError::bad_request(
                    "This fake only implements the restorePerson mutation",
                ));
            }
            let id = b
                .pointer("/variables/id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| ApiError::bad_request("variables.id is required"))?;
            let (r, ev) = st.restore_person(&id)?;
            Ok((200, json!({"data": {"restorePerson": r}}), ev))
        }
        _ => Err(ApiError {
            status: 404,
            body: json!({"statusCode": 404, "error": "Not Found", "messages": [format!("Cannot {method} /{}", segs.join("/"))]}),
        }),
    }
}

/// Sends webhooks for `events` (and schedules the workflow for creations).
fn deliver(inner: &Arc<Inner>, events: Vec<Event>) {
    let workflow = *lock(&inner.workflow);
    for ev in events {
        if let Some(delay) = workflow {
            if ev.name == "person.created" {
                if let Some(id) = ev.record.get("id").and_then(Value::as_str) {
                    let id = id.to_string();
                    let inner2 = inner.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let e = lock(&inner2.state).workflow_link_company(&id);
                        if let Some(e) = e {
                            lock(&inner2.counters).workflow_updates += 1;
                            deliver(&inner2, vec![e]);
                        }
                    });
                }
            }
        }
        let (targets, skew) = {
            let st = lock(&inner.state);
            (st.targets(&ev.name), st.skew)
        };
        for (webhook_id, url, secret) in targets {
            if *lock(&inner.drop_webhooks) {
                lock(&inner.counters).webhooks_dropped += 1;
                continue;
            }
            let mut body = serde_json::Map::new();
            body.insert("targetUrl".into(), json!(url));
            body.insert("eventName".into(), json!(ev.name));
            body.insert(
                "objectMetadata".into(),
                json!({"id": PERSON_OBJECT_ID, "nameSingular": "person"}),
            );
            body.insert("workspaceId".into(), json!(WORKSPACE_ID));
            body.insert("webhookId".into(), json!(webhook_id));
            body.insert("eventDate".into(), json!(now_ts(skew)));
            body.insert("record".into(), ev.record.clone());
            if let Some(f) = &ev.updated_fields {
                body.insert("updatedFields".into(), json!(f));
            }
            let raw = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
            let inner2 = inner.clone();
            tokio::spawn(async move {
                let ts = (Utc::now() + skew).timestamp_millis().to_string();
                let mut nonce = [0u8; 16];
                rand::thread_rng().fill_bytes(&mut nonce);
                let mut req = inner2
                    .http
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("User-Agent", "axios/1.17.0")
                    .header("X-Twenty-Webhook-Timestamp", &ts)
                    .header("X-Twenty-Webhook-Nonce", hex::encode(nonce));
                if !secret.is_empty() {
                    req = req.header("X-Twenty-Webhook-Signature", sign(&secret, &ts, &raw));
                }
                let ok = match req.body(raw).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                let mut c = lock(&inner2.counters);
                if ok {
                    c.webhooks_delivered += 1;
                } else {
                    c.webhooks_failed += 1;
                }
            });
        }
    }
}

/// Twenty's webhook signature: hex HMAC-SHA256(secret, `timestamp:body`).
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}
