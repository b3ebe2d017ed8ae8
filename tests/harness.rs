//! The test helpers themselves: what every other test relies on to see a child's output.

mod common;

use std::process::Command;
use std::time::Duration;

/// A child that prints more than a pipe holds still exits and is seen whole: the lab's
/// outer-kernel oops traces are that long, and a helper that read only after exit left
/// tools/lab blocked on its write until the test's limit.
#[test]
fn a_child_printing_more_than_a_pipe_holds_exits_and_is_read_whole() {
    let mut child = Command::new("sh");
    child.args([
        "-c",
        "head -c 1048576 /dev/zero; head -c 300000 /dev/zero >&2; exit 3",
    ]);
    let output = common::run_with_timeout(child, Duration::from_secs(60));
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(output.stdout.len(), 1_048_576);
    assert_eq!(output.stderr.len(), 300_000);
}
