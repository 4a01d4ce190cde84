//! Contact data in log lines: masked unless PII logging is switched on.
//!
//! A text that quotes contact values (a validation reason such as
//! `"ada@example" is not an email address`) is built once in two renderings
//! by [`Reason::quoting`]: in full, for what the state database keeps (a
//! dead letter's reason: people need the value to fix the record), and
//! masked, for log lines (`"a***@e***" is not an email address`). Which one
//! a log line shows is decided when it is formatted ([`Reason`]'s
//! `Display`), by a process-wide switch the CLI sets once at start-up
//! (`--log-pii`): [`set_log_pii`]. Off by default.
//!
//! No IO here: the switch is an atomic flag.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

static LOG_PII: AtomicBool = AtomicBool::new(false);

/// Lets log lines show contact data unmasked (`--log-pii`). Meant to be
/// called once, at start-up, before anything is logged.
pub fn set_log_pii(on: bool) {
    LOG_PII.store(on, Ordering::Relaxed);
}

/// Whether log lines show contact data unmasked.
pub fn log_pii() -> bool {
    LOG_PII.load(Ordering::Relaxed)
}

/// Masks one contact value: each `@`-separated part keeps its first
/// character, the rest becomes `***` (`ada@example.com` → `a***@e***`,
/// `+4420` → `+***`). Lengths are not kept; an empty part stays empty.
pub fn mask(value: &str) -> String {
    value
        .split('@')
        .map(|part| match part.chars().next() {
            Some(first) => format!("{first}***"),
            None => String::new(),
        })
        .collect::<Vec<_>>()
        .join("@")
}

/// Masks a JSON value: objects and arrays keep only their shape (`{…}`,
/// `[…]`), strings are [`mask`]ed, other scalars become `…`.
pub fn mask_json(value: &Value) -> String {
    match value {
        Value::Object(_) => "{…}".to_string(),
        Value::Array(_) => "[…]".to_string(),
        Value::String(s) => format!("\"{}\"", mask(s)),
        _ => "…".to_string(),
    }
}

/// Renders the contact values inside a reason: in full or masked. Given to
/// the closure of [`Reason::quoting`], which is called once per rendering.
#[derive(Debug, Clone, Copy)]
pub struct Quote {
    masked: bool,
}

impl Quote {
    /// A text value, quoted: `"ada@example"` (masked: `"a***@e***"`).
    pub fn text(&self, value: &str) -> String {
        if self.masked {
            format!("\"{}\"", mask(value))
        } else {
            format!("{value:?}")
        }
    }

    /// A JSON value as JSON text (masked: see [`mask_json`]).
    pub fn json(&self, value: &Value) -> String {
        if self.masked {
            mask_json(value)
        } else {
            value.to_string()
        }
    }

    /// Text from elsewhere that may quote a value (a parser's or a
    /// server's error message): kept in full, `[masked]` when masked.
    pub fn detail(&self, text: &str) -> String {
        if self.masked {
            "[masked]".to_string()
        } else {
            text.to_string()
        }
    }
}

/// A reason that may quote contact values: the full text (for the state
/// database) and, when it quotes any, a masked rendering (for logs).
///
/// `Display` writes the masked rendering unless [`log_pii`] is on; use
/// [`full`](Reason::full) for what is stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reason {
    full: String,
    masked: Option<String>,
}

impl Reason {
    /// A reason that quotes no contact data (`is missing`, `has 101
    /// entries, at most 100`): logged as it is.
    pub fn plain(text: impl Into<String>) -> Self {
        Reason {
            full: text.into(),
            masked: None,
        }
    }

    /// A reason quoting contact values, each through the [`Quote`] given:
    ///
    /// ```
    /// use contact_sync_core::pii::Reason;
    /// let r = Reason::quoting(|q| format!("{} is not an email address", q.text("ada@example")));
    /// assert_eq!(r.full(), r#""ada@example" is not an email address"#);
    /// assert_eq!(r.masked(), r#""a***@e***" is not an email address"#);
    /// ```
    pub fn quoting(render: impl Fn(&Quote) -> String) -> Self {
        Reason {
            full: render(&Quote { masked: false }),
            masked: Some(render(&Quote { masked: true })),
        }
    }

    /// The full text, contact values included.
    pub fn full(&self) -> &str {
        &self.full
    }

    /// The text with contact values masked.
    pub fn masked(&self) -> &str {
        self.masked.as_deref().unwrap_or(&self.full)
    }

    /// The full text and the masked rendering (`None`: nothing to mask).
    pub fn into_parts(self) -> (String, Option<String>) {
        (self.full, self.masked)
    }

    /// From [`into_parts`](Reason::into_parts).
    pub fn from_parts(full: String, masked: Option<String>) -> Self {
        Reason { full, masked }
    }

    /// The same reason with both renderings rewritten by `f` (to add
    /// context that quotes no contact data, e.g. a row id).
    pub fn map(self, f: impl Fn(&str) -> String) -> Self {
        Reason {
            full: f(&self.full),
            masked: self.masked.as_deref().map(f),
        }
    }

    /// What a log line shows: the full text with [`log_pii`] on, else the
    /// masked one.
    pub fn for_log(&self, pii: bool) -> &str {
        if pii {
            &self.full
        } else {
            self.masked()
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.for_log(log_pii()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_each_part_to_its_first_character() {
        assert_eq!(mask("foo@example"), "f***@e***");
        assert_eq!(mask("ada.lovelace@example.com"), "a***@e***");
        assert_eq!(mask("not-an-email"), "n***");
        assert_eq!(mask("+44 20 7123"), "+***");
        assert_eq!(mask("@x"), "@x***");
        assert_eq!(mask(""), "");
        assert_eq!(mask("Åsa"), "Å***");
    }

    #[test]
    fn json_keeps_only_the_shape() {
        assert_eq!(mask_json(&json!({"date": "1990-01-01"})), "{…}");
        assert_eq!(mask_json(&json!(["x"])), "[…]");
        assert_eq!(mask_json(&json!("secret")), "\"s***\"");
        assert_eq!(mask_json(&json!(11)), "…");
    }

    #[test]
    fn a_quoting_reason_has_both_renderings() {
        let r = Reason::quoting(|q| {
            format!(
                "{} is not under {}; found {}; {}",
                q.text("C2"),
                q.text("B"),
                q.json(&json!({"a": 1})),
                q.detail("invalid type: string \"x\"")
            )
        });
        assert_eq!(
            r.full(),
            r#""C2" is not under "B"; found {"a":1}; invalid type: string "x""#
        );
        assert_eq!(
            r.masked(),
            r#""C***" is not under "B***"; found {…}; [masked]"#
        );
        assert_eq!(r.for_log(true), r.full());
        assert_eq!(r.for_log(false), r.masked());
    }

    #[test]
    fn map_rewrites_both_renderings() {
        let r = Reason::quoting(|q| format!("not a timestamp: {}", q.text("soon")))
            .map(|r| format!("row id 7: {r}"));
        assert_eq!(r.full(), r#"row id 7: not a timestamp: "soon""#);
        assert_eq!(r.masked(), r#"row id 7: not a timestamp: "s***""#);
        let r = Reason::plain("is NULL").map(|r| format!("row id 7: {r}"));
        assert_eq!(r.masked(), "row id 7: is NULL");
    }

    #[test]
    fn a_plain_reason_is_logged_as_it_is() {
        let r = Reason::plain("is missing");
        assert_eq!((r.full(), r.masked()), ("is missing", "is missing"));
        assert_eq!(r.for_log(false), "is missing");
    }
}
