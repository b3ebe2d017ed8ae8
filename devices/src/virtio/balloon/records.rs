//! Reading what a driver put in a chain: the device-readable bytes as one stream, in
//! chunks through a buffer on the stack ([`stream_readable`]), cut into fixed-size records
//! whatever the descriptor boundaries ([`Records`]). Inflate chains (frame numbers) and
//! statistics buffers (tag and value entries) are both read this way, allocating nothing
//! however much the guest posts.

use vm_memory::{Address, Bytes, GuestMemoryMmap};

use crate::virtio::DescriptorChain;

/// Bytes of guest memory read at a time from a chain: 256 frame numbers, what Linux
/// puts in one inflate chain.
const READ_CHUNK: usize = 1024;
/// [`READ_CHUNK`] as the `u32` descriptor lengths are measured in.
const READ_CHUNK_U32: u32 = 1024;
const _: () = assert!(READ_CHUNK_U32 as usize == READ_CHUNK);

/// Feeds the chain's device-readable bytes, in order and as one stream, to `sink` in
/// chunks of at most [`READ_CHUNK`] until `sink` returns false. Reads through a buffer on
/// the stack: serving a chain allocates nothing, however much the guest posts. Returns
/// false if guest memory could not be read (the queue validated the buffers, so only a
/// bug gets there).
pub(super) fn stream_readable(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain,
    mut sink: impl FnMut(&[u8]) -> bool,
) -> bool {
    let mut chunk = [0u8; READ_CHUNK];
    for desc in chain.descriptors.iter().filter(|d| !d.writable) {
        let mut done: u32 = 0;
        while done < desc.len {
            // done < desc.len; at most READ_CHUNK, so the cast below is lossless.
            let want = desc.len.saturating_sub(done).min(READ_CHUNK_U32);
            let (Some(buf), Some(addr)) = (
                chunk.get_mut(..want as usize),
                desc.addr.checked_add(u64::from(done)),
            ) else {
                return false;
            };
            if mem.read_slice(buf, addr).is_err() {
                return false;
            }
            if !sink(buf) {
                return true;
            }
            // done + want <= desc.len: cannot saturate.
            done = done.saturating_add(want);
        }
    }
    true
}

/// Cuts a byte stream into `N`-byte records, whatever the chunk boundaries (a driver may
/// split an array across buffers anywhere).
pub(super) struct Records<const N: usize> {
    partial: [u8; N],
    filled: usize,
}

impl<const N: usize> Records<N> {
    pub(super) fn new() -> Records<N> {
        Records {
            partial: [0; N],
            filled: 0,
        }
    }

    /// Hands every record completed by `bytes` to `each`, until it returns false; keeps
    /// the bytes of a record not yet complete. Returns false if `each` did.
    pub(super) fn feed(&mut self, bytes: &[u8], mut each: impl FnMut([u8; N]) -> bool) -> bool {
        let mut bytes = bytes;
        if self.filled > 0 {
            // Complete the record begun in an earlier chunk first.
            // 0 < filled < N, so filled + take <= N.
            let take = N.saturating_sub(self.filled).min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            let end = self.filled.saturating_add(take);
            if let Some(dst) = self.partial.get_mut(self.filled..end) {
                dst.copy_from_slice(head);
            }
            self.filled = end;
            bytes = rest;
            if self.filled < N {
                return true;
            }
            self.filled = 0;
            if !each(self.partial) {
                return false;
            }
        }
        let records = bytes.chunks_exact(N);
        let rest = records.remainder();
        for record in records {
            if let Ok(record) = <[u8; N]>::try_from(record)
                && !each(record)
            {
                return false;
            }
        }
        self.partial[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
        true
    }

    /// Bytes of an incomplete record at the end of the stream.
    pub(super) fn leftover(&self) -> usize {
        self.filled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_cut_across_any_chunk_boundary() {
        let bytes: Vec<u8> = (0u8..23).collect();
        for split in 0..bytes.len() {
            let mut records = Records::<5>::new();
            let mut seen = Vec::new();
            let (a, b) = bytes.split_at(split);
            for chunk in [a, b, &[][..]] {
                assert!(records.feed(chunk, |r| {
                    seen.push(r);
                    true
                }));
            }
            assert_eq!(seen.len(), 4, "split at {split}");
            assert_eq!(seen.concat(), bytes[..20]);
            assert_eq!(records.leftover(), 3);
        }
    }

    #[test]
    fn records_stop_when_asked() {
        let mut records = Records::<2>::new();
        let mut seen = 0;
        assert!(!records.feed(&[0; 10], |_| {
            seen += 1;
            seen < 3
        }));
        assert_eq!(seen, 3);
    }
}
