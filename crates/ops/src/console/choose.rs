//! The per-field choice: a contact with several open conflicts, one radio
//! per conflict (canonical or incoming), submitted once. Each choice is
//! settled through the daemon's loop by the engine's `resolve_conflict`,
//! the code `contact-sync conflicts resolve` runs (see
//! [`super::data::resolve_fields`]).
//!
//! `GET /contact/{id}/conflicts` shows the form; `POST` the same path takes
//! `csrf` and `c<conflict id>=canonical|incoming` (a conflict left without
//! a choice stays open). API: `POST /api/contact/{id}/conflicts/resolve`
//! with `{"choices": [{"conflict": 7, "keep": "incoming"}, ...]}`.

use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use maud::html;
use serde::Deserialize;
use serde_json::json;

use super::data;
use super::pages::{
    csrf_field, error_page, keep_incoming, page, refused, show, stale_form, ts, url_component,
};
use super::Console;

pub(crate) async fn form(State(c): State<Console>, Path(id): Path<String>) -> Response {
    let open = match data::open_conflicts_of(&c, id.clone()).await {
        Ok(o) => o,
        Err(e) => return error_page(&c, 500, &e),
    };
    let body = html! {
        p { "Contact " a href=(format!("/contact/{}", url_component(&id))) { (id) } ": pick the value to keep for each field, then settle them all at once. A field left without a choice stays open." }
        @if open.is_empty() { p #empty { "This contact has no open conflicts." } }
        @else {
            form #per-field method="post" action=(format!("/contact/{}/conflicts", url_component(&id))) {
                (csrf_field(&c))
                table #field-conflicts {
                    thead { tr { th { "#" } th { "Field" } th { "Base" } th { "Canonical" } th { "Incoming" } th { "Created" } th { "Keep" } } }
                    tbody {
                        @for r in &open {
                            @let f = &r.conflict;
                            @let name = format!("c{}", r.id);
                            tr id=(format!("field-conflict-{}", r.id)) {
                                td { (r.id) }
                                td { b { (f.field) } }
                                td { pre { (show(&f.base)) } }
                                td.diff { pre.canonical { (show(&f.canonical)) } small { "canonical v" (f.canonical_version) } }
                                td.diff { pre.incoming { (show(&f.incoming)) } small { (r.store) " v" (f.incoming_version) } }
                                td { (ts(&r.created_at)) }
                                td.choice {
                                    label { input type="radio" name=(name) value="canonical" id=(format!("choose-canonical-{}", r.id)); " canonical" }
                                    label { input type="radio" name=(name) value="incoming" id=(format!("choose-incoming-{}", r.id)); " incoming" }
                                }
                            }
                        }
                    }
                }
                button type="submit" #settle-fields { "Settle the chosen fields" }
            }
        }
    };
    page("Conflicts of one contact", &c, false, body)
}

/// The choices in a submitted form: `c<id>` → keep incoming?
fn choices(fields: &[(String, String)]) -> Result<Vec<(i64, bool)>, String> {
    let mut out = Vec::new();
    for (k, v) in fields {
        let Some(id) = k.strip_prefix('c').and_then(|n| n.parse::<i64>().ok()) else {
            continue;
        };
        let Some(keep_incoming) = keep_incoming(v) else {
            return Err(format!("conflict {id}: keep must be canonical or incoming"));
        };
        if out.iter().any(|(i, _)| *i == id) {
            return Err(format!("conflict {id} is chosen twice"));
        }
        out.push((id, keep_incoming));
    }
    Ok(out)
}

pub(crate) async fn submit(
    State(c): State<Console>,
    Path(id): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let token = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map_or("", |(_, v)| v.as_str());
    if let Some(r) = stale_form(&c, token) {
        return r;
    }
    let chosen = match choices(&fields) {
        Ok(ch) => ch,
        Err(e) => return error_page(&c, 400, &e),
    };
    match data::resolve_fields(&c, id.clone(), chosen).await {
        Ok(done) => {
            let open = data::open_conflicts_of(&c, id.clone())
                .await
                .unwrap_or_default();
            let body = html! {
                p.msg #flash { "Conflicts of contact " (id) " settled: " (done.join("; ")) "." }
                @if !open.is_empty() {
                    p { (open.len()) " still open: " a href=(format!("/contact/{}/conflicts", url_component(&id))) { "choose for them" } }
                }
                p { a href=(format!("/contact/{}", url_component(&id))) { "The contact" } " · " a href="/conflicts" { "All open conflicts" } }
            };
            page("Conflicts settled", &c, false, body)
        }
        Err(r) => refused(&c, r),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Choice {
    conflict: i64,
    /// `canonical` or `incoming`.
    keep: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChoicesBody {
    choices: Vec<Choice>,
}

pub(crate) async fn api_submit(
    State(c): State<Console>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(b): Json<ChoicesBody>,
) -> Response {
    if !super::api::csrf_ok(&c, &headers) {
        return super::api::error(403, super::api::CSRF_MISSING);
    }
    let mut chosen = Vec::new();
    for ch in b.choices {
        let Some(keep_incoming) = keep_incoming(&ch.keep) else {
            return super::api::error(
                400,
                format!(
                    "conflict {}: keep must be \"canonical\" or \"incoming\"",
                    ch.conflict
                ),
            );
        };
        if chosen.iter().any(|(i, _)| *i == ch.conflict) {
            return super::api::error(400, format!("conflict {} is chosen twice", ch.conflict));
        }
        chosen.push((ch.conflict, keep_incoming));
    }
    match data::resolve_fields(&c, id, chosen).await {
        Ok(done) => Json(json!({ "ok": true, "settled": done })).into_response(),
        Err(r) => super::api::error(r.0, r.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_become_choices() {
        let f = |v: &[(&str, &str)]| {
            choices(
                &v.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            f(&[("csrf", "x"), ("c7", "incoming"), ("c9", "canonical")]).unwrap(),
            vec![(7, true), (9, false)]
        );
        assert!(f(&[("c7", "both")]).is_err());
        assert!(f(&[("c7", "incoming"), ("c7", "canonical")]).is_err());
        assert!(f(&[("csrf", "x")]).unwrap().is_empty());
    }
}
