//! Randomized robustness of the split virtqueue and the virtio device models against a
//! malicious guest: the stable, deterministic counterpart of `fuzz/fuzz_targets/
//! virtio_queue.rs` that runs in CI.
//!
//! An xorshift64* generator drives everything, one seed per iteration. A failure prints
//! its seed; `VIRTIO_RANDOM_SEED=<seed> cargo test -p devices --test virtio_random <test>`
//! replays just that iteration, and `VIRTIO_RANDOM_SCALE=<n>` runs n times as many
//! iterations (for a longer soak).
//!
//! - Queue level: random and mutated-valid descriptor tables, avail rings and indirect
//!   tables, with random ring placement and sizes. `pop` must agree with an independent
//!   reference walk of each chain (accepted chains lie in guest memory, readable before
//!   writable, same buffers), and the used ring and notification decisions must follow
//!   the spec. Nothing may panic or loop.
//! - Device level (Block on a temp image, Balloon, Rng, Console, through the queue-level test
//!   driver): mostly valid-looking chains with random flags, lengths (0 and `u32::MAX`
//!   among them), addresses near and past the end of memory, looping `next` indices and
//!   indirect tables. The reference walk predicts, before the kick, which chains are
//!   valid: the device must complete every chain before the first invalid one of a queue
//!   and then report NEEDS_RESET, or complete them all and not report it; it must then
//!   still serve a valid request (after reset and re-activation if it asked for one).
//!   Block must never write outside the image's capacity, and a read-only image must
//!   stay byte-for-byte unchanged.
//!
//! The parts: `support` (generator, seeds, reference walk), `queue` (the queue level),
//! `device_harness` (driving a device model with random chains and checking the outcome)
//! and `devices` (each device's scenario and tests).

#[path = "../common/mod.rs"]
mod common;
mod device_harness;
mod devices;
mod queue;
mod support;
