//! virtio-balloon's own part of its snapshot record: the host's target (`num_pages`), the
//! driver's `actual`, and the statistics the driver last reported. The statistics buffer
//! the device holds between two host requests is given back to the stats queue (see
//! `ActiveDevice::save_queues`): the restored device takes it again and holds it, as the
//! device did. A host request for statistics the worker had not seen yet when it was paused
//! is dropped (the restored device starts as on activation); the host asks again.

use std::sync::atomic::Ordering;

use snapshot::payload::{Decoder, Encoder};

use super::{ActiveBalloon, Balloon, BalloonStats, LOG_NAME, lock};
use crate::state::{StateError, decode_bool};
use crate::virtio::state::VirtioDeviceState;
use crate::virtio::worker::SavedQueue;

/// Statistics tags a record holds (virtio 1.2 section 5.5.6.3: 0 to 9).
const STATS_TAGS: u16 = 10;

/// What a virtio-balloon record holds beyond the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonState {
    /// The host's target, in 4 KiB pages.
    pub target: u32,
    /// What the driver last reported, in 4 KiB pages.
    pub actual: u32,
    /// The statistics the driver last sent, if any since reset.
    pub stats: Option<BalloonStats>,
}

/// The statistics' fields in tag order.
fn stats_fields(stats: &mut BalloonStats) -> [&mut Option<u64>; STATS_TAGS as usize] {
    [
        &mut stats.swap_in,
        &mut stats.swap_out,
        &mut stats.major_faults,
        &mut stats.minor_faults,
        &mut stats.free_memory,
        &mut stats.total_memory,
        &mut stats.available_memory,
        &mut stats.disk_caches,
        &mut stats.hugetlb_allocations,
        &mut stats.hugetlb_failures,
    ]
}

impl BalloonState {
    /// `target` and `actual` (`u32`), a statistics flag (`u8`), a mask of the tags present
    /// (`u16`, bit n for tag n) and the ten values (`u64`, 0 where absent).
    pub(crate) fn encode(&self, enc: &mut Encoder) {
        enc.u32(self.target).u32(self.actual);
        let mut stats = self.stats.unwrap_or_default();
        let fields = stats_fields(&mut stats);
        let mask = fields
            .iter()
            .enumerate()
            .fold(0u16, |m, (tag, v)| m | (u16::from(v.is_some()) << tag));
        enc.u8(u8::from(self.stats.is_some())).u16(mask);
        for v in fields {
            enc.u64(v.unwrap_or(0));
        }
    }

    pub(crate) fn decode(dec: &mut Decoder<'_>) -> Result<Self, StateError> {
        let target = dec.u32()?;
        let actual = dec.u32()?;
        let has_stats = decode_bool(dec, LOG_NAME, "statistics flag")?;
        let mask = dec.u16()?;
        if mask >> STATS_TAGS != 0 || (!has_stats && mask != 0) {
            return Err(StateError::invalid(
                LOG_NAME,
                format!("statistics tag mask {mask:#06x} names tags that do not exist"),
            ));
        }
        let mut stats = BalloonStats::default();
        for (tag, field) in stats_fields(&mut stats).into_iter().enumerate() {
            let value = dec.u64()?;
            if mask & (1 << tag) != 0 {
                *field = Some(value);
            } else if value != 0 {
                return Err(StateError::invalid(
                    LOG_NAME,
                    format!("statistics tag {tag} is absent but has a value"),
                ));
            }
        }
        Ok(BalloonState {
            target,
            actual,
            stats: has_stats.then_some(stats),
        })
    }
}

impl Balloon {
    pub(super) fn save_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Balloon(BalloonState {
            target: self.shared.target.load(Ordering::Acquire),
            actual: self.shared.actual.load(Ordering::Acquire),
            stats: *lock(&self.shared.stats),
        })
    }

    pub(super) fn check_state(&self, saved: &VirtioDeviceState) -> Result<(), StateError> {
        let VirtioDeviceState::Balloon(saved) = saved else {
            return Err(StateError::invalid(
                LOG_NAME,
                "the saved state is another device's",
            ));
        };
        let max = self.shared.guest_pages.min(u64::from(u32::MAX));
        for (what, pages) in [("target", saved.target), ("actual", saved.actual)] {
            if u64::from(pages) > max {
                return Err(StateError::invalid(
                    LOG_NAME,
                    format!("{what} {pages} pages is more than this guest's {max} pages"),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn apply_state(&mut self, saved: VirtioDeviceState) {
        if let VirtioDeviceState::Balloon(saved) = saved {
            if self.shared.target.swap(saved.target, Ordering::AcqRel) != saved.target {
                self.shared.signal_changed();
            }
            self.shared.set_actual(saved.actual);
            *lock(&self.shared.stats) = saved.stats;
        }
    }
}

impl ActiveBalloon {
    /// The held statistics buffer goes back to the stats queue.
    pub(super) fn saved_queues(&self) -> Vec<SavedQueue> {
        let mut queues = vec![self.inflate.save(), self.deflate.save()];
        if let Some(stats) = &self.stats {
            queues.push(stats.save_unpopped(usize::from(self.held_stats.is_some())));
        }
        queues
    }
}
