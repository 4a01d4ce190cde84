//! The error every store returns, classified for retry.

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Transient (timeout, connection reset, 429, 5xx): retry with backoff.
    Transient,
    /// Will not pass until someone acts (bad credentials, missing table,
    /// permission denied, bad config): the engine parks the store (a
    /// `failed` pause: alert, `/health`, `check`) until it is resumed or
    /// its configuration changes. A store must not call a passing outage
    /// permanent: that stops it until a person looks.
    Permanent,
    /// The store's schema or change stream changed under the engine (a
    /// mapped column lost, the publication or table dropped, a truncate, a
    /// re-created table): nothing it says can be trusted until a person
    /// looks. The engine pauses the store (alert, `/health`, `check`) until
    /// it is resumed.
    Paused,
}

/// A store operation failed. The message names the store and what was being
/// done, and never contains secrets. An error that one record caused (a
/// value the store refused, a trigger raising on its row) names the record
/// (its contact id, or the store's id for it) and, when the store says,
/// the field; the engine and people see them in the text
/// (`supabase: writing contacts: … (record c42, field emails)`), and code
/// reads them from [`StoreError::record`] and [`StoreError::field`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{store}: {message}{}", scope(record.as_deref(), field.as_deref()))]
pub struct StoreError {
    pub store: String,
    pub message: String,
    pub class: RetryClass,
    /// The record that caused the error, when one did.
    pub record: Option<String>,
    /// The field of that record, when the store names it.
    pub field: Option<String>,
}

fn scope(record: Option<&str>, field: Option<&str>) -> String {
    match (record, field) {
        (Some(r), Some(f)) => format!(" (record {r}, field {f})"),
        (Some(r), None) => format!(" (record {r})"),
        (None, Some(f)) => format!(" (field {f})"),
        (None, None) => String::new(),
    }
}

impl StoreError {
    pub fn new(store: impl Into<String>, message: impl Into<String>, class: RetryClass) -> Self {
        StoreError {
            store: store.into(),
            message: message.into(),
            class,
            record: None,
            field: None,
        }
    }
    pub fn transient(store: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(store, message, RetryClass::Transient)
    }
    pub fn permanent(store: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(store, message, RetryClass::Permanent)
    }
    pub fn paused(store: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(store, message, RetryClass::Paused)
    }
    /// The same error, caused by record `record`.
    pub fn with_record(mut self, record: impl Into<String>) -> Self {
        self.record = Some(record.into());
        self
    }
    /// The same error, naming field `field` of the record.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    /// The message with the record and field it names, without the store.
    pub fn detail(&self) -> String {
        format!(
            "{}{}",
            self.message,
            scope(self.record.as_deref(), self.field.as_deref())
        )
    }
    pub fn is_transient(&self) -> bool {
        self.class == RetryClass::Transient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_the_record_and_field_when_known() {
        let e = StoreError::permanent("supabase", "writing contacts: refused");
        assert_eq!(e.to_string(), "supabase: writing contacts: refused");
        let e = e.with_record("c42");
        assert_eq!(
            e.to_string(),
            "supabase: writing contacts: refused (record c42)"
        );
        let e = e.with_field("emails");
        assert_eq!(
            e.to_string(),
            "supabase: writing contacts: refused (record c42, field emails)"
        );
        assert_eq!(
            (e.record.as_deref(), e.field.as_deref()),
            (Some("c42"), Some("emails"))
        );
    }
}
