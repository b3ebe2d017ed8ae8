//! The `vmm` control-socket protocol: a VM control protocol over a UNIX `SOCK_SEQPACKET`
//! socket, with fixed-size little-endian messages, versioned requests with ids, and fd passing.
//!
//! * [`wire`] owns the message formats: raw layouts, typed [`wire::Request`] /
//!   [`wire::Response`] / [`wire::Event`], and validation.
//! * [`socket`] owns the system calls: datagrams with `SCM_RIGHTS`, truncation detection, peer
//!   credentials.
//! * [`server`] owns the mechanics a VMM event loop needs: a [`server::Listener`] and
//!   non-blocking [`server::Connection`]s with bounded outgoing queues.
//! * [`client`] owns the blocking [`client::Client`] used by the `vmm` subcommands and by host
//!   daemons.
//!
//! The protocol itself is described in `docs/control-protocol.md`.
//!
//! Everything a peer sends is handled without panicking: the library denies `unwrap`,
//! `expect`, `panic!` and slice indexing, and every `unsafe` block carries a `SAFETY:` comment.

#![deny(
    missing_docs,
    clippy::undocumented_unsafe_blocks,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod acl;
pub mod client;
pub mod server;
pub mod socket;
pub mod wire;
