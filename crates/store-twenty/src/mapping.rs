//! Contact ↔ Twenty Person.
//!
//! Twenty's own fields carry what they can, exactly:
//! `name {firstName,lastName}`, `emails {primaryEmail, additionalEmails}`,
//! `phones {primaryPhoneNumber, primaryPhoneCountryCode,
//! primaryPhoneCallingCode, additionalPhones}`, `jobTitle`, `linkedinLink`
//! (from `social_profiles.linkedin`), `companyId` (the Company named by
//! `organization`). Every other canonical field lives in a custom field on
//! Person ([`CUSTOM_FIELDS`]), created by `migrate`.
//!
//! Reading back undoes Twenty's rewrites (`""` for null text, lower-cased
//! emails) and reconciles the composite fields (what users edit in Twenty)
//! with the detail fields (labels, order, primary flags), so a record we
//! wrote and nobody touched reads back with the same content hash: no echo,
//! no endless updates. Twenty 2.21's Person has no `xLink`; X/Twitter
//! profiles stay in `social_profiles`.

use contact_sync_core::model::{format_ts, parse_ts};
use contact_sync_core::pii::Reason;
use contact_sync_core::{Contact, Email, Invalid, Phone};
use serde_json::{json, Map, Value};

/// One custom field the store needs on Person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomFieldSpec {
    /// Field name in Twenty (camelCase).
    pub name: &'static str,
    /// Twenty field type (`TEXT`, `NUMBER`, `RAW_JSON`).
    pub ty: &'static str,
    /// Label shown in Twenty.
    pub label: &'static str,
    /// Created with `isUnique` (upsert matches on it).
    pub unique: bool,
    /// The canonical field it holds.
    pub canonical: &'static str,
}

const fn text(name: &'static str, label: &'static str, canonical: &'static str) -> CustomFieldSpec {
    CustomFieldSpec {
        name,
        ty: "TEXT",
        label,
        unique: false,
        canonical,
    }
}
const fn raw(name: &'static str, label: &'static str, canonical: &'static str) -> CustomFieldSpec {
    CustomFieldSpec {
        name,
        ty: "RAW_JSON",
        label,
        unique: false,
        canonical,
    }
}

/// The custom fields on Person, in creation order. Timestamps are TEXT
/// (RFC 3339, microseconds) because Twenty's DATE_TIME keeps only
/// milliseconds and the content hash needs them exact.
pub const CUSTOM_FIELDS: &[CustomFieldSpec] = &[
    CustomFieldSpec {
        name: "contactId",
        ty: "TEXT",
        label: "Contact ID",
        unique: true,
        canonical: "contact_id",
    },
    text("canonicalName", "Canonical name", "canonical_name"),
    text("displayName", "Display name", "display_name"),
    text("middleName", "Middle name", "middle_name"),
    text("namePrefix", "Name prefix", "name_prefix"),
    text("nameSuffix", "Name suffix", "name_suffix"),
    text("nickname", "Nickname", "nickname"),
    text("phoneticName", "Phonetic name", "phonetic_name"),
    text("organization", "Organization", "organization"),
    text("department", "Department", "department"),
    text("category", "Category", "category_code"),
    text("subcategory", "Subcategory", "subcategory_code"),
    text("relationshipLabel", "Relationship", "relationship_label"),
    text("contactNotes", "Contact notes", "notes"),
    raw("contactTags", "Tags", "tags"),
    text("contactSource", "Source", "source"),
    text("contactCreatedAt", "Contact created at", "created_at"),
    raw("llmContext", "LLM context", "llm_context"),
    raw("contactRelationships", "Relationships", "relationships"),
    raw(
        "communicationStats",
        "Communication stats",
        "communication_stats",
    ),
    raw("socialProfiles", "Social profiles", "social_profiles"),
    raw("customAttributes", "Custom attributes", "custom_attributes"),
    raw("emailDetails", "Email details", "emails"),
    raw("phoneDetails", "Phone details", "phones"),
    CustomFieldSpec {
        name: "contactVersion",
        ty: "NUMBER",
        label: "Contact version",
        unique: false,
        canonical: "version",
    },
    text("lastUpdatedBy", "Last updated by", "last_updated_by"),
    text("contactDeletedAt", "Contact deleted at", "deleted_at"),
];

// ---------- phones ----------

/// Calling codes the split falls back on when libphonenumber's metadata
/// cannot parse a number (too short, an unassigned range): the calling
/// code is still split off, the country left out.
const CALLING_CODES: &[&str] = &[
    "1", "7", "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45",
    "46", "47", "48", "49", "51", "52", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64",
    "65", "66", "81", "82", "84", "86", "90", "91", "92", "94", "98", "212", "213", "216", "234",
    "254", "351", "352", "353", "354", "358", "359", "370", "371", "372", "380", "385", "386",
    "420", "421", "852", "886", "966", "971", "972", "974",
];

/// Splits an E.164 number into (national number, country code, calling
/// code), e.g. `+14165550143` → (`4165550143`, `CA`, `+1`).
///
/// The country is the one libphonenumber's metadata (the `phonenumber`
/// crate) infers from the number itself, never a guess from the calling
/// code: Twenty 2.21 checks `primaryPhoneCountryCode` against the number
/// and refuses a conflict (issue 13, observation 2: +1 416… sent as `US`
/// → 400 `CONFLICTING_PHONE_COUNTRY_CODE`; `CA` → 201). When the number
/// does not name one country (or cannot be parsed) the country is left
/// empty, which Twenty accepts. A number whose calling code is unknown is
/// kept whole in the national part, so it always reads back unchanged.
pub fn split_phone(e164: &str) -> (String, String, String) {
    let Some(digits) = e164.strip_prefix('+') else {
        return (e164.to_string(), String::new(), String::new());
    };
    if let Ok(n) = phonenumber::parse(None, e164) {
        let cc = n.code().value().to_string();
        if let Some(rest) = digits.strip_prefix(cc.as_str()) {
            if !rest.is_empty() {
                let country = n
                    .country()
                    .id()
                    .map(|id| id.as_ref().to_string())
                    .unwrap_or_default();
                return (rest.to_string(), country, format!("+{cc}"));
            }
        }
    }
    for len in [3, 2, 1] {
        if digits.len() > len {
            let (cc, rest) = digits.split_at(len);
            if CALLING_CODES.contains(&cc) {
                return (rest.to_string(), String::new(), format!("+{cc}"));
            }
        }
    }
    (e164.to_string(), String::new(), String::new())
}

/// The inverse of [`split_phone`], for numbers read from Twenty (a user may
/// type a national number with spaces; those are dropped).
pub fn join_phone(number: &str, calling_code: &str) -> String {
    let n = number.trim();
    if n.is_empty() {
        return String::new();
    }
    if n.starts_with('+') {
        return n
            .chars()
            .filter(|c| *c == '+' || c.is_ascii_digit())
            .collect();
    }
    let digits: String = n.chars().filter(char::is_ascii_digit).collect();
    let cc = calling_code.trim();
    if cc.is_empty() {
        digits
    } else if cc.starts_with('+') {
        format!("{cc}{digits}")
    } else {
        format!("+{cc}{digits}")
    }
}

// ---------- social profiles ----------

/// The LinkedIn URL in `social_profiles` (`{"linkedin": "url"}` or
/// `{"linkedin": {"url": …}}`, key case-insensitive).
pub fn linkedin_url(social: Option<&Value>) -> Option<String> {
    let obj = social?.as_object()?;
    let (_, v) = obj
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("linkedin"))?;
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Object(o) => o
            .get("url")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        _ => None,
    }
}

fn set_linkedin(social: &mut Option<Value>, url: Option<&str>) {
    match url {
        None => {
            if let Some(Value::Object(o)) = social {
                let key = o
                    .keys()
                    .find(|k| k.eq_ignore_ascii_case("linkedin"))
                    .cloned();
                if let Some(k) = key {
                    o.remove(&k);
                }
            }
        }
        Some(u) => {
            let obj = match social {
                Some(Value::Object(o)) => o,
                _ => {
                    *social = Some(Value::Object(Map::new()));
                    match social {
                        Some(Value::Object(o)) => o,
                        _ => return,
                    }
                }
            };
            let key = obj
                .keys()
                .find(|k| k.eq_ignore_ascii_case("linkedin"))
                .cloned()
                .unwrap_or_else(|| "linkedin".to_string());
            match obj.get_mut(&key) {
                Some(Value::Object(inner)) => {
                    inner.insert("url".into(), json!(u));
                }
                _ => {
                    obj.insert(key, json!(u));
                }
            }
        }
    }
}

// ---------- Contact → Person ----------

fn opt_text(v: &Option<String>) -> Value {
    json!(v.as_deref().unwrap_or(""))
}

fn opt_json(v: &Option<Value>) -> Value {
    v.clone().unwrap_or(Value::Null)
}

/// The Person body for a contact (every mapped field, so a write is
/// complete and idempotent). `company_id` links the Company named by
/// `organization`; `None` leaves `companyId` as it is in Twenty.
pub fn contact_to_person(c: &Contact, company_id: Option<&str>) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert(
        "name".into(),
        json!({"firstName": c.first_name.as_deref().unwrap_or(""), "lastName": c.last_name.as_deref().unwrap_or("")}),
    );
    let primary = c.primary_email().map(|e| e.trim().to_lowercase());
    let mut additional: Vec<String> = Vec::new();
    let mut skipped = false;
    for e in &c.emails {
        let a = e.address.trim().to_lowercase();
        if !skipped && Some(&a) == primary.as_ref() {
            skipped = true;
            continue;
        }
        additional.push(a);
    }
    p.insert(
        "emails".into(),
        json!({"primaryEmail": primary.unwrap_or_default(), "additionalEmails": additional}),
    );
    let primary_phone = c.primary_phone().map(str::to_string);
    let (num, country, calling) = primary_phone
        .as_deref()
        .map(split_phone)
        .unwrap_or_default();
    let mut extra = Vec::new();
    let mut skipped = false;
    for ph in &c.phones {
        if !skipped && Some(&ph.number) == primary_phone.as_ref() {
            skipped = true;
            continue;
        }
        let (n, co, ca) = split_phone(&ph.number);
        extra.push(json!({"number": n, "countryCode": co, "callingCode": ca}));
    }
    p.insert(
        "phones".into(),
        json!({"primaryPhoneNumber": num, "primaryPhoneCountryCode": country, "primaryPhoneCallingCode": calling, "additionalPhones": extra}),
    );
    p.insert("jobTitle".into(), opt_text(&c.job_title));
    p.insert(
        "linkedinLink".into(),
        json!({"primaryLinkUrl": linkedin_url(c.social_profiles.as_ref()).unwrap_or_default()}),
    );
    if let Some(id) = company_id {
        p.insert("companyId".into(), json!(id));
    }
    for f in CUSTOM_FIELDS {
        let v = match f.canonical {
            "contact_id" => json!(c.contact_id),
            "canonical_name" => json!(c.canonical_name),
            "display_name" => opt_text(&c.display_name),
            "middle_name" => opt_text(&c.middle_name),
            "name_prefix" => opt_text(&c.name_prefix),
            "name_suffix" => opt_text(&c.name_suffix),
            "nickname" => opt_text(&c.nickname),
            "phonetic_name" => opt_text(&c.phonetic_name),
            "organization" => opt_text(&c.organization),
            "department" => opt_text(&c.department),
            "category_code" => opt_text(&c.category_code),
            "subcategory_code" => opt_text(&c.subcategory_code),
            "relationship_label" => opt_text(&c.relationship_label),
            "notes" => opt_text(&c.notes),
            "tags" => json!(c.tags),
            "source" => opt_text(&c.source),
            "created_at" => json!(c.created_at.as_ref().map(format_ts).unwrap_or_default()),
            "llm_context" => opt_json(&c.llm_context),
            "relationships" => opt_json(&c.relationships),
            "communication_stats" => opt_json(&c.communication_stats),
            "social_profiles" => opt_json(&c.social_profiles),
            "custom_attributes" => opt_json(&c.custom_attributes),
            "emails" => serde_json::to_value(&c.emails).unwrap_or(Value::Null),
            "phones" => serde_json::to_value(&c.phones).unwrap_or(Value::Null),
            "version" => json!(c.version),
            "last_updated_by" => opt_text(&c.last_updated_by),
            "deleted_at" => json!(c.deleted_at.as_ref().map(format_ts).unwrap_or_default()),
            _ => continue,
        };
        p.insert(f.name.to_string(), v);
    }
    p
}

// ---------- Person → Contact ----------

fn s<'a>(p: &'a Value, ptr: &str) -> &'a str {
    p.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn opt(p: &Value, field: &str) -> Option<String> {
    let v = s(p, &format!("/{field}")).trim();
    (!v.is_empty()).then(|| v.to_string())
}

fn json_field(p: &Value, field: &str) -> Option<Value> {
    match p.get(field) {
        None | Some(Value::Null) => None,
        // A RAW_JSON value that arrives as a JSON string holding JSON.
        Some(Value::String(st)) if st.trim().is_empty() => None,
        Some(v) => Some(v.clone()),
    }
}

/// The person's id.
pub fn person_id(p: &Value) -> &str {
    s(p, "/id")
}

/// The person's `updatedAt`, as Twenty wrote it.
pub fn person_updated_at(p: &Value) -> &str {
    s(p, "/updatedAt")
}

/// Reads a Person as a normalized Contact. `contact_id` is empty for people
/// created in Twenty (no `contactId` yet). `external_ids[store]` holds the
/// person id. An error names the person and the field that cannot be read.
pub fn person_to_contact(p: &Value, store: &str) -> Result<Contact, Invalid> {
    let pid = person_id(p).to_string();
    let contact_id = s(p, "/contactId").trim().to_string();
    let rec = if contact_id.is_empty() {
        pid.clone()
    } else {
        contact_id.clone()
    };
    // Reasons quote the person's values: masked in logs (see core's `pii`).
    let bad = |field: &str, reason: Reason| Invalid::with_reason(&rec, field, reason);

    let first = opt(p, "name/firstName");
    let last = opt(p, "name/lastName");
    let primary_email = s(p, "/emails/primaryEmail").trim().to_lowercase();
    let canonical = match opt(p, "canonicalName") {
        Some(n) => n,
        None => {
            let joined = [first.as_deref(), last.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            if joined.trim().is_empty() {
                primary_email.clone()
            } else {
                joined
            }
        }
    };
    let mut c = Contact::new(contact_id, canonical);
    if !pid.is_empty() {
        c.external_ids.insert(store.to_string(), pid.clone());
    }
    c.first_name = first;
    c.last_name = last;
    c.display_name = opt(p, "displayName");
    c.middle_name = opt(p, "middleName");
    c.name_prefix = opt(p, "namePrefix");
    c.name_suffix = opt(p, "nameSuffix");
    c.nickname = opt(p, "nickname");
    c.phonetic_name = opt(p, "phoneticName");
    c.organization = opt(p, "organization");
    c.job_title = opt(p, "jobTitle");
    c.department = opt(p, "department");
    c.category_code = opt(p, "category");
    c.subcategory_code = opt(p, "subcategory");
    c.relationship_label = opt(p, "relationshipLabel");
    c.notes = opt(p, "contactNotes");
    c.source = opt(p, "contactSource");
    c.tags = match json_field(p, "contactTags") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|t| match t {
                Value::String(s) => Ok(s),
                other => Err(bad(
                    "tags",
                    Reason::quoting(|q| format!("tag is not a string: {}", q.json(&other))),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(bad(
                "tags",
                Reason::quoting(|q| {
                    format!("expected an array of strings, got {}", q.json(&other))
                }),
            ))
        }
    };
    c.created_at = match opt(p, "contactCreatedAt") {
        None => None,
        Some(t) => Some(parse_ts(&t).ok_or_else(|| {
            bad(
                "created_at",
                Reason::quoting(|q| format!("not a timestamp: {}", q.text(&t))),
            )
        })?),
    };
    c.llm_context = json_field(p, "llmContext");
    c.relationships = json_field(p, "contactRelationships");
    c.communication_stats = json_field(p, "communicationStats");
    c.custom_attributes = json_field(p, "customAttributes");
    let mut social = json_field(p, "socialProfiles");
    let linked = s(p, "/linkedinLink/primaryLinkUrl").trim().to_string();
    if linkedin_url(social.as_ref()).unwrap_or_default() != linked {
        set_linkedin(&mut social, (!linked.is_empty()).then_some(linked.as_str()));
        if matches!(&social, Some(Value::Object(o)) if o.is_empty()) {
            social = None;
        }
    }
    c.social_profiles = social;

    // Emails: the composite (what users edit) decides the addresses; the
    // details keep labels, order and primary flags while they agree.
    let mut composite: Vec<String> = Vec::new();
    if !primary_email.is_empty() {
        composite.push(primary_email.clone());
    }
    if let Some(a) = p
        .pointer("/emails/additionalEmails")
        .and_then(Value::as_array)
    {
        composite.extend(
            a.iter()
                .filter_map(Value::as_str)
                .map(|e| e.trim().to_lowercase())
                .filter(|e| !e.is_empty()),
        );
    }
    let details: Vec<Email> = json_field(p, "emailDetails")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let mut detail_addrs: Vec<String> = details
        .iter()
        .map(|e| e.address.trim().to_lowercase())
        .collect();
    let mut sorted_comp = composite.clone();
    detail_addrs.sort();
    sorted_comp.sort();
    let detail_primary = {
        let mut tmp = Contact::new("", "");
        tmp.emails = details.clone();
        tmp.primary_email().map(|e| e.trim().to_lowercase())
    };
    c.emails = if detail_addrs == sorted_comp
        && detail_primary.as_deref().unwrap_or("") == primary_email
    {
        details
    } else {
        composite
            .iter()
            .enumerate()
            .map(|(i, a)| Email {
                address: a.clone(),
                label: details
                    .iter()
                    .find(|d| d.address.trim().eq_ignore_ascii_case(a))
                    .and_then(|d| d.label.clone()),
                is_primary: i == 0 && !primary_email.is_empty(),
            })
            .collect()
    };

    // Phones, the same way, compared as E.164.
    let primary_phone = join_phone(
        s(p, "/phones/primaryPhoneNumber"),
        s(p, "/phones/primaryPhoneCallingCode"),
    );
    let mut composite: Vec<String> = Vec::new();
    if !primary_phone.is_empty() {
        composite.push(primary_phone.clone());
    }
    if let Some(a) = p
        .pointer("/phones/additionalPhones")
        .and_then(Value::as_array)
    {
        for ph in a {
            let n = join_phone(
                ph.get("number").and_then(Value::as_str).unwrap_or(""),
                ph.get("callingCode").and_then(Value::as_str).unwrap_or(""),
            );
            if !n.is_empty() {
                composite.push(n);
            }
        }
    }
    let details: Vec<Phone> = json_field(p, "phoneDetails")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let mut detail_nums: Vec<String> = details
        .iter()
        .map(|d| d.number.trim().to_string())
        .collect();
    let mut sorted_comp = composite.clone();
    detail_nums.sort();
    sorted_comp.sort();
    let detail_primary = {
        let mut tmp = Contact::new("", "");
        tmp.phones = details.clone();
        tmp.primary_phone().map(|n| n.trim().to_string())
    };
    c.phones =
        if detail_nums == sorted_comp && detail_primary.as_deref().unwrap_or("") == primary_phone {
            details
        } else {
            composite
                .iter()
                .enumerate()
                .map(|(i, n)| Phone {
                    number: n.clone(),
                    label: details
                        .iter()
                        .find(|d| d.number.trim() == n)
                        .and_then(|d| d.label.clone()),
                    is_primary: i == 0 && !primary_phone.is_empty(),
                })
                .collect()
        };

    c.version = match p.get("contactVersion") {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .filter(|v| *v >= 1)
            .unwrap_or(1),
        _ => 1,
    };
    c.last_updated = parse_ts(person_updated_at(p));
    c.last_updated_by = opt(p, "lastUpdatedBy");
    let deleted = s(p, "/deletedAt");
    c.deleted_at = if deleted.is_empty() {
        None
    } else {
        opt(p, "contactDeletedAt")
            .and_then(|t| parse_ts(&t))
            .or_else(|| parse_ts(deleted))
    };
    c.normalize();
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use contact_sync_core::content_hash;

    #[test]
    fn phones_split_and_join_losslessly() {
        assert_eq!(
            split_phone("+12025550143"),
            ("2025550143".into(), "US".into(), "+1".into())
        );
        // Issue 13, observation 2: +1 416 is Canada, not the US.
        assert_eq!(
            split_phone("+14165550143"),
            ("4165550143".into(), "CA".into(), "+1".into())
        );
        assert_eq!(split_phone("+493012345").2, "+49");
        assert_eq!(split_phone("+3531234567").2, "+353");
        for n in ["+12025550143", "+493012345", "+99912345678", "+3531234567"] {
            let (num, _, cc) = split_phone(n);
            assert_eq!(join_phone(&num, &cc), n);
        }
        assert_eq!(join_phone("202 555 0143", "+1"), "+12025550143");
    }

    #[test]
    fn linkedin_follows_social_profiles_both_ways() {
        let sp =
            json!({"linkedin": {"url": "https://linkedin.com/in/a", "handle": "a"}, "x": "@a"});
        assert_eq!(
            linkedin_url(Some(&sp)).as_deref(),
            Some("https://linkedin.com/in/a")
        );
        let mut v = Some(sp);
        set_linkedin(&mut v, Some("https://linkedin.com/in/b"));
        assert_eq!(
            v.as_ref().unwrap()["linkedin"]["url"],
            "https://linkedin.com/in/b"
        );
        set_linkedin(&mut v, None);
        assert_eq!(v, Some(json!({"x": "@a"})));
    }

    #[test]
    fn user_edits_in_composites_win_over_details() {
        let mut c = Contact::new("c1", "Ada Lovelace");
        c.emails = vec![
            Email {
                address: "ada@example.com".into(),
                label: Some("work".into()),
                is_primary: true,
            },
            Email {
                address: "a@example.org".into(),
                label: Some("home".into()),
                is_primary: false,
            },
        ];
        let mut p = Value::Object(contact_to_person(&c, None));
        p["id"] = json!("p1");
        p["updatedAt"] = json!("2026-01-01T00:00:00.000Z");
        p["deletedAt"] = Value::Null;
        let back = person_to_contact(&p, "twenty").unwrap();
        let mut norm = c.clone();
        norm.normalize();
        assert_eq!(content_hash(&back), content_hash(&norm));
        // A user removes the second address in Twenty.
        p["emails"]["additionalEmails"] = json!([]);
        let edited = person_to_contact(&p, "twenty").unwrap();
        assert_eq!(edited.emails.len(), 1);
        assert_eq!(edited.emails[0].label.as_deref(), Some("work"));
    }
}
