//! virtio-net through the queue-level test driver, with a `SOCK_SEQPACKET` socketpair as
//! the backend: the test holds the "network" end and sees every packet exactly as a tap
//! with IFF_VNET_HDR would (header and frame). Covers both directions, mergeable receive
//! buffers, back-pressure both ways, malformed chains and queues, and the counters; then a
//! real tap when `/dev/net/tun` is there.
//!
//! The parts: `rig` (the socketpair backend and the test rig), `traffic` (both directions,
//! mergeable buffers, interrupts, counters), `robustness` (back-pressure, malformed chains
//! and queues, a closed backend) and `tap` (a real tap).

#[path = "../common/mod.rs"]
mod common;
mod rig;
mod robustness;
mod tap;
mod traffic;
