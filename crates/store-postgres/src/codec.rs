//! Contact ⇄ row text values.
//!
//! Every value crosses the wire as text: writes go through a text staging
//! table and are cast to the target column's type; reads cast every column
//! to text; pgoutput tuples and outbox row images are text too. So one
//! decoder serves reads, the replication slot and the outbox, and it works
//! whatever the column types of a user's existing table (JSON kept in a
//! TEXT column, timestamps kept as text).

use std::collections::BTreeMap;

use contact_sync_core::model::{format_ts, parse_ts, ALL_FIELDS};
use contact_sync_core::pii::Reason;
use contact_sync_core::{Contact, Email, Invalid, Phone, Timestamp};
use serde_json::Value;

/// How a canonical field is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `contact_id`: text, required.
    Id,
    /// Plain text.
    Text,
    /// JSON object of text (`external_ids`).
    StringMap,
    /// JSON array of text (`tags`).
    StringList,
    /// JSON array of emails.
    Emails,
    /// JSON array of phones.
    Phones,
    /// Any JSON (the five rich fields).
    Json,
    /// A timestamp.
    Ts,
    /// `version`.
    Version,
}

/// The storage kind of a canonical field.
pub(crate) fn kind(field: &str) -> Kind {
    match field {
        "contact_id" => Kind::Id,
        "external_ids" => Kind::StringMap,
        "tags" => Kind::StringList,
        "emails" => Kind::Emails,
        "phones" => Kind::Phones,
        "llm_context"
        | "relationships"
        | "communication_stats"
        | "social_profiles"
        | "custom_attributes" => Kind::Json,
        "created_at" | "last_updated" | "deleted_at" => Kind::Ts,
        "version" => Kind::Version,
        _ => Kind::Text,
    }
}

/// The Postgres type `migrate` gives a field (DESIGN.md type mapping).
pub(crate) fn sql_type(field: &str) -> &'static str {
    match kind(field) {
        Kind::Id | Kind::Text => "text",
        Kind::StringMap | Kind::StringList | Kind::Emails | Kind::Phones | Kind::Json => "jsonb",
        Kind::Ts => "timestamptz",
        Kind::Version => "bigint",
    }
}

fn json_text<T: serde::Serialize>(v: &T) -> String {
    // Serializing plain data (strings, maps, vectors, Values) cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

fn ts_text(t: &Option<Timestamp>) -> Option<String> {
    t.as_ref().map(format_ts)
}

/// The text value of every field, in [`ALL_FIELDS`] order.
pub(crate) fn encode(c: &Contact) -> Vec<Option<String>> {
    let text = |v: &Option<String>| v.clone();
    let json = |v: &Option<Value>| v.as_ref().map(json_text);
    ALL_FIELDS
        .iter()
        .map(|f| match *f {
            "contact_id" => Some(c.contact_id.clone()),
            "external_ids" => Some(json_text(&c.external_ids)),
            "canonical_name" => Some(c.canonical_name.clone()),
            "display_name" => text(&c.display_name),
            "first_name" => text(&c.first_name),
            "middle_name" => text(&c.middle_name),
            "last_name" => text(&c.last_name),
            "name_prefix" => text(&c.name_prefix),
            "name_suffix" => text(&c.name_suffix),
            "nickname" => text(&c.nickname),
            "phonetic_name" => text(&c.phonetic_name),
            "organization" => text(&c.organization),
            "job_title" => text(&c.job_title),
            "department" => text(&c.department),
            "category_code" => text(&c.category_code),
            "subcategory_code" => text(&c.subcategory_code),
            "relationship_label" => text(&c.relationship_label),
            "notes" => text(&c.notes),
            "tags" => Some(json_text(&c.tags)),
            "source" => text(&c.source),
            "created_at" => ts_text(&c.created_at),
            "llm_context" => json(&c.llm_context),
            "relationships" => json(&c.relationships),
            "communication_stats" => json(&c.communication_stats),
            "social_profiles" => json(&c.social_profiles),
            "custom_attributes" => json(&c.custom_attributes),
            "emails" => Some(json_text(&c.emails)),
            "phones" => Some(json_text(&c.phones)),
            "version" => Some(c.version.to_string()),
            "last_updated" => ts_text(&c.last_updated),
            "last_updated_by" => text(&c.last_updated_by),
            "deleted_at" => ts_text(&c.deleted_at),
            "content_hash" => text(&c.content_hash),
            other => unreachable!("ALL_FIELDS holds an unknown field {other}"),
        })
        .collect()
}

/// A row that could not be read as a contact.
#[derive(Debug, Clone)]
pub(crate) struct RowError {
    pub invalid: Invalid,
    pub payload: Value,
}

/// One row as text values: canonical field name → value (absent key or
/// `None` = SQL NULL / column missing), plus the row's own id.
#[derive(Debug, Clone, Default)]
pub(crate) struct RowText {
    pub row_id: Option<String>,
    pub fields: BTreeMap<&'static str, Option<String>>,
}

impl RowText {
    pub(crate) fn get(&self, f: &str) -> Option<&str> {
        self.fields.get(f).and_then(|v| v.as_deref())
    }

    /// The row as a JSON object of text values, for dead letters.
    pub fn payload(&self) -> Value {
        let mut m = serde_json::Map::new();
        if let Some(id) = &self.row_id {
            m.insert("id".into(), Value::String(id.clone()));
        }
        for (k, v) in &self.fields {
            m.insert(
                (*k).to_string(),
                v.clone().map(Value::String).unwrap_or(Value::Null),
            );
        }
        Value::Object(m)
    }
}

/// Reads a row as a normalized contact. A value that does not parse
/// (broken JSON, a bad timestamp) is an error naming the row id and the
/// field; the caller reports it as [`contact_sync_connector::ChangeKind::Undecodable`].
pub(crate) fn decode(row: &RowText) -> Result<Contact, Box<RowError>> {
    let contact_id = row.get("contact_id").unwrap_or("").trim().to_string();
    let row_id = row.row_id.clone().unwrap_or_else(|| "?".to_string());
    // Reasons may quote the row's values: masked in logs (core's `pii`).
    let fail = |field: &str, reason: Reason| {
        let record = if contact_id.is_empty() {
            &row_id
        } else {
            &contact_id
        };
        Box::new(RowError {
            invalid: Invalid::with_reason(
                record,
                field,
                reason.map(|r| format!("row id {row_id}: {r}")),
            ),
            payload: row.payload(),
        })
    };
    let json = |f: &str| -> Result<Option<Value>, Box<RowError>> {
        match row.get(f) {
            None => Ok(None),
            Some(s) if s.trim().is_empty() => Ok(None),
            Some(s) => serde_json::from_str::<Value>(s)
                .map(Some)
                .map_err(|e| fail(f, Reason::plain(format!("not valid JSON: {e}")))),
        }
    };
    fn typed<T: serde::de::DeserializeOwned + Default>(
        v: Option<Value>,
        f: &str,
        fail: &dyn Fn(&str, Reason) -> Box<RowError>,
    ) -> Result<T, Box<RowError>> {
        match v {
            None | Some(Value::Null) => Ok(T::default()),
            Some(v) => serde_json::from_value(v).map_err(|e| {
                fail(
                    f,
                    Reason::quoting(|q| format!("wrong shape: {}", q.detail(&e.to_string()))),
                )
            }),
        }
    }
    let ts = |f: &str| -> Result<Option<Timestamp>, Box<RowError>> {
        match row.get(f) {
            None => Ok(None),
            Some(s) if s.trim().is_empty() => Ok(None),
            Some(s) => parse_ts(s).map(Some).ok_or_else(|| {
                fail(
                    f,
                    Reason::quoting(|q| format!("not a timestamp: {}", q.text(s))),
                )
            }),
        }
    };
    let text = |f: &str| row.get(f).map(str::to_string);

    let mut c = Contact::new(contact_id.clone(), row.get("canonical_name").unwrap_or(""));
    c.external_ids =
        typed::<BTreeMap<String, String>>(json("external_ids")?, "external_ids", &fail)?;
    c.display_name = text("display_name");
    c.first_name = text("first_name");
    c.middle_name = text("middle_name");
    c.last_name = text("last_name");
    c.name_prefix = text("name_prefix");
    c.name_suffix = text("name_suffix");
    c.nickname = text("nickname");
    c.phonetic_name = text("phonetic_name");
    c.organization = text("organization");
    c.job_title = text("job_title");
    c.department = text("department");
    c.category_code = text("category_code");
    c.subcategory_code = text("subcategory_code");
    c.relationship_label = text("relationship_label");
    c.notes = text("notes");
    c.tags = typed::<Vec<String>>(json("tags")?, "tags", &fail)?;
    c.source = text("source");
    c.created_at = ts("created_at")?;
    c.llm_context = json("llm_context")?;
    c.relationships = json("relationships")?;
    c.communication_stats = json("communication_stats")?;
    c.social_profiles = json("social_profiles")?;
    c.custom_attributes = json("custom_attributes")?;
    c.emails = typed::<Vec<Email>>(json("emails")?, "emails", &fail)?;
    c.phones = typed::<Vec<Phone>>(json("phones")?, "phones", &fail)?;
    c.version = match row.get("version") {
        None => 1,
        Some(s) => s.trim().parse::<i64>().map_err(|_| {
            fail(
                "version",
                Reason::quoting(|q| format!("not an integer: {}", q.text(s))),
            )
        })?,
    };
    c.last_updated = ts("last_updated")?;
    c.last_updated_by = text("last_updated_by");
    c.deleted_at = ts("deleted_at")?;
    c.content_hash = text("content_hash");
    c.normalize();
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_of(c: &Contact) -> RowText {
        let mut r = RowText {
            row_id: Some("r1".into()),
            ..Default::default()
        };
        for (f, v) in ALL_FIELDS.iter().zip(encode(c)) {
            r.fields.insert(f, v);
        }
        r
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut c = Contact::new("c1", "Ada Lovelace");
        c.tags = vec!["math".into()];
        c.llm_context = Some(serde_json::json!({"closeness_level": 7}));
        c.created_at = parse_ts("2024-01-02T03:04:05.123456Z");
        c.version = 4;
        c.normalize();
        assert_eq!(decode(&row_of(&c)).unwrap(), c);
    }

    #[test]
    fn broken_json_names_row_and_field() {
        let c = Contact::new("c1", "Ada");
        let mut r = row_of(&c);
        r.fields.insert("llm_context", Some("{not json".into()));
        let e = decode(&r).unwrap_err();
        assert_eq!(e.invalid.field, "llm_context");
        assert_eq!(e.invalid.record, "c1");
        assert!(e.invalid.reason.contains("r1"), "{}", e.invalid.reason);
        r.fields.insert("llm_context", None);
        r.fields.insert("tags", Some("{\"a\":1}".into()));
        assert_eq!(decode(&r).unwrap_err().invalid.field, "tags");
    }

    #[test]
    fn sql_timestamps_parse() {
        let mut r = row_of(&Contact::new("c1", "Ada"));
        r.fields
            .insert("created_at", Some("2024-01-02 03:04:05.5+00".into()));
        let c = decode(&r).unwrap();
        assert_eq!(c.created_at, parse_ts("2024-01-02T03:04:05.5Z"));
    }
}
