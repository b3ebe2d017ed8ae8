//! CRC-32C (Castagnoli): the checksum at the end of every snapshot stream.
//!
//! Reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFF_FFFF, as in iSCSI,
//! ext4 and btrfs; the check value of `b"123456789"` is 0xE3069283. A byte-wise table
//! (1 KiB, built at compile time) is fast enough for a stream of device and vCPU state
//! (guest memory is not in the stream) and needs no dependency. The checksum catches
//! corruption (truncated copies, flipped bits, wrong files); it is not a defence against a
//! hostile file, which can carry a correct checksum: that is the bounds' and the
//! decoders' job.

/// The reflected CRC-32C polynomial.
const POLY: u32 = 0x82F6_3B78;

/// The byte-wise lookup table.
#[allow(clippy::indexing_slicing)] // `i < 256` by the loop condition.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// A running CRC-32C.
#[derive(Clone, Copy, Debug)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    /// A checksum over no bytes yet.
    pub const fn new() -> Self {
        Self(!0)
    }

    /// Adds `bytes` to the checksum.
    #[allow(clippy::indexing_slicing)] // A `u8` index into a 256-entry table.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut crc = self.0;
        for &b in bytes {
            // The index is a byte, so it is always within the 256-entry table.
            crc = TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
        }
        self.0 = crc;
    }

    /// The checksum of everything added so far.
    pub const fn value(&self) -> u32 {
        !self.0
    }
}

/// The CRC-32C of `bytes`.
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(bytes);
    crc.value()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn check_value_matches_the_standard() {
        assert_eq!(checksum(b"123456789"), 0xE306_9283);
        assert_eq!(checksum(b""), 0);
    }

    #[test]
    fn rfc3720_vectors() {
        // iSCSI (RFC 3720, B.4): 32 bytes of zeros and of 0xff.
        assert_eq!(checksum(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(checksum(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(checksum(&ascending), 0x46DD_794E);
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut crc = Crc32c::new();
        for chunk in data.chunks(13) {
            crc.update(chunk);
        }
        assert_eq!(crc.value(), checksum(&data));
    }
}
