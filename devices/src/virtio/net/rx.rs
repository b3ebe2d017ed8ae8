//! virtio-net's receive path: gathering the receive chains the guest posted (checked and
//! trimmed, kept in a stash until a frame needs them), reading one frame from the backend
//! straight into them, and handing the chains it filled to the guest with `num_buffers`
//! set, a burst of frames at a time.

use std::io;

use super::{ActiveNet, MAX_PACKET_LEN, RX_QUEUE, VNET_HDR_LEN};
use crate::virtio::DescriptorChain;
use crate::virtio::iovec::{DeviceWritable, GuestSpans, MAX_IOVECS};
use crate::virtio::worker::MAX_CHAINS_PER_WAKE;

/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: u64 = 10;
/// Most frames received per wake, so the worker gets back to its other events; the
/// backend's readiness is level-triggered and brings it back for the rest.
const MAX_FRAMES_PER_WAKE: usize = 64;

/// A receive chain taken from the queue and not used yet: its writable bytes, in order,
/// trimmed to [`MAX_PACKET_LEN`] (no packet needs more).
#[derive(Debug)]
pub(super) struct RxBuffer {
    head: u16,
    spans: GuestSpans,
    /// `spans.len()`, at most [`MAX_PACKET_LEN`].
    space: usize,
}

impl ActiveNet {
    /// Receives frames while the backend has some and the guest has room, up to
    /// [`MAX_FRAMES_PER_WAKE`]; each frame's chains reach the driver as soon as it is
    /// written, and the burst costs at most one interrupt.
    pub(super) fn process_rx(&mut self) {
        self.receive_burst();
        let (name, mem, interrupt) = (&self.shared.name, &*self.mem, &*self.interrupt);
        if self.rx.interrupt_if_wanted(name, mem, interrupt) {
            self.shared.count(|c| &c.interrupts, 1);
        }
    }

    fn receive_burst(&mut self) {
        for _ in 0..MAX_FRAMES_PER_WAKE {
            if self.backend_gone {
                return;
            }
            if !self.gather_rx_buffers() {
                self.rx_starved = true;
                return;
            }
            self.rx_starved = false;
            if !self.receive_frame() {
                return;
            }
        }
    }

    /// Pops receive chains until the stash can take a frame. Returns false when the guest
    /// has not posted enough (the queue's notification is then armed).
    fn gather_rx_buffers(&mut self) -> bool {
        let mut budget = MAX_CHAINS_PER_WAKE;
        while !self.stash_ready() {
            if budget == 0 {
                // The guest keeps posting chains we cannot use: come back after the other
                // events rather than spin here.
                let _ = self.rx.notify.write(1);
                return false;
            }
            // Checked against 0 just above.
            budget = budget.saturating_sub(1);
            match self.rx.pop(&self.shared.name, &self.mem, &*self.interrupt) {
                Some(chain) => self.stash_rx_chain(chain),
                None if self.rx.is_broken() => return false,
                None if self.rearm(RX_QUEUE) => {}
                // The guest cannot post more than the ring holds: use what we have.
                None => return self.stash.len() >= usize::from(self.rx.queue.size),
            }
        }
        true
    }

    /// Whether the stash can take the next frame: with MRG_RXBUF, room for the largest one
    /// the driver accepts; without, one chain (the driver sized it).
    fn stash_ready(&self) -> bool {
        if self.mrg_rxbuf {
            self.stash_space >= self.rx_needed
        } else {
            !self.stash.is_empty()
        }
    }

    /// Checks a popped RX chain and stashes it, or hands it back as invalid.
    fn stash_rx_chain(&mut self, chain: DescriptorChain) {
        if chain.descriptors.iter().any(|d| !d.writable) {
            self.invalid_chain(
                RX_QUEUE,
                chain.head,
                "receive chain has device-readable buffers",
            );
            self.reject_rx(chain.head);
            return;
        }
        let mut spans = match GuestSpans::writable(&chain) {
            Ok(spans) => spans,
            Err(e) => {
                self.invalid_chain(RX_QUEUE, chain.head, &e.to_string());
                self.reject_rx(chain.head);
                return;
            }
        };
        spans.truncate(MAX_PACKET_LEN as u64);
        // At most MAX_PACKET_LEN, so the conversion cannot fail.
        let space = usize::try_from(spans.len()).unwrap_or(MAX_PACKET_LEN);
        if space < VNET_HDR_LEN {
            let why = format!("receive chain of {space} bytes cannot hold the header");
            self.invalid_chain(RX_QUEUE, chain.head, &why);
            self.reject_rx(chain.head);
            return;
        }
        // At most the queue size times MAX_PACKET_LEN: cannot saturate.
        self.stash_space = self.stash_space.saturating_add(space);
        self.stash.push_back(RxBuffer {
            head: chain.head,
            spans,
            space,
        });
    }

    /// Reads one frame into the stash and hands the chains it filled to the guest. Returns
    /// false when the backend had none (or the stash is unusable).
    fn receive_frame(&mut self) -> bool {
        let chains = if self.mrg_rxbuf { self.stash.len() } else { 1 };
        let spans = self.stash.iter().take(chains).flat_map(|b| &b.spans);
        let (result, capacity) = match DeviceWritable::new(&self.mem, spans) {
            Ok(mut buffers) => {
                // Only a pathological stash gets here; reading into less is still right.
                buffers.truncate_iovecs(MAX_IOVECS);
                // At most the stash's space, a usize: the fallback is never taken.
                let capacity = usize::try_from(buffers.len()).unwrap_or(self.stash_space);
                (self.shared.backend.read_packet(buffers.slices()), capacity)
            }
            Err(e) => {
                self.shared
                    .host_problem(format_args!("receive buffers unusable: {e}"));
                return false;
            }
        };
        match result {
            Ok(n) if n > capacity => {
                // A tap cuts a frame that does not fit short but reports its full length:
                // the guest must not see the stump. The chains stay stashed.
                self.shared.count(|c| &c.rx_dropped, 1);
                self.shared.host_problem(format_args!(
                    "a {n}-byte packet did not fit the {capacity} bytes of receive buffers"
                ));
                true
            }
            Ok(n) => {
                self.deliver(n);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) => {
                self.shared.count(|c| &c.rx_dropped, 1);
                self.shared
                    .host_problem(format_args!("reading a frame from the backend failed: {e}"));
                true
            }
        }
    }

    /// Hands the guest the `n`-byte packet just read into the front of the stash: the
    /// chains it filled, in order, with `num_buffers` set in its header.
    fn deliver(&mut self, n: usize) {
        if n < VNET_HDR_LEN {
            // Nothing was written that the guest will look at: the chains stay stashed.
            self.shared.count(|c| &c.rx_dropped, 1);
            self.shared
                .host_problem(format_args!("backend packet of {n} bytes has no header"));
            return;
        }
        let mut used: Vec<(u16, u32)> = Vec::new();
        let mut first_spans = GuestSpans::new();
        let mut left = n;
        while left > 0 {
            let Some(buffer) = self.stash.pop_front() else {
                break; // The read could not have filled more than the stash.
            };
            // `stash_space` is the sum of the stashed buffers' spaces.
            self.stash_space = self.stash_space.saturating_sub(buffer.space);
            let take = buffer.space.min(left);
            left = left.saturating_sub(take);
            // take <= space <= MAX_PACKET_LEN, so the conversion cannot fail.
            used.push((buffer.head, u32::try_from(take).unwrap_or(u32::MAX)));
            if first_spans.is_empty() {
                first_spans = buffer.spans;
            }
        }
        // At most the queue size (256) chains.
        let count = u16::try_from(used.len()).unwrap_or(u16::MAX);
        let header = DeviceWritable::new(&self.mem, &first_spans);
        if let Err(e) = header.and_then(|h| h.write_at(NUM_BUFFERS_OFFSET, &count.to_le_bytes())) {
            self.shared
                .host_problem(format_args!("cannot set num_buffers: {e}"));
        }
        self.complete_rx(&used);
        self.shared.count(|c| &c.rx_packets, 1);
        self.shared
            .count(|c| &c.rx_bytes, n.saturating_sub(VNET_HDR_LEN) as u64); // n >= VNET_HDR_LEN
    }

    /// Returns the chains of one frame to the guest, published together (the driver must
    /// never see part of a frame); [`ActiveNet::process_rx`] interrupts after the burst.
    fn complete_rx(&mut self, used: &[(u16, u32)]) {
        let (name, mem, interrupt) = (&self.shared.name, &*self.mem, &*self.interrupt);
        self.rx.publish_batch(name, mem, interrupt, used);
    }

    /// Hands back an invalid RX chain right away (TX chains go back through
    /// [`ActiveNet::process_tx`]); [`ActiveNet::process_rx`] interrupts after the burst.
    fn reject_rx(&mut self, head: u16) {
        self.complete_rx(&[(head, 0)]);
    }
}
