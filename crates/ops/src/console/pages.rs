//! The HTML pages. Every value goes through `maud`'s escaping (`(value)`
//! in a template); nothing is inserted with `PreEscaped` except fixed text
//! and the charts' SVG (which `plotters` escapes as it writes it).

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use contact_sync_core::model::format_ts;
use contact_sync_core::Timestamp;
use contact_sync_state::Decision;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;
use serde_json::Value;

use super::charts::{self, CHART_HOURS};
use super::data::{self, Refused};
use super::{same_secret, Console, PAGE_SIZE, SESSION_COOKIE};

/// Seconds between the overview's refreshes.
const REFRESH_SECS: u32 = 10;

const CSS: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center;flex-wrap:wrap}
header a{color:#cfe0ff;text-decoration:none}header b{color:#fff}
header form{margin-left:auto}
main{padding:1em 1.2em}
table{border-collapse:collapse;background:#fff;margin:.5em 0 1.2em;width:100%}
th,td{border:1px solid #dde1e7;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eef1f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176b2c;font-weight:600}.degraded{color:#8a5a00;font-weight:600}
.paused{color:#7a3fb0;font-weight:600}.failing,.unhealthy{color:#b0182a;font-weight:600}
.cards{display:flex;gap:1em;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dde1e7;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.6em}
.msg{background:#e7f5ea;border:1px solid #9bd3a8;padding:.5em 1em}
.err{background:#fbe9eb;border:1px solid #e59aa4;padding:.5em 1em}
pre{white-space:pre-wrap;word-break:break-word;margin:0}
.diff{background:#fff4cc}
button{cursor:pointer}
.charts{display:flex;gap:1em;flex-wrap:wrap}
figure{margin:0;background:#fff;border:1px solid #dde1e7}
.choice label{margin-right:1em}
"#;

fn layout(title: &str, console: &Console, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if refresh {
                    meta http-equiv="refresh" content=(REFRESH_SECS);
                }
                title { (title) " · contact-sync" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    b { "contact-sync" }
                    a href="/" { "Overview" }
                    a href="/conflicts" { "Conflicts" }
                    a href="/dead-letters" { "Dead letters" }
                    a href="/paused" { "Paused" }
                    form method="post" action="/search" {
                        input type="hidden" name="csrf" value=(console.inner.csrf);
                        input type="search" name="q" placeholder="id, name, email or phone" aria-label="search";
                        " " button type="submit" { "Search" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub(crate) fn page(title: &str, console: &Console, refresh: bool, body: Markup) -> Response {
    Html(layout(title, console, refresh, body).into_string()).into_response()
}

pub(crate) fn error_page(console: &Console, status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = page("Error", console, false, html! { p.err { (message) } });
    *r.status_mut() = code;
    r
}

pub(crate) fn ts(t: &Timestamp) -> String {
    format_ts(t)
}

fn unix_ts(secs: Option<i64>) -> String {
    secs.and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "never".into())
}

/// A JSON value for people: a string as itself, null as a dash, anything
/// else as compact JSON.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn bytes(n: Option<u64>) -> String {
    match n {
        None => "—".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        Some(b) if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) => format!("{b} B"),
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "—".into())
}

pub(crate) async fn overview(State(c): State<Console>) -> Response {
    let o = match data::overview(&c).await {
        Ok(o) => o,
        Err(e) => return error_page(&c, 500, &e),
    };
    let history = match data::history(&c, CHART_HOURS).await {
        Ok(h) => h,
        Err(e) => return error_page(&c, 500, &e),
    };
    let stores: Vec<String> = o.stores.iter().map(|s| s.metrics.store.clone()).collect();
    let charts = match charts::render(&history, &stores, &o.taken_at) {
        Ok(ch) => ch,
        Err(e) => return error_page(&c, 500, &e),
    };
    let body = html! {
        p { "Health: " span class=(o.health) { (o.health) } " · updated " (ts(&o.taken_at)) " · refreshes every " (REFRESH_SECS) " s" }
        div.cards {
            div.card { "Open conflicts" b #conflicts-open { a href="/conflicts" { (o.conflicts_open) } } }
            div.card { "Dead letters" b #dead-letters { a href="/dead-letters" { (o.dead_letters) } } }
            div.card { "Paused stores" b #paused-count { a href="/paused" { (o.paused) } } }
            div.card { "Journal head" b { (o.journal_head) } }
            div.card { "Cycles" b { (o.cycles_total) } "failed: " (o.cycle_failures_total) }
        }
        @if !o.leases.is_empty() {
            h2 { "Daemons" }
            table #leases {
                thead { tr {
                    th { "Work" } th { "Held by" } th { "Token" } th { "Since" } th { "Renewed" } th { "Expires" }
                } }
                tbody {
                    // A daemon's membership (`member:<holder>`) shows
                    // while it runs; the work's leases always.
                    @for l in o.leases.iter().filter(|l| l.live || !l.name.starts_with("member:")) {
                        tr {
                            td { @if l.name.starts_with("member:") { "daemon (member)" } @else { (l.name) } }
                            td {
                                @if l.live { (l.holder) " (" (l.info) ")" } @else { "nobody (last: " (l.holder) ")" }
                                @if o.this_daemon.as_ref().is_some_and(|d| d.holder == l.holder && l.live) { " · this daemon" }
                            }
                            td.num { (l.token) }
                            td { (l.acquired_at) } td { (l.heartbeat_at) } td { (l.expires_at) }
                        }
                    }
                }
            }
        }
        @if !o.alerts.is_empty() {
            h2 { "Alerts firing" }
            ul #alerts { @for a in &o.alerts { li.err { (a) } } }
        }
        h2 { "Stores" }
        table #stores {
            thead { tr {
                th { "Store" } th { "Status" } th { "Contacts" } th { "Pending" } th { "Lag" }
                th { "Last success" } th { "Errors" } th { "Drift %" } th { "Retained WAL" } th { "BigQuery billed" }
                th { "Captured" } th { "Merged" } th { "Written" }
            } }
            tbody {
                @for s in &o.stores {
                    @let m = &s.metrics;
                    tr data-store=(m.store) {
                        td { b { (m.store) } }
                        td {
                            span class=(s.state.as_str()) { (s.state.as_str()) }
                            @for w in &s.why { br; small { (w) } }
                        }
                        td.num { (opt(m.contacts)) }
                        td.num { (m.pending) }
                        td.num { (m.lag_seconds.map(|l| format!("{l:.0} s")).unwrap_or_else(|| "—".into())) }
                        td { (unix_ts(m.last_success_unix)) }
                        td.num { (m.consecutive_errors) " in a row / " (m.errors_total) " here" }
                        td.num { (m.drift_pct.map(|d| format!("{d:.2}")).unwrap_or_else(|| "—".into())) }
                        td.num.wal { (bytes(m.retained_wal_bytes)) }
                        td.num.billed {
                            @match &m.query_cost {
                                None => "—",
                                Some(q) => {
                                    (bytes(Some(q.bytes_billed)))
                                    br; small { (bytes(Some(q.bytes_processed))) " processed, " (q.queries) " queries" }
                                }
                            }
                        }
                        td.num { (m.captured_total) }
                        td.num { (m.merged_total) }
                        td.num { (m.written_total) }
                    }
                }
            }
        }
        h2 { "Last " (CHART_HOURS) " hours" }
        @if charts.empty { p #no-history { "No cycle recorded in the last " (CHART_HOURS) " hours." } }
        div.charts {
            // plotters' SVG: every text and attribute in it is escaped.
            figure #chart-changes { (PreEscaped(&charts.changes_svg)) }
            figure #chart-lag { (PreEscaped(&charts.lag_svg)) }
        }
        h2 { "Last cycle" }
        @match &o.last_cycle {
            None => p { "No cycle has finished in this process yet." },
            Some(cy) => p {
                (ts(&cy.finished_at)) " · " (format!("{:.2}", cy.duration_secs)) " s · "
                @match &cy.error {
                    None => span.ok { "completed" },
                    Some(e) => span.failing { "failed: " (e) },
                }
                @if !cy.failed_stores.is_empty() { " · stores with errors: " (cy.failed_stores.join(", ")) }
            },
        }
    };
    page("Overview", &c, true, body)
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct ListQuery {
    pub before: Option<i64>,
    #[serde(default)]
    pub all: Option<String>,
    pub settled: Option<i64>,
    pub decided: Option<String>,
}

impl ListQuery {
    fn all(&self) -> bool {
        matches!(self.all.as_deref(), Some("1" | "true" | "yes"))
    }
}

pub(crate) fn csrf_field(c: &Console) -> Markup {
    html! { input type="hidden" name="csrf" value=(c.inner.csrf); }
}

pub(crate) async fn conflicts(State(c): State<Console>, Query(q): Query<ListQuery>) -> Response {
    let all = q.all();
    let p = match data::conflicts(&c, all, q.before, PAGE_SIZE).await {
        Ok(p) => p,
        Err(e) => return error_page(&c, 500, &e),
    };
    let body = html! {
        @if let Some(id) = q.settled { p.msg #flash { "Conflict " (id) " settled." } }
        p {
            @if all { "All conflicts (settled ones with the rule that decided). " a href="/conflicts" { "Open only" } }
            @else { "Open conflicts: a person decides. " a href="/conflicts?all=1" { "All, with the ones settled by rule" } }
        }
        @if p.items.is_empty() { p #empty { "No " @if !all { "open " } "conflicts." } }
        @else {
            table #conflicts {
                thead { tr {
                    th { "#" } th { "Contact" } th { "Field" } th { "Base" } th { "Canonical" }
                    th { "Incoming" } th { "Rule / status" } th { "Created" } th { "Settle" }
                } }
                tbody {
                    @for r in &p.items {
                        @let f = &r.conflict;
                        tr id=(format!("conflict-{}", r.id)) {
                            td { (r.id) }
                            td { a href=(format!("/contact/{}", r.contact_id)) { (r.contact_id) } }
                            td { (f.field) }
                            td { pre { (show(&f.base)) } }
                            td.diff { pre.canonical { (show(&f.canonical)) } small { "canonical v" (f.canonical_version) } }
                            td.diff { pre.incoming { (show(&f.incoming)) } small { (r.store) " v" (f.incoming_version) } }
                            td { (f.resolution.as_str()) br; small { (r.status) @if let Some(t) = &r.resolved_at { " " (ts(t)) } } }
                            td { (ts(&r.created_at)) }
                            td {
                                @if r.status == "open" {
                                    form method="post" action=(format!("/conflicts/{}/resolve", r.id)) {
                                        (csrf_field(&c))
                                        button type="submit" name="keep" value="canonical" id=(format!("keep-canonical-{}", r.id)) { "Keep canonical" }
                                        " "
                                        button type="submit" name="keep" value="incoming" id=(format!("keep-incoming-{}", r.id)) { "Keep incoming" }
                                    }
                                    a.per-field href=(format!("/contact/{}/conflicts", url_component(&r.contact_id))) { "Choose per field…" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(b) = p.next_before {
            a #next href=(format!("/conflicts?before={b}{}", if all { "&all=1" } else { "" })) { "Older →" }
        }
    };
    page("Conflicts", &c, false, body)
}

#[derive(Debug, Deserialize)]
pub(crate) struct ResolveForm {
    csrf: String,
    keep: String,
}

pub(crate) fn csrf_ok(c: &Console, token: &str) -> bool {
    same_secret(token, &c.inner.csrf)
}

/// A posted form's CSRF token checked (in constant time): the 403 page
/// to answer when it is missing or stale, `None` when it is right.
pub(crate) fn stale_form(c: &Console, token: &str) -> Option<Response> {
    (!csrf_ok(c, token)).then(|| {
        error_page(
            c,
            403,
            "the form's CSRF token is missing or stale: reload the page",
        )
    })
}

/// `keep` of a conflict settlement: `Some(true)` for incoming,
/// `Some(false)` for canonical, `None` for anything else.
pub(crate) fn keep_incoming(keep: &str) -> Option<bool> {
    match keep {
        "incoming" => Some(true),
        "canonical" => Some(false),
        _ => None,
    }
}

pub(crate) fn refused(c: &Console, r: Refused) -> Response {
    error_page(c, r.0, &r.1)
}

pub(crate) async fn resolve(
    State(c): State<Console>,
    Path(id): Path<i64>,
    Form(f): Form<ResolveForm>,
) -> Response {
    if let Some(r) = stale_form(&c, &f.csrf) {
        return r;
    }
    let Some(keep_incoming) = keep_incoming(&f.keep) else {
        return error_page(&c, 400, "keep must be canonical or incoming");
    };
    match data::resolve(&c, id, keep_incoming).await {
        Ok(_) => Redirect::to(&format!("/conflicts?settled={id}")).into_response(),
        Err(r) => refused(&c, r),
    }
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct DeadLettersQuery {
    before: Option<i64>,
    closed: Option<i64>,
    how: Option<String>,
}

pub(crate) async fn dead_letters(
    State(c): State<Console>,
    Query(q): Query<DeadLettersQuery>,
) -> Response {
    let p = match data::dead_letters(&c, q.before, PAGE_SIZE).await {
        Ok(p) => p,
        Err(e) => return error_page(&c, 500, &e),
    };
    let body = html! {
        @if let Some(id) = q.closed {
            p.msg #flash {
                "Dead letter " (id) " "
                @match q.how.as_deref() {
                    Some("retried") => "retried: the next cycle writes canonical's record to the store again, on condition of what it last saw there (a record that differs there is read and merged; still refused: a new dead letter).",
                    Some("reread") => "retried: the record is read again when it changes in its store.",
                    _ => "dismissed (the same refusal later is counted on it, not reopened).",
                }
            }
        }
        @if p.items.is_empty() { p #empty { "No dead letters." } }
        @else {
            table #dead-letters {
                thead { tr { th { "#" } th { "When" } th { "Store" } th { "Record" } th { "Field" } th { "Reason" } th { "Payload" } th { "Status" } th { "Act" } } }
                tbody {
                    @for row in &p.items {
                        @let d = &row.letter;
                        tr id=(format!("dead-letter-{}", d.id)) {
                            td { (d.id) }
                            td { (ts(&d.at)) @if row.count > 1 { br; small { "seen " (row.count) " times, last " (ts(&row.last_seen)) } } }
                            td { (d.store) }
                            td { (d.record) }
                            td { (d.field) }
                            td { pre { (d.reason) } }
                            td { @if let Some(pl) = &d.payload { details { summary { "record as received" } pre { (serde_json::to_string_pretty(pl).unwrap_or_default()) } } } }
                            td.status { (row.status.as_str()) @if let Some(t) = &row.closed_at { br; small { (ts(t)) } } }
                            td {
                                @if row.status == contact_sync_state::DeadLetterStatus::Open {
                                    form method="post" action=(format!("/dead-letters/{}/close", d.id)) {
                                        (csrf_field(&c))
                                        button type="submit" name="do" value="retry" id=(format!("retry-{}", d.id)) title="write canonical's record to the store again, or read the store's record again" { "Retry" }
                                        " "
                                        button type="submit" name="do" value="dismiss" id=(format!("dismiss-{}", d.id)) title="leave it; the same refusal later is counted here" { "Dismiss" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(b) = p.next_before { a #next href=(format!("/dead-letters?before={b}")) { "Older →" } }
    };
    page("Dead letters", &c, false, body)
}

#[derive(Debug, Deserialize)]
pub(crate) struct CloseForm {
    csrf: String,
    #[serde(rename = "do")]
    action: String,
}

/// `POST /dead-letters/{id}/close` (`do` = `retry` or `dismiss`).
pub(crate) async fn close_dead_letter(
    State(c): State<Console>,
    Path(id): Path<i64>,
    Form(f): Form<CloseForm>,
) -> Response {
    if let Some(r) = stale_form(&c, &f.csrf) {
        return r;
    }
    let retry = match f.action.as_str() {
        "retry" => true,
        "dismiss" => false,
        _ => return error_page(&c, 400, "do must be retry or dismiss"),
    };
    match data::close_dead_letter(&c, id, retry).await {
        Ok(a) => Redirect::to(&format!(
            "/dead-letters?closed={id}&how={}",
            match (retry, a.owed) {
                (true, true) => "retried",
                (true, false) => "reread",
                (false, _) => "dismissed",
            }
        ))
        .into_response(),
        Err(r) => refused(&c, r),
    }
}

pub(crate) async fn paused(State(c): State<Console>, Query(q): Query<ListQuery>) -> Response {
    let list = match data::paused(&c).await {
        Ok(p) => p,
        Err(e) => return error_page(&c, 500, &e),
    };
    let body = html! {
        @if let Some(s) = &q.decided { p.msg #flash { "Decision about " (s) " recorded; the daemon carries it out at its next cycle." } }
        @if list.is_empty() { p #empty { "No store is paused." } }
        @for p in &list {
            section id=(format!("paused-{}", p.store)) {
                h2 { (p.store) " " span.paused { (p.label()) } }
                p { "Paused since " (ts(&p.since)) ": " (p.reason) }
                h3 { "Held back" }
                pre.details { (serde_json::to_string_pretty(&p.details).unwrap_or_default()) }
                @match p.decision {
                    Some(d) => p.msg { "Decided: " b.decision { (d.as_str()) } @if let Some(t) = &p.decided_at { " at " (ts(t)) } " — carried out at the daemon's next cycle." },
                    None => form method="post" action=(format!("/paused/{}/decide", p.store)) {
                        (csrf_field(&c))
                        @match p.kind {
                            contact_sync_state::PauseKind::MassChange => {
                                button type="submit" name="decision" value="approve" id=(format!("approve-{}", p.store)) { "Approve: apply the held changes" }
                                " "
                                button type="submit" name="decision" value="reject" id=(format!("reject-{}", p.store)) { "Reject: write canonical back" }
                            }
                            contact_sync_state::PauseKind::Schema => {
                                button type="submit" name="decision" value="resume" id=(format!("resume-{}", p.store)) { "Resume (once fixed)" }
                            }
                        }
                    },
                }
            }
        }
    };
    page("Paused stores", &c, false, body)
}

#[derive(Debug, Deserialize)]
pub(crate) struct DecideForm {
    csrf: String,
    decision: String,
}

pub(crate) fn parse_decision(s: &str) -> Option<Decision> {
    match s {
        "approve" => Some(Decision::Approve),
        "reject" => Some(Decision::Reject),
        "resume" => Some(Decision::Resume),
        _ => None,
    }
}

pub(crate) async fn decide(
    State(c): State<Console>,
    Path(store): Path<String>,
    Form(f): Form<DecideForm>,
) -> Response {
    if let Some(r) = stale_form(&c, &f.csrf) {
        return r;
    }
    let Some(decision) = parse_decision(&f.decision) else {
        return error_page(&c, 400, "decision must be approve, reject or resume");
    };
    match data::decide(&c, store.clone(), decision).await {
        Ok(_) => {
            Redirect::to(&format!("/paused?decided={}", url_component(&store))).into_response()
        }
        Err(r) => refused(&c, r),
    }
}

/// Percent-encodes everything but unreserved characters.
pub(crate) fn url_component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical record's fields that have a value, in model order.
fn fields(c: &contact_sync_core::Contact) -> Vec<(String, Value)> {
    match serde_json::to_value(c) {
        Ok(Value::Object(m)) => m
            .into_iter()
            .filter(|(_, v)| {
                !v.is_null()
                    && v.as_array().is_none_or(|a| !a.is_empty())
                    && v.as_object().is_none_or(|o| !o.is_empty())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// One store's column: its name, its fields (none: not there), the error.
type StoreColumn<'a> = (
    &'a str,
    Option<std::collections::BTreeMap<String, Value>>,
    Option<&'a str>,
);

/// Rows: every field any store holds; columns: the stores. A cell that
/// differs from canonical's is highlighted.
fn side_by_side(live: &[super::StoreRead]) -> Markup {
    let per_store: Vec<StoreColumn<'_>> = live
        .iter()
        .map(|r| {
            (
                r.store.as_str(),
                r.record.as_ref().map(|c| fields(c).into_iter().collect()),
                r.error.as_deref(),
            )
        })
        .collect();
    let mut names: Vec<String> = Vec::new();
    for (_, f, _) in &per_store {
        for k in f.iter().flat_map(|m| m.keys()) {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let reference = per_store.first().and_then(|(_, f, _)| f.as_ref());
    html! {
        table #side-by-side {
            thead { tr { th { "Field" } @for (s, _, _) in &per_store { th { (s) } } } }
            tbody {
                tr { th { "(record)" } @for (_, f, e) in &per_store { td {
                    @if let Some(e) = e { span.failing { "cannot read: " (e) } }
                    @else if f.is_none() { "not in this store" } @else { "present" }
                } } }
                @for k in &names {
                    tr {
                        th { (k) }
                        @for (_, f, _) in &per_store {
                            @let v = f.as_ref().and_then(|m| m.get(k));
                            @let differs = f.is_some() && v != reference.and_then(|r| r.get(k));
                            td class=[differs.then_some("diff")] { pre { (v.map(show).unwrap_or_else(|| "—".into())) } }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) async fn contact(State(c): State<Console>, Path(id): Path<String>) -> Response {
    let view = match data::contact(&c, id).await {
        Ok(Some(v)) => v,
        Ok(None) => return error_page(&c, 404, "no contact with that id in the state database"),
        Err(e) => return error_page(&c, 500, &e),
    };
    let body = html! {
        p { "Contact " code #contact-id { (view.contact_id) } }
        h2 { "In every store, side by side" }
        @match &view.live {
            None => p.err { "The daemon was busy too long to read the stores; reload to try again." },
            Some(live) => (side_by_side(live)),
        }
        h2 { "Canonical as last journaled" }
        @match &view.canonical {
            None => p { "Not in the journal (never changed since the initial sync)." },
            Some(e) => {
                p { "Version " (e.version) " as of journal entry " (e.seq) " (" (ts(&e.at)) ", from " (e.origin) ")" }
                table #canonical {
                    @for (k, v) in fields(&e.after) {
                        tr { th { (k) } td { pre { (show(&v)) } } }
                    }
                }
            }
        }
        h2 { "In each store" }
        table #store-records {
            thead { tr { th { "Store" } th { "Native id" } th { "Agreed version" } th { "Content hash" } th { "Deleted" } th { "Owed a write" } } }
            tbody {
                @for r in &view.stores {
                    @let behind = view.canonical.as_ref().is_some_and(|e| e.version != r.synced_version);
                    tr class=[behind.then_some("diff")] {
                        td { (r.store) } td { (opt(r.native_id.as_ref())) } td { (r.synced_version) }
                        td { code { (r.hash.get(..12).unwrap_or(&r.hash)) } } td { (r.deleted) } td { (r.needs_write) }
                    }
                }
            }
        }
        h2 { "Journal (audit trail, newest first)" }
        table #journal {
            thead { tr { th { "Seq" } th { "When" } th { "Who" } th { "Op" } th { "Version" } th { "Changes" } } }
            tbody {
                @for e in &view.journal {
                    tr {
                        td { (e.seq) } td { (ts(&e.at)) } td { (e.origin) } td { (format!("{:?}", e.op).to_lowercase()) }
                        td { (e.prev_version) " → " (e.version) }
                        td {
                            @for ch in &e.changes {
                                div { b { (ch.field) } ": " span.old { (show(&ch.old)) } " → " span.new { (show(&ch.new)) } }
                            }
                            @for cf in &e.conflicts {
                                div.diff { "conflict on " b { (cf.field) } ": " (cf.resolution.as_str()) }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Contact", &c, false, body)
}

#[derive(Debug, Deserialize)]
pub(crate) struct SearchForm {
    csrf: String,
    #[serde(default)]
    q: String,
    /// The next page: the previous page's `next_before`.
    before: Option<i64>,
}

async fn search_page(c: Console, q: String, before: Option<i64>) -> Response {
    let found = if q.trim().is_empty() {
        None
    } else {
        match data::search(&c, q.clone(), before, PAGE_SIZE).await {
            Ok(h) => Some(h),
            Err(e) => return error_page(&c, 500, &e),
        }
    };
    let body = html! {
        form method="post" action="/search" {
            (csrf_field(&c))
            input type="search" name="q" value=(q) aria-label="search" placeholder="id, name, email or phone";
            " " button type="submit" { "Search" }
        }
        p { "By contact id or a store's id (exact), or by words of a name or an email address (each word the start of one: "
            code { "love" } " finds Lovelace, " code { "ada@exa" } " finds ada@example.com), or by a phone number's leading digits." }
        @if let Some(found) = &found {
            @if found.index_filling {
                p.err #index-filling { "The search index is still being filled from canonical: some contacts may be missing." }
            }
            @if found.page.items.is_empty() && found.page.next_before.is_none() { p #empty { "Nothing found." } }
            @if found.page.items.is_empty() && found.page.next_before.is_some() {
                p #none-yet { "Nothing found in this part of the index (a search looks at 20,000 candidates at a time)." }
            }
            @if !found.page.items.is_empty() {
                table #results {
                    thead { tr { th { "Contact" } th { "Name" } th { "Emails" } th { "Version" } th { "Matched" } } }
                    tbody {
                        @for h in &found.page.items {
                            tr {
                                td { a href=(format!("/contact/{}", h.contact_id)) { (h.contact_id) } }
                                td.name { (h.name) @if h.deleted { " (deleted)" } }
                                td { (h.emails.join(", ")) }
                                td { (h.version) }
                                td { (h.matched) }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = found.page.next_before {
                form method="post" action="/search" #next-page {
                    (csrf_field(&c))
                    input type="hidden" name="q" value=(q);
                    input type="hidden" name="before" value=(next);
                    button type="submit" { "Next page" }
                }
            }
        }
    };
    page("Search", &c, false, body)
}

/// `GET /search`: the empty form (a query in the URL is ignored: the form
/// posts it, so it stays out of URLs, browser history and logs).
pub(crate) async fn search_get(State(c): State<Console>) -> Response {
    search_page(c, String::new(), None).await
}

pub(crate) async fn search_post(State(c): State<Console>, Form(f): Form<SearchForm>) -> Response {
    if let Some(r) = stale_form(&c, &f.csrf) {
        return r;
    }
    search_page(c, f.q, f.before).await
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

pub(crate) fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Sign in · contact-sync" } style { (PreEscaped(CSS)) } }
            body { main {
                h1 { "contact-sync console" }
                @if let Some(m) = message { p.err { (m) } }
                form method="post" action="/login" {
                    label { "Console token " input type="password" name="token" autocomplete="current-password"; }
                    " " button type="submit" { "Sign in" }
                }
            } }
        }
    };
    (status, Html(body.into_string())).into_response()
}

pub(crate) async fn login(State(c): State<Console>, Form(f): Form<LoginForm>) -> Response {
    let Some(token) = &c.inner.token else {
        return Redirect::to("/").into_response();
    };
    if !same_secret(&f.token, token) {
        return login_page(StatusCode::UNAUTHORIZED, Some("wrong token"));
    }
    let cookie = format!("{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/".to_string()),
        ],
    )
        .into_response()
}
