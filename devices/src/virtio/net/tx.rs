//! virtio-net's transmit path: checking each chain the guest posts on the transmit queue,
//! sending it to the backend as one packet, and keeping the one the backend cannot take
//! yet (EAGAIN) to send first once it is writable; a burst of chains at a time.

use std::io;

use super::{ActiveNet, MAX_PACKET_LEN, TX_QUEUE, VNET_HDR_LEN};
use crate::virtio::DescriptorChain;
use crate::virtio::iovec::{DeviceReadable, GuestSpans, MAX_IOVECS};
use crate::virtio::worker::MAX_CHAINS_PER_WAKE;

/// Shortest frame worth sending: an Ethernet header.
const ETH_HLEN: usize = 14;

/// How one attempt to transmit a chain ended.
enum Transmit {
    /// Hand the chain back (sent, dropped or rejected, all counted).
    Done,
    /// The backend cannot take it now; keep it and retry when the backend is writable.
    Blocked,
}

impl ActiveNet {
    /// Transmits what the TX queue holds, up to [`MAX_CHAINS_PER_WAKE`] chains (then it
    /// notifies itself to come back for the rest), or until the backend is full. The sent
    /// chains go back to the driver together, with at most one interrupt.
    pub(super) fn process_tx(&mut self) {
        let mut sent = std::mem::take(&mut self.tx_sent);
        let budget_spent = self.transmit_burst(&mut sent);
        let (name, mem, interrupt) = (&self.shared.name, &*self.mem, &*self.interrupt);
        self.tx.publish_batch(name, mem, interrupt, &sent);
        if !sent.is_empty() && self.tx.interrupt_if_wanted(name, mem, interrupt) {
            self.shared.count(|c| &c.interrupts, 1);
        }
        sent.clear();
        self.tx_sent = sent;
        if budget_spent {
            // More may be waiting. If the write fails the counter is saturated, which
            // wakes us just the same.
            let _ = self.tx.notify.write(1);
        }
    }

    /// Sends TX chains until the queue is empty, the backend is full or
    /// [`MAX_CHAINS_PER_WAKE`] chains went, adding each finished one to `sent` as
    /// `(head, 0)`. Returns whether it stopped for the budget.
    fn transmit_burst(&mut self, sent: &mut Vec<(u16, u32)>) -> bool {
        for _ in 0..MAX_CHAINS_PER_WAKE {
            let chain = match self.tx_pending.take() {
                Some(chain) => chain,
                None => match self.next_tx_chain() {
                    Some(chain) => chain,
                    None => return false,
                },
            };
            match self.transmit(&chain) {
                Transmit::Done => sent.push((chain.head, 0)),
                Transmit::Blocked => {
                    self.tx_pending = Some(chain);
                    return false;
                }
            }
        }
        true
    }

    /// The next TX chain, re-arming the queue's notification before reporting none.
    fn next_tx_chain(&mut self) -> Option<DescriptorChain> {
        loop {
            if let Some(chain) = self.tx.pop(&self.shared.name, &self.mem, &*self.interrupt) {
                return Some(chain);
            }
            if self.tx.is_broken() || !self.rearm(TX_QUEUE) {
                return None;
            }
        }
    }

    /// Sends one TX chain to the backend as one packet, header included.
    fn transmit(&self, chain: &DescriptorChain) -> Transmit {
        let shared = &*self.shared;
        let (spans, len) = match check_tx_chain(chain) {
            Ok(checked) => checked,
            Err(why) => {
                self.invalid_chain(TX_QUEUE, chain.head, &why);
                return Transmit::Done;
            }
        };
        let packet = match DeviceReadable::new(&self.mem, &spans) {
            Ok(packet) if packet.slices().len() <= MAX_IOVECS => packet,
            Ok(packet) => {
                let why = format!("{} buffers, more than {MAX_IOVECS}", packet.slices().len());
                self.invalid_chain(TX_QUEUE, chain.head, &why);
                return Transmit::Done;
            }
            Err(e) => {
                self.invalid_chain(TX_QUEUE, chain.head, &e.to_string());
                return Transmit::Done;
            }
        };
        loop {
            match shared.backend.write_packet(packet.slices()) {
                Ok(n) if n == len => {
                    shared.count(|c| &c.tx_packets, 1);
                    // `check_tx_chain` saw at least a header and an Ethernet header.
                    let frame = len.saturating_sub(VNET_HDR_LEN);
                    shared.count(|c| &c.tx_bytes, frame as u64);
                }
                Ok(n) => {
                    shared.count(|c| &c.tx_dropped, 1);
                    shared.host_problem(format_args!("backend took {n} of {len} bytes"));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Transmit::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    shared.count(|c| &c.tx_dropped, 1);
                    shared.host_problem(format_args!("backend refused a {len}-byte packet: {e}"));
                }
            }
            return Transmit::Done;
        }
    }
}

/// Checks a TX chain: device-readable only, an Ethernet frame behind the header, no more
/// than [`MAX_PACKET_LEN`]. Returns its buffers and the packet length.
fn check_tx_chain(chain: &DescriptorChain) -> Result<(GuestSpans, usize), String> {
    if chain.writable().next().is_some() {
        return Err("transmit chain has device-writable buffers".into());
    }
    let spans = GuestSpans::readable(chain).map_err(|e| e.to_string())?;
    let len = spans.len();
    if len < (VNET_HDR_LEN + ETH_HLEN) as u64 {
        return Err(format!(
            "transmit chain of {len} bytes is shorter than the header and an Ethernet header"
        ));
    }
    if len > MAX_PACKET_LEN as u64 {
        return Err(format!(
            "transmit chain of {len} bytes is longer than {MAX_PACKET_LEN}"
        ));
    }
    // len <= MAX_PACKET_LEN, so the conversion cannot fail.
    Ok((spans, usize::try_from(len).unwrap_or(MAX_PACKET_LEN)))
}
