//! The operator console: server-rendered HTML pages and a JSON API on the
//! daemon's listener.
//!
//! Pages: `/` (overview with charts of the last 24 h, refreshes itself),
//! `/conflicts`, `/contact/{id}/conflicts` (a choice per field),
//! `/dead-letters`, `/paused`, `/contact/{id}`, `/search`. API: the same
//! data under `/api/...` (see the README's console section). Actions
//! (resolve conflicts, retry or dismiss a dead letter, decide about a
//! paused store) are POSTs that carry the process's CSRF token.
//!
//! Security:
//! - The listener is loopback-only unless `allow_remote` (see [`crate::serve`]).
//!   Requests whose `Host` is not a loopback name are refused unless remote
//!   access is allowed (a page fetched through DNS rebinding cannot read the
//!   CSRF token).
//! - With a token configured (required when `allow_remote`), every console
//!   request needs `Authorization: Bearer <token>` or the session cookie set
//!   by `POST /login`. Tokens are compared in constant time.
//! - Every value is HTML-escaped by `maud`'s templates.
//! - URLs carry ids only; the search form and `POST /api/search` carry the
//!   query in the body (a `?q=` in a URL is ignored). Nothing here logs a
//!   request, a contact value or a token.
//!
//! Retrying or dismissing a dead letter is the state call `contact-sync
//! dead-letters retry|dismiss` makes (`retry_or_dismiss_dead_letter`).
//! Resolving a conflict writes canonical, so the console hands it to the
//! daemon's loop ([`ConsoleRequest`]), which runs the engine's
//! `resolve_conflict` between cycles, as `contact-sync conflicts resolve`
//! does. Decisions about paused stores are state-database writes
//! ([`contact_sync_state::StateTx::decide`]), as `contact-sync approve` writes them.

mod api;
mod charts;
mod choose;
mod data;
mod pages;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use contact_sync_state::{StateDb, StateTarget};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use crate::OpsHandle;

pub use charts::{render as render_charts, Charts, CHART_HOURS};
pub use data::{OverviewStore, StoreState};

/// Rows per page of the paged lists (also the API's default `limit`).
pub const PAGE_SIZE: usize = 50;
/// The API's largest `limit`.
pub const MAX_PAGE_SIZE: usize = 500;
/// The session cookie set by `POST /login`.
pub const SESSION_COOKIE: &str = "contact_sync_console";
/// How long an action waits for the daemon's loop (a cycle may be running).
const ACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// What the console asks of the daemon's loop.
#[derive(Debug)]
pub enum ConsoleRequest {
    /// Settle conflict `id` (keep incoming, or keep canonical), as
    /// `contact-sync conflicts resolve` does; the reply is the error text.
    ResolveConflict {
        id: i64,
        keep_incoming: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Read one contact from every store (canonical first), for the contact
    /// view: per store, the record, none, or the error text.
    ReadContact {
        contact_id: String,
        reply: oneshot::Sender<Vec<StoreRead>>,
    },
}

/// One store's answer to [`ConsoleRequest::ReadContact`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreRead {
    pub store: String,
    /// The record as the store holds it (`None`: not there).
    pub record: Option<contact_sync_core::Contact>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// How the console is set up.
#[derive(Clone, Default)]
pub struct ConsoleConfig {
    /// The state database (the console opens its own connection).
    pub state: StateTarget,
    /// The configured stores (canonical first), for the overview and for
    /// refusing decisions about unknown stores.
    pub stores: Vec<String>,
    /// The bearer token; `None` means no token (loopback only).
    pub token: Option<String>,
    /// Whether non-loopback clients may reach the listener.
    pub allow_remote: bool,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("state", &self.state.describe())
            .field("stores", &self.stores)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("allow_remote", &self.allow_remote)
            .finish()
    }
}

/// Why the console cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("[server] allow_remote = true needs a console token ([console] token = {{ env = \"...\" }} or a file or command), so the console is not open to the network")]
    RemoteWithoutToken,
    #[error("the console token is empty")]
    EmptyToken,
    #[error("the console cannot open the state database: {0}")]
    State(#[from] contact_sync_state::StateError),
}

pub(crate) struct Inner {
    pub(crate) db: Mutex<StateDb>,
    pub(crate) ops: OpsHandle,
    pub(crate) stores: Vec<String>,
    pub(crate) requests: mpsc::Sender<ConsoleRequest>,
    pub(crate) csrf: String,
    token: Option<String>,
    allow_remote: bool,
}

/// The console's shared state (cheap to clone).
#[derive(Clone)]
pub struct Console {
    pub(crate) inner: Arc<Inner>,
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time equality of two secrets (lengths may leak, contents not).
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

impl Console {
    /// Opens the console's own state connection and a fresh CSRF token.
    /// Returns the console and the receiving end of its requests, which
    /// the daemon's loop must serve.
    pub fn new(
        config: ConsoleConfig,
        ops: OpsHandle,
    ) -> Result<(Console, mpsc::Receiver<ConsoleRequest>), ConsoleError> {
        if matches!(&config.token, Some(t) if t.trim().is_empty()) {
            return Err(ConsoleError::EmptyToken);
        }
        if config.allow_remote && config.token.is_none() {
            return Err(ConsoleError::RemoteWithoutToken);
        }
        let db = StateDb::open_target(&config.state)?;
        let (tx, rx) = mpsc::channel(16);
        let console = Console {
            inner: Arc::new(Inner {
                db: Mutex::new(db),
                ops,
                stores: config.stores,
                requests: tx,
                csrf: random_hex(32),
                token: config.token,
                allow_remote: config.allow_remote,
            }),
        };
        Ok((console, rx))
    }

    /// Runs `f` on the console's state connection on a blocking thread.
    pub(crate) async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut StateDb) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut db = inner.db.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut db)
        })
        .await
        .map_err(|e| format!("console task failed: {e}"))?
    }

    /// Asks the daemon's loop to read a contact from every store; `None`
    /// when the loop does not answer within `wait` (a long cycle).
    pub(crate) async fn read_contact(
        &self,
        contact_id: String,
        wait: Duration,
    ) -> Option<Vec<StoreRead>> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(ConsoleRequest::ReadContact { contact_id, reply })
            .await
            .ok()?;
        tokio::time::timeout(wait, answer).await.ok()?.ok()
    }

    /// Asks the daemon's loop to settle a conflict and waits for it.
    pub(crate) async fn resolve(&self, id: i64, keep_incoming: bool) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(ConsoleRequest::ResolveConflict {
                id,
                keep_incoming,
                reply,
            })
            .await
            .map_err(|_| "the daemon's sync loop is not running".to_string())?;
        match tokio::time::timeout(ACTION_TIMEOUT, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the daemon's sync loop stopped before settling it".into()),
            Err(_) => Err(format!(
                "the daemon's sync loop did not answer within {} s (a long cycle?); try again",
                ACTION_TIMEOUT.as_secs()
            )),
        }
    }
}

/// Whether `host` (a `Host` header) names this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The token the request presents: a bearer header or the session cookie.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| cookie_value(headers, SESSION_COOKIE))
}

async fn guard(State(console): State<Console>, req: Request, next: Next) -> Response {
    let inner = &console.inner;
    if !inner.allow_remote {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !loopback_host(host) {
            return (
                StatusCode::FORBIDDEN,
                "the console answers only to a loopback host name (127.0.0.1, ::1, localhost)",
            )
                .into_response();
        }
    }
    if let Some(token) = &inner.token {
        let path = req.uri().path();
        let ok = presented_token(req.headers()).is_some_and(|t| same_secret(t, token));
        if !ok && path != "/login" {
            if path.starts_with("/api/") {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    axum::Json(serde_json::json!({"error": "a bearer token is required"})),
                )
                    .into_response();
            }
            return pages::login_page(StatusCode::UNAUTHORIZED, None);
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The console's pages and API, to merge into the daemon's router.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", post(pages::login))
        .route("/conflicts", get(pages::conflicts))
        .route("/conflicts/{id}/resolve", post(pages::resolve))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/{id}/close", post(pages::close_dead_letter))
        .route(
            "/contact/{id}/conflicts",
            get(choose::form).post(choose::submit),
        )
        .route("/paused", get(pages::paused))
        .route("/paused/{store}/decide", post(pages::decide))
        .route("/contact/{id}", get(pages::contact))
        .route("/search", get(pages::search_get).post(pages::search_post))
        .route("/api/overview", get(api::overview))
        .route("/api/session", get(api::session))
        .route("/api/conflicts", get(api::conflicts))
        .route("/api/conflicts/{id}/resolve", post(api::resolve))
        .route("/api/dead-letters", get(api::dead_letters))
        .route(
            "/api/dead-letters/{id}/{action}",
            post(api::close_dead_letter),
        )
        .route(
            "/api/contact/{id}/conflicts/resolve",
            post(choose::api_submit),
        )
        .route("/api/history", get(api::history))
        .route("/api/paused", get(api::paused))
        .route("/api/paused/{store}/decide", post(api::decide))
        .route("/api/contact/{id}", get(api::contact))
        .route("/api/search", get(api::search_get).post(api::search))
        .layer(axum::middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:9464",
            "localhost:1",
            "[::1]:9464",
            "LOCALHOST",
            "127.0.0.1",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in ["evil.example:9464", "10.0.0.1:9464", "", "[fe80::1]:1"] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    /// The console session's CSRF token (`/api/session`).
    async fn csrf_token(http: &reqwest::Client, base: &str) -> String {
        let session: serde_json::Value = http
            .get(format!("{base}/api/session"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        session["csrf_token"].as_str().unwrap().to_string()
    }

    async fn start(token: Option<&str>) -> (tempfile::TempDir, crate::ServerHandle, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut db = StateDb::open(&path).unwrap();
            let tx = db.tx().unwrap();
            tx.add_dead_letter(&contact_sync_core::DeadLetter {
                id: 0,
                store: "local".into(),
                record: "r1".into(),
                field: "canonical_name".into(),
                reason: "<script>alert(1)</script>".into(),
                payload: None,
                at: contact_sync_core::model::now(),
            })
            .unwrap();
            tx.commit().unwrap();
        }
        let (c, _rx) = Console::new(
            ConsoleConfig {
                state: StateTarget::Path(path),
                stores: vec!["canonical".into(), "local".into()],
                token: token.map(String::from),
                allow_remote: false,
            },
            OpsHandle::default(),
        )
        .unwrap();
        let server = crate::serve(
            &crate::ServerConfig::loopback(0),
            OpsHandle::default(),
            router(c),
        )
        .await
        .unwrap();
        let base = format!("http://{}", server.local_addr());
        (dir, server, base)
    }

    #[tokio::test]
    async fn values_are_escaped_and_actions_need_the_csrf_token() {
        let (_dir, _server, base) = start(None).await;
        let http = reqwest::Client::new();
        let page = http
            .get(format!("{base}/dead-letters"))
            .send()
            .await
            .unwrap();
        assert!(page
            .headers()
            .get("content-security-policy")
            .is_some_and(|v| v.to_str().unwrap().contains("default-src 'none'")));
        let page = page.text().await.unwrap();
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(!page.contains("<script>"), "{page}");
        // No token, a wrong one, then the right one (from /api/session).
        let decide = |csrf: Option<String>| {
            let mut r = http
                .post(format!("{base}/api/paused/local/decide"))
                .json(&serde_json::json!({"decision": "approve"}));
            if let Some(t) = csrf {
                r = r.header("X-CSRF-Token", t);
            }
            r.send()
        };
        assert_eq!(decide(None).await.unwrap().status(), 403);
        assert_eq!(decide(Some("0".repeat(64))).await.unwrap().status(), 403);
        let token = csrf_token(&http, &base).await;
        let r = decide(Some(token.clone())).await.unwrap();
        assert_eq!(r.status(), 409, "local is not paused");
        // A dead letter dismissed through the API, once.
        let dismiss = |csrf: &str| {
            http.post(format!("{base}/api/dead-letters/1/dismiss"))
                .header("X-CSRF-Token", csrf)
                .send()
        };
        assert_eq!(dismiss("wrong").await.unwrap().status(), 403);
        let r = dismiss(&token).await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["dead_letter"]["status"], "dismissed", "{v}");
        assert_eq!(dismiss(&token).await.unwrap().status(), 409);
        let r = http
            .post(format!("{base}/api/dead-letters/99/retry"))
            .header("X-CSRF-Token", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        // The overview carries its charts inline.
        let page = http
            .get(format!("{base}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("<svg"), "{page}");
        let form = http
            .post(format!("{base}/paused/local/decide"))
            .form(&[("csrf", "x"), ("decision", "approve")])
            .send()
            .await
            .unwrap();
        assert_eq!(form.status(), 403);
        // A host name other than loopback's (DNS rebinding) is refused.
        let r = http
            .get(format!("{base}/"))
            .header("Host", "attacker.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }

    #[tokio::test]
    async fn a_configured_token_is_required() {
        let (_dir, _server, base) = start(Some("s3cret-token")).await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = http.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .get(format!("{base}/api/overview"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .get(format!("{base}/api/overview"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .get(format!("{base}/api/overview"))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // The sign-in form sets the session cookie.
        let r = http
            .post(format!("{base}/login"))
            .form(&[("token", "s3cret-token")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let pair = cookie.split(';').next().unwrap().to_string();
        let r = http
            .get(format!("{base}/"))
            .header("Cookie", pair)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // /health and /metrics stay open (they are not the console's).
        let r = http.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }

    /// Contacts an initial sync indexed (never journaled) are found by a
    /// part of their name and by email, page after page, through the form
    /// and the API; an erased one is not; the query never goes in a URL.
    #[tokio::test]
    async fn search_finds_indexed_contacts_by_name_and_email() {
        use contact_sync_core::model::{now, Email};
        use contact_sync_core::Contact;
        let (dir, _server, base) = start(None).await;
        {
            let mut db = StateDb::open(&dir.path().join("state.db")).unwrap();
            let people: Vec<Contact> = (0..60)
                .map(|i| {
                    let mut c = Contact::new(format!("c{i:02}"), format!("Ada{i} Lovelace"));
                    c.version = 1;
                    c.emails = vec![Email {
                        address: format!("ada{i}@example.org"),
                        label: None,
                        is_primary: true,
                    }];
                    c
                })
                .chain(std::iter::once(Contact::new("c99", XSS_NAME)))
                .collect();
            let tx = db.tx().unwrap();
            tx.index_contacts(&people).unwrap();
            tx.scrub_contact("c07", now()).unwrap();
            tx.commit().unwrap();
            assert_eq!(db.journal_head().unwrap(), 0);
        }
        let http = reqwest::Client::new();
        let csrf = csrf_token(&http, &base).await;
        let api = |body: serde_json::Value| {
            http.post(format!("{base}/api/search"))
                .header("X-CSRF-Token", &csrf)
                .json(&body)
                .send()
        };
        // By email: one contact.
        let v: serde_json::Value = api(serde_json::json!({"q": "ada12@example.org"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["items"][0]["contact_id"], "c12");
        assert_eq!(v["items"][0]["matched"], "email");
        // By part of a name: 59 (c07 was erased), in pages of 25.
        let mut seen = Vec::new();
        let mut before = serde_json::Value::Null;
        loop {
            let v: serde_json::Value =
                api(serde_json::json!({"q": "LOVEL", "limit": 25, "before": before}))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            for h in v["items"].as_array().unwrap() {
                seen.push(h["contact_id"].as_str().unwrap().to_string());
            }
            before = v["next_before"].clone();
            if before.is_null() {
                break;
            }
        }
        assert_eq!(seen.len(), 59, "{seen:?}");
        assert!(!seen.contains(&"c07".to_string()));
        let v: serde_json::Value = api(serde_json::json!({"q": "ada7@example.org"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["items"].as_array().unwrap().len(), 0, "erased: {v}");
        // The API refuses a query in the URL, and a POST without the token.
        let r = http
            .get(format!("{base}/api/search?q=ada12"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
        let r = http
            .post(format!("{base}/api/search"))
            .json(&serde_json::json!({"q": "ada"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        // The page: the form posts; results escaped; a next-page form.
        let search_page = async |q: &str| {
            http.post(format!("{base}/search"))
                .form(&[("csrf", csrf.as_str()), ("q", q)])
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        };
        let page = search_page("lovelace").await;
        assert_eq!(
            page.matches("href=\"/contact/c").count(),
            PAGE_SIZE,
            "{page}"
        );
        assert!(page.contains("id=\"next-page\""), "{page}");
        let page = search_page("alert").await;
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(!page.contains("<script>"), "{page}");
        // A query in the URL of the page is ignored (an empty form).
        let page = http
            .get(format!("{base}/search?q=lovelace"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!page.contains("c12"), "{page}");
    }

    /// The overview shows, per store, the WAL its replication slot retains
    /// and what BigQuery billed (the daemon's live numbers).
    #[tokio::test]
    async fn the_overview_shows_retained_wal_and_bigquery_bytes_per_store() {
        use crate::metrics::{MetricsSnapshot, QueryCost, StoreSample};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = StateDb::open(&path).unwrap();
        let ops = OpsHandle::default();
        let mut supabase = StoreSample::new("supabase", Some(10));
        supabase.retained_wal_bytes = Some(3 * 1024 * 1024);
        let samples = [StoreSample::new("canonical", Some(10)), supabase];
        ops.update(
            MetricsSnapshot::from_state(&db, &samples, contact_sync_core::model::now()).unwrap(),
        );
        ops.add_query_cost(
            "canonical",
            QueryCost {
                queries: 4,
                bytes_processed: 2048,
                bytes_billed: 20 * 1024 * 1024,
            },
        );
        let (c, _rx) = Console::new(
            ConsoleConfig {
                state: StateTarget::Path(path),
                stores: vec!["canonical".into(), "supabase".into()],
                token: None,
                allow_remote: false,
            },
            ops.clone(),
        )
        .unwrap();
        let server = crate::serve(&crate::ServerConfig::loopback(0), ops, router(c))
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addr());
        let page = reqwest::get(format!("{base}/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let row = |store: &str| {
            let start = page.find(&format!("data-store=\"{store}\"")).unwrap();
            let end = page[start..].find("</tr>").unwrap() + start;
            page[start..end].to_string()
        };
        assert!(
            page.contains("http-equiv=\"refresh\""),
            "the overview refreshes itself"
        );
        let canonical = row("canonical");
        assert!(canonical.contains("20.0 MiB"), "{canonical}");
        assert!(
            canonical.contains("2.0 KiB processed, 4 queries"),
            "{canonical}"
        );
        let supabase = row("supabase");
        assert!(supabase.contains("3.0 MiB"), "{supabase}");
        let v: serde_json::Value = reqwest::get(format!("{base}/api/overview"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stores = v["stores"].as_array().unwrap();
        let canonical = stores.iter().find(|s| s["store"] == "canonical").unwrap();
        assert_eq!(canonical["query_cost"]["bytes_billed"], 20 * 1024 * 1024);
        let supabase = stores.iter().find(|s| s["store"] == "supabase").unwrap();
        assert_eq!(supabase["retained_wal_bytes"], 3 * 1024 * 1024);
    }

    /// A conflict the merge settled by rule is listed (not as open) with
    /// the rule, who sent the incoming side and when; an open one has the
    /// buttons.
    #[tokio::test]
    async fn auto_settled_conflicts_show_the_rule_that_decided() {
        use contact_sync_core::{FieldConflict, Resolution};
        let (dir, _server, base) = start(None).await;
        {
            let mut db = StateDb::open(&dir.path().join("state.db")).unwrap();
            let tx = db.tx().unwrap();
            let f = |resolution| FieldConflict {
                field: "job_title".into(),
                base: serde_json::json!("Engineer"),
                canonical: serde_json::json!("Senior Engineer"),
                incoming: serde_json::json!("Staff Engineer"),
                canonical_version: 3,
                incoming_version: 4,
                resolution,
            };
            let at = contact_sync_core::model::parse_ts("2026-03-04T05:06:07Z").unwrap();
            tx.add_conflict("c1", "twenty", &f(Resolution::IncomingByVersion), at)
                .unwrap();
            tx.add_conflict("c2", "local", &f(Resolution::Open), at)
                .unwrap();
            tx.commit().unwrap();
        }
        let get = |path: &str| {
            let url = format!("{base}{path}");
            async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
        };
        let open = get("/conflicts").await;
        assert!(open.contains("id=\"conflict-2\""), "{open}");
        assert!(!open.contains("id=\"conflict-1\""), "{open}");
        let all = get("/conflicts?all=1").await;
        let start = all.find("id=\"conflict-1\"").expect("the settled one");
        let row = &all[start..start + all[start..].find("</tr>").unwrap()];
        for want in [
            "incoming_by_version",
            "kept_incoming",
            "Senior Engineer",
            "Staff Engineer",
            "Engineer",
            "twenty v4",
            "canonical v3",
            "2026-03-04T05:06:07",
        ] {
            assert!(row.contains(want), "{want} missing: {row}");
        }
        assert!(
            !row.contains("keep-incoming-1"),
            "no buttons on a settled one: {row}"
        );
        assert!(all.contains("id=\"keep-incoming-2\""));
    }

    /// The contact view: one contact as every store holds it, side by side,
    /// the differing field highlighted, and its journal (who changed which
    /// field from what to what).
    #[tokio::test]
    async fn the_contact_view_highlights_differences_and_shows_the_journal() {
        use contact_sync_core::journal::{FieldChange, Op};
        use contact_sync_core::{Contact, JournalEntry};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut canonical = Contact::new("c1", "Ada Lovelace");
        canonical.version = 2;
        canonical.job_title = Some("Analyst".into());
        {
            let mut db = StateDb::open(&path).unwrap();
            let tx = db.tx().unwrap();
            tx.append_journal(&JournalEntry {
                seq: 0,
                contact_id: "c1".into(),
                version: 2,
                prev_version: 1,
                op: Op::Upsert,
                origin: "twenty".into(),
                changes: vec![FieldChange {
                    field: "job_title".into(),
                    old: serde_json::json!("Engineer"),
                    new: serde_json::json!("Analyst"),
                }],
                conflicts: vec![],
                hash: "h".into(),
                after: canonical.clone(),
                at: contact_sync_core::model::now(),
            })
            .unwrap();
            tx.commit().unwrap();
        }
        let (c, mut rx) = Console::new(
            ConsoleConfig {
                state: StateTarget::Path(path),
                stores: vec!["canonical".into(), "local".into()],
                token: None,
                allow_remote: false,
            },
            OpsHandle::default(),
        )
        .unwrap();
        let mut stale = canonical.clone();
        stale.job_title = Some("Engineer".into());
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                if let ConsoleRequest::ReadContact { reply, .. } = req {
                    let _ = reply.send(vec![
                        StoreRead {
                            store: "canonical".into(),
                            record: Some(canonical.clone()),
                            error: None,
                        },
                        StoreRead {
                            store: "local".into(),
                            record: Some(stale.clone()),
                            error: None,
                        },
                    ]);
                }
            }
        });
        let server = crate::serve(
            &crate::ServerConfig::loopback(0),
            OpsHandle::default(),
            router(c),
        )
        .await
        .unwrap();
        let page = reqwest::get(format!("http://{}/contact/c1", server.local_addr()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let row = |table: &str, th: &str| {
            let t = page.find(&format!("id=\"{table}\"")).unwrap();
            let start = page[t..].find(&format!("<th>{th}</th>")).unwrap() + t;
            let end = page[start..].find("</tr>").unwrap() + start;
            page[start..end].to_string()
        };
        let title = row("side-by-side", "job_title");
        assert!(
            title.contains("<td><pre>Analyst</pre></td>")
                && title.contains("<td class=\"diff\"><pre>Engineer</pre></td>"),
            "{title}"
        );
        let name = row("side-by-side", "canonical_name");
        assert!(!name.contains("diff"), "{name}");
        let j = page.find("id=\"journal\"").unwrap();
        let journal = &page[j..];
        for want in ["twenty", "1 → 2", "job_title", "Engineer", "Analyst"] {
            assert!(journal.contains(want), "{want}: {journal}");
        }
    }

    const XSS_NAME: &str = "<script>alert(1)</script>";

    #[test]
    fn remote_access_needs_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let err = Console::new(
            ConsoleConfig {
                state: StateTarget::Path(dir.path().join("state.db")),
                stores: vec![],
                token: None,
                allow_remote: true,
            },
            OpsHandle::default(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("needs a console token"), "{err}");
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
