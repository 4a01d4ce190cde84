//! The canonical contact: 33 fields, the same in every store.
//!
//! Stores translate their rows to and from [`Contact`]; everything in the
//! engine (validation, hashing, merging, journaling) works on this one type.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Timestamps are kept at microsecond precision everywhere (BigQuery's).
pub type Timestamp = DateTime<Utc>;

/// Truncates a timestamp to microseconds so that every store round-trips it.
pub fn micros(ts: Timestamp) -> Timestamp {
    ts.trunc_subsecs(6)
}

/// The current time, at microsecond precision.
pub fn now() -> Timestamp {
    micros(Utc::now())
}

/// Formats a timestamp as RFC 3339 with exactly six fractional digits and `Z`.
pub fn format_ts(ts: &Timestamp) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Parses an RFC 3339 timestamp (any precision, any offset) into UTC micros.
pub fn parse_ts(s: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| micros(t.with_timezone(&Utc)))
        .or_else(|| {
            // Also accept "YYYY-MM-DD HH:MM:SS[.ffffff][+00]" as SQL databases print it.
            let s = s.trim().trim_end_matches("+00").trim_end_matches(" UTC");
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|n| micros(n.and_utc()))
        })
}

/// An email address of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default)]
    pub is_primary: bool,
}

/// A phone number of a contact, in E.164 (`+` and 8 to 15 digits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phone {
    pub number: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default)]
    pub is_primary: bool,
}

/// The `last_updated_by` of an erasure's tombstone (the right to erasure:
/// `contact-sync forget`).
pub const ERASE_ORIGIN: &str = "erase";

/// The canonical contact (33 fields). See `DESIGN.md`.
///
/// Field order here is the serialization order, and the content hash is
/// computed over that serialization, so reordering fields changes every hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    // identity
    pub contact_id: String,
    #[serde(default)]
    pub external_ids: BTreeMap<String, String>,
    // name (9)
    pub canonical_name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub middle_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub name_prefix: Option<String>,
    #[serde(default)]
    pub name_suffix: Option<String>,
    #[serde(default)]
    pub nickname: Option<String>,
    #[serde(default)]
    pub phonetic_name: Option<String>,
    // organization (3)
    #[serde(default)]
    pub organization: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    // relationship (3)
    #[serde(default)]
    pub category_code: Option<String>,
    #[serde(default)]
    pub subcategory_code: Option<String>,
    #[serde(default)]
    pub relationship_label: Option<String>,
    // metadata (4)
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    // rich LLM data (5 JSON)
    #[serde(default)]
    pub llm_context: Option<Value>,
    #[serde(default)]
    pub relationships: Option<Value>,
    #[serde(default)]
    pub communication_stats: Option<Value>,
    #[serde(default)]
    pub social_profiles: Option<Value>,
    #[serde(default)]
    pub custom_attributes: Option<Value>,
    // identifiers
    #[serde(default)]
    pub emails: Vec<Email>,
    #[serde(default)]
    pub phones: Vec<Phone>,
    // sync metadata
    #[serde(default = "first_version")]
    pub version: i64,
    #[serde(default)]
    pub last_updated: Option<Timestamp>,
    #[serde(default)]
    pub last_updated_by: Option<String>,
    #[serde(default)]
    pub deleted_at: Option<Timestamp>,
    #[serde(default)]
    pub content_hash: Option<String>,
}

fn first_version() -> i64 {
    1
}

/// Names of the fields that carry content: everything but identity and sync
/// metadata. These are the fields that are hashed, merged and journaled.
pub const CONTENT_FIELDS: &[&str] = &[
    "canonical_name",
    "display_name",
    "first_name",
    "middle_name",
    "last_name",
    "name_prefix",
    "name_suffix",
    "nickname",
    "phonetic_name",
    "organization",
    "job_title",
    "department",
    "category_code",
    "subcategory_code",
    "relationship_label",
    "notes",
    "tags",
    "source",
    "created_at",
    "llm_context",
    "relationships",
    "communication_stats",
    "social_profiles",
    "custom_attributes",
    "emails",
    "phones",
];

/// Every canonical field name, in canonical order (33).
pub const ALL_FIELDS: &[&str] = &[
    "contact_id",
    "external_ids",
    "canonical_name",
    "display_name",
    "first_name",
    "middle_name",
    "last_name",
    "name_prefix",
    "name_suffix",
    "nickname",
    "phonetic_name",
    "organization",
    "job_title",
    "department",
    "category_code",
    "subcategory_code",
    "relationship_label",
    "notes",
    "tags",
    "source",
    "created_at",
    "llm_context",
    "relationships",
    "communication_stats",
    "social_profiles",
    "custom_attributes",
    "emails",
    "phones",
    "version",
    "last_updated",
    "last_updated_by",
    "deleted_at",
    "content_hash",
];

/// The relationship categories of `category_code`.
pub const CATEGORIES: &[(&str, &str)] = &[
    ("A", "Family"),
    ("B", "Friends"),
    ("C", "Acquaintances"),
    ("D", "Dating/Romantic"),
    ("E", "Ex-Romantic"),
    ("F", "Service Providers"),
    ("G", "Professional/Coworkers"),
    ("H", "Hostile"),
    ("X", "Exclude"),
];

/// The human name of a category code (`"B"` → `"Friends"`).
pub fn category_name(code: &str) -> Option<&'static str> {
    CATEGORIES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, name)| *name)
}

// JSON object keys are always in sorted order: stores disagree on key order
// (Postgres `jsonb` sorts keys its own way) and it carries no meaning, so
// contact-sync builds serde_json without `preserve_order` and its `Map` is
// a `BTreeMap`. Normalizing therefore never re-sorts anything; the test
// `json_objects_keep_their_keys_sorted` fails if a dependency ever turns
// `preserve_order` on.

impl Contact {
    /// A contact with only the required fields set.
    pub fn new(contact_id: impl Into<String>, canonical_name: impl Into<String>) -> Self {
        Contact {
            contact_id: contact_id.into(),
            external_ids: BTreeMap::new(),
            canonical_name: canonical_name.into(),
            display_name: None,
            first_name: None,
            middle_name: None,
            last_name: None,
            name_prefix: None,
            name_suffix: None,
            nickname: None,
            phonetic_name: None,
            organization: None,
            job_title: None,
            department: None,
            category_code: None,
            subcategory_code: None,
            relationship_label: None,
            notes: None,
            tags: Vec::new(),
            source: None,
            created_at: None,
            llm_context: None,
            relationships: None,
            communication_stats: None,
            social_profiles: None,
            custom_attributes: None,
            emails: Vec::new(),
            phones: Vec::new(),
            version: 1,
            last_updated: None,
            last_updated_by: None,
            deleted_at: None,
            content_hash: None,
        }
    }

    /// True when the contact is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// True when the contact is the tombstone of an erasure (`contact-sync
    /// forget`, origin [`ERASE_ORIGIN`]): a store must keep nothing of it,
    /// not even a soft-deleted copy.
    pub fn is_erasure(&self) -> bool {
        self.is_deleted() && self.last_updated_by.as_deref() == Some(ERASE_ORIGIN)
    }

    /// The primary email address (or the first one), lower-cased.
    pub fn primary_email(&self) -> Option<&str> {
        self.emails
            .iter()
            .find(|e| e.is_primary)
            .or_else(|| self.emails.first())
            .map(|e| e.address.as_str())
    }

    /// The primary phone number (or the first one).
    pub fn primary_phone(&self) -> Option<&str> {
        self.phones
            .iter()
            .find(|p| p.is_primary)
            .or_else(|| self.phones.first())
            .map(|p| p.number.as_str())
    }

    /// Puts the contact in the normal form every store round-trips to:
    /// trimmed text with `""` as absent, lower-cased emails, JSON `null` as
    /// absent, JSON object keys sorted, timestamps at microsecond precision.
    ///
    /// Stores differ in how they say "nothing" (Twenty returns `""` for null
    /// text, lower-cases emails); normalizing before hashing keeps those
    /// differences from looking like edits.
    pub fn normalize(&mut self) {
        fn text(v: &mut Option<String>) {
            if let Some(s) = v {
                let t = s.trim();
                if t.is_empty() {
                    *v = None;
                } else if t.len() != s.len() {
                    *v = Some(t.to_string());
                }
            }
        }
        // Empty JSON is one value, absent: Twenty stores `[]`/`{}` as null,
        // other stores keep them, and none of them means anything else.
        fn json(v: &mut Option<Value>) {
            let empty = match v {
                Some(Value::Null) => true,
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Object(o)) => o.is_empty(),
                _ => false,
            };
            if empty {
                *v = None;
            }
        }
        fn ts(v: &mut Option<Timestamp>) {
            if let Some(t) = v {
                *t = micros(*t);
            }
        }
        // Allocates only for values that actually change: this runs on
        // every record of every read, and nearly all are already normal.
        fn trim(s: &mut String) {
            let t = s.trim();
            if t.len() != s.len() {
                *s = t.to_string();
            }
        }
        fn lower(s: &mut String) {
            if s.is_ascii() {
                // Same result as `to_lowercase` for ASCII text.
                s.make_ascii_lowercase();
            } else {
                let l = s.to_lowercase();
                if l != *s {
                    *s = l;
                }
            }
        }
        trim(&mut self.contact_id);
        trim(&mut self.canonical_name);
        for v in [
            &mut self.display_name,
            &mut self.first_name,
            &mut self.middle_name,
            &mut self.last_name,
            &mut self.name_prefix,
            &mut self.name_suffix,
            &mut self.nickname,
            &mut self.phonetic_name,
            &mut self.organization,
            &mut self.job_title,
            &mut self.department,
            &mut self.category_code,
            &mut self.subcategory_code,
            &mut self.relationship_label,
            &mut self.notes,
            &mut self.source,
            &mut self.last_updated_by,
            &mut self.content_hash,
        ] {
            text(v);
        }
        for v in [
            &mut self.llm_context,
            &mut self.relationships,
            &mut self.communication_stats,
            &mut self.social_profiles,
            &mut self.custom_attributes,
        ] {
            json(v);
        }
        for v in [
            &mut self.created_at,
            &mut self.last_updated,
            &mut self.deleted_at,
        ] {
            ts(v);
        }
        self.tags.retain(|t| !t.trim().is_empty());
        for t in &mut self.tags {
            if t.trim().len() != t.len() {
                *t = t.trim().to_string();
            }
        }
        for e in &mut self.emails {
            trim(&mut e.address);
            lower(&mut e.address);
            text(&mut e.label);
        }
        for p in &mut self.phones {
            trim(&mut p.number);
            text(&mut p.label);
        }
    }

    /// The content fields as a JSON object (field name → value), in
    /// canonical order. Absent values are JSON `null`.
    pub fn content_fields(&self) -> serde_json::Map<String, Value> {
        let mut all = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => unreachable!("Contact always serializes to an object"),
        };
        let mut out = serde_json::Map::with_capacity(CONTENT_FIELDS.len());
        for f in CONTENT_FIELDS {
            out.insert((*f).to_string(), all.remove(*f).unwrap_or(Value::Null));
        }
        out
    }

    /// The value of one field by canonical name, as JSON.
    pub fn field(&self, name: &str) -> Option<Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => m.remove(name),
            _ => None,
        }
    }

    /// Sets content fields from a JSON map (field name → value). Unknown
    /// names are ignored; a value of the wrong shape is an error naming the
    /// field.
    pub fn set_fields(
        &mut self,
        fields: &serde_json::Map<String, Value>,
    ) -> Result<(), crate::validate::Invalid> {
        let mut all = match serde_json::to_value(&*self) {
            Ok(Value::Object(m)) => m,
            _ => unreachable!("Contact always serializes to an object"),
        };
        for (k, v) in fields {
            if all.contains_key(k) {
                all.insert(k.clone(), v.clone());
            }
        }
        let updated: Contact = serde_json::from_value(Value::Object(all.clone())).map_err(|e| {
            // Find the first field that fails on its own to name it.
            let field = fields
                .keys()
                .find(|k| {
                    let mut probe = serde_json::to_value(&*self).unwrap_or(Value::Null);
                    if let Value::Object(m) = &mut probe {
                        m.insert((*k).clone(), fields[*k].clone());
                    }
                    serde_json::from_value::<Contact>(probe).is_err()
                })
                .cloned()
                .unwrap_or_else(|| "record".to_string());
            // serde's message may quote the value: masked in logs.
            crate::validate::Invalid::with_reason(
                &self.contact_id,
                field,
                crate::pii::Reason::quoting(|q| q.detail(&e.to_string())),
            )
        })?;
        *self = updated;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_trims_and_lowercases_like_the_plain_rule() {
        let mut c = Contact::new("  c1 ", " Ada ");
        c.emails = vec![
            Email {
                address: " Ada@Example.COM ".into(),
                label: Some("  ".into()),
                is_primary: true,
            },
            Email {
                address: "ÅSA@Exämple.SE".into(),
                label: Some(" work ".into()),
                is_primary: false,
            },
            Email {
                address: "already@lower.case".into(),
                label: None,
                is_primary: false,
            },
        ];
        c.phones = vec![Phone {
            number: " +4930123456 ".into(),
            label: None,
            is_primary: true,
        }];
        let expected: Vec<String> = c
            .emails
            .iter()
            .map(|e| e.address.trim().to_lowercase())
            .collect();
        c.normalize();
        assert_eq!(c.contact_id, "c1");
        assert_eq!(c.canonical_name, "Ada");
        let got: Vec<&str> = c.emails.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(got, expected);
        assert_eq!(c.emails[1].address, "åsa@exämple.se");
        assert_eq!(c.emails[0].label, None);
        assert_eq!(c.emails[1].label.as_deref(), Some("work"));
        assert_eq!(c.phones[0].number, "+4930123456");
        let once = c.clone();
        c.normalize();
        assert_eq!(c, once, "normalize is idempotent");
    }

    /// Guards the build: serde_json without `preserve_order` (see the note
    /// above `impl Contact`), so JSON read in any key order comes out sorted.
    #[test]
    fn json_objects_keep_their_keys_sorted() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":{"z":1,"y":[{"q":1,"p":2}]},"a":0}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"a":0,"b":{"y":[{"p":2,"q":1}],"z":1}}"#,
            "serde_json was built with `preserve_order`: JSON key order now leaks into hashes"
        );
        let mut c = Contact::new("c1", "Ada");
        c.llm_context = Some(serde_json::json!({
            "zeta": 1,
            "Alpha": {"b": [{"y": 1, "x": 2}], "a": null},
            "alpha": [3, {"k2": true, "k1": false}],
            "émile": "non-ASCII sorts after ASCII",
        }));
        c.custom_attributes = Some(serde_json::json!({"a": 1, "b": 2}));
        c.normalize();
        assert_eq!(
            serde_json::to_string(&c.llm_context).unwrap(),
            r#"{"Alpha":{"a":null,"b":[{"x":2,"y":1}]},"alpha":[3,{"k1":false,"k2":true}],"zeta":1,"émile":"non-ASCII sorts after ASCII"}"#
        );
        assert_eq!(
            serde_json::to_string(&c.custom_attributes).unwrap(),
            r#"{"a":1,"b":2}"#
        );
    }

    #[test]
    fn empty_json_is_absent_as_twenty_stores_it() {
        // Twenty 2.21 stores a RAW_JSON `[]` or `{}` as null: the same
        // contact must hash alike whichever store it was read from.
        let mut a = Contact::new("c1", "Ada");
        a.relationships = Some(serde_json::json!([]));
        a.custom_attributes = Some(serde_json::json!({}));
        a.llm_context = Some(serde_json::json!({"k": []}));
        a.normalize();
        assert_eq!(a.relationships, None);
        assert_eq!(a.custom_attributes, None);
        assert_eq!(
            a.llm_context,
            Some(serde_json::json!({"k": []})),
            "only the top level"
        );
        let mut b = Contact::new("c1", "Ada");
        b.llm_context = Some(serde_json::json!({"k": []}));
        b.normalize();
        assert_eq!(crate::content_hash(&a), crate::content_hash(&b));
    }
}
