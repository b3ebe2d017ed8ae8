//! Fuzzes the console frame decoder: the VMM decodes every datagram an attached writer
//! sends (`vmm console`), and the client every datagram the VMM streams.
//!
//! Checks that nothing panics and that an accepted frame re-encodes to exactly the bytes
//! received. Its seeded counterpart runs in CI (`vm_control/tests/mutation.rs`).
//!
//! Run with `cargo +nightly fuzz run console_frame` from `vm_control/fuzz`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_control::wire::ConsoleFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ConsoleFrame::decode(data) {
        assert_eq!(frame.to_vec(), data);
    }
});
