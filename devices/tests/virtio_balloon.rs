//! virtio-balloon through the queue-level test driver: the configuration space and the
//! host's handle, inflated pages really given back to the host (they read as zero
//! afterwards, the rest keeps its data), guest garbage skipped without stopping the
//! device, and the statistics buffer held and handed back on request.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{DATA, MEM_SIZE, TestDevice, ro, wait_for, wo};
use devices::virtio::balloon::{
    Balloon, BalloonError, BalloonHandle, BalloonStats, MAX_PFNS_PER_CHAIN,
    VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_STATS_VQ,
};
use devices::virtio::{
    ActivateError, ActiveQueue, Interrupt, Queue, QueueStatus, VIRTIO_ID_BALLOON, VirtioDevice,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const PAGE: u64 = 4096;
const GUEST_PAGES: u64 = MEM_SIZE as u64 / PAGE;
const STATS_VQ: u64 = 1 << VIRTIO_BALLOON_F_STATS_VQ;
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const STATS: usize = 2;
/// First frame of the pages the tests balloon: 4 MiB, clear of rings and buffers.
const BALLOON_PFN: u32 = 0x400;
/// Lets the worker run when a test checks that something did not happen.
const SETTLE: Duration = Duration::from_millis(50);

fn balloon() -> Balloon {
    Balloon::new(GUEST_PAGES, "test-balloon", || {}).unwrap()
}

fn active(features: u64) -> (TestDevice<Balloon>, BalloonHandle) {
    let t = TestDevice::activate(balloon(), features);
    let handle = t.device.handle();
    (t, handle)
}

fn config_u32(device: &impl VirtioDevice, offset: u64) -> u32 {
    let mut bytes = [0u8; 4];
    device.read_config(offset, &mut bytes);
    u32::from_le_bytes(bytes)
}

/// Whether `changed` was signalled since the last call (reading clears it).
fn was_changed(handle: &BalloonHandle) -> bool {
    handle.changed().read().is_ok()
}

fn fill_page(mem: &GuestMemoryMmap, pfn: u32, byte: u8) {
    let page = vec![byte; PAGE as usize];
    mem.write_slice(&page, GuestAddress(u64::from(pfn) * PAGE))
        .unwrap();
}

fn page_is(mem: &GuestMemoryMmap, pfn: u32, byte: u8) -> bool {
    let mut page = vec![!byte; PAGE as usize];
    mem.read_slice(&mut page, GuestAddress(u64::from(pfn) * PAGE))
        .unwrap();
    page.iter().all(|b| *b == byte)
}

/// Writes `pfns` as the little-endian array the driver sends; returns its length.
fn write_pfns(mem: &GuestMemoryMmap, addr: u64, pfns: &[u32]) -> u32 {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
    bytes.len() as u32
}

/// Writes statistics entries at `addr`; returns their length.
fn write_stats(mem: &GuestMemoryMmap, addr: u64, entries: &[(u16, u64)]) -> u32 {
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|(tag, value)| {
            let mut entry = tag.to_le_bytes().to_vec();
            entry.extend_from_slice(&value.to_le_bytes());
            entry
        })
        .collect();
    mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
    bytes.len() as u32
}

/// Waits until the device interrupted the driver for queue `queue`: it publishes the used
/// entries first and interrupts after, so waiting for the used index is not enough.
fn wait_interrupt(t: &TestDevice<Balloon>, queue: usize) {
    wait_for(&format!("an interrupt for queue {queue}"), || {
        t.interrupt.used_count(queue) > 0
    });
}

/// Inflates `pfns` in one chain and waits until the device returned it (`nth` chain).
fn inflate(t: &mut TestDevice<Balloon>, pfns: &[u32], nth: u16) {
    let len = write_pfns(&t.mem, DATA, pfns);
    t.queues[INFLATE].send(&t.mem, &[ro(DATA, len)]);
    t.wait_used(INFLATE, nth);
}

#[test]
fn offers_stats_and_deflate_on_oom_with_three_queues() {
    let b = balloon();
    assert_eq!(b.device_type(), VIRTIO_ID_BALLOON);
    assert_eq!(
        b.features(),
        (1 << VIRTIO_BALLOON_F_STATS_VQ) | (1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM)
    );
    assert_eq!(b.queue_max_sizes().len(), 3);
}

#[test]
fn config_space_is_16_bytes_and_reads_zero_past_the_end() {
    let b = balloon();
    let handle = b.handle();
    handle.set_target(0x0FED).unwrap();
    let mut config = [0xFFu8; 24];
    b.read_config(0, &mut config);
    let mut expected = [0u8; 24];
    expected[..4].copy_from_slice(&0x0FEDu32.to_le_bytes());
    assert_eq!(config, expected);
    let mut far = [0xFFu8; 4];
    b.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
    // An unaligned read of the middle of num_pages.
    let mut mid = [0u8; 2];
    b.read_config(1, &mut mid);
    assert_eq!(mid, [0x0F, 0]);
}

#[test]
fn set_target_while_inactive_is_only_stored() {
    let mut t = TestDevice::inactive(balloon());
    let handle = t.device.handle();
    handle.set_target(100).unwrap();
    assert_eq!(handle.target_pages(), 100);
    assert_eq!(config_u32(&t.device, 0), 100);
    assert!(was_changed(&handle));
    t.start(0);
    assert_eq!(t.interrupt.config_changes.load(Ordering::SeqCst), 0);
    assert_eq!(config_u32(&t.device, 0), 100);
}

#[test]
fn set_target_while_active_raises_a_config_interrupt() {
    let (t, handle) = active(0);
    handle.set_target(200).unwrap();
    assert_eq!(config_u32(&t.device, 0), 200);
    assert_eq!(t.interrupt.config_changes.load(Ordering::SeqCst), 1);
    assert!(was_changed(&handle));
    // The same target again changes nothing.
    handle.set_target(200).unwrap();
    assert_eq!(t.interrupt.config_changes.load(Ordering::SeqCst), 1);
    assert!(!was_changed(&handle));
}

#[test]
fn a_target_above_guest_ram_is_refused() {
    let handle = balloon().handle();
    handle.set_target(10).unwrap();
    let err = handle.set_target(GUEST_PAGES + 1).unwrap_err();
    assert!(matches!(
        err,
        BalloonError::TargetTooLarge { requested, max } if requested == GUEST_PAGES + 1 && max == GUEST_PAGES
    ));
    assert!(handle.set_target(u64::MAX).is_err());
    assert_eq!(handle.target_pages(), 10);
    handle.set_target(GUEST_PAGES).unwrap();
    assert_eq!(handle.target_pages(), GUEST_PAGES);
}

#[test]
fn the_driver_writing_actual_updates_the_handle() {
    let (mut t, handle) = active(0);
    let _ = was_changed(&handle);
    t.device.write_config(4, &50u32.to_le_bytes());
    assert_eq!(handle.actual_pages(), 50);
    assert_eq!(config_u32(&t.device, 4), 50);
    assert!(was_changed(&handle));
    // Partial writes change only their bytes.
    t.device.write_config(5, &[1]);
    assert_eq!(handle.actual_pages(), 50 + 256);
    // num_pages is the host's: a write straddling it changes only actual's bytes.
    t.device.write_config(2, &[9, 9, 7, 1]);
    assert_eq!(handle.target_pages(), 0);
    assert_eq!(handle.actual_pages(), 7 + 256);
    // Past the end is dropped.
    t.device.write_config(16, &[1, 2, 3, 4]);
    t.device.write_config(u64::MAX, &[1, 2]);
    assert_eq!(handle.actual_pages(), 7 + 256);
    assert!(was_changed(&handle));
    // Writing the same value is not a change.
    t.device.write_config(4, &(7u32 + 256).to_le_bytes());
    assert!(!was_changed(&handle));
}

#[test]
fn reset_forgets_actual_but_keeps_the_target() {
    let (mut t, handle) = active(0);
    handle.set_target(300).unwrap();
    t.device.write_config(4, &300u32.to_le_bytes());
    let _ = was_changed(&handle);
    t.device.reset();
    assert_eq!(handle.actual_pages(), 0);
    assert_eq!(handle.target_pages(), 300);
    assert!(was_changed(&handle));
    let before = t.interrupt.config_changes.load(Ordering::SeqCst);
    handle.set_target(10).unwrap();
    assert_eq!(
        t.interrupt.config_changes.load(Ordering::SeqCst),
        before,
        "a reset device raised a config interrupt"
    );
}

#[test]
fn inflated_pages_read_as_zero_and_the_others_keep_their_data() {
    let (mut t, _handle) = active(0);
    for pfn in BALLOON_PFN..BALLOON_PFN + 32 {
        fill_page(&t.mem, pfn, 0xAA);
    }
    // A contiguous run, then scattered pages (descending, as well).
    let contiguous: Vec<u32> = (BALLOON_PFN..BALLOON_PFN + 8).collect();
    inflate(&mut t, &contiguous, 1);
    let scattered = [BALLOON_PFN + 20, BALLOON_PFN + 12, BALLOON_PFN + 10];
    inflate(&mut t, &scattered, 2);
    assert_eq!(t.queues[INFLATE].used_elem(&t.mem, 0).1, 0);
    for pfn in BALLOON_PFN..BALLOON_PFN + 32 {
        let given_back = contiguous.contains(&pfn) || scattered.contains(&pfn);
        let expected = if given_back { 0 } else { 0xAA };
        assert!(page_is(&t.mem, pfn, expected), "page {pfn:#x}");
    }
    wait_interrupt(&t, INFLATE);
}

#[test]
fn a_pfn_array_split_across_descriptors_is_read_whole() {
    let (mut t, _handle) = active(0);
    fill_page(&t.mem, BALLOON_PFN, 0xAA);
    fill_page(&t.mem, BALLOON_PFN + 1, 0xAA);
    write_pfns(&t.mem, DATA, &[BALLOON_PFN, BALLOON_PFN + 1]);
    // The second frame number straddles the two buffers.
    t.queues[INFLATE].send(&t.mem, &[ro(DATA, 6), ro(DATA + 6, 2)]);
    t.wait_used(INFLATE, 1);
    assert!(page_is(&t.mem, BALLOON_PFN, 0));
    assert!(page_is(&t.mem, BALLOON_PFN + 1, 0));
}

#[test]
fn frames_outside_guest_ram_are_skipped_and_the_rest_released() {
    let (mut t, _handle) = active(0);
    fill_page(&t.mem, BALLOON_PFN, 0xAA);
    fill_page(&t.mem, (GUEST_PAGES - 1) as u32, 0xAA);
    let pfns = [
        GUEST_PAGES as u32,
        u32::MAX,
        BALLOON_PFN,
        (GUEST_PAGES - 1) as u32,
        GUEST_PAGES as u32 + 1,
        0x8000_0000,
    ];
    inflate(&mut t, &pfns, 1);
    assert!(page_is(&t.mem, BALLOON_PFN, 0));
    assert!(page_is(&t.mem, (GUEST_PAGES - 1) as u32, 0));
    assert!(!t.interrupt.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn odd_and_empty_chains_are_returned_and_the_device_keeps_serving() {
    let (mut t, _handle) = active(0);
    fill_page(&t.mem, BALLOON_PFN, 0xAA);
    fill_page(&t.mem, BALLOON_PFN + 1, 0xAA);
    // Two frames and three stray bytes: the frames count, the bytes are ignored.
    let len = write_pfns(&t.mem, DATA, &[BALLOON_PFN, BALLOON_PFN + 1, 0x0102_0304]);
    t.queues[INFLATE].send(&t.mem, &[ro(DATA, len - 1)]);
    // Too short to hold a frame at all.
    t.queues[INFLATE].send(&t.mem, &[ro(DATA, 3)]);
    // Only a device-writable buffer: nothing to read.
    t.queues[INFLATE].send(&t.mem, &[wo(DATA + 0x1000, 64)]);
    // A zero-length buffer.
    t.queues[INFLATE].send(&t.mem, &[ro(DATA, 0)]);
    t.wait_used(INFLATE, 4);
    assert!(page_is(&t.mem, BALLOON_PFN, 0));
    assert!(page_is(&t.mem, BALLOON_PFN + 1, 0));
    // The device is still serving.
    fill_page(&t.mem, BALLOON_PFN + 2, 0xAA);
    inflate(&mut t, &[BALLOON_PFN + 2], 5);
    assert!(page_is(&t.mem, BALLOON_PFN + 2, 0));
    assert!(!t.interrupt.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn frames_past_the_per_chain_limit_are_not_released() {
    let (mut t, _handle) = active(0);
    fill_page(&t.mem, BALLOON_PFN, 0xAA);
    fill_page(&t.mem, BALLOON_PFN + 1, 0xAA);
    let mut pfns = vec![BALLOON_PFN; MAX_PFNS_PER_CHAIN];
    pfns.push(BALLOON_PFN + 1);
    inflate(&mut t, &pfns, 1);
    assert!(page_is(&t.mem, BALLOON_PFN, 0));
    assert!(page_is(&t.mem, BALLOON_PFN + 1, 0xAA));
}

#[test]
fn a_descriptor_loop_needs_reset_and_other_queues_still_work() {
    let (mut t, _handle) = active(0);
    let len = write_pfns(&t.mem, DATA, &[BALLOON_PFN]);
    t.queues[INFLATE].write_desc(&t.mem, 0, DATA, len, common::F_NEXT, 0);
    t.queues[INFLATE].post(&t.mem, 0);
    t.wait_needs_reset();
    t.queues[DEFLATE].send(&t.mem, &[ro(DATA, len)]);
    t.wait_used(DEFLATE, 1);
}

#[test]
fn deflate_completes_chains_and_leaves_memory_alone() {
    let (mut t, _handle) = active(0);
    fill_page(&t.mem, BALLOON_PFN, 0xAA);
    let len = write_pfns(&t.mem, DATA, &[BALLOON_PFN, u32::MAX]);
    let first = t.queues[DEFLATE].send(&t.mem, &[ro(DATA, len)]);
    let second = t.queues[DEFLATE].send(&t.mem, &[ro(DATA, 1), wo(DATA + 0x100, 8)]);
    t.wait_used(DEFLATE, 2);
    assert_eq!(
        t.queues[DEFLATE].used_elem(&t.mem, 0),
        (u32::from(first), 0)
    );
    assert_eq!(
        t.queues[DEFLATE].used_elem(&t.mem, 1),
        (u32::from(second), 0)
    );
    assert!(page_is(&t.mem, BALLOON_PFN, 0xAA));
    wait_interrupt(&t, DEFLATE);
}

#[test]
fn buffers_posted_before_activation_are_served() {
    let mut t = TestDevice::inactive(balloon());
    fill_page(&t.mem, BALLOON_PFN, 0xAA);
    let len = write_pfns(&t.mem, DATA, &[BALLOON_PFN]);
    let head = t.queues[INFLATE].add_chain(&t.mem, &[ro(DATA, len)]);
    t.queues[INFLATE].publish(&t.mem, head);
    t.start(0);
    t.wait_used(INFLATE, 1);
    assert!(page_is(&t.mem, BALLOON_PFN, 0));
}

#[test]
fn stats_are_parsed_held_and_handed_back_on_request() {
    let (mut t, handle) = active(STATS_VQ);
    assert_eq!(handle.latest_stats(), None);
    let buf = DATA + 0x2000;
    let len = write_stats(&t.mem, buf, &[(4, 1 << 20), (5, 1 << 24), (2, 7)]);
    let head = t.queues[STATS].send(&t.mem, &[ro(buf, len)]);
    wait_for("first statistics", || handle.latest_stats().is_some());
    assert_eq!(
        handle.latest_stats(),
        Some(BalloonStats {
            free_memory: Some(1 << 20),
            total_memory: Some(1 << 24),
            major_faults: Some(7),
            ..Default::default()
        })
    );
    // The device holds the buffer until asked.
    std::thread::sleep(SETTLE);
    assert_eq!(t.queues[STATS].used_idx(&t.mem), 0);

    handle.request_stats();
    t.wait_used(STATS, 1);
    assert_eq!(t.queues[STATS].used_elem(&t.mem, 0), (u32::from(head), 0));
    wait_interrupt(&t, STATS);

    // The driver refreshes the buffer and posts it again.
    let len = write_stats(&t.mem, buf, &[(4, 2 << 20), (6, 3 << 20), (0, 1), (1, 2)]);
    t.queues[STATS].send(&t.mem, &[ro(buf, len)]);
    let refreshed = BalloonStats {
        free_memory: Some(2 << 20),
        available_memory: Some(3 << 20),
        swap_in: Some(1),
        swap_out: Some(2),
        ..Default::default()
    };
    wait_for("refreshed statistics", || {
        handle.latest_stats() == Some(refreshed)
    });

    // And again, once more on request.
    handle.request_stats();
    t.wait_used(STATS, 2);
}

/// The status of the statistics queue shows the buffer the device holds (taken, not used)
/// until the host asks for fresh numbers.
#[test]
fn the_stats_queue_status_shows_the_held_buffer() {
    let (mut t, handle) = active(STATS_VQ);
    let len = write_stats(&t.mem, DATA, &[(4, 1 << 20)]);
    t.queues[STATS].send(&t.mem, &[ro(DATA, len)]);
    let held = t.queues[STATS].wait_status(&t.mem, "the buffer taken", |s| {
        s.device_avail == 1 && s.notifications == 1
    });
    assert_eq!(
        (held.device_used, held.interrupts, held.broken),
        (0, 0, false)
    );
    handle.request_stats();
    let returned = t.queues[STATS].wait_status(&t.mem, "the buffer returned", |s| {
        s.device_used == 1 && s.interrupts == 1
    });
    assert_eq!(returned.device_avail, 1);
    assert_eq!(t.interrupt.used_count(STATS), 1);
}

#[test]
fn a_malformed_stats_queue_shows_broken_and_the_others_do_not() {
    let (mut t, _handle) = active(STATS_VQ);
    // Descriptor 0 points at itself: a loop.
    t.queues[STATS].write_desc(&t.mem, 0, DATA, 16, common::F_NEXT, 0);
    t.queues[STATS].post(&t.mem, 0);
    t.wait_needs_reset();
    assert!(t.queues[STATS].snapshot(&t.mem).broken);
    assert!(!t.queues[INFLATE].snapshot(&t.mem).broken);
    // The other queues are served, and their statuses follow.
    inflate(&mut t, &[BALLOON_PFN], 1);
    let s = t.queues[INFLATE].wait_status(&t.mem, "the inflate chain used", |s| s.device_used == 1);
    assert_eq!((s.device_avail, s.notifications), (1, 1));
}

#[test]
fn stats_with_unknown_tags_and_a_truncated_entry_keep_what_they_can() {
    let (mut t, handle) = active(STATS_VQ);
    let buf = DATA + 0x2000;
    let len = write_stats(
        &t.mem,
        buf,
        &[(7, 99), (0xBEEF, 1), (10, 2), (9, 4), (8, 5), (3, 6)],
    );
    // Cut the last entry short.
    t.queues[STATS].send(&t.mem, &[ro(buf, len - 3)]);
    wait_for("statistics", || handle.latest_stats().is_some());
    assert_eq!(
        handle.latest_stats(),
        Some(BalloonStats {
            disk_caches: Some(99),
            hugetlb_failures: Some(4),
            hugetlb_allocations: Some(5),
            ..Default::default()
        })
    );
}

#[test]
fn a_second_stats_buffer_sends_the_first_back() {
    let (mut t, handle) = active(STATS_VQ);
    let first_len = write_stats(&t.mem, DATA, &[(4, 1)]);
    let first = t.queues[STATS].send(&t.mem, &[ro(DATA, first_len)]);
    let second_len = write_stats(&t.mem, DATA + 0x100, &[(4, 2)]);
    t.queues[STATS].send(&t.mem, &[ro(DATA + 0x100, second_len)]);
    t.wait_used(STATS, 1);
    assert_eq!(t.queues[STATS].used_elem(&t.mem, 0), (u32::from(first), 0));
    wait_for("second statistics", || {
        handle.latest_stats().and_then(|s| s.free_memory) == Some(2)
    });
}

#[test]
fn a_stats_request_without_a_buffer_does_nothing() {
    let (mut t, handle) = active(STATS_VQ);
    handle.request_stats();
    std::thread::sleep(SETTLE);
    let len = write_stats(&t.mem, DATA, &[(5, 9)]);
    t.queues[STATS].send(&t.mem, &[ro(DATA, len)]);
    wait_for("statistics", || handle.latest_stats().is_some());
    std::thread::sleep(SETTLE);
    assert_eq!(t.queues[STATS].used_idx(&t.mem), 0);
    assert!(!t.interrupt.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn reset_forgets_the_stats() {
    let (mut t, handle) = active(STATS_VQ);
    let len = write_stats(&t.mem, DATA, &[(5, 9)]);
    t.queues[STATS].send(&t.mem, &[ro(DATA, len)]);
    wait_for("statistics", || handle.latest_stats().is_some());
    t.device.reset();
    assert_eq!(handle.latest_stats(), None);
}

#[test]
fn without_stats_negotiated_the_stats_queue_is_left_alone() {
    let (mut t, handle) = active(0);
    let len = write_stats(&t.mem, DATA, &[(5, 9)]);
    t.queues[STATS].send(&t.mem, &[ro(DATA, len)]);
    handle.request_stats();
    std::thread::sleep(SETTLE);
    assert_eq!(handle.latest_stats(), None);
    assert_eq!(t.queues[STATS].used_idx(&t.mem), 0);
    // Inflate still works.
    fill_page(&t.mem, BALLOON_PFN, 0xAA);
    inflate(&mut t, &[BALLOON_PFN], 1);
    assert!(page_is(&t.mem, BALLOON_PFN, 0));
}

/// The balloon as a driver sees it when it enables only the first two queues.
#[derive(Debug)]
struct WithoutStatsQueue(Balloon);

impl VirtioDevice for WithoutStatsQueue {
    fn device_type(&self) -> u32 {
        self.0.device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.0.queue_max_sizes()[..2]
    }
    fn features(&self) -> u64 {
        self.0.features()
    }
    fn ack_features(&mut self, features: u64) {
        self.0.ack_features(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.0.read_config(offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.0.write_config(offset, data);
    }
    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        self.0.activate(mem, interrupt, queues)
    }
    fn reset(&mut self) {
        self.0.reset();
    }
    fn quiesced(&self) -> bool {
        self.0.quiesced()
    }
}

#[test]
fn stats_negotiated_but_its_queue_not_enabled_still_activates() {
    let mut t = TestDevice::activate(WithoutStatsQueue(balloon()), STATS_VQ);
    let handle = t.device.0.handle();
    handle.request_stats();
    fill_page(&t.mem, BALLOON_PFN, 0xAA);
    let len = write_pfns(&t.mem, DATA, &[BALLOON_PFN]);
    t.queues[INFLATE].send(&t.mem, &[ro(DATA, len)]);
    t.wait_used(INFLATE, 1);
    assert!(page_is(&t.mem, BALLOON_PFN, 0));
    t.queues[DEFLATE].send(&t.mem, &[ro(DATA, len)]);
    t.wait_used(DEFLATE, 1);
    assert_eq!(handle.latest_stats(), None);
}

#[test]
fn inflate_and_deflate_queues_are_required() {
    let mut b = balloon();
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
    let interrupt: Arc<dyn Interrupt> = Arc::new(common::RecordingInterrupt::default());
    let err = b
        .activate(mem.clone(), interrupt.clone(), Vec::new())
        .unwrap_err();
    assert!(matches!(err, ActivateError::MissingQueue(0)));
    let mut queue = Queue::new(16);
    queue.desc_table = 0x1_0000;
    queue.avail_ring = 0x1_1000;
    queue.used_ring = 0x1_2000;
    queue.ready = true;
    queue.validate(&mem).unwrap();
    let inflate_only = ActiveQueue {
        index: INFLATE,
        queue,
        notify: EventFd::new(EFD_NONBLOCK).unwrap(),
        status: Arc::new(QueueStatus::new()),
    };
    let err = b.activate(mem, interrupt, vec![inflate_only]).unwrap_err();
    assert!(matches!(err, ActivateError::MissingQueue(1)));
}

#[test]
fn with_event_idx_the_stats_queue_publishes_avail_event() {
    // Without avail_event moving on, an EVENT_IDX driver would stop notifying the queue
    // after its first buffer, and refreshed statistics would never be read.
    let (mut t, handle) = active(STATS_VQ | 1 << 29);
    let avail_event = GuestAddress(t.queues[STATS].used + 4 + 8 * u64::from(common::QSIZE));
    let len = write_stats(&t.mem, DATA, &[(5, 9)]);
    t.queues[STATS].send(&t.mem, &[ro(DATA, len)]);
    wait_for("avail_event 1", || {
        t.mem.read_obj::<u16>(avail_event).unwrap() == 1
    });
    handle.request_stats();
    t.wait_used(STATS, 1);
    let len = write_stats(&t.mem, DATA, &[(5, 10)]);
    t.queues[STATS].send(&t.mem, &[ro(DATA, len)]);
    wait_for("avail_event 2", || {
        t.mem.read_obj::<u16>(avail_event).unwrap() == 2
    });
    assert_eq!(handle.latest_stats().and_then(|s| s.total_memory), Some(10));
}
