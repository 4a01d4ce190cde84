//! `contact-sync duplicates`: likely duplicate pairs in canonical.
//!
//! Canonical is read a page at a time; per live contact only its id, name,
//! organization and identifiers are kept. Pairs are found three ways: the
//! same email address (any of them, case-folded), the same phone number
//! (E.164), or — within one organization — names whose Jaro-Winkler
//! similarity reaches `--min-score`. Names are compared by sorted
//! neighbourhood (each with the next [`WINDOW`] names of its organization
//! in name order), so a big organization costs n·WINDOW comparisons, not
//! n². Pairs sharing an identifier score 1.0. At most `--limit` pairs are
//! printed, best first; the total found is reported.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;

use serde::Serialize;

use crate::config::Config;

/// How many following names (same organization, name order) each name is
/// compared with.
const WINDOW: usize = 50;

#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub a: String,
    pub b: String,
    pub a_name: String,
    pub b_name: String,
    pub score: f64,
    pub reasons: Vec<String>,
}

struct Seen {
    id: String,
    name: String,
}

fn norm_name(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Finds the pairs (see the module docs), best first.
pub fn find_pairs(
    contacts: impl IntoIterator<Item = contact_sync_core::Contact>,
    min_score: f64,
) -> Vec<Pair> {
    let mut people: Vec<Seen> = Vec::new();
    let mut by_email: HashMap<String, Vec<usize>> = HashMap::new();
    let mut by_phone: HashMap<String, Vec<usize>> = HashMap::new();
    let mut by_org: HashMap<String, Vec<usize>> = HashMap::new();
    for c in contacts {
        if c.is_deleted() {
            continue;
        }
        let i = people.len();
        for e in &c.emails {
            let k = e.address.trim().to_lowercase();
            if !k.is_empty() {
                let v = by_email.entry(k).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
        }
        for p in &c.phones {
            let k = p.number.trim().to_string();
            if !k.is_empty() {
                let v = by_phone.entry(k).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
        }
        if let Some(org) = c
            .organization
            .as_deref()
            .map(norm_name)
            .filter(|o| !o.is_empty())
        {
            by_org.entry(org).or_default().push(i);
        }
        people.push(Seen {
            id: c.contact_id,
            name: c.display_name.unwrap_or(c.canonical_name),
        });
    }
    // (lower index, higher index) → (score, reasons)
    let mut found: BTreeMap<(usize, usize), (f64, Vec<String>)> = BTreeMap::new();
    let mut add = |a: usize, b: usize, score: f64, reason: String| {
        let key = (a.min(b), a.max(b));
        let e = found.entry(key).or_insert((0.0, Vec::new()));
        e.0 = e.0.max(score);
        e.1.push(reason);
    };
    for (kind, map) in [("email", &by_email), ("phone", &by_phone)] {
        for (k, ids) in map {
            for (x, &a) in ids.iter().enumerate() {
                for &b in &ids[x + 1..] {
                    add(a, b, 1.0, format!("same {kind} {k}"));
                }
            }
        }
    }
    for (org, mut ids) in by_org {
        ids.sort_by_cached_key(|&i| norm_name(&people[i].name));
        for (x, &a) in ids.iter().enumerate() {
            let na = norm_name(&people[a].name);
            for &b in ids.iter().skip(x + 1).take(WINDOW) {
                let score = strsim::jaro_winkler(&na, &norm_name(&people[b].name));
                if score >= min_score {
                    add(
                        a,
                        b,
                        score,
                        format!("similar name in organization {org:?} ({score:.2})"),
                    );
                }
            }
        }
    }
    let mut pairs: Vec<Pair> = found
        .into_iter()
        .map(|((a, b), (score, reasons))| Pair {
            a: people[a].id.clone(),
            b: people[b].id.clone(),
            a_name: people[a].name.clone(),
            b_name: people[b].name.clone(),
            score: (score * 1000.0).round() / 1000.0,
            reasons,
        })
        .collect();
    pairs.sort_by(|x, y| {
        y.score
            .total_cmp(&x.score)
            .then_with(|| x.a.cmp(&y.a))
            .then_with(|| x.b.cmp(&y.b))
    });
    pairs
}

pub async fn duplicates(
    cfg: &Config,
    json: bool,
    limit: usize,
    min_score: f64,
) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&min_score) || min_score.is_nan() {
        return Err(crate::config::ConfigError(format!(
            "--min-score must be between 0 and 1, not {min_score}"
        ))
        .into());
    }
    let mut canonical = crate::stores::open_canonical(cfg).await?;
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = canonical.scan(after.as_deref(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.contact_id.clone());
        // Only what the comparison needs is kept.
        all.extend(page.into_iter().filter(|c| !c.is_deleted()).map(|c| {
            let mut k = contact_sync_core::Contact::new(c.contact_id, c.canonical_name);
            k.display_name = c.display_name;
            k.organization = c.organization;
            k.emails = c.emails;
            k.phones = c.phones;
            k
        }));
    }
    let scanned = all.len();
    let pairs = find_pairs(all, min_score);
    let total = pairs.len();
    let shown: Vec<&Pair> = pairs.iter().take(limit).collect();
    if json {
        let doc = serde_json::json!({
            "contacts_scanned": scanned,
            "pairs_found": total,
            "pairs": shown,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for p in &shown {
            println!(
                "{:.3}  {} ({})  ~  {} ({})",
                p.score, p.a, p.a_name, p.b, p.b_name
            );
            for r in &p.reasons {
                println!("       {r}");
            }
        }
        println!(
            "{total} likely duplicate pairs among {scanned} contacts{}",
            if total > shown.len() {
                format!(" ({} shown; --limit for more)", shown.len())
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use contact_sync_core::{Contact, Email, Phone};

    fn person(
        id: &str,
        name: &str,
        org: Option<&str>,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Contact {
        let mut c = Contact::new(id, name);
        c.organization = org.map(str::to_string);
        if let Some(e) = email {
            c.emails.push(Email {
                address: e.into(),
                label: None,
                is_primary: true,
            });
        }
        if let Some(p) = phone {
            c.phones.push(Phone {
                number: p.into(),
                label: None,
                is_primary: true,
            });
        }
        c
    }

    #[test]
    fn pairs_by_email_phone_and_similar_name_in_one_organization() {
        let mut gone = person("c9", "Ada Lovelace", None, Some("ada@example.com"), None);
        gone.deleted_at = Some(contact_sync_core::model::now());
        let pairs = find_pairs(
            vec![
                person("c1", "Ada Lovelace", None, Some("ada@example.com"), None),
                person("c2", "A. King", None, Some("ADA@example.com"), None),
                person("c3", "Alan Turing", None, None, Some("+14155550100")),
                person("c4", "A. M. Turing", None, None, Some("+14155550100")),
                person("c5", "Grace Hopper", Some("US Navy"), None, None),
                person("c6", "Grace Hoper", Some("us navy"), None, None),
                person("c7", "Grace Hopper", Some("Elsewhere"), None, None),
                person("c8", "Edsger Dijkstra", Some("US Navy"), None, None),
                gone,
            ],
            0.9,
        );
        let got: Vec<(&str, &str)> = pairs.iter().map(|p| (p.a.as_str(), p.b.as_str())).collect();
        assert_eq!(
            got,
            vec![("c1", "c2"), ("c3", "c4"), ("c5", "c6")],
            "{pairs:#?}"
        );
        assert!(pairs[0].reasons[0].contains("same email ada@example.com"));
        assert!(pairs[1].reasons[0].contains("same phone +14155550100"));
        assert!(pairs[2].reasons[0].contains("similar name in organization \"us navy\""));
        assert!(pairs[2].score >= 0.9 && pairs[2].score < 1.0);
    }
}
