//! Explicit little-endian encoding of record payloads. Owners of records write their fields
//! one by one with [`Encoder`] and read them back with [`Decoder`], which never reads past
//! the payload and names the record in every error; nothing host-endian or padded is ever
//! copied raw into a stream.

use crate::{Error, RecordType, Result};

/// Builds a payload, field by field, little-endian.
#[derive(Debug, Default, Clone)]
pub struct Encoder(Vec<u8>);

impl Encoder {
    /// An empty payload.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// Appends a `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends an `i64`, two's complement.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends raw bytes (a byte array whose meaning is its own, e.g. the LAPIC page).
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    /// The payload so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// The payload.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a payload's fields in order; every read is bounds-checked.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    ty: RecordType,
}

impl<'a> Decoder<'a> {
    /// Reads `bytes`, the payload of a record of type `ty` (named in errors).
    pub fn new(ty: RecordType, bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0, ty }
    }

    /// The record type being decoded.
    pub fn record_type(&self) -> RecordType {
        self.ty
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.bytes.get(self.pos..end)) {
            Some(b) => {
                self.pos += n;
                Ok(b)
            }
            None => Err(Error::PayloadTruncated {
                kind: self.ty.kind,
                version: self.ty.version,
                offset: self.pos,
            }),
        }
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// The next byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    /// The next `u16`.
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// The next `u32`.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// The next `u64`.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// The next `i64`.
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A count that must not exceed `max`: `what` names the field in the error.
    pub fn count(&mut self, what: &'static str, max: usize) -> Result<usize> {
        let n = self.u32()?;
        match usize::try_from(n) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(self.out_of_range(what, u64::from(n))),
        }
    }

    /// An [`Error::OutOfRange`] naming this record and `what`.
    pub fn out_of_range(&self, what: &'static str, value: u64) -> Error {
        Error::OutOfRange {
            kind: self.ty.kind,
            what,
            value,
        }
    }

    /// Succeeds only if every byte was read.
    pub fn finish(self) -> Result<()> {
        let extra = self.bytes.len().saturating_sub(self.pos);
        if extra == 0 {
            Ok(())
        } else {
            Err(Error::PayloadTrailing {
                kind: self.ty.kind,
                version: self.ty.version,
                extra,
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_little_endian() {
        let mut e = Encoder::new();
        e.u8(1)
            .u16(0x0203)
            .u32(0x0405_0607)
            .u64(0x0809_0a0b_0c0d_0e0f)
            .i64(-2);
        assert_eq!(&e.as_slice()[..7], &[1, 3, 2, 7, 6, 5, 4]);
        let ty = RecordType::required(0x7f00, 1);
        let bytes = e.into_vec();
        let mut d = Decoder::new(ty, &bytes);
        assert_eq!(d.u8().unwrap(), 1);
        assert_eq!(d.u16().unwrap(), 0x0203);
        assert_eq!(d.u32().unwrap(), 0x0405_0607);
        assert_eq!(d.u64().unwrap(), 0x0809_0a0b_0c0d_0e0f);
        assert_eq!(d.i64().unwrap(), -2);
        d.finish().unwrap();
    }

    #[test]
    fn short_payload_is_truncated_and_long_one_trailing() {
        let ty = RecordType::required(0x7f00, 3);
        let mut d = Decoder::new(ty, &[1, 2, 3]);
        let err = d.u32().unwrap_err().to_string();
        assert_eq!(
            err,
            "snapshot record type 32512 version 3 payload is truncated at byte 0"
        );
        let mut d = Decoder::new(ty, &[1, 2, 3]);
        d.u8().unwrap();
        assert!(matches!(
            d.finish(),
            Err(Error::PayloadTrailing { extra: 2, .. })
        ));
    }

    #[test]
    fn count_above_bound_is_out_of_range() {
        let ty = RecordType::required(0x7f00, 1);
        let mut d = Decoder::new(ty, &[5, 0, 0, 0]);
        assert!(matches!(
            d.count("entries", 4),
            Err(Error::OutOfRange { value: 5, .. })
        ));
        let mut d = Decoder::new(ty, &[u8::MAX; 4]);
        assert!(d.count("entries", usize::MAX).is_ok());
    }
}
