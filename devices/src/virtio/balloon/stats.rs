//! The guest's memory statistics: [`BalloonStats`], and reading the buffer the driver
//! posts on the statistics queue into it (packed little-endian tag and value entries,
//! unknown tags ignored) for the host to read through the handle.

use vm_memory::GuestMemoryMmap;

use super::records::{Records, stream_readable};
use super::{LogBudget, Shared};
use crate::virtio::DescriptorChain;
use crate::virtio::worker::lock;

/// Bytes of one statistics entry: u16 tag, u64 value, packed.
const STAT_ENTRY_SIZE: usize = 10;
/// Most statistics entries read from one buffer: far more than the spec defines tags.
const MAX_STAT_ENTRIES: usize = 64;

/// Guest memory statistics (virtio 1.2 section 5.5.6.3); a field is `None` when the
/// driver did not report it. Memory amounts are in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// Memory swapped in (tag 0).
    pub swap_in: Option<u64>,
    /// Memory swapped out (tag 1).
    pub swap_out: Option<u64>,
    /// Major page faults (tag 2).
    pub major_faults: Option<u64>,
    /// Minor page faults (tag 3).
    pub minor_faults: Option<u64>,
    /// Memory not used at all (tag 4).
    pub free_memory: Option<u64>,
    /// Memory the guest can use (tag 5).
    pub total_memory: Option<u64>,
    /// Memory available for new work without swapping (tag 6).
    pub available_memory: Option<u64>,
    /// Memory in the guest's disk caches (tag 7).
    pub disk_caches: Option<u64>,
    /// Successful huge page allocations (tag 8).
    pub hugetlb_allocations: Option<u64>,
    /// Failed huge page allocations (tag 9).
    pub hugetlb_failures: Option<u64>,
}

impl BalloonStats {
    /// Records one entry; tags this device does not know are ignored (newer drivers send
    /// more than virtio 1.2 defines).
    fn record(&mut self, tag: u16, value: u64) {
        let field = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            _ => return,
        };
        *field = Some(value);
    }
}

/// Parses a statistics buffer the driver posted and publishes the numbers: packed
/// little-endian (u16 tag, u64 value) entries. A trailing partial entry is ignored.
pub(super) fn read_stats(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain,
    shared: &Shared,
    log: &mut LogBudget,
) {
    let mut entries = Records::<STAT_ENTRY_SIZE>::new();
    let mut stats = BalloonStats::default();
    let mut count = 0;
    let mut truncated = false;
    let readable = stream_readable(mem, chain, |bytes| {
        entries.feed(bytes, |entry| {
            if count == MAX_STAT_ENTRIES {
                truncated = true;
                return false;
            }
            // Below MAX_STAT_ENTRIES (checked above): cannot saturate.
            count = count.saturating_add(1);
            let [t0, t1, v @ ..] = entry;
            stats.record(u16::from_le_bytes([t0, t1]), u64::from_le_bytes(v));
            true
        })
    });
    let leftover = entries.leftover();
    if !readable || truncated || leftover != 0 {
        log.warn(format_args!(
            "statistics buffer {}: {leftover} trailing bytes, truncated: {truncated}, \
             readable: {readable}",
            chain.head
        ));
    }
    *lock(&shared.stats) = Some(stats);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_keep_known_tags_and_the_last_of_a_repeated_one() {
        let mut stats = BalloonStats::default();
        for (tag, value) in [(4u16, 100u64), (42, 7), (9, 3), (4, 200)] {
            stats.record(tag, value);
        }
        assert_eq!(
            stats,
            BalloonStats {
                free_memory: Some(200),
                hugetlb_failures: Some(3),
                ..Default::default()
            }
        );
    }
}
