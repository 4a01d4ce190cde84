//! contact-sync core: the canonical [`Contact`], its validation rules, the
//! content hash, the three-way merge and the journal records.
//!
//! Invariant: nothing in this crate does IO (no files, network, clock reads
//! other than [`model::now`], which callers pass in to the merge). The one
//! process-wide state is [`pii`]'s switch for masking contact data in logs.

pub mod clock;
pub mod fields;
pub mod hash;
pub mod identity;
pub mod journal;
pub mod merge;
pub mod model;
pub mod phone;
pub mod pii;
pub mod validate;
pub mod vcard;

pub use hash::content_hash;
pub use journal::{DeadLetter, FieldChange, FieldConflict, JournalEntry, Op, Resolution};
pub use merge::{diff, merge, MergeInput, MergeOutcome};
pub use model::{Contact, Email, Phone, Timestamp, ERASE_ORIGIN};
pub use validate::{validate, Invalid};
pub mod prompt;
#[cfg(feature = "synth")]
pub mod synth;
