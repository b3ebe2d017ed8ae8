//! Configuration mechanism #1, the type-0 header helper and BAR placement,
//! driven through the port-I/O bus the way a guest kernel drives them.

use std::sync::{Arc, Mutex};

use devices::pci::{
    BarAllocator, BarRegion, BarType, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, PciConfiguration,
    PciDevice, PciError, PciIds, PciRoot,
};
use devices::{Bus, BusDevice};

/// A minimal function: a configuration space with two BARs and a capability.
struct TestDevice {
    config: PciConfiguration,
}

const TEST_IDS: PciIds = PciIds {
    vendor_id: 0x1234,
    device_id: 0x5678,
    revision_id: 3,
    class: 0xff,
    subclass: 0x00,
    prog_if: 0,
    subsystem_vendor_id: 0xabcd,
    subsystem_id: 0xef01,
};

impl TestDevice {
    fn new() -> TestDevice {
        let mut config = PciConfiguration::new(TEST_IDS);
        config
            .add_bar(BarRegion {
                index: 0,
                size: 0x1000,
                bar_type: BarType::Memory32,
                prefetchable: false,
            })
            .unwrap();
        config
            .add_bar(BarRegion {
                index: 2,
                size: 0x2_0000_0000,
                bar_type: BarType::Memory64,
                prefetchable: true,
            })
            .unwrap();
        config.add_capability(0x09, &[4, 0xaa], &[]).unwrap();
        config.add_capability(0x05, &[0; 10], &[0xff]).unwrap();
        TestDevice { config }
    }
}

impl PciDevice for TestDevice {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }
    fn assign_bar(&mut self, index: usize, addr: u64) -> Result<(), PciError> {
        self.config.set_bar_address(index, addr)
    }
    fn bar_read(&mut self, _index: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn bar_write(&mut self, _index: usize, _offset: u64, _data: &[u8]) {}
}

fn io_bus() -> Bus {
    let mut root = PciRoot::new();
    root.add_device(Arc::new(Mutex::new(TestDevice::new())))
        .unwrap();
    let bus = Bus::new();
    bus.insert(
        Arc::new(Mutex::new(root)),
        PCI_CONFIG_IO_BASE,
        PCI_CONFIG_IO_LEN,
    )
    .unwrap();
    bus
}

fn address(dev: u8, reg: u8) -> u32 {
    0x8000_0000 | (u32::from(dev) << 11) | u32::from(reg & 0xfc)
}

fn read(bus: &Bus, dev: u8, reg: u8, len: usize) -> u32 {
    assert!(bus.write(0xcf8, &address(dev, reg).to_le_bytes()));
    let mut b = [0u8; 4];
    assert!(bus.read(0xcfc + u64::from(reg & 3), &mut b[..len]));
    u32::from_le_bytes(b)
}

fn write(bus: &Bus, dev: u8, reg: u8, value: u32, len: usize) {
    assert!(bus.write(0xcf8, &address(dev, reg).to_le_bytes()));
    assert!(bus.write(0xcfc + u64::from(reg & 3), &value.to_le_bytes()[..len]));
}

#[test]
fn config_address_reads_back_like_linux_type1_probe_expects() {
    let bus = io_bus();
    // Linux pokes 0xcfb with a byte first; that must not disturb 0xcf8.
    bus.write(0xcfb, &[1]);
    bus.write(0xcf8, &0x8000_0000u32.to_le_bytes());
    let mut b = [0u8; 4];
    bus.read(0xcf8, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
    // Reserved bits 30:24 and 1:0 read as zero.
    bus.write(0xcf8, &0xffff_ffffu32.to_le_bytes());
    bus.read(0xcf8, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x80ff_fffc);
}

#[test]
fn host_bridge_sits_at_slot_zero_and_device_at_slot_one() {
    let bus = io_bus();
    assert_eq!(read(&bus, 0, 0, 4), 0x0d57_8086);
    assert_eq!(read(&bus, 0, 0x08, 4) >> 16, 0x0600);
    assert_eq!(read(&bus, 1, 0, 4), 0x5678_1234);
    assert_eq!(read(&bus, 1, 0x2c, 4), 0xef01_abcd);
}

#[test]
fn absent_devices_functions_and_buses_read_all_ones() {
    let bus = io_bus();
    assert_eq!(read(&bus, 2, 0, 4), 0xffff_ffff);
    assert_eq!(read(&bus, 31, 0, 2), 0xffff);
    // Function 1 of slot 1 and bus 1 slot 1.
    bus.write(0xcf8, &(address(1, 0) | 1 << 8).to_le_bytes());
    let mut b = [0u8; 4];
    bus.read(0xcfc, &mut b);
    assert_eq!(b, [0xff; 4]);
    bus.write(0xcf8, &(address(1, 0) | 1 << 16).to_le_bytes());
    bus.read(0xcfc, &mut b);
    assert_eq!(b, [0xff; 4]);
}

#[test]
fn data_port_reads_nothing_while_enable_bit_is_clear() {
    let bus = io_bus();
    bus.write(0xcf8, &(address(1, 0) & !0x8000_0000).to_le_bytes());
    let mut b = [0u8; 4];
    bus.read(0xcfc, &mut b);
    assert_eq!(b, [0xff; 4]);
}

#[test]
fn every_width_at_every_offset_matches_the_dword() {
    let bus = io_bus();
    for reg in (0u8..0x40).step_by(4) {
        let dword = read(&bus, 1, reg, 4).to_le_bytes();
        for off in 0..4u8 {
            assert_eq!(read(&bus, 1, reg + off, 1) as u8, dword[off as usize]);
            if off <= 2 {
                let w = read(&bus, 1, reg + off, 2) as u16;
                let want = u16::from_le_bytes([dword[off as usize], dword[off as usize + 1]]);
                assert_eq!(w, want, "word at {:#x}", reg + off);
            }
        }
    }
    // A dword read at 0xcfd runs past 0xcff: only the bytes up to 0xcff are
    // config data, the rest read as ones.
    bus.write(0xcf8, &address(1, 0).to_le_bytes());
    let mut b = [0u8; 4];
    bus.read(0xcfd, &mut b);
    assert_eq!(b, [0x12, 0x78, 0x56, 0xff]);
}

#[test]
fn read_only_registers_ignore_writes() {
    let bus = io_bus();
    write(&bus, 1, 0, 0xdead_beef, 4);
    write(&bus, 1, 0x08, 0xffff_ffff, 4);
    write(&bus, 1, 0x2c, 0, 2);
    assert_eq!(read(&bus, 1, 0, 4), 0x5678_1234);
    assert_eq!(read(&bus, 1, 0x08, 4), 0xff00_0003);
    assert_eq!(read(&bus, 1, 0x2c, 4), 0xef01_abcd);
    // The interrupt line is scratch for software.
    write(&bus, 1, 0x3c, 0x0b, 1);
    assert_eq!(read(&bus, 1, 0x3c, 1), 0x0b);
}

#[test]
fn command_register_keeps_only_defined_bits() {
    let bus = io_bus();
    write(&bus, 1, 0x04, 0xffff, 2);
    assert_eq!(read(&bus, 1, 0x04, 2), 0x0547);
    write(&bus, 1, 0x04, 0x0002, 2);
    assert_eq!(read(&bus, 1, 0x04, 2), 0x0002);
}

#[test]
fn status_error_bits_are_write_one_to_clear() {
    let mut config = PciConfiguration::new(TEST_IDS);
    config.set_status_bits(0x8000 | 0x2000);
    // Writing zeros changes nothing; writing one clears just that bit.
    config.write(6, &0u16.to_le_bytes());
    assert_eq!(config.read_u16(6), 0xa000);
    config.write(6, &0x8000u16.to_le_bytes());
    assert_eq!(config.read_u16(6), 0x2000);
}

#[test]
fn bar_sizing_reads_back_the_size_mask_then_restores() {
    let bus = io_bus();
    assert_eq!(read(&bus, 1, 0x10, 4), 0);
    write(&bus, 1, 0x10, 0xffff_ffff, 4);
    assert_eq!(read(&bus, 1, 0x10, 4), 0xffff_f000);
    write(&bus, 1, 0x10, 0xc000_1000, 4);
    assert_eq!(read(&bus, 1, 0x10, 4), 0xc000_1000);
}

#[test]
fn sixty_four_bit_bar_pair_sizes_both_halves() {
    let bus = io_bus();
    // Type bits: 64-bit (0b10 << 1) and prefetchable (1 << 3).
    assert_eq!(read(&bus, 1, 0x18, 4), 0xc);
    write(&bus, 1, 0x18, 0xffff_ffff, 4);
    write(&bus, 1, 0x1c, 0xffff_ffff, 4);
    assert_eq!(read(&bus, 1, 0x18, 4), 0x0000_000c);
    assert_eq!(read(&bus, 1, 0x1c, 4), 0xffff_fffe);
    // Unused BARs stay zero whatever is written.
    write(&bus, 1, 0x14, 0xffff_ffff, 4);
    assert_eq!(read(&bus, 1, 0x14, 4), 0);
}

#[test]
fn assigned_bar_addresses_show_in_config_space() {
    let mut dev = TestDevice::new();
    dev.assign_bar(0, 0xc000_0000).unwrap();
    dev.assign_bar(2, 0x4_0000_0000).unwrap();
    assert_eq!(dev.config.bar_address(0), Some(0xc000_0000));
    assert_eq!(dev.config.bar_address(2), Some(0x4_0000_0000));
    assert_eq!(
        dev.assign_bar(0, 0xc000_0800),
        Err(PciError::MisalignedBar {
            index: 0,
            addr: 0xc000_0800
        })
    );
    assert_eq!(dev.assign_bar(1, 0), Err(PciError::InvalidBarIndex(1)));
}

#[test]
fn capability_list_walk_finds_every_capability_once() {
    let bus = io_bus();
    assert_ne!(read(&bus, 1, 0x06, 2) & 0x10, 0, "capability list bit");
    let mut ptr = read(&bus, 1, 0x34, 1) as u8;
    let mut found = Vec::new();
    while ptr != 0 {
        assert_eq!(ptr % 4, 0);
        assert!(ptr >= 0x40);
        found.push((ptr, read(&bus, 1, ptr, 1) as u8));
        ptr = read(&bus, 1, ptr + 1, 1) as u8;
        assert!(found.len() < 48, "capability loop");
    }
    assert_eq!(found, vec![(0x40, 0x09), (0x44, 0x05)]);
    assert_eq!(read(&bus, 1, 0x42, 2), 0xaa04);
    // Only the first body byte of the second capability is writable.
    write(&bus, 1, 0x46, 0xffff, 2);
    assert_eq!(read(&bus, 1, 0x46, 2), 0x00ff);
}

#[test]
fn capability_space_runs_out_with_an_error() {
    let mut config = PciConfiguration::new(TEST_IDS);
    for _ in 0..3 {
        config.add_capability(0x09, &[0; 62], &[]).unwrap();
    }
    assert_eq!(
        config.add_capability(0x09, &[0; 62], &[]),
        Err(PciError::CapabilitySpaceFull)
    );
}

#[test]
fn bar_allocator_aligns_naturally_and_reports_exhaustion() {
    let mut alloc = BarAllocator::new(0xc000_1000, 0xc002_0000);
    assert_eq!(alloc.allocate(0x1000), Ok(0xc000_1000));
    assert_eq!(alloc.allocate(0x4000), Ok(0xc000_4000));
    assert_eq!(alloc.allocate(0x10000), Ok(0xc001_0000));
    assert_eq!(
        alloc.allocate(0x1000),
        Err(PciError::BarSpaceExhausted(0x1000))
    );
    assert_eq!(
        alloc.allocate(0x3000),
        Err(PciError::InvalidBarSize(0x3000))
    );
    let mut hole = BarAllocator::default();
    assert_eq!(hole.allocate(0x2000_0000), Ok(0xc000_0000));
    assert_eq!(hole.allocate(0x1000_0000), Ok(0xe000_0000));
    // 0xf000_0000 + 0x1000_0000 would run into the IOAPIC.
    assert!(hole.allocate(0x1000_0000).is_err());
}

#[test]
fn bus_refuses_a_thirty_third_slot() {
    let mut root = PciRoot::new();
    for _ in 1..32 {
        root.add_device(Arc::new(Mutex::new(TestDevice::new())))
            .unwrap();
    }
    assert_eq!(
        root.add_device(Arc::new(Mutex::new(TestDevice::new())))
            .map(|a| a.device),
        Err(PciError::BusFull)
    );
    let mut b = [0u8; 2];
    root.write(0, &address(31, 0).to_le_bytes());
    root.read(4, &mut b);
    assert_eq!(b, [0x34, 0x12]);
}
