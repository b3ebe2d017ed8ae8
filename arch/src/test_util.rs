//! Helpers for tests that need a real KVM VM / vCPU.

use kvm_ioctls::{Kvm, VcpuFd, VmFd};

/// A VM with the in-kernel irqchip and one vCPU (id 0).
pub(crate) struct TestVcpu {
    pub kvm: Kvm,
    pub vm: VmFd,
    pub vcpu: VcpuFd,
}

/// Opens /dev/kvm for test `name`. Without KVM the test is skipped loudly,
/// unless `CI` is set, where a missing /dev/kvm is a configuration error.
pub(crate) fn kvm_or_skip(name: &str) -> Option<Kvm> {
    match Kvm::new() {
        Ok(kvm) => Some(kvm),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!(
                "!!!!! {name}: /dev/kvm is unavailable ({e}) and CI is set: KVM tests must run in CI !!!!!"
            )
        }
        Err(e) => {
            eprintln!("!!!!! SKIPPING {name}: /dev/kvm is unavailable ({e}) !!!!!");
            None
        }
    }
}

/// A VM + irqchip + vCPU 0, or `None` (after a loud message) without KVM.
pub(crate) fn test_vcpu(name: &str) -> Option<TestVcpu> {
    let kvm = kvm_or_skip(name)?;
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.set_tss_address(crate::layout::KVM_TSS_ADDRESS as usize)
        .expect("KVM_SET_TSS_ADDR");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    Some(TestVcpu { kvm, vm, vcpu })
}
