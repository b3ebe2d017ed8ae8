//! Device state as snapshot records: the contract every device model implements, and the
//! error a restore reports.
//!
//! A device's saved state is a plain value ([`DeviceState::State`]) that encodes itself as
//! one record payload of the `snapshot` stream ([`StateRecord`]). The record kinds are
//! allocated in `snapshot::kind` and the layouts are in `docs/snapshot-format.md`. Every
//! payload starts with the instance: a `u32` that says which device of its kind the record
//! belongs to (the I/O port base of a legacy device, the PCI address `bus << 8 | device << 3
//! | function` of a PCI function), so several disks each have their own record.
//!
//! Restoring is split in three, so a bad snapshot leaves nothing half-started:
//!
//! 1. [`decode_record`] reads a payload into the state value and checks everything that can
//!    be checked without the device (bit patterns, counts, sizes): no side effects;
//! 2. [`DeviceState::check_state`] checks the value against the freshly built device it is meant
//!    for (queue sizes against the device's maxima, ring addresses against guest memory,
//!    acked features against the offered ones, BARs against the MMIO window): no side
//!    effects either;
//! 3. [`DeviceState::apply_state`] writes it into the device. It runs only after every record of
//!    the snapshot has passed 1 and 2, and fails only for host reasons (an eventfd that
//!    cannot be cloned, a worker thread that is gone), never because of the file.
//!
//! Saving needs a quiet device: legacy devices are saved with every vCPU stopped; a virtio
//! device is paused first (see `virtio::state`), so its worker is between requests and
//! gives back its queues' positions.
//!
//! # For the VMM
//!
//! Saving, on the thread that stopped the vCPUs, after every vCPU is out of `KVM_RUN`:
//! `VirtioPciDevice::pause` on each virtio function (a failure fails the snapshot: resume
//! the ones already paused), then [`DeviceState::save_state`] of each legacy device and
//! the PCI root and `VirtioPciDevice::save_state` of each function, each written with
//! [`encode_record`] (`virtio::state::encode_record`) and the instance, then
//! `VirtioPciDevice::resume` on each function before the vCPUs run again.
//!
//! Restoring, into devices built as for a boot from the same configuration (same slots,
//! disks, MACs, memory; MSI-X route handlers and BAR movers installed), before any vCPU
//! runs: parse the stream with [`KNOWN`] among the known kinds; [`decode_record`]
//! (`virtio::state::decode_record`) every device record and match it to its device by
//! instance; `check_state` every one; only if all pass, `apply_state` every one (legacy
//! devices and the PCI root, then the virtio functions, which start their workers). A
//! device without a record, or a record without a device, is the VMM's to refuse.
//!
//! A virtio-vsock device is rebuilt with the snapshot's guest CID (its check refuses
//! another), which the host kernel gives to one VM at a time: the snapshotted VM must have
//! let go of it (exited) before the restored one is built, or the build fails with "guest
//! CID N is already in use". Its connections are not restored; the guest is told so.

use snapshot::payload::{Decoder, Encoder};
use snapshot::{Known, Record, RecordType, kind};

/// Every device record this crate reads, for `snapshot::Snapshot::parse` (with
/// `arch::state::KNOWN` and whatever else the VMM reads).
pub const KNOWN: [Known; 12] = [
    Known::new(kind::SERIAL, 1),
    Known::new(kind::I8042, 1),
    Known::new(kind::CMOS, 1),
    Known::new(kind::ACPI_PM, 1),
    Known::new(kind::RESET_CONTROL, 1),
    Known::new(kind::PCI_ROOT, 1),
    crate::virtio::state::KNOWN[0],
    crate::virtio::state::KNOWN[1],
    crate::virtio::state::KNOWN[2],
    crate::virtio::state::KNOWN[3],
    crate::virtio::state::KNOWN[4],
    crate::virtio::state::KNOWN[5],
];

/// Why a device's state could not be saved, decoded, checked or restored. Each message is
/// one line that names the device and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The payload is malformed (truncated, trailing bytes, a count out of range).
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
    /// The record is not of the kind (or a version) this device reads.
    #[error("{device} cannot read a record of type {kind:#06x} version {version}")]
    WrongRecord {
        /// The device.
        device: &'static str,
        /// The record's kind.
        kind: u16,
        /// Its version.
        version: u8,
    },
    /// A saved value is out of range, or does not fit the device it is restored into.
    #[error("{device} state: {problem}")]
    Invalid {
        /// The device.
        device: &'static str,
        /// What is wrong, with the value.
        problem: String,
    },
    /// The device model cannot save or restore its state (yet).
    #[error("{0} does not support snapshots")]
    Unsupported(&'static str),
    /// A virtio device's state was asked for while its worker may still serve requests.
    #[error("{0} must be paused before its state is saved")]
    NotPaused(&'static str),
    /// A device worker did not stop, or could not be restarted.
    #[error("{device}: {source}")]
    Worker {
        /// The device.
        device: &'static str,
        /// What the worker said (a time-out is [`std::io::ErrorKind::TimedOut`]).
        source: std::io::Error,
    },
    /// Applying a checked state failed for a host reason.
    #[error("{device}: cannot restore: {problem}")]
    Apply {
        /// The device.
        device: &'static str,
        /// What failed.
        problem: String,
    },
}

impl StateError {
    /// A [`StateError::Invalid`] for `device`.
    pub fn invalid(device: &'static str, problem: impl Into<String>) -> StateError {
        StateError::Invalid {
            device,
            problem: problem.into(),
        }
    }
}

/// A saved state that is one record's payload (after the instance field).
pub trait StateRecord: Sized {
    /// The record type this state is written as.
    const RECORD: RecordType;
    /// The device's name in error messages.
    const NAME: &'static str;

    /// Writes the fields, little-endian, in the documented order.
    fn encode(&self, enc: &mut Encoder);

    /// Reads the fields written by [`StateRecord::encode`] (of the record's version) and
    /// checks what can be checked without the device. No side effects.
    fn decode(dec: &mut Decoder<'_>) -> Result<Self, StateError>;
}

/// A device whose state goes into a snapshot; see the module docs for the three steps of a
/// restore.
pub trait DeviceState {
    /// The saved state.
    type State: StateRecord;

    /// Captures the state. The device must be quiet (vCPUs stopped, a virtio device
    /// paused).
    fn save_state(&self) -> Result<Self::State, StateError>;

    /// Checks `state` against this device, which was built for the restore; no side
    /// effects.
    fn check_state(&self, state: &Self::State) -> Result<(), StateError>;

    /// Writes a checked `state` into this device.
    fn apply_state(&mut self, state: Self::State) -> Result<(), StateError>;

    /// [`DeviceState::check_state`] then [`DeviceState::apply_state`], for a caller
    /// restoring one device alone.
    fn restore_state(&mut self, state: Self::State) -> Result<(), StateError> {
        self.check_state(&state)?;
        self.apply_state(state)
    }
}

/// The record type and payload of `state` for instance `instance`, to hand to
/// `snapshot::Writer::record`.
pub fn encode_record<S: StateRecord>(instance: u32, state: &S) -> (RecordType, Vec<u8>) {
    let mut enc = Encoder::new();
    enc.u32(instance);
    state.encode(&mut enc);
    (S::RECORD, enc.into_vec())
}

/// Decodes `record` as an `S`: its instance field and state. Refuses a record of another
/// kind or of a newer version, and a payload with bytes left over.
pub fn decode_record<S: StateRecord>(record: &Record<'_>) -> Result<(u32, S), StateError> {
    decode_payload(record.ty, record.payload)
}

/// [`decode_record`] from a record type and payload.
pub fn decode_payload<S: StateRecord>(
    ty: RecordType,
    payload: &[u8],
) -> Result<(u32, S), StateError> {
    if ty.kind != S::RECORD.kind || ty.version == 0 || ty.version > S::RECORD.version {
        return Err(StateError::WrongRecord {
            device: S::NAME,
            kind: ty.kind,
            version: ty.version,
        });
    }
    let mut dec = Decoder::new(ty, payload);
    let instance = dec.u32()?;
    let state = S::decode(&mut dec)?;
    dec.finish()?;
    Ok((instance, state))
}

/// Reads a byte that must be 0 or 1.
pub(crate) fn decode_bool(
    dec: &mut Decoder<'_>,
    device: &'static str,
    what: &str,
) -> Result<bool, StateError> {
    match dec.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(StateError::invalid(
            device,
            format!("{what} is {v}, not 0 or 1"),
        )),
    }
}
