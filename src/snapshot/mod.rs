//! Snapshots of a running VM, as the VMM process sees them: what it writes beside the KVM
//! state (`arch::state`) and the devices' records, and how it brings a saved VM back.
//!
//! The stream's framing is the `snapshot` crate's (docs/snapshot-format.md); this module
//! owns the VMM's own parts of it: guest RAM's memory file and its `MEMORY` record
//! ([`memory_file`]), writing guest RAM into it, in place or from a forked child while the
//! VM runs on ([`ram_writer`]), what the VM was built from ([`config_record`]), taking a
//! snapshot of the running VM ([`save`]) and bringing one back into a freshly built VM
//! ([`restore`]).

pub mod config_record;
pub mod memory_file;
pub mod page_map;
pub mod ram_writer;
pub mod restore;
mod restore_config;
pub mod save;
