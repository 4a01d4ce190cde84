//! Test stores for contact-sync.
//!
//! - [`MemoryStore`] / [`MemoryHandle`]: a complete store in memory whose
//!   data outlives the store object, so tests can crash and restart it; the
//!   handle also acts as a user of the store and keeps a log of the engine's
//!   writes (to check "no echo, no redundant write").
//! - [`FaultyStore`] / [`FaultPlan`] / [`FaultControl`]: wraps any store and
//!   injects seeded, reproducible failures (transient errors, timeouts,
//!   lost acknowledgements, crashes).
//! - [`conformance`]: the `RecordSink` / `ChangeSource` contract as reusable
//!   async checks that any store crate can run against its store.

pub mod conformance;
mod faulty;
mod memory;

pub use faulty::{
    FaultControl, FaultCounts, FaultKind, FaultPlan, FaultRates, FaultyStore, InjectedFault,
    Operation,
};
pub use memory::{MemoryHandle, MemoryOptions, MemoryStore, WriteRecord};
