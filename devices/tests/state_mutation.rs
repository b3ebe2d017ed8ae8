//! Hostile device records: valid records of every device kind, mutated at random (bytes
//! changed, cut short, grown), are decoded and checked against freshly built devices.
//! Nothing may panic; a mutated record that decodes must encode back to exactly its own
//! bytes (so every accepted payload is canonical: no field is silently dropped or
//! normalised), and checking it must leave the target device untouched.

use std::io;
use std::sync::Arc;

use devices::acpi_pm::AcpiPmState;
use devices::cmos::CmosState;
use devices::i8042::I8042State;
use devices::pci::PciRoot;
use devices::pci::state::PciRootState;
use devices::reset::ResetControlState;
use devices::virtio::state;
use devices::virtio::{Balloon, Rng, VirtioDevice, VirtioPciDevice};
use devices::{
    AcpiPm, BusDevice, Cmos, DeviceState, I8042, ResetControl, Serial, SerialState, StateRecord,
    decode_record, encode_record,
};
use snapshot::{Record, RecordType};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// xorshift64*: a seeded generator, so a failure reproduces.
struct Rng64(u64);

impl Rng64 {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng64, good: &[u8]) -> Vec<u8> {
    let mut bytes = good.to_vec();
    match rng.below(8) {
        0 => bytes.truncate(rng.below(good.len() + 1)),
        1 => bytes.extend((0..=rng.below(4)).map(|_| rng.next() as u8)),
        _ => {
            for _ in 0..=rng.below(3) {
                let at = rng.below(bytes.len());
                bytes[at] = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    2 => bytes[at] ^ (1 << rng.below(8)),
                    _ => rng.next() as u8,
                };
            }
        }
    }
    bytes
}

fn evt() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

/// Mutates `good` `rounds` times; each decoded mutant must re-encode to itself, and
/// `check` (against a fresh device) must not panic.
fn fuzz_legacy<S: StateRecord>(
    rng: &mut Rng64,
    good: &[u8],
    rounds: usize,
    mut check: impl FnMut(&S),
) -> usize {
    let mut accepted = 0;
    for _ in 0..rounds {
        let bytes = mutate(rng, good);
        if let Ok((instance, s)) = decode_record::<S>(&Record {
            ty: S::RECORD,
            payload: &bytes,
        }) {
            accepted += 1;
            assert_eq!(encode_record(instance, &s).1, bytes, "canonical");
            check(&s);
        }
    }
    accepted
}

#[test]
fn mutated_legacy_records_never_panic_and_accepted_ones_are_canonical() {
    let mut rng = Rng64(0x5eed_0017);
    let mut serial = Serial::new(evt(), evt(), Box::new(io::sink()));
    serial.write(1, &[0x01]);
    serial.enqueue_input(b"abc").unwrap();
    let (_, good) = encode_record(0x3f8, &serial.save_state().unwrap());
    let fresh = Serial::new(evt(), evt(), Box::new(io::sink()));
    fuzz_legacy::<SerialState>(&mut rng, &good, 5000, |s| {
        let _ = fresh.check_state(s);
    });

    let (_, good) = encode_record(0x60, &I8042::new(evt()).save_state().unwrap());
    fuzz_legacy::<I8042State>(&mut rng, &good, 5000, |_| {});

    let cmos = Cmos::with_clock(256 << 20, 0, Box::new(|| 0));
    let (_, good) = encode_record(0x70, &cmos.save_state().unwrap());
    let before = cmos.save_state().unwrap();
    fuzz_legacy::<CmosState>(&mut rng, &good, 5000, |s| {
        let _ = cmos.check_state(s);
    });
    assert_eq!(
        cmos.save_state().unwrap(),
        before,
        "checking changed nothing"
    );

    let (_, good) = encode_record(0x600, &AcpiPm::new(evt()).save_state().unwrap());
    fuzz_legacy::<AcpiPmState>(&mut rng, &good, 3000, |_| {});
    let (_, good) = encode_record(0xcf9, &ResetControl::new(evt()).save_state().unwrap());
    fuzz_legacy::<ResetControlState>(&mut rng, &good, 1000, |_| {});

    let root = PciRoot::new();
    let (_, good) = encode_record(0, &root.save_state().unwrap());
    fuzz_legacy::<PciRootState>(&mut rng, &good, 5000, |s| {
        let _ = root.check_state(s);
    });
}

fn memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap())
}

fn transport(device: Box<dyn VirtioDevice>, mem: &Arc<GuestMemoryMmap>) -> VirtioPciDevice {
    use devices::pci::PciDevice;
    let mut dev = VirtioPciDevice::new(device, mem.clone()).unwrap();
    dev.assign_bar(0, 0xc000_0000).unwrap();
    dev.config_write(4, &[0x06, 0x00]);
    dev
}

/// A running device's record: a driver set up every queue and DRIVER_OK.
fn running_record(dev: &mut VirtioPciDevice, queues: u16, features: u64) -> (RecordType, Vec<u8>) {
    use devices::pci::PciDevice;
    let mut wr = |off: u64, v: u64, len: usize| dev.bar_write(0, off, &v.to_le_bytes()[..len]);
    wr(0x14, 3, 1);
    wr(0x08, 0, 4);
    wr(0x0c, features & 0xffff_ffff, 4);
    wr(0x08, 1, 4);
    wr(0x0c, features >> 32, 4);
    wr(0x14, 0xb, 1);
    for q in 0..queues {
        let base = 0x1000 + u64::from(q) * 0x4000;
        wr(0x16, u64::from(q), 2);
        wr(0x18, 16, 2);
        wr(0x20, base, 8);
        wr(0x28, base + 0x1000, 8);
        wr(0x30, base + 0x2000, 8);
        wr(0x1c, 1, 2);
    }
    wr(0x14, 0xf, 1);
    dev.pause().unwrap();
    let saved = state::encode_record(8, &dev.save_state().unwrap()).unwrap();
    dev.resume().unwrap();
    saved
}

#[test]
fn mutated_virtio_records_never_panic_and_checking_has_no_side_effects() {
    let mut rng = Rng64(0x5eed_0140);
    let mem = memory();
    let mut rng_dev = transport(Box::new(Rng::new().unwrap()), &mem);
    let mut balloon_dev = transport(
        Box::new(Balloon::new(256, "balloon-mutation", || {}).unwrap()),
        &mem,
    );
    let records = [
        running_record(&mut rng_dev, 1, 1 << 32 | 1 << 29),
        running_record(&mut balloon_dev, 3, 1 << 32 | 1 << 1),
    ];
    let fresh = [
        transport(Box::new(Rng::new().unwrap()), &mem),
        transport(
            Box::new(Balloon::new(256, "balloon-fresh", || {}).unwrap()),
            &mem,
        ),
    ];
    let mut accepted = 0;
    let mut checked_ok = 0;
    for ((ty, good), target) in records.iter().zip(&fresh) {
        for _ in 0..4000 {
            let bytes = mutate(&mut rng, good);
            let Ok((instance, s)) = state::decode_payload(*ty, &bytes) else {
                continue;
            };
            accepted += 1;
            assert_eq!(
                state::encode_record(instance, &s).unwrap().1,
                bytes,
                "canonical"
            );
            if target.check_state(&s).is_ok() {
                checked_ok += 1;
            }
        }
    }
    assert!(accepted > 100, "mutations reach past decoding ({accepted})");
    assert!(checked_ok > 0, "some mutants are valid restores");
    // Checking changed nothing: the fresh devices still save what fresh devices save.
    for (target, pristine) in fresh.into_iter().zip([
        transport(Box::new(Rng::new().unwrap()), &mem),
        transport(
            Box::new(Balloon::new(256, "balloon-pristine", || {}).unwrap()),
            &mem,
        ),
    ]) {
        let save = |mut d: VirtioPciDevice| {
            d.pause().unwrap();
            state::encode_record(8, &d.save_state().unwrap()).unwrap().1
        };
        assert_eq!(save(target), save(pristine));
    }
}

#[test]
fn mutated_console_records_never_panic_and_are_canonical() {
    use devices::virtio::console::Console;
    let mut rng = Rng64(0x5eed_0143);
    let mem = memory();
    let console =
        || Box::new(Console::new(Box::new(io::sink()), "console-mutation", || {}).unwrap());
    let dev = console();
    dev.input().offer(b"pending input");
    let mut dev = transport(dev, &mem);
    let (ty, good) = running_record(&mut dev, 2, 1 << 32);
    let target = transport(console(), &mem);
    let mut accepted = 0;
    for _ in 0..4000 {
        let bytes = mutate(&mut rng, &good);
        let Ok((instance, s)) = state::decode_payload(ty, &bytes) else {
            continue;
        };
        accepted += 1;
        assert_eq!(
            state::encode_record(instance, &s).unwrap().1,
            bytes,
            "canonical"
        );
        let _ = target.check_state(&s);
    }
    assert!(accepted > 100, "mutations reach past decoding ({accepted})");
}
