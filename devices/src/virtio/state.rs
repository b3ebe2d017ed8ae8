//! Virtio devices in snapshots: the record of a virtio PCI function and the hooks a device
//! model implements to be saved and restored.
//!
//! One record per function, of kind `snapshot::kind::VIRTIO_PCI_BASE` + the virtio device
//! type (net 0x0141, block 0x0142, console 0x0143, rng 0x0144, balloon 0x0145, vsock
//! 0x0153), holding everything the guest can see: the PCI configuration space and
//! MSI-X state, the transport (features offered and acked, feature selects, device status,
//! config generation, vectors, ISR, needs-reset), every queue's layout and ring positions,
//! and the device's own state ([`VirtioDeviceState`]). The byte layout is in
//! `docs/snapshot-format.md`.
//!
//! Saving takes a quiet device: [`VirtioPciDevice::pause`](super::VirtioPciDevice::pause)
//! stops its worker between requests (bounded wait; a request in progress finishes first,
//! so nothing is in flight) and has it give back its queues' positions;
//! [`VirtioPciDevice::save_state`](super::VirtioPciDevice::save_state) then captures the
//! rest; [`VirtioPciDevice::resume`](super::VirtioPciDevice::resume) lets it go on. A
//! restore decodes and checks the record against the freshly built transport and device
//! with no side effects, then applies it: the transport comes back in the saved status
//! (DRIVER_OK for a running device) and the device is activated with its queues at the
//! saved positions, without the guest negotiating anything again.
//!
//! A device model takes part through the snapshot methods of
//! [`VirtioDevice`](super::VirtioDevice) (all with defaults that refuse, naming the device,
//! so a model without snapshot support fails a snapshot clearly instead of losing state)
//! and through [`ActiveDevice::save_queues`](super::worker::ActiveDevice::save_queues) on
//! its worker. A new model adds its variant to
//! [`VirtioDeviceState`] and implements those.

use snapshot::payload::{Decoder, Encoder};
use snapshot::{Known, Record, RecordType, kind};

use super::balloon::state::BalloonState;
use super::block::state::BlockState;
use super::console::ConsoleState;
use super::net::state::NetState;
use super::queue::MAX_QUEUE_SIZE;
use super::vsock::{VIRTIO_ID_VSOCK, VsockState};
use super::worker::{DeviceWorker, Paused};
use super::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_F_VERSION_1, VIRTIO_ID_BALLOON,
    VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_NET, VIRTIO_ID_RNG, VIRTIO_MSI_NO_VECTOR,
};
use crate::pci::MsixState;
use crate::pci::config::CONFIG_SPACE_SIZE;
use crate::pci::state::{decode_config, decode_msix, encode_config, encode_msix};
use crate::state::{StateError, decode_bool};

/// The version of the virtio records this code writes and reads.
pub const VIRTIO_RECORD_VERSION: u8 = 1;

/// The device types whose records this code reads.
pub const SNAPSHOT_DEVICE_TYPES: [u32; 6] = [
    VIRTIO_ID_NET,
    VIRTIO_ID_BLOCK,
    VIRTIO_ID_CONSOLE,
    VIRTIO_ID_RNG,
    VIRTIO_ID_BALLOON,
    VIRTIO_ID_VSOCK,
];

/// The kind of a virtio record of `device_type`, at compile time (types are small).
const fn kind_of(device_type: u32) -> u16 {
    // Every device type above is below 64: the sum stays in the virtio range.
    #[allow(clippy::cast_possible_truncation, clippy::arithmetic_side_effects)]
    let kind = kind::VIRTIO_PCI_BASE + device_type as u16;
    kind
}

/// The records this module reads, for `snapshot::Snapshot::parse`.
pub const KNOWN: [Known; 6] = [
    Known::new(kind_of(VIRTIO_ID_NET), VIRTIO_RECORD_VERSION),
    Known::new(kind_of(VIRTIO_ID_BLOCK), VIRTIO_RECORD_VERSION),
    Known::new(kind_of(VIRTIO_ID_CONSOLE), VIRTIO_RECORD_VERSION),
    Known::new(kind_of(VIRTIO_ID_RNG), VIRTIO_RECORD_VERSION),
    Known::new(kind_of(VIRTIO_ID_BALLOON), VIRTIO_RECORD_VERSION),
    Known::new(kind_of(VIRTIO_ID_VSOCK), VIRTIO_RECORD_VERSION),
];

/// Most queues a record may hold (the transport allows fewer).
pub const MAX_SAVED_QUEUES: usize = 1024;

/// Device status bits that are stored (NEEDS_RESET is the interrupt state's).
const STATUS_STORED: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_FAILED;

/// The name of a virtio device type in errors.
pub fn device_name(device_type: u32) -> &'static str {
    match device_type {
        VIRTIO_ID_NET => "virtio-net",
        VIRTIO_ID_BLOCK => "virtio-blk",
        VIRTIO_ID_CONSOLE => "virtio-console",
        VIRTIO_ID_RNG => "virtio-rng",
        VIRTIO_ID_BALLOON => "virtio-balloon",
        VIRTIO_ID_VSOCK => "virtio-vsock",
        _ => "virtio device",
    }
}

/// The record type of a virtio device of `device_type`, if it has a kind.
pub fn record_type(device_type: u32) -> Option<RecordType> {
    let offset = u16::try_from(device_type).ok()?;
    let kind = kind::VIRTIO_PCI_BASE.checked_add(offset)?;
    (kind <= kind::VIRTIO_PCI_LAST).then_some(RecordType::required(kind, VIRTIO_RECORD_VERSION))
}

/// One queue as saved: what the driver set up, its vector and the device's positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// Queue size the driver chose.
    pub size: u16,
    /// The driver enabled it.
    pub ready: bool,
    /// Its MSI-X vector ([`VIRTIO_MSI_NO_VECTOR`] for none).
    pub vector: u16,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// The next avail entry the device takes.
    pub next_avail: u16,
    /// The `used.idx` the device published.
    pub next_used: u16,
    /// `next_used` at the device's last interrupt decision (EVENT_IDX).
    pub signalled_used: u16,
}

/// The device model's own state; which variant goes with the record's device type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtioDeviceState {
    /// virtio-rng: nothing beyond the transport.
    Rng,
    /// virtio-blk.
    Block(BlockState),
    /// virtio-net.
    Net(NetState),
    /// virtio-balloon.
    Balloon(BalloonState),
    /// virtio-console.
    Console(ConsoleState),
    /// virtio-vsock.
    Vsock(VsockState),
}

impl VirtioDeviceState {
    fn encode(&self, enc: &mut Encoder) {
        match self {
            VirtioDeviceState::Rng => {}
            VirtioDeviceState::Block(s) => s.encode(enc),
            VirtioDeviceState::Net(s) => s.encode(enc),
            VirtioDeviceState::Balloon(s) => s.encode(enc),
            VirtioDeviceState::Console(s) => s.encode(enc),
            VirtioDeviceState::Vsock(s) => s.encode(enc),
        }
    }

    fn decode(device_type: u32, dec: &mut Decoder<'_>) -> Result<Self, StateError> {
        match device_type {
            VIRTIO_ID_RNG => Ok(VirtioDeviceState::Rng),
            VIRTIO_ID_BLOCK => Ok(VirtioDeviceState::Block(BlockState::decode(dec)?)),
            VIRTIO_ID_NET => Ok(VirtioDeviceState::Net(NetState::decode(dec)?)),
            VIRTIO_ID_BALLOON => Ok(VirtioDeviceState::Balloon(BalloonState::decode(dec)?)),
            VIRTIO_ID_CONSOLE => Ok(VirtioDeviceState::Console(ConsoleState::decode(dec)?)),
            VIRTIO_ID_VSOCK => Ok(VirtioDeviceState::Vsock(VsockState::decode(dec)?)),
            _ => Err(StateError::Unsupported(device_name(device_type))),
        }
    }
}

/// Everything a virtio PCI function's record holds; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioPciState {
    /// The virtio device type (from the record's kind).
    pub device_type: u32,
    /// The PCI configuration space.
    pub config: [u8; CONFIG_SPACE_SIZE],
    /// MSI-X table, PBA, enable and function mask.
    pub msix: MsixState,
    /// The features the device offered (transport bits included).
    pub offered_features: u64,
    /// The features the driver acked.
    pub acked_features: u64,
    /// `device_feature_select`.
    pub device_feature_select: u32,
    /// `driver_feature_select`.
    pub driver_feature_select: u32,
    /// Device status as the driver set it (without NEEDS_RESET).
    pub status: u8,
    /// `config_generation`.
    pub config_generation: u8,
    /// `queue_select`.
    pub queue_select: u16,
    /// DRIVER_OK was set (and activation attempted) since the last reset.
    pub activated: bool,
    /// The device was running (serving its queues) when it was paused.
    pub running: bool,
    /// The ISR status byte.
    pub isr: u8,
    /// DEVICE_NEEDS_RESET is set.
    pub needs_reset: bool,
    /// `msix_config`.
    pub config_vector: u16,
    /// Every queue of the device, in index order.
    pub queues: Vec<QueueState>,
    /// The device model's own state.
    pub device: VirtioDeviceState,
}

/// The record type and payload of `state` for the function at `instance` (its PCI
/// address, `bus << 8 | device << 3 | function`).
pub fn encode_record(
    instance: u32,
    state: &VirtioPciState,
) -> Result<(RecordType, Vec<u8>), StateError> {
    let ty = record_type(state.device_type)
        .ok_or(StateError::Unsupported(device_name(state.device_type)))?;
    let mut enc = Encoder::new();
    enc.u32(instance);
    encode_config(&mut enc, &state.config);
    encode_msix(&mut enc, &state.msix);
    enc.u64(state.offered_features)
        .u64(state.acked_features)
        .u32(state.device_feature_select)
        .u32(state.driver_feature_select)
        .u8(state.status)
        .u8(state.config_generation)
        .u16(state.queue_select)
        .u8(u8::from(state.activated))
        .u8(u8::from(state.running))
        .u8(state.isr)
        .u8(u8::from(state.needs_reset))
        .u16(state.config_vector);
    // Bounded by the transport's queue count, far below u32::MAX.
    enc.u32(u32::try_from(state.queues.len()).unwrap_or(u32::MAX));
    for q in &state.queues {
        enc.u16(q.size)
            .u8(u8::from(q.ready))
            .u16(q.vector)
            .u64(q.desc_table)
            .u64(q.avail_ring)
            .u64(q.used_ring)
            .u16(q.next_avail)
            .u16(q.next_used)
            .u16(q.signalled_used);
    }
    state.device.encode(&mut enc);
    Ok((ty, enc.into_vec()))
}

/// Decodes a virtio record: its instance and state. Checks everything that can be checked
/// without the device (see the module docs); no side effects.
pub fn decode_record(record: &Record<'_>) -> Result<(u32, VirtioPciState), StateError> {
    decode_payload(record.ty, record.payload)
}

/// [`decode_record`] from a record type and payload.
pub fn decode_payload(ty: RecordType, payload: &[u8]) -> Result<(u32, VirtioPciState), StateError> {
    let device_type = u32::from(ty.kind.wrapping_sub(kind::VIRTIO_PCI_BASE));
    let known = (kind::VIRTIO_PCI_BASE..=kind::VIRTIO_PCI_LAST).contains(&ty.kind)
        && SNAPSHOT_DEVICE_TYPES.contains(&device_type)
        && (1..=VIRTIO_RECORD_VERSION).contains(&ty.version);
    if !known {
        return Err(StateError::WrongRecord {
            device: "virtio-pci",
            kind: ty.kind,
            version: ty.version,
        });
    }
    let name = device_name(device_type);
    let bad = |problem: String| Err(StateError::invalid(name, problem));
    let mut dec = Decoder::new(ty, payload);
    let instance = dec.u32()?;
    let config = decode_config(&mut dec)?;
    let msix = decode_msix(&mut dec, name)?;
    let offered_features = dec.u64()?;
    let acked_features = dec.u64()?;
    let device_feature_select = dec.u32()?;
    let driver_feature_select = dec.u32()?;
    let status = dec.u8()?;
    let config_generation = dec.u8()?;
    let queue_select = dec.u16()?;
    let activated = decode_bool(&mut dec, name, "activated flag")?;
    let running = decode_bool(&mut dec, name, "running flag")?;
    let isr = dec.u8()?;
    let needs_reset = decode_bool(&mut dec, name, "needs-reset flag")?;
    let config_vector = dec.u16()?;
    let vectors = u16::try_from(msix.entries.len()).unwrap_or(u16::MAX);
    if status & !STATUS_STORED != 0 {
        return bad(format!(
            "device status {status:#04x} has bits that are not stored"
        ));
    }
    let has = |bit: u8| status & bit != 0;
    if (has(VIRTIO_CONFIG_S_DRIVER_OK) && !has(VIRTIO_CONFIG_S_FEATURES_OK))
        || (has(VIRTIO_CONFIG_S_FEATURES_OK) && !has(VIRTIO_CONFIG_S_DRIVER))
    {
        return bad(format!(
            "device status {status:#04x} skips a step of initialization"
        ));
    }
    if acked_features & !offered_features != 0 {
        return bad(format!(
            "acked features {acked_features:#x} include {:#x}, which the device did not offer",
            acked_features & !offered_features
        ));
    }
    if has(VIRTIO_CONFIG_S_FEATURES_OK) && acked_features & (1 << VIRTIO_F_VERSION_1) == 0 {
        return bad("FEATURES_OK without VIRTIO_F_VERSION_1".to_string());
    }
    if activated != has(VIRTIO_CONFIG_S_DRIVER_OK) || (running && !activated) {
        return bad(format!(
            "activated {activated} and running {running} do not match device status {status:#04x}"
        ));
    }
    if isr & !3 != 0 {
        return bad(format!(
            "ISR {isr:#04x} has bits other than queue and config"
        ));
    }
    if config_vector != VIRTIO_MSI_NO_VECTOR && config_vector >= vectors {
        return bad(format!(
            "config vector {config_vector} is outside the {vectors}-entry MSI-X table"
        ));
    }
    let count = dec.count("queue count", MAX_SAVED_QUEUES)?;
    if count == 0 {
        return bad("no queues".to_string());
    }
    let mut queues = Vec::with_capacity(count);
    for index in 0..count {
        let q = QueueState {
            size: dec.u16()?,
            ready: decode_bool(&mut dec, name, "queue enable")?,
            vector: dec.u16()?,
            desc_table: dec.u64()?,
            avail_ring: dec.u64()?,
            used_ring: dec.u64()?,
            next_avail: dec.u16()?,
            next_used: dec.u16()?,
            signalled_used: dec.u16()?,
        };
        if q.size > MAX_QUEUE_SIZE || (q.ready && (q.size == 0 || !q.size.is_power_of_two())) {
            return bad(format!(
                "queue {index} size {} is not a power of two up to {MAX_QUEUE_SIZE}",
                q.size
            ));
        }
        if q.vector != VIRTIO_MSI_NO_VECTOR && q.vector >= vectors {
            return bad(format!(
                "queue {index} vector {} is outside the {vectors}-entry MSI-X table",
                q.vector
            ));
        }
        queues.push(q);
    }
    let device = VirtioDeviceState::decode(device_type, &mut dec)?;
    dec.finish()?;
    Ok((
        instance,
        VirtioPciState {
            device_type,
            config,
            msix,
            offered_features,
            acked_features,
            device_feature_select,
            driver_feature_select,
            status,
            config_generation,
            queue_select,
            activated,
            running,
            isr,
            needs_reset,
            config_vector,
            queues,
            device,
        },
    ))
}

/// Pauses `worker` for a snapshot of the device `name` (see [`DeviceWorker::pause`]).
pub fn pause_worker(name: &'static str, worker: &DeviceWorker) -> Result<Paused, StateError> {
    worker.pause().map_err(|source| StateError::Worker {
        device: name,
        source,
    })
}

/// Resumes `worker` after [`pause_worker`].
pub fn resume_worker(name: &'static str, worker: &DeviceWorker) -> Result<(), StateError> {
    worker.resume().map_err(|source| StateError::Worker {
        device: name,
        source,
    })
}

/// The snapshot methods of [`VirtioDevice`](super::VirtioDevice) for a device served by a
/// [`DeviceWorker`] in its `worker` field, whose own state is handled by its inherent
/// `save_state`, `check_state` and `apply_state`: one line in each device's impl.
macro_rules! worker_snapshot_hooks {
    ($name:expr) => {
        fn pause(&mut self) -> Result<$crate::virtio::worker::Paused, $crate::state::StateError> {
            $crate::virtio::state::pause_worker($name, &self.worker)
        }

        fn resume(&mut self) -> Result<(), $crate::state::StateError> {
            $crate::virtio::state::resume_worker($name, &self.worker)
        }

        fn save_device_state(
            &self,
        ) -> Result<$crate::virtio::state::VirtioDeviceState, $crate::state::StateError> {
            Ok(self.save_state())
        }

        fn check_device_state(
            &self,
            saved: &$crate::virtio::state::VirtioDeviceState,
        ) -> Result<(), $crate::state::StateError> {
            self.check_state(saved)
        }

        fn apply_device_state(
            &mut self,
            saved: $crate::virtio::state::VirtioDeviceState,
        ) -> Result<(), $crate::state::StateError> {
            self.apply_state(saved);
            Ok(())
        }
    };
}
pub(crate) use worker_snapshot_hooks;
