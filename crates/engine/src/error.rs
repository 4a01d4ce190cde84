//! Engine errors.

use contact_sync_connector::StoreError;
use contact_sync_state::StateError;

/// Why an engine step failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A store failed; other stores go on. Retried next cycle when transient.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The canonical store failed: the cycle stops and is retried.
    #[error("canonical store: {0}")]
    Canonical(StoreError),
    /// The state database failed: the cycle stops (nothing is safe to do).
    #[error(transparent)]
    State(#[from] StateError),
    /// The engine was set up wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// A person asked for something that does not exist or cannot be done.
    #[error("{0}")]
    Request(String),
}

impl EngineError {
    /// True when the error belongs to one store (the cycle can go on with
    /// the others).
    pub fn is_store_error(&self) -> bool {
        matches!(self, EngineError::Store(_))
    }
}
