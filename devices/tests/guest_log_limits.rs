//! Problems a guest can cause over and over do not flood the VMM's log: a driver that
//! re-initialises a device thousands of times with a queue the transport rejects, or with
//! a queue the worker finds malformed, gets the first few warnings and then one in a
//! thousand (`devices::virtio::log_limit`), never one per attempt.
//!
//! The test binary installs a logger that counts warnings by what they say; each test
//! counts a message only it causes, so the tests can run side by side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use devices::pci::PciDevice;
use devices::virtio::log_limit::{LOG_EVERY, LOG_FIRST};
use devices::virtio::pci_transport::COMMON_CONFIG_OFFSET;
use devices::virtio::{
    Rng, VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VirtioPciDevice,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Warnings seen so far whose text contains `"queue 0 rejected"`.
static REJECTED_WARNINGS: AtomicU64 = AtomicU64::new(0);
/// Warnings seen so far whose text contains `"invalid queue 0"`.
static INVALID_QUEUE_WARNINGS: AtomicU64 = AtomicU64::new(0);

struct CountingLogger;

impl log::Log for CountingLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        if text.contains("queue 0 rejected") {
            REJECTED_WARNINGS.fetch_add(1, Ordering::Relaxed);
        }
        if text.contains("invalid queue 0") {
            INVALID_QUEUE_WARNINGS.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

fn count_warnings() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CountingLogger).expect("the only logger of this test binary");
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// How often the guest below re-initialises its device.
const ATTEMPTS: u64 = 2000;

/// Warnings a limited log may hold after `problems` problems of one kind.
fn most_warnings(problems: u64) -> u64 {
    LOG_FIRST + problems / LOG_EVERY
}

const MEM_SIZE: usize = 1 << 20;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const QUEUE_SIZE: u64 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

// Common configuration registers (virtio 1.2, 4.1.4.3).
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const DEVICE_STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE_REG: u64 = 0x18;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// A guest driver poking the transport's common configuration directly.
struct Guest {
    mem: Arc<GuestMemoryMmap>,
    device: VirtioPciDevice,
}

impl Guest {
    fn new() -> Guest {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let mut device = VirtioPciDevice::new(Box::new(Rng::new().unwrap()), mem.clone()).unwrap();
        // Memory decoding on, as pci_enable_device does: the BAR answers only then.
        device.config_write(4, &[0x06, 0x00]);
        Guest { mem, device }
    }

    fn write(&mut self, register: u64, value: u64, len: usize) {
        self.device.bar_write(
            0,
            COMMON_CONFIG_OFFSET + register,
            &value.to_le_bytes()[..len],
        );
    }

    /// Reset, negotiate VERSION_1, set up queue 0 at `desc` (and the fixed rings), and set
    /// DRIVER_OK, which activates the device.
    fn initialise(&mut self, desc: u64) {
        self.write(DEVICE_STATUS, 0, 1);
        let ack_driver = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        self.write(DEVICE_STATUS, u64::from(ack_driver), 1);
        self.write(DRIVER_FEATURE_SELECT, 1, 4);
        self.write(DRIVER_FEATURE, 1, 4); // VIRTIO_F_VERSION_1, bit 32
        let features_ok = ack_driver | VIRTIO_CONFIG_S_FEATURES_OK;
        self.write(DEVICE_STATUS, u64::from(features_ok), 1);
        self.write(QUEUE_SELECT, 0, 2);
        self.write(QUEUE_SIZE_REG, QUEUE_SIZE, 2);
        self.write(QUEUE_DESC, desc, 8);
        self.write(QUEUE_DRIVER, AVAIL, 8);
        self.write(QUEUE_DEVICE, USED, 8);
        self.write(QUEUE_ENABLE, 1, 2);
        let driver_ok = features_ok | VIRTIO_CONFIG_S_DRIVER_OK;
        self.write(DEVICE_STATUS, u64::from(driver_ok), 1);
    }

    /// Descriptor 0 chained to itself, posted: a loop the device must refuse.
    fn post_a_descriptor_loop(&self) {
        let mut desc = [0u8; 16];
        desc[..8].copy_from_slice(&0x10000u64.to_le_bytes());
        desc[8..12].copy_from_slice(&16u32.to_le_bytes());
        desc[12..14].copy_from_slice(&(F_NEXT | F_WRITE).to_le_bytes());
        self.mem.write_obj(desc, GuestAddress(DESC)).unwrap();
        // avail: flags 0, idx 1, ring[0] = 0.
        self.mem
            .write_obj(0x0001_0000u32, GuestAddress(AVAIL))
            .unwrap();
        self.mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
    }

    fn needs_reset(&self) -> bool {
        self.device.device_status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }
}

#[test]
fn a_queue_rejected_at_every_activation_is_logged_a_bounded_number_of_times() {
    count_warnings();
    let mut guest = Guest::new();
    // A descriptor table beyond guest memory: every activation rejects the queue.
    let outside_memory = 1 << 40;

    for _ in 0..ATTEMPTS {
        guest.initialise(outside_memory);
    }

    let warnings = REJECTED_WARNINGS.load(Ordering::Relaxed);
    assert!(warnings >= 1, "the problem is never silent");
    assert!(
        warnings <= most_warnings(ATTEMPTS),
        "{warnings} warnings for {ATTEMPTS} rejected activations"
    );
}

#[test]
fn a_malformed_queue_at_every_activation_is_logged_a_bounded_number_of_times() {
    count_warnings();
    let mut guest = Guest::new();
    guest.post_a_descriptor_loop();
    let deadline = Instant::now() + Duration::from_secs(60);

    for attempt in 0..ATTEMPTS {
        guest.initialise(DESC);
        while !guest.needs_reset() {
            assert!(
                Instant::now() < deadline,
                "attempt {attempt}: the worker never reported the loop"
            );
            std::thread::yield_now();
        }
    }

    let warnings = INVALID_QUEUE_WARNINGS.load(Ordering::Relaxed);
    assert!(warnings >= 1, "the problem is never silent");
    assert!(
        warnings <= most_warnings(ATTEMPTS),
        "{warnings} warnings for {ATTEMPTS} malformed queues"
    );
}
