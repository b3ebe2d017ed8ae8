//! A virtio-pci BAR as the guest's PCI code treats it: silent until memory decoding is on,
//! sized with decoding off without moving, and followed where the guest moves it (or,
//! when the VMM refuses the move, left and read back where it was).

use std::sync::{Arc, Mutex};

use devices::Bus;
use devices::pci;
use devices::pci::{BarAllocator, PciDevice};
use devices::virtio::pci_transport::{BarMove, VIRTIO_BAR_SIZE};
use devices::virtio::{Rng, VirtioPciDevice};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const COMMAND: usize = 0x04;
const BAR0: usize = 0x10;
const MEMORY_SPACE: u8 = 0x02;
/// Offset of the device feature register in the common configuration (at BAR offset 0).
const NUM_QUEUES: u64 = 0x12;

struct Rig {
    dev: Arc<Mutex<VirtioPciDevice>>,
    mmio: Arc<Bus>,
    base: u64,
    moves: Arc<Mutex<Vec<BarMove>>>,
}

/// A virtio-rng on an MMIO bus, its BAR placed by the allocator; moves the guest makes are
/// recorded, and carried out on the bus unless `refuse`.
fn rig(refuse: bool) -> Rig {
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    let dev = Arc::new(Mutex::new(
        VirtioPciDevice::new(Box::new(Rng::new().unwrap()), mem).unwrap(),
    ));
    let dyn_dev: Arc<Mutex<dyn PciDevice>> = dev.clone();
    let mmio = Arc::new(Bus::new());
    let bars = pci::allocate_bars(&dyn_dev, &mut BarAllocator::default()).unwrap();
    let base = bars[0].base;
    for bar in bars {
        mmio.insert(bar.bus_device, bar.base, bar.size).unwrap();
    }
    let moves = Arc::new(Mutex::new(Vec::new()));
    let (bus, seen) = (mmio.clone(), moves.clone());
    dev.lock()
        .unwrap()
        .set_bar_mover(Box::new(move |m: BarMove| {
            seen.lock().unwrap().push(m);
            if refuse {
                return Err("refused by the test".into());
            }
            bus.relocate(m.old, m.new).map_err(|e| e.to_string())
        }));
    Rig {
        dev,
        mmio,
        base,
        moves,
    }
}

impl Rig {
    fn cfg_write(&self, offset: usize, data: &[u8]) {
        self.dev.lock().unwrap().config_write(offset, data);
    }

    fn bar_register(&self) -> u64 {
        let mut lo = [0u8; 4];
        let mut hi = [0u8; 4];
        let mut dev = self.dev.lock().unwrap();
        dev.config_read(BAR0, &mut lo);
        dev.config_read(BAR0 + 4, &mut hi);
        u64::from(u32::from_le_bytes(hi)) << 32 | u64::from(u32::from_le_bytes(lo) & !0xf)
    }

    /// Programs the (64-bit) BAR as Linux does: low then high half.
    fn program_bar(&self, addr: u64) {
        let type_bits = {
            let mut lo = [0u8; 4];
            self.dev.lock().unwrap().config_read(BAR0, &mut lo);
            u32::from_le_bytes(lo) & 0xf
        };
        self.cfg_write(BAR0, &((addr as u32) | type_bits).to_le_bytes());
        self.cfg_write(BAR0 + 4, &((addr >> 32) as u32).to_le_bytes());
    }

    /// NUM_QUEUES through the MMIO bus at `base`, or None when nothing answers there.
    fn num_queues_at(&self, base: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        self.mmio
            .read(base + NUM_QUEUES, &mut b)
            .then(|| u16::from_le_bytes(b))
    }
}

#[test]
fn the_bar_reads_as_no_device_until_memory_decoding_is_on() {
    let rig = rig(false);
    assert_eq!(rig.num_queues_at(rig.base), Some(0xffff));
    rig.cfg_write(COMMAND, &[MEMORY_SPACE, 0]);
    assert_eq!(
        rig.num_queues_at(rig.base),
        Some(1),
        "virtio-rng has one queue"
    );
    rig.cfg_write(COMMAND, &[0, 0]);
    assert_eq!(rig.num_queues_at(rig.base), Some(0xffff));
}

#[test]
fn sizing_with_decoding_off_moves_nothing() {
    let rig = rig(false);
    // Linux's __pci_read_base: all ones, read the size, put the address back, decoding off.
    rig.cfg_write(BAR0, &u32::MAX.to_le_bytes());
    rig.cfg_write(BAR0 + 4, &u32::MAX.to_le_bytes());
    let mut lo = [0u8; 4];
    rig.dev.lock().unwrap().config_read(BAR0, &mut lo);
    assert_eq!(
        u32::from_le_bytes(lo) & !0xf,
        !(VIRTIO_BAR_SIZE as u32 - 1),
        "the size mask"
    );
    rig.program_bar(rig.base);
    rig.cfg_write(COMMAND, &[MEMORY_SPACE, 0]);
    assert_eq!(rig.moves.lock().unwrap().len(), 0);
    assert_eq!(rig.num_queues_at(rig.base), Some(1));
}

#[test]
fn a_bar_the_guest_moves_decodes_at_its_new_address_only() {
    let rig = rig(false);
    let new = rig.base + 0x10_0000;
    rig.program_bar(new);
    rig.cfg_write(COMMAND, &[MEMORY_SPACE, 0]);
    assert_eq!(
        *rig.moves.lock().unwrap(),
        vec![BarMove { old: rig.base, new }]
    );
    assert_eq!(rig.bar_register(), new);
    assert_eq!(rig.num_queues_at(new), Some(1));
    assert_eq!(
        rig.num_queues_at(rig.base),
        None,
        "nothing left at the old address"
    );
    // Moved back while decoding stays on: followed at once.
    rig.program_bar(rig.base);
    assert_eq!(rig.num_queues_at(rig.base), Some(1));
    assert_eq!(rig.num_queues_at(new), None);
}

#[test]
fn a_move_the_vmm_refuses_leaves_the_bar_where_it_was_and_says_so() {
    let rig = rig(true);
    let new = rig.base + 0x10_0000;
    rig.program_bar(new);
    rig.cfg_write(COMMAND, &[MEMORY_SPACE, 0]);
    assert_eq!(rig.moves.lock().unwrap().len(), 1);
    assert_eq!(
        rig.bar_register(),
        rig.base,
        "the register reads where it decodes"
    );
    assert_eq!(rig.num_queues_at(rig.base), Some(1));
    assert_eq!(rig.num_queues_at(new), None);
}
