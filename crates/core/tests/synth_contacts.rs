//! Synthetic contacts: valid, normalized, deterministic, realistic.
#![cfg(feature = "synth")]

use std::collections::HashSet;

use contact_sync_core::model::{category_name, ALL_FIELDS};
use contact_sync_core::synth::{Generator, INVALID_KINDS};
use contact_sync_core::{content_hash, validate};
use serde_json::Value;

const SEEDS: &[u64] = &[0, 1, 42, 0xDEAD_BEEF, u64::MAX];

#[test]
fn every_generated_contact_is_valid_and_already_normalized() {
    for &seed in SEEDS {
        let mut g = Generator::new(seed);
        for i in 0..3_000u64 {
            let c = g.contact(i);
            let mut n = c.clone();
            n.normalize();
            assert_eq!(n, c, "seed {seed} index {i}: normalize changed the contact");
            if let Err(e) = validate(&n) {
                panic!("seed {seed} index {i}: {e}");
            }
            assert_eq!(c.content_hash.as_deref(), Some(content_hash(&c).as_str()));
        }
    }
}

#[test]
fn ids_are_unique_and_sort_in_index_order() {
    let mut g = Generator::new(7);
    let ids: Vec<String> = (0..5_000).map(|i| g.contact(i).contact_id).collect();
    assert_eq!(ids[0], "c000000000");
    assert_eq!(ids[4_999], "c000004999");
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
}

#[test]
fn same_seed_same_contact_regardless_of_order_different_seed_differs() {
    let mut a = Generator::new(3);
    let mut b = Generator::new(3);
    let forward: Vec<_> = (0..50).map(|i| a.contact(i)).collect();
    let backward: Vec<_> = (0..50).rev().map(|i| b.contact(i)).collect();
    for (i, c) in forward.iter().enumerate() {
        assert_eq!(c, &backward[49 - i]);
    }
    let mut other = Generator::new(4);
    let differing = (0..50)
        .filter(|&i| other.contact(i).content_hash != forward[i as usize].content_hash)
        .count();
    assert!(differing > 45, "only {differing} of 50 differ across seeds");
}

#[test]
fn fields_are_filled_plausibly() {
    let mut g = Generator::new(11);
    let mut emails_seen = HashSet::new();
    let mut categories = HashSet::new();
    let mut first_names = HashSet::new();
    let mut with_prefix = 0;
    let mut total_json = 0usize;
    let n = 2_000u64;
    for i in 0..n {
        let c = g.contact(i);
        let json = serde_json::to_value(&c).unwrap();
        let obj = json.as_object().unwrap();
        assert_eq!(obj.len(), ALL_FIELDS.len());
        let size = serde_json::to_string(&c).unwrap().len();
        assert!((1_000..3_000).contains(&size), "index {i}: {size} bytes");
        total_json += size;

        for f in [
            &c.display_name,
            &c.first_name,
            &c.last_name,
            &c.nickname,
            &c.phonetic_name,
            &c.organization,
            &c.job_title,
            &c.department,
            &c.relationship_label,
            &c.notes,
            &c.source,
        ] {
            assert!(f.is_some(), "index {i}: a text field is empty: {c:?}");
        }
        with_prefix += usize::from(c.name_prefix.is_some());
        first_names.insert(c.first_name.clone().unwrap());
        let cat = c.category_code.clone().unwrap();
        assert!(category_name(&cat).is_some());
        let sub = c.subcategory_code.clone().unwrap();
        assert!(sub.starts_with(&cat) && sub.len() == 2, "{cat} {sub}");
        categories.insert(cat);
        assert!(!c.tags.is_empty());
        assert!(c.created_at.is_some() && c.last_updated >= c.created_at);
        assert_eq!(c.version, 1);
        assert_eq!(c.last_updated_by.as_deref(), Some("seed"));
        assert!(c.external_ids.is_empty());
        assert!(c.deleted_at.is_none());

        assert!((1..=3).contains(&c.emails.len()));
        assert_eq!(c.emails.iter().filter(|e| e.is_primary).count(), 1);
        for e in &c.emails {
            assert!(
                emails_seen.insert(e.address.clone()),
                "duplicate {}",
                e.address
            );
        }
        assert!(c.phones.len() <= 2);
        if !c.phones.is_empty() {
            assert_eq!(c.phones.iter().filter(|p| p.is_primary).count(), 1);
        }

        let ctx = c.llm_context.as_ref().unwrap().as_object().unwrap();
        for key in [
            "relationship_arc",
            "communication_style",
            "key_interests",
            "personality_notes",
            "important_dates",
            "conversation_topics",
            "emotional_depth",
            "closeness_level",
            "how_met",
            "current_state",
            "blind_spots",
            "strengths",
            "tensions",
        ] {
            let v = ctx
                .get(key)
                .unwrap_or_else(|| panic!("index {i}: no {key}"));
            match v {
                Value::String(s) => assert!(!s.is_empty()),
                Value::Array(a) => assert!(!a.is_empty(), "index {i}: {key} empty"),
                Value::Number(n) => assert!((1..=10).contains(&n.as_i64().unwrap())),
                other => panic!("index {i}: {key} = {other}"),
            }
        }
        for d in ctx["important_dates"].as_array().unwrap() {
            for k in ["date", "event", "significance"] {
                assert!(d[k].is_string(), "{d}");
            }
        }
        // An empty list is absent in the normal form.
        let rels = c.relationships.as_ref().and_then(|r| r.as_array());
        for r in rels.into_iter().flatten() {
            let id = r["contact_id"].as_str().unwrap();
            assert!(
                id < c.contact_id.as_str(),
                "{id} should be generated before"
            );
            assert!(r["relation"].is_string() && r["notes"].is_string());
        }
        for v in [
            &c.communication_stats,
            &c.social_profiles,
            &c.custom_attributes,
        ] {
            assert!(v
                .as_ref()
                .unwrap()
                .as_object()
                .is_some_and(|m| !m.is_empty()));
        }
    }
    let avg = total_json / n as usize;
    assert!((1_500..=2_200).contains(&avg), "average {avg} bytes");
    assert_eq!(categories.len(), 9, "{categories:?}");
    assert!(first_names.len() > 30);
    assert!(with_prefix > 100 && with_prefix < 600, "{with_prefix}");
}

#[test]
fn invalid_contacts_fail_on_the_named_field() {
    for &seed in SEEDS {
        let mut g = Generator::new(seed);
        let mut fields = HashSet::new();
        for i in 0..200u64 {
            let (mut c, field) = g.invalid_contact(i);
            c.normalize();
            let err = validate(&c).expect_err("defective contact must be refused");
            assert_eq!(err.field, field, "seed {seed} index {i}: {err}");
            assert_eq!(err.record, c.contact_id);
            fields.insert(field);
        }
        assert_eq!(fields.len() as u64, INVALID_KINDS);
    }
}

/// Throughput (not a timed assertion): run with
/// `cargo test --release -p contact-sync-core --features synth --test synth_contacts -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_generation_rate() {
    let mut g = Generator::new(1);
    let n = 500_000u64;
    let start = std::time::Instant::now();
    let mut bytes = 0usize;
    for i in 0..n {
        bytes += g.contact(i).canonical_name.len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "generated {n} contacts in {secs:.3}s: {:.0} contacts/s ({bytes})",
        n as f64 / secs
    );
}
