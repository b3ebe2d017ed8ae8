//! Debian's stock kernel under a jailed `vmm` in the nested lab (tools/lab, docs/lab.md):
//! with `--jail`, the VMM runs in namespaces of its own, in an empty read-only root, as an
//! unprivileged uid with no capabilities, and the guest still gets its disk, network,
//! balloon and rng, and the control socket still drives it. The outer VM runs from its
//! initramfs, which `pivot_root` cannot leave; the jail moves its root over it instead.

mod common;

use common::lab::{WAIT_VMM, require_lab, run_in_lab, start_vmm};

#[test]
fn debian_runs_jailed_with_a_disk_a_nic_the_balloon_and_the_rng_and_stops_on_request() {
    if !require_lab() {
        return;
    }
    let guest = r#"ifconfig eth0 10.0.3.2 netmask 255.255.255.0 up
echo guest-ping: $(ping -c 2 -W 5 10.0.3.1 >/dev/null 2>&1 && echo ok || echo failed)
echo guest-disk: $(dd if=/dev/vda bs=4096 count=16 2>/dev/null | sha256sum | cut -d' ' -f1)
echo guest-hwrng: $(dd if=/dev/hwrng bs=64 count=2 2>/dev/null | wc -c)
echo guest-balloon: $(ls /sys/bus/virtio/drivers/virtio_balloon | grep -c virtio)
echo guest-done
sleep 600
"#;
    let script = format!(
        r#"dd if=/dev/urandom of=/tmp/disk.img bs=4096 count=16 2>/dev/null
echo host-disk: $(sha256sum /tmp/disk.img | cut -d' ' -f1)
{start}
wait_for guest-done
# $vmm is the reaper outside the jail; the VMM is its one child.
child=$(vmm_proc)
echo "jailed-capeff: $(grep CapEff /proc/$child/status | tr -s '\t ' ' ' | cut -d' ' -f2)"
echo "jailed-uid: $(grep '^Uid' /proc/$child/status | tr -s '\t ' ' ' | cut -d' ' -f2)"
echo "jailed-root: $(ls -A /proc/$child/root | wc -l)"
echo "jailed-netns: $([ "$(readlink /proc/$child/ns/net)" != "$(readlink /proc/self/ns/net)" ] && echo own || echo shared)"
vmm stats /tmp/vmm.sock
vmm stop /tmp/vmm.sock
echo "lab-script: stop exit=$?"
{WAIT_VMM}"#,
        start = start_vmm(
            &[
                "--jail",
                "--disk",
                "/tmp/disk.img",
                "--net",
                "host-ip=10.0.3.1,netmask=255.255.255.0",
                "--balloon",
                "--rng",
            ],
            256,
            guest,
            "file"
        ),
    );

    let run = run_in_lab("lab-jail", &script);
    let output = &run.output;

    assert_eq!(run.value("guest-ping:"), "ok", "{output}");
    assert_eq!(
        run.value("guest-disk:"),
        run.value("host-disk:"),
        "the guest read the disk: {output}"
    );
    assert_eq!(run.value("guest-hwrng:"), "128", "{output}");
    assert_eq!(run.value("guest-balloon:"), "1", "{output}");
    assert_eq!(run.value("jailed-capeff:"), "0000000000000000", "{output}");
    assert_eq!(run.value("jailed-uid:"), "65534", "{output}");
    assert_eq!(run.value("jailed-root:"), "0", "an empty root: {output}");
    assert_eq!(run.value("jailed-netns:"), "own", "{output}");
    assert!(run.stats_counter("block", "bytes_in") >= 65536, "{output}");
    assert_eq!(run.value("lab-script: stop exit="), "0", "{output}");
    run.assert_vmm_exited_0();
}
