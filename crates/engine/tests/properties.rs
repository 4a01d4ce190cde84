//! Property tests: random interleavings of edits, deletes and creates in
//! several stores, with and without injected faults (errors, timeouts,
//! writes applied but acknowledgements lost, crash-and-restart between any
//! two store operations). After quiescence:
//! - every store equals canonical, each contact once, each with its id;
//! - no contact is duplicated in canonical;
//! - every edit is in the journal (as a change or as a conflict's loser);
//! - without faults, no store is ever sent content it already has (no echo);
//! - replaying the journal from the start changes nothing.
//!
//! On failure proptest prints the operations and the fault seed; the
//! failing case is also saved under `proptest-regressions/`.

mod support;

use std::collections::BTreeSet;

use contact_sync_core::model::now;
use contact_sync_engine::{Engine, CANONICAL};
use contact_sync_memory::{FaultPlan, MemoryHandle};
use proptest::prelude::*;
use support::{person, settle, World};

#[derive(Debug, Clone)]
enum Op {
    Edit {
        store: usize,
        pick: usize,
        field: usize,
        bump: bool,
    },
    Delete {
        store: usize,
        pick: usize,
        soft: bool,
    },
    Create {
        in_crm: bool,
    },
    Cycle,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, any::<usize>(), 0..4usize, any::<bool>())
            .prop_map(|(store, pick, field, bump)| Op::Edit { store, pick, field, bump }),
        1 => (0..3usize, any::<usize>(), any::<bool>())
            .prop_map(|(store, pick, soft)| Op::Delete { store, pick, soft }),
        1 => any::<bool>().prop_map(|in_crm| Op::Create { in_crm }),
        3 => Just(Op::Cycle),
        1 => Just(Op::Restart),
    ]
}

const FIELDS: [&str; 4] = ["job_title", "notes", "nickname", "organization"];

/// An edit a user made: (contact id, field, value). Values are unique.
type Edit = (String, &'static str, String);

fn handle(w: &World, store: usize) -> &MemoryHandle {
    [&w.canonical, &w.local, &w.crm][store]
}

/// Runs a cycle; restarts the engine after a crash. True when the cycle
/// completed without any error.
async fn cycle_or_restart(w: &World, e: &mut Engine) -> bool {
    let (crashed, clean) = match e.cycle().await {
        Ok(r) if std::env::var("DEBUG_CASE").is_ok() => {
            eprintln!("  cycle: {:?}", r.stores);
            (
                r.errors().iter().any(|m| m.contains("crash")),
                r.errors().is_empty(),
            )
        }
        Ok(r) => (
            r.errors().iter().any(|m| m.contains("crash")),
            r.errors().is_empty(),
        ),
        Err(err) => {
            let m = err.to_string();
            if std::env::var("DEBUG_CASE").is_ok() {
                eprintln!("  cycle failed: {m}");
            }
            assert!(!m.contains("state database"), "state failure: {m}");
            (true, false)
        }
    };
    if crashed {
        if let Some(f) = &w.faults {
            for c in f {
                c.heal();
            }
        }
        *e = w.engine();
    }
    clean
}

async fn scenario(ops: Vec<Op>, fault_seed: Option<u64>) {
    let mut w = World::new();
    if let Some(seed) = fault_seed {
        let plan = |k: u64| {
            FaultPlan::new(seed.wrapping_add(k))
                .fail_before(0.08)
                .timeout(0.04)
                .ack_lost(0.08)
                .crash_after_ops(7 + (seed.wrapping_add(k) % 23))
        };
        w = w.with_faults([plan(0), plan(1), plan(2)]);
        if let Some(f) = &w.faults {
            f.iter().for_each(|c| c.disable());
        }
    }
    for i in 0..4 {
        w.canonical
            .user_upsert(person(&format!("C{i}"), &format!("Person {i}")));
    }
    let mut e = w.engine();
    let mut progress = |_: &str, _: u64, _: u64| {};
    e.initial_sync(&mut progress).await.expect("initial sync");
    if let Some(f) = &w.faults {
        f.iter().for_each(|c| c.enable());
    }

    let mut edits: Vec<Edit> = Vec::new();
    let mut created_without_id: Vec<String> = Vec::new();
    let mut pending_canonical: BTreeSet<(String, &'static str)> = BTreeSet::new();
    let mut n = 0u32;
    let debug = std::env::var("DEBUG_CASE").is_ok();
    for op in ops {
        n += 1;
        if debug {
            eprintln!("--- op {n}: {op:?}");
        }
        match op {
            Op::Edit {
                store,
                pick,
                field,
                bump,
            } => {
                let h = handle(&w, store);
                let live: Vec<_> = h
                    .live()
                    .into_iter()
                    .filter(|c| !c.contact_id.is_empty())
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let mut c = live[pick % live.len()].clone();
                let value = format!("v{n}");
                let f = FIELDS[field];
                let mut m = serde_json::Map::new();
                m.insert(f.to_string(), serde_json::json!(value));
                c.set_fields(&m).expect("text field");
                if bump {
                    c.version += 1;
                }
                c.last_updated = Some(now());
                if store == 0 {
                    // Canonical's own history: an edit overwritten in canonical
                    // before the engine looked was never the engine's to keep.
                    edits.retain(|(id, fld, _)| {
                        !(pending_canonical.contains(&(id.clone(), *fld))
                            && *id == c.contact_id
                            && *fld == f)
                    });
                    pending_canonical.insert((c.contact_id.clone(), f));
                }
                edits.push((c.contact_id.clone(), f, value));
                h.user_upsert(c);
            }
            Op::Delete { store, pick, soft } => {
                let h = handle(&w, store);
                let live: Vec<_> = h
                    .live()
                    .into_iter()
                    .filter(|c| !c.contact_id.is_empty())
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let id = live[pick % live.len()].contact_id.clone();
                if store == 0 {
                    edits.retain(|(eid, fld, _)| {
                        !(*eid == id && pending_canonical.contains(&(eid.clone(), *fld)))
                    });
                }
                if soft {
                    h.user_soft_delete(&id, now());
                } else {
                    h.user_delete(&id);
                }
            }
            Op::Create { in_crm } => {
                let mut c = person(if in_crm { "" } else { "tmp" }, &format!("New {n}"));
                c.emails[0].address = format!("new{n}@example.com");
                if in_crm {
                    created_without_id.push(w.crm.user_create_without_id(c));
                } else {
                    c.contact_id = format!("N{n}");
                    w.local.user_upsert(c);
                }
            }
            Op::Cycle => {
                if cycle_or_restart(&w, &mut e).await {
                    pending_canonical.clear();
                }
                if debug {
                    dump(&w, &e);
                }
            }
            Op::Restart => e = w.engine(),
        }
    }

    if debug {
        for h in [&w.canonical, &w.local, &w.crm] {
            eprintln!("pending {:?}", h.pending_changes().iter().map(|c| (c.native_id.clone(), match &c.kind { contact_sync_connector::ChangeKind::Upsert(x) => format!("up {} v{} del={}", x.contact_id, x.version, x.is_deleted()), other => format!("{other:?}") })).collect::<Vec<_>>());
        }
    }
    // Quiescence: faults off, a restart, cycles until nothing moves.
    w.heal();
    drop(e);
    let mut e = w.engine();
    settle(&mut e, 12).await;
    if debug {
        eprintln!("--- settled");
        dump(&w, &e);
    }
    w.assert_converged();

    // No duplicates in canonical: primary emails are unique per person.
    let live = w.canonical.live();
    let emails: BTreeSet<_> = live
        .iter()
        .filter_map(|c| c.primary_email().map(str::to_string))
        .collect();
    assert_eq!(
        emails.len(),
        live.len(),
        "a contact was duplicated: {live:#?}"
    );

    // Every edit reached the journal: as a change, or as a conflict's loser.
    let mut seen: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut delete_conflicts: BTreeSet<String> = BTreeSet::new();
    let head = e.state().journal_head().unwrap();
    for j in e.state().journal_after(0, head, usize::MAX).unwrap() {
        // Every value canonical held, as journaled (changes and full records).
        for (field, v) in j.after.content_fields() {
            if let Some(v) = v.as_str() {
                seen.insert((j.contact_id.clone(), field, v.to_string()));
            }
        }
        for c in &j.conflicts {
            if let Some(v) = c.incoming.as_str() {
                seen.insert((j.contact_id.clone(), c.field.clone(), v.to_string()));
            }
            if c.field == "deleted_at" {
                delete_conflicts.insert(j.contact_id.clone());
            }
        }
    }
    for (id, field, value) in &edits {
        let kept = seen.contains(&(id.clone(), field.to_string(), value.clone()));
        assert!(
            kept || delete_conflicts.contains(id),
            "edit of {id}.{field} = {value} is neither in the final state nor in the journal"
        );
    }

    // No echo: nothing was sent that a store already had, except the one
    // write that gives a record created without id its new contact id.
    if fault_seed.is_none() {
        // Contacts first seen in the CRM without an id (minted there).
        let head = e.state().journal_head().unwrap();
        let mut written_back: BTreeSet<String> = e
            .state()
            .journal_after(0, head, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|j| j.prev_version == 0 && j.origin == "crm")
            .map(|j| j.contact_id)
            .collect();
        assert!(written_back.len() <= created_without_id.len());
        for (name, h) in [("local", &w.local), ("crm", &w.crm)] {
            let echoes: Vec<_> = h
                .writes()
                .into_iter()
                .filter(|x| {
                    // One id write-back per contact created in the CRM is expected.
                    let write_back = name == "crm" && written_back.remove(&x.contact_id);
                    !x.changed_content && !write_back
                })
                .collect();
            assert!(
                echoes.is_empty(),
                "{name} was re-sent unchanged content: {echoes:?}"
            );
        }
    }

    // Replaying the journal from the start changes nothing.
    for h in [&w.canonical, &w.local, &w.crm] {
        h.clear_write_log();
    }
    {
        let tx = e.state_mut().tx().unwrap();
        for s in [CANONICAL, "local", "crm"] {
            tx.set_cursor(s, 0).unwrap();
        }
        tx.commit().unwrap();
    }
    settle(&mut e, 12).await;
    for (name, h) in [
        ("canonical", &w.canonical),
        ("local", &w.local),
        ("crm", &w.crm),
    ] {
        let applied: Vec<_> = h.writes().into_iter().filter(|x| x.applied).collect();
        if !applied.is_empty() {
            for j in e.state().journal_of(&applied[0].contact_id, 50).unwrap() {
                eprintln!(
                    "J seq={} v={} prev={} op={:?} origin={} del={:?} changes={:?} conflicts={:?}",
                    j.seq,
                    j.version,
                    j.prev_version,
                    j.op,
                    j.origin,
                    j.after.deleted_at,
                    j.changes
                        .iter()
                        .map(|c| (&c.field, &c.new))
                        .collect::<Vec<_>>(),
                    j.conflicts
                        .iter()
                        .map(|c| (&c.field, c.resolution))
                        .collect::<Vec<_>>()
                );
            }
            eprintln!(
                "rec canonical: {:?}",
                e.state().store_record(CANONICAL, &applied[0].contact_id)
            );
            eprintln!(
                "rec crm: {:?}",
                e.state().store_record("crm", &applied[0].contact_id)
            );
            eprintln!(
                "rec local: {:?}",
                e.state().store_record("local", &applied[0].contact_id)
            );
            eprintln!(
                "canonical now: {:?}",
                w.canonical
                    .get(&applied[0].contact_id)
                    .map(|c| (c.version, c.deleted_at))
            );
        }
        assert!(applied.is_empty(), "replay changed {name}: {applied:?}");
    }
    w.assert_converged();
}

/// Prints every store's records and the journal (for `DEBUG_CASE=1`).
fn dump(w: &World, e: &Engine) {
    for (name, h) in [
        ("canonical", &w.canonical),
        ("local", &w.local),
        ("crm", &w.crm),
    ] {
        for c in h.all() {
            let rec = e.state().store_record(name, &c.contact_id).unwrap();
            eprintln!(
                "  {name} {} v{} del={} h={} | rec {:?}",
                c.contact_id,
                c.version,
                c.is_deleted(),
                &contact_sync_core::content_hash(&c)[..6],
                rec.map(|r| (
                    r.synced_version,
                    r.hash.get(..6).map(str::to_string),
                    r.deleted
                ))
            );
        }
    }
    let head = e.state().journal_head().unwrap();
    for j in e.state().journal_after(0, head, usize::MAX).unwrap() {
        eprintln!(
            "  J{} {} v{} prev={} {:?} from {} h={} changes={:?} conflicts={:?}",
            j.seq,
            j.contact_id,
            j.version,
            j.prev_version,
            j.op,
            j.origin,
            &j.hash[..6],
            j.changes
                .iter()
                .map(|c| (&c.field, &c.new))
                .collect::<Vec<_>>(),
            j.conflicts
                .iter()
                .map(|c| (&c.field, &c.incoming, c.resolution))
                .collect::<Vec<_>>()
        );
    }
}

fn run(ops: Vec<Op>, fault_seed: Option<u64>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(scenario(ops, fault_seed));
}

proptest! {
    // 96 cases unless PROPTEST_CASES says otherwise (for longer soak runs).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn stores_converge_without_faults(ops in prop::collection::vec(op(), 1..40)) {
        run(ops, None);
    }

    #[test]
    fn stores_converge_with_faults_and_crashes(
        ops in prop::collection::vec(op(), 1..40),
        fault_seed in any::<u64>(),
    ) {
        run(ops, Some(fault_seed));
    }
}

/// Replays a case saved as proptest's Debug output (`CASE_FILE=path`,
/// optional `FAULT_SEED`), for tracing with `DEBUG_CASE=1`.
#[test]
#[ignore]
fn debug_case() {
    let Ok(path) = std::env::var("CASE_FILE") else {
        return;
    };
    let text = std::fs::read_to_string(path).unwrap();
    let num = |body: &str, key: &str| -> String {
        let i = body.find(&format!("{key}:")).unwrap() + key.len() + 1;
        body[i..]
            .trim_start()
            .split(|c: char| c == ',' || c == '}' || c.is_whitespace())
            .next()
            .unwrap()
            .to_string()
    };
    let mut ops = Vec::new();
    let mut rest = text.as_str();
    loop {
        let next = ["Edit", "Delete", "Create", "Cycle", "Restart"]
            .iter()
            .filter_map(|k| rest.find(k).map(|i| (i, *k)))
            .min();
        let Some((i, k)) = next else { break };
        rest = &rest[i + k.len()..];
        let body = if rest.trim_start().starts_with('{') {
            let end = rest.find('}').unwrap();
            let b = &rest[..end];
            rest = &rest[end + 1..];
            b
        } else {
            ""
        };
        ops.push(match k {
            "Edit" => Op::Edit {
                store: num(body, "store").parse().unwrap(),
                pick: num(body, "pick").parse().unwrap(),
                field: num(body, "field").parse().unwrap(),
                bump: num(body, "bump") == "true",
            },
            "Delete" => Op::Delete {
                store: num(body, "store").parse().unwrap(),
                pick: num(body, "pick").parse().unwrap(),
                soft: num(body, "soft") == "true",
            },
            "Create" => Op::Create {
                in_crm: num(body, "in_crm") == "true",
            },
            "Cycle" => Op::Cycle,
            _ => Op::Restart,
        });
    }
    let seed = std::env::var("FAULT_SEED").ok().map(|s| s.parse().unwrap());
    eprintln!("{} ops, seed {seed:?}", ops.len());
    run(ops, seed);
}
