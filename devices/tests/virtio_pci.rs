//! virtio-rng behind the modern virtio-pci transport, driven by a test
//! driver that follows Linux's virtio_pci_modern step by step through the
//! port-I/O (config mechanism #1) and MMIO buses, plus the malicious-guest
//! cases: every bad chain must end in NEEDS_RESET or a failed request, never
//! in a panic or a hang. Also the queue status the VMM reads through the
//! transport, as an operator would use it on a stalled queue.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::pci::{BarAllocator, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, PciDevice, PciRoot};
use devices::virtio::{QueueSnapshot, Rng, VirtioPciDevice};
use devices::{Bus, pci};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const SLOT: u32 = 1;
const MEM_SIZE: usize = 1 << 20;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUF: u64 = 0x10000;
const INDIRECT: u64 = 0x8000;
const QSIZE: u16 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const S_ACK: u8 = 1;
const S_DRIVER: u8 = 2;
const S_DRIVER_OK: u8 = 4;
const S_FEATURES_OK: u8 = 8;
const S_NEEDS_RESET: u8 = 0x40;
const FEATURES: u64 = 1 << 32 | 1 << 29 | 1 << 28;

/// What the driver learned from the capabilities.
#[derive(Default, Debug)]
struct Layout {
    common: u64,
    notify: u64,
    notify_mult: u32,
    isr: u64,
    device: u64,
    msix_cap: u8,
    msix_table: u64,
}

struct Driver {
    io: Bus,
    mmio: Bus,
    mem: Arc<GuestMemoryMmap>,
    dev: Arc<Mutex<VirtioPciDevice>>,
    l: Layout,
    avail_idx: u16,
}

impl Driver {
    fn new() -> Driver {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let dev = Arc::new(Mutex::new(
            VirtioPciDevice::new(Box::new(Rng::new().unwrap()), mem.clone()).unwrap(),
        ));
        let mut root = PciRoot::new();
        let dyn_dev: Arc<Mutex<dyn PciDevice>> = dev.clone();
        root.add_device(dyn_dev.clone()).unwrap();
        let io = Bus::new();
        io.insert(
            Arc::new(Mutex::new(root)),
            PCI_CONFIG_IO_BASE,
            PCI_CONFIG_IO_LEN,
        )
        .unwrap();
        let mmio = Bus::new();
        for bar in pci::allocate_bars(&dyn_dev, &mut BarAllocator::default()).unwrap() {
            mmio.insert(bar.bus_device, bar.base, bar.size).unwrap();
        }
        Driver {
            io,
            mmio,
            mem,
            dev,
            l: Layout::default(),
            avail_idx: 0,
        }
    }

    fn cfg_read(&self, reg: u8, len: usize) -> u32 {
        let addr = 0x8000_0000 | SLOT << 11 | u32::from(reg & 0xfc);
        self.io.write(0xcf8, &addr.to_le_bytes());
        let mut b = [0u8; 4];
        self.io.read(0xcfc + u64::from(reg & 3), &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn cfg_write(&self, reg: u8, value: u32, len: usize) {
        let addr = 0x8000_0000 | SLOT << 11 | u32::from(reg & 0xfc);
        self.io.write(0xcf8, &addr.to_le_bytes());
        self.io
            .write(0xcfc + u64::from(reg & 3), &value.to_le_bytes()[..len]);
    }

    fn rd(&self, addr: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        assert!(self.mmio.read(addr, &mut b[..len]), "MMIO read {addr:#x}");
        u64::from_le_bytes(b)
    }

    fn wr(&self, addr: u64, value: u64, len: usize) {
        assert!(
            self.mmio.write(addr, &value.to_le_bytes()[..len]),
            "MMIO write {addr:#x}"
        );
    }

    fn bar_address(&self, bir: u8) -> u64 {
        let reg = 0x10 + 4 * bir;
        let lo = u64::from(self.cfg_read(reg, 4) & !0xf);
        let hi = u64::from(self.cfg_read(reg + 4, 4));
        hi << 32 | lo
    }

    /// vp_modern_probe: identify, walk the capability list, map regions.
    fn probe(&mut self) {
        assert_eq!(self.cfg_read(0, 2), 0x1af4);
        assert_eq!(self.cfg_read(2, 2), 0x1044);
        assert_eq!(self.cfg_read(8, 1), 1, "revision 1");
        assert!(self.cfg_read(0x2e, 2) >= 0x40, "subsystem id");
        // Memory space and bus master, as pci_enable_device does.
        self.cfg_write(4, 0x6, 2);
        let mut ptr = self.cfg_read(0x34, 1) as u8;
        let mut seen = 0;
        while ptr != 0 {
            seen += 1;
            assert!(seen < 48, "capability loop");
            match self.cfg_read(ptr, 1) as u8 {
                0x09 => self.virtio_cap(ptr),
                0x11 => {
                    self.l.msix_cap = ptr;
                    let table = self.cfg_read(ptr + 4, 4);
                    self.l.msix_table = self.bar_address((table & 7) as u8) + u64::from(table & !7);
                }
                id => panic!("unexpected capability {id:#x}"),
            }
            ptr = self.cfg_read(ptr + 1, 1) as u8;
        }
        assert!(self.l.common != 0 && self.l.notify != 0 && self.l.isr != 0);
        assert!(self.l.msix_cap != 0 && self.l.device != 0);
    }

    fn virtio_cap(&mut self, ptr: u8) {
        let cfg_type = self.cfg_read(ptr + 3, 1);
        let bar = self.bar_address(self.cfg_read(ptr + 4, 1) as u8);
        let offset = u64::from(self.cfg_read(ptr + 8, 4));
        let base = bar + offset;
        match cfg_type {
            1 => self.l.common = base,
            2 => {
                self.l.notify = base;
                self.l.notify_mult = self.cfg_read(ptr + 16, 4);
            }
            3 => self.l.isr = base,
            4 => self.l.device = base,
            _ => {}
        }
    }

    fn status(&self) -> u8 {
        self.rd(self.l.common + 0x14, 1) as u8
    }

    fn set_status(&self, s: u8) {
        self.wr(self.l.common + 0x14, u64::from(s), 1);
    }

    fn msix_entry(&self, vector: u64, data: u32, masked: bool) {
        let e = self.l.msix_table + 16 * vector;
        self.wr(e, 0xfee0_0000, 4);
        self.wr(e + 4, 0, 4);
        self.wr(e + 8, u64::from(data), 4);
        self.wr(e + 12, u64::from(masked), 4);
    }

    /// Reset, negotiate, set up queue 0 with `qsize` and go DRIVER_OK.
    fn init(&mut self, qsize: u16, features: u64) {
        let c = self.l.common;
        self.set_status(0);
        assert_eq!(self.status(), 0);
        self.set_status(S_ACK);
        self.set_status(S_ACK | S_DRIVER);
        self.wr(c, 0, 4);
        let lo = self.rd(c + 4, 4);
        self.wr(c, 1, 4);
        let hi = self.rd(c + 4, 4);
        let offered = hi << 32 | lo;
        assert_eq!(offered & FEATURES, FEATURES, "offered {offered:#x}");
        self.wr(c + 8, 0, 4);
        self.wr(c + 0xc, features & 0xffff_ffff, 4);
        self.wr(c + 8, 1, 4);
        self.wr(c + 0xc, features >> 32, 4);
        self.set_status(S_ACK | S_DRIVER | S_FEATURES_OK);
        assert_ne!(self.status() & S_FEATURES_OK, 0, "FEATURES_OK refused");
        // MSI-X: config -> vector 0, queue 0 -> vector 1.
        self.msix_entry(0, 0x20, false);
        self.msix_entry(1, 0x21, false);
        let ctl = self.cfg_read(self.l.msix_cap + 2, 2);
        self.cfg_write(self.l.msix_cap + 2, ctl | 0x8000, 2);
        self.wr(c + 0x10, 0, 2);
        assert_eq!(self.rd(c + 0x10, 2), 0);
        assert_eq!(self.rd(c + 0x12, 2), 1, "num_queues");
        self.wr(c + 0x16, 0, 2);
        assert_eq!(self.rd(c + 0x18, 2), 256, "max queue size");
        self.wr(c + 0x18, u64::from(qsize), 2);
        self.wr(c + 0x1a, 1, 2);
        assert_eq!(self.rd(c + 0x1a, 2), 1);
        // Fresh rings, as vring_create_virtqueue allocates zeroed ones.
        self.avail_idx = 0;
        for addr in [AVAIL, USED] {
            self.mem.write_obj(0u32, GuestAddress(addr)).unwrap();
        }
        // Linux writes 64-bit addresses as two 32-bit halves.
        for (off, addr) in [(0x20, DESC), (0x28, AVAIL), (0x30, USED)] {
            self.wr(c + off, addr & 0xffff_ffff, 4);
            self.wr(c + off + 4, addr >> 32, 4);
        }
        self.wr(c + 0x1c, 1, 2);
        self.set_status(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    }

    fn notify_addr(&self) -> u64 {
        let notify_off = self.rd(self.l.common + 0x1e, 2);
        self.l.notify + notify_off * u64::from(self.l.notify_mult)
    }

    fn write_desc(&self, table: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write_obj(d, GuestAddress(table + 16 * i)).unwrap();
    }

    /// Makes chain `head` available and notifies queue 0.
    fn post(&mut self, head: u16, qsize: u16) {
        self.publish(head, qsize);
        self.kick();
    }

    /// Makes chain `head` available without notifying.
    fn publish(&mut self, head: u16, qsize: u16) {
        let slot = u64::from(self.avail_idx % qsize);
        self.mem
            .write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    /// Notifies queue 0 through its notify address.
    fn kick(&self) {
        self.wr(self.notify_addr(), 0, 2);
    }

    /// Queue 0's status as the VMM's control thread reads it.
    fn queue_status(&self) -> QueueSnapshot {
        let statuses = self.dev.lock().unwrap().queue_statuses();
        assert_eq!(statuses.len(), 1, "one status per queue");
        statuses[0].snapshot(&self.mem)
    }

    /// Waits up to 5 s until queue 0's status satisfies `cond`; returns it.
    fn wait_status(
        &self,
        what: &str,
        mut cond: impl FnMut(&QueueSnapshot) -> bool,
    ) -> QueueSnapshot {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.queue_status();
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    fn used_elem(&self, i: u64) -> (u32, u32) {
        let id = self.mem.read_obj(GuestAddress(USED + 4 + 8 * i)).unwrap();
        let len = self.mem.read_obj(GuestAddress(USED + 8 + 8 * i)).unwrap();
        (id, len)
    }

    fn vector_fired(&self, vector: u16) -> bool {
        let msix = self.dev.lock().unwrap().msix();
        let guard = msix.lock().unwrap();
        guard.eventfd(vector).unwrap().read().is_ok()
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn ready_driver() -> Driver {
    let mut d = Driver::new();
    d.probe();
    d.init(QSIZE, FEATURES);
    d
}

#[test]
fn linux_style_driver_gets_64_random_bytes_and_an_msix_interrupt() {
    let mut d = ready_driver();
    assert_eq!(d.status(), S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    d.write_desc(DESC, 0, BUF, 64, F_WRITE, 0);
    d.post(0, QSIZE);
    wait_for("used entry", || d.used_idx() == 1);
    assert_eq!(d.used_elem(0), (0, 64));
    let mut bytes = [0u8; 64];
    d.mem.read_slice(&mut bytes, GuestAddress(BUF)).unwrap();
    assert_ne!(bytes, [0u8; 64], "buffer was not filled");
    wait_for("MSI-X vector 1", || d.vector_fired(1));
}

#[test]
fn vmm_api_reports_notify_address_and_msi_message_the_guest_programmed() {
    let d = ready_driver();
    // Read through the bus before taking the device lock the bus also takes.
    let notify_addr = d.notify_addr();
    let dev = d.dev.lock().unwrap();
    let notifiers = dev.queue_notifiers().unwrap().unwrap();
    assert_eq!(notifiers.len(), 1);
    assert_eq!(notifiers[0].addr, notify_addr);
    let msix = dev.msix();
    let msix = msix.lock().unwrap();
    let msg = msix.message(1).unwrap();
    assert_eq!((msg.address, msg.data), (0xfee0_0000, 0x21));
    assert!(msix.enabled() && !msix.masked(1));
}

#[test]
fn ioeventfd_notification_without_an_mmio_exit_is_served() {
    let mut d = ready_driver();
    d.write_desc(DESC, 0, BUF, 32, F_WRITE, 0);
    d.mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
    d.mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    d.avail_idx = 1;
    let notifiers = d.dev.lock().unwrap().queue_notifiers().unwrap().unwrap();
    notifiers[0].eventfd.write(1).unwrap();
    wait_for("used entry", || d.used_idx() == 1);
    assert_eq!(d.used_elem(0), (0, 32));
}

#[test]
fn features_ok_is_refused_without_version_1() {
    let mut d = Driver::new();
    d.probe();
    let c = d.l.common;
    d.set_status(S_ACK | S_DRIVER);
    d.wr(c + 8, 0, 4);
    d.wr(c + 0xc, 1 << 29, 4);
    d.set_status(S_ACK | S_DRIVER | S_FEATURES_OK);
    assert_eq!(d.status() & S_FEATURES_OK, 0);
    // DRIVER_OK without FEATURES_OK does not start the device either.
    d.set_status(S_ACK | S_DRIVER | S_DRIVER_OK);
    assert_eq!(d.status() & S_DRIVER_OK, 0);
}

#[test]
fn reset_stops_the_device_and_clears_queue_state() {
    let mut d = ready_driver();
    d.set_status(0);
    assert_eq!(d.status(), 0);
    let c = d.l.common;
    d.wr(c + 0x16, 0, 2);
    assert_eq!(d.rd(c + 0x1c, 2), 0, "queue disabled after reset");
    assert_eq!(d.rd(c + 0x20, 8), 0, "queue address cleared");
    assert_eq!(d.rd(c + 0x1a, 2), 0xffff, "vector cleared");
    // A buffer posted to the old queue is not served any more.
    d.write_desc(DESC, 0, BUF, 64, F_WRITE, 0);
    d.post(0, QSIZE);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.used_idx(), 0);
    // And the device comes back after re-initialisation.
    d.init(QSIZE, FEATURES);
    d.write_desc(DESC, 0, BUF, 16, F_WRITE, 0);
    d.post(0, QSIZE);
    wait_for("used entry after reset", || d.used_idx() == 1);
}

#[test]
fn intx_fallback_sets_isr_when_msix_is_disabled() {
    let mut d = ready_driver();
    let ctl = d.cfg_read(d.l.msix_cap + 2, 2);
    d.cfg_write(d.l.msix_cap + 2, ctl & !0x8000, 2);
    d.write_desc(DESC, 0, BUF, 8, F_WRITE, 0);
    d.post(0, QSIZE);
    wait_for("used entry", || d.used_idx() == 1);
    let interrupt = d.dev.lock().unwrap().interrupt();
    wait_for("INTx", || interrupt.intx_eventfd().read().is_ok());
    assert_eq!(d.rd(d.l.isr, 1), 1, "ISR queue bit");
    assert_eq!(d.rd(d.l.isr, 1), 0, "ISR clears on read");
}

#[test]
fn intx_is_raised_again_after_the_guests_eoi_while_the_isr_is_unread() {
    let mut d = ready_driver();
    let ctl = d.cfg_read(d.l.msix_cap + 2, 2);
    d.cfg_write(d.l.msix_cap + 2, ctl & !0x8000, 2);
    d.write_desc(DESC, 0, BUF, 8, F_WRITE, 0);
    d.post(0, QSIZE);
    let interrupt = d.dev.lock().unwrap().interrupt();
    wait_for("INTx", || interrupt.intx_eventfd().read().is_ok());
    // The guest EOIs without having read the ISR (its handler ran for another device on
    // the shared line): KVM lowers the line and signals the resample eventfd.
    interrupt.intx_resample_eventfd().write(1).unwrap();
    interrupt.intx_resample();
    assert_eq!(
        interrupt.intx_eventfd().read().ok(),
        Some(1),
        "raised again"
    );
    // Once the driver has read the ISR, an EOI leaves the line down.
    assert_eq!(d.rd(d.l.isr, 1), 1);
    interrupt.intx_resample();
    assert!(
        interrupt.intx_eventfd().read().is_err(),
        "the line stays down"
    );
}

#[test]
fn intx_disable_holds_the_line_down_until_cleared() {
    let mut d = ready_driver();
    let ctl = d.cfg_read(d.l.msix_cap + 2, 2);
    d.cfg_write(d.l.msix_cap + 2, ctl & !0x8000, 2);
    // COMMAND: memory space, bus master and INTx disable (bit 10).
    d.cfg_write(4, 0x406, 2);
    d.write_desc(DESC, 0, BUF, 8, F_WRITE, 0);
    d.post(0, QSIZE);
    wait_for("used entry", || d.used_idx() == 1);
    let interrupt = d.dev.lock().unwrap().interrupt();
    std::thread::sleep(Duration::from_millis(20));
    assert!(interrupt.intx_eventfd().read().is_err(), "held down");
    d.cfg_write(4, 0x6, 2);
    assert_eq!(
        interrupt.intx_eventfd().read().ok(),
        Some(1),
        "raised once enabled"
    );
    assert_eq!(d.rd(d.l.isr, 1), 1, "ISR queue bit");
}

#[test]
fn the_interrupt_line_register_names_the_wired_input() {
    let d = ready_driver();
    d.dev.lock().unwrap().set_interrupt_line(17);
    assert_eq!(d.cfg_read(0x3c, 1), 17);
    assert_eq!(d.cfg_read(0x3d, 1), 1, "INTA#");
}

#[test]
fn masked_vector_is_held_pending_until_unmasked() {
    let mut d = ready_driver();
    d.msix_entry(1, 0x21, true);
    d.write_desc(DESC, 0, BUF, 8, F_WRITE, 0);
    d.post(0, QSIZE);
    wait_for("used entry", || d.used_idx() == 1);
    let pba = d.l.msix_table + 0x2000;
    wait_for("pending bit", || d.rd(pba, 8) & 2 != 0);
    assert!(!d.vector_fired(1));
    d.wr(d.l.msix_table + 16 + 12, 0, 4);
    assert!(d.vector_fired(1), "delivered on unmask");
    assert_eq!(d.rd(pba, 8), 0);
}

#[test]
fn odd_sized_and_out_of_range_bar_accesses_are_harmless() {
    let d = ready_driver();
    let bar = d.bar_address(0);
    for off in [
        0u64, 1, 3, 0x13, 0x37, 0x1001, 0x2fff, 0x3fff, 0x5fff, 0x7ffd,
    ] {
        for len in [1usize, 2, 3, 4, 8] {
            let mut b = vec![0u8; len];
            d.mmio.read(bar + off, &mut b);
            d.mmio.write(bar + off + 0x3800, &b);
        }
    }
    assert_eq!(d.status(), S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

/// Posts chain `head` after `setup` wrote the descriptors, then expects the
/// device to flag NEEDS_RESET and raise the config vector (0).
fn expect_needs_reset(setup: impl FnOnce(&mut Driver)) {
    let mut d = ready_driver();
    setup(&mut d);
    d.post(0, QSIZE);
    wait_for("NEEDS_RESET", || d.status() & S_NEEDS_RESET != 0);
    wait_for("config vector", || d.vector_fired(0));
    assert_eq!(d.used_idx(), 0);
    // The device survives: a reset and a fresh start serve requests again.
    d.init(QSIZE, FEATURES);
    assert_eq!(d.status() & S_NEEDS_RESET, 0);
    d.write_desc(DESC, 0, BUF, 8, F_WRITE, 0);
    d.post(0, QSIZE);
    wait_for("used entry after recovery", || d.used_idx() == 1);
}

#[test]
fn descriptor_loop_needs_reset() {
    expect_needs_reset(|d| {
        d.write_desc(DESC, 0, BUF, 8, F_WRITE | F_NEXT, 1);
        d.write_desc(DESC, 1, BUF, 8, F_WRITE | F_NEXT, 0);
    });
}

#[test]
fn next_index_outside_the_table_needs_reset() {
    expect_needs_reset(|d| d.write_desc(DESC, 0, BUF, 8, F_WRITE | F_NEXT, QSIZE));
}

#[test]
fn buffer_outside_guest_memory_needs_reset() {
    expect_needs_reset(|d| d.write_desc(DESC, 0, MEM_SIZE as u64 - 8, 64, F_WRITE, 0));
}

#[test]
fn buffer_whose_end_wraps_the_address_space_needs_reset() {
    expect_needs_reset(|d| d.write_desc(DESC, 0, u64::MAX - 0xff, 0x1000, F_WRITE, 0));
}

#[test]
fn readable_after_writable_needs_reset() {
    expect_needs_reset(|d| {
        d.write_desc(DESC, 0, BUF, 8, F_WRITE | F_NEXT, 1);
        d.write_desc(DESC, 1, BUF, 8, 0, 0);
    });
}

#[test]
fn indirect_table_with_bad_length_needs_reset() {
    expect_needs_reset(|d| d.write_desc(DESC, 0, INDIRECT, 24, F_INDIRECT, 0));
}

#[test]
fn nested_indirect_table_needs_reset() {
    expect_needs_reset(|d| {
        d.write_desc(DESC, 0, INDIRECT, 32, F_INDIRECT, 0);
        d.write_desc(INDIRECT, 0, INDIRECT + 0x100, 16, F_INDIRECT, 0);
    });
}

#[test]
fn indirect_table_outside_memory_needs_reset() {
    expect_needs_reset(|d| d.write_desc(DESC, 0, MEM_SIZE as u64 - 16, 64, F_INDIRECT, 0));
}

#[test]
fn loop_inside_indirect_table_needs_reset() {
    expect_needs_reset(|d| {
        d.write_desc(DESC, 0, INDIRECT, 32, F_INDIRECT, 0);
        d.write_desc(INDIRECT, 0, BUF, 8, F_WRITE | F_NEXT, 1);
        d.write_desc(INDIRECT, 1, BUF, 8, F_WRITE | F_NEXT, 0);
    });
}

#[test]
fn avail_index_more_than_a_ring_ahead_needs_reset() {
    expect_needs_reset(|d| {
        d.write_desc(DESC, 0, BUF, 8, F_WRITE, 0);
        // post() publishes one more than this: a ring and 8 ahead.
        d.avail_idx = QSIZE + 7;
    });
}

#[test]
fn valid_indirect_chain_is_served() {
    let mut d = ready_driver();
    d.write_desc(DESC, 0, INDIRECT, 32, F_INDIRECT, 0);
    d.write_desc(INDIRECT, 0, BUF, 16, F_WRITE | F_NEXT, 1);
    d.write_desc(INDIRECT, 1, BUF + 0x100, 16, F_WRITE, 0);
    d.post(0, QSIZE);
    wait_for("used entry", || d.used_idx() == 1);
    assert_eq!(d.used_elem(0), (0, 32));
}

#[test]
fn zero_length_buffer_completes_as_a_failed_request() {
    let mut d = ready_driver();
    d.write_desc(DESC, 0, BUF, 0, F_WRITE, 0);
    d.post(0, QSIZE);
    wait_for("used entry", || d.used_idx() == 1);
    assert_eq!(d.used_elem(0), (0, 0));
    assert_eq!(d.status() & S_NEEDS_RESET, 0);
}

#[test]
fn queue_size_not_a_power_of_two_fails_activation_with_needs_reset() {
    let mut d = Driver::new();
    d.probe();
    d.init(12, FEATURES);
    assert_ne!(d.status() & S_NEEDS_RESET, 0);
    d.init(QSIZE, FEATURES);
    assert_eq!(d.status() & S_NEEDS_RESET, 0);
}

#[test]
fn queue_setup_is_frozen_after_driver_ok() {
    let d = ready_driver();
    let c = d.l.common;
    d.wr(c + 0x20, 0x5000, 4);
    d.wr(c + 0x18, 4, 2);
    assert_eq!(d.rd(c + 0x20, 8), DESC);
    assert_eq!(d.rd(c + 0x18, 2), u64::from(QSIZE));
}

/// Where the driver keeps `used_event` in the available ring (EVENT_IDX).
fn used_event_addr(qsize: u16) -> GuestAddress {
    GuestAddress(AVAIL + 4 + 2 * u64::from(qsize))
}

#[test]
fn queue_status_shows_three_served_chains_with_their_kick_and_interrupt() {
    let mut d = ready_driver();
    let before = d.queue_status();
    assert!(before.active && !before.broken);
    assert_eq!((before.size, before.event_idx), (QSIZE, true));
    // The driver wants an interrupt once the device used entry 2.
    d.mem.write_obj(2u16, used_event_addr(QSIZE)).unwrap();
    for i in 0..3u16 {
        d.write_desc(DESC, i.into(), BUF + 0x100 * u64::from(i), 16, F_WRITE, 0);
        d.publish(i, QSIZE);
    }
    d.kick();
    let s = d.wait_status("3 chains used and an interrupt", |s| {
        s.device_used == 3 && s.interrupts >= 1
    });
    assert_eq!(d.used_idx(), 3);
    assert_eq!(
        s,
        QueueSnapshot {
            active: true,
            size: QSIZE,
            event_idx: true,
            broken: false,
            vhost: false,
            driver_avail: 3,
            device_avail: 3,
            device_used: 3,
            used_event: 2,
            // One kick for the three chains, one interrupt for the one serve.
            notifications: 1,
            interrupts: 1,
        }
    );
    wait_for("MSI-X vector 1", || d.vector_fired(1));
}

#[test]
fn queue_status_tells_a_missed_kick_from_a_guest_that_stopped_posting() {
    let mut d = ready_driver();
    d.write_desc(DESC, 0, BUF, 16, F_WRITE, 0);
    d.post(0, QSIZE);
    let idle = d.wait_status("the first chain used", |s| s.device_used == 1);
    // Nothing more posted: the driver's index is where the device's is.
    assert_eq!((idle.driver_avail, idle.device_avail), (1, 1));

    // A chain made available without the kick the device needs to see it. A device may
    // still notice it: after using a chain its drain loop re-reads the avail ring before
    // it sleeps, so a chain published meanwhile is taken. Then that chain is served and
    // another one tried; the status must show one chain actually missed.
    const TRIES: u16 = 5;
    let mut missed = None;
    for n in 1..=TRIES {
        d.write_desc(DESC, n.into(), BUF + 0x100 * u64::from(n), 16, F_WRITE, 0);
        d.publish(n, QSIZE);
        // Time for a device that re-reads the ring to take the chain.
        std::thread::sleep(Duration::from_millis(50));
        let s = d.queue_status();
        // Missed: the status and the used ring both show the device short of it.
        if s.device_avail == n && d.used_idx() == n {
            missed = Some((n, s));
            break;
        }
        d.wait_status("the chain the device caught without a kick used", |s| {
            s.device_used == n + 1
        });
    }
    let (n, missed) = missed.unwrap_or_else(|| {
        panic!("the device took each of {TRIES} chains published without a kick")
    });
    assert_eq!(
        (missed.driver_avail, missed.device_avail, missed.device_used),
        (n + 1, n, n),
        "the driver one ahead of a sleeping device"
    );
    assert_eq!(missed.notifications, 1);

    // The kick, late, gets the chain served.
    d.kick();
    let served = d.wait_status("the missed chain used", |s| s.device_used == n + 1);
    assert_eq!((served.driver_avail, served.device_avail), (n + 1, n + 1));
    assert_eq!(served.notifications, 2);
}

#[test]
fn queue_status_shows_a_malformed_queue_as_broken_until_reset() {
    let mut d = ready_driver();
    // Descriptor 0 points at itself: a loop.
    d.write_desc(DESC, 0, BUF, 8, F_WRITE | F_NEXT, 0);
    d.post(0, QSIZE);
    wait_for("NEEDS_RESET", || d.status() & S_NEEDS_RESET != 0);
    let s = d.wait_status("broken", |s| s.broken);
    assert!(s.active);
    assert_eq!(
        (s.driver_avail, s.device_avail, s.device_used),
        (1, 1, 0),
        "the bad chain was taken and never used"
    );
    d.init(QSIZE, FEATURES);
    let s = d.queue_status();
    assert!(s.active && !s.broken, "{s:?}");
}

#[test]
fn after_reset_queue_status_is_inactive_and_keeps_the_counters() {
    let mut d = ready_driver();
    d.write_desc(DESC, 0, BUF, 16, F_WRITE, 0);
    d.post(0, QSIZE);
    let served = d.wait_status("a used chain and its interrupt", |s| {
        s.device_used == 1 && s.interrupts == 1
    });
    assert_eq!(served.notifications, 1);
    let statuses = d.dev.lock().unwrap().queue_statuses();

    d.set_status(0);
    assert_eq!(
        statuses[0].snapshot(&d.mem),
        QueueSnapshot {
            notifications: 1,
            interrupts: 1,
            ..QueueSnapshot::default()
        },
        "inactive, with the counters of the VM's life"
    );

    // The same status comes back to life with the device, its indices from 0 again.
    d.init(QSIZE, FEATURES);
    assert!(Arc::ptr_eq(
        &statuses[0],
        &d.dev.lock().unwrap().queue_statuses()[0]
    ));
    let s = statuses[0].snapshot(&d.mem);
    assert!(s.active, "{s:?}");
    assert_eq!(
        (s.size, s.driver_avail, s.device_avail, s.device_used),
        (QSIZE, 0, 0, 0)
    );
    d.write_desc(DESC, 0, BUF, 16, F_WRITE, 0);
    d.post(0, QSIZE);
    let s = d.wait_status("a used chain after reset", |s| s.device_used == 1);
    assert_eq!((s.notifications, s.driver_avail), (2, 1));
}

#[test]
fn a_queue_the_transport_rejected_never_shows_active() {
    let mut d = Driver::new();
    d.probe();
    d.init(12, FEATURES);
    assert_ne!(d.status() & S_NEEDS_RESET, 0);
    assert_eq!(d.queue_status(), QueueSnapshot::default());
}
