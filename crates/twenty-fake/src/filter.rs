//! The subset of Twenty's REST `filter` language the fake understands, with
//! Twenty's parsing rules and error messages.
//!
//! Grammar: `and(f,…)`, `or(f,…)`, `not(f)`, or a comma-separated list of
//! base filters (an implicit `and`). A base filter is
//! `field[.subfield][comparator]:value`; values are bare or double-quoted;
//! `[in]` and `[containsAny]` take `[v1,v2]` or `["v1","v2"]`; `[is]` takes
//! `NULL` or `NOT_NULL`.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Comparators Twenty accepts, in the order its error message lists them.
pub const COMPARATORS: &[&str] = &[
    "eq",
    "neq",
    "in",
    "containsAny",
    "is",
    "gt",
    "gte",
    "lt",
    "lte",
    "startsWith",
    "endsWith",
    "like",
    "ilike",
];

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Base {
        path: Vec<String>,
        comparator: String,
        value: FilterValue,
    },
}

/// The right-hand side of a base filter.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    One(String),
    List(Vec<String>),
    Null,
    NotNull,
}

/// Splits `and(a,b,or(c,d))`'s content into its predicates the way Twenty
/// does: commas split only at depth 1 and outside brackets and quotes.
fn split_predicates(s: &str) -> Vec<String> {
    let mut in_brackets = false;
    let mut in_dq = false;
    let mut in_sq = false;
    let mut depth = 0i32;
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        let mut keep = depth >= 1;
        if c == '(' {
            depth += 1;
        }
        if c == ')' {
            depth -= 1;
            keep = depth >= 1;
        }
        if c == '[' || c == ']' {
            in_brackets = !in_brackets;
        }
        if c == '"' {
            in_dq = !in_dq;
        }
        if c == '\'' {
            in_sq = !in_sq;
        }
        if c == ',' && depth == 1 && !in_brackets && !in_dq && !in_sq {
            out.push(std::mem::take(&mut cur));
            keep = false;
        }
        if keep {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Splits a top-level comma list (no enclosing conjunction) at depth 0.
fn split_top(s: &str) -> Vec<String> {
    let mut in_brackets = false;
    let mut in_dq = false;
    let mut depth = 0i32;
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '[' | ']' => in_brackets = !in_brackets,
            '"' => in_dq = !in_dq,
            _ => {}
        }
        if c == ',' && depth == 0 && !in_brackets && !in_dq {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Parses a `filter` query parameter. Errors carry Twenty's message text.
pub fn parse(s: &str) -> Result<Filter, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Filter::And(Vec::new()));
    }
    let parts = split_top(s);
    if parts.len() > 1 {
        return Ok(Filter::And(
            parts.iter().map(|p| parse(p)).collect::<Result<_, _>>()?,
        ));
    }
    for (kw, build) in [("and(", 0u8), ("or(", 1), ("not(", 2)] {
        if s.starts_with(kw) && s.ends_with(')') {
            let preds = split_predicates(s);
            let subs: Vec<Filter> = preds
                .iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| parse(p))
                .collect::<Result<_, _>>()?;
            return Ok(match build {
                0 => Filter::And(subs),
                1 => Filter::Or(subs),
                _ => {
                    if subs.len() != 1 {
                        return Err(format!("'filter' invalid. 'not' conjunction should contain only 1 condition. {} found", subs.len()));
                    }
                    Filter::Not(Box::new(
                        subs.into_iter().next().unwrap_or(Filter::And(vec![])),
                    ))
                }
            });
        }
    }
    parse_base(s)
}

fn parse_base(s: &str) -> Result<Filter, String> {
    // Shape check like Twenty's `^(.+)\[(.+)\]:(.+)$`.
    let open = s.find('[');
    let close_colon = s.find("]:");
    let (Some(open), Some(cc)) = (open, close_colon) else {
        return Err(format!("'filter' invalid for '{s}'. eg: price[gte]:10"));
    };
    if open == 0 || cc <= open + 1 || cc + 2 >= s.len() {
        return Err(format!("'filter' invalid for '{s}'. eg: price[gte]:10"));
    }
    let fields = &s[..open];
    let comparator = &s[open + 1..cc];
    let raw = &s[cc + 2..];
    if !COMPARATORS.contains(&comparator) {
        return Err(format!(
            "'filter' invalid for '{s}', comparator {comparator} not in {}",
            COMPARATORS.join(", ")
        ));
    }
    let path: Vec<String> = fields.split('.').map(|p| p.trim().to_string()).collect();
    let value = match comparator {
        "in" | "containsAny" => {
            let r = raw.trim();
            if !(r.starts_with('[') && r.ends_with(']')) {
                return Err(format!(
                    "'filter' invalid for '{s}', value for '{comparator}' must be a list like [a,b]"
                ));
            }
            let inner = &r[1..r.len() - 1];
            let items: Vec<String> = if inner.trim().is_empty() {
                Vec::new()
            } else {
                split_top(inner).iter().map(|v| unquote(v)).collect()
            };
            FilterValue::List(items)
        }
        "is" => match unquote(raw).as_str() {
            "NULL" => FilterValue::Null,
            "NOT_NULL" => FilterValue::NotNull,
            other => {
                return Err(format!(
                    "'filter' invalid for '{s}', 'is' value {other} not in NULL, NOT_NULL"
                ))
            }
        },
        _ => FilterValue::One(unquote(raw)),
    };
    Ok(Filter::Base {
        path,
        comparator: comparator.to_string(),
        value,
    })
}

fn unquote(v: &str) -> String {
    let t = v.trim();
    if t.len() >= 2
        && ((t.starts_with('"') && t.ends_with('"')) || (t.starts_with('\'') && t.ends_with('\'')))
    {
        t[1..t.len() - 1].to_string()
    } else {
        t.to_string()
    }
}

impl Filter {
    /// Every field path the filter names (first segment).
    pub fn fields(&self, out: &mut Vec<String>) {
        match self {
            Filter::And(v) | Filter::Or(v) => v.iter().for_each(|f| f.fields(out)),
            Filter::Not(f) => f.fields(out),
            Filter::Base { path, .. } => out.push(path[0].clone()),
        }
    }

    /// Whether the filter names `deletedAt` (then soft-deleted rows are not
    /// hidden by default).
    pub fn names_deleted_at(&self) -> bool {
        let mut f = Vec::new();
        self.fields(&mut f);
        f.iter().any(|p| p == "deletedAt")
    }

    /// Evaluates the filter on a record.
    pub fn matches(&self, rec: &Value) -> bool {
        match self {
            Filter::And(v) => v.iter().all(|f| f.matches(rec)),
            Filter::Or(v) => v.iter().any(|f| f.matches(rec)),
            Filter::Not(f) => !f.matches(rec),
            Filter::Base {
                path,
                comparator,
                value,
            } => {
                let mut cur = rec;
                for p in path {
                    match cur.get(p) {
                        Some(v) => cur = v,
                        None => {
                            cur = &Value::Null;
                            break;
                        }
                    }
                }
                compare(cur, comparator, value)
            }
        }
    }
}

fn is_nullish(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|n| n.and_utc())
        })
}

/// Orders two scalar values: both timestamps → as time; both marked
/// numeric (see [`num_key`]) → as numbers; else as text (so ids that look
/// like numbers still sort as text, as in Postgres).
pub fn order(a: &str, b: &str) -> std::cmp::Ordering {
    if let (Some(x), Some(y)) = (a.strip_prefix(NUM), b.strip_prefix(NUM)) {
        if let (Ok(x), Ok(y)) = (x.parse::<f64>(), y.parse::<f64>()) {
            return x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
        }
    }
    if a.len() >= 10 && b.len() >= 10 {
        if let (Some(x), Some(y)) = (parse_time(a), parse_time(b)) {
            return x.cmp(&y);
        }
    }
    a.cmp(b)
}

const NUM: &str = "\u{1}";

/// The text form of a JSON number that [`order`] compares numerically.
pub fn num_key(n: &serde_json::Number) -> String {
    format!("{NUM}{n}")
}

fn like(pattern: &str, text: &str, ci: bool) -> bool {
    let (p, t) = if ci {
        (pattern.to_lowercase(), text.to_lowercase())
    } else {
        (pattern.to_string(), text.to_string())
    };
    let parts: Vec<&str> = p.split('%').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let mut rest = t.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            if !rest.starts_with(part) {
                return false;
            }
            rest = &rest[part.len()..];
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

fn compare(v: &Value, comparator: &str, want: &FilterValue) -> bool {
    use std::cmp::Ordering::*;
    match (comparator, want) {
        ("is", FilterValue::Null) => is_nullish(v),
        ("is", FilterValue::NotNull) => !is_nullish(v),
        ("in", FilterValue::List(items)) => {
            as_text(v).is_some_and(|t| items.iter().any(|i| order(&t, i) == Equal))
        }
        ("containsAny", FilterValue::List(items)) => match v {
            Value::Array(arr) => arr.iter().filter_map(as_text).any(|t| items.contains(&t)),
            _ => false,
        },
        (c, FilterValue::One(w)) => {
            let Some(t) = as_text(v) else {
                return c == "neq";
            };
            let (t, w) = match v {
                Value::Number(n) => (num_key(n), format!("{NUM}{w}")),
                _ => (t, w.clone()),
            };
            let w = &w;
            match c {
                "eq" => order(&t, w) == Equal,
                "neq" => order(&t, w) != Equal,
                "gt" => !is_nullish(v) && order(&t, w) == Greater,
                "gte" => !is_nullish(v) && order(&t, w) != Less,
                "lt" => !is_nullish(v) && order(&t, w) == Less,
                "lte" => !is_nullish(v) && order(&t, w) != Greater,
                "startsWith" => t.starts_with(w.as_str()),
                "endsWith" => t.ends_with(w.as_str()),
                "like" => like(w, &t, false),
                "ilike" => like(w, &t, true),
                _ => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_evaluates_the_client_filters() {
        let f = parse(r#"and(updatedAt[gte]:"2026-11-23T05:50:05.541Z",or(deletedAt[is]:NULL,deletedAt[is]:NOT_NULL))"#).unwrap();
        assert!(f.names_deleted_at());
        let rec = json!({"updatedAt": "2026-11-23T05:50:06.000Z", "deletedAt": "2026-11-23T05:50:06.000Z"});
        assert!(f.matches(&rec));
        let old = json!({"updatedAt": "2026-11-23T05:50:05.000Z", "deletedAt": null});
        assert!(!f.matches(&old));
        let f = parse(r#"contactId[in]:["a","b,c"]"#).unwrap();
        assert!(f.matches(&json!({"contactId": "b,c"})));
        assert!(!f.matches(&json!({"contactId": "b"})));
        let f = parse("emails.primaryEmail[eq]:x@example.com").unwrap();
        assert!(f.matches(&json!({"emails": {"primaryEmail": "x@example.com"}})));
    }

    #[test]
    fn bad_comparator_has_twentys_message() {
        let e = parse("updatedAt[foo]:1").unwrap_err();
        assert_eq!(e, "'filter' invalid for 'updatedAt[foo]:1', comparator foo not in eq, neq, in, containsAny, is, gt, gte, lt, lte, startsWith, endsWith, like, ilike");
    }
}
