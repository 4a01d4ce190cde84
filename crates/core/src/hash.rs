//! Content hash: a stable fingerprint of a contact's content fields.
//!
//! The hash covers [`crate::model::CONTENT_FIELDS`] (all tombstones hash alike),
//! not the id or sync metadata (version, timestamps, origin), so the same
//! content read back from any store hashes the same. The echo filter and the
//! drift check compare these hashes.

use sha2::{Digest, Sha256};

use crate::model::Contact;

/// Hex SHA-256 over the normalized content fields, in canonical order.
///
/// The caller normalizes first ([`Contact::normalize`]); two contacts that
/// differ only in `""` versus absent would otherwise hash differently.
pub fn content_hash(c: &Contact) -> String {
    if c.is_deleted() {
        // A tombstone is a tombstone whatever content it still carries: two
        // stores that both deleted a contact agree.
        return tombstone_hash().to_string();
    }
    let mut h = Sha256::new();
    // Streams the content fields, in canonical order, straight into the
    // hasher: the same bytes as `serde_json::to_vec(&c.content_fields())`,
    // without building the intermediate JSON tree.
    serde_json::to_writer(HashWriter(&mut h), &ContentView::of(c))
        .expect("hashing never fails to write");
    hex::encode(h.finalize())
}

/// The content hash every tombstone has.
pub fn tombstone_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hex::encode(Sha256::digest(b"contact-sync tombstone")))
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The content fields by reference, in [`crate::model::CONTENT_FIELDS`] order.
#[derive(serde::Serialize)]
struct ContentView<'a> {
    canonical_name: &'a String,
    display_name: &'a Option<String>,
    first_name: &'a Option<String>,
    middle_name: &'a Option<String>,
    last_name: &'a Option<String>,
    name_prefix: &'a Option<String>,
    name_suffix: &'a Option<String>,
    nickname: &'a Option<String>,
    phonetic_name: &'a Option<String>,
    organization: &'a Option<String>,
    job_title: &'a Option<String>,
    department: &'a Option<String>,
    category_code: &'a Option<String>,
    subcategory_code: &'a Option<String>,
    relationship_label: &'a Option<String>,
    notes: &'a Option<String>,
    tags: &'a Vec<String>,
    source: &'a Option<String>,
    created_at: &'a Option<crate::model::Timestamp>,
    llm_context: &'a Option<serde_json::Value>,
    relationships: &'a Option<serde_json::Value>,
    communication_stats: &'a Option<serde_json::Value>,
    social_profiles: &'a Option<serde_json::Value>,
    custom_attributes: &'a Option<serde_json::Value>,
    emails: &'a Vec<crate::model::Email>,
    phones: &'a Vec<crate::model::Phone>,
}

impl<'a> ContentView<'a> {
    fn of(c: &'a Contact) -> Self {
        ContentView {
            canonical_name: &c.canonical_name,
            display_name: &c.display_name,
            first_name: &c.first_name,
            middle_name: &c.middle_name,
            last_name: &c.last_name,
            name_prefix: &c.name_prefix,
            name_suffix: &c.name_suffix,
            nickname: &c.nickname,
            phonetic_name: &c.phonetic_name,
            organization: &c.organization,
            job_title: &c.job_title,
            department: &c.department,
            category_code: &c.category_code,
            subcategory_code: &c.subcategory_code,
            relationship_label: &c.relationship_label,
            notes: &c.notes,
            tags: &c.tags,
            source: &c.source,
            created_at: &c.created_at,
            llm_context: &c.llm_context,
            relationships: &c.relationships,
            communication_stats: &c.communication_stats,
            social_profiles: &c.social_profiles,
            custom_attributes: &c.custom_attributes,
            emails: &c.emails,
            phones: &c.phones,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{now, Email};

    #[test]
    fn ignores_sync_metadata_but_not_content() {
        let mut a = Contact::new("c1", "Ada");
        a.emails.push(Email {
            address: "ada@example.com".into(),
            label: None,
            is_primary: true,
        });
        let mut b = a.clone();
        b.version = 7;
        b.last_updated = Some(now());
        b.last_updated_by = Some("twenty".into());
        assert_eq!(content_hash(&a), content_hash(&b));
        b.job_title = Some("Engineer".into());
        assert_ne!(content_hash(&a), content_hash(&b));
        let mut d = a.clone();
        d.deleted_at = Some(now());
        assert_ne!(content_hash(&a), content_hash(&d));
        let mut e = b.clone();
        e.deleted_at = Some(now());
        assert_eq!(
            content_hash(&d),
            content_hash(&e),
            "tombstones agree whatever their content"
        );
    }

    #[test]
    fn streamed_hash_equals_hash_of_the_content_map() {
        let mut a = Contact::new("c1", "Ada");
        a.tags = vec!["x".into()];
        a.llm_context = Some(serde_json::json!({"closeness_level": 3}));
        a.created_at = Some(now());
        // The content fields as one JSON object in canonical field order.
        let fields = a.content_fields();
        let members: Vec<String> = crate::model::CONTENT_FIELDS
            .iter()
            .map(|f| format!("{}:{}", serde_json::json!(f), fields[*f]))
            .collect();
        let bytes = format!("{{{}}}", members.join(","));
        assert_eq!(
            content_hash(&a),
            hex::encode(Sha256::digest(bytes.as_bytes()))
        );
    }

    #[test]
    fn json_key_order_does_not_matter_after_normalize() {
        let mut a = Contact::new("c1", "Ada");
        a.llm_context =
            Some(serde_json::from_str(r#"{"b":1,"a":{"z":1,"y":[{"q":1,"p":2}]}}"#).unwrap());
        let mut b = Contact::new("c1", "Ada");
        b.llm_context =
            Some(serde_json::from_str(r#"{"a":{"y":[{"p":2,"q":1}],"z":1},"b":1}"#).unwrap());
        a.normalize();
        b.normalize();
        assert_eq!(content_hash(&a), content_hash(&b));
    }

    #[test]
    fn normalized_forms_hash_alike() {
        let mut a = Contact::new("c1", "Ada");
        a.job_title = Some(String::new());
        a.emails.push(Email {
            address: "Ada@Example.com ".into(),
            label: None,
            is_primary: true,
        });
        a.normalize();
        let mut b = Contact::new("c1", "Ada");
        b.emails.push(Email {
            address: "ada@example.com".into(),
            label: None,
            is_primary: true,
        });
        assert_eq!(content_hash(&a), content_hash(&b));
    }
}
