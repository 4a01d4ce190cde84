//! Rows ↔ [`Contact`].
//!
//! One decoder serves both the live rows (`read`, `scan`) and the JSON
//! images the triggers record: both are turned into the same [`Raw`] values
//! first. A column that cannot be read as its field (broken JSON, a bad
//! timestamp, JSON of the wrong shape, a BLOB) is an [`Invalid`] naming the
//! record (its `contact_id`, or `row <id>` when it has none) and the field.

use contact_sync_core::model::{format_ts, parse_ts, ALL_FIELDS};
use contact_sync_core::pii::Reason;
use contact_sync_core::{Contact, Invalid, Timestamp};
use rusqlite::types::ValueRef;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Number of selected columns: the row id plus the 33 canonical fields.
pub(crate) const NCOLS: usize = 34;

/// One column value, borrowed from a row or a change image.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Raw<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a [u8]),
    Blob,
}

impl<'a> From<ValueRef<'a>> for Raw<'a> {
    fn from(v: ValueRef<'a>) -> Self {
        match v {
            ValueRef::Null => Raw::Null,
            ValueRef::Integer(i) => Raw::Int(i),
            ValueRef::Real(f) => Raw::Real(f),
            ValueRef::Text(t) => Raw::Text(t),
            ValueRef::Blob(_) => Raw::Blob,
        }
    }
}

impl<'a> From<&'a Value> for Raw<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::Null => Raw::Null,
            Value::Bool(b) => Raw::Int(i64::from(*b)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Raw::Int(i),
                None => Raw::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Raw::Text(s.as_bytes()),
            // json_object() never nests values from plain columns; treat
            // anything else as unreadable.
            Value::Array(_) | Value::Object(_) => Raw::Blob,
        }
    }
}

/// Reads the columns of a change image (`json_object` of the row) in
/// select order. Missing keys read as NULL.
pub(crate) fn raw_from_image(image: &serde_json::Map<String, Value>) -> [Raw<'_>; NCOLS] {
    let mut out = [Raw::Null; NCOLS];
    out[0] = image.get("id").map(Raw::from).unwrap_or(Raw::Null);
    for (i, f) in ALL_FIELDS.iter().enumerate() {
        out[i + 1] = image.get(*f).map(Raw::from).unwrap_or(Raw::Null);
    }
    out
}

/// The row id of a raw row, as text (`native_id`).
pub(crate) fn row_id_text(raw: &[Raw<'_>; NCOLS]) -> String {
    match raw[0] {
        Raw::Int(i) => i.to_string(),
        Raw::Text(t) => String::from_utf8_lossy(t).into_owned(),
        _ => String::new(),
    }
}

/// How the record is named in errors: its `contact_id`, else `row <id>`.
pub(crate) fn record_label(raw: &[Raw<'_>; NCOLS]) -> String {
    if let Raw::Text(t) = raw[1] {
        if let Ok(s) = std::str::from_utf8(t) {
            let s = s.trim();
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    format!("row {}", row_id_text(raw))
}

/// A field's reading failed: why (without the value, which is personal data).
type FieldResult<T> = Result<T, Reason>;

fn text(raw: Raw<'_>) -> FieldResult<Option<String>> {
    match raw {
        Raw::Null => Ok(None),
        Raw::Text(t) => std::str::from_utf8(t)
            .map(|s| Some(s.to_string()))
            .map_err(|_| Reason::plain("is not valid UTF-8 text")),
        Raw::Int(i) => Ok(Some(i.to_string())),
        Raw::Real(f) => Ok(Some(f.to_string())),
        Raw::Blob => Err(Reason::plain("holds a BLOB, expected text")),
    }
}

/// JSON text; blank text reads as absent.
fn json<T: DeserializeOwned>(raw: Raw<'_>) -> FieldResult<Option<T>> {
    match raw {
        Raw::Null => Ok(None),
        Raw::Text(t) if t.iter().all(u8::is_ascii_whitespace) => Ok(None),
        Raw::Text(t) => serde_json::from_slice(t).map(Some).map_err(|e| {
            // serde's message may quote the value: masked in logs.
            let e = e.to_string();
            Reason::quoting(|q| {
                format!("is not valid JSON of the expected shape: {}", q.detail(&e))
            })
        }),
        Raw::Int(_) | Raw::Real(_) => Err(Reason::plain("holds a number, expected JSON text")),
        Raw::Blob => Err(Reason::plain("holds a BLOB, expected JSON text")),
    }
}

fn timestamp(raw: Raw<'_>) -> FieldResult<Option<Timestamp>> {
    match raw {
        Raw::Null => Ok(None),
        Raw::Text(t) => {
            let s = std::str::from_utf8(t).map_err(|_| Reason::plain("is not valid UTF-8 text"))?;
            if s.trim().is_empty() {
                return Ok(None);
            }
            parse_ts(s).map(Some).ok_or_else(|| {
                Reason::plain("is not an RFC 3339 timestamp (or YYYY-MM-DD HH:MM:SS)")
            })
        }
        Raw::Int(_) | Raw::Real(_) => Err(Reason::plain(
            "holds a number, expected an RFC 3339 timestamp",
        )),
        Raw::Blob => Err(Reason::plain(
            "holds a BLOB, expected an RFC 3339 timestamp",
        )),
    }
}

fn version(raw: Raw<'_>) -> FieldResult<i64> {
    match raw {
        Raw::Null => Ok(1),
        Raw::Int(i) => Ok(i),
        Raw::Real(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        Raw::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| Reason::plain("is not an integer")),
        Raw::Real(_) | Raw::Blob => Err(Reason::plain("is not an integer")),
    }
}

/// Decodes a row (row id + 33 fields, in select order) into a normalized
/// contact. `contact_id` is `""` when the row has none.
pub(crate) fn decode(raw: &[Raw<'_>; NCOLS]) -> Result<Contact, Invalid> {
    // Column index of each field: ALL_FIELDS order, shifted by the row id.
    macro_rules! field {
        ($idx:expr, $name:expr, $f:expr) => {
            $f(raw[$idx])
                .map_err(|reason| Invalid::with_reason(record_label(raw), $name, reason))?
        };
    }
    debug_assert_eq!(ALL_FIELDS.len() + 1, NCOLS);
    let mut c = Contact::new("", "");
    c.contact_id = field!(1, "contact_id", text).unwrap_or_default();
    c.external_ids = field!(2, "external_ids", json).unwrap_or_default();
    c.canonical_name = field!(3, "canonical_name", text).unwrap_or_default();
    c.display_name = field!(4, "display_name", text);
    c.first_name = field!(5, "first_name", text);
    c.middle_name = field!(6, "middle_name", text);
    c.last_name = field!(7, "last_name", text);
    c.name_prefix = field!(8, "name_prefix", text);
    c.name_suffix = field!(9, "name_suffix", text);
    c.nickname = field!(10, "nickname", text);
    c.phonetic_name = field!(11, "phonetic_name", text);
    c.organization = field!(12, "organization", text);
    c.job_title = field!(13, "job_title", text);
    c.department = field!(14, "department", text);
    c.category_code = field!(15, "category_code", text);
    c.subcategory_code = field!(16, "subcategory_code", text);
    c.relationship_label = field!(17, "relationship_label", text);
    c.notes = field!(18, "notes", text);
    c.tags = field!(19, "tags", json).unwrap_or_default();
    c.source = field!(20, "source", text);
    c.created_at = field!(21, "created_at", timestamp);
    c.llm_context = field!(22, "llm_context", json);
    c.relationships = field!(23, "relationships", json);
    c.communication_stats = field!(24, "communication_stats", json);
    c.social_profiles = field!(25, "social_profiles", json);
    c.custom_attributes = field!(26, "custom_attributes", json);
    c.emails = field!(27, "emails", json).unwrap_or_default();
    c.phones = field!(28, "phones", json).unwrap_or_default();
    c.version = field!(29, "version", version);
    c.last_updated = field!(30, "last_updated", timestamp);
    c.last_updated_by = field!(31, "last_updated_by", text);
    c.deleted_at = field!(32, "deleted_at", timestamp);
    c.content_hash = field!(33, "content_hash", text);
    c.normalize();
    Ok(c)
}

/// A contact's values as written: the 33 fields in `ALL_FIELDS` order, then
/// the primary email and phone. The JSON buffers are reused from one write
/// to the next (one scratch per store), so a batch does not allocate a
/// fresh string per JSON field and row.
#[derive(Default)]
pub(crate) struct Encoded {
    json: [Vec<u8>; 9],
    ts: [Option<String>; 3],
    primary_email: Option<String>,
    primary_phone: Option<String>,
}

/// JSON text bound straight from a buffer; an empty buffer (an absent
/// value) is bound as NULL.
struct JsonText<'a>(&'a [u8]);

impl rusqlite::ToSql for JsonText<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(
            if self.0.is_empty() {
                ValueRef::Null
            } else {
                ValueRef::Text(self.0)
            },
        ))
    }
}

fn put_json<T: serde::Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) {
    buf.clear();
    // Contact's JSON-bearing fields are plain data (maps with string keys,
    // vectors, serde_json::Value): serializing them cannot fail.
    if serde_json::to_writer(&mut *buf, v).is_err() {
        buf.clear();
        buf.extend_from_slice(b"null");
    }
}

fn put_opt_json(buf: &mut Vec<u8>, v: &Option<Value>) {
    match v {
        None | Some(Value::Null) => buf.clear(),
        // Object keys come out sorted (serde_json's Map is a BTreeMap
        // here): a row decodes without re-sorting.
        Some(v) => put_json(buf, v),
    }
}

impl Encoded {
    /// Fills the scratch with `c`'s values.
    pub(crate) fn fill(&mut self, c: &Contact) {
        let [ext, tags, llm, rel, stats, social, custom, emails, phones] = &mut self.json;
        put_json(ext, &c.external_ids);
        put_json(tags, &c.tags);
        put_opt_json(llm, &c.llm_context);
        put_opt_json(rel, &c.relationships);
        put_opt_json(stats, &c.communication_stats);
        put_opt_json(social, &c.social_profiles);
        put_opt_json(custom, &c.custom_attributes);
        put_json(emails, &c.emails);
        put_json(phones, &c.phones);
        self.ts = [
            c.created_at.as_ref().map(format_ts),
            c.last_updated.as_ref().map(format_ts),
            c.deleted_at.as_ref().map(format_ts),
        ];
        self.primary_email = c.primary_email().map(|e| e.trim().to_lowercase());
        self.primary_phone = c.primary_phone().map(|p| p.trim().to_string());
    }

    /// Runs `f` with the 35 parameters of the insert/update statements, in
    /// order, for contact `c` (the one last [`fill`](Self::fill)ed).
    pub(crate) fn with_params<R>(
        &self,
        c: &Contact,
        f: impl FnOnce(&[&dyn rusqlite::ToSql; 35]) -> R,
    ) -> R {
        let j: [JsonText<'_>; 9] = [
            JsonText(&self.json[0]),
            JsonText(&self.json[1]),
            JsonText(&self.json[2]),
            JsonText(&self.json[3]),
            JsonText(&self.json[4]),
            JsonText(&self.json[5]),
            JsonText(&self.json[6]),
            JsonText(&self.json[7]),
            JsonText(&self.json[8]),
        ];
        let params: [&dyn rusqlite::ToSql; 35] = [
            &c.contact_id,
            &j[0],
            &c.canonical_name,
            &c.display_name,
            &c.first_name,
            &c.middle_name,
            &c.last_name,
            &c.name_prefix,
            &c.name_suffix,
            &c.nickname,
            &c.phonetic_name,
            &c.organization,
            &c.job_title,
            &c.department,
            &c.category_code,
            &c.subcategory_code,
            &c.relationship_label,
            &c.notes,
            &j[1],
            &c.source,
            &self.ts[0],
            &j[2],
            &j[3],
            &j[4],
            &j[5],
            &j[6],
            &j[7],
            &j[8],
            &c.version,
            &self.ts[1],
            &c.last_updated_by,
            &self.ts[2],
            &c.content_hash,
            &self.primary_email,
            &self.primary_phone,
        ];
        f(&params)
    }
}
