//! Putting virtio devices on PCI bus 0 for the builder: each behind the virtio-pci
//! transport, its BARs on the MMIO bus, its queue notifications as KVM ioeventfds, its
//! MSI-X vectors as irqfds on GSIs of their own (routed as the guest programs them), its
//! INTA# as a level-triggered irqfd with resample, and a BAR mover that follows the guest.
//! Every function is kept, with its PCI address, for snapshots ([`Transports`]).

use std::sync::{Arc, Mutex};

use devices::Bus;
use devices::pci::{self, BarAllocator, MsixRouteUpdate, PciDevice, PciRoot};
use devices::virtio::queue_status::QueueStatus;
use devices::virtio::{PciInterrupt, VirtioDevice, VirtioPciDevice};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use log::{debug, warn};
use vm_memory::GuestMemoryMmap;

use crate::builder::{BuildError, Result, kvm_step};
use crate::irq_routing::GsiRouter;

/// Every virtio function with its instance number (PCI address), in PCI order.
pub type Transports = Vec<(u32, Arc<Mutex<VirtioPciDevice>>)>;

/// What adding a virtio device to PCI bus 0 touches.
pub struct PciWiring<'a> {
    pub root: PciRoot,
    pub bars: BarAllocator,
    pub router: Arc<Mutex<GsiRouter>>,
    pub next_gsi: u32,
    pub vm_fd: &'a Arc<VmFd>,
    pub memory: &'a GuestMemoryMmap,
    pub mmio_bus: &'a Arc<Bus>,
    pub intx_lines: Vec<Arc<PciInterrupt>>,
    /// Every virtio function added, with its instance number (PCI address), in order.
    pub transports: Transports,
}

impl PciWiring<'_> {
    /// Puts `device` on the bus behind the virtio-pci transport: BARs on the MMIO bus,
    /// queue notifications as ioeventfds (no exit to the VMM), MSI-X vectors as irqfds
    /// on their own GSIs, routed as the guest programs them. Returns the device's live
    /// queue states.
    pub fn add_virtio(&mut self, device: Box<dyn VirtioDevice>) -> Result<Vec<Arc<QueueStatus>>> {
        let transport = VirtioPciDevice::new(device, Arc::new(self.memory.clone()))
            .map_err(|err| BuildError::Device(err.to_string()))?;
        let transport = Arc::new(Mutex::new(transport));
        let pci_device: Arc<Mutex<dyn PciDevice>> = transport.clone();
        let address = self
            .root
            .add_device(pci_device.clone())
            .map_err(|err| BuildError::Device(err.to_string()))?;
        self.transports
            .push((address.instance(), transport.clone()));
        for bar in pci::allocate_bars(&pci_device, &mut self.bars)
            .map_err(|err| BuildError::Device(err.to_string()))?
        {
            self.mmio_bus.insert(bar.bus_device, bar.base, bar.size)?;
        }
        let mut transport = transport.lock().unwrap_or_else(|p| p.into_inner());
        let notifiers = transport
            .queue_notifiers()
            .map_err(|err| BuildError::Device(err.to_string()))?
            .unwrap_or_default();
        for notifier in &notifiers {
            self.vm_fd
                .register_ioevent(
                    &notifier.eventfd,
                    &IoEventAddress::Mmio(notifier.addr),
                    NoDatamatch,
                )
                .map_err(kvm_step("register a queue notification"))?;
        }
        self.wire_intx(&mut transport, address.device)?;
        transport.set_bar_mover(crate::bar_mover::bar_mover(
            self.vm_fd.clone(),
            self.mmio_bus.clone(),
            notifiers,
        ));
        self.wire_msix(&transport)?;
        debug!("virtio device at PCI {address:?}");
        Ok(transport.queue_statuses())
    }

    /// Wires INTA# of the device in `slot` to its IOAPIC input (the one the DSDT's `_PRT`
    /// names) as a level: a KVM irqfd with a resample eventfd, which the run loop watches.
    fn wire_intx(&mut self, transport: &mut VirtioPciDevice, slot: u8) -> Result<()> {
        let gsi = arch::layout::pci_intx_gsi(slot);
        let interrupt = transport.interrupt();
        self.vm_fd
            .register_irqfd_with_resample(
                interrupt.intx_eventfd(),
                interrupt.intx_resample_eventfd(),
                gsi,
            )
            .map_err(kvm_step("wire a device's INTx line"))?;
        // GSIs 16..24 fit in the byte.
        transport.set_interrupt_line(u8::try_from(gsi).unwrap_or(u8::MAX));
        self.intx_lines.push(interrupt);
        Ok(())
    }

    fn wire_msix(&mut self, transport: &VirtioPciDevice) -> Result<()> {
        let msix = transport.msix();
        let mut msix = msix.lock().unwrap_or_else(|p| p.into_inner());
        let first_gsi = self.next_gsi;
        // GSIs are handed out from a u32 counter; running out is an error, not
        // a wrap onto another device's routes. (KVM refuses far sooner.)
        let next_gsi = first_gsi
            .checked_add(u32::from(msix.num_vectors()))
            .ok_or_else(|| {
                kvm_step("route a device interrupt")(kvm_ioctls::Error::new(libc::ENOSPC))
            })?;
        for vector in 0..msix.num_vectors() {
            if let Some(eventfd) = msix.eventfd(vector) {
                // vector < num_vectors, so this is below `next_gsi`.
                self.vm_fd
                    .register_irqfd(eventfd, first_gsi.saturating_add(u32::from(vector)))
                    .map_err(kvm_step("route a device interrupt"))?;
            }
        }
        self.next_gsi = next_gsi;
        let router = self.router.clone();
        msix.set_route_handler(Box::new(move |update: MsixRouteUpdate| {
            // The vector is one of this table's, so this is below `next_gsi`.
            let gsi = first_gsi.saturating_add(u32::from(update.vector));
            let mut router = router.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(err) = router.set_msi(gsi, update.message.address, update.message.data) {
                warn!(
                    "cannot route MSI-X vector {} (GSI {gsi}): {err}",
                    update.vector
                );
            }
        }));
        Ok(())
    }
}
