//! Driving the nested lab (tools/lab, docs/lab.md) from tests: whether it can run, one
//! run at a time per test binary, and the guest kit's `guest.run=<base64>` contract.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// The lab is slow (QEMU TCG around a nested KVM): tests in one binary take turns.
static LAB: Mutex<()> = Mutex::new(());

/// How long one lab run may take before the test fails (tools/lab has its own timeout).
/// The slowest lab test takes about 200 s on a busy host; a run that takes longer than
/// tools/lab's timeout has hung, and is better cut short and run again (see [`run`]).
const LAB_LIMIT: Duration = Duration::from_secs(600);
const LAB_TIMEOUT_ARG: &str = "480";
/// tools/lab's exit status when its run timed out.
const LAB_TIMED_OUT: i32 = 124;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the lab can run here; says so loudly when not, and fails under CI.
pub fn require_lab() -> bool {
    let kit = repo().join("target/lab/guest/vmlinuz");
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    let ready = kit.exists() && qemu.exists();
    if !ready {
        let message = "THIS TEST NEEDS THE NESTED LAB: run `tools/lab kit` (tools/test does) first";
        if std::env::var_os("CI").is_some() {
            panic!("{message}; CI must be able to run every test");
        }
        eprintln!("\n!!! SKIPPED: {message} !!!\n");
    }
    ready
}

/// Standard base64 with padding, as busybox `base64 -d` in the guest init expects.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The kernel command line that makes the guest kit's init run `script`.
pub fn guest_params(script: &str) -> String {
    format!("console=ttyS0 guest.run={}", base64(script.as_bytes()))
}

/// The result of one lab run.
pub struct LabRun {
    pub status: Option<i32>,
    pub output: String,
}

impl LabRun {
    /// The value after `prefix` on the first output line that starts with it; panics with
    /// the whole output when there is none.
    pub fn value(&self, prefix: &str) -> &str {
        self.values(prefix)
            .first()
            .copied()
            .unwrap_or_else(|| panic!("no '{prefix}' line; lab output:\n{}", self.output))
    }

    /// The values after `prefix` on every output line that starts with it, in order.
    pub fn values(&self, prefix: &str) -> Vec<&str> {
        self.output
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .collect()
    }

    /// Asserts the lab script reported `vmm exit=0` and exited 0 itself.
    pub fn assert_vmm_exited_0(&self) {
        assert!(
            self.output.contains("lab-script: vmm exit=0"),
            "lab output:\n{}",
            self.output
        );
        assert_eq!(self.status, Some(0), "lab output:\n{}", self.output);
    }

    /// A device counter from `vmm stats`'s table (`KIND ID COUNTER VALUE`), for the first
    /// device of `kind`; panics with the whole output when there is none.
    pub fn stats_counter(&self, kind: &str, counter: &str) -> u64 {
        self.output
            .lines()
            .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [k, _, c, v] if k == kind && c == counter => v.parse().ok(),
                _ => None,
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {kind} {counter} counter in stats; lab output:\n{}",
                    self.output
                )
            })
    }

    /// The numbers of the guest init's `vmm-guest: cpus=N memtotal_kb=M` line.
    pub fn guest_report(&self) -> Option<(u32, u64)> {
        let line = self
            .output
            .lines()
            .find(|l| l.contains("vmm-guest: cpus="))?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name))
                .map(|value| value.trim().to_string())
        };
        Some((
            field("cpus=")?.parse().ok()?,
            field("memtotal_kb=")?.parse().ok()?,
        ))
    }
}

/// The shell prelude of a lab script: start vmm on /guest/vmlinuz with `options`, `mem_mib`
/// of RAM, the guest running `guest_script`, its console on stdout or in `serial`, and wait
/// (bounded) for its control socket /tmp/vmm.sock. `$vmm` holds its pid.
pub fn start_vmm(options: &[&str], mem_mib: u32, guest_script: &str, serial: &str) -> String {
    let params = guest_params(guest_script);
    let options: String = options.iter().map(|o| format!("{o} ")).collect();
    format!(
        r#"rm -f /tmp/vmm.sock
vmm run --socket /tmp/vmm.sock --serial {serial} {options}--mem {mem_mib} --cpus 1 \
    --initrd /guest/initrd.img --params "{params}" /guest/vmlinuz &
vmm=$!
i=0
while [ ! -S /tmp/vmm.sock ]; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then echo "lab-script: no control socket after 30 s"; kill $vmm; exit 90; fi
    sleep 0.1
done
echo "lab-script: socket is up"
"#
    )
}

/// The shell epilogue of a lab script: wait for vmm, report its status and exit with it.
pub const WAIT_VMM: &str = r#"wait $vmm
status=$?
echo "lab-script: vmm exit=$status"
exit $status
"#;

/// Runs `script` with `sh` in the outer VM.
pub fn run_in_lab(name: &str, script: &str) -> LabRun {
    let scratch = super::Scratch::new(name);
    let host_script = scratch.write("script.sh", script.as_bytes());
    let file = format!("{}=/lab-script.sh", host_script.display());
    run(
        &["--file".to_string(), file],
        &["sh".to_string(), "/lab-script.sh".to_string()],
    )
}

/// What tools/lab prints when the outer VM itself went away mid-run (exit status 125).
const OUTER_VM_DIED: &str = "lab: outer VM ended";
/// What vmm logs when its guest triple-faults; in the lab that is the emulator's doing
/// far more often than the guest's (docs/lab.md).
const GUEST_TRIPLE_FAULT: &str = "triple fault (KVM_EXIT_SHUTDOWN)";

/// Runs `tools/lab [extra] -- command...` with the vmm under test, waiting its turn.
///
/// The outer VM (nested SVM under QEMU's TCG) sometimes dies or freezes mid-run, taking the
/// test's command with it: TCG lets an interrupt in right after `VMRUN`, where the outer
/// kernel still runs on the inner guest's GS base, and the outer kernel oopses (docs/lab.md,
/// "Known lab artefacts"). The same defect makes inner guests triple-fault, under QEMU as
/// under vmm, and sometimes leaves an outer CPU stuck in the kernel while the inner VMM
/// exits (tools/lab's `softlockup_panic=1` makes that an outer death too). That is the lab failing, not the code under test, so such a run (tools/lab
/// reports the outer VM ended, or its timeout hit, or vmm reports its guest triple-faulted)
/// is tried again, loudly, up to [`LAB_ATTEMPTS`] runs in all. Any other failure, or the
/// last attempt's, is reported as it is: a vmm bug that makes the guest triple-fault does
/// it every time.
pub fn run(lab_args: &[String], command: &[String]) -> LabRun {
    let _turn = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut attempt = 1;
    loop {
        let run = run_once(lab_args, command);
        if attempt == LAB_ATTEMPTS || !lab_failed(&run) {
            return run;
        }
        eprintln!(
            "\n!!! THE LAB'S OUTER VM DIED OR HUNG, OR ITS INNER GUEST TRIPLE-FAULTED, MID-RUN \
             (status {:?}); RUNNING THE TEST'S LAB COMMAND AGAIN (attempt {} of {}). This \
             run's output:\n{}\n!!!\n",
            run.status,
            attempt + 1,
            LAB_ATTEMPTS,
            run.output
        );
        attempt += 1;
    }
}

/// How many times [`run`] tries a lab command that the lab itself broke. On 2026-11-22 a
/// 30 s boot test met the lab's defect about once in twelve runs, so two in a row happen
/// about once in 150 and three about once in 1700.
const LAB_ATTEMPTS: u32 = 3;

/// Whether a run ended the way the lab's own defects end one (docs/lab.md), rather than
/// with the command's status.
fn lab_failed(run: &LabRun) -> bool {
    (run.status == Some(125) && run.output.contains(OUTER_VM_DIED))
        || run.status == Some(LAB_TIMED_OUT)
        || run.output.contains(GUEST_TRIPLE_FAULT)
}

fn run_once(lab_args: &[String], command: &[String]) -> LabRun {
    let mut lab = Command::new(repo().join("tools/lab"));
    lab.env("VMM_BIN", env!("CARGO_BIN_EXE_vmm"))
        .args(["--timeout", LAB_TIMEOUT_ARG])
        .args(lab_args)
        .arg("--")
        .args(command);
    let output = super::run_with_timeout(lab, LAB_LIMIT);
    LabRun {
        status: output.status.code(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}
