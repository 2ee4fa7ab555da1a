//! The plugin process as the runtime starts it. It has no Rust start-up (`no_main`, issue 14:
//! ~85 µs of every exec), so what std's would have done and the plugin relies on is its own
//! code. (Descriptors 0–2 are also reopened on /dev/null when closed, as std does; std's
//! stdout swallows EBADF, so no exit code tells the two apart and no test here claims to.)

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use vpcnet_tests::bin;

/// A reader that went away: the write of the result fails (exit 1, the CNI error path), the
/// process is not killed by SIGPIPE.
#[test]
fn a_closed_pipe_is_an_error_not_a_kill() {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let status = Command::new(bin("vpcnet"))
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdout(Stdio::from(writer))
        .status()
        .expect("run vpcnet");
    assert_eq!(status.signal(), None, "killed: {status:?}");
    assert_eq!(status.code(), Some(1), "{status:?}");
}
