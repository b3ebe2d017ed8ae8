//! The common configuration structure of the virtio-pci transport.
//!
//! This module owns the driver-visible registers of virtio 1.2 section
//! 4.1.4.3 (feature windows, device status, queue selection and per-queue
//! setup) and the rules for changing them: feature writes only between
//! DRIVER and FEATURES_OK, FEATURES_OK only sticks for an acceptable feature
//! set, status bits only ever get added (0 resets), queue setup only while
//! the queue is disabled and the device not live, DRIVER_OK activates.

use super::super::{
    TRANSPORT_FEATURES, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use super::{Interrupt, PciInterrupt, VirtioPciDevice};

const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
/// Bytes of the structure (without the 1.2 notify-data/reset fields, whose
/// features we do not offer).
const COMMON_CONFIG_LEN: usize = 0x38;

/// Driver-written transport state; zeroed by reset.
#[derive(Debug, Default, Clone)]
pub(super) struct CommonConfig {
    pub(super) device_feature_select: u32,
    pub(super) driver_feature_select: u32,
    pub(super) driver_features: u64,
    pub(super) status: u8,
    pub(super) config_generation: u8,
    pub(super) queue_select: u16,
    pub(super) activated: bool,
}

impl CommonConfig {
    /// Status as read by the driver, with NEEDS_RESET if the device hit an
    /// error.
    pub(super) fn status(&self, interrupt: &PciInterrupt) -> u8 {
        if interrupt.needs_reset() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }
}

/// Which half of a 64-bit queue address register an access hits.
fn split_u64(current: u64, reg_offset: u64, data: &[u8]) -> Option<u64> {
    match (reg_offset, data.len()) {
        (0, 8) => Some(le(data)),
        (0, 4) => Some((current & !0xffff_ffff) | le(data)),
        (4, 4) => Some((current & 0xffff_ffff) | (le(data) << 32)),
        _ => None,
    }
}

/// Little-endian value of up to 8 bytes.
fn le(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    for (dst, src) in bytes.iter_mut().zip(data) {
        *dst = *src;
    }
    u64::from_le_bytes(bytes)
}

/// The low 32 bits of `v`: a 32-bit register's value, or one half of a
/// 64-bit one. Deliberately drops the rest, bit for bit.
fn low_u32(v: u64) -> u32 {
    let [b0, b1, b2, b3, ..] = v.to_le_bytes();
    u32::from_le_bytes([b0, b1, b2, b3])
}

/// The low 16 bits of `v` (the value of a 16-bit register access).
fn low_u16(v: u64) -> u16 {
    let [b0, b1, ..] = v.to_le_bytes();
    u16::from_le_bytes([b0, b1])
}

/// The low byte of `v` (the value of an 8-bit register access).
fn low_u8(v: u64) -> u8 {
    let [b0, ..] = v.to_le_bytes();
    b0
}

impl VirtioPciDevice {
    pub(super) fn offered_features(&self) -> u64 {
        self.device.features() | TRANSPORT_FEATURES
    }

    /// Builds the register image and copies out the requested bytes, so any
    /// width at any offset reads consistently and without side effects.
    pub(super) fn common_read(&self, offset: u64, data: &mut [u8]) {
        let mut image = [0u8; COMMON_CONFIG_LEN];
        let c = &self.common;
        let mut put = |at: u64, bytes: &[u8]| {
            let dst = usize::try_from(at)
                .ok()
                .and_then(|at| image.get_mut(at..at.checked_add(bytes.len())?));
            if let Some(dst) = dst {
                dst.copy_from_slice(bytes);
            }
        };
        let features = self.offered_features();
        let window = match c.device_feature_select {
            0 => low_u32(features),
            1 => low_u32(features >> 32),
            _ => 0,
        };
        let driver_window = match c.driver_feature_select {
            0 => low_u32(c.driver_features),
            1 => low_u32(c.driver_features >> 32),
            _ => 0,
        };
        put(
            DEVICE_FEATURE_SELECT,
            &c.device_feature_select.to_le_bytes(),
        );
        put(DEVICE_FEATURE, &window.to_le_bytes());
        put(
            DRIVER_FEATURE_SELECT,
            &c.driver_feature_select.to_le_bytes(),
        );
        put(DRIVER_FEATURE, &driver_window.to_le_bytes());
        put(
            CONFIG_MSIX_VECTOR,
            &self.interrupt.config_vector().to_le_bytes(),
        );
        // Queue count is bounded by the vector table size at construction, so
        // the conversion cannot fail.
        let num_queues = u16::try_from(self.queues.len()).unwrap_or(u16::MAX);
        put(NUM_QUEUES, &num_queues.to_le_bytes());
        put(DEVICE_STATUS, &[self.device_status()]);
        put(CONFIG_GENERATION, &[c.config_generation]);
        put(QUEUE_SELECT, &c.queue_select.to_le_bytes());
        let index = usize::from(c.queue_select);
        if let Some(q) = self.queues.get(index) {
            put(QUEUE_SIZE, &q.size.to_le_bytes());
            put(
                QUEUE_MSIX_VECTOR,
                &self.interrupt.queue_vector(index).to_le_bytes(),
            );
            put(QUEUE_ENABLE, &u16::from(q.ready).to_le_bytes());
            put(QUEUE_NOTIFY_OFF, &c.queue_select.to_le_bytes());
            put(QUEUE_DESC, &q.desc_table.to_le_bytes());
            put(QUEUE_DRIVER, &q.avail_ring.to_le_bytes());
            put(QUEUE_DEVICE, &q.used_ring.to_le_bytes());
        }
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| image.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Applies a driver write; accesses that are not one whole field (or a
    /// 32-bit half of a 64-bit field) are ignored.
    pub(super) fn common_write(&mut self, offset: u64, data: &[u8]) {
        // Each arm below matches the access width, so `low_*` of `value`
        // is exactly the bytes written.
        let value = le(data);
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.common.device_feature_select = low_u32(value),
            (DRIVER_FEATURE_SELECT, 4) => self.common.driver_feature_select = low_u32(value),
            (DRIVER_FEATURE, 4) => self.write_driver_features(low_u32(value)),
            (CONFIG_MSIX_VECTOR, 2) => {
                self.interrupt.set_config_vector(low_u16(value));
            }
            (DEVICE_STATUS, 1) => self.write_status(low_u8(value)),
            (QUEUE_SELECT, 2) => self.common.queue_select = low_u16(value),
            (QUEUE_MSIX_VECTOR, 2) => {
                let index = usize::from(self.common.queue_select);
                if index < self.queues.len() {
                    self.interrupt.set_queue_vector(index, low_u16(value));
                }
            }
            (QUEUE_SIZE, 2) | (QUEUE_ENABLE, 2) => self.write_queue_setup(offset, low_u16(value)),
            (o, _) if (QUEUE_DESC..QUEUE_DEVICE + 8).contains(&o) => {
                self.write_queue_address(o, data)
            }
            _ => log::debug!(
                "virtio-pci: ignored common config write at {offset:#x} len {}",
                data.len()
            ),
        }
    }

    fn write_driver_features(&mut self, window: u32) {
        let c = &mut self.common;
        // Features may only change between DRIVER and FEATURES_OK.
        if c.status & VIRTIO_CONFIG_S_DRIVER == 0 || c.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            log::debug!(
                "virtio-pci: driver features written in status {:#x}",
                c.status
            );
            return;
        }
        let window = u64::from(window);
        match c.driver_feature_select {
            0 => c.driver_features = (c.driver_features & !0xffff_ffff) | window,
            1 => c.driver_features = (c.driver_features & 0xffff_ffff) | (window << 32),
            _ => {}
        }
    }

    /// The selected queue, if it may still be configured.
    fn configurable_queue(&mut self) -> Option<&mut super::Queue> {
        if self.common.activated {
            return None;
        }
        self.queues
            .get_mut(usize::from(self.common.queue_select))
            .filter(|q| !q.ready)
    }

    fn write_queue_setup(&mut self, offset: u64, value: u16) {
        let Some(q) = self.configurable_queue() else {
            return;
        };
        match offset {
            // Validated against max size and power of two at activation.
            QUEUE_SIZE => q.size = value,
            // Writing 0 is forbidden to the driver (4.1.4.3.2); only 1 counts.
            _ if value == 1 => q.ready = true,
            _ => {}
        }
    }

    fn write_queue_address(&mut self, offset: u64, data: &[u8]) {
        let Some(q) = self.configurable_queue() else {
            return;
        };
        let (field, base) = match offset {
            o if o < QUEUE_DRIVER => (&mut q.desc_table, QUEUE_DESC),
            o if o < QUEUE_DEVICE => (&mut q.avail_ring, QUEUE_DRIVER),
            _ => (&mut q.used_ring, QUEUE_DEVICE),
        };
        // `offset >= base` by the match above.
        if let Some(v) = offset
            .checked_sub(base)
            .and_then(|reg_offset| split_u64(*field, reg_offset, data))
        {
            *field = v;
        }
    }

    /// The device status state machine (virtio 1.2 sections 2.1, 3.1.1).
    fn write_status(&mut self, new: u8) {
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.common.status;
        if old & !new != 0 {
            log::debug!("virtio-pci: driver tried to clear status bits {old:#x} -> {new:#x}");
            return;
        }
        let added = new & !old;
        let mut status = new;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            // Left clear so the driver's read-back sees the refusal.
            status &= !VIRTIO_CONFIG_S_FEATURES_OK;
        } else if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            self.device.ack_features(self.common.driver_features);
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                status &= !VIRTIO_CONFIG_S_DRIVER_OK;
            } else if !self.common.activated {
                self.common.activated = true;
                if !self.activate() {
                    self.interrupt.set_needs_reset();
                }
            }
        }
        self.common.status = status;
    }

    fn features_acceptable(&self) -> bool {
        let f = self.common.driver_features;
        f & !self.offered_features() == 0 && f & (1 << VIRTIO_F_VERSION_1) != 0
    }
}
