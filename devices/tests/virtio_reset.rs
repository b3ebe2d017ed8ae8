//! A device reset while the device's worker is in the middle of a request: the reset must
//! not complete (the device status must not read 0, the queues must not be forgotten)
//! until the worker has let go, or the worker would go on completing chains into rings
//! the driver already reuses. Driven through the modern virtio-pci transport's registers
//! as Linux's `vp_reset` drives them: write 0 to device_status, then read it until it is 0.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::pci::PciDevice;
use devices::virtio::pci_transport::{NOTIFY_OFFSET, VIRTIO_BAR};
use devices::virtio::worker::SingleQueueDevice;
use devices::virtio::{
    ActiveQueue, DeviceWorker, Interrupt, ServedQueue, VirtioDevice, VirtioPciDevice,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 1 << 20;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUF: u64 = 0x10000;
const QSIZE: u16 = 16;
/// Common configuration registers (virtio 1.2 section 4.1.4.3).
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const DEVICE_STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
const S_ACK: u8 = 1;
const S_DRIVER: u8 = 2;
const S_DRIVER_OK: u8 = 4;
const S_FEATURES_OK: u8 = 8;
const DRIVER_READY: u8 = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;

/// An rng-typed device whose worker, for each chain, reports that it took it and then
/// waits for the test's go-ahead before completing it: a request that takes as long as
/// the test wants.
struct GatedDevice {
    worker: DeviceWorker,
    taken: Sender<u16>,
    gate: Arc<Mutex<Receiver<()>>>,
}

struct ActiveGated {
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<dyn Interrupt>,
    requests: ServedQueue,
    taken: Sender<u16>,
    gate: Arc<Mutex<Receiver<()>>>,
}

impl SingleQueueDevice for ActiveGated {
    fn queue(&self) -> &ServedQueue {
        &self.requests
    }

    fn serve(&mut self) {
        let (taken, gate) = (&self.taken, &self.gate);
        self.requests
            .serve("gated", &self.mem, &*self.interrupt, |chain| {
                let _ = taken.send(chain.head);
                let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(30));
                0
            });
    }
}

impl VirtioDevice for GatedDevice {
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }
    fn features(&self) -> u64 {
        0
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn Interrupt>,
        mut queues: Vec<ActiveQueue>,
    ) -> Result<(), devices::virtio::ActivateError> {
        let queue = queues.remove(0);
        self.worker
            .activate(Box::new(ActiveGated {
                mem,
                interrupt,
                requests: ServedQueue::new(queue),
                taken: self.taken.clone(),
                gate: self.gate.clone(),
            }))
            .map_err(devices::virtio::ActivateError::Worker)
    }
    fn reset(&mut self) {
        self.worker.deactivate_for_reset();
    }
    fn quiesced(&self) -> bool {
        self.worker.idle()
    }
}

struct Rig {
    dev: VirtioPciDevice,
    mem: Arc<GuestMemoryMmap>,
    taken: Receiver<u16>,
    open: Sender<()>,
}

impl Rig {
    fn new() -> Rig {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let (taken_tx, taken) = channel();
        let (open, gate) = channel();
        let device = GatedDevice {
            worker: DeviceWorker::spawn("gated", || {}).unwrap(),
            taken: taken_tx,
            gate: Arc::new(Mutex::new(gate)),
        };
        let mut dev = VirtioPciDevice::new(Box::new(device), mem.clone()).unwrap();
        // Memory decoding on, as pci_enable_device does: the BAR answers only then.
        dev.config_write(4, &[0x06, 0x00]);
        Rig {
            dev,
            mem,
            taken,
            open,
        }
    }

    fn write(&mut self, offset: u64, value: u64, len: usize) {
        self.dev
            .bar_write(VIRTIO_BAR, offset, &value.to_le_bytes()[..len]);
    }

    fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.bar_read(VIRTIO_BAR, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn status(&mut self) -> u8 {
        self.read(DEVICE_STATUS, 1) as u8
    }

    /// Negotiates VERSION_1, sets up queue 0 on fresh (zeroed) rings, as Linux allocates
    /// them, and goes DRIVER_OK.
    fn drive_to_ready(&mut self) {
        for ring in [AVAIL, USED] {
            self.mem.write_obj(0u32, GuestAddress(ring)).unwrap();
        }
        self.write(DEVICE_STATUS, u64::from(S_ACK | S_DRIVER), 1);
        self.write(DRIVER_FEATURE_SELECT, 1, 4);
        self.write(DRIVER_FEATURE, 1, 4); // VIRTIO_F_VERSION_1 (bit 32)
        self.write(
            DEVICE_STATUS,
            u64::from(S_ACK | S_DRIVER | S_FEATURES_OK),
            1,
        );
        self.write(QUEUE_SELECT, 0, 2);
        self.write(QUEUE_SIZE, u64::from(QSIZE), 2);
        self.write(QUEUE_DESC, DESC, 8);
        self.write(QUEUE_DRIVER, AVAIL, 8);
        self.write(QUEUE_DEVICE, USED, 8);
        self.write(QUEUE_ENABLE, 1, 2);
        self.write(DEVICE_STATUS, u64::from(DRIVER_READY), 1);
        assert_eq!(self.status(), DRIVER_READY);
    }

    /// Posts a one-descriptor chain at head `head` and notifies queue 0.
    fn post(&mut self, head: u16, avail_idx: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&BUF.to_le_bytes());
        d[8..12].copy_from_slice(&64u32.to_le_bytes());
        d[12..14].copy_from_slice(&2u16.to_le_bytes()); // device-writable
        self.mem
            .write_obj(d, GuestAddress(DESC + 16 * u64::from(head)))
            .unwrap();
        let slot = u64::from((avail_idx - 1) % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        self.mem
            .write_obj(avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        self.write(NOTIFY_OFFSET, 0, 2);
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }
}

#[test]
fn a_reset_during_a_request_completes_only_once_the_worker_lets_go() {
    let mut rig = Rig::new();
    rig.drive_to_ready();
    rig.post(0, 1);
    assert_eq!(
        rig.taken.recv_timeout(Duration::from_secs(5)),
        Ok(0),
        "the worker took the chain"
    );

    // The driver resets while the worker is still in the request.
    rig.write(DEVICE_STATUS, 0, 1);
    assert_ne!(rig.status(), 0, "the reset cannot be done yet");
    // What the driver writes meanwhile does not reach the half-stopped device.
    rig.write(QUEUE_SELECT, 0, 2);
    rig.write(QUEUE_SIZE, 4, 2);
    assert_eq!(rig.read(QUEUE_SIZE, 2), u64::from(QSIZE));

    // The request ends; the worker lets go, and the next status read finds the reset done.
    rig.open.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.status() != 0 {
        assert!(Instant::now() < deadline, "the reset never completed");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        rig.used_idx(),
        1,
        "the chain completed before the reset did"
    );
    assert_eq!(rig.read(QUEUE_ENABLE, 2), 0, "the queue is forgotten");

    // And the device comes back as new.
    rig.drive_to_ready();
    rig.post(1, 1);
    assert_eq!(rig.taken.recv_timeout(Duration::from_secs(5)), Ok(1));
    rig.open.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.used_idx() != 1 {
        assert!(
            Instant::now() < deadline,
            "the second chain never completed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_reset_of_an_idle_device_completes_at_once() {
    let mut rig = Rig::new();
    rig.drive_to_ready();
    rig.write(DEVICE_STATUS, 0, 1);
    assert_eq!(rig.status(), 0);
}
