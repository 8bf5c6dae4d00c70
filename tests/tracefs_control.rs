//! The tracefs control API: selector resolution and parsers on synthetic input,
//! and enabling/restoring on a private instance of the real kernel (root).

use tracecmd_rs::tracefs::{
    glob_match, parse_buffer_size_kb, parse_trace_clock, resolve_events, CpuStats, EventName,
    NotMounted, TracefsError, TracefsState,
};

fn ev(s: &str, e: &str) -> EventName {
    EventName {
        system: s.into(),
        event: e.into(),
    }
}

fn sample() -> Vec<EventName> {
    vec![
        ev("irq", "irq_handler_entry"),
        ev("irq", "softirq_raise"),
        ev("sched", "sched_switch"),
        ev("sched", "sched_wakeup"),
        ev("sched", "sched_waking"),
        ev("timer", "hrtimer_start"),
    ]
}

fn names(v: &[EventName]) -> Vec<String> {
    v.iter().map(|e| e.to_string()).collect()
}

#[test]
fn globs() {
    assert!(glob_match("sched_sw*", "sched_switch"));
    assert!(glob_match("*", ""));
    assert!(glob_match("s?hed", "sched"));
    assert!(glob_match("*wak*", "sched_waking"));
    assert!(!glob_match("sched_sw*", "sched_wakeup"));
    assert!(!glob_match("sched", "sched_switch"));
    assert!(glob_match("a*b*c", "axxbyyc"));
    assert!(!glob_match("a*b*c", "axxbyy"));
}

#[test]
fn selectors_resolve_like_trace_cmd() {
    let a = sample();
    assert_eq!(resolve_events(&a, &["all"]).unwrap(), a);
    assert_eq!(
        names(&resolve_events(&a, &["sched"]).unwrap()),
        [
            "sched:sched_switch",
            "sched:sched_wakeup",
            "sched:sched_waking"
        ]
    );
    assert_eq!(
        names(&resolve_events(&a, &["sched:sched_wak*", "timer"]).unwrap()),
        [
            "sched:sched_wakeup",
            "sched:sched_waking",
            "timer:hrtimer_start"
        ]
    );
    assert_eq!(
        names(&resolve_events(&a, &["irq/softirq_raise", "softirq_raise"]).unwrap()),
        ["irq:softirq_raise"]
    );
    assert_eq!(
        names(&resolve_events(&a, &["sched_switch"]).unwrap()),
        ["sched:sched_switch"]
    );
    assert_eq!(resolve_events(&a, &["sched:"]).unwrap().len(), 3);
}

#[test]
fn unknown_event_lists_close_matches() {
    let a = sample();
    let err = resolve_events(&a, &["sched", "sched:sched_swich"]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("sched:sched_swich"), "{msg}");
    assert!(msg.contains("did you mean: sched:sched_switch"), "{msg}");
    assert_eq!(err.errno(), libc::ENOENT);
    match resolve_events(&a, &["schd"]).unwrap_err() {
        TracefsError::UnknownEvent { suggestions, .. } => {
            assert!(
                suggestions.contains(&"sched".to_string()),
                "{suggestions:?}"
            )
        }
        e => panic!("unexpected {e}"),
    }
    match resolve_events(&a, &["zzzzzzzz:qqqq"]).unwrap_err() {
        TracefsError::UnknownEvent { suggestions, .. } => assert!(suggestions.is_empty()),
        e => panic!("unexpected {e}"),
    }
    assert!(resolve_events(&a, &[""]).is_err());
}

#[test]
fn parsers() {
    let (cur, all) = parse_trace_clock("[local] global counter x86-tsc\n").unwrap();
    assert_eq!(cur, "local");
    assert_eq!(all, ["local", "global", "counter", "x86-tsc"]);
    assert_eq!(parse_trace_clock("local global").map(|c| c.0), None);
    assert_eq!(parse_buffer_size_kb("1410\n"), Some(1410));
    assert_eq!(parse_buffer_size_kb("7 (expanded: 1408)\n"), Some(7));
    assert_eq!(parse_buffer_size_kb("x"), None);
    let text = "entries: 12\noverrun: 1\ncommit overrun: 2\nbytes: 480\n\
oldest event ts:   305.101020\nnow ts:   310.228406\ndropped events: 3\nread events: 4\n";
    let s = CpuStats::parse(text).unwrap();
    assert_eq!(
        (
            s.entries,
            s.overrun,
            s.commit_overrun,
            s.bytes,
            s.dropped_events,
            s.read_events
        ),
        (12, 1, 2, 480, 3, 4)
    );
    assert_eq!(s.oldest_event_ts, "305.101020");
    assert_eq!(s.now_ts, "310.228406");
    assert_eq!(s.text, text);
    assert!(CpuStats::parse("entries: lots\n").is_err());
}

#[test]
fn not_mounted_error_names_the_mount_command() {
    let msg = TracefsError::from(NotMounted).to_string();
    assert!(
        msg.contains("mount -t tracefs nodev /sys/kernel/tracing"),
        "{msg}"
    );
    assert_eq!(TracefsError::from(NotMounted).errno(), libc::ENODEV);
}

#[test]
fn state_guard_restores_what_it_changed() {
    let inst = testkit::instance("guard");
    // Known starting point, set explicitly (the machine may have stale state).
    inst.set_tracing_on(true).unwrap();
    inst.set_buffer_size_kb(64).unwrap();
    inst.set_trace_clock("local").unwrap();
    let pre = inst.resolve_events(&["sched:sched_wakeup"]).unwrap();
    inst.set_event_enabled(&pre[0], true).unwrap();
    let before = inst.enabled_events().unwrap();
    assert_eq!(names(&before), ["sched:sched_wakeup"]);
    // The kernel rounds sizes to whole pages: compare with what it reports.
    let kb_before = inst.buffer_size_kb().unwrap();

    let events = inst
        .resolve_events(&["sched:sched_sw*", "timer:hrtimer_start"])
        .unwrap();
    assert!(events.len() >= 2);
    let mut state = TracefsState::new(&inst);
    state.enable_events(&events).unwrap();
    // Disabling an event that was on before must be undone too.
    state.set_events(&pre, false).unwrap();
    state.set_buffer_size_kb(256).unwrap();
    state.set_trace_clock("global").unwrap();
    state.set_tracing_on(false).unwrap();
    assert_eq!(inst.enabled_events().unwrap(), events);
    assert!(inst.buffer_size_kb().unwrap() >= 256);
    assert_eq!(inst.trace_clock().unwrap().0, "global");
    assert!(!inst.tracing_on().unwrap());

    state.restore().unwrap();
    let check = || {
        assert_eq!(inst.enabled_events().unwrap(), before);
        assert_eq!(inst.buffer_size_kb().unwrap(), kb_before);
        assert_eq!(inst.trace_clock().unwrap().0, "local");
        assert!(inst.tracing_on().unwrap());
    };
    check();
    // Idempotent: a second restore (e.g. Ctrl-C path, then drop) changes nothing.
    inst.set_buffer_size_kb(128).unwrap();
    let kb_other = inst.buffer_size_kb().unwrap();
    assert_ne!(kb_other, kb_before);
    state.restore().unwrap();
    assert_eq!(inst.buffer_size_kb().unwrap(), kb_other);
    inst.set_buffer_size_kb(64).unwrap();

    // Restore on drop.
    {
        let mut s2 = TracefsState::new(&inst);
        s2.set_trace_clock("counter").unwrap();
        s2.enable_events(&events).unwrap();
    }
    check();
    inst.set_event_enabled(&pre[0], false).unwrap();
}

#[test]
fn prepare_recording_sets_exactly_the_requested_state_and_restores_it() {
    let inst = testkit::instance("prep");
    inst.set_tracing_on(true).unwrap();
    inst.set_buffer_size_kb(64).unwrap();
    inst.set_trace_clock("local").unwrap();
    // An event someone else left on, and something in the buffer.
    let other = inst.resolve_events(&["sched:sched_wakeup"]).unwrap();
    inst.set_event_enabled(&other[0], true).unwrap();
    inst.write("trace_marker", "left over").unwrap();
    let kb_before = inst.buffer_size_kb().unwrap();

    let events = inst.resolve_events(&["sched:sched_switch"]).unwrap();
    let mut state = TracefsState::new(&inst);
    let setup = tracecmd_rs::tracefs::RecordingSetup {
        buffer_kb: Some(256),
        clock: Some("global"),
        ..Default::default()
    };
    state.prepare_recording(&setup, &events).unwrap();
    assert_eq!(inst.enabled_events().unwrap(), events);
    assert!(!inst.tracing_on().unwrap());
    assert!(inst.buffer_size_kb().unwrap() >= 256);
    assert_eq!(inst.trace_clock().unwrap().0, "global");
    assert!(!inst.read("trace").unwrap().contains("left over"));

    state.restore().unwrap();
    assert_eq!(inst.enabled_events().unwrap(), other);
    assert!(inst.tracing_on().unwrap());
    assert_eq!(inst.buffer_size_kb().unwrap(), kb_before);
    assert_eq!(inst.trace_clock().unwrap().0, "local");
    inst.set_event_enabled(&other[0], false).unwrap();
}

#[test]
fn bad_requests_change_nothing() {
    let inst = testkit::instance("badreq");
    inst.set_trace_clock("local").unwrap();
    let mut state = TracefsState::new(&inst);
    let err = state.set_trace_clock("no-such-clock").unwrap_err();
    assert!(matches!(err, TracefsError::UnknownClock { .. }), "{err}");
    assert!(err.to_string().contains("global"), "{err}");
    assert_eq!(inst.trace_clock().unwrap().0, "local");
    // An unknown event among good ones is found before anything is enabled.
    let err = inst
        .resolve_events(&["sched:sched_switch", "sched:sched_swithc"])
        .unwrap_err();
    assert!(err.to_string().contains("sched:sched_switch"), "{err}");
    assert!(inst.enabled_events().unwrap().is_empty());
    // A file the kernel refuses gives the path and errno.
    let err = state
        .set_events(
            &[EventName {
                system: "nosuchsys".into(),
                event: "nosuchev".into(),
            }],
            true,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("nosuchsys/nosuchev/enable"),
        "{err}"
    );
    assert_ne!(err.errno(), 0);
    state.restore().unwrap();
    assert!(inst.enabled_events().unwrap().is_empty());
}

#[test]
fn reads_what_trace_dat_needs() {
    let inst = testkit::instance("meta");
    let hp = inst.header_page().unwrap();
    assert!(
        String::from_utf8_lossy(&hp).contains("field: char data;"),
        "header_page truncated"
    );
    assert!(hp.len() > 100);
    let he = inst.header_event().unwrap();
    assert!(String::from_utf8_lossy(&he).contains("time_extend"));
    let ftrace = inst.ftrace_formats().unwrap();
    assert!(ftrace
        .iter()
        .any(|(n, f)| n == "print" && f.starts_with(b"name: print")));
    let evs = inst
        .resolve_events(&["sched:sched_switch", "timer:hrtimer_start"])
        .unwrap();
    let sys = inst.system_formats(&evs).unwrap();
    assert_eq!(sys.len(), 2);
    assert_eq!(sys[0].0, "sched");
    assert!(sys[0].1[0].1.starts_with(b"name: sched_switch"));
    let ks = tracecmd_rs::tracefs::kallsyms().unwrap();
    assert!(ks.len() > 1 << 16, "kallsyms looks truncated");
    assert!(!tracecmd_rs::tracefs::printk_formats().unwrap().is_empty());
    tracecmd_rs::tracefs::saved_cmdlines().unwrap();
    let s = inst.cpu_stats(0).unwrap();
    assert_eq!(s.entries, 0, "a new instance's buffer is empty");
    assert!(s.text.contains("entries:"));
    let u = tracecmd_rs::tracefs::uname();
    assert!(u.starts_with("Linux "), "{u}");
    assert_eq!(u.split(' ').count(), 4);
}

/// Characters that make event selectors, clocks and sizes.
const CHARS: &[u8] = b"ab:*?/[] \n_sched012\t";

#[test]
fn text_parsers_never_panic_on_random_input() {
    let mut rng = testkit::Rng::new(0x2545_f491_4f6c_dd1d);
    let a = sample();
    for _ in 0..5000 {
        let s = rng.string(CHARS, 40);
        let _ = resolve_events(&a, &[&s]);
        let _ = glob_match(&rng.string(CHARS, 12), &rng.string(CHARS, 20));
        let _ = parse_trace_clock(&s);
        let _ = parse_buffer_size_kb(&s);
        let _ = CpuStats::parse(&s);
        let _ = tracecmd_rs::output::layout::PageLayout::parse(s.as_bytes());
        let _ = tracecmd_rs::output::layout::EventLayout::parse(s.as_bytes());
    }
}
