//! A contact as a MERGE `@rows` element, and a table row read back as a contact.

use contact_sync_core::model::format_ts;
use contact_sync_core::pii::Reason;
use contact_sync_core::{Contact, Email, Invalid, Phone, Timestamp};
use serde_json::{Map, Value};

use crate::client::ParamValue;

fn opt_text(v: &Option<String>) -> ParamValue {
    match v {
        Some(s) => ParamValue::Scalar(s.clone()),
        None => ParamValue::Null,
    }
}

fn opt_ts(v: &Option<Timestamp>) -> ParamValue {
    match v {
        Some(t) => ParamValue::Scalar(format_ts(t)),
        None => ParamValue::Null,
    }
}

fn opt_json(v: &Option<Value>) -> ParamValue {
    match v {
        Some(Value::Null) | None => ParamValue::Null,
        Some(j) => ParamValue::Scalar(j.to_string()),
    }
}

/// One contact as a `@rows` element (fields by canonical name).
pub(crate) fn row_value(c: &Contact) -> ParamValue {
    let rec = |first: &str, items: Vec<(&str, &Option<String>, bool)>| {
        ParamValue::Array(
            items
                .into_iter()
                .map(|(a, label, primary)| {
                    ParamValue::Struct(vec![
                        (first.to_string(), ParamValue::Scalar(a.to_string())),
                        ("label".to_string(), opt_text(label)),
                        (
                            "is_primary".to_string(),
                            ParamValue::Scalar(primary.to_string()),
                        ),
                    ])
                })
                .collect(),
        )
    };
    let ext = if c.external_ids.is_empty() {
        ParamValue::Null
    } else {
        ParamValue::Scalar(serde_json::to_string(&c.external_ids).unwrap_or_default())
    };
    let t = |s: &str| ParamValue::Scalar(s.to_string());
    ParamValue::Struct(vec![
        ("contact_id".into(), t(&c.contact_id)),
        ("external_ids".into(), ext),
        ("canonical_name".into(), t(&c.canonical_name)),
        ("display_name".into(), opt_text(&c.display_name)),
        ("first_name".into(), opt_text(&c.first_name)),
        ("middle_name".into(), opt_text(&c.middle_name)),
        ("last_name".into(), opt_text(&c.last_name)),
        ("name_prefix".into(), opt_text(&c.name_prefix)),
        ("name_suffix".into(), opt_text(&c.name_suffix)),
        ("nickname".into(), opt_text(&c.nickname)),
        ("phonetic_name".into(), opt_text(&c.phonetic_name)),
        ("organization".into(), opt_text(&c.organization)),
        ("job_title".into(), opt_text(&c.job_title)),
        ("department".into(), opt_text(&c.department)),
        ("category_code".into(), opt_text(&c.category_code)),
        ("subcategory_code".into(), opt_text(&c.subcategory_code)),
        ("relationship_label".into(), opt_text(&c.relationship_label)),
        ("notes".into(), opt_text(&c.notes)),
        (
            "tags".into(),
            ParamValue::Array(c.tags.iter().map(|s| t(s)).collect()),
        ),
        ("source".into(), opt_text(&c.source)),
        ("created_at".into(), opt_ts(&c.created_at)),
        ("llm_context".into(), opt_json(&c.llm_context)),
        ("relationships".into(), opt_json(&c.relationships)),
        (
            "communication_stats".into(),
            opt_json(&c.communication_stats),
        ),
        ("social_profiles".into(), opt_json(&c.social_profiles)),
        ("custom_attributes".into(), opt_json(&c.custom_attributes)),
        (
            "emails".into(),
            rec(
                "address",
                c.emails
                    .iter()
                    .map(|e| (e.address.as_str(), &e.label, e.is_primary))
                    .collect(),
            ),
        ),
        (
            "phones".into(),
            rec(
                "number",
                c.phones
                    .iter()
                    .map(|p| (p.number.as_str(), &p.label, p.is_primary))
                    .collect(),
            ),
        ),
        ("version".into(), ParamValue::Scalar(c.version.to_string())),
        ("last_updated".into(), opt_ts(&c.last_updated)),
        ("last_updated_by".into(), opt_text(&c.last_updated_by)),
        ("deleted_at".into(), opt_ts(&c.deleted_at)),
        ("content_hash".into(), opt_text(&c.content_hash)),
    ])
}

/// A row read by [`Layout::select_list`] as a normalized contact; the
/// error names the contact and the field that cannot be read.
pub(crate) fn decode_contact(row: &Map<String, Value>) -> Result<Contact, Invalid> {
    let id = match row.get("contact_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(Invalid::new("", "contact_id", "is NULL or empty")),
    };
    let bad = |field: &str, reason: String| Invalid::new(&id, field, reason);
    // A reason quoting a value of the row: masked in logs (core's `pii`).
    let quoting = |field: &str, reason: Reason| Invalid::with_reason(&id, field, reason);
    let text = |f: &str| -> Result<Option<String>, Invalid> {
        match row.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(quoting(
                f,
                Reason::quoting(|q| format!("expected text, found {}", q.json(other))),
            )),
        }
    };
    let ts = |f: &str| -> Result<Option<Timestamp>, Invalid> {
        match row.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .and_then(chrono::DateTime::from_timestamp_micros)
                .map(Some)
                .ok_or_else(|| bad(f, format!("timestamp {n} out of range"))),
            Some(other) => Err(quoting(
                f,
                Reason::quoting(|q| format!("expected a timestamp, found {}", q.json(other))),
            )),
        }
    };
    let jsonf = |f: &str| -> Result<Option<Value>, Invalid> {
        match row.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                .map(|v| if v.is_null() { None } else { Some(v) })
                .map_err(|e| {
                    quoting(
                        f,
                        Reason::quoting(|q| {
                            format!("is not valid JSON ({})", q.detail(&e.to_string()))
                        }),
                    )
                }),
            Some(other) => Ok(Some(other.clone())),
        }
    };
    let deleted_at = ts("deleted_at")?;
    let canonical_name = match text("canonical_name")? {
        Some(n) => n,
        None if deleted_at.is_some() => String::new(),
        None => return Err(bad("canonical_name", "is NULL".into())),
    };
    let mut c = Contact::new(id.clone(), canonical_name);
    if let Some(v) = jsonf("external_ids")? {
        let Value::Object(m) = v else {
            return Err(bad("external_ids", "is not a JSON object".into()));
        };
        for (k, v) in m {
            let s = match v {
                Value::String(s) => s,
                Value::Null => continue,
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(quoting(
                        "external_ids",
                        Reason::quoting(|q| {
                            format!("id for `{k}` is not text: {}", q.json(&other))
                        }),
                    ))
                }
            };
            c.external_ids.insert(k, s);
        }
    }
    c.display_name = text("display_name")?;
    c.first_name = text("first_name")?;
    c.middle_name = text("middle_name")?;
    c.last_name = text("last_name")?;
    c.name_prefix = text("name_prefix")?;
    c.name_suffix = text("name_suffix")?;
    c.nickname = text("nickname")?;
    c.phonetic_name = text("phonetic_name")?;
    c.organization = text("organization")?;
    c.job_title = text("job_title")?;
    c.department = text("department")?;
    c.category_code = text("category_code")?;
    c.subcategory_code = text("subcategory_code")?;
    c.relationship_label = text("relationship_label")?;
    c.notes = text("notes")?;
    c.tags = match row.get("tags") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    c.source = text("source")?;
    c.created_at = ts("created_at")?;
    c.llm_context = jsonf("llm_context")?;
    c.relationships = jsonf("relationships")?;
    c.communication_stats = jsonf("communication_stats")?;
    c.social_profiles = jsonf("social_profiles")?;
    c.custom_attributes = jsonf("custom_attributes")?;
    let records = |f: &str, first: &str| -> Result<Vec<(String, Option<String>, bool)>, Invalid> {
        let Some(Value::Array(a)) = row.get(f) else {
            return Ok(Vec::new());
        };
        a.iter()
            .enumerate()
            .map(|(i, r)| {
                let addr = r
                    .get(first)
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(f, format!("entry {i} has no {first}")))?;
                Ok((
                    addr.to_string(),
                    r.get("label").and_then(Value::as_str).map(str::to_string),
                    r.get("is_primary")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                ))
            })
            .collect()
    };
    c.emails = records("emails", "address")?
        .into_iter()
        .map(|(address, label, is_primary)| Email {
            address,
            label,
            is_primary,
        })
        .collect();
    c.phones = records("phones", "number")?
        .into_iter()
        .map(|(number, label, is_primary)| Phone {
            number,
            label,
            is_primary,
        })
        .collect();
    c.version = match row.get("version") {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| bad("version", format!("{n} is not an integer")))?,
        _ => return Err(bad("version", "is NULL".into())),
    };
    c.last_updated = ts("last_updated")?;
    c.last_updated_by = text("last_updated_by")?;
    c.deleted_at = deleted_at;
    c.content_hash = text("content_hash")?;
    c.normalize();
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decode_reports_the_field() {
        let mut row = Map::new();
        row.insert("contact_id".into(), json!("c1"));
        row.insert("canonical_name".into(), json!("Ann"));
        row.insert("version".into(), json!(1));
        row.insert("llm_context".into(), json!("{not json"));
        let e = decode_contact(&row).unwrap_err();
        assert_eq!((e.record.as_str(), e.field.as_str()), ("c1", "llm_context"));
        row.insert("llm_context".into(), json!("{\"a\":1}"));
        row.remove("canonical_name");
        let e = decode_contact(&row).unwrap_err();
        assert_eq!(e.field, "canonical_name");
        row.insert("canonical_name".into(), json!("Ann"));
        let c = decode_contact(&row).unwrap();
        assert_eq!(c.llm_context, Some(json!({"a": 1})));
    }
}
