//! Proves that `include/vmm_control.h` and this crate declare the same ABI, with the
//! system C compiler: a C file generated here static-asserts every structure's size and
//! every field's offset and size (values from `offset_of!` on the Rust structures), every
//! constant (values from `vm_control::wire`), and every function's type (each pinned on
//! the Rust side by a typed function pointer in the same table); it is compiled with
//! `-Wall -Werror` and linked against both `libvmm_control.a` and `libvmm_control.so`, so
//! every declared function must exist. The functions the header declares, the ones the
//! libraries export and [`EXPORTED_FUNCTIONS`] must be the same set. And the header must
//! compile as C++.

use std::collections::BTreeSet;
use std::ffi::{c_char, c_int};
use std::fmt::Write as _;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use vm_control::wire::{self, ErrorKind, counter_id, device_kind, event_kind, queue_state};
use vmm_control::types::*;
use vmm_control::*;

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

fn lib_dir() -> PathBuf {
    PathBuf::from(env!("VMM_CONTROL_LIB_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("vmm-control-header-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run the compiler");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `_Static_assert`s for one structure: its size, and each field's offset and size.
macro_rules! layout {
    ($c:expr, $rust:ty, $name:literal, [$($field:ident),* $(,)?]) => {{
        let c: &mut String = $c;
        let _ = writeln!(c, "_Static_assert(sizeof(struct {}) == {}, \"sizeof {}\");",
            $name, size_of::<$rust>(), $name);
        let mut covered = 0usize;
        $(
            let size = {
                fn field_size<T>(_: impl Fn(&$rust) -> &T) -> usize { size_of::<T>() }
                field_size(|s: &$rust| &s.$field)
            };
            covered += size;
            let _ = writeln!(c,
                "_Static_assert(offsetof(struct {0}, {1}) == {2} && sizeof(((struct {0} *)0)->{1}) == {3}, \"{0}.{1}\");",
                $name, stringify!($field), offset_of!($rust, $field), size);
        )*
        assert_eq!(covered, size_of::<$rust>(), "{}: every field listed, no padding", $name);
    }};
}

/// For each function: the Rust declaration must have the Rust type (checked by rustc) and
/// the header's declaration the C type (checked by the C compiler).
macro_rules! functions {
    ($c:expr, $($name:ident: $rust:ty, $cty:literal;)*) => {{
        let c: &mut String = $c;
        let mut names = Vec::new();
        $(
            let _pinned: $rust = $name;
            let _ = writeln!(c,
                "_Static_assert(__builtin_types_compatible_p(__typeof__(&{0}), {1}), \"{0}\");",
                stringify!($name), $cty);
            let _ = writeln!(c, "    (void *)&{},", stringify!($name));
            names.push(stringify!($name));
        )*
        names
    }};
}

fn constants(c: &mut String) {
    let mut define = |name: &str, value: u64| {
        let _ = writeln!(c, "_Static_assert({name} == {value}, \"{name}\");");
    };
    define(
        "VMM_CONTROL_MAX_DEVICE_COUNTERS",
        wire::MAX_DEVICE_COUNTERS as u64,
    );
    define("VMM_CONTROL_MAX_QUEUES", wire::MAX_QUEUE_STATUSES as u64);
    define(
        "VMM_CONTROL_MAX_MEMORY_REGIONS",
        wire::MAX_MEMORY_LIST_ENTRIES as u64,
    );
    define("VMM_CONTROL_PAGE_SIZE", wire::PAGE_SIZE);
    define(
        "VMM_CONTROL_CONSOLE_WRITE",
        wire::attach_flags::WRITE.into(),
    );
    define(
        "VMM_CONTROL_CONSOLE_NO_HISTORY",
        wire::attach_flags::NO_HISTORY.into(),
    );
    define(
        "VMM_CONTROL_CONSOLE_FRAME_MAX",
        wire::MAX_CONSOLE_FRAME as u64,
    );
    define(
        "VMM_CONTROL_SNAPSHOT_STOP",
        wire::snapshot_flags::STOP.into(),
    );
    define("VMM_CONTROL_ERR_NONE", 0);
    for (name, kind) in [
        ("BAD_SIZE", ErrorKind::BadSize),
        ("INVALID_TYPE", ErrorKind::InvalidType),
        ("UNSUPPORTED_VERSION", ErrorKind::UnsupportedVersion),
        ("EXPECT_FD", ErrorKind::ExpectFd),
        ("UNEXPECTED_FD", ErrorKind::UnexpectedFd),
        ("ZERO_ID", ErrorKind::ZeroId),
        ("RESERVED_NON_ZERO", ErrorKind::ReservedNonZero),
        ("INVALID_ARGUMENT", ErrorKind::InvalidArgument),
        ("FAILED", ErrorKind::Failed),
        ("UNSUPPORTED", ErrorKind::Unsupported),
    ] {
        define(&format!("VMM_CONTROL_ERR_{name}"), kind as u64);
    }
    // Every kind the protocol has is in the list above.
    assert_eq!(ErrorKind::from_u32(11), None);
    use event_kind::*;
    for (name, v) in [
        ("POWERED_OFF", POWERED_OFF),
        ("RESET_REQUESTED", RESET_REQUESTED),
        ("CRASHED", CRASHED),
        ("PAUSED", PAUSED),
        ("RESUMED", RESUMED),
        ("BALLOON_CHANGED", BALLOON_CHANGED),
    ] {
        define(&format!("VMM_CONTROL_EVENT_{name}"), v.into());
    }
    use device_kind::*;
    for (name, v) in [
        ("SERIAL", SERIAL),
        ("I8042", I8042),
        ("CMOS", CMOS),
        ("ACPI_PM", ACPI_PM),
        ("BALLOON", BALLOON),
        ("BLOCK", BLOCK),
        ("NET", NET),
        ("RNG", RNG),
        ("CONSOLE", CONSOLE),
        ("VSOCK", VSOCK),
    ] {
        define(&format!("VMM_CONTROL_DEVICE_{name}"), v.into());
    }
    use counter_id::*;
    for (name, v) in [
        ("REG_READS", REG_READS),
        ("REG_WRITES", REG_WRITES),
        ("INTERRUPTS", INTERRUPTS),
        ("BYTES_IN", BYTES_IN),
        ("BYTES_OUT", BYTES_OUT),
        ("BYTES_DROPPED", BYTES_DROPPED),
        ("REQUESTS", REQUESTS),
        ("IO_ERRORS", IO_ERRORS),
        ("GUEST_MEMORY_FREE", GUEST_MEMORY_FREE),
        ("GUEST_MEMORY_TOTAL", GUEST_MEMORY_TOTAL),
        ("GUEST_MEMORY_AVAILABLE", GUEST_MEMORY_AVAILABLE),
        ("FLUSHES", FLUSHES),
        ("PACKETS_IN", PACKETS_IN),
        ("PACKETS_OUT", PACKETS_OUT),
        ("PACKETS_DROPPED", PACKETS_DROPPED),
        ("INVALID_CHAINS", INVALID_CHAINS),
    ] {
        define(&format!("VMM_CONTROL_COUNTER_{name}"), v.into());
    }
    define("VMM_CONTROL_QUEUE_ACTIVE", queue_state::ACTIVE.into());
    define("VMM_CONTROL_QUEUE_EVENT_IDX", queue_state::EVENT_IDX.into());
    define("VMM_CONTROL_QUEUE_BROKEN", queue_state::BROKEN.into());
    define("VMM_CONTROL_QUEUE_VHOST", queue_state::VHOST.into());
}

/// The C program: every check above, and a table of every function's address (so linking
/// it proves each one exists in the library).
fn check_program() -> (String, Vec<&'static str>) {
    let mut c =
        String::from("#include <stddef.h>\n#include <stdio.h>\n#include \"vmm_control.h\"\n\n");
    layout!(
        &mut c,
        VmmControlError,
        "vmm_control_error",
        [struct_size, kind, errnum, min_version, max_version, detail]
    );
    layout!(
        &mut c,
        VmmControlDeviceCounter,
        "vmm_control_device_counter",
        [device_kind, device_id, counter, value]
    );
    layout!(
        &mut c,
        VmmControlStats,
        "vmm_control_stats",
        [
            struct_size,
            vcpu_count,
            uptime_ns,
            guest_memory_bytes,
            balloon_target_pages,
            balloon_actual_pages,
            exits_io,
            exits_mmio,
            exits_hlt,
            exits_shutdown,
            exits_system_event,
            exits_fail_entry,
            exits_internal_error,
            exits_other,
            utime_us,
            stime_us,
            maxrss_kib,
            minflt,
            majflt,
            device_counter_count,
            device_counters_omitted,
            device_counters,
        ]
    );
    layout!(
        &mut c,
        VmmControlQueue,
        "vmm_control_queue",
        [
            device_kind,
            device_id,
            queue,
            size,
            state,
            driver_avail,
            device_avail,
            device_used,
            used_event,
            reserved,
            notifications,
            interrupts,
        ]
    );
    layout!(
        &mut c,
        VmmControlQueues,
        "vmm_control_queues",
        [struct_size, count, omitted, reserved, queues]
    );
    layout!(
        &mut c,
        VmmControlMemoryRegion,
        "vmm_control_memory_region",
        [slot, reserved, guest_addr, size]
    );
    layout!(
        &mut c,
        VmmControlMemoryList,
        "vmm_control_memory_list",
        [struct_size, total, count, reserved, regions]
    );
    layout!(
        &mut c,
        VmmControlEvent,
        "vmm_control_event",
        [struct_size, kind, arg0, arg1]
    );
    constants(&mut c);
    let mut table = String::new();
    type Ctl = *mut VmmControl;
    type Sub = *mut VmmControlSubscription;
    let names = functions!(&mut table,
        vmm_control_connect: unsafe extern "C" fn(*const c_char, u32, *mut Ctl) -> c_int, "int (*)(const char *, uint32_t, struct vmm_control **)";
        vmm_control_close: unsafe extern "C" fn(Ctl), "void (*)(struct vmm_control *)";
        vmm_control_set_timeout: unsafe extern "C" fn(Ctl, u32) -> c_int, "int (*)(struct vmm_control *, uint32_t)";
        vmm_control_version: unsafe extern "C" fn(Ctl, *mut u16, *mut u16) -> c_int, "int (*)(struct vmm_control *, uint16_t *, uint16_t *)";
        vmm_control_stop: unsafe extern "C" fn(Ctl) -> c_int, "int (*)(struct vmm_control *)";
        vmm_control_pause: unsafe extern "C" fn(Ctl) -> c_int, "int (*)(struct vmm_control *)";
        vmm_control_resume: unsafe extern "C" fn(Ctl) -> c_int, "int (*)(struct vmm_control *)";
        vmm_control_balloon_set_target: unsafe extern "C" fn(Ctl, u64) -> c_int, "int (*)(struct vmm_control *, uint64_t)";
        vmm_control_balloon_adjust: unsafe extern "C" fn(Ctl, i64) -> c_int, "int (*)(struct vmm_control *, int64_t)";
        vmm_control_get_stats: unsafe extern "C" fn(Ctl, *mut VmmControlStats) -> c_int, "int (*)(struct vmm_control *, struct vmm_control_stats *)";
        vmm_control_get_queues: unsafe extern "C" fn(Ctl, *mut VmmControlQueues) -> c_int, "int (*)(struct vmm_control *, struct vmm_control_queues *)";
        vmm_control_register_memory:
            unsafe extern "C" fn(Ctl, c_int, u64, *mut u32, *mut u64) -> c_int, "int (*)(struct vmm_control *, int, uint64_t, uint32_t *, uint64_t *)";
        vmm_control_unregister_memory: unsafe extern "C" fn(Ctl, u32) -> c_int, "int (*)(struct vmm_control *, uint32_t)";
        vmm_control_list_memory:
            unsafe extern "C" fn(Ctl, u32, *mut VmmControlMemoryList) -> c_int, "int (*)(struct vmm_control *, uint32_t, struct vmm_control_memory_list *)";
        vmm_control_console_attach:
            unsafe extern "C" fn(Ctl, u32, *mut c_int, *mut u32) -> c_int, "int (*)(struct vmm_control *, uint32_t, int *, uint32_t *)";
        vmm_control_snapshot:
            unsafe extern "C" fn(Ctl, c_int, c_int, u32) -> c_int, "int (*)(struct vmm_control *, int, int, uint32_t)";
        vmm_control_subscribe: unsafe extern "C" fn(Ctl, *mut Sub) -> c_int, "int (*)(struct vmm_control *, struct vmm_control_subscription **)";
        vmm_control_subscription_fd:
            unsafe extern "C" fn(*const VmmControlSubscription) -> c_int, "int (*)(const struct vmm_control_subscription *)";
        vmm_control_next_event: unsafe extern "C" fn(Sub, *mut VmmControlEvent) -> c_int, "int (*)(struct vmm_control_subscription *, struct vmm_control_event *)";
        vmm_control_subscription_close: unsafe extern "C" fn(Sub), "void (*)(struct vmm_control_subscription *)";
        vmm_control_last_error: extern "C" fn() -> *const c_char, "const char *(*)(void)";
        vmm_control_last_error_info: unsafe extern "C" fn(*mut VmmControlError) -> c_int, "int (*)(struct vmm_control_error *)";
    );
    let (asserts, addresses): (Vec<&str>, Vec<&str>) =
        table.lines().partition(|l| l.starts_with("_Static_assert"));
    c.push_str(&asserts.join("\n"));
    c.push_str("\n\nstatic void *const functions[] = {\n");
    c.push_str(&addresses.join("\n"));
    c.push_str(
        "\n};\n\nint main(void) {\n    size_t n = sizeof functions / sizeof functions[0];\n    \
         for (size_t i = 0; i < n; i++)\n        if (!functions[i]) return 1;\n    \
         printf(\"%zu functions\\n\", n);\n    return 0;\n}\n",
    );
    (c, names)
}

#[test]
fn the_header_matches_the_rust_declarations_and_both_libraries() {
    let (program, names) = check_program();
    let dir = scratch("abi");
    let source = dir.join("abi_check.c");
    std::fs::write(&source, &program).expect("write the C program");
    let include = include_dir();
    let lib = lib_dir();
    // Against the shared library.
    let shared = dir.join("abi_shared");
    run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(&include)
        .arg(&source)
        .arg("-L")
        .arg(&lib)
        .args(["-lvmm_control", "-o"])
        .arg(&shared));
    let out = run(Command::new(&shared).env("LD_LIBRARY_PATH", &lib));
    assert_eq!(
        out.trim(),
        format!("{} functions", EXPORTED_FUNCTIONS.len())
    );
    // Against the static library.
    let static_ = dir.join("abi_static");
    run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(&include)
        .arg(&source)
        .arg(lib.join("libvmm_control.a"))
        .args([
            "-lpthread",
            "-ldl",
            "-lm",
            "-lrt",
            "-lutil",
            "-lgcc_s",
            "-o",
        ])
        .arg(&static_));
    let out = run(&mut Command::new(&static_));
    assert_eq!(
        out.trim(),
        format!("{} functions", EXPORTED_FUNCTIONS.len())
    );
    let _ = std::fs::remove_dir_all(&dir);

    // The same set of functions everywhere.
    let table: BTreeSet<&str> = names.into_iter().collect();
    let exported: BTreeSet<&str> = EXPORTED_FUNCTIONS.iter().copied().collect();
    assert_eq!(table, exported, "the check table and EXPORTED_FUNCTIONS");
    assert_eq!(
        declared_functions(),
        exported,
        "the header and EXPORTED_FUNCTIONS"
    );
    assert_eq!(
        library_functions(&["-D", &lib.join("libvmm_control.so").display().to_string()]),
        exported,
        "libvmm_control.so exports"
    );
    assert_eq!(
        library_functions(&[&lib.join("libvmm_control.a").display().to_string()]),
        exported,
        "libvmm_control.a exports"
    );
}

/// Names of the functions the header declares.
fn declared_functions() -> BTreeSet<&'static str> {
    let header = std::fs::read_to_string(include_dir().join("vmm_control.h")).expect("header");
    let header: &'static str = header.leak();
    header
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('#') && !l.starts_with('*'))
        .filter_map(|l| {
            let name = l.split('(').next()?.rsplit([' ', '*']).next()?;
            (l.contains('(') && name.starts_with("vmm_control_")).then_some(name)
        })
        .collect()
}

/// Global functions named `vmm_control_*` that `nm ARGS` lists as defined.
fn library_functions(args: &[&str]) -> BTreeSet<&'static str> {
    let out = run(Command::new("nm").args(["-g", "--defined-only"]).args(args));
    let out: &'static str = out.leak();
    out.lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [_, "T", name] if name.starts_with("vmm_control_") => Some(name),
            _ => None,
        })
        .collect()
}

#[test]
fn the_header_compiles_as_cpp() {
    let dir = scratch("cpp");
    let source = dir.join("check.cc");
    std::fs::write(
        &source,
        "#include \"vmm_control.h\"\n\
         static_assert(sizeof(vmm_control_stats) > 0, \"complete\");\n\
         int main() { vmm_control_stats s{}; s.struct_size = sizeof s; return vmm_control_get_stats(nullptr, &s) == 0; }\n",
    )
    .expect("write");
    run(Command::new("c++")
        .args([
            "-fsyntax-only",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-x",
            "c++",
            "-I",
        ])
        .arg(include_dir())
        .arg(&source));
    run(Command::new("c++")
        .args(["-fsyntax-only", "-Wall", "-Werror", "-x", "c++", "-I"])
        .arg(include_dir())
        .arg(include_dir().join("vmm_control.h")));
    let _ = std::fs::remove_dir_all(&dir);
}
