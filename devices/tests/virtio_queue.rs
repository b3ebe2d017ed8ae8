//! The split virtqueue on its own: ring validation at activation, the error
//! each kind of bad chain produces, and EVENT_IDX / NO_INTERRUPT
//! interrupt suppression.

use devices::virtio::{Queue, QueueError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const SIZE: u16 = 8;

fn setup(event_idx: bool) -> (GuestMemoryMmap, Queue) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let mut q = Queue::new(16);
    q.size = SIZE;
    q.desc_table = DESC;
    q.avail_ring = AVAIL;
    q.used_ring = USED;
    q.ready = true;
    q.event_idx = event_idx;
    q.validate(&mem).unwrap();
    (mem, q)
}

fn desc(mem: &GuestMemoryMmap, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    mem.write_obj(d, GuestAddress(DESC + 16 * i)).unwrap();
}

/// Publishes heads `0..n` in the avail ring.
fn publish(mem: &GuestMemoryMmap, n: u16) {
    for i in 0..n {
        mem.write_obj(i, GuestAddress(AVAIL + 4 + 2 * u64::from(i % SIZE)))
            .unwrap();
    }
    mem.write_obj(n, GuestAddress(AVAIL + 2)).unwrap();
}

#[test]
fn misaligned_or_out_of_memory_rings_are_rejected() {
    let (mem, mut q) = setup(false);
    q.desc_table = DESC + 8;
    assert!(matches!(
        q.validate(&mem),
        Err(QueueError::InvalidRing { .. })
    ));
    q.desc_table = DESC;
    q.used_ring = USED + 2;
    assert!(matches!(
        q.validate(&mem),
        Err(QueueError::InvalidRing { .. })
    ));
    q.used_ring = 0x10000 - 8;
    assert!(matches!(
        q.validate(&mem),
        Err(QueueError::InvalidRing { .. })
    ));
    q.used_ring = u64::MAX - 3;
    assert!(matches!(
        q.validate(&mem),
        Err(QueueError::InvalidRing { .. })
    ));
}

#[test]
fn sizes_that_are_zero_odd_or_too_big_are_rejected() {
    let (mem, mut q) = setup(false);
    for size in [0, 6, 32] {
        q.size = size;
        assert!(matches!(
            q.validate(&mem),
            Err(QueueError::InvalidSize { .. })
        ));
    }
}

#[test]
fn each_bad_chain_yields_its_error_and_the_queue_moves_on() {
    let (mem, mut q) = setup(false);
    // Head 0: a loop; head 1: addr + len wraps; head 2: outside memory.
    desc(&mem, 0, 0x8000, 8, 2 | 1, 0);
    desc(&mem, 1, u64::MAX, 2, 2, 0);
    desc(&mem, 2, 0xfff0, 0x20, 2, 0);
    // Head 3: indirect without the feature; head 4: a good buffer.
    desc(&mem, 3, 0x9000, 16, 4, 0);
    desc(&mem, 4, 0x8000, 8, 2, 0);
    publish(&mem, 5);
    assert!(matches!(q.pop(&mem), Err(QueueError::ChainTooLong(8))));
    assert!(matches!(
        q.pop(&mem),
        Err(QueueError::DescriptorOverflow { .. })
    ));
    assert!(matches!(
        q.pop(&mem),
        Err(QueueError::DescriptorOutOfMemory { .. })
    ));
    assert!(matches!(q.pop(&mem), Err(QueueError::IndirectNotAllowed)));
    let chain = q.pop(&mem).unwrap().unwrap();
    assert_eq!(chain.head, 4);
    assert_eq!(chain.descriptors.len(), 1);
    assert!(q.pop(&mem).unwrap().is_none());
}

#[test]
fn head_index_outside_the_table_is_rejected() {
    let (mem, mut q) = setup(false);
    mem.write_obj(SIZE, GuestAddress(AVAIL + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    assert!(matches!(
        q.pop(&mem),
        Err(QueueError::DescriptorIndex { index: 8, len: 8 })
    ));
}

#[test]
fn indirect_with_next_flag_is_rejected() {
    let (mem, mut q) = setup(false);
    q.indirect = true;
    desc(&mem, 0, 0x9000, 16, 4 | 1, 1);
    publish(&mem, 1);
    assert!(matches!(q.pop(&mem), Err(QueueError::IndirectWithNext)));
}

#[test]
fn event_idx_interrupts_only_when_used_event_is_crossed() {
    let (mem, mut q) = setup(true);
    for i in 0..3 {
        desc(&mem, i, 0x8000, 8, 2, 0);
    }
    publish(&mem, 3);
    let used_event = GuestAddress(AVAIL + 4 + 2 * u64::from(SIZE));
    // Driver wants an interrupt after the first used entry (used_event 0).
    mem.write_obj(0u16, used_event).unwrap();
    let c = q.pop(&mem).unwrap().unwrap();
    q.add_used(&mem, c.head, 8).unwrap();
    assert!(q.needs_notification(&mem).unwrap());
    // Driver now waits for entry 5: entries 1 and 2 must not interrupt.
    mem.write_obj(5u16, used_event).unwrap();
    for _ in 0..2 {
        let c = q.pop(&mem).unwrap().unwrap();
        q.add_used(&mem, c.head, 8).unwrap();
    }
    assert!(!q.needs_notification(&mem).unwrap());
    // Going idle publishes avail_event = next index to consume.
    assert!(!q.enable_notification(&mem).unwrap());
    let avail_event: u16 = mem
        .read_obj(GuestAddress(USED + 4 + 8 * u64::from(SIZE)))
        .unwrap();
    assert_eq!(avail_event, 3);
    assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 3);
}

#[test]
fn no_interrupt_flag_suppresses_without_event_idx() {
    let (mem, mut q) = setup(false);
    desc(&mem, 0, 0x8000, 8, 2, 0);
    desc(&mem, 1, 0x8000, 8, 2, 0);
    publish(&mem, 2);
    mem.write_obj(1u16, GuestAddress(AVAIL)).unwrap();
    let c = q.pop(&mem).unwrap().unwrap();
    q.add_used(&mem, c.head, 8).unwrap();
    assert!(!q.needs_notification(&mem).unwrap());
    mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
    let c = q.pop(&mem).unwrap().unwrap();
    q.add_used(&mem, c.head, 8).unwrap();
    assert!(q.needs_notification(&mem).unwrap());
    // Nothing new since: no interrupt.
    assert!(!q.needs_notification(&mem).unwrap());
}

#[test]
fn a_queue_that_was_never_enabled_refuses_work() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let mut q = Queue::new(16);
    assert!(matches!(q.pop(&mem), Err(QueueError::NotReady)));
    assert!(matches!(q.add_used(&mem, 0, 0), Err(QueueError::NotReady)));
    q.ready = true;
    q.size = 0;
    assert!(matches!(q.pop(&mem), Err(QueueError::NotReady)));
}

#[test]
fn a_batch_of_used_chains_is_published_with_one_index_update() {
    let (mem, mut q) = setup(false);
    for i in 0..3 {
        desc(&mem, i, 0x8000 + 0x100 * i, 0x100, 2, 0);
    }
    publish(&mem, 3);
    let heads: Vec<u16> = (0..3)
        .map(|_| q.pop(&mem).unwrap().expect("a chain").head)
        .collect();

    q.add_used_batch(&mem, &[(heads[0], 10), (heads[1], 20), (heads[2], 30)])
        .unwrap();

    let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used_idx, 3);
    for (i, (head, len)) in [(0u32, 10u32), (1, 20), (2, 30)].into_iter().enumerate() {
        let at = USED + 4 + 8 * i as u64;
        assert_eq!(mem.read_obj::<u32>(GuestAddress(at)).unwrap(), head);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(at + 4)).unwrap(), len);
    }
    assert!(
        q.needs_notification(&mem).unwrap(),
        "one interrupt covers the batch"
    );
}
