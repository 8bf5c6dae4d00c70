//! `trace-cmd list -e [REGEX]`, `-t` and `-o` print what Debian's trace-cmd 3.1.6
//! prints on this machine (issue 15 item 6), and the unknown-event error of
//! `record` points at a `list -e` that exists.

use std::collections::BTreeSet;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_trace-cmd");
const DEBIAN: &str = "/usr/bin/trace-cmd";

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

fn lines(o: &Output) -> BTreeSet<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Ours and Debian's print the same set of lines for `list ARGS`.
fn same_as_debian(args: &[&str]) -> usize {
    let ours = run(BIN, args);
    let theirs = run(DEBIAN, args);
    assert!(
        ours.status.success(),
        "trace-cmd {args:?}: {}",
        String::from_utf8_lossy(&ours.stderr)
    );
    assert!(
        theirs.status.success(),
        "Debian's trace-cmd {args:?} failed"
    );
    let (a, b) = (lines(&ours), lines(&theirs));
    assert_eq!(
        a,
        b,
        "trace-cmd {args:?}: only ours: {:?}; only Debian's: {:?}",
        a.difference(&b).collect::<Vec<_>>(),
        b.difference(&a).collect::<Vec<_>>()
    );
    a.len()
}

#[test]
fn list_events_as_debian() {
    let all = same_as_debian(&["list", "-e"]);
    assert!(all > 100, "only {all} events");
    for re in [
        "sched_s",
        "^sched:sched_w",
        "^sched$",
        "sched:",
        "SCHED:switch$",
        "^ftrace$",
        "irq",
        "timer:.*expire",
        "^irq:.*_entry$",
        "kmem:k[mf]",
    ] {
        let n = same_as_debian(&["list", "-e", re]);
        assert!(n > 0, "{re} matched nothing");
    }
}

#[test]
fn list_tracers_and_options_as_debian() {
    assert!(same_as_debian(&["list", "-t"]) > 0);
    assert!(same_as_debian(&["list", "-o"]) > 0);
}

#[test]
fn unknown_event_points_at_a_list_that_exists() {
    let o = run(BIN, &["record", "-e", "tcrs_no_such_event_xyz", "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("`trace-cmd list -e`"), "{err}");
    let o = run(BIN, &["list", "-e"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(lines(&o).contains("sched:sched_switch"));
    let o = run(BIN, &["list", "-e", "sched["]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid regular expression"));
}
