//! `axle serve` as a process: it opens its data directory, runs until SIGTERM, shuts down
//! cleanly, and the next start needs no recovery. Bad flags fail with a clear message.

use std::process::Command;
use std::time::Duration;

use axle_tests::server::{axle_bin, Server};

#[test]
fn serve_runs_until_sigterm_and_restarts_without_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, &[]).unwrap();
    assert!(s.wait_for_output("axle serving", Duration::from_secs(30)), "no start message:\n{}", s.output());
    assert!(data.join("log").is_dir(), "the data directory holds the log");
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(30)).expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}:\n{}", s.output());
    assert!(s.output().contains("axle stopped cleanly"));
    drop(s);

    let mut s = Server::start(&data, &[]).unwrap();
    assert!(s.wait_for_output("axle serving", Duration::from_secs(30)), "{}", s.output());
    s.signal(libc::SIGINT);
    assert!(s.wait_exit(Duration::from_secs(30)).expect("exits after SIGINT").success());
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start(&data, &[]).unwrap();
    assert!(first.wait_for_output("axle serving", Duration::from_secs(30)), "{}", first.output());
    let out = Command::new(axle_bin()).arg("serve").arg("--data-dir").arg(&data).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "stderr: {err}");
}

#[test]
fn bad_flags_fail_with_a_message_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        Command::new(axle_bin()).args(["serve", "--fsync", "5parsecs", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--fsync") && err.contains("unknown unit"), "stderr: {err}");

    let out = Command::new(axle_bin()).args(["serve", "--no-such-flag"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}
