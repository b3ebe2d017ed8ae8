//! Moving a virtio device's BAR where the guest reprograms it: its range on the MMIO bus
//! and its queue-notification ioeventfds follow it, as on real hardware, so a guest that
//! reassigns PCI resources (Linux does when it finds a BAR it does not like) keeps its
//! devices. A move is refused (the BAR stays, and reads back, where it was) when the new
//! range leaves the 32-bit MMIO window or overlaps another device.
//!
//! Runs on the vCPU thread that carries out the guest's configuration write, so it may
//! only use what the vCPU's seccomp policy allows (`KVM_IOEVENTFD`).

use std::sync::Arc;

use devices::Bus;
use devices::pci::{MMIO_HOLE_END, MMIO_HOLE_START};
use devices::virtio::pci_transport::{BarMove, BarMover, QueueNotifier, VIRTIO_BAR_SIZE};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};

/// The mover for one device: its notifiers (whose addresses are where they are registered
/// now), the bus and the VM.
pub fn bar_mover(vm_fd: Arc<VmFd>, bus: Arc<Bus>, mut notifiers: Vec<QueueNotifier>) -> BarMover {
    Box::new(move |bar: BarMove| {
        let in_window = bar.new >= MMIO_HOLE_START
            && bar
                .new
                .checked_add(VIRTIO_BAR_SIZE)
                .is_some_and(|end| end <= MMIO_HOLE_END);
        if !in_window {
            return Err(format!(
                "outside the MMIO window {MMIO_HOLE_START:#x}..{MMIO_HOLE_END:#x}"
            ));
        }
        bus.relocate(bar.old, bar.new).map_err(|e| e.to_string())?;
        for notifier in &mut notifiers {
            move_notifier(&vm_fd, notifier, bar)?;
        }
        Ok(())
    })
}

/// Re-registers one queue's ioeventfd at the same offset in the moved BAR.
fn move_notifier(vm_fd: &VmFd, notifier: &mut QueueNotifier, bar: BarMove) -> Result<(), String> {
    let offset = notifier.addr.wrapping_sub(bar.old);
    let new_addr = bar.new.wrapping_add(offset);
    vm_fd
        .unregister_ioevent(
            &notifier.eventfd,
            &IoEventAddress::Mmio(notifier.addr),
            NoDatamatch,
        )
        .map_err(|e| format!("cannot remove queue {}'s notification: {e}", notifier.queue))?;
    vm_fd
        .register_ioevent(
            &notifier.eventfd,
            &IoEventAddress::Mmio(new_addr),
            NoDatamatch,
        )
        .map_err(|e| format!("cannot move queue {}'s notification: {e}", notifier.queue))?;
    notifier.addr = new_addr;
    Ok(())
}
