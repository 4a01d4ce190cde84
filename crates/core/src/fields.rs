//! Typed access to the content fields ([`CONTENT_FIELDS`]), for the merge
//! and the diff: fields are compared and copied as Rust values, and turned
//! into JSON only when a change or a conflict records them (issue 18 item
//! 2: building three `serde_json` maps per merge was a tenth of the
//! engine's CPU under load).
//!
//! Equality is the JSON one the maps compared with: values are equal when
//! they serialize alike, so an absent JSON field and one holding `null`
//! are the same value (everything else here serializes one-to-one).

use serde_json::Value;

use crate::model::{Contact, CONTENT_FIELDS};

/// Compares two values of one field as their JSON forms would compare.
trait SameJson {
    fn same_json(&self, other: &Self) -> bool;
    /// Whether the value holds nothing: JSON `null`, `""`, `[]` or `{}`.
    fn blank(&self) -> bool;
}

macro_rules! plain_eq {
    ($($t:ty => |$v:ident| $blank:expr),* $(,)?) => {$(
        impl SameJson for $t {
            fn same_json(&self, other: &Self) -> bool {
                self == other
            }
            fn blank(&self) -> bool {
                let $v = self;
                $blank
            }
        }
    )*};
}
plain_eq!(
    String => |s| s.is_empty(),
    Option<String> => |s| s.as_deref().is_none_or(str::is_empty),
    Vec<String> => |v| v.is_empty(),
    Option<crate::model::Timestamp> => |t| t.is_none(),
    Vec<crate::model::Email> => |v| v.is_empty(),
    Vec<crate::model::Phone> => |v| v.is_empty(),
);

impl SameJson for Option<Value> {
    fn same_json(&self, other: &Self) -> bool {
        match (self, other) {
            (None | Some(Value::Null), None | Some(Value::Null)) => true,
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
    fn blank(&self) -> bool {
        match self {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            Some(_) => false,
        }
    }
}

/// One content field: its name and typed accessors.
pub(crate) struct Field {
    pub name: &'static str,
    /// Whether the two contacts hold the same value (as JSON).
    pub same: fn(&Contact, &Contact) -> bool,
    /// The value as JSON (`null` when absent).
    pub json: fn(&Contact) -> Value,
    /// Copies the value from the second contact into the first.
    pub take: fn(&mut Contact, &Contact),
    /// Whether the contact's value holds nothing (JSON `null`, `""`, `[]`
    /// or `{}`).
    pub blank: fn(&Contact) -> bool,
}

macro_rules! fields {
    ($($f:ident),* $(,)?) => {
        /// The content fields, in [`CONTENT_FIELDS`] order.
        pub(crate) const FIELDS: &[Field] = &[$(
            Field {
                name: stringify!($f),
                same: |a, b| a.$f.same_json(&b.$f),
                json: |c| serde_json::to_value(&c.$f).unwrap_or(Value::Null),
                take: |into, from| into.$f = from.$f.clone(),
                blank: |c| c.$f.blank(),
            },
        )*];
    };
}

fields!(
    canonical_name,
    display_name,
    first_name,
    middle_name,
    last_name,
    name_prefix,
    name_suffix,
    nickname,
    phonetic_name,
    organization,
    job_title,
    department,
    category_code,
    subcategory_code,
    relationship_label,
    notes,
    tags,
    source,
    created_at,
    llm_context,
    relationships,
    communication_stats,
    social_profiles,
    custom_attributes,
    emails,
    phones,
);

/// The content fields `before` holds a value in and `after` holds nothing
/// in (JSON `null`, `""`, `[]` or `{}`), in [`CONTENT_FIELDS`] order.
pub fn blanked_fields<'a>(
    before: &'a Contact,
    after: &'a Contact,
) -> impl Iterator<Item = &'static str> + 'a {
    FIELDS
        .iter()
        .filter(|f| !(f.blank)(before) && (f.blank)(after))
        .map(|f| f.name)
}

/// Whether every content field of `a` equals `b`'s (as JSON).
pub(crate) fn same_content(a: &Contact, b: &Contact) -> bool {
    FIELDS.iter().all(|f| (f.same)(a, b))
}

/// The JSON fields holding `null` made absent, as a trip through JSON
/// leaves them.
pub(crate) fn json_nulls_absent(c: &mut Contact) {
    for v in [
        &mut c.llm_context,
        &mut c.relationships,
        &mut c.communication_stats,
        &mut c.social_profiles,
        &mut c.custom_attributes,
    ] {
        if matches!(v, Some(Value::Null)) {
            *v = None;
        }
    }
}

// The list above is CONTENT_FIELDS, in its order (checked at compile time).
const _: () = {
    assert!(FIELDS.len() == CONTENT_FIELDS.len());
    let mut i = 0;
    while i < FIELDS.len() {
        let (a, b) = (FIELDS[i].name.as_bytes(), CONTENT_FIELDS[i].as_bytes());
        assert!(a.len() == b.len());
        let mut j = 0;
        while j < a.len() {
            assert!(a[j] == b[j]);
            j += 1;
        }
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contacts() -> Vec<Contact> {
        use crate::model::{parse_ts, Email, Phone};
        let mut a = Contact::new("c1", "Ada Lovelace");
        a.first_name = Some("Ada".into());
        a.tags = vec!["x".into(), "y".into()];
        a.created_at = parse_ts("2026-01-01T00:00:00.123456Z");
        a.llm_context = Some(json!({"closeness_level": 7, "key_interests": ["maths"]}));
        a.emails = vec![Email {
            address: "ada@example.com".into(),
            label: Some("work".into()),
            is_primary: true,
        }];
        a.phones = vec![Phone {
            number: "+441234567890".into(),
            label: None,
            is_primary: true,
        }];
        let mut b = a.clone();
        b.first_name = None;
        b.tags.pop();
        b.llm_context = Some(Value::Null);
        b.emails[0].label = None;
        b.phones[0].is_primary = false;
        b.created_at = parse_ts("2026-01-01T00:00:00.123457Z");
        let mut c = a.clone();
        c.llm_context = None;
        c.custom_attributes = Some(json!({"a": 1.5}));
        c.canonical_name = "Ada".into();
        let mut d = c.clone();
        d.custom_attributes = Some(json!({"a": 1}));
        d.llm_context = Some(Value::Null);
        let mut e = Contact::new("c3", "");
        e.notes = Some(String::new());
        e.llm_context = Some(json!({}));
        vec![a, b, c, d, e, Contact::new("c2", "Bob")]
    }

    #[test]
    fn typed_fields_agree_with_the_json_map() {
        let all = contacts();
        for a in &all {
            for b in &all {
                let (ja, jb) = (a.content_fields(), b.content_fields());
                for f in FIELDS {
                    assert_eq!(ja[f.name], (f.json)(a), "{}", f.name);
                    assert_eq!((f.same)(a, b), ja[f.name] == jb[f.name], "{}", f.name);
                    let mut c = a.clone();
                    (f.take)(&mut c, b);
                    assert_eq!(c.content_fields()[f.name], jb[f.name], "{}", f.name);
                }
                assert_eq!(same_content(a, b), ja == jb);
                let json_blank = |v: &Value| match v {
                    Value::Null => true,
                    Value::String(s) => s.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    Value::Object(o) => o.is_empty(),
                    _ => false,
                };
                let by_json: Vec<&str> = FIELDS
                    .iter()
                    .map(|f| f.name)
                    .filter(|n| !json_blank(&ja[*n]) && json_blank(&jb[*n]))
                    .collect();
                assert_eq!(blanked_fields(a, b).collect::<Vec<_>>(), by_json);
            }
        }
    }
}
