//! virtio-blk's own part of its snapshot record: the configuration space the guest read
//! (capacity, size and segment limits, block size). The disk is the host's: the restore
//! reopens the same image, and a configuration that differs (a resized disk, another
//! block size) is refused rather than shown to a guest that cached the old one. Nothing is
//! in flight: the pause waits for the request being served, and requests the driver posted
//! since are still in the available ring, served after the restore.

use snapshot::payload::{Decoder, Encoder};

use super::{Block, CONFIG_LEN};
use crate::state::StateError;
use crate::virtio::state::VirtioDeviceState;

const LOG_NAME: &str = "virtio-blk";

/// The capacity field (sectors) of a configuration space.
fn capacity(config: &[u8; CONFIG_LEN]) -> u64 {
    let mut bytes = [0u8; 8];
    for (dst, src) in bytes.iter_mut().zip(config) {
        *dst = *src;
    }
    u64::from_le_bytes(bytes)
}

/// What a virtio-blk record holds beyond the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockState {
    /// The configuration space, as the guest reads it.
    pub config: [u8; CONFIG_LEN],
}

impl BlockState {
    pub(crate) fn encode(&self, enc: &mut Encoder) {
        enc.bytes(&self.config);
    }

    pub(crate) fn decode(dec: &mut Decoder<'_>) -> Result<Self, StateError> {
        Ok(BlockState {
            config: dec.array::<CONFIG_LEN>()?,
        })
    }
}

impl Block {
    pub(super) fn save_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Block(BlockState {
            config: self.config,
        })
    }

    pub(super) fn check_state(&self, saved: &VirtioDeviceState) -> Result<(), StateError> {
        let VirtioDeviceState::Block(saved) = saved else {
            return Err(StateError::invalid(
                LOG_NAME,
                "the saved state is another device's",
            ));
        };
        if saved.config != self.config {
            return Err(StateError::invalid(
                LOG_NAME,
                format!(
                    "saved configuration (capacity {} sectors) differs from this disk's (capacity {} sectors)",
                    capacity(&saved.config),
                    capacity(&self.config)
                ),
            ));
        }
        Ok(())
    }

    /// The configuration was checked equal; the acked features come from the transport.
    pub(super) fn apply_state(&mut self, _saved: VirtioDeviceState) {}
}
