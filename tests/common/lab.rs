//! Driving the nested lab (tools/lab, docs/lab.md) from tests: whether it can run, one
//! run at a time per test binary, and the guest kit's `guest.run=<base64>` contract.

use std::io::Write;
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
        super::skip(message);
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

/// Where lab scripts put the guest console when they need to read it while vmm runs
/// (`--serial file=...`).
pub const CONSOLE_FILE: &str = "/tmp/console.log";

/// The shell prelude of a lab script: start vmm on /guest/vmlinuz with `options`, `mem_mib`
/// of RAM, the guest running `guest_script`, its console on stdout (`"stdio"`) or in
/// [`CONSOLE_FILE`] (`"file"`), and wait (bounded) for its control socket /tmp/vmm.sock.
/// `$vmm` holds its pid.
///
/// With the console in the file, the prelude also defines `wait_for MARKER`, which waits
/// (at most 10 minutes) until the guest has printed MARKER and otherwise ends the run with
/// status 91 (or at once with 92 when vmm has exited, a guest that triple-faulted among
/// them, rather than waiting out tools/lab's timeout), and prints the whole console when the script exits, however it exits, so
/// the guest's kernel log is always in the run's output (and checked, see [`run`]).
pub fn start_vmm(options: &[&str], mem_mib: u32, guest_script: &str, console: &str) -> String {
    start_vmm_with_params(options, mem_mib, &guest_params(guest_script), console)
}

/// [`start_vmm`] with the whole kernel command line given (`params`, which must carry the
/// guest's `guest.run=`, see [`guest_params`]), for a test that adds kernel options.
pub fn start_vmm_with_params(
    options: &[&str],
    mem_mib: u32,
    params: &str,
    console: &str,
) -> String {
    start_vmm_with_cpus(1, options, mem_mib, params, console)
}

/// [`start_vmm_with_params`] with `cpus` vCPUs.
pub fn start_vmm_with_cpus(
    cpus: u32,
    options: &[&str],
    mem_mib: u32,
    params: &str,
    console: &str,
) -> String {
    let options: String = options.iter().map(|o| format!("{o} ")).collect();
    let (serial, console_helpers) = match console {
        "file" => (
            format!("file={CONSOLE_FILE}"),
            format!(
                r#"rm -f {CONSOLE_FILE}
trap 'echo "--- guest console ---"; cat {CONSOLE_FILE}; echo "--- end of guest console ---"' EXIT
wait_for() {{
    i=0
    until grep -q "$1" {CONSOLE_FILE} 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 6000 ]; then echo "lab-script: the guest never printed $1"; kill $vmm; exit 91; fi
        # A guest that is gone prints nothing more: say how vmm ended, at once.
        if ! kill -0 $vmm 2>/dev/null; then
            wait $vmm; echo "lab-script: vmm exited with $? before the guest printed $1"; exit 92
        fi
        sleep 0.1
    done
}}
"#
            ),
        ),
        _ => ("stdio".to_string(), String::new()),
    };
    format!(
        r#"{console_helpers}rm -f /tmp/vmm.sock
vmm run --socket /tmp/vmm.sock --serial {serial} {options}--mem {mem_mib} --cpus {cpus} \
    --initrd /guest/initrd.img --params "{params}" /guest/vmlinuz &
vmm=$!
i=0
while [ ! -S /tmp/vmm.sock ]; do
    i=$((i + 1))
    if ! kill -0 $vmm 2>/dev/null; then wait $vmm; echo "lab-script: vmm exited with $? before its socket was up"; exit 90; fi
    if [ $i -gt 300 ]; then echo "lab-script: no control socket after 30 s"; kill $vmm; exit 90; fi
    sleep 0.1
done
echo "lab-script: socket is up"
# The process that runs the VM: jailed (the default) vmm forks and $vmm is the reaper.
vmm_proc() {{ c=$(cut -d' ' -f1 /proc/$vmm/task/$vmm/children 2>/dev/null); echo ${{c:-$vmm}}; }}
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

/// A lab-script shell function: waits (at most `$2` tenths of a second) until file `$1` holds text `$3`; otherwise
/// prints why and ends the run with status 91, or 92 at once when vmm has exited.
pub const WAIT_IN: &str = r#"wait_in() {
    i=0
    until grep -q -- "$3" "$1" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt "$2" ]; then echo "lab-script: never saw '$3' in $1"; kill $vmm; exit 91; fi
        if ! kill -0 $vmm 2>/dev/null; then
            wait $vmm; echo "lab-script: vmm exited with $? before '$3' showed in $1"; exit 92
        fi
        sleep 0.1
    done
}
"#;

/// What tools/lab prints when the outer VM itself went away mid-run (exit status 125).
const OUTER_VM_DIED: &str = "lab: outer VM ended";
/// What vmm logs when its guest triple-faults; in the lab that is the emulator's doing
/// far more often than the guest's (docs/lab.md).
const GUEST_TRIPLE_FAULT: &str = "triple fault (KVM_EXIT_SHUTDOWN)";

/// Runs `tools/lab [extra] -- command...` with the vmm under test, waiting its turn, and
/// fails the test if the guest's kernel log shows a bug or warning (see
/// [`guest_log_alarms`]).
///
/// The outer VM (nested SVM under QEMU's TCG) sometimes dies or freezes mid-run, taking the
/// test's command with it: TCG lets an interrupt in right after `VMRUN`, where the outer
/// kernel still runs on the inner guest's GS base, and the outer kernel oopses (docs/lab.md,
/// "Known lab artefacts"). The same defect makes inner guests triple-fault, under QEMU as
/// under vmm, and sometimes leaves an outer CPU stuck in the kernel while the inner VMM
/// exits (tools/lab's `softlockup_panic=1` makes that an outer death too). That is the lab
/// failing, not the code under test, so such a run (tools/lab reports the outer VM ended,
/// or its timeout hit, or vmm reports its guest triple-faulted) is tried again, loudly and
/// counted (target/lab-retries.log, which tools/test sums up), up to [`LAB_ATTEMPTS`] runs
/// in all. Nothing else is retried: a run that ends any other way is returned for the
/// test's assertions, and an assertion failure fails the test. A vmm bug that makes the
/// guest triple-fault does it every time, so it still fails after the last attempt.
pub fn run(lab_args: &[String], command: &[String]) -> LabRun {
    let run = run_allowing_known_lines(lab_args, command);
    let alarms = guest_log_alarms(&run.output);
    assert!(
        alarms.is_empty(),
        "the guest's kernel log shows a bug or warning that is not a known lab artefact \
         (KNOWN_GUEST_LOG_LINES in tests/common/lab.rs):\n{}\nlab output:\n{}",
        alarms.join("\n"),
        run.output
    );
    run
}

/// [`run`] without the check of the guest's kernel log: for the test that shows every
/// known guest log line under QEMU too.
pub fn run_allowing_known_lines(lab_args: &[String], command: &[String]) -> LabRun {
    let _turn = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut attempt = 1;
    loop {
        let run = run_once(lab_args, command);
        let Some(breakage) = lab_breakage(&run) else {
            return run;
        };
        if attempt == LAB_ATTEMPTS {
            return run;
        }
        record_retry(attempt, breakage);
        // Straight to stderr: libtest would swallow an eprintln! of a test that then
        // passes, and a retry must show whatever the test's outcome.
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n!!! LAB RETRY: {breakage} (status {:?}); RUNNING THE TEST'S LAB COMMAND AGAIN \
             (attempt {} of {}). This run's output:\n{}\n!!!\n",
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

/// How a run ended the way the lab's own defects end one (docs/lab.md), rather than with
/// the command's status; `None` for a run the lab did not break.
fn lab_breakage(run: &LabRun) -> Option<&'static str> {
    if run.status == Some(125) && run.output.contains(OUTER_VM_DIED) {
        Some("the lab's outer VM died")
    } else if run.status == Some(LAB_TIMED_OUT) {
        Some("the lab run hung (tools/lab's timeout)")
    } else if run.output.contains(GUEST_TRIPLE_FAULT) {
        Some("the inner guest triple-faulted (the lab's nested-SVM defect)")
    } else {
        None
    }
}

/// Appends one line per lab retry to target/lab-retries.log, which tools/test empties
/// before the suite and prints after it, so that a green run still says how many lab runs
/// it needed.
fn record_retry(attempt: u32, breakage: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    let line = format!(
        "{} {test}: attempt {attempt} of {LAB_ATTEMPTS}: {breakage}\n",
        env!("CARGO_CRATE_NAME")
    );
    let log = repo().join("target/lab-retries.log");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!(
            "!!! could not record the lab retry in {}: {e}",
            log.display()
        );
    }
}

/// A guest kernel log line the lab tests accept although it matches [`GUEST_LOG_ALARMS`],
/// with the evidence that it is the lab's doing and not vmm's.
pub struct KnownGuestLine {
    /// Text that identifies the line (or the warning block it heads).
    pub text: &'static str,
    /// Why it is not vmm's: what shows the same line without vmm.
    pub evidence: &'static str,
}

/// Every guest log line the lab tests accept. An entry is added only with evidence that
/// QEMU shows the same line with the same kernel in the same lab; `tests/lab.rs`
/// (`qemu_prints_every_known_guest_log_line_too`) boots the kit's kernel under QEMU in the
/// lab and checks that every entry still appears there.
pub const KNOWN_GUEST_LOG_LINES: &[KnownGuestLine] = &[KnownGuestLine {
    text: "XSAVE consistency problem: size 832 != kernel_size 576",
    evidence: "QEMU 7.2 `-enable-kvm -cpu host -M pc` in the lab prints the same warning \
               (with its fpu__init_system_xstate backtrace) with the same kernel: QEMU's TCG \
               does not intercept XSETBV for the outer kvm-amd (docs/lab.md, Known lab \
               artefacts); hardware SVM and VMX do",
}];

/// What marks a guest kernel log line as a bug or warning.
const GUEST_LOG_ALARMS: &[&str] = &[
    "BUG:",
    "Oops",
    "Call Trace",
    "soft lockup",
    "hung task",
    "blocked for more than",
];

/// A kernel warning with a backtrace: `WARNING: CPU: 0 PID: 0 at FILE:LINE FUNCTION`, as
/// opposed to informational lines that merely contain the word.
fn is_source_warning(line: &str) -> bool {
    line.split_once("WARNING: ").is_some_and(|(_, rest)| {
        rest.split_once(" at ").is_some_and(|(_, place)| {
            place
                .split_whitespace()
                .next()
                .and_then(|file_line| file_line.rsplit_once(':'))
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    })
}

fn is_alarm(line: &str) -> bool {
    GUEST_LOG_ALARMS.iter().any(|a| line.contains(a)) || is_source_warning(line)
}

fn is_known(line: &str) -> bool {
    KNOWN_GUEST_LOG_LINES.iter().any(|k| line.contains(k.text))
}

/// The lines of a lab run's output that show a guest kernel bug or warning, less the known
/// lab artefacts. A warning's report runs from `[ cut here ]` to `---[ end trace`; when a
/// known line is in it, the whole report (its `WARNING:` and `Call Trace` lines too) is the
/// known artefact.
pub fn guest_log_alarms(output: &str) -> Vec<String> {
    let mut alarms = Vec::new();
    let mut report: Vec<&str> = Vec::new();
    let mut in_report = false;
    for line in output.lines() {
        if line.contains("[ cut here ]") {
            alarms.extend(unknown_alarms(&report));
            report.clear();
            in_report = true;
        }
        if in_report {
            report.push(line);
            if line.contains("---[ end trace") {
                alarms.extend(unknown_alarms(&report));
                report.clear();
                in_report = false;
            }
        } else if is_alarm(line) && !is_known(line) {
            alarms.push(line.to_string());
        }
    }
    alarms.extend(unknown_alarms(&report));
    alarms
}

/// The alarm lines of one warning report, or none when a known line is in it.
fn unknown_alarms(report: &[&str]) -> Vec<String> {
    if report.iter().any(|l| is_known(l)) {
        return Vec::new();
    }
    report
        .iter()
        .filter(|l| is_alarm(l))
        .map(|l| l.to_string())
        .collect()
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
