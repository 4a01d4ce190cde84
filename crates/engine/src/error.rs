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
    /// The state database failed: the cycle stops (nothing is safe to do);
    /// a fenced commit ([`EngineError::is_fenced`]) stops the daemon.
    #[error(transparent)]
    State(#[from] StateError),
    /// The engine was set up wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// Another engine journaled a change of this contact after this one
    /// read it (several daemons): nothing was committed; the batch is
    /// merged again against the new entry.
    #[error("contact {0}: another daemon journaled a change of it meanwhile; merged again")]
    JournalMoved(String),
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

    /// True when a state commit was refused because this daemon's lease
    /// was taken over ([`StateError::Fenced`]): nothing of it was
    /// committed, and retrying cannot help (another daemon does the work).
    /// The daemon stops its work and waits as a standby.
    pub fn is_fenced(&self) -> bool {
        matches!(self, EngineError::State(e) if e.is_fenced())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_commit_is_not_a_store_error_and_stops_the_daemon() {
        let e = EngineError::from(StateError::Fenced {
            lease: "store:local".into(),
            holder: "a".into(),
            token: 1,
        });
        assert!(e.is_fenced());
        assert!(!e.is_store_error());
        assert!(!EngineError::from(StateError::NotFound { what: "x".into() }).is_fenced());
    }
}
