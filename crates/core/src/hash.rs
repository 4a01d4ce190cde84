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
    let mut h = Sha256::new();
    if c.is_deleted() {
        // A tombstone is a tombstone whatever content it still carries: two
        // stores that both deleted a contact agree.
        h.update(b"contact-sync tombstone");
        return hex::encode(h.finalize());
    }
    let fields = c.content_fields();
    // serde_json writes maps in insertion order (preserve_order), which is
    // canonical order here.
    let bytes = serde_json::to_vec(&fields).expect("JSON map always serializes");
    h.update(&bytes);
    hex::encode(h.finalize())
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
