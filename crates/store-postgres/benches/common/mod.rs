//! Shared by the Postgres benches: the synthetic contact they write.

use contact_sync_core::model::now;
use contact_sync_core::{Contact, Email, Phone};
use serde_json::json;

/// The `i`-th bench contact, normalized and carrying its content hash.
pub fn contact(i: usize) -> Contact {
    let mut c = Contact::new(format!("c-{i:08}"), format!("Person {i}"));
    c.first_name = Some(format!("First{i}"));
    c.last_name = Some(format!("Last{}", i % 977));
    c.organization = Some(format!("Org {}", i % 311));
    c.job_title = Some("Engineer".into());
    c.category_code = Some("G".into());
    c.subcategory_code = Some("G2".into());
    c.notes = Some(format!(
        "Met at conference #{}; follow up about project {}.",
        i % 50,
        i % 13
    ));
    c.tags = vec!["work".into(), format!("t{}", i % 20)];
    c.source = Some("bench".into());
    c.created_at = Some(now());
    c.llm_context = Some(json!({
        "relationship_arc": "steady", "communication_style": "brief",
        "key_interests": ["rust", "postgres"], "closeness_level": (i % 10) + 1,
        "important_dates": [{"date": "2020-01-01", "event": "met", "significance": "low"}]
    }));
    c.emails = vec![Email {
        address: format!("p{i}@example.com"),
        label: Some("work".into()),
        is_primary: true,
    }];
    c.phones = vec![Phone {
        number: format!("+1555{:07}", i % 10_000_000),
        label: None,
        is_primary: true,
    }];
    c.last_updated = Some(now());
    c.last_updated_by = Some("canonical".into());
    hashed(c)
}

/// Normalized, carrying its content hash, as the engine writes contacts.
pub fn hashed(mut c: Contact) -> Contact {
    c.normalize();
    c.content_hash = Some(contact_sync_core::content_hash(&c));
    c
}

/// `name` from the environment, else `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
