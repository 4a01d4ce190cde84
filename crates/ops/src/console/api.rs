//! The JSON API: the pages' data and actions. Actions are POSTs with a
//! JSON body and the `X-CSRF-Token` header (from `GET /api/session`).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::data::{self, Refused};
use super::pages::parse_decision;
use super::{same_secret, Console, MAX_PAGE_SIZE, PAGE_SIZE};

/// The header API actions carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

pub(crate) fn error(status: u16, message: impl Into<String>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(json!({ "error": message.into() }))).into_response()
}

fn ok<T: serde::Serialize>(v: Result<T, String>) -> Response {
    match v {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(500, e),
    }
}

pub(crate) fn csrf_ok(c: &Console, headers: &HeaderMap) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| same_secret(t, &c.inner.csrf))
}

pub(crate) const CSRF_MISSING: &str =
    "the X-CSRF-Token header is missing or wrong (GET /api/session gives it)";

pub(crate) async fn overview(State(c): State<Console>) -> Response {
    ok(data::overview(&c).await)
}

pub(crate) async fn session(State(c): State<Console>) -> Response {
    Json(json!({ "csrf_token": c.inner.csrf })).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    before: Option<i64>,
    limit: Option<usize>,
    #[serde(default)]
    all: bool,
}

impl PageQuery {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(PAGE_SIZE).clamp(1, MAX_PAGE_SIZE)
    }
}

pub(crate) async fn conflicts(State(c): State<Console>, Query(q): Query<PageQuery>) -> Response {
    ok(data::conflicts(&c, q.all, q.before, q.limit()).await)
}

pub(crate) async fn dead_letters(State(c): State<Console>, Query(q): Query<PageQuery>) -> Response {
    ok(data::dead_letters(&c, q.before, q.limit()).await)
}

pub(crate) async fn paused(State(c): State<Console>) -> Response {
    ok(data::paused(&c).await)
}

pub(crate) async fn contact(State(c): State<Console>, Path(id): Path<String>) -> Response {
    match data::contact(&c, id).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(404, "no contact with that id in the state database"),
        Err(e) => error(500, e),
    }
}

/// The body of `POST /api/search` (the query is personal data: never in a
/// URL).
#[derive(Debug, Deserialize)]
pub(crate) struct SearchBody {
    #[serde(default)]
    q: String,
    /// The previous page's `next_before`.
    before: Option<i64>,
    limit: Option<usize>,
}

/// `POST /api/search` with `{"q": ..., "before": ..., "limit": ...}` and
/// the CSRF header.
pub(crate) async fn search(
    State(c): State<Console>,
    headers: HeaderMap,
    Json(b): Json<SearchBody>,
) -> Response {
    if !csrf_ok(&c, &headers) {
        return error(403, CSRF_MISSING);
    }
    let limit = b.limit.unwrap_or(PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
    ok(data::search(&c, b.q, b.before, limit).await)
}

/// `GET /api/search`: refused, so a query never lands in a URL or a log.
pub(crate) async fn search_get() -> Response {
    error(
        405,
        "use POST /api/search with a JSON body {\"q\": ...} and the X-CSRF-Token header (a query is personal data: it does not belong in a URL)",
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct ResolveBody {
    /// `canonical` or `incoming`.
    keep: String,
}

fn refused(r: Refused) -> Response {
    error(r.0, r.1)
}

pub(crate) async fn resolve(
    State(c): State<Console>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Json(b): Json<ResolveBody>,
) -> Response {
    if !csrf_ok(&c, &headers) {
        return error(403, CSRF_MISSING);
    }
    let Some(keep_incoming) = super::pages::keep_incoming(&b.keep) else {
        return error(400, "keep must be \"canonical\" or \"incoming\"");
    };
    match data::resolve(&c, id, keep_incoming).await {
        Ok(m) => Json(json!({ "ok": true, "message": m })).into_response(),
        Err(r) => refused(r),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct DecideBody {
    /// `approve`, `reject` or `resume`.
    decision: String,
}

pub(crate) async fn decide(
    State(c): State<Console>,
    Path(store): Path<String>,
    headers: HeaderMap,
    Json(b): Json<DecideBody>,
) -> Response {
    if !csrf_ok(&c, &headers) {
        return error(403, CSRF_MISSING);
    }
    let Some(decision) = parse_decision(&b.decision) else {
        return error(
            400,
            "decision must be \"approve\", \"reject\" or \"resume\"",
        );
    };
    match data::decide(&c, store, decision).await {
        Ok(m) => Json(json!({ "ok": true, "message": m })).into_response(),
        Err(r) => refused(r),
    }
}

/// `POST /api/dead-letters/{id}/retry` and `.../dismiss` (no body).
pub(crate) async fn close_dead_letter(
    State(c): State<Console>,
    Path((id, action)): Path<(i64, String)>,
    headers: HeaderMap,
) -> Response {
    if !csrf_ok(&c, &headers) {
        return error(403, CSRF_MISSING);
    }
    let retry = match action.as_str() {
        "retry" => true,
        "dismiss" => false,
        _ => {
            return error(
                404,
                "use /api/dead-letters/{id}/retry or /api/dead-letters/{id}/dismiss",
            )
        }
    };
    match data::close_dead_letter(&c, id, retry).await {
        Ok(a) => Json(a).into_response(),
        Err(r) => refused(r),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    hours: Option<i64>,
}

/// `GET /api/history?hours=N` (default 24, at most the history kept): the
/// run history per store and 5-minute bucket, oldest first.
pub(crate) async fn history(State(c): State<Console>, Query(q): Query<HistoryQuery>) -> Response {
    let hours = q
        .hours
        .unwrap_or(super::charts::CHART_HOURS)
        .clamp(1, contact_sync_state::HISTORY_DAYS * 24);
    ok(data::history(&c, hours).await)
}
