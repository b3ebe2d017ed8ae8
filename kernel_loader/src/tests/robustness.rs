//! Mutated and truncated images never panic the loader, the lab's real Debian kernels
//! load when present, and the error type fits inside other error types.

use crate::test_util::*;
use crate::*;

/// Mutates `base` in ways aimed at header fields and sizes.
fn mutate(rng: &mut Rng, base: &[u8], hot: &[usize]) -> Vec<u8> {
    let mut img = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 => {
                let i = rng.below(img.len());
                if let Some(b) = img.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
            1 | 2 => {
                // Overwrite a header field with an extreme or random value.
                let off = hot[rng.below(hot.len())];
                let v: u64 = match rng.below(5) {
                    0 => 0,
                    1 => u64::MAX,
                    2 => 1 << (rng.below(64)),
                    3 => rng.next() >> rng.below(64),
                    _ => rng.next(),
                };
                let width = [1, 2, 4, 8][rng.below(4)];
                for (k, byte) in v.to_le_bytes().iter().take(width).enumerate() {
                    if let Some(b) = img.get_mut(off + k) {
                        *b = *byte;
                    }
                }
            }
            3 => {
                let len = rng.below(img.len() + 1);
                img.truncate(len);
            }
            4 => {
                let extra = rng.below(64);
                img.extend((0..extra).map(|_| rng.next() as u8));
            }
            _ => {
                let i = rng.below(img.len());
                if let Some(b) = img.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
        }
    }
    img
}

#[test]
fn mutated_and_truncated_images_never_panic() {
    let mem = mem(20 * MIB);
    let bz = BzImage {
        init_size: 0x10_0000,
        ..Default::default()
    }
    .build();
    let bz_hot: Vec<usize> = (0x1f1..0x26c).collect();
    let elf = Elf {
        pvh_desc: Some(0x100_0010u32.to_le_bytes().to_vec()),
        ..Default::default()
    }
    .build();
    let elf_hot: Vec<usize> = (0..ELF_DATA_OFFSET).collect();

    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut err) = (0, 0);
    for round in 0..6000 {
        let (base, hot) = if round % 2 == 0 {
            (&bz, &bz_hot)
        } else {
            (&elf, &elf_hot)
        };
        let img = mutate(&mut rng, base, hot);
        match load_kernel(&mem, &img) {
            Ok(k) => {
                ok += 1;
                assert!(k.kernel_start <= k.entry_addr && k.entry_addr < k.kernel_end);
            }
            Err(e) => {
                err += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    eprintln!("robustness: {ok} loaded, {err} rejected");
    assert!(ok > 100 && err > 100, "ok {ok} err {err}");
}

/// Loads the lab's Debian kernel if another job has built it; skipped otherwise.
#[test]
fn real_debian_bzimage_loads_when_present() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/lab/guest/vmlinuz");
    let Ok(image) = std::fs::read(path) else {
        eprintln!("skipping: {path} not present");
        return;
    };
    let mem = mem(512 * MIB);
    let k = load_kernel(&mem, &image).unwrap();
    assert_eq!(k.protocol, BootProtocol::Linux64);
    assert_eq!(k.entry_addr.0, k.kernel_start.0 + 0x200);
    assert!({ k.setup_header.version } >= 0x020c);
    assert!(k.cmdline_max >= 255);
}

/// Loads the lab's uncompressed Debian `vmlinux` if present; skipped otherwise.
#[test]
fn real_debian_vmlinux_loads_when_present() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/lab/guest/vmlinux");
    let Ok(image) = std::fs::read(path) else {
        eprintln!("skipping: {path} not present");
        return;
    };
    let mem = mem(512 * MIB);
    let k = load_kernel(&mem, &image).unwrap();
    eprintln!(
        "vmlinux: {:?} entry {:#x} kernel [{:#x}, {:#x})",
        k.protocol, k.entry_addr.0, k.kernel_start.0, k.kernel_end.0
    );
    assert!(k.kernel_start <= k.entry_addr && k.entry_addr < k.kernel_end);
    assert_eq!(k.cmdline_max, 2048);
}

#[test]
fn error_is_send_sync_and_static_for_use_in_other_error_types() {
    fn assert_bounds<T: std::error::Error + Send + Sync + 'static>() {}
    assert_bounds::<Error>();
}
