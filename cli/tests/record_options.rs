//! What `trace-cmd record` says about its own command line (issue 15 items 5
//! and 7): an unknown option is refused as an option, not run as the command to
//! trace, and `-v` counts event types in words that say so.

use std::process::Command;

use testkit::{instance, instance_name, Settings, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_trace-cmd");

/// Runs `trace-cmd record ARGS` and returns (exit code, stderr).
fn record(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("record")
        .args(args)
        .output()
        .expect("run trace-cmd record");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_option_is_refused_as_an_option() {
    // Before: `cannot run "--bogus": no such program`, and an option spelt as in
    // a newer trace-cmd (`--no-such-option 6`) made everything after it the command.
    for args in [
        &["-e", "sched", "--bogus", "sleep", "1"][..],
        &["--no-such-option", "6", "-e", "sched", "sleep", "1"][..],
    ] {
        let (code, err) = record(args);
        let opt = args.iter().find(|a| a.starts_with("--")).unwrap();
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("unexpected argument '{opt}'")),
            "{args:?}: {err}"
        );
        assert!(!err.contains("no such program"), "{args:?}: {err}");
    }
}

#[test]
fn words_after_the_command_are_the_commands() {
    // Hyphen words after the first non-option word belong to the traced command.
    let inst = instance("opts");
    inst.set_buffer_size_kb(256).unwrap();
    let before = Settings::read(&inst);
    let dir = TempDir::new("opts");
    let file = dir.path().join("t.dat");
    let seen = dir.path().join("argv");
    let (code, err) = record(&[
        "-q",
        "-B",
        &instance_name(&inst),
        "-e",
        "sched:sched_switch",
        "-o",
        file.to_str().unwrap(),
        "sh",
        "-c",
        "echo \"$@\" > \"$0\"",
        seen.to_str().unwrap(),
        "-l",
        "--foo",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "-l --foo\n");
    assert_eq!(Settings::read(&inst), before, "tracefs not restored");
}

#[test]
fn verbose_counts_event_types_and_systems() {
    // Before: "recording 26 events on 2 CPUs", where 26 was the number of types.
    let inst = instance("verbose");
    inst.set_buffer_size_kb(256).unwrap();
    let dir = TempDir::new("verbose");
    let file = dir.path().join("t.dat");
    let (code, err) = record(&[
        "-v",
        "-q",
        "-B",
        &instance_name(&inst),
        "-e",
        "sched:sched_switch",
        "-e",
        "sched:sched_wakeup",
        "-e",
        "irq:irq_handler_entry",
        "-o",
        file.to_str().unwrap(),
        "true",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("recording 3 event types of 2 systems on "),
        "{err}"
    );
}
