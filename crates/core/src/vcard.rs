//! vCard 4.0 (RFC 6350) writing: one card per live contact, CRLF line
//! ends, lines folded at 75 octets (never inside a UTF-8 character), text
//! values escaped (`\\`, `\,`, `\;`, `\n`). Written by hand: no maintained
//! crate in reach covered writing 4.0 without a large dependency.
//! Reading (4.0 and 3.0) is not done yet.

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
    fn tombstones_are_left_out() {
        let mut c = Contact::new("c-1", "Ada");
        c.deleted_at = Some(crate::model::now());
        assert_eq!(to_vcard(&c), "");
    }
}
