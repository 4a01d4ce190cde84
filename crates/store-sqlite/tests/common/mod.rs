//! A small generator of realistic contacts with all 33 fields filled, shared
//! by the tests and the bench (`#[path]`-included there).
#![allow(dead_code)]

use std::collections::BTreeMap;

use chrono::{Duration, TimeZone, Utc};
use contact_sync_core::{Contact, Email, Phone};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const FIRST: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Frances",
    "Edsger",
    "Hedy",
    "John",
    "Radia",
    "Tim",
    "Katherine",
    "Donald",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Ritchie",
    "Allen",
    "Dijkstra",
    "Lamarr",
    "McCarthy",
    "Perlman",
    "Berners-Lee",
    "Johnson",
    "Knuth",
];
const ORGS: &[&str] = &[
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Stark Industries",
];
const CATS: &[&str] = &["A", "B", "C", "D", "E", "F", "G", "H", "X"];

/// The id of the `i`-th generated contact (sorts in generation order).
pub fn id(i: usize) -> String {
    format!("c-{i:08}")
}

/// A contact with every field set, deterministic in `i`, already normalized.
pub fn full_contact(i: usize) -> Contact {
    let mut rng = SmallRng::seed_from_u64(i as u64);
    let first = FIRST[rng.gen_range(0..FIRST.len())];
    let last = LAST[rng.gen_range(0..LAST.len())];
    let cat = CATS[rng.gen_range(0..CATS.len())];
    let base = Utc
        .with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date");
    let created = base + Duration::microseconds(rng.gen_range(0..100_000_000_000_000i64));
    let mut c = Contact::new(id(i), format!("{first} {last}"));
    c.external_ids = BTreeMap::from([
        ("twenty".to_string(), format!("9f0c{i:028x}")),
        ("supabase".to_string(), format!("{}", 100_000 + i)),
    ]);
    c.display_name = Some(format!("{first} {last}"));
    c.first_name = Some(first.to_string());
    c.middle_name = Some("Q.".to_string());
    c.last_name = Some(last.to_string());
    c.name_prefix = Some("Dr.".to_string());
    c.name_suffix = Some("Jr.".to_string());
    c.nickname = Some(first.chars().take(3).collect());
    c.phonetic_name = Some(format!("{} {}", first.to_uppercase(), last.to_uppercase()));
    c.organization = Some(ORGS[rng.gen_range(0..ORGS.len())].to_string());
    c.job_title = Some("Principal Engineer".to_string());
    c.department = Some("Research & Development".to_string());
    c.category_code = Some(cat.to_string());
    c.subcategory_code = Some(format!("{cat}{}", rng.gen_range(1..5)));
    c.relationship_label = Some("former colleague".to_string());
    c.notes = Some(format!(
        "Met {first} at a conference in {}; talked about compilers, distributed systems and \
         hiking. Prefers email over phone. Follow up about the book recommendation.",
        2010 + rng.gen_range(0..14)
    ));
    c.tags = vec![
        "work".into(),
        "conference".into(),
        format!("batch-{}", i % 17),
    ];
    c.source = Some("google-contacts".to_string());
    c.created_at = Some(created);
    c.llm_context = Some(json!({
        "relationship_arc": "Colleagues for three years, stayed in touch after she moved teams.",
        "communication_style": "Direct, dry humour, answers within a day.",
        "key_interests": ["compilers", "climbing", "jazz", "sourdough"],
        "personality_notes": "Curious and generous with time; dislikes small talk.",
        "important_dates": [
            {"date": "1985-04-12", "event": "birthday", "significance": "high"},
            {"date": "2019-09-01", "event": "joined Acme", "significance": "medium"}
        ],
        "conversation_topics": ["type systems", "trail running", "kids' school"],
        "emotional_depth": rng.gen_range(1..=10),
        "closeness_level": rng.gen_range(1..=10),
        "how_met": "RustConf hallway track",
        "current_state": "active",
        "blind_spots": ["over-commits"],
        "strengths": ["mentoring", "clear writing"],
        "tensions": []
    }));
    c.relationships = Some(json!([
        {"contact_id": id(i + 1), "relation": "spouse", "notes": "married 2015"},
        {"contact_id": id(i + 2), "relation": "coworker"}
    ]));
    c.communication_stats = Some(json!({
        "messages_sent": rng.gen_range(0..5000),
        "messages_received": rng.gen_range(0..5000),
        "last_contacted": "2026-10-02T18:22:00Z",
        "preferred_channel": "email"
    }));
    c.social_profiles = Some(json!({
        "linkedin": format!("https://www.linkedin.com/in/{}-{}-{i}", first.to_lowercase(), last.to_lowercase()),
        "github": format!("{}{i}", first.to_lowercase())
    }));
    c.custom_attributes =
        Some(json!({"tshirt": "M", "dietary": "vegetarian", "timezone": "Europe/Berlin"}));
    c.emails = vec![
        Email {
            address: format!(
                "{}.{}.{i}@example.com",
                first.to_lowercase(),
                last.to_lowercase()
            ),
            label: Some("work".into()),
            is_primary: true,
        },
        Email {
            address: format!("{}{i}@mail.example.org", first.to_lowercase()),
            label: Some("home".into()),
            is_primary: false,
        },
    ];
    c.phones = vec![Phone {
        number: format!("+1555{:07}", i % 10_000_000),
        label: Some("mobile".into()),
        is_primary: true,
    }];
    c.version = 1 + rng.gen_range(0..3);
    c.last_updated = Some(created + Duration::days(30));
    c.last_updated_by = Some("canonical".to_string());
    c.deleted_at = None;
    c.content_hash = Some(contact_sync_core::content_hash(&c));
    c.normalize();
    c
}
