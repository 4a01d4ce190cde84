//! Validation rules of the canonical contact (DESIGN.md, "Validate").
//!
//! A record that fails goes to the dead-letter list with an [`Invalid`] that
//! names the record, the field and the reason; nothing else is held up.

use serde_json::Value;

use crate::model::{category_name, Contact};
use crate::pii::Reason;

/// Longest text field, in bytes.
pub const MAX_TEXT_BYTES: usize = 8 * 1024;
/// Longest `notes`, in bytes.
pub const MAX_NOTES_BYTES: usize = 64 * 1024;
/// Largest JSON field once serialized, in bytes.
pub const MAX_JSON_BYTES: usize = 256 * 1024;
/// Most entries in `tags`, `emails` or `phones`.
pub const MAX_LIST_LEN: usize = 100;

/// Why a record was refused: which record, which field, what is wrong.
///
/// `reason` is the full text, contact values included: it is what the dead
/// letter keeps, since a person needs the value to fix the record. Log
/// lines use [`log_reason`](Invalid::log_reason) (and this type's
/// `Display`), which masks the values unless PII logging is on (see
/// [`crate::pii`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The record's `contact_id`, or the store's own id when it has none.
    pub record: String,
    pub field: String,
    /// The full reason (for the state database, never for logs).
    pub reason: String,
    /// `reason` with its contact values masked; `None` when it quotes none.
    masked: Option<String>,
}

impl Invalid {
    /// A refusal whose reason quotes no contact data (`is missing`): logged
    /// as it is. Use [`with_reason`](Invalid::with_reason) and
    /// [`Reason::quoting`] for a reason that quotes a value.
    pub fn new(
        record: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::with_reason(record, field, Reason::plain(reason))
    }

    /// A refusal whose reason may quote contact values (masked in logs).
    pub fn with_reason(
        record: impl Into<String>,
        field: impl Into<String>,
        reason: Reason,
    ) -> Self {
        let record = record.into();
        let (reason, masked) = reason.into_parts();
        Invalid {
            record: if record.trim().is_empty() {
                "<no id>".to_string()
            } else {
                record
            },
            field: field.into(),
            reason,
            masked,
        }
    }

    /// The reason for a log line: its `Display` masks contact values unless
    /// PII logging is on.
    pub fn log_reason(&self) -> Reason {
        Reason::from_parts(self.reason.clone(), self.masked.clone())
    }
}

/// Checks every rule; returns the first violation found.
///
/// Call on a [`Contact::normalize`]d contact. Tombstones are checked only for
/// their identity: a delete must never be refused for stale content.
/// Why text holding a NUL byte is refused.
const NUL_REASON: &str = "contains a NUL character (\\0), which stores cannot keep alike";

/// Whether any string (or key) in a JSON value holds a NUL byte.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

pub fn validate(c: &Contact) -> Result<(), Invalid> {
    let bad = |field: &str, reason: String| Err(Invalid::new(&c.contact_id, field, reason));
    // A reason that quotes a value of the contact (masked in logs).
    let quoting =
        |field: &str, reason: Reason| Err(Invalid::with_reason(&c.contact_id, field, reason));
    if c.contact_id.trim().is_empty() {
        return bad("contact_id", "is missing".into());
    }
    if c.contact_id.len() > 256 {
        return bad(
            "contact_id",
            format!("is {} bytes, at most 256", c.contact_id.len()),
        );
    }
    if c.version < 1 {
        return bad("version", format!("is {}, must be at least 1", c.version));
    }
    if c.is_deleted() {
        return Ok(());
    }
    if c.canonical_name.trim().is_empty() {
        return bad("canonical_name", "is missing".into());
    }
    for (name, v) in [
        ("canonical_name", Some(&c.canonical_name)),
        ("display_name", c.display_name.as_ref()),
        ("first_name", c.first_name.as_ref()),
        ("middle_name", c.middle_name.as_ref()),
        ("last_name", c.last_name.as_ref()),
        ("name_prefix", c.name_prefix.as_ref()),
        ("name_suffix", c.name_suffix.as_ref()),
        ("nickname", c.nickname.as_ref()),
        ("phonetic_name", c.phonetic_name.as_ref()),
        ("organization", c.organization.as_ref()),
        ("job_title", c.job_title.as_ref()),
        ("department", c.department.as_ref()),
        ("relationship_label", c.relationship_label.as_ref()),
        ("source", c.source.as_ref()),
        ("last_updated_by", c.last_updated_by.as_ref()),
    ] {
        if let Some(s) = v {
            if s.contains('\0') {
                return bad(name, NUL_REASON.into());
            }
            if s.len() > MAX_TEXT_BYTES {
                return bad(
                    name,
                    format!("is {} bytes, at most {MAX_TEXT_BYTES}", s.len()),
                );
            }
        }
    }
    // A NUL byte is text no store keeps alike (Postgres refuses it, C
    // strings end there): refused at capture, naming the field.
    if c.notes.as_deref().is_some_and(|n| n.contains('\0')) {
        return bad("notes", NUL_REASON.into());
    }
    if c.tags.iter().any(|t| t.contains('\0')) {
        return bad("tags", NUL_REASON.into());
    }
    if c.emails
        .iter()
        .any(|e| e.address.contains('\0') || e.label.as_deref().is_some_and(|l| l.contains('\0')))
    {
        return bad("emails", NUL_REASON.into());
    }
    if c.phones
        .iter()
        .any(|p| p.number.contains('\0') || p.label.as_deref().is_some_and(|l| l.contains('\0')))
    {
        return bad("phones", NUL_REASON.into());
    }
    for (name, v) in [
        ("llm_context", &c.llm_context),
        ("relationships", &c.relationships),
        ("communication_stats", &c.communication_stats),
        ("social_profiles", &c.social_profiles),
        ("custom_attributes", &c.custom_attributes),
    ] {
        if v.as_ref().is_some_and(has_nul) {
            return bad(name, NUL_REASON.into());
        }
    }
    if let Some(n) = &c.notes {
        if n.len() > MAX_NOTES_BYTES {
            return bad(
                "notes",
                format!("is {} bytes, at most {MAX_NOTES_BYTES}", n.len()),
            );
        }
    }
    match (&c.category_code, &c.subcategory_code) {
        (Some(cat), sub) => {
            if category_name(cat).is_none() {
                return quoting(
                    "category_code",
                    Reason::quoting(|q| {
                        format!("{} is not one of A, B, C, D, E, F, G, H, X", q.text(cat))
                    }),
                );
            }
            if let Some(sub) = sub {
                if !sub.starts_with(cat.as_str()) || sub.len() == cat.len() {
                    // `cat` is one of the known codes here: no contact data.
                    return quoting(
                        "subcategory_code",
                        Reason::quoting(|q| {
                            format!(
                                "{} is not under category {cat:?} (expected e.g. {cat}1)",
                                q.text(sub)
                            )
                        }),
                    );
                }
                if sub.len() > 16 {
                    return quoting(
                        "subcategory_code",
                        Reason::quoting(|q| format!("{} is longer than 16 bytes", q.text(sub))),
                    );
                }
            }
        }
        (None, Some(sub)) => {
            return quoting(
                "subcategory_code",
                Reason::quoting(|q| format!("{} is set but category_code is missing", q.text(sub))),
            );
        }
        (None, None) => {}
    }
    for (name, len) in [
        ("tags", c.tags.len()),
        ("emails", c.emails.len()),
        ("phones", c.phones.len()),
    ] {
        if len > MAX_LIST_LEN {
            return bad(name, format!("has {len} entries, at most {MAX_LIST_LEN}"));
        }
    }
    for t in &c.tags {
        if t.len() > 256 {
            return bad("tags", format!("tag of {} bytes, at most 256", t.len()));
        }
    }
    for e in &c.emails {
        if !is_email(&e.address) {
            return quoting(
                "emails",
                Reason::quoting(|q| format!("{} is not an email address", q.text(&e.address))),
            );
        }
    }
    if c.emails.iter().filter(|e| e.is_primary).count() > 1 {
        return bad("emails", "more than one is marked primary".into());
    }
    for p in &c.phones {
        if !is_e164(&p.number) {
            return quoting(
                "phones",
                Reason::quoting(|q| {
                    format!(
                        "{} is not an E.164 number (+ and 8 to 15 digits)",
                        q.text(&p.number)
                    )
                }),
            );
        }
    }
    if c.phones.iter().filter(|p| p.is_primary).count() > 1 {
        return bad("phones", "more than one is marked primary".into());
    }
    for (name, v) in [
        ("llm_context", &c.llm_context),
        ("relationships", &c.relationships),
        ("communication_stats", &c.communication_stats),
        ("social_profiles", &c.social_profiles),
        ("custom_attributes", &c.custom_attributes),
    ] {
        if let Some(v) = v {
            if json_size_bound(v, MAX_JSON_BYTES) <= MAX_JSON_BYTES {
                continue;
            }
            let size = json_size(v);
            if size > MAX_JSON_BYTES {
                return bad(
                    name,
                    format!("is {size} bytes of JSON, at most {MAX_JSON_BYTES}"),
                );
            }
        }
    }
    if let Some(v) = &c.llm_context {
        check_llm_context(v).map_err(|(f, r)| Invalid::with_reason(&c.contact_id, f, r))?;
    }
    if let Some(v) = &c.relationships {
        check_relationships(v)
            .map_err(|r| Invalid::with_reason(&c.contact_id, "relationships", r))?;
    }
    for (name, v) in [
        ("communication_stats", &c.communication_stats),
        ("social_profiles", &c.social_profiles),
        ("custom_attributes", &c.custom_attributes),
    ] {
        if let Some(v) = v {
            if !v.is_object() {
                return bad(name, format!("must be a JSON object, found {}", kind(v)));
            }
        }
    }
    Ok(())
}

impl std::fmt::Display for Invalid {
    /// `contact <record>: field `<field>`: <reason>`, the reason as for a
    /// log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "contact {}: field `{}`: {}",
            self.record,
            self.field,
            self.log_reason()
        )
    }
}

impl std::error::Error for Invalid {}

/// A plausible email address: one `@`, a non-empty local part, a dotted
/// domain, no spaces.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && domain.len() <= 253
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// E.164: `+` then 8 to 15 digits, the first not 0.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// The exact length of `serde_json::to_string(v)`, without building the
/// string.
fn json_size(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    match serde_json::to_writer(&mut n, v) {
        Ok(()) => n.0,
        Err(_) => usize::MAX,
    }
}

/// An upper bound of [`json_size`], cheap to compute (no formatting): a
/// string counts 6 bytes per byte (`\u00XX`, the longest escape), a number
/// 32. Stops adding once past `limit` (the result is then just `> limit`).
fn json_size_bound(v: &Value, limit: usize) -> usize {
    match v {
        Value::Null => 4,
        Value::Bool(_) => 5,
        Value::Number(_) => 32,
        Value::String(s) => 2 + 6 * s.len(),
        Value::Array(items) => {
            let mut n = 2 + items.len();
            for item in items {
                n += json_size_bound(item, limit);
                if n > limit {
                    break;
                }
            }
            n
        }
        Value::Object(m) => {
            let mut n = 2 + 2 * m.len();
            for (k, item) in m {
                n += 2 + 6 * k.len() + json_size_bound(item, limit);
                if n > limit {
                    break;
                }
            }
            n
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_llm_context(v: &Value) -> Result<(), (String, Reason)> {
    let field = |k: &str| format!("llm_context.{k}");
    let plain = |f: String, r: String| Err((f, Reason::plain(r)));
    let Value::Object(m) = v else {
        return plain(
            "llm_context".into(),
            format!("must be a JSON object, found {}", kind(v)),
        );
    };
    for k in [
        "relationship_arc",
        "communication_style",
        "personality_notes",
        "how_met",
        "current_state",
    ] {
        if let Some(x) = m.get(k) {
            if !x.is_string() && !x.is_null() {
                return plain(field(k), format!("must be text, found {}", kind(x)));
            }
        }
    }
    for k in [
        "key_interests",
        "conversation_topics",
        "blind_spots",
        "strengths",
        "tensions",
    ] {
        if let Some(x) = m.get(k) {
            match x {
                Value::Null => {}
                Value::Array(items) => {
                    if let Some(bad) = items.iter().find(|i| !i.is_string()) {
                        return plain(field(k), format!("must hold text, found {}", kind(bad)));
                    }
                }
                other => {
                    return plain(
                        field(k),
                        format!("must be a list of text, found {}", kind(other)),
                    )
                }
            }
        }
    }
    for k in ["emotional_depth", "closeness_level"] {
        if let Some(x) = m.get(k) {
            if x.is_null() {
                continue;
            }
            match x.as_i64() {
                Some(n) if (1..=10).contains(&n) => {}
                _ => {
                    return Err((
                        field(k),
                        Reason::quoting(|q| {
                            format!("must be a whole number 1-10, found {}", q.json(x))
                        }),
                    ))
                }
            }
        }
    }
    if let Some(x) = m.get("important_dates") {
        match x {
            Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    let ok = item.is_object()
                        && item.get("date").is_some_and(Value::is_string)
                        && item.get("event").is_some_and(Value::is_string);
                    if !ok {
                        return Err((
                            field("important_dates"),
                            Reason::quoting(|q| {
                                format!(
                                    "each entry needs text `date` and `event`, found {}",
                                    q.json(item)
                                )
                            }),
                        ));
                    }
                }
            }
            other => {
                return plain(
                    field("important_dates"),
                    format!("must be a list, found {}", kind(other)),
                )
            }
        }
    }
    Ok(())
}

fn check_relationships(v: &Value) -> Result<(), Reason> {
    let Value::Array(items) = v else {
        return Err(Reason::plain(format!(
            "must be a JSON list, found {}",
            kind(v)
        )));
    };
    for item in items {
        if !item.get("contact_id").is_some_and(|x| x.is_string()) {
            return Err(Reason::quoting(|q| {
                format!(
                    "each entry needs a text `contact_id`, found {}",
                    q.json(item)
                )
            }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Email, Phone};
    use serde_json::json;

    fn ok() -> Contact {
        let mut c = Contact::new("c1", "Ada Lovelace");
        c.category_code = Some("B".into());
        c.subcategory_code = Some("B2".into());
        c.emails.push(Email {
            address: "ada@example.com".into(),
            label: None,
            is_primary: true,
        });
        c.phones.push(Phone {
            number: "+442071234567".into(),
            label: None,
            is_primary: true,
        });
        c.llm_context = Some(json!({"closeness_level": 7, "key_interests": ["maths"]}));
        c
    }

    fn err(c: &Contact) -> Invalid {
        validate(c).expect_err("should be invalid")
    }

    #[test]
    fn accepts_a_good_contact() {
        validate(&ok()).unwrap();
    }

    #[test]
    fn the_reason_keeps_the_value_and_the_log_form_masks_it() {
        let mut c = ok();
        c.emails[0].address = "ada.secret@example".into();
        let e = err(&c);
        assert_eq!(e.reason, r#""ada.secret@example" is not an email address"#);
        let log = e.log_reason();
        assert_eq!(log.for_log(false), r#""a***@e***" is not an email address"#);
        assert_eq!(log.for_log(true), e.reason);

        let mut c = ok();
        c.phones[0].number = "020 7123 4567".into();
        let log = err(&c).log_reason();
        assert!(!log.for_log(false).contains("7123"), "{}", log.masked());

        let mut c = ok();
        c.llm_context = Some(json!({"important_dates": [{"date": "1815-12-10"}]}));
        let e = err(&c);
        assert!(e.reason.contains("1815-12-10"), "{}", e.reason);
        assert!(!e.log_reason().masked().contains("1815"), "{}", e.reason);

        // A reason without contact data is logged as it is.
        let mut c = ok();
        c.canonical_name = String::new();
        assert_eq!(err(&c).log_reason().masked(), "is missing");
    }

    #[test]
    fn names_the_record_and_field() {
        let mut c = ok();
        c.canonical_name = String::new();
        let e = err(&c);
        assert_eq!(
            (e.record.as_str(), e.field.as_str()),
            ("c1", "canonical_name")
        );
        assert_eq!(
            e.to_string(),
            "contact c1: field `canonical_name`: is missing"
        );

        let mut c = ok();
        c.category_code = Some("Q".into());
        assert_eq!(err(&c).field, "category_code");

        let mut c = ok();
        c.subcategory_code = Some("C2".into());
        let e = err(&c);
        assert_eq!(e.field, "subcategory_code");
        assert!(e.reason.contains("not under category"), "{e}");

        let mut c = ok();
        c.emails[0].address = "not-an-email".into();
        assert_eq!(err(&c).field, "emails");

        let mut c = ok();
        c.phones[0].number = "020 7123 4567".into();
        assert_eq!(err(&c).field, "phones");

        let mut c = ok();
        c.llm_context = Some(json!({"closeness_level": 11}));
        assert_eq!(err(&c).field, "llm_context.closeness_level");

        let mut c = ok();
        c.notes = Some("x".repeat(MAX_NOTES_BYTES + 1));
        assert_eq!(err(&c).field, "notes");

        let mut c = ok();
        c.contact_id = " ".into();
        assert_eq!(err(&c).record, "<no id>");
    }

    #[test]
    fn json_size_matches_serialization_and_bound_covers_it() {
        let values = [
            json!(null),
            json!(true),
            json!(-9_223_372_036_854_775_808i64),
            json!(u64::MAX),
            json!(-1.234_567_890_123_456_7e-300),
            json!("plain"),
            json!("\u{0}\u{1f}\"\\\n tab\t ünïcödé ✓"),
            json!([]),
            json!({}),
            json!({"a": [1, 2.5, "x\u{7}"], "\u{1}key": {"n": null, "b": false}}),
        ];
        for v in &values {
            let exact = serde_json::to_string(v).unwrap().len();
            assert_eq!(json_size(v), exact, "{v}");
            assert!(json_size_bound(v, usize::MAX) >= exact, "{v}");
        }
    }

    #[test]
    fn oversize_json_is_refused_at_the_exact_limit() {
        // A JSON string of exactly MAX_JSON_BYTES bytes once serialized
        // passes; one byte more does not.
        let fits = "x".repeat(MAX_JSON_BYTES - 2 - r#"{"k":}"#.len());
        let mut c = ok();
        c.custom_attributes = Some(json!({ "k": fits }));
        validate(&c).unwrap();
        c.custom_attributes = Some(json!({ "k": format!("{fits}y") }));
        let e = err(&c);
        assert_eq!(e.field, "custom_attributes");
        assert!(
            e.reason
                .contains(&format!("is {} bytes", MAX_JSON_BYTES + 1)),
            "{e}"
        );
    }

    #[test]
    fn tombstones_need_only_identity() {
        let mut c = ok();
        c.canonical_name = String::new();
        c.deleted_at = Some(crate::model::now());
        validate(&c).unwrap();
    }

    #[test]
    fn nul_bytes_are_refused_naming_the_field() {
        let mut c = Contact::new("c1", "Ada");
        c.nickname = Some("ab\0cd".into());
        let e = validate(&c).unwrap_err();
        assert_eq!((e.record.as_str(), e.field.as_str()), ("c1", "nickname"));
        assert!(e.reason.contains("NUL"), "{}", e.reason);
        let mut c = Contact::new("c1", "Ada");
        c.llm_context = Some(serde_json::json!({"a": ["x\0"]}));
        assert_eq!(validate(&c).unwrap_err().field, "llm_context");
        let mut c = Contact::new("c1", "Ada");
        c.tags = vec!["t\0".into()];
        assert_eq!(validate(&c).unwrap_err().field, "tags");
    }
}
