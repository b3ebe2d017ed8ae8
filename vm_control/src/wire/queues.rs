//! The `Queues` reply (protocol version 2): the state of each virtqueue ([`QueueStatus`]),
//! their bounded list ([`QueueStatuses`]) and its payload's encoding and validation.

use thiserror::Error;
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32, U64};

use super::raw::{PAYLOAD_SIZE, check_reserved, decode_omitted, omitted_in, put, read_payload};
use super::{DecodeError, MAX_QUEUE_STATUSES, RawQueueStatus, RawQueuesPayload, queue_state};
#[cfg(doc)]
use super::{Request, device_kind};

/// The state of one virtqueue, as [`Request::GetQueues`] reports it.
///
/// `driver_avail - device_avail` (wrapping) is how many chains the driver made available
/// that the device has not taken yet: more than 0 for long, while the device is idle, is a
/// missed notification. `device_avail - device_used` is how many the device holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStatus {
    /// Device kind, from [`device_kind`].
    pub device_kind: u16,
    /// Instance number among devices of that kind.
    pub device_id: u16,
    /// Queue index as the driver numbers it.
    pub queue: u16,
    /// Queue size the driver set; 0 while inactive.
    pub size: u16,
    /// [`queue_state`] bits.
    pub state: u32,
    /// The driver's `avail.idx` in guest memory.
    pub driver_avail: u16,
    /// Index of the next available entry the device will take.
    pub device_avail: u16,
    /// The `used.idx` the device published.
    pub device_used: u16,
    /// The driver's `used_event` with EVENT_IDX, else 0.
    pub used_event: u16,
    /// Notifications the device consumed, since the VM started.
    pub notifications: u64,
    /// Interrupts the device raised for the queue, since the VM started.
    pub interrupts: u64,
}

impl QueueStatus {
    /// Chains the driver made available that the device has not taken yet.
    pub fn waiting(&self) -> u16 {
        self.driver_avail.wrapping_sub(self.device_avail)
    }

    /// Chains the device took and has not returned yet.
    pub fn in_flight(&self) -> u16 {
        self.device_avail.wrapping_sub(self.device_used)
    }
}

/// At most [`MAX_QUEUE_STATUSES`] queue states: a bounded list, so a reply always fits its
/// message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueStatuses {
    len: usize,
    entries: [QueueStatus; MAX_QUEUE_STATUSES],
    omitted: u32,
}

impl Default for QueueStatuses {
    fn default() -> Self {
        QueueStatuses {
            len: 0,
            entries: [QueueStatus::default(); MAX_QUEUE_STATUSES],
            omitted: 0,
        }
    }
}

/// [`QueueStatuses::push`] found the list full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("a reply describes at most {MAX_QUEUE_STATUSES} queues")]
pub struct QueuesFull;

impl QueueStatuses {
    /// Appends a queue's state, or reports that all [`MAX_QUEUE_STATUSES`] slots are used
    /// (and counts it as [omitted](QueueStatuses::omitted)).
    pub fn push(&mut self, status: QueueStatus) -> Result<(), QueuesFull> {
        let Some(slot) = self.entries.get_mut(self.len) else {
            self.omitted = self.omitted.saturating_add(1);
            return Err(QueuesFull);
        };
        *slot = status;
        self.len += 1;
        Ok(())
    }

    /// The queue states pushed so far.
    pub fn as_slice(&self) -> &[QueueStatus] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    /// Number of queues.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no queues.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues that did not fit (reported from protocol version 3 on).
    pub fn omitted(&self) -> u32 {
        self.omitted
    }
}

pub(super) fn encode_queues(payload: &mut [u8; PAYLOAD_SIZE], q: &QueueStatuses, version: u16) {
    let mut queues = [RawQueueStatus::default(); MAX_QUEUE_STATUSES];
    // A version without the VHOST bit cannot say what is unknown about such a queue: it
    // is left out (as before version 6, when the VMM did not report them).
    let representable = q
        .as_slice()
        .iter()
        .filter(|s| s.state & !queue_state::known_in(version) == 0);
    let mut count = 0u32;
    for (raw, s) in queues.iter_mut().zip(representable) {
        count += 1;
        *raw = RawQueueStatus {
            device_kind: U16::new(s.device_kind),
            device_id: U16::new(s.device_id),
            queue: U16::new(s.queue),
            size: U16::new(s.size),
            state: U32::new(s.state),
            reserved: U32::ZERO,
            driver_avail: U16::new(s.driver_avail),
            device_avail: U16::new(s.device_avail),
            device_used: U16::new(s.device_used),
            used_event: U16::new(s.used_event),
            notifications: U64::new(s.notifications),
            interrupts: U64::new(s.interrupts),
        };
    }
    put(
        payload,
        &RawQueuesPayload {
            count: U32::new(count),
            omitted: omitted_in(version, q.omitted),
            reserved0: [0; 8],
            queues,
            reserved: [0; 32],
        },
    );
}

pub(super) fn decode_queues(payload: &[u8], version: u16) -> Result<QueueStatuses, DecodeError> {
    let q = read_payload::<RawQueuesPayload>(payload)?;
    let omitted = decode_omitted(q.omitted, version, 20)?;
    check_reserved(&q.reserved0, 24)?;
    check_reserved(&q.reserved, 992)?;
    let count = q.count.get() as usize;
    if count > MAX_QUEUE_STATUSES {
        return Err(DecodeError::InvalidArgument(
            "queue count exceeds MAX_QUEUE_STATUSES",
        ));
    }
    let mut queues = QueueStatuses {
        omitted,
        ..QueueStatuses::default()
    };
    for (i, raw) in q.queues.iter().enumerate() {
        let base = 32 + 40 * i;
        if i >= count {
            check_reserved(raw.as_bytes(), base)?;
            continue;
        }
        if raw.reserved.get() != 0 {
            return Err(DecodeError::ReservedNonZero { offset: base + 12 });
        }
        let state = raw.state.get();
        if state & !queue_state::known_in(version) != 0 {
            return Err(DecodeError::ReservedNonZero { offset: base + 8 });
        }
        queues
            .push(QueueStatus {
                device_kind: raw.device_kind.get(),
                device_id: raw.device_id.get(),
                queue: raw.queue.get(),
                size: raw.size.get(),
                state,
                driver_avail: raw.driver_avail.get(),
                device_avail: raw.device_avail.get(),
                device_used: raw.device_used.get(),
                used_event: raw.used_event.get(),
                notifications: raw.notifications.get(),
                interrupts: raw.interrupts.get(),
            })
            .map_err(|_| DecodeError::InvalidArgument("too many queues"))?;
    }
    Ok(queues)
}
