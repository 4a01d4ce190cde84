//! Identity: deterministic ids for records that arrive without a
//! `contact_id`, and the keys used to match them to existing contacts.

use uuid::Uuid;

use crate::model::Contact;

/// Namespace for contact ids minted by contact-sync (UUID v5).
const CONTACT_NS: Uuid = Uuid::from_u128(0x6f1c_2a4e_8d3b_4c55_9a71_3e2f_0b8d_c417);

/// The id minted for a record first seen in `store` under its own id
/// `native_id`. Deterministic, so a retry after a crash mints the same id
/// and nothing is duplicated.
pub fn mint_contact_id(store: &str, native_id: &str) -> String {
    Uuid::new_v5(&CONTACT_NS, format!("{store}\u{1f}{native_id}").as_bytes()).to_string()
}

/// A deterministic UUID for `contact_id` in a store that needs ids of its
/// own (Twenty's person id): the same contact always gets the same id there,
/// which makes creates retry-safe.
pub fn store_uuid(store: &str, contact_id: &str) -> Uuid {
    Uuid::new_v5(&CONTACT_NS, format!("{store}\u{1e}{contact_id}").as_bytes())
}

/// Keys to match a record without `contact_id` against canonical, in order:
/// primary email (lower-cased), then primary phone (E.164).
pub fn match_keys(c: &Contact) -> Vec<MatchKey> {
    let mut keys = Vec::new();
    if let Some(e) = c.primary_email() {
        keys.push(MatchKey::Email(e.to_lowercase()));
    }
    if let Some(p) = c.primary_phone() {
        keys.push(MatchKey::Phone(p.to_string()));
    }
    keys
}

/// One identity key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MatchKey {
    Email(String),
    Phone(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_are_stable_and_distinct() {
        assert_eq!(mint_contact_id("local", "7"), mint_contact_id("local", "7"));
        assert_ne!(
            mint_contact_id("local", "7"),
            mint_contact_id("twenty", "7")
        );
        assert_ne!(store_uuid("twenty", "c1"), store_uuid("twenty", "c2"));
    }
}
