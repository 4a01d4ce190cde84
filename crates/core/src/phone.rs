//! Phone numbers as people type them (`+44 7700 900123`, `(415) 555-0100`),
//! brought to E.164 with libphonenumber's rules (the `phonenumber` crate).
//!
//! Normalisation is not part of [`Contact::normalize`], which runs on every
//! record of every read: parsing costs microseconds per number (see
//! BENCHMARKS.md), and the region is configuration. The engine calls
//! [`normalize_phones`] on captured changes only, before validation, and
//! writes the E.164 form back to the store the change came from.
//!
//! The rules:
//! - a number already in E.164 (`+` and 8 to 15 digits, what every store
//!   holds once synced) is kept as it is, unparsed;
//! - another number in international form (`+` then the country code) is parsed
//!   and written in E.164; it is refused only when libphonenumber cannot
//!   parse it (unknown country code, too short, too long). Its validity
//!   against the metadata's number ranges is not required: ranges change,
//!   and a number already synced must not become a dead letter because a
//!   metadata update disagrees with it;
//! - a national number (no `+`) is read in the configured default region
//!   and must be a valid number there (otherwise it would be guessed into
//!   the wrong country); without a default region it is refused, with the
//!   advice to write the country code.

use std::fmt;
use std::str::FromStr;

use phonenumber::country::Id;
use phonenumber::Mode;

use crate::model::Contact;
use crate::pii::Reason;
use crate::validate::Invalid;

/// The region national numbers are read in (ISO 3166-1 alpha-2, e.g. `US`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region(Id);

impl FromStr for Region {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let code = s.trim().to_ascii_uppercase();
        Id::from_str(&code).map(Region).map_err(|_| {
            format!("{s:?} is not a region code libphonenumber knows (ISO 3166-1 alpha-2, e.g. \"US\", \"GB\")")
        })
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_ref())
    }
}

/// Why a number was refused (quotes no digits: the caller quotes them).
fn why(e: &phonenumber::ParseError) -> &'static str {
    use phonenumber::ParseError as P;
    match e {
        P::NoNumber => "has no phone number in it",
        P::InvalidCountryCode => "has no known country code",
        P::TooShortAfterIdd | P::TooShortNsn => "is too short to be a phone number",
        P::TooLong => "is too long to be a phone number",
        _ => "is not a phone number",
    }
}

/// One number in E.164, or why it is not a phone number (the reason
/// quotes the value: masked in logs).
pub fn normalize_number(raw: &str, region: Option<Region>) -> Result<String, Reason> {
    let s = raw.trim();
    let quoted = |text: String| Reason::quoting(move |q| format!("{} {text}", q.text(s)));
    let international = s.starts_with('+');
    if !international && region.is_none() {
        return Err(quoted(
            "has no country code and no default region is set ([sync] default_region): write it as +<country code> <number>".into(),
        ));
    }
    let parsed = phonenumber::parse(region.map(|r| r.0), s).map_err(|e| quoted(why(&e).into()))?;
    if !international && !phonenumber::is_valid(&parsed) {
        let r = region.map(|r| r.to_string()).unwrap_or_default();
        return Err(quoted(format!(
            "is not a valid phone number in region {r} (the default region; write numbers of other countries as +<country code> <number>)"
        )));
    }
    let e164 = parsed.format().mode(Mode::E164).to_string();
    if !crate::validate::is_e164(&e164) {
        return Err(quoted("is not a phone number".into()));
    }
    Ok(e164)
}

/// Brings every phone of `c` to E.164. Returns whether any changed; a
/// number that is not a phone number is an [`Invalid`] naming `phones`.
pub fn normalize_phones(c: &mut Contact, region: Option<Region>) -> Result<bool, Invalid> {
    if c.is_deleted() {
        return Ok(false);
    }
    let mut changed = false;
    for p in &mut c.phones {
        if crate::validate::is_e164(&p.number) {
            continue;
        }
        let n = normalize_number(&p.number, region)
            .map_err(|r| Invalid::with_reason(&c.contact_id, "phones", r))?;
        if n != p.number {
            p.number = n;
            changed = true;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Phone;

    fn us() -> Option<Region> {
        Some("US".parse().unwrap())
    }

    #[test]
    fn formatted_and_national_numbers_become_e164() {
        assert_eq!(
            normalize_number("(415) 555-0100", us()).unwrap(),
            "+14155550100"
        );
        assert_eq!(
            normalize_number("415.555.0100", us()).unwrap(),
            "+14155550100"
        );
        assert_eq!(
            normalize_number("+44 7700 900123", us()).unwrap(),
            "+447700900123"
        );
        assert_eq!(
            normalize_number("+1 415-555-0100", None).unwrap(),
            "+14155550100"
        );
        let gb = Some("gb".parse().unwrap());
        assert_eq!(
            normalize_number("07911 123456", gb).unwrap(),
            "+447911123456"
        );
        assert_eq!(
            normalize_number("020 7123 4567", gb).unwrap(),
            "+442071234567"
        );
    }

    #[test]
    fn e164_is_kept_as_it_is() {
        for n in [
            "+14155550100",
            "+447700900123",
            "+4930123456",
            "+390612345678",
        ] {
            assert_eq!(normalize_number(n, us()).unwrap(), n);
        }
    }

    #[test]
    fn only_numbers_that_are_not_valid_are_refused_with_the_reason() {
        let r = normalize_number("020 7123 4567", us()).unwrap_err();
        assert!(r.full().contains("\"020 7123 4567\""), "{}", r.full());
        assert!(
            r.full().contains("not a valid phone number in region US"),
            "{}",
            r.full()
        );
        let r = normalize_number("(415) 555-0100", None).unwrap_err();
        assert!(r.full().contains("default_region"), "{}", r.full());
        let r = normalize_number("+999 123 4567", us()).unwrap_err();
        assert!(r.full().contains("no known country code"), "{}", r.full());
        let r = normalize_number("call me", us()).unwrap_err();
        assert!(r.full().contains("phone number"), "{}", r.full());
        // The masked form does not show the digits.
        assert!(!r.masked().contains("call me"));
    }

    #[test]
    fn a_contact_refused_names_the_field_and_the_record() {
        let mut c = Contact::new("c-1", "Ada");
        c.phones.push(Phone {
            number: "12".into(),
            label: None,
            is_primary: true,
        });
        let e = normalize_phones(&mut c, us()).unwrap_err();
        assert_eq!(e.field, "phones");
        assert_eq!(e.record, "c-1");
    }

    #[test]
    fn contact_phones_are_normalised_and_the_change_reported() {
        let mut c = Contact::new("c-1", "Ada");
        c.phones.push(Phone {
            number: "(415) 555-0100".into(),
            label: Some("work".into()),
            is_primary: true,
        });
        assert!(normalize_phones(&mut c, us()).unwrap());
        assert_eq!(c.phones[0].number, "+14155550100");
        assert!(!normalize_phones(&mut c, us()).unwrap());
        assert!(crate::validate(&c).is_ok());
    }

    #[test]
    fn regions_are_checked() {
        assert!("XX".parse::<Region>().is_err());
        assert_eq!("us".parse::<Region>().unwrap().to_string(), "US");
    }
}
