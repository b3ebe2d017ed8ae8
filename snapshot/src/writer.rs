//! The streaming [`Writer`]: header, records, end record, over any `impl Write`.

use std::io::Write;

use crate::crc32c::Crc32c;
use crate::{
    END_RECORD_LEN, ENDIAN_MARKER, Error, FORMAT_VERSION, MAGIC, MAX_PAYLOAD_LEN, MAX_RECORDS,
    MAX_STREAM_LEN, RECORD_HEADER_LEN, RecordType, Result, kind, pad_len,
};

/// Zeros to pad a payload with.
const ZEROS: [u8; crate::ALIGN] = [0; crate::ALIGN];

/// Writes a snapshot stream record by record. Nothing is buffered beyond what `out` buffers:
/// wrap a file in a `BufWriter`. The stream is only complete once [`Writer::finish`] has
/// written the end record; a stream without one is refused by every reader.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    crc: Crc32c,
    len: usize,
    records: u32,
}

impl<W: Write> Writer<W> {
    /// Writes the stream header to `out`.
    pub fn new(out: W) -> Result<Self> {
        let mut w = Self {
            out,
            crc: Crc32c::new(),
            len: 0,
            records: 0,
        };
        let mut header = [0u8; crate::HEADER_LEN];
        let (magic, rest) = header.split_at_mut(8);
        magic.copy_from_slice(&MAGIC);
        let (version, rest) = rest.split_at_mut(2);
        version.copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let (marker, _reserved) = rest.split_at_mut(2);
        marker.copy_from_slice(&ENDIAN_MARKER.to_le_bytes());
        w.put(&header)?;
        Ok(w)
    }

    /// Writes one record. The same bounds as the reader's apply: a payload above
    /// [`MAX_PAYLOAD_LEN`], a record beyond [`MAX_RECORDS`] or a stream that would outgrow
    /// [`MAX_STREAM_LEN`] is refused here, not discovered at restore.
    pub fn record(&mut self, ty: RecordType, payload: &[u8]) -> Result<()> {
        if ty.kind == 0 || ty.version == 0 || ty.kind == kind::END {
            return Err(Error::ReservedRecordType(ty));
        }
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(Error::RecordTooLong {
                kind: ty.kind,
                len: payload.len() as u64,
            });
        }
        if self.records >= MAX_RECORDS {
            return Err(Error::TooManyRecords);
        }
        let pad = pad_len(payload.len());
        let total = RECORD_HEADER_LEN + payload.len() + pad;
        if self.len + total + END_RECORD_LEN > MAX_STREAM_LEN {
            return Err(Error::StreamTooLong);
        }
        // The length fits: it is at most MAX_PAYLOAD_LEN.
        let len = payload.len() as u32;
        self.put(&ty.to_word().to_le_bytes())?;
        self.put(&len.to_le_bytes())?;
        self.put(payload)?;
        self.put(ZEROS.get(..pad).unwrap_or_default())?;
        self.records += 1;
        Ok(())
    }

    /// The number of records written so far.
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Writes the end record (the record count and the CRC-32C of every byte before the
    /// CRC itself), flushes, and gives `out` back.
    pub fn finish(mut self) -> Result<W> {
        let end = RecordType::required(kind::END, 1);
        self.put(&end.to_word().to_le_bytes())?;
        self.put(&(crate::END_PAYLOAD_LEN as u32).to_le_bytes())?;
        self.put(&self.records.to_le_bytes())?;
        let crc = self.crc.value();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.crc.update(bytes);
        self.len += bytes.len();
        Ok(())
    }
}
