//! Snapshots of a running VM, as the VMM process sees them: what it writes beside the KVM
//! state (`arch::state`) and the devices' records, and how it brings a saved VM back.
//!
//! The stream's framing is the `snapshot` crate's (docs/snapshot-format.md); this module
//! owns the VMM's own parts of it. Today: guest RAM's memory file and its `MEMORY` record
//! ([`memory_file`]).

pub mod memory_file;
