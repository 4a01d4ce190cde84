//! vCard 4.0 (RFC 6350) writing: one card per live contact, CRLF line
//! ends, lines folded at 75 octets (never inside a UTF-8 character), text
//! values escaped (`\\`, `\,`, `\;`, `\n`). Written by hand: no maintained
//! crate in reach covered writing 4.0 without a large dependency.
//!
//! Reading ([`from_vcards`], 4.0 and 3.0): the `ical` crate splits the
//! text into cards and properties (unfolding, parameters, quoting); the
//! mapping back to fields is the inverse of [`to_vcard`]'s.

use crate::model::{format_ts, Contact};

/// Escapes a TEXT value (RFC 6350 §3.4).
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => o.push_str("\\\\"),
            ',' => o.push_str("\\,"),
            ';' => o.push_str("\\;"),
            '\n' => o.push_str("\\n"),
            '\r' => {}
            c => o.push(c),
        }
    }
    o
}

/// Folds one content line at 75 octets (RFC 6350 §3.2) and ends it in CRLF.
fn fold(line: &str, out: &mut String) {
    let mut width = 0;
    for ch in line.chars() {
        let n = ch.len_utf8();
        if width + n > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(ch);
        width += n;
    }
    out.push_str("\r\n");
}

/// A parameter value, quoted when it holds `,` `;` or `:`.
fn param(v: &str) -> String {
    let v: String = v.chars().filter(|c| *c != '"' && !c.is_control()).collect();
    if v.contains([',', ';', ':']) {
        format!("\"{v}\"")
    } else {
        v
    }
}

/// One contact as a vCard 4.0 (tombstones give an empty string).
pub fn to_vcard(c: &Contact) -> String {
    if c.is_deleted() {
        return String::new();
    }
    let mut out = String::new();
    let mut line = |l: String| fold(&l, &mut out);
    line("BEGIN:VCARD".into());
    line("VERSION:4.0".into());
    line(format!("UID:urn:contact-sync:{}", esc(&c.contact_id)));
    let full = c.display_name.as_deref().unwrap_or(&c.canonical_name);
    line(format!("FN:{}", esc(full)));
    let o = |v: &Option<String>| v.as_deref().map(esc).unwrap_or_default();
    if c.first_name.is_some() || c.last_name.is_some() || c.middle_name.is_some() {
        line(format!(
            "N:{};{};{};{};{}",
            o(&c.last_name),
            o(&c.first_name),
            o(&c.middle_name),
            o(&c.name_prefix),
            o(&c.name_suffix)
        ));
    }
    if let Some(n) = &c.nickname {
        line(format!("NICKNAME:{}", esc(n)));
    }
    if let Some(org) = &c.organization {
        match &c.department {
            Some(d) => line(format!("ORG:{};{}", esc(org), esc(d))),
            None => line(format!("ORG:{}", esc(org))),
        }
    }
    if let Some(t) = &c.job_title {
        line(format!("TITLE:{}", esc(t)));
    }
    for e in &c.emails {
        let mut p = String::new();
        if let Some(l) = &e.label {
            p.push_str(&format!(";TYPE={}", param(l)));
        }
        if e.is_primary {
            p.push_str(";PREF=1");
        }
        line(format!("EMAIL{p}:{}", esc(&e.address)));
    }
    for t in &c.phones {
        let mut p = String::from(";VALUE=uri");
        if let Some(l) = &t.label {
            p.push_str(&format!(";TYPE={}", param(l)));
        }
        if t.is_primary {
            p.push_str(";PREF=1");
        }
        line(format!("TEL{p}:tel:{}", t.number));
    }
    let mut cats: Vec<String> = Vec::new();
    if let Some(code) = &c.category_code {
        cats.push(esc(code));
    }
    cats.extend(c.tags.iter().map(|t| esc(t)));
    if !cats.is_empty() {
        line(format!("CATEGORIES:{}", cats.join(",")));
    }
    if let Some(n) = &c.notes {
        line(format!("NOTE:{}", esc(n)));
    }
    if let Some(t) = &c.last_updated {
        line(format!("REV:{}", format_ts(t).replace(['-', ':'], "")));
    }
    line("END:VCARD".into());
    out
}

/// One card read from a vCard file: its position (1-based), and the
/// contact or why it could not be read. The contact has no `contact_id`
/// unless the card's UID is one of ours (`urn:contact-sync:<id>`).
#[derive(Debug, Clone)]
pub struct ReadCard {
    pub index: usize,
    pub contact: Result<Contact, String>,
}

/// Splits a value at unescaped `sep` and unescapes each part.
fn split_unescape(v: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = v.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => match chars.next() {
                Some('n') | Some('N') => parts.last_mut().unwrap().push('\n'),
                Some(c) => parts.last_mut().unwrap().push(c),
                None => {}
            },
            c if c == sep => parts.push(String::new()),
            c => parts.last_mut().unwrap().push(c),
        }
    }
    parts
}

fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(ch) = chars.next() {
        if ch == '\\' {
            match chars.next() {
                Some('n') | Some('N') => out.push('\n'),
                Some(c) => out.push(c),
                None => {}
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn some(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// TYPE values (4.0 `TYPE=work,voice`, 3.0 `TYPE=INTERNET;TYPE=pref`) and
/// whether the property is the preferred one (`PREF=1` or `TYPE=pref`).
fn label_and_pref(params: &Option<Vec<(String, Vec<String>)>>) -> (Option<String>, bool) {
    let mut label = None;
    let mut pref = false;
    for (k, vs) in params.iter().flatten() {
        match k.as_str() {
            "PREF" => pref |= vs.iter().any(|v| v.trim() == "1"),
            "TYPE" => {
                for v in vs.iter().flat_map(|v| v.split(',')) {
                    let v = v.trim();
                    if v.eq_ignore_ascii_case("pref") {
                        pref = true;
                    } else if !v.is_empty()
                        && !["internet", "voice", "x400"]
                            .iter()
                            .any(|s| v.eq_ignore_ascii_case(s))
                        && label.is_none()
                    {
                        label = Some(v.to_lowercase());
                    }
                }
            }
            _ => {}
        }
    }
    (label, pref)
}

fn card_to_contact(props: &[ical::property::Property]) -> Result<Contact, String> {
    let mut c = Contact::new("", "");
    let mut fn_name: Option<String> = None;
    let mut version: Option<String> = None;
    for p in props {
        // Apple and Google group properties: `item1.EMAIL`.
        let name = p.name.rsplit('.').next().unwrap_or("").to_uppercase();
        let raw = p.value.as_deref().unwrap_or("");
        match name.as_str() {
            "VERSION" => version = Some(raw.trim().to_string()),
            "UID" => {
                if let Some(id) = unescape(raw).trim().strip_prefix("urn:contact-sync:") {
                    c.contact_id = id.to_string();
                }
            }
            "FN" => fn_name = some(&unescape(raw)),
            "N" => {
                let f = split_unescape(raw, ';');
                let at = |i: usize| f.get(i).and_then(|s| some(s));
                c.last_name = at(0);
                c.first_name = at(1);
                c.middle_name = at(2);
                c.name_prefix = at(3);
                c.name_suffix = at(4);
            }
            "NICKNAME" => c.nickname = split_unescape(raw, ',').first().and_then(|s| some(s)),
            "ORG" => {
                let f = split_unescape(raw, ';');
                c.organization = f.first().and_then(|s| some(s));
                c.department = f.get(1).and_then(|s| some(s));
            }
            "TITLE" => c.job_title = some(&unescape(raw)),
            "NOTE" => c.notes = some(&unescape(raw)),
            "EMAIL" => {
                if let Some(address) = some(&unescape(raw)) {
                    let (label, pref) = label_and_pref(&p.params);
                    c.emails.push(crate::model::Email {
                        address,
                        label,
                        is_primary: pref,
                    });
                }
            }
            "TEL" => {
                let v = unescape(raw);
                let v = v.trim();
                let v = v.strip_prefix("tel:").unwrap_or(v);
                if let Some(number) = some(v) {
                    let (label, pref) = label_and_pref(&p.params);
                    c.phones.push(crate::model::Phone {
                        number,
                        label,
                        is_primary: pref,
                    });
                }
            }
            "CATEGORIES" => {
                for v in split_unescape(raw, ',') {
                    let Some(v) = some(&v) else { continue };
                    // The export writes the category code first.
                    if c.category_code.is_none()
                        && c.tags.is_empty()
                        && v.len() == 1
                        && crate::model::category_name(&v).is_some()
                    {
                        c.category_code = Some(v);
                    } else if !c.tags.contains(&v) {
                        c.tags.push(v);
                    }
                }
            }
            _ => {}
        }
    }
    match version.as_deref() {
        Some("4.0") | Some("3.0") => {}
        Some(v) => return Err(format!("VERSION {v:?} is not read (only 3.0 and 4.0)")),
        None => return Err("VERSION is missing".into()),
    }
    // Only one primary of each: the first flagged.
    let mut seen = false;
    for e in &mut c.emails {
        let first = e.is_primary && !seen;
        seen |= e.is_primary;
        e.is_primary = first;
    }
    let mut seen = false;
    for t in &mut c.phones {
        let first = t.is_primary && !seen;
        seen |= t.is_primary;
        t.is_primary = first;
    }
    let built = name_from_parts(&c);
    c.canonical_name = fn_name.or_else(|| some(&built)).unwrap_or_default();
    Ok(c)
}

/// The name parts (prefix, first, middle, last, suffix) joined by spaces:
/// the display name of a record that has parts but no full name.
pub fn name_from_parts(c: &Contact) -> String {
    [
        &c.name_prefix,
        &c.first_name,
        &c.middle_name,
        &c.last_name,
        &c.name_suffix,
    ]
    .iter()
    .filter_map(|s| s.as_deref())
    .collect::<Vec<_>>()
    .join(" ")
}

/// Reads every card of a vCard file (4.0 or 3.0). A card that cannot be
/// read says why; reading stops at a card the parser cannot get past.
pub fn from_vcards(input: &[u8]) -> Vec<ReadCard> {
    let mut out = Vec::new();
    for (i, card) in ical::VcardParser::new(std::io::BufReader::new(input)).enumerate() {
        match card {
            Ok(card) => out.push(ReadCard {
                index: i + 1,
                contact: card_to_contact(&card.properties),
            }),
            Err(e) => {
                out.push(ReadCard {
                    index: i + 1,
                    contact: Err(e.to_string()),
                });
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Email, Phone};

    #[test]
    fn a_contact_becomes_a_vcard_4() {
        let mut c = Contact::new("c-1", "Ada Lovelace");
        c.first_name = Some("Ada".into());
        c.last_name = Some("Lovelace".into());
        c.organization = Some("Analytical, Engines; Ltd".into());
        c.notes = Some("line one\nline two".into());
        c.category_code = Some("G".into());
        c.emails.push(Email {
            address: "ada@example.com".into(),
            label: Some("work".into()),
            is_primary: true,
        });
        c.phones.push(Phone {
            number: "+14155550100".into(),
            label: Some("mobile".into()),
            is_primary: true,
        });
        let v = to_vcard(&c);
        assert!(v.starts_with("BEGIN:VCARD\r\nVERSION:4.0\r\n"), "{v}");
        assert!(v.contains("FN:Ada Lovelace\r\n"));
        assert!(v.contains("N:Lovelace;Ada;;;\r\n"));
        assert!(v.contains("ORG:Analytical\\, Engines\\; Ltd\r\n"));
        assert!(v.contains("NOTE:line one\\nline two\r\n"));
        assert!(v.contains("EMAIL;TYPE=work;PREF=1:ada@example.com\r\n"));
        assert!(v.contains("TEL;VALUE=uri;TYPE=mobile;PREF=1:tel:+14155550100\r\n"));
        assert!(v.contains("CATEGORIES:G\r\n"));
        assert!(v.ends_with("END:VCARD\r\n"));
    }

    #[test]
    fn long_lines_are_folded_at_75_octets_not_inside_a_character() {
        let mut c = Contact::new("c-1", "Ada");
        c.notes = Some("é".repeat(100));
        let v = to_vcard(&c);
        for l in v.split("\r\n") {
            assert!(l.len() <= 75, "{l:?}");
        }
        let unfolded = v.replace("\r\n ", "");
        assert!(unfolded.contains(&format!("NOTE:{}", "é".repeat(100))));
    }

    #[test]
    fn an_exported_card_reads_back_to_the_same_fields() {
        let mut c = Contact::new("c-1", "Ada Lovelace");
        c.first_name = Some("Ada".into());
        c.last_name = Some("Lovelace".into());
        c.organization = Some("Analytical, Engines; Ltd".into());
        c.department = Some("Maths".into());
        c.job_title = Some("Analyst".into());
        c.notes = Some("line one\nline two".into());
        c.category_code = Some("G".into());
        c.tags = vec!["poet".into()];
        c.emails.push(Email {
            address: "ada@example.com".into(),
            label: Some("work".into()),
            is_primary: true,
        });
        c.phones.push(Phone {
            number: "+14155550100".into(),
            label: Some("mobile".into()),
            is_primary: true,
        });
        let cards = from_vcards(to_vcard(&c).as_bytes());
        assert_eq!(cards.len(), 1);
        let r = cards[0].contact.clone().unwrap();
        assert_eq!(r.contact_id, "c-1");
        assert_eq!(r.canonical_name, "Ada Lovelace");
        assert_eq!(r.first_name, c.first_name);
        assert_eq!(r.last_name, c.last_name);
        assert_eq!(r.organization, c.organization);
        assert_eq!(r.department, c.department);
        assert_eq!(r.job_title, c.job_title);
        assert_eq!(r.notes, c.notes);
        assert_eq!(r.category_code, c.category_code);
        assert_eq!(r.tags, c.tags);
        assert_eq!(r.emails, c.emails);
        assert_eq!(r.phones, c.phones);
    }

    #[test]
    fn a_vcard_3_card_is_read() {
        let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nN:Hopper;Grace;;;\r\n\
            item1.EMAIL;TYPE=INTERNET;TYPE=WORK;TYPE=pref:grace@navy.example\r\n\
            TEL;TYPE=CELL:+1 415 555 0199\r\nORG:US Navy\r\nEND:VCARD\r\n\
            BEGIN:VCARD\r\nVERSION:2.1\r\nFN:Old\r\nEND:VCARD\r\n";
        let cards = from_vcards(text.as_bytes());
        assert_eq!(cards.len(), 2);
        let g = cards[0].contact.clone().unwrap();
        assert_eq!(g.contact_id, "");
        assert_eq!(g.canonical_name, "Grace Hopper");
        assert_eq!(g.emails[0].address, "grace@navy.example");
        assert_eq!(g.emails[0].label.as_deref(), Some("work"));
        assert!(g.emails[0].is_primary);
        assert_eq!(g.phones[0].number, "+1 415 555 0199");
        assert_eq!(g.phones[0].label.as_deref(), Some("cell"));
        assert_eq!(g.organization.as_deref(), Some("US Navy"));
        let old = cards[1].contact.clone().unwrap_err();
        assert!(old.contains("2.1"), "{old}");
    }

    #[test]
    fn tombstones_are_left_out() {
        let mut c = Contact::new("c-1", "Ada");
        c.deleted_at = Some(crate::model::now());
        assert_eq!(to_vcard(&c), "");
    }
}
