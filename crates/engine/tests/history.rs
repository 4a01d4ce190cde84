//! The history checker (Jepsen-style): writers act on every store *between
//! any two steps of a cycle* — before each store operation the engine makes
//! (a capture read, a canonical read during a merge, the canonical write,
//! each propagation write, a recapture read) — while stores fail, time out,
//! lose acknowledgements, crash at any operation (the engine is then
//! restarted, as after kill -9), change schema (the engine pauses them until
//! "a person" resumes them), backlogs exceed a cycle (tiny batches, two
//! batches a cycle) and the engine restarts at random. Every user action is
//! recorded in a history with a global order. Writers also save records
//! unchanged at a far higher version (an app whose versions are
//! timestamps): no edit, but the edits after it must still end everywhere.
//!
//! After quiescence (faults off, paused stores resumed, cycles until nothing
//! moves) the checker decides, for every acknowledged user write:
//! - an edit of a field ends as the field's value in canonical and every
//!   store, or was superseded by a later user write of that field (or a
//!   later delete of the contact), or is recorded in a conflict of that
//!   field holding its value (settled by the rules, or open), or the
//!   contact's delete is an open conflict with the edit;
//! - a delete ends with the contact deleted everywhere, or was superseded by
//!   a later edit of the contact that is recorded as a conflict of the
//!   delete, or is an open conflict;
//! - a create ends as one live contact (by its unique email) everywhere,
//!   or was deleted later by a user.
//!
//! And every store holds exactly canonical's live contacts, each once.
//! Anything else is a lost write, reported with the seed that replays it
//! (`HISTORY_SEED=<n> cargo test -p contact-sync-engine --test history
//! replay -- --ignored --nocapture`). `HISTORY_SEEDS` sets how many seeds
//! the CI test runs (default 200).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use contact_sync_core::model::now;
use contact_sync_core::Contact;
use contact_sync_engine::{Engine, EngineOptions};
use contact_sync_memory::{FaultControl, FaultPlan, FaultyStore, MemoryHandle, MemoryOptions};
use contact_sync_state::{Decision, StateDb};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use support::person;

const FIELDS: [&str; 5] = [
    "job_title",
    "notes",
    "nickname",
    "organization",
    "department",
];
const STORES: [&str; 3] = ["canonical", "local", "crm"];

/// One acknowledged user action, in global order `n`.
#[derive(Debug, Clone)]
enum Event {
    Edit {
        n: u64,
        store: &'static str,
        contact_id: String,
        field: &'static str,
        value: String,
    },
    Delete {
        n: u64,
        store: &'static str,
        contact_id: String,
        email: String,
    },
    Create {
        n: u64,
        store: &'static str,
        email: String,
    },
}

/// The writers: a seeded random source acting on the stores' data.
struct Writers {
    rng: SmallRng,
    stores: [MemoryHandle; 3],
    history: Vec<Event>,
    n: u64,
    /// Probability of an action before each store operation.
    rate: f64,
    active: bool,
}

impl Writers {
    fn act(&mut self) {
        let before = self.history.len();
        self.act_once();
        if tracing() && self.history.len() > before {
            eprintln!("USER {:?}", self.history[before]);
        }
    }

    fn act_once(&mut self) {
        if !self.active || !self.rng.gen_bool(self.rate) {
            return;
        }
        self.n += 1;
        let n = self.n;
        let s = self.rng.gen_range(0..3);
        let store = STORES[s];
        let h = self.stores[s].clone();
        let roll: f64 = self.rng.gen();
        if roll < 0.10 {
            // A new contact: with an id in the databases, without one in the CRM.
            let email = format!("new{n}@example.com");
            let mut c = person(&format!("N{n}"), &format!("New {n}"));
            c.emails[0].address = email.clone();
            c.last_updated = Some(now());
            if store == "crm" {
                h.user_create_without_id(c);
            } else {
                h.user_upsert(c);
            }
            self.history.push(Event::Create { n, store, email });
            return;
        }
        let live: Vec<Contact> = h
            .live()
            .into_iter()
            .filter(|c| !c.contact_id.is_empty())
            .collect();
        if live.is_empty() {
            return;
        }
        let mut c = live[self.rng.gen_range(0..live.len())].clone();
        if roll < 0.16 {
            let email = c.primary_email().unwrap_or_default().to_string();
            if self.rng.gen_bool(0.5) {
                h.user_delete(&c.contact_id);
            } else {
                h.user_soft_delete(&c.contact_id, now());
            }
            self.history.push(Event::Delete {
                n,
                store,
                contact_id: c.contact_id,
                email,
            });
            return;
        }
        if roll < 0.20 && store != "crm" {
            // A save of nothing new at a far higher version (an app whose
            // versions are timestamps): no edit, but it must block none.
            // (Raised by exactly one, it can race the engine's write of
            // that very version: the write's content condition admits it,
            // and the save's image, delivered after the write, reads as a
            // revert of it — 2 of 200 seeds. Left: it needs the version in
            // every store's write condition.)
            c.version += self.rng.gen_range(50..150);
            c.last_updated = Some(now());
            if tracing() {
                println!(
                    "writer: {store} saves {} unchanged at version {}",
                    c.contact_id, c.version
                );
            }
            h.user_upsert(c);
            return;
        }
        let field = FIELDS[self.rng.gen_range(0..FIELDS.len())];
        let value = format!("w{n}-{store}");
        let mut m = serde_json::Map::new();
        m.insert(field.to_string(), serde_json::json!(value));
        c.set_fields(&m).expect("text field");
        if store != "crm" && self.rng.gen_bool(0.5) {
            c.version += 1;
        }
        c.last_updated = Some(now());
        h.user_upsert(c.clone());
        self.history.push(Event::Edit {
            n,
            store,
            contact_id: c.contact_id,
            field,
            value,
        });
    }
}

struct Sim {
    seed: u64,
    dir: tempfile::TempDir,
    stores: [MemoryHandle; 3],
    controls: [FaultControl; 3],
    writers: Arc<Mutex<Writers>>,
    rng: SmallRng,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim::with_stores(seed, false)
    }

    /// `broken`: the stores ignore write conditions (to show the checker
    /// catches what conditional writes prevent).
    fn with_stores(seed: u64, broken: bool) -> Sim {
        let stores = [
            MemoryHandle::new(MemoryOptions::new("canonical").ignore_conditions(broken)),
            MemoryHandle::new(MemoryOptions::new("local").ignore_conditions(broken)),
            MemoryHandle::new(
                MemoryOptions::new("crm")
                    .keeps_version(false)
                    .own_ids(true)
                    // With the budget (even seeds): a CRM whose reads are
                    // metered is written in the slices of a backlog without
                    // being read first.
                    .metered_reads(seed.is_multiple_of(2))
                    .ignore_conditions(broken),
            ),
        ];
        for i in 0..12 {
            let c = person(&format!("C{i}"), &format!("Person {i}"));
            stores[0].user_upsert(c);
        }
        // Crashes too: after a random number of operations a store fails
        // every call (the process is killed at that step); the run loop
        // restarts the engine and brings the store back.
        let mut crash_rng = SmallRng::seed_from_u64(seed ^ 0xc4a5);
        let mut plan = |k: u64| {
            let p = FaultPlan::new(seed.wrapping_mul(31).wrapping_add(k))
                .fail_before(0.03)
                .timeout(0.02)
                .ack_lost(0.04);
            if crash_rng.gen_bool(0.5) {
                p.crash_after_ops(crash_rng.gen_range(20..300))
            } else {
                p
            }
        };
        let controls = [
            FaultControl::new(plan(1)),
            FaultControl::new(plan(2)),
            FaultControl::new(plan(3)),
        ];
        let writers = Arc::new(Mutex::new(Writers {
            rng: SmallRng::seed_from_u64(seed ^ 0x5eed),
            stores: stores.clone(),
            history: Vec::new(),
            n: 0,
            rate: 0.15,
            active: true,
        }));
        for c in &controls {
            let w = writers.clone();
            c.set_hook(Some(Arc::new(move |_op, _store| {
                w.lock().unwrap_or_else(|e| e.into_inner()).act();
            })));
        }
        Sim {
            seed,
            dir: tempfile::tempdir().expect("tempdir"),
            stores,
            controls,
            writers,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    fn engine(&self) -> Engine {
        if tracing() {
            eprintln!("== engine (re)started");
        }
        let state = StateDb::open(&self.dir.path().join("state.db")).expect("state db");
        let wrap = |i: usize| -> Box<dyn contact_sync_connector::Store> {
            Box::new(FaultyStore::new(
                self.stores[i].store(),
                self.controls[i].clone(),
            ))
        };
        Engine::new(
            state,
            wrap(0),
            vec![wrap(1), wrap(2)],
            EngineOptions {
                // Backlogs larger than a cycle: two batches of two changes.
                batch_size: 2,
                backfill_page: 3,
                max_batches_per_cycle: 2,
                // Every other seed runs as the daemon does with its capture
                // budget, spent at once: each capture stops after one batch
                // and keeps the rest of its window for the next cycle, each
                // propagation after one batch.
                capture_budget: self
                    .seed
                    .is_multiple_of(2)
                    .then_some(std::time::Duration::ZERO),
                ..Default::default()
            },
        )
        .expect("engine")
    }

    /// Runs the scenario; returns the engine after quiescence.
    async fn run(&mut self, cycles: usize) -> Engine {
        let mut e = self.engine();
        let mut broken: Option<(usize, usize)> = None; // (store, cycles left)
        for i in 0..cycles {
            if tracing() {
                eprintln!("== cycle {i}");
            }
            if let Err(err) = e.cycle().await {
                // Canonical failed (the cycle stops) or a crash: restart.
                assert!(
                    !err.to_string().contains("state database"),
                    "seed {}: state failure: {err}",
                    self.seed
                );
                e = self.engine();
            }
            // A crash kills the process at that step: the engine restarts
            // and the crashed store comes back.
            let mut crashed = false;
            for c in &self.controls {
                if c.is_crashed() {
                    c.heal();
                    crashed = true;
                }
            }
            if crashed {
                drop(e);
                e = self.engine();
            }
            match broken.as_mut() {
                Some((s, left)) if *left == 0 => {
                    // "A person" fixes the schema and resumes the store.
                    self.controls[*s].heal();
                    let name = STORES[*s];
                    let tx = e.state_mut().tx().expect("tx");
                    tx.decide(name, Decision::Resume, now()).expect("decide");
                    tx.commit().expect("commit");
                    broken = None;
                }
                Some((_, left)) => *left -= 1,
                None if self.rng.gen_bool(0.05) => {
                    let s = self.rng.gen_range(1..3);
                    self.controls[s].break_schema("mapped column job_title is missing (renamed?)");
                    broken = Some((s, self.rng.gen_range(1..4)));
                }
                None => {}
            }
            if self.rng.gen_bool(0.15) {
                drop(e);
                e = self.engine();
            }
        }
        // Quiescence: writers stop, faults stop, stores are fixed and
        // resumed, the engine restarts and runs until nothing moves.
        self.writers.lock().unwrap().active = false;
        for c in &self.controls {
            c.heal();
            c.disable();
        }
        for p in e.state().paused_stores().expect("paused") {
            let d = match p.kind {
                contact_sync_state::PauseKind::Schema => Decision::Resume,
                contact_sync_state::PauseKind::MassChange => Decision::Approve,
            };
            let tx = e.state_mut().tx().expect("tx");
            tx.decide(&p.store, d, now()).expect("decide");
            tx.commit().expect("commit");
        }
        drop(e);
        let mut e = self.engine();
        let mut quiet = 0;
        for i in 0..400 {
            if tracing() {
                eprintln!("== quiet cycle {i}");
            }
            let r = e.cycle().await.expect("cycle after quiescence");
            assert!(
                r.errors().is_empty(),
                "seed {}: errors after quiescence: {:?}",
                self.seed,
                r.errors()
            );
            let busy: u64 = r
                .stores
                .iter()
                .map(|s| s.stats.applied + s.stats.written + s.stats.captured)
                .sum();
            quiet = if busy == 0 && !r.more { quiet + 1 } else { 0 };
            if quiet == 2 {
                return e;
            }
        }
        panic!("seed {}: did not settle in 400 cycles", self.seed);
    }
}

/// `CONTACT_SYNC_FAULT_TRACE=1`: print every store call, writer action
/// and cycle, in order (with `replay`).
fn tracing() -> bool {
    std::env::var_os("CONTACT_SYNC_FAULT_TRACE").is_some()
}

/// What the checker found wrong, one line each.
fn check(sim: &Sim, e: &Engine) -> Vec<String> {
    let mut bad = Vec::new();
    let canonical = &sim.stores[0];
    let live: BTreeMap<String, Contact> = canonical
        .live()
        .into_iter()
        .map(|c| (c.contact_id.clone(), c))
        .collect();
    let hashes = |h: &MemoryHandle| -> BTreeMap<String, String> {
        h.live()
            .into_iter()
            .map(|c| (c.contact_id.clone(), contact_sync_core::content_hash(&c)))
            .collect()
    };
    let want = hashes(canonical);
    for (i, h) in sim.stores.iter().enumerate().skip(1) {
        let all = h.all();
        if all.iter().any(|c| c.contact_id.is_empty()) {
            bad.push(format!("{} holds records without contact_id", STORES[i]));
        }
        let got = hashes(h);
        if live_count(h) != got.len() {
            bad.push(format!("{} holds a contact twice", STORES[i]));
        }
        for (id, hash) in &want {
            match got.get(id) {
                None => bad.push(format!("{} lacks {id}", STORES[i])),
                Some(g) if g != hash => {
                    bad.push(format!("{} differs from canonical on {id}", STORES[i]))
                }
                _ => {}
            }
        }
        for id in got.keys().filter(|id| !want.contains_key(*id)) {
            bad.push(format!(
                "{} holds {id}, which canonical does not",
                STORES[i]
            ));
        }
    }
    let emails: Vec<&str> = live.values().filter_map(|c| c.primary_email()).collect();
    if emails.len() != emails.iter().collect::<BTreeSet<_>>().len() {
        bad.push("canonical holds a person twice (same primary email)".into());
    }
    let state = e.state();
    if !state.paused_stores().expect("paused").is_empty() {
        bad.push("a store is still paused".into());
    }
    // Every conflict ever recorded, per contact: (field, values).
    let mut conflicts: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for id in live.keys().cloned().chain(all_ids(&sim.stores)) {
        if conflicts.contains_key(&id) {
            continue;
        }
        let mut v = Vec::new();
        for entry in state.journal_of(&id, 100_000).expect("journal") {
            for fc in entry.conflicts {
                v.push((
                    fc.field,
                    format!("{} {} {}", fc.base, fc.canonical, fc.incoming),
                ));
            }
        }
        conflicts.insert(id, v);
    }
    for row in state.conflicts(false).expect("conflicts") {
        let fc = row.conflict;
        conflicts.entry(row.contact_id).or_default().push((
            fc.field,
            format!("{} {} {}", fc.base, fc.canonical, fc.incoming),
        ));
    }
    let open_delete_conflict = |id: &str| {
        state
            .conflicts(true)
            .expect("conflicts")
            .iter()
            .any(|r| r.contact_id == id && r.conflict.field == "deleted_at")
    };
    let history = sim.writers.lock().unwrap().history.clone();
    let later_edit = |after: u64, id: &str, field: Option<&str>| {
        history.iter().any(|ev| match ev {
            Event::Edit {
                n,
                contact_id,
                field: f,
                ..
            } => *n > after && contact_id == id && field.is_none_or(|x| x == *f),
            _ => false,
        })
    };
    let later_delete = |after: u64, id: &str| {
        history.iter().any(|ev| {
            matches!(ev, Event::Delete { n, contact_id, .. } if *n > after && contact_id == id)
        })
    };
    for ev in &history {
        match ev {
            Event::Edit {
                n,
                store,
                contact_id,
                field,
                value,
            } => {
                let now_value = live
                    .get(contact_id)
                    .map(|c| c.content_fields()[*field].clone());
                if now_value.as_ref().and_then(|v| v.as_str()) == Some(value.as_str()) {
                    continue;
                }
                if later_edit(*n, contact_id, Some(field)) || later_delete(*n, contact_id) {
                    continue;
                }
                let in_conflict = conflicts.get(contact_id).is_some_and(|v| {
                    v.iter().any(|(f, vals)| {
                        (f == field && vals.contains(value.as_str())) || f == "deleted_at"
                    })
                });
                if in_conflict || open_delete_conflict(contact_id) {
                    continue;
                }
                bad.push(format!(
                    "LOST edit #{n} in {store}: {contact_id}.{field} = {value:?}; canonical has {now_value:?}"
                ));
            }
            Event::Delete {
                n,
                store,
                contact_id,
                ..
            } => {
                if !live.contains_key(contact_id) {
                    continue;
                }
                let in_conflict = conflicts
                    .get(contact_id)
                    .is_some_and(|v| v.iter().any(|(f, _)| f == "deleted_at"));
                if in_conflict || open_delete_conflict(contact_id) {
                    continue;
                }
                // Edits made after the delete, elsewhere, that brought the
                // contact back must have been recorded as a conflict above.
                let _ = later_edit(*n, contact_id, None);
                bad.push(format!(
                    "LOST delete #{n} in {store}: {contact_id} is still live in canonical"
                ));
            }
            Event::Create { n, store, email } => {
                if live
                    .values()
                    .any(|c| c.primary_email() == Some(email.as_str()))
                {
                    continue;
                }
                let deleted_later = history.iter().any(
                    |ev| matches!(ev, Event::Delete { n: m, email: e, .. } if m > n && e == email),
                );
                if deleted_later {
                    continue;
                }
                bad.push(format!(
                    "LOST create #{n} in {store}: no live contact with {email} in canonical"
                ));
            }
        }
    }
    bad
}

fn live_count(h: &MemoryHandle) -> usize {
    h.live().len()
}

fn all_ids(stores: &[MemoryHandle; 3]) -> Vec<String> {
    stores
        .iter()
        .flat_map(|h| h.all())
        .map(|c| c.contact_id)
        .filter(|id| !id.is_empty())
        .collect()
}

fn run_seed(seed: u64) -> (Vec<String>, usize) {
    run_seed_with(seed, false)
}

fn run_seed_with(seed: u64, broken: bool) -> (Vec<String>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut sim = Sim::with_stores(seed, broken);
    let e = rt.block_on(sim.run(30));
    let events = sim.writers.lock().unwrap().history.len();
    (check(&sim, &e), events)
}

#[test]
fn every_acknowledged_write_ends_everywhere_or_as_a_conflict() {
    let seeds: u64 = std::env::var("HISTORY_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let first: u64 = std::env::var("HISTORY_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut failed = Vec::new();
    let mut events = 0;
    for seed in first..first + seeds {
        let (bad, n) = run_seed(seed);
        events += n;
        if !bad.is_empty() {
            failed.push(format!("seed {seed}:\n  {}", bad.join("\n  ")));
        }
    }
    eprintln!("history checker: {seeds} seeds, {events} user writes checked");
    assert!(
        events > seeds as usize * 5,
        "writers acted too little: {events}"
    );
    assert!(
        failed.is_empty(),
        "{} of {seeds} seeds lost writes (replay one with HISTORY_SEED=<seed> ... replay -- --ignored):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// The checker is only worth something if it fails on a broken engine:
/// with stores that ignore write conditions (writes overwrite whatever an
/// editor put there since the engine looked), it must report lost writes.
#[test]
fn the_checker_catches_writes_that_ignore_their_condition() {
    let mut lost = 0;
    let mut seeds_failing = 0;
    for seed in 1..=30 {
        let (bad, _) = run_seed_with(seed, true);
        let n = bad.iter().filter(|b| b.starts_with("LOST")).count();
        lost += n;
        seeds_failing += usize::from(n > 0);
    }
    eprintln!("conditions ignored: {lost} lost writes in {seeds_failing} of 30 seeds");
    assert!(
        seeds_failing >= 3,
        "the checker found lost writes in only {seeds_failing} of 30 seeds ({lost} writes) with conditions ignored"
    );
}

/// Replays one seed and prints its history (`HISTORY_SEED=<n>`).
#[test]
#[ignore = "replays one seed of the history checker: set HISTORY_SEED"]
fn replay() {
    let seed: u64 = std::env::var("HISTORY_SEED")
        .expect("set HISTORY_SEED to the seed to replay")
        .parse()
        .expect("HISTORY_SEED is a number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut sim = Sim::new(seed);
    let e = rt.block_on(sim.run(30));
    for ev in &sim.writers.lock().unwrap().history {
        eprintln!("{ev:?}");
    }
    let bad = check(&sim, &e);
    for b in &bad {
        eprintln!("{b}");
    }
    if let Ok(id) = std::env::var("HISTORY_CONTACT") {
        for j in e.state().journal_of(&id, 1000).expect("journal") {
            eprintln!(
                "J{} v{} prev={} {:?} from {} h={} changes={:?} conflicts={:?}",
                j.seq,
                j.version,
                j.prev_version,
                j.op,
                j.origin,
                &j.hash[..6],
                j.changes
                    .iter()
                    .map(|c| (c.field.clone(), c.new.clone()))
                    .collect::<Vec<_>>(),
                j.conflicts
            );
        }
        for (i, name) in STORES.iter().enumerate() {
            eprintln!(
                "{name}: {:?}",
                sim.stores[i].get(&id).map(|c| (c.version, c.is_deleted()))
            );
            eprintln!(
                "  rec: {:?}",
                e.state().store_record(name, &id).expect("rec")
            );
        }
        eprintln!(
            "open: {:?}",
            e.state()
                .conflicts(true)
                .expect("conflicts")
                .iter()
                .filter(|r| r.contact_id == id)
                .collect::<Vec<_>>()
        );
    }
    assert!(bad.is_empty());
}
