//! What phone normalisation costs per number (BENCHMARKS.md):
//! `cargo run -p contact-sync-core --release --example phone_cost`.
use std::time::Instant;

use contact_sync_core::phone::{normalize_number, normalize_phones, Region};
use contact_sync_core::{Contact, Phone};

fn main() {
    let us: Option<Region> = Some("US".parse().unwrap());
    let n = 20_000;
    // Warm the metadata (loaded once per process).
    normalize_number("(415) 555-0100", us).unwrap();
    for (what, input) in [
        ("national (415) 555-0100", "(415) 555-0100"),
        ("international +44 7700 900123", "+44 7700 900123"),
    ] {
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(normalize_number(std::hint::black_box(input), us).unwrap());
        }
        println!(
            "{what}: {:.2} µs/number",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
    let mut c = Contact::new("c1", "Ada");
    c.phones.push(Phone {
        number: "+14155550100".into(),
        label: None,
        is_primary: true,
    });
    let t = Instant::now();
    for _ in 0..n * 10 {
        std::hint::black_box(normalize_phones(std::hint::black_box(&mut c), us).unwrap());
    }
    println!(
        "contact already in E.164 (fast path): {:.3} µs/contact",
        t.elapsed().as_secs_f64() * 1e6 / (n * 10) as f64
    );
    let t = Instant::now();
    for _ in 0..n * 10 {
        let mut x = std::hint::black_box(c.clone());
        x.normalize();
        std::hint::black_box(x);
    }
    println!(
        "Contact::normalize (+clone) for comparison: {:.3} µs/contact",
        t.elapsed().as_secs_f64() * 1e6 / (n * 10) as f64
    );
}
