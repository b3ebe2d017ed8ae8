//! The `vmm` snapshot stream: a header, typed and versioned records, an end record with a
//! CRC-32C over the whole stream. This crate owns the framing and nothing else: it knows no
//! device, no vCPU and no KVM. Whoever owns a piece of state owns its record's payload
//! (`arch::state` the vCPU and VM records, each device its own); the numbers of the record
//! kinds are allocated here, in [`kind`], so that they never collide.
//!
//! * [`Writer`] streams records into any `impl Write`, checksumming as it goes, and refuses
//!   to write anything the reader would refuse (the same bounds apply).
//! * [`Snapshot`] reads a whole stream into memory (at most [`MAX_STREAM_LEN`] bytes) and
//!   checks all of it — magic, versions, framing, bounds, checksum, record kinds — before
//!   handing out a single record, so a restore never starts on a stream that is bad further
//!   on.
//! * [`payload`] has the little-endian [`payload::Encoder`] and bounds-checked
//!   [`payload::Decoder`] the owners of records use for their fields.
//!
//! The format, byte by byte, is in `docs/snapshot-format.md`; `tests/golden.rs` pins it.
//! A snapshot file is hostile input: the library denies `unwrap`, `expect`, `panic!` and
//! slice indexing.

#![deny(
    missing_docs,
    clippy::undocumented_unsafe_blocks,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod crc32c;
pub mod kind;
pub mod payload;
mod reader;
mod writer;

pub use reader::{Record, Snapshot};
pub use writer::Writer;

/// The first 8 bytes of every stream. The leading 0x89 (as PNG's) is not ASCII, so a text
/// file is never mistaken for a snapshot, and a transfer that strips the eighth bit breaks it.
pub const MAGIC: [u8; 8] = *b"\x89VMMSNAP";

/// The stream format version this code writes and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;

/// The endianness marker: 0xFEFF written little-endian is `FF FE`; a stream whose writer
/// wrote it big-endian (`FE FF`) is refused by name.
pub const ENDIAN_MARKER: u16 = 0xFEFF;

/// Bytes in the stream header: magic, format version, endianness marker, reserved `u32`.
pub const HEADER_LEN: usize = 16;

/// Bytes in a record header: type `u32`, payload length `u32`.
pub const RECORD_HEADER_LEN: usize = 8;

/// Every record starts at a multiple of this; payloads are padded with zeros up to it.
pub const ALIGN: usize = 8;

/// Bytes of the end record's payload: record count `u32`, CRC-32C `u32`.
pub const END_PAYLOAD_LEN: usize = 8;

/// Bytes of the whole end record.
pub const END_RECORD_LEN: usize = RECORD_HEADER_LEN + END_PAYLOAD_LEN;

/// The largest payload of one record: 1 MiB. A vCPU's state with AMX's XSAVE area is
/// about 16 KiB; device state is smaller; guest memory never travels in records.
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;

/// The most records in one stream, the end record not counted: room for 254 vCPUs, many
/// devices and whatever the VMM adds, far from anything that strains memory.
pub const MAX_RECORDS: u32 = 4096;

/// The largest stream, header and end record included: 16 MiB. The reader never holds more.
pub const MAX_STREAM_LEN: usize = 16 << 20;

/// Bit 31 of a record's type word: set, a reader that does not know the record's kind (or
/// its version) skips it; clear, it refuses the whole stream.
pub const SKIPPABLE: u32 = 1 << 31;

/// Bits 24-30 of the type word are reserved and must be zero.
const TYPE_RESERVED: u32 = 0x7f00_0000;

/// What a record is: its kind, its version (of the payload's layout) and whether a reader
/// that does not know it may skip it. On the wire it is one `u32`: kind in bits 0-15,
/// version in bits 16-23, bits 24-30 zero, [`SKIPPABLE`] in bit 31.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordType {
    /// The kind (see [`kind`]); 0 is never valid.
    pub kind: u16,
    /// The payload layout's version, from 1; each kind counts its own.
    pub version: u8,
    /// Whether a reader that does not understand this record may ignore it.
    pub skippable: bool,
}

impl RecordType {
    /// A record a reader must understand or refuse the stream.
    pub const fn required(kind: u16, version: u8) -> Self {
        Self {
            kind,
            version,
            skippable: false,
        }
    }

    /// A record a reader may ignore when it does not understand it.
    pub const fn skippable(kind: u16, version: u8) -> Self {
        Self {
            kind,
            version,
            skippable: true,
        }
    }

    /// The wire form.
    pub const fn to_word(self) -> u32 {
        (self.kind as u32)
            | ((self.version as u32) << 16)
            | if self.skippable { SKIPPABLE } else { 0 }
    }

    /// Parses the wire form: kind 0, version 0 or reserved bits set are out of range.
    pub fn from_word(word: u32) -> Result<Self> {
        let kind = (word & 0xffff) as u16;
        let version = ((word >> 16) & 0xff) as u8;
        if kind == 0 || version == 0 || word & TYPE_RESERVED != 0 {
            return Err(Error::BadRecordType(word));
        }
        Ok(Self {
            kind,
            version,
            skippable: word & SKIPPABLE != 0,
        })
    }
}

/// A record kind this reader understands, up to which version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// The kind.
    pub kind: u16,
    /// The newest version of its payload this reader decodes (older ones too).
    pub max_version: u8,
}

impl Known {
    /// Kind `kind`, versions 1 to `max_version`.
    pub const fn new(kind: u16, max_version: u8) -> Self {
        Self { kind, max_version }
    }
}

/// Everything that can be wrong with a stream, or with writing one. Each message names the
/// problem in one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the stream failed.
    #[error("snapshot I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ends before its end record.
    #[error("snapshot is truncated: {0}")]
    Truncated(&'static str),
    /// The first 8 bytes are not [`MAGIC`].
    #[error("not a vmm snapshot: wrong magic {0:02x?}")]
    WrongMagic([u8; 8]),
    /// The endianness marker is not `FF FE`.
    #[error("snapshot endianness marker is {0:#06x}, not 0xfeff: written big-endian or corrupt")]
    WrongEndianness(u16),
    /// The format version is newer than this code.
    #[error("snapshot format version {0} is newer than this vmm reads ({FORMAT_VERSION})")]
    FutureVersion(u16),
    /// The format version is 0.
    #[error("snapshot format version 0 is invalid")]
    ZeroVersion,
    /// The stream is longer than [`MAX_STREAM_LEN`].
    #[error("snapshot is larger than {} bytes", MAX_STREAM_LEN)]
    StreamTooLong,
    /// The CRC-32C in the end record does not match the stream.
    #[error("snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// The value in the end record.
        stored: u32,
        /// The value of the bytes read.
        computed: u32,
    },
    /// A record's type word has kind 0, version 0, or reserved bits set.
    #[error("snapshot record type word {0:#010x} is invalid")]
    BadRecordType(u32),
    /// A required record of a kind this vmm does not know.
    #[error("snapshot has unknown required record type {0}")]
    UnknownRequired(u16),
    /// A required record in a version newer than this vmm reads.
    #[error("snapshot record type {kind} version {version} is newer than this vmm reads ({max})")]
    FutureRecordVersion {
        /// The record's kind.
        kind: u16,
        /// Its version in the stream.
        version: u8,
        /// The newest this reader knows.
        max: u8,
    },
    /// A record's length is above [`MAX_PAYLOAD_LEN`].
    #[error(
        "snapshot record type {kind} is {len} bytes long, more than {}",
        MAX_PAYLOAD_LEN
    )]
    RecordTooLong {
        /// The record's kind.
        kind: u16,
        /// The length it claims.
        len: u64,
    },
    /// More than [`MAX_RECORDS`] records.
    #[error("snapshot has more than {} records", MAX_RECORDS)]
    TooManyRecords,
    /// Padding after a payload is not zero.
    #[error("snapshot record type {0} has non-zero padding")]
    BadPadding(u16),
    /// The end record is malformed.
    #[error("snapshot end record is invalid: {0}")]
    BadEnd(&'static str),
    /// The end record's count does not match the records before it.
    #[error("snapshot end record counts {stored} records, the stream has {found}")]
    RecordCountMismatch {
        /// The count in the end record.
        stored: u32,
        /// The records actually found.
        found: u32,
    },
    /// The header's reserved field is not zero.
    #[error("snapshot header's reserved field is {0:#x}, not 0")]
    HeaderReserved(u32),
    /// A writer was asked to write a record type the format keeps for itself or one that
    /// does not fit the type word.
    #[error(
        "record type {0:?} cannot be written: kind 0, version 0 and the end record's kind are reserved"
    )]
    ReservedRecordType(RecordType),
    /// A payload is shorter than its layout needs.
    #[error("snapshot record type {kind} version {version} payload is truncated at byte {offset}")]
    PayloadTruncated {
        /// The record's kind.
        kind: u16,
        /// Its version.
        version: u8,
        /// Where the next field would have started.
        offset: usize,
    },
    /// A payload is longer than its layout.
    #[error(
        "snapshot record type {kind} version {version} payload has {extra} bytes after its last field"
    )]
    PayloadTrailing {
        /// The record's kind.
        kind: u16,
        /// Its version.
        version: u8,
        /// How many bytes are left over.
        extra: usize,
    },
    /// A field holds a value its owner cannot accept.
    #[error("snapshot record type {kind}: {what} is {value:#x}, out of range")]
    OutOfRange {
        /// The record's kind.
        kind: u16,
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Padding that brings `len` up to the next multiple of [`ALIGN`].
pub(crate) const fn pad_len(len: usize) -> usize {
    (ALIGN - len % ALIGN) % ALIGN
}
