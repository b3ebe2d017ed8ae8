//! KVM's GSI routing table for this VM: the in-kernel PIC and IOAPIC pins KVM routes by
//! default, plus one MSI route per device interrupt vector. `KVM_SET_GSI_ROUTING` replaces
//! the whole table, so every update re-sends the defaults with the current MSI routes.
//!
//! Device vectors are delivered by irqfds on GSIs from [`FIRST_MSI_GSI`] up; when the guest
//! programs a vector's MSI address and data (an MSI-X table write), the device model calls
//! back here and the route for that GSI is updated.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
};
use kvm_ioctls::VmFd;

/// IOAPIC pins (GSIs 0..24) come first; device MSI vectors use the GSIs after them.
pub const FIRST_MSI_GSI: u32 = 24;
const IOAPIC_PINS: u32 = 24;
const PIC_PINS: u32 = 16;

/// The MSI routes, and the VM they are installed in.
pub struct GsiRouter {
    vm_fd: Arc<VmFd>,
    msi: BTreeMap<u32, (u64, u32)>,
}

impl GsiRouter {
    pub fn new(vm_fd: Arc<VmFd>) -> GsiRouter {
        GsiRouter {
            vm_fd,
            msi: BTreeMap::new(),
        }
    }

    /// Routes `gsi` to the MSI message (`address`, `data`) and installs the table.
    /// A route that is already installed costs nothing.
    pub fn set_msi(&mut self, gsi: u32, address: u64, data: u32) -> Result<(), kvm_ioctls::Error> {
        if self.msi.get(&gsi) == Some(&(address, data)) {
            return Ok(());
        }
        let previous = self.msi.insert(gsi, (address, data));
        let installed =
            routing_table(&self.msi).and_then(|table| self.vm_fd.set_gsi_routing(&table));
        if installed.is_err() {
            // KVM kept the old table: remember that one, so a retry is not skipped.
            match previous {
                Some(route) => self.msi.insert(gsi, route),
                None => self.msi.remove(&gsi),
            };
        }
        installed
    }
}

/// KVM's default routes (PIC and IOAPIC) followed by the MSI routes.
fn routing_table(msi: &BTreeMap<u32, (u64, u32)>) -> Result<KvmIrqRouting, kvm_ioctls::Error> {
    let mut entries: Vec<kvm_irq_routing_entry> = Vec::new();
    for pin in 0..IOAPIC_PINS {
        entries.push(irqchip_route(pin, KVM_IRQCHIP_IOAPIC, pin));
    }
    for pin in 0..PIC_PINS {
        let chip = if pin < 8 {
            KVM_IRQCHIP_PIC_MASTER
        } else {
            KVM_IRQCHIP_PIC_SLAVE
        };
        entries.push(irqchip_route(pin, chip, pin % 8));
    }
    for (&gsi, &(address, data)) in msi {
        entries.push(msi_route(gsi, address, data));
    }
    KvmIrqRouting::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))
}

fn irqchip_route(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = irqchip;
    entry.u.irqchip.pin = pin;
    entry
}

fn msi_route(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    // The two 32-bit halves of the address, bit for bit.
    let [l0, l1, l2, l3, h0, h1, h2, h3] = address.to_le_bytes();
    entry.u.msi.address_lo = u32::from_le_bytes([l0, l1, l2, l3]);
    entry.u.msi.address_hi = u32::from_le_bytes([h0, h1, h2, h3]);
    entry.u.msi.data = data;
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keeps_kvm_defaults_and_adds_msi_routes() {
        let mut msi = BTreeMap::new();
        msi.insert(FIRST_MSI_GSI, (0xfee0_1000, 0x41));
        let table = routing_table(&msi).expect("table");
        let entries = table.as_slice();
        assert_eq!(entries.len(), (IOAPIC_PINS + PIC_PINS + 1) as usize);
        let last = entries[entries.len() - 1];
        assert_eq!(last.gsi, FIRST_MSI_GSI);
        assert_eq!(last.type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: this entry was written as an MSI route just above.
        let route = unsafe { last.u.msi };
        assert_eq!(
            (route.address_lo, route.address_hi, route.data),
            (0xfee0_1000, 0, 0x41)
        );
        assert!(
            entries
                .iter()
                .any(|e| e.gsi == 4 && e.type_ == KVM_IRQ_ROUTING_IRQCHIP),
            "the serial port's GSI 4 keeps its IOAPIC route"
        );
    }
}
