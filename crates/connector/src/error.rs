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
/// done, and never contains secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{store}: {message}")]
pub struct StoreError {
    pub store: String,
    pub message: String,
    pub class: RetryClass,
}

impl StoreError {
    pub fn transient(store: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError {
            store: store.into(),
            message: message.into(),
            class: RetryClass::Transient,
        }
    }
    pub fn permanent(store: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError {
            store: store.into(),
            message: message.into(),
            class: RetryClass::Permanent,
        }
    }
    pub fn paused(store: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError {
            store: store.into(),
            message: message.into(),
            class: RetryClass::Paused,
        }
    }
    pub fn is_transient(&self) -> bool {
        self.class == RetryClass::Transient
    }
}
