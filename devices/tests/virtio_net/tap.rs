//! A real tap (needs `/dev/net/tun` and CAP_NET_ADMIN; under CI both are required):
//! creating, configuring, attaching by name and removing one, the errors for a missing or
//! wrong interface, and the host's ARP request reaching the guest through it.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::{TestDevice, wait_for, wo};
use devices::virtio::VirtioDevice;
use devices::virtio::net::tap::{TAP_OFFLOADS, Tap, TapError};
use devices::virtio::net::{Net, RX_QUEUE, VIRTIO_NET_F_GUEST_CSUM};
use vm_memory::{Bytes, GuestAddress};

use super::rig::*;

/// Whether the tap tests can run here; says why loudly when not, and fails under CI.
fn require_tun() -> bool {
    if Path::new("/dev/net/tun").exists() {
        return true;
    }
    let msg = "/dev/net/tun is missing: the real-tap tests cannot run";
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("\n*** SKIPPED: {msg} ***\n");
    false
}

/// A created tap, or `None` (said loudly; a failure under CI) without permission.
fn create_tap() -> Option<Tap> {
    match Tap::create("") {
        Ok(tap) => Some(tap),
        Err(e @ TapError::PermissionDenied { .. }) | Err(e @ TapError::OpenTun { .. })
            if std::env::var_os("CI").is_none() =>
        {
            eprintln!("\n*** SKIPPED: cannot create a tap: {e} ***\n");
            None
        }
        Err(e) => panic!("cannot create a tap: {e}"),
    }
}

fn sys_net(name: &str, attr: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/{attr}"))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn set_persist(fd: RawFd, on: bool) {
    // SAFETY: TUNSETPERSIST takes its argument by value; the descriptor is open.
    let ret = unsafe { libc::ioctl(fd, libc::TUNSETPERSIST as _, libc::c_ulong::from(on)) };
    assert_eq!(ret, 0, "TUNSETPERSIST: {}", std::io::Error::last_os_error());
}

#[test]
fn a_real_tap_is_created_configured_attached_by_name_and_removed() {
    if !require_tun() {
        return;
    }
    let Some(tap) = create_tap() else { return };
    let name = tap.name().to_owned();
    assert!(name.starts_with("vmm"), "{name}");
    assert_eq!(sys_net(&name, "tun_flags").as_deref(), Some("0x5002"));
    tap.set_vnet_hdr_size(12).unwrap();
    tap.set_offload(TAP_OFFLOADS).unwrap();
    // A /30 unlikely to be in use, from the pid.
    let third = (std::process::id() % 250) as u8;
    tap.set_ipv4(
        Ipv4Addr::new(10, 213, third, 1),
        Ipv4Addr::new(255, 255, 255, 252),
    )
    .unwrap();
    tap.up().unwrap();
    let flags = sys_net(&name, "flags").unwrap();
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap();
    assert_ne!(
        flags & libc::IFF_UP as u32,
        0,
        "{name} is not up: {flags:#x}"
    );

    // Attached: nobody else gets it, and creating it again is refused.
    assert!(matches!(Tap::open(&name), Err(TapError::Busy { .. })));
    assert!(matches!(Tap::create(&name), Err(TapError::Exists { .. })));

    // Made persistent and let go, it is an existing tap that open attaches.
    set_persist(tap.as_raw_fd(), true);
    drop(tap);
    let tap = Tap::open(&name).unwrap();
    assert_eq!(tap.name(), name);
    set_persist(tap.as_raw_fd(), false);
    drop(tap);
    wait_for("the tap to go away", || sys_net(&name, "flags").is_none());
}

#[test]
fn opening_a_missing_or_wrong_interface_says_what_is_wrong() {
    if !require_tun() {
        return;
    }
    let err = Tap::open("vmm-nosuch0").unwrap_err();
    assert!(matches!(err, TapError::NoSuchTap { .. }), "{err}");
    assert!(err.to_string().contains("vmm-nosuch0"), "{err}");
    // And it was not created as a side effect.
    assert_eq!(sys_net("vmm-nosuch0", "flags"), None);
    let err = Tap::open("lo").unwrap_err();
    assert!(matches!(err, TapError::NotATap { .. }), "{err}");
    let err = Tap::open("a/b").unwrap_err();
    assert!(matches!(err, TapError::InvalidName { .. }), "{err}");
}

#[test]
fn a_real_tap_carries_the_hosts_arp_request_to_the_guest() {
    if !require_tun() {
        return;
    }
    let Some(tap) = create_tap() else { return };
    let third = (std::process::id() % 250) as u8;
    let host = Ipv4Addr::new(10, 214, third, 1);
    tap.set_ipv4(host, Ipv4Addr::new(255, 255, 255, 252))
        .unwrap();
    tap.up().unwrap();
    let net = Net::new(tap, MAC, "virtio-net-tap", || {}).unwrap();
    let counters = net.counters();
    let mut t = TestDevice::inactive(net);
    let mem = t.mem.clone();
    for i in 0..16 {
        t.queues[RX_QUEUE].send(&mem, &[wo(RX_BUFS + i * 0x1000, 2048)]);
    }
    t.start(MRG | 1 << VIRTIO_NET_F_GUEST_CSUM);
    // Sending to the guest's address makes the host kernel ask for its MAC on the tap.
    let socket = UdpSocket::bind((host, 0)).unwrap();
    let guest = Ipv4Addr::new(10, 214, third, 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0u16;
    loop {
        let _ = socket.send_to(b"hello", (guest, 9));
        std::thread::sleep(Duration::from_millis(20));
        let used = t.queues[RX_QUEUE].used_idx(&mem);
        let arp = (seen..used).any(|i| {
            let (_, len) = t.queues[RX_QUEUE].used_elem(&mem, i);
            let mut f = vec![0u8; len as usize];
            let (id, _) = t.queues[RX_QUEUE].used_elem(&mem, i);
            mem.read_slice(&mut f, GuestAddress(RX_BUFS + u64::from(id) * 0x1000))
                .unwrap();
            // Ethertype after the header and two MAC addresses.
            f.len() >= 12 + 14 && f[12 + 12..12 + 14] == [0x08, 0x06]
        });
        if arp {
            break;
        }
        seen = used;
        assert!(
            Instant::now() < deadline,
            "no ARP request reached the guest"
        );
    }
    // Counted after its chains were published.
    wait_for("the ARP request counted", || {
        counters.rx_packets.load(Ordering::SeqCst) >= 1
    });
    t.device.reset();
}
