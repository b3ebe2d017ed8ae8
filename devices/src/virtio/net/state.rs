//! virtio-net's own part of its snapshot record: the configuration space (MAC address and
//! link status). The restored device must have been built with the same MAC (the guest
//! has it); the acked offloads come back with the transport's acked features and are
//! applied to the tap when the device starts again, as on any activation.
//!
//! Frames are not saved. Receive buffers the device took but had not filled, and a frame
//! the tap could not take yet, are given back to the queues (their chains are taken again
//! after the restore: see `ActiveDevice::save_queues`); frames that were in the tap, or on
//! the wire, are lost, as a real network loses frames, and TCP resends them.

use snapshot::payload::{Decoder, Encoder};

use super::{CONFIG_LEN, Net};
use crate::state::StateError;
use crate::virtio::state::VirtioDeviceState;

const LOG_NAME: &str = "virtio-net";

/// What a virtio-net record holds beyond the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetState {
    /// The configuration space: MAC (6 bytes), status (`u16`).
    pub config: [u8; CONFIG_LEN],
}

impl NetState {
    pub(crate) fn encode(&self, enc: &mut Encoder) {
        enc.bytes(&self.config);
    }

    pub(crate) fn decode(dec: &mut Decoder<'_>) -> Result<Self, StateError> {
        Ok(NetState {
            config: dec.array::<CONFIG_LEN>()?,
        })
    }
}

impl Net {
    pub(super) fn save_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Net(NetState {
            config: self.config,
        })
    }

    pub(super) fn check_state(&self, saved: &VirtioDeviceState) -> Result<(), StateError> {
        let VirtioDeviceState::Net(saved) = saved else {
            return Err(StateError::invalid(
                LOG_NAME,
                "the saved state is another device's",
            ));
        };
        if saved.config != self.config {
            let mac = |c: &[u8; CONFIG_LEN]| {
                c.iter()
                    .take(6)
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            };
            return Err(StateError::invalid(
                LOG_NAME,
                format!(
                    "saved MAC {} and link status differ from this device's (MAC {})",
                    mac(&saved.config),
                    mac(&self.config)
                ),
            ));
        }
        Ok(())
    }

    /// The configuration was checked equal; the offloads come with the acked features.
    pub(super) fn apply_state(&mut self, _saved: VirtioDeviceState) {}
}
