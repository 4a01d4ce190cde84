//! Rendering a [`ContactContext`] as text or JSON, and the token estimate.

use std::fmt::Write as _;

use serde::Serialize;

use super::context::{ContactContext, ContextField};

/// Estimated tokens of `text`: every line costs `ceil((chars + 1) / 4)`,
/// its characters (Unicode scalar values) plus its line break at four
/// characters per token, rounded up per line; the empty string costs 0.
///
/// Rounding per line makes the estimate add up: the cost of blocks joined by
/// line breaks is the sum of their costs, so dropping a line saves exactly
/// its own cost. Four characters per token is the usual rule of thumb for
/// English text with BPE tokenizers; it over-counts short words and
/// under-counts long numbers and non-Latin scripts, so keep a margin below
/// the model's real limit.
pub fn estimate_tokens(text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    text.split('\n')
        .map(|line| (line.chars().count() + 1).div_ceil(4))
        .sum()
}

/// Most field names spelled out in the omitted line; beyond that the line
/// names the first few and counts the rest (the full list is in
/// [`ContactContext::omitted`]), so a heavily trimmed contact stays cheap.
pub(super) const OMITTED_NAMES_SHOWN: usize = 6;

/// The line that ends a block with omitted fields:
/// `[omitted for length: notes, tags]`, or with more than
/// [`OMITTED_NAMES_SHOWN`] fields `[omitted for length: notes, tags, …,
/// tensions and 9 more fields]`.
pub(super) fn omitted_line(fields: &[ContextField]) -> String {
    let shown = if fields.len() > OMITTED_NAMES_SHOWN {
        OMITTED_NAMES_SHOWN - 1
    } else {
        fields.len()
    };
    let mut s = String::from("[omitted for length: ");
    for (i, f) in fields[..shown].iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(f.as_str());
    }
    if shown < fields.len() {
        let _ = write!(s, " and {} more fields", fields.len() - shown);
    }
    s.push(']');
    s
}

/// The line that ends a multi-contact context when contacts were left out.
pub(super) fn left_out_line(count: usize) -> String {
    if count == 1 {
        "[1 contact left out for length]".to_string()
    } else {
        format!("[{count} contacts left out for length]")
    }
}

/// Compact JSON. Serializing these plain structs cannot fail (no maps with
/// non-text keys, no failing `Serialize` impls); an empty string would be
/// the result if it ever did.
pub(super) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn line(out: &mut String, label: &str, value: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(label);
    out.push_str(": ");
    out.push_str(value);
}

fn list(out: &mut String, label: &str, items: &[String], sep: &str) {
    if !items.is_empty() {
        line(out, label, &items.join(sep));
    }
}

fn opt(out: &mut String, label: &str, value: &Option<String>) {
    if let Some(v) = value {
        line(out, label, v);
    }
}

/// `value (label, primary)`, `value (label)`, `value (primary)` or `value`.
fn point(value: &str, label: Option<&str>, primary: bool) -> String {
    match (label, primary) {
        (Some(l), true) => format!("{value} ({l}, primary)"),
        (Some(l), false) => format!("{value} ({l})"),
        (None, true) => format!("{value} (primary)"),
        (None, false) => value.to_string(),
    }
}

/// The text block: one field per line, header first, in display order.
pub(super) fn render_text(c: &ContactContext) -> String {
    let mut out = String::with_capacity(1024);
    let _ = write!(out, "Contact: {} [{}]", c.name, c.contact_id);
    let aka: Vec<String> = match (&c.nickname, &c.display_name) {
        (Some(n), Some(d)) if n == d => vec![format!("{n} (nickname, display name)")],
        (n, d) => n
            .iter()
            .map(|n| format!("{n} (nickname)"))
            .chain(d.iter().map(|d| format!("{d} (display name)")))
            .collect(),
    };
    list(&mut out, "Also known as", &aka, "; ");
    if let Some(r) = &c.relationship {
        let mut v = String::new();
        match (&r.category, &r.category_code) {
            (Some(name), _) => v.push_str(name),
            (None, Some(code)) => {
                let _ = write!(v, "category {code}");
            }
            (None, None) => {}
        }
        if let Some(sub) = &r.subcategory {
            if !v.is_empty() {
                v.push(' ');
            }
            let _ = write!(v, "[{sub}]");
        }
        if let Some(label) = &r.label {
            if !v.is_empty() {
                v.push_str(" — ");
            }
            v.push_str(label);
        }
        line(&mut out, "Relationship", &v);
    }
    if let Some(w) = &c.warning {
        out.push('\n');
        out.push_str(w);
    }
    if let Some(o) = &c.organization {
        let parts: Vec<String> = [
            ("organization", &o.name),
            ("job title", &o.job_title),
            ("department", &o.department),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
        .collect();
        list(&mut out, "Work", &parts, "; ");
    }
    let emails: Vec<String> = c
        .emails
        .iter()
        .map(|e| point(&e.address, e.label.as_deref(), e.primary))
        .collect();
    list(&mut out, "Emails", &emails, "; ");
    let phones: Vec<String> = c
        .phones
        .iter()
        .map(|p| point(&p.number, p.label.as_deref(), p.primary))
        .collect();
    list(&mut out, "Phones", &phones, "; ");
    opt(&mut out, "Relationship arc", &c.relationship_arc);
    opt(&mut out, "Communication style", &c.communication_style);
    opt(&mut out, "Personality", &c.personality_notes);
    list(&mut out, "Key interests", &c.key_interests, "; ");
    let dates: Vec<String> = c
        .important_dates
        .iter()
        .map(|d| match &d.significance {
            Some(s) => format!("{}: {} ({s})", d.date, d.event),
            None => format!("{}: {}", d.date, d.event),
        })
        .collect();
    list(&mut out, "Important dates", &dates, "; ");
    list(
        &mut out,
        "Conversation topics",
        &c.conversation_topics,
        "; ",
    );
    match (c.closeness_level, c.emotional_depth) {
        (Some(cl), Some(d)) => line(
            &mut out,
            "Closeness",
            &format!("{cl}/10; emotional depth: {d}/10"),
        ),
        (Some(cl), None) => line(&mut out, "Closeness", &format!("{cl}/10")),
        (None, Some(d)) => line(&mut out, "Emotional depth", &format!("{d}/10")),
        (None, None) => {}
    }
    opt(&mut out, "How met", &c.how_met);
    opt(&mut out, "Current state", &c.current_state);
    list(&mut out, "Strengths", &c.strengths, "; ");
    list(&mut out, "Tensions", &c.tensions, "; ");
    list(&mut out, "Blind spots", &c.blind_spots, "; ");
    let related: Vec<String> = c
        .related_contacts
        .iter()
        .map(|r| {
            let mut s = r.contact_id.clone();
            if let Some(n) = &r.name {
                let _ = write!(s, " {n}");
            }
            match (&r.relation, &r.notes) {
                (Some(rel), Some(n)) => {
                    let _ = write!(s, " ({rel}: {n})");
                }
                (Some(x), None) | (None, Some(x)) => {
                    let _ = write!(s, " ({x})");
                }
                (None, None) => {}
            }
            s
        })
        .collect();
    list(&mut out, "Related contacts", &related, "; ");
    list(&mut out, "Tags", &c.tags, ", ");
    opt(&mut out, "Notes", &c.notes);
    if !c.omitted.is_empty() {
        out.push('\n');
        out.push_str(&omitted_line(&c.omitted));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_counts_each_line_with_its_break() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcd"), 2);
        assert_eq!(estimate_tokens("abc\nabc"), 2);
        assert_eq!(estimate_tokens("abc\n\nabc"), 3);
        // Characters, not bytes.
        assert_eq!(estimate_tokens("ééé"), 1);
        // Additive over lines.
        let a = "Contact: Ada Lovelace [c1]\nRelationship: Friends";
        let b = "Notes: likes engines";
        assert_eq!(
            estimate_tokens(&format!("{a}\n{b}")),
            estimate_tokens(a) + estimate_tokens(b)
        );
    }

    #[test]
    fn omitted_and_left_out_lines() {
        assert_eq!(
            omitted_line(&[ContextField::Notes, ContextField::BlindSpots]),
            "[omitted for length: notes, blind_spots]"
        );
        let six = &ContextField::DROP_ORDER[..6];
        assert_eq!(
            omitted_line(six),
            "[omitted for length: notes, tags, relationships, blind_spots, tensions, conversation_topics]"
        );
        assert_eq!(
            omitted_line(&ContextField::DROP_ORDER[..9]),
            "[omitted for length: notes, tags, relationships, blind_spots, tensions and 4 more fields]"
        );
        assert_eq!(left_out_line(1), "[1 contact left out for length]");
        assert_eq!(left_out_line(3), "[3 contacts left out for length]");
    }
}
