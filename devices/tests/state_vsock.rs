//! virtio-vsock snapshots on a recording fake of the kernel's vhost-vsock (there is none
//! where the tests run): the vhost calls a pause, a resume and a restore make, in order;
//! the ring positions carried through the record; the transport reset a restored device
//! sends in a buffer the driver posted; and what a restore refuses. Also the memory table:
//! registered memory is in it from activation on and follows each registration.

mod state_support;

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use devices::virtio::VirtioPciDevice;
use devices::virtio::vsock::vhost::RingAddresses;
use devices::virtio::vsock::{VhostBackend, VhostError, VhostMemoryRegion, Vsock};
use state_support::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The fake kernel: records each call, keeps each ring's base as vhost does.
#[derive(Debug, Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    bases: Mutex<[u16; 2]>,
    /// A call whose name starts with this fails (EIO).
    fail: Mutex<Option<&'static str>>,
    /// Each memory table given, as its regions' guest addresses.
    tables: Mutex<Vec<Vec<u64>>>,
    /// The call eventfd of each ring, as the kernel signals them.
    call_fds: Mutex<[RawFd; 2]>,
}

impl Fake {
    fn call(&self, name: &'static str, what: String) -> Result<(), VhostError> {
        self.calls.lock().unwrap().push(what);
        if self
            .fail
            .lock()
            .unwrap()
            .is_some_and(|f| name.starts_with(f))
        {
            return Err(VhostError {
                call: name,
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        Ok(())
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl VhostBackend for Fake {
    fn set_owner_once(&self) -> Result<(), VhostError> {
        self.call("VHOST_SET_OWNER", "owner".into())
    }
    fn set_features(&self, features: u64) -> Result<(), VhostError> {
        self.call("VHOST_SET_FEATURES", format!("features {features:#x}"))
    }
    fn set_mem_table(&self, regions: &[VhostMemoryRegion]) -> Result<(), VhostError> {
        self.call("VHOST_SET_MEM_TABLE", format!("mem {}", regions.len()))?;
        let addrs = regions.iter().map(|r| r.guest_phys_addr).collect();
        self.tables.lock().unwrap().push(addrs);
        Ok(())
    }
    fn set_vring_num(&self, index: u32, size: u16) -> Result<(), VhostError> {
        self.call("VHOST_SET_VRING_NUM", format!("num {index} {size}"))
    }
    fn set_vring_base(&self, index: u32, next_avail: u16) -> Result<(), VhostError> {
        self.call(
            "VHOST_SET_VRING_BASE",
            format!("set base {index} {next_avail}"),
        )?;
        self.bases.lock().unwrap()[index as usize] = next_avail;
        Ok(())
    }
    fn get_vring_base(&self, index: u32) -> Result<u16, VhostError> {
        self.call("VHOST_GET_VRING_BASE", format!("get base {index}"))?;
        Ok(self.bases.lock().unwrap()[index as usize])
    }
    fn set_vring_addr(&self, index: u32, _rings: RingAddresses) -> Result<(), VhostError> {
        self.call("VHOST_SET_VRING_ADDR", format!("addr {index}"))
    }
    fn set_vring_kick(&self, index: u32, _fd: RawFd) -> Result<(), VhostError> {
        self.call("VHOST_SET_VRING_KICK", format!("kick {index}"))
    }
    fn set_vring_call(&self, index: u32, fd: RawFd) -> Result<(), VhostError> {
        self.call("VHOST_SET_VRING_CALL", format!("call {index}"))?;
        self.call_fds.lock().unwrap()[index as usize] = fd;
        Ok(())
    }
    fn set_running(&self, running: bool) -> Result<(), VhostError> {
        self.call(
            "VHOST_VSOCK_SET_RUNNING",
            format!("running {}", u8::from(running)),
        )
    }
}

/// VERSION_1, EVENT_IDX, INDIRECT_DESC and SEQPACKET, as the kernel's has them.
const BACKEND: u64 = FEATURES | 1 << 1;
const CID: u64 = 3;
const EVENT_BUF: u64 = BUF + 0x100;

fn vsock(mem: &Arc<GuestMemoryMmap>, cid: u64) -> (VirtioPciDevice, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let dev = Vsock::with_backend(fake.clone(), cid, BACKEND, "vsock-state", || {}).unwrap();
    (transport(Box::new(dev), mem), fake)
}

/// What setting up the backend at bases `rx` and `tx` is, in order.
fn set_up_calls(rx: u16, tx: u16) -> Vec<String> {
    let mut calls = vec![
        "owner".to_string(),
        format!("features {:#x}", BACKEND),
        "mem 1".to_string(),
    ];
    for (index, base) in [(0, rx), (1, tx)] {
        calls.extend([
            format!("num {index} {QSIZE}"),
            format!("set base {index} {base}"),
            format!("addr {index}"),
            format!("kick {index}"),
            format!("call {index}"),
        ]);
    }
    calls.push("running 1".to_string());
    calls
}

/// The kernel served `rx` chains of queue 0 and `tx` of queue 1: its bases moved, and it
/// published the used indices in guest memory.
fn kernel_served(mem: &GuestMemoryMmap, fake: &Fake, rx: u16, tx: u16) {
    *fake.bases.lock().unwrap() = [rx, tx];
    mem.write_obj(rx, GuestAddress(USED + 2)).unwrap();
    mem.write_obj(tx, GuestAddress(QUEUE_STRIDE + USED + 2))
        .unwrap();
}

/// The notifications pending on each queue's notify eventfd (the kernel rings' kick
/// eventfds), read and so cleared.
fn kicks(dev: &VirtioPciDevice) -> Vec<u64> {
    dev.queue_notifiers()
        .unwrap()
        .unwrap()
        .iter()
        .map(|n| n.eventfd.read().unwrap_or(0))
        .collect()
}

fn event_interrupts(dev: &VirtioPciDevice, mem: &GuestMemoryMmap) -> u64 {
    dev.queue_statuses()[2].snapshot(mem).interrupts
}

#[test]
fn pause_stops_the_backend_and_reads_the_bases_and_resume_only_runs_it_again() {
    let mem = memory();
    let (mut a, fake) = vsock(&mem, CID);
    let mut rings = set_up_queues(&mut a, BACKEND, 3);
    assert_eq!(fake.take(), set_up_calls(0, 0));
    kernel_served(&mem, &fake, 5, 2);
    rings[2].publish_write(&mem, EVENT_BUF, 4);
    a.notify_queue(2);

    a.pause().unwrap();
    assert_eq!(fake.take(), ["running 0", "get base 0", "get base 1"]);
    let (ty, bytes) = save(&a);
    assert_eq!(ty.kind, 0x0153);
    // The device's part is last: the CID.
    assert_eq!(&bytes[bytes.len() - 8..], &[3, 0, 0, 0, 0, 0, 0, 0]);
    let state = decode(ty, &bytes).unwrap();
    let positions: Vec<_> = state
        .queues
        .iter()
        .map(|q| (q.next_avail, q.next_used, q.signalled_used))
        .collect();
    // The event buffer stays posted: nothing is owed to the driver in the same process.
    assert_eq!(positions, vec![(5, 5, 5), (2, 2, 2), (0, 0, 0)]);

    let _ = kicks(&a);
    a.resume().unwrap();
    assert_eq!(fake.take(), ["running 1"], "the rings have not moved");
    assert_eq!(kicks(&a), [1, 1, 0], "and are looked at again");
    assert_eq!(rings[2].used_idx(&mem), 0, "no event after a mere resume");
    // Pausing again reads the bases again; dropping a paused device does not stop the
    // stopped backend a second time.
    a.pause().unwrap();
    drop(a);
    assert_eq!(fake.take(), ["running 0", "get base 0", "get base 1"]);
}

#[test]
fn a_restored_device_resumes_the_rings_at_the_saved_bases_and_sends_a_transport_reset() {
    let mem = memory();
    let (mut a, fake) = vsock(&mem, CID);
    let mut rings = set_up_queues(&mut a, BACKEND, 3);
    kernel_served(&mem, &fake, 7, 3);
    let head = rings[2].publish_write(&mem, EVENT_BUF, 4);
    mem.write_obj(0xffff_ffffu32, GuestAddress(EVENT_BUF))
        .unwrap();
    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    drop(a);
    assert_eq!(rings[2].used_idx(&mem), 0);

    let (mut b, fake2) = vsock(&mem, CID);
    let state = decode(ty, &bytes).unwrap();
    b.check_state(&state).unwrap();
    assert!(fake2.take().is_empty(), "checking touches nothing");
    b.apply_state(state).unwrap();
    assert_eq!(fake2.take(), set_up_calls(7, 3));
    // Both kernel rings were kicked, so the backend looks at what the driver posted.
    assert_eq!(kicks(&b), [1, 1, 0]);
    // The event went into the buffer the driver had posted, with an interrupt.
    rings[2].wait_used(&mem, 1);
    assert_eq!(rings[2].used_elem(&mem, 0), (u32::from(head), 4));
    assert_eq!(mem.read_obj::<u32>(GuestAddress(EVENT_BUF)).unwrap(), 0);
    assert_eq!(event_interrupts(&b, &mem), 1);
    // Once only: a later event buffer is kept.
    rings[2].publish_write(&mem, EVENT_BUF + 8, 4);
    b.notify_queue(2);
    b.pause().unwrap();
    assert_eq!(rings[2].used_idx(&mem), 1);
    let again = b.save_state().unwrap();
    assert_eq!(again.queues[2].next_avail, 1);
    b.resume().unwrap();
}

#[test]
fn with_no_event_buffer_posted_the_reset_waits_for_one() {
    let mem = memory();
    let (mut a, _fake) = vsock(&mem, CID);
    let mut rings = set_up_queues(&mut a, BACKEND, 3);
    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    drop(a);

    let (mut b, _fake2) = vsock(&mem, CID);
    let state = decode(ty, &bytes).unwrap();
    b.check_state(&state).unwrap();
    b.apply_state(state).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(event_interrupts(&b, &mem), 0);
    let head = rings[2].publish_write(&mem, EVENT_BUF, 8);
    b.notify_queue(2);
    rings[2].wait_used(&mem, 1);
    assert_eq!(rings[2].used_elem(&mem, 0), (u32::from(head), 4));
    assert_eq!(event_interrupts(&b, &mem), 1);
}

#[test]
fn an_event_buffer_too_small_for_the_event_is_returned_empty_and_the_next_one_taken() {
    let mem = memory();
    let (mut a, _fake) = vsock(&mem, CID);
    let mut rings = set_up_queues(&mut a, BACKEND, 3);
    let small = rings[2].publish_write(&mem, EVENT_BUF, 2);
    let read_only = rings[2].publish(&mem, &[(EVENT_BUF + 8, 8, 0)]);
    let good = rings[2].publish_write(&mem, EVENT_BUF + 16, 4);
    a.pause().unwrap();
    let (ty, bytes) = save(&a);
    drop(a);

    let (mut b, _fake2) = vsock(&mem, CID);
    let state = decode(ty, &bytes).unwrap();
    b.check_state(&state).unwrap();
    b.apply_state(state).unwrap();
    rings[2].wait_used(&mem, 3);
    assert_eq!(rings[2].used_elem(&mem, 0), (u32::from(small), 0));
    assert_eq!(rings[2].used_elem(&mem, 1), (u32::from(read_only), 0));
    assert_eq!(rings[2].used_elem(&mem, 2), (u32::from(good), 4));
}

#[test]
fn a_backend_that_cannot_stop_fails_the_pause_and_keeps_running() {
    let mem = memory();
    let (mut a, fake) = vsock(&mem, CID);
    let _rings = set_up_queues(&mut a, BACKEND, 3);
    fake.take();
    *fake.fail.lock().unwrap() = Some("VHOST_GET_VRING_BASE");
    assert_eq!(
        a.pause().unwrap_err().to_string(),
        "virtio-vsock: cannot stop vhost-vsock for a snapshot: VHOST_GET_VRING_BASE failed: \
         Input/output error (os error 5)"
    );
    // The transport resumed it: running again.
    assert_eq!(fake.take(), ["running 0", "get base 0", "running 1"]);
    *fake.fail.lock().unwrap() = None;
    a.pause().unwrap();
    a.resume().unwrap();
}

#[test]
fn another_cid_and_garbage_are_refused() {
    let mem = memory();
    let (mut a, _fake) = vsock(&mem, CID);
    let _rings = set_up_queues(&mut a, BACKEND, 3);
    a.pause().unwrap();
    let (ty, bytes) = save(&a);

    let (c, fake) = vsock(&mem, 4);
    assert_eq!(
        c.check_state(&decode(ty, &bytes).unwrap())
            .unwrap_err()
            .to_string(),
        "virtio-vsock state: the snapshot's guest CID is 3, this device's is 4: restore with \
         --vsock cid=3"
    );
    assert!(fake.take().is_empty());

    let at = bytes.len() - 8;
    for (cid, shown) in [(2u64, "2"), (u64::from(u32::MAX), "4294967295")] {
        let mut bad = bytes.clone();
        bad[at..].copy_from_slice(&cid.to_le_bytes());
        assert_eq!(
            decode(ty, &bad).unwrap_err().to_string(),
            format!(
                "virtio-vsock state: guest CID {shown} is not a guest's (from 3 to 4294967294)"
            )
        );
    }
    assert!(decode(ty, &bytes[..bytes.len() - 1]).is_err());
    let mut long = bytes.clone();
    long.push(0);
    assert!(decode(ty, &long).is_err());
    // A console's record is not a vsock's.
    let console = snapshot::RecordType::required(0x0143, 1);
    assert!(decode(console, &bytes).is_err());
}

#[test]
fn mutated_vsock_records_never_panic_are_canonical_and_checking_calls_nothing() {
    let mem = memory();
    let (mut a, _fake) = vsock(&mem, CID);
    let _rings = set_up_queues(&mut a, BACKEND, 3);
    a.pause().unwrap();
    let (ty, good) = save(&a);
    let (target, fake) = vsock(&mem, CID);
    let mut seed: u64 = 0x5eed_0153;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut accepted = 0;
    for _ in 0..3000 {
        let mut bytes = good.clone();
        match next() % 6 {
            0 => bytes.truncate((next() % (good.len() as u64 + 1)) as usize),
            1 => bytes.push(next() as u8),
            _ => {
                // Mostly the tail, where the queues and the CID are.
                let span = (next() % 120 + 1) as usize;
                let at = bytes.len() - 1 - (next() as usize % span.min(bytes.len()));
                bytes[at] = next() as u8;
            }
        }
        let Ok(state) = decode(ty, &bytes) else {
            continue;
        };
        accepted += 1;
        let (_, again) = devices::virtio::state::encode_record(INSTANCE, &state).unwrap();
        assert_eq!(again, bytes, "canonical");
        let _ = target.check_state(&state);
    }
    assert!(accepted > 100, "mutations reach past decoding ({accepted})");
    assert!(fake.take().is_empty(), "checking calls nothing");
}

/// A region registered through the control socket, as the registry hands it over.
fn registered(guest: u64) -> VhostMemoryRegion {
    VhostMemoryRegion {
        guest_phys_addr: guest,
        memory_size: 2 << 20,
        userspace_addr: 0x7f00_0000_0000,
        flags_padding: 0,
    }
}

#[test]
fn registered_memory_is_in_the_table_from_activation_on_and_follows_each_change() {
    const GIB: u64 = 1 << 30;
    let mem = memory();
    let fake = Arc::new(Fake::default());
    let dev = Vsock::with_backend(fake.clone(), CID, BACKEND, "vsock-memory", || {}).unwrap();
    let table = dev.memory();
    table.set_guest_ram(&mem);
    table.add(registered(4 * GIB)).unwrap();
    assert!(
        fake.take().is_empty(),
        "no owner yet: nothing is asked of the kernel"
    );

    // Activation: RAM and what is registered by then.
    let mut a = transport(Box::new(dev), &mem);
    let _rings = set_up_queues(&mut a, BACKEND, 3);
    let mut calls = set_up_calls(0, 0);
    calls[2] = "mem 2".to_string();
    assert_eq!(fake.take(), calls);
    assert_eq!(fake.tables.lock().unwrap().last().unwrap(), &[0, 4 * GIB]);

    // While it runs, each registration and unregistration is one new, whole table.
    table.add(registered(6 * GIB)).unwrap();
    assert_eq!(fake.take(), ["mem 3"]);
    assert_eq!(
        fake.tables.lock().unwrap().last().unwrap(),
        &[0, 4 * GIB, 6 * GIB]
    );
    table.remove(4 * GIB).unwrap();
    assert_eq!(fake.take(), ["mem 2"]);
    assert_eq!(fake.tables.lock().unwrap().last().unwrap(), &[0, 6 * GIB]);

    // A refused table fails the change and leaves the table as it was.
    *fake.fail.lock().unwrap() = Some("VHOST_SET_MEM_TABLE");
    assert_eq!(table.remove(6 * GIB).unwrap_err().errno(), libc::EIO);
    assert_eq!(
        table.regions().len(),
        2,
        "still named: the region must stay mapped"
    );
    *fake.fail.lock().unwrap() = None;
    let _ = fake.take();

    // After a reset the backend keeps its owner and table: changes still reach it, and
    // the next activation installs what is registered then.
    wr(&mut a, 0x14, 0, 1);
    let start = std::time::Instant::now();
    while rd(&mut a, 0x14, 1) != 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "reset"
        );
        std::thread::yield_now();
    }
    table.remove(6 * GIB).unwrap();
    assert_eq!(fake.tables.lock().unwrap().last().unwrap(), &[0]);
    table.add(registered(8 * GIB)).unwrap();
    let _ = fake.take();
    let _rings = set_up_queues(&mut a, BACKEND, 3);
    assert_eq!(fake.take()[2], "mem 2");
    assert_eq!(fake.tables.lock().unwrap().last().unwrap(), &[0, 8 * GIB]);
}

#[test]
fn the_kernel_served_queues_report_the_used_index_from_guest_memory_and_relayed_interrupts() {
    let mem = memory();
    let (mut a, fake) = vsock(&mem, CID);
    let statuses = a.queue_statuses();
    let before = statuses[1].snapshot(&mem);
    assert!(before.vhost && !before.active);
    let _rings = set_up_queues(&mut a, BACKEND, 3);
    kernel_served(&mem, &fake, 5, 2);
    let rx = statuses[0].snapshot(&mem);
    let tx = statuses[1].snapshot(&mem);
    assert!(rx.active && rx.vhost && tx.vhost);
    assert_eq!(
        (rx.device_used, tx.device_used),
        (5, 2),
        "the kernel's used.idx"
    );
    assert_eq!((rx.device_avail, rx.notifications), (0, 0), "not known");
    assert_eq!(rx.size, QSIZE);
    // The event queue is the VMM's own.
    assert!(!statuses[2].snapshot(&mem).vhost);

    // The kernel signals transmit's call eventfd: the worker relays it and counts it.
    let call = fake.call_fds.lock().unwrap()[1];
    let one = 1u64.to_ne_bytes();
    // SAFETY: writing 8 bytes to the device's call eventfd, open while the device lives.
    assert_eq!(unsafe { libc::write(call, one.as_ptr().cast(), 8) }, 8);
    let start = std::time::Instant::now();
    while statuses[1].snapshot(&mem).interrupts == 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "relayed interrupt counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(statuses[1].snapshot(&mem).interrupts, 1);
    assert_eq!(statuses[0].snapshot(&mem).interrupts, 0);
}
