//! The console attachment (protocol version 4): the flags of
//! [`Request::ConsoleAttach`](super::Request::ConsoleAttach), the payload of its
//! [`Response::ConsoleAttached`](super::Response::ConsoleAttached) reply, and the
//! [`ConsoleFrame`]s both sides then exchange on the descriptor the request passed.
//!
//! A frame is one datagram on that `SOCK_SEQPACKET` socket: an 8-byte little-endian header
//! (`version: u16` = [`CONSOLE_FRAME_VERSION`], `kind: u16`, `length: u32`, the payload's
//! size) and exactly `length` bytes of payload, at most [`MAX_CONSOLE_PAYLOAD`]. Frames are
//! independent of the control protocol's version: the reply to the attach request says
//! which frame version the stream speaks (today always 1).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::raw::{PAYLOAD_SIZE, check_reserved, put, read_payload};
use super::{DecodeError, Response};

/// Bits of [`Request::ConsoleAttach`](super::Request::ConsoleAttach)'s `flags` (and of
/// the granted flags in its reply). Stable.
pub mod attach_flags {
    /// Asks to be the console's writer: `Input` frames reach the guest. Only one client
    /// is the writer at a time; a second gets `Failed`/`EBUSY`.
    pub const WRITE: u32 = 1;
    /// Skips the ring's history: only output from the moment of attaching is sent.
    pub const NO_HISTORY: u32 = 2;
    /// Every bit defined so far.
    pub const ALL: u32 = WRITE | NO_HISTORY;
}

/// The frame format version this crate speaks.
pub const CONSOLE_FRAME_VERSION: u16 = 1;
/// Size of a frame's header.
pub const CONSOLE_FRAME_HEADER: usize = 8;
/// Largest frame datagram, header included.
pub const MAX_CONSOLE_FRAME: usize = 4096;
/// Largest frame payload.
pub const MAX_CONSOLE_PAYLOAD: usize = MAX_CONSOLE_FRAME - CONSOLE_FRAME_HEADER;

/// Frame kind numbers (offset 2 of a frame). Stable: never renumbered.
pub mod frame_kind {
    /// VMM → client: console output bytes, in order.
    pub const DATA: u16 = 1;
    /// VMM → client: `u64` count of output bytes this client will never see (it fell
    /// behind the ring).
    pub const MISSED: u16 = 2;
    /// VMM → client: the VMM ends the attachment; `u32` reason. Nothing follows.
    pub const DETACHED: u16 = 3;
    /// Client → VMM: input bytes for the guest (only from the writer).
    pub const INPUT: u16 = 4;
}

/// Why the VMM ended an attachment ([`ConsoleFrame::Detached`]). Stable.
pub mod detach_reason {
    /// The VM ended (the VMM is exiting).
    pub const VM_ENDED: u32 = 1;
    /// The client sent a frame the VMM could not decode, or input without being the
    /// writer.
    pub const BAD_FRAME: u32 = 2;
}

/// One console stream datagram, decoded. Payload slices borrow the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleFrame<'a> {
    /// Console output.
    Data(&'a [u8]),
    /// Output bytes the client missed since its last frame.
    Missed(u64),
    /// The attachment ends, for the [`detach_reason`] given.
    Detached(u32),
    /// Input for the guest.
    Input(&'a [u8]),
}

impl<'a> ConsoleFrame<'a> {
    /// The frame's kind number.
    pub fn kind(&self) -> u16 {
        match self {
            ConsoleFrame::Data(_) => frame_kind::DATA,
            ConsoleFrame::Missed(_) => frame_kind::MISSED,
            ConsoleFrame::Detached(_) => frame_kind::DETACHED,
            ConsoleFrame::Input(_) => frame_kind::INPUT,
        }
    }

    /// Writes the frame into the front of `out` and returns its size; `None` when a
    /// payload is larger than [`MAX_CONSOLE_PAYLOAD`] or `out` is too small.
    pub fn encode_into(&self, out: &mut [u8]) -> Option<usize> {
        let missed;
        let reason;
        let payload: &[u8] = match self {
            ConsoleFrame::Data(bytes) | ConsoleFrame::Input(bytes) => bytes,
            ConsoleFrame::Missed(count) => {
                missed = count.to_le_bytes();
                &missed
            }
            ConsoleFrame::Detached(why) => {
                reason = why.to_le_bytes();
                &reason
            }
        };
        if payload.len() > MAX_CONSOLE_PAYLOAD {
            return None;
        }
        let header = RawConsoleFrameHeader {
            version: U16::new(CONSOLE_FRAME_VERSION),
            kind: U16::new(self.kind()),
            // At most MAX_CONSOLE_PAYLOAD, checked above.
            length: U32::new(payload.len() as u32),
        };
        let size = CONSOLE_FRAME_HEADER + payload.len();
        let (head, body) = out
            .get_mut(..size)?
            .split_at_mut_checked(CONSOLE_FRAME_HEADER)?;
        head.copy_from_slice(header.as_bytes());
        body.copy_from_slice(payload);
        Some(size)
    }

    /// The frame as a new vector (tests, tools; the VMM encodes into a buffer it keeps).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; MAX_CONSOLE_FRAME];
        let size = self.encode_into(&mut out).unwrap_or(0);
        out.truncate(size);
        out
    }

    /// Decodes and validates one frame datagram: the version is
    /// [`CONSOLE_FRAME_VERSION`], the kind known, `length` equals the payload's real size
    /// and is at most [`MAX_CONSOLE_PAYLOAD`], and `Missed` / `Detached` payloads are 8 / 4
    /// bytes.
    pub fn decode(datagram: &'a [u8]) -> Result<ConsoleFrame<'a>, DecodeError> {
        let bad_size = DecodeError::BadSize {
            received: datagram.len(),
            expected: CONSOLE_FRAME_HEADER,
        };
        if datagram.len() < CONSOLE_FRAME_HEADER || datagram.len() > MAX_CONSOLE_FRAME {
            return Err(bad_size);
        }
        let (header, payload) =
            RawConsoleFrameHeader::read_from_prefix(datagram).map_err(|_| bad_size)?;
        let version = header.version.get();
        if version != CONSOLE_FRAME_VERSION {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        let kind = header.kind.get();
        if usize::try_from(header.length.get()).ok() != Some(payload.len()) {
            return Err(DecodeError::InvalidArgument(
                "console frame length does not match its payload",
            ));
        }
        match kind {
            frame_kind::DATA => Ok(ConsoleFrame::Data(payload)),
            frame_kind::INPUT => Ok(ConsoleFrame::Input(payload)),
            frame_kind::MISSED => match <[u8; 8]>::try_from(payload) {
                Ok(count) => Ok(ConsoleFrame::Missed(u64::from_le_bytes(count))),
                Err(_) => Err(DecodeError::InvalidArgument("MISSED frame is not 8 bytes")),
            },
            frame_kind::DETACHED => match <[u8; 4]>::try_from(payload) {
                Ok(why) => Ok(ConsoleFrame::Detached(u32::from_le_bytes(why))),
                Err(_) => Err(DecodeError::InvalidArgument(
                    "DETACHED frame is not 4 bytes",
                )),
            },
            _ => Err(DecodeError::InvalidType { kind }),
        }
    }
}

/// A console frame's header as it is on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawConsoleFrameHeader {
    /// [`CONSOLE_FRAME_VERSION`] (offset 0).
    pub version: U16,
    /// A [`frame_kind`] (offset 2).
    pub kind: U16,
    /// Payload bytes that follow (offset 4).
    pub length: U32,
}

const _: () = assert!(size_of::<RawConsoleFrameHeader>() == CONSOLE_FRAME_HEADER);

/// What [`Response::ConsoleAttached`] says about the attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleAttached {
    /// The [`attach_flags`] granted: `WRITE` when this client is the writer, `NO_HISTORY`
    /// as asked.
    pub flags: u32,
    /// The frame version the stream speaks ([`CONSOLE_FRAME_VERSION`]).
    pub frame_version: u16,
    /// Size of the VMM's console ring, bytes.
    pub ring_bytes: u64,
    /// Bytes of history the stream starts with (0 with `NO_HISTORY`).
    pub history_bytes: u64,
}

/// Payload of [`Response::ConsoleAttached`] (version 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawConsoleAttachedPayload {
    /// Granted [`attach_flags`] (offset 16).
    pub flags: U32,
    /// Frame version of the stream (offset 20).
    pub frame_version: U16,
    /// Must be zero (offset 22).
    pub reserved0: U16,
    /// Ring size, bytes (offset 24).
    pub ring_bytes: U64,
    /// History the stream starts with, bytes (offset 32).
    pub history_bytes: U64,
    /// Must be zero (offsets 40..1024).
    pub reserved: [u8; 984],
}

const _: () = assert!(size_of::<RawConsoleAttachedPayload>() == PAYLOAD_SIZE);

pub(super) fn encode_attached(payload: &mut [u8; PAYLOAD_SIZE], a: &ConsoleAttached) {
    put(
        payload,
        &RawConsoleAttachedPayload {
            flags: U32::new(a.flags),
            frame_version: U16::new(a.frame_version),
            reserved0: U16::ZERO,
            ring_bytes: U64::new(a.ring_bytes),
            history_bytes: U64::new(a.history_bytes),
            reserved: [0; 984],
        },
    );
}

pub(super) fn decode_attached(payload: &[u8]) -> Result<Response, DecodeError> {
    let raw = read_payload::<RawConsoleAttachedPayload>(payload)?;
    if raw.flags.get() & !attach_flags::ALL != 0 {
        return Err(DecodeError::ReservedNonZero { offset: 16 });
    }
    if raw.reserved0.get() != 0 {
        return Err(DecodeError::ReservedNonZero { offset: 22 });
    }
    check_reserved(&raw.reserved, 40)?;
    Ok(Response::ConsoleAttached(ConsoleAttached {
        flags: raw.flags.get(),
        frame_version: raw.frame_version.get(),
        ring_bytes: raw.ring_bytes.get(),
        history_bytes: raw.history_bytes.get(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_kind_round_trips() {
        let frames = [
            ConsoleFrame::Data(b"hello"),
            ConsoleFrame::Data(&[]),
            ConsoleFrame::Missed(12345),
            ConsoleFrame::Detached(detach_reason::VM_ENDED),
            ConsoleFrame::Input(&[0x1d; MAX_CONSOLE_PAYLOAD]),
        ];
        for frame in frames {
            let bytes = frame.to_vec();
            assert_eq!(ConsoleFrame::decode(&bytes), Ok(frame));
        }
    }

    #[test]
    fn a_data_frame_has_its_golden_bytes() {
        assert_eq!(
            ConsoleFrame::Data(b"hi\n").to_vec(),
            [1, 0, 1, 0, 3, 0, 0, 0, b'h', b'i', b'\n']
        );
        assert_eq!(
            ConsoleFrame::Missed(0x3039).to_vec(),
            [1, 0, 2, 0, 8, 0, 0, 0, 0x39, 0x30, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn malformed_frames_are_refused() {
        let too_long = [0u8; MAX_CONSOLE_FRAME + 1];
        let cases: [&[u8]; 6] = [
            &[1, 0, 1, 0],                         // shorter than a header
            &[2, 0, 1, 0, 0, 0, 0, 0],             // unknown version
            &[1, 0, 9, 0, 0, 0, 0, 0],             // unknown kind
            &[1, 0, 4, 0, 2, 0, 0, 0, b'x'],       // length says 2, payload is 1
            &[1, 0, 2, 0, 4, 0, 0, 0, 1, 2, 3, 4], // MISSED of 4 bytes
            &too_long,
        ];
        for case in cases {
            assert!(ConsoleFrame::decode(case).is_err(), "{case:?}");
        }
    }

    #[test]
    fn an_oversized_payload_is_not_encoded() {
        let big = [0u8; MAX_CONSOLE_PAYLOAD + 1];
        assert_eq!(ConsoleFrame::Data(&big).encode_into(&mut [0u8; 8192]), None);
    }
}
