//! The reader: a whole stream, checked end to end before any record is handed out.

use std::io::Read;

use crate::payload::Decoder;
use crate::{
    ALIGN, END_PAYLOAD_LEN, END_RECORD_LEN, ENDIAN_MARKER, Error, FORMAT_VERSION, HEADER_LEN,
    Known, MAGIC, MAX_PAYLOAD_LEN, MAX_RECORDS, MAX_STREAM_LEN, RECORD_HEADER_LEN, RecordType,
    Result, kind, pad_len,
};

/// One record of a checked stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its type (a kind the reader knows, in a version it reads).
    pub ty: RecordType,
    /// Its payload, without padding.
    pub payload: &'a [u8],
}

impl<'a> Record<'a> {
    /// A decoder over the payload.
    pub fn decoder(&self) -> Decoder<'a> {
        Decoder::new(self.ty, self.payload)
    }
}

/// A whole stream, checked: magic, format version, endianness, framing, every bound, the
/// checksum, the record count, and the kinds. It holds the records a reader knows, in
/// stream order; records it may skip and does not know are counted and dropped.
#[derive(Debug, Clone)]
pub struct Snapshot {
    bytes: Vec<u8>,
    records: Vec<(RecordType, usize, usize)>,
    skipped: u32,
}

/// `N` bytes at `at`, or the truncation error `what`.
fn take<const N: usize>(bytes: &[u8], at: usize, what: &'static str) -> Result<[u8; N]> {
    let mut out = [0u8; N];
    let src = at
        .checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .ok_or(Error::Truncated(what))?;
    out.copy_from_slice(src);
    Ok(out)
}

fn u32_at(bytes: &[u8], at: usize, what: &'static str) -> Result<u32> {
    take::<4>(bytes, at, what).map(u32::from_le_bytes)
}

fn u16_at(bytes: &[u8], at: usize, what: &'static str) -> Result<u16> {
    take::<2>(bytes, at, what).map(u16::from_le_bytes)
}

impl Snapshot {
    /// Reads a whole stream from `input` (never more than [`MAX_STREAM_LEN`] bytes, plus
    /// one to know it is too long) and checks it with [`Snapshot::parse`].
    pub fn read_from<R: Read>(input: R, known: &[Known]) -> Result<Self> {
        let mut bytes = Vec::new();
        input
            .take(MAX_STREAM_LEN as u64 + 1)
            .read_to_end(&mut bytes)?;
        Self::parse(bytes, known)
    }

    /// Checks a whole stream held in memory. `known` lists the record kinds the caller
    /// decodes and their newest versions; any other required record (or a required record
    /// in a newer version) refuses the stream, any other skippable one is ignored.
    pub fn parse(bytes: Vec<u8>, known: &[Known]) -> Result<Self> {
        if bytes.len() > MAX_STREAM_LEN {
            return Err(Error::StreamTooLong);
        }
        check_header(&bytes)?;
        let end_at = check_end_and_checksum(&bytes)?;
        let mut snapshot = Self {
            records: Vec::new(),
            skipped: 0,
            bytes,
        };
        let found = snapshot.walk(end_at, known)?;
        let stored = u32_at(&snapshot.bytes, end_at + RECORD_HEADER_LEN, "end record")?;
        if stored != found {
            return Err(Error::RecordCountMismatch { stored, found });
        }
        Ok(snapshot)
    }

    /// Walks the records between the header and the end record at `end_at`: framing,
    /// bounds, padding, kinds. Returns how many records there are.
    fn walk(&mut self, end_at: usize, known: &[Known]) -> Result<u32> {
        let mut at = HEADER_LEN;
        let mut count = 0u32;
        while at < end_at {
            if end_at - at < RECORD_HEADER_LEN {
                return Err(Error::BadEnd("a record header runs into the end record"));
            }
            let ty = RecordType::from_word(u32_at(&self.bytes, at, "record header")?)?;
            if ty.kind == kind::END {
                return Err(Error::BadEnd("an end record comes before the end"));
            }
            let len = u32_at(&self.bytes, at + 4, "record header")?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= MAX_PAYLOAD_LEN)
                .ok_or(Error::RecordTooLong {
                    kind: ty.kind,
                    len: u64::from(len),
                })?;
            let start = at + RECORD_HEADER_LEN;
            let padded_end = start + len + pad_len(len);
            if padded_end > end_at {
                return Err(Error::BadEnd("a record runs into the end record"));
            }
            let padding = self.bytes.get(start + len..padded_end).unwrap_or_default();
            if padding.iter().any(|&b| b != 0) {
                return Err(Error::BadPadding(ty.kind));
            }
            count += 1;
            if count > MAX_RECORDS {
                return Err(Error::TooManyRecords);
            }
            match known.iter().find(|k| k.kind == ty.kind) {
                Some(k) if ty.version <= k.max_version => self.records.push((ty, start, len)),
                _ if ty.skippable => self.skipped += 1,
                Some(k) => {
                    return Err(Error::FutureRecordVersion {
                        kind: ty.kind,
                        version: ty.version,
                        max: k.max_version,
                    });
                }
                None => return Err(Error::UnknownRequired(ty.kind)),
            }
            at = padded_end;
        }
        Ok(count)
    }

    /// The records the reader knows, in stream order.
    pub fn records(&self) -> impl Iterator<Item = Record<'_>> {
        self.records.iter().map(|&(ty, start, len)| Record {
            ty,
            payload: self.bytes.get(start..start + len).unwrap_or_default(),
        })
    }

    /// The records of one kind, in stream order.
    pub fn records_of(&self, kind: u16) -> impl Iterator<Item = Record<'_>> {
        self.records().filter(move |r| r.ty.kind == kind)
    }

    /// How many skippable records this reader did not know and ignored.
    pub fn skipped(&self) -> u32 {
        self.skipped
    }
}

/// Magic, endianness marker, format version and reserved field. A stream shorter than a
/// header that starts as the magic does is truncated; anything else is not a snapshot.
fn check_header(bytes: &[u8]) -> Result<()> {
    let prefix = bytes
        .get(..MAGIC.len().min(bytes.len()))
        .unwrap_or_default();
    if MAGIC.get(..prefix.len()) != Some(prefix) {
        let mut magic = [0u8; 8];
        for (m, b) in magic.iter_mut().zip(prefix) {
            *m = *b;
        }
        return Err(Error::WrongMagic(magic));
    }
    let what = "the header is incomplete";
    let marker = u16_at(bytes, 10, what)?;
    let version = u16_at(bytes, 8, what)?;
    let reserved = u32_at(bytes, 12, what)?;
    if marker != ENDIAN_MARKER {
        return Err(Error::WrongEndianness(marker));
    }
    if version == 0 {
        return Err(Error::ZeroVersion);
    }
    if version > FORMAT_VERSION {
        return Err(Error::FutureVersion(version));
    }
    if reserved != 0 {
        return Err(Error::HeaderReserved(reserved));
    }
    Ok(())
}

/// Finds the end record in the last [`END_RECORD_LEN`] bytes and checks the CRC-32C over
/// everything before the stored value. Returns where the end record starts.
fn check_end_and_checksum(bytes: &[u8]) -> Result<usize> {
    let end_at = bytes
        .len()
        .checked_sub(END_RECORD_LEN)
        .filter(|&at| at >= HEADER_LEN)
        .ok_or(Error::Truncated("no end record"))?;
    let word = u32_at(bytes, end_at, "no end record")?;
    let len = u32_at(bytes, end_at + 4, "no end record")?;
    let end = RecordType::required(kind::END, 1);
    if word != end.to_word() || len as usize != END_PAYLOAD_LEN {
        return Err(Error::Truncated(
            "the stream does not end with an end record (cut short, or bytes after it)",
        ));
    }
    if end_at % ALIGN != 0 {
        return Err(Error::BadEnd("the end record is not 8-byte aligned"));
    }
    let crc_at = bytes.len() - 4;
    let stored = u32_at(bytes, crc_at, "no end record")?;
    let computed = crate::crc32c::checksum(bytes.get(..crc_at).unwrap_or_default());
    if stored != computed {
        return Err(Error::BadChecksum { stored, computed });
    }
    Ok(end_at)
}
