//! Finding and using the kernel's tracing directory (tracefs or debugfs).

use std::path::{Path, PathBuf};

/// Places where the tracing directory is looked for, in order.
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Error when no tracing directory is mounted.
#[derive(Debug, thiserror::Error)]
#[error(
    "no tracing directory found: mount tracefs with `mount -t tracefs nodev /sys/kernel/tracing`"
)]
pub struct NotMounted;

/// The tracing directory: `$TRACEFS_DIR` if set (tests), else the first mounted
/// candidate that has `per_cpu/` (a mounted tracefs, or debugfs with tracing inside).
pub fn tracing_dir() -> Result<PathBuf, NotMounted> {
    if let Some(dir) = std::env::var_os("TRACEFS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.join("per_cpu").is_dir())
        .map(Path::to_path_buf)
        .ok_or(NotMounted)
}

/// A ring-buffer instance: the top-level tracing directory or `instances/<name>`.
///
/// An instance made with [`Instance::create`] is removed again when dropped, so tests
/// and recordings that use a private instance leave tracefs as they found it.
#[derive(Debug)]
pub struct Instance {
    path: PathBuf,
    remove_on_drop: bool,
}

impl Instance {
    /// The top-level buffer of the tracing directory.
    pub fn top() -> Result<Instance, NotMounted> {
        Ok(Instance {
            path: tracing_dir()?,
            remove_on_drop: false,
        })
    }

    /// Creates `instances/<name>` (an error if it exists already); removed on drop.
    pub fn create(name: &str) -> std::io::Result<Instance> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid instance name {name:?}"),
            ));
        }
        let top =
            tracing_dir().map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))?;
        let path = top.join("instances").join(name);
        std::fs::create_dir(&path)?;
        Ok(Instance {
            path,
            remove_on_drop: true,
        })
    }

    /// Opens the existing `instances/<name>`; it is left in place on drop.
    pub fn open(name: &str) -> std::io::Result<Instance> {
        let top =
            tracing_dir().map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))?;
        let path = top.join("instances").join(name);
        if name.is_empty() || name.contains('/') || !path.join("per_cpu").is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no tracing instance {name:?} in {}", top.display()),
            ));
        }
        Ok(Instance {
            path,
            remove_on_drop: false,
        })
    }

    /// The instance's directory (what the recorder's `buffer` argument names).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a control file of this instance, e.g. `buffer_size_kb`.
    pub fn read(&self, file: &str) -> std::io::Result<String> {
        String::from_utf8(read_file(&self.path.join(file))?)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Writes a control file of this instance, e.g. `tracing_on` or `events/sched/enable`.
    pub fn write(&self, file: &str, contents: &str) -> std::io::Result<()> {
        std::fs::write(self.path.join(file), contents)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.remove_on_drop {
            // An instance with enabled events can still be removed; log, never panic.
            if let Err(e) = std::fs::remove_dir(&self.path) {
                log::warn!(
                    "could not remove tracing instance {}: {e}",
                    self.path.display()
                );
            }
        }
    }
}

/// Number of CPUs the kernel has buffers for (entries of `per_cpu/`).
pub fn cpu_count(instance: &Instance) -> std::io::Result<usize> {
    let n = std::fs::read_dir(instance.path().join("per_cpu"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("cpu"))
        .count();
    Ok(n)
}

// ---------------------------------------------------------------------------
// Errors of the tracefs control API
// ---------------------------------------------------------------------------

/// What can go wrong while reading or changing tracefs.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// Neither tracefs nor debugfs is mounted.
    #[error(transparent)]
    NotMounted(#[from] NotMounted),
    /// A tracefs or /proc file could not be read or written.
    #[error("could not access {}: {source}", path.display())]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The error the kernel returned.
        source: std::io::Error,
    },
    /// An `-e` selector matched no event.
    #[error("no trace event matches `{selector}`{}", suggestion_text(suggestions))]
    UnknownEvent {
        /// The selector as given.
        selector: String,
        /// Close event or system names (may be empty).
        suggestions: Vec<String>,
    },
    /// The requested trace clock is not offered by the kernel.
    #[error("trace clock `{clock}` is not available; choose one of: {}", available.join(" "))]
    UnknownClock {
        /// The clock asked for.
        clock: String,
        /// The clocks listed in `trace_clock`.
        available: Vec<String>,
    },
    /// A `list -e` regular expression that does not compile.
    #[error("invalid regular expression `{0}` (POSIX basic syntax, as trace-cmd's)")]
    BadRegex(String),
    /// A tracefs file did not have the expected contents.
    #[error("unexpected contents in {}: {detail}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

fn suggestion_text(s: &[String]) -> String {
    if s.is_empty() {
        "; `trace-cmd list -e` shows the available events".to_string()
    } else {
        format!("; did you mean: {}?", s.join(", "))
    }
}

impl TracefsError {
    /// The errno the C layer reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            TracefsError::NotMounted(_) => libc::ENODEV,
            TracefsError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            TracefsError::UnknownEvent { .. } => libc::ENOENT,
            TracefsError::UnknownClock { .. }
            | TracefsError::Parse { .. }
            | TracefsError::BadRegex(_) => libc::EINVAL,
        }
    }
}

/// A POSIX basic regular expression, matched case-insensitively anywhere in a
/// string: what trace-cmd's `list` compiles with `regcomp(REG_ICASE | REG_NOSUB)`,
/// so that a pattern selects here what it selects there.
struct PosixRegex(Box<libc::regex_t>);

impl PosixRegex {
    fn new(pattern: &str) -> Result<PosixRegex, TracefsError> {
        let bad = || TracefsError::BadRegex(pattern.to_string());
        let c = std::ffi::CString::new(pattern).map_err(|_| bad())?;
        // SAFETY: regex_t is plain data; regcomp fills it in, and on failure
        // leaves nothing to free.
        let mut re: Box<libc::regex_t> = Box::new(unsafe { std::mem::zeroed() });
        let rc = unsafe { libc::regcomp(&mut *re, c.as_ptr(), libc::REG_ICASE | libc::REG_NOSUB) };
        if rc != 0 {
            return Err(bad());
        }
        Ok(PosixRegex(re))
    }

    fn is_match(&self, s: &str) -> bool {
        let Ok(c) = std::ffi::CString::new(s) else {
            return false;
        };
        // SAFETY: self.0 was compiled by regcomp; no match offsets are asked for.
        unsafe { libc::regexec(&*self.0, c.as_ptr(), 0, std::ptr::null_mut(), 0) == 0 }
    }
}

impl Drop for PosixRegex {
    fn drop(&mut self) {
        // SAFETY: compiled by regcomp and freed only here.
        unsafe { libc::regfree(&mut *self.0) }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TracefsError + '_ {
    move |source| TracefsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a whole tracefs or /proc file.
///
/// These files report size 0, and some (events/header_page) return their
/// contents only to the first read() and EOF to the next, so a small first read
/// (what `std::fs::read` does for a size-0 file) would truncate them: read into a
/// large buffer from the start.
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = Vec::with_capacity(64 * 1024);
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, TracefsError> {
    read_file(path).map_err(io_err(path))
}

fn read_text(path: &Path) -> Result<String, TracefsError> {
    let b = read_bytes(path)?;
    String::from_utf8(b).map_err(|_| TracefsError::Parse {
        path: path.to_path_buf(),
        detail: "the file is not valid UTF-8 text".to_string(),
    })
}

fn write_text(path: &Path, contents: &str) -> Result<(), TracefsError> {
    log::debug!("write {:?} to {}", contents, path.display());
    std::fs::write(path, contents).map_err(io_err(path))
}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

/// A system's name and its events' (name, format text) pairs.
pub type SystemFormats = (String, Vec<(String, Vec<u8>)>);

/// One trace event, `system:event`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventName {
    /// The event's system (directory under `events/`).
    pub system: String,
    /// The event's name (directory under `events/<system>/`).
    pub event: String,
}

impl std::fmt::Display for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.system, self.event)
    }
}

/// Shell-style match of `pattern` (`*`, `?`) against `name`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Levenshtein distance, for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Resolves trace-cmd `-e` selectors against a list of available events.
///
/// A selector is `all`, `system`, `system:event` (or `system/event`) or a bare
/// `event`; each part may be a glob. A selector that matches nothing is an
/// [`TracefsError::UnknownEvent`] listing close names. The result is sorted and
/// free of duplicates.
pub fn resolve_events(
    available: &[EventName],
    selectors: &[&str],
) -> Result<Vec<EventName>, TracefsError> {
    let mut out = std::collections::BTreeSet::new();
    for &sel in selectors {
        let sel = sel.trim();
        let matched: Vec<&EventName> = if sel == "all" {
            available.iter().collect()
        } else if let Some((sys, ev)) = sel.split_once(':').or_else(|| sel.split_once('/')) {
            let ev = if ev.is_empty() { "*" } else { ev };
            available
                .iter()
                .filter(|e| glob_match(sys, &e.system) && glob_match(ev, &e.event))
                .collect()
        } else {
            // A bare word names a system, or else an event of any system.
            let by_system: Vec<&EventName> = available
                .iter()
                .filter(|e| glob_match(sel, &e.system))
                .collect();
            if by_system.is_empty() {
                available
                    .iter()
                    .filter(|e| glob_match(sel, &e.event))
                    .collect()
            } else {
                by_system
            }
        };
        if sel.is_empty() || matched.is_empty() {
            return Err(TracefsError::UnknownEvent {
                selector: sel.to_string(),
                suggestions: suggest(available, sel),
            });
        }
        out.extend(matched.into_iter().cloned());
    }
    Ok(out.into_iter().collect())
}

/// Up to five event or system names close to `sel` (prefix or small edit distance).
fn suggest(available: &[EventName], sel: &str) -> Vec<String> {
    let key = sel.replace('/', ":");
    let mut names: Vec<String> = available.iter().map(|e| e.to_string()).collect();
    let mut systems: Vec<String> = available.iter().map(|e| e.system.clone()).collect();
    systems.dedup();
    names.extend(systems);
    let limit = (key.chars().count() / 4).max(2);
    let mut scored: Vec<(usize, String)> = names
        .into_iter()
        .filter_map(|n| {
            let event_part = n.split_once(':').map(|(_, e)| e).unwrap_or(&n);
            let d = edit_distance(&key, &n).min(edit_distance(&key, event_part));
            let prefix = !key.is_empty() && (n.starts_with(&key) || event_part.starts_with(&key));
            (d <= limit || prefix).then_some((if prefix { 0 } else { d }, n))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(5).map(|(_, n)| n).collect()
}

/// Parses the `trace_clock` file: `"[local] global counter"` → (`local`, all clocks).
pub fn parse_trace_clock(text: &str) -> Option<(String, Vec<String>)> {
    let mut current = None;
    let mut all = Vec::new();
    for word in text.split_whitespace() {
        if let Some(inner) = word.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
            current = Some(inner.to_string());
            all.push(inner.to_string());
        } else {
            all.push(word.to_string());
        }
    }
    current.map(|c| (c, all))
}

/// What a `buffer_size_kb` file says, in KiB. The kernel prints three forms in the
/// buffer's (top-level or instance) file: `"1408"` when every CPU's buffer has that
/// size; `"7 (expanded: 1408)"` while the buffer still has its boot-time minimum
/// size, the second number being the size it grows to at its first use (an event or
/// tracer enabled, a size written); and `"X"` when the CPUs' buffers differ in size.
/// A `per_cpu/cpuN/buffer_size_kb` file always holds that CPU's current size alone.
/// (Before Linux 6.7 an instance could read `"1410 (expanded: 1408)"`: its own size,
/// then the size the top-level buffer would grow to.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferSize {
    /// Every CPU's buffer has the same size.
    Uniform {
        /// The size now (the first number).
        kb: u64,
        /// Set while the buffer has not been expanded yet: the size it gets then.
        expands_to: Option<u64>,
    },
    /// `"X"`: the CPUs' buffers differ; each CPU's file holds its own size.
    PerCpu,
}

impl BufferSize {
    /// Parses the text of a `buffer_size_kb` file; None for anything the kernel does
    /// not print.
    pub fn parse(text: &str) -> Option<BufferSize> {
        let text = text.trim();
        if text == "X" {
            return Some(BufferSize::PerCpu);
        }
        let number = |s: &str| -> Option<u64> {
            // u64's parser takes a leading '+', the kernel never prints one.
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        let (kb, expands_to) = match text.split_once(' ') {
            None => (number(text)?, None),
            Some((kb, rest)) => {
                let expanded = rest.strip_prefix("(expanded: ")?.strip_suffix(')')?;
                (number(kb)?, Some(number(expanded)?))
            }
        };
        Some(BufferSize::Uniform { kb, expands_to })
    }

    /// The size configured now, the value to write back to restore it; None when the
    /// CPUs differ.
    pub fn current_kb(self) -> Option<u64> {
        match self {
            BufferSize::Uniform { kb, .. } => Some(kb),
            BufferSize::PerCpu => None,
        }
    }

    /// The size each CPU's buffer has once tracing runs: a buffer not yet expanded
    /// grows at its first use, so the larger of the two numbers. None when the CPUs
    /// differ.
    pub fn recording_kb(self) -> Option<u64> {
        match self {
            BufferSize::Uniform { kb, expands_to } => Some(kb.max(expands_to.unwrap_or(0))),
            BufferSize::PerCpu => None,
        }
    }
}

/// Parses `buffer_size_kb` → the size configured now ([`BufferSize::current_kb`]):
/// `"1410"` → 1410, `"7 (expanded: 1408)"` → 7, `"X"` → None.
pub fn parse_buffer_size_kb(text: &str) -> Option<u64> {
    BufferSize::parse(text)?.current_kb()
}

/// One CPU's `per_cpu/cpuN/stats`, parsed, with the original text kept for CPUSTAT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Events currently in the buffer (not yet read).
    pub entries: u64,
    /// Events lost because the buffer wrapped.
    pub overrun: u64,
    /// Events lost by nested writes.
    pub commit_overrun: u64,
    /// Bytes currently in the buffer.
    pub bytes: u64,
    /// Timestamp of the oldest event, as printed by the kernel.
    pub oldest_event_ts: String,
    /// The current time of the trace clock, as printed by the kernel.
    pub now_ts: String,
    /// Events dropped because the buffer was full (no-overwrite mode).
    pub dropped_events: u64,
    /// Events consumed by readers.
    pub read_events: u64,
    /// The file as read.
    pub text: String,
}

impl CpuStats {
    /// Parses the stats text; a missing counter is 0, a malformed number an error.
    pub fn parse(text: &str) -> Result<CpuStats, String> {
        let mut s = CpuStats {
            text: text.to_string(),
            ..CpuStats::default()
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let num = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("`{key}` has a non-numeric value {value:?}"))
            };
            match key.trim() {
                "entries" => s.entries = num()?,
                "overrun" => s.overrun = num()?,
                "commit overrun" => s.commit_overrun = num()?,
                "bytes" => s.bytes = num()?,
                "oldest event ts" => s.oldest_event_ts = value.to_string(),
                "now ts" => s.now_ts = value.to_string(),
                "dropped events" => s.dropped_events = num()?,
                "read events" => s.read_events = num()?,
                _ => {}
            }
        }
        Ok(s)
    }
}

impl Instance {
    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Every event of this instance (`events/<system>/<event>/`), sorted.
    pub fn available_events(&self) -> Result<Vec<EventName>, TracefsError> {
        let dir = self.file("events");
        let mut out = Vec::new();
        for sys in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let sys = sys.map_err(io_err(&dir))?;
            if !sys.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let sys_name = sys.file_name().to_string_lossy().into_owned();
            let sys_dir = sys.path();
            for ev in std::fs::read_dir(&sys_dir).map_err(io_err(&sys_dir))? {
                let ev = ev.map_err(io_err(&sys_dir))?;
                if ev.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push(EventName {
                        system: sys_name.clone(),
                        event: ev.file_name().to_string_lossy().into_owned(),
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The events as `trace-cmd list -e [REGEX]` shows them, one `system:event`
    /// each. Without a regex: the lines of `available_events`. With one, split at
    /// its first `:` into `SYS[:EVENT]` (POSIX basic regular expressions,
    /// case-insensitive, matched anywhere in the name, as trace-cmd does): a system
    /// whose name matches SYS gives all its events, or those matching EVENT; and
    /// without EVENT (and no trailing `:`), every event whose own name matches SYS.
    pub fn list_events(&self, regex: Option<&str>) -> Result<Vec<String>, TracefsError> {
        let Some(regex) = regex.filter(|r| !r.is_empty()) else {
            let path = self.file("available_events");
            return Ok(read_text(&path)?.lines().map(str::to_string).collect());
        };
        // trace-cmd splits with strtok: leading ':' are skipped, an empty rest
        // counts as none.
        let trimmed = regex.trim_start_matches(':');
        let (sys_re, ev_re) = match trimmed.split_once(':') {
            Some((s, e)) if !e.is_empty() => (s, Some(e)),
            Some((s, _)) => (s, None),
            None => (trimmed, None),
        };
        let just_systems = ev_re.is_none() && regex.ends_with(':');
        let sys_re = PosixRegex::new(sys_re)?;
        let ev_re = ev_re.map(PosixRegex::new).transpose()?;
        let events = self.available_events()?;
        Ok(events
            .iter()
            .filter(|e| {
                if sys_re.is_match(&e.system) {
                    ev_re.as_ref().map_or(true, |r| r.is_match(&e.event))
                } else {
                    !just_systems && ev_re.is_none() && sys_re.is_match(&e.event)
                }
            })
            .map(|e| format!("{}:{}", e.system, e.event))
            .collect())
    }

    /// `available_tracers`, as `trace-cmd list -t` prints it.
    pub fn available_tracers_text(&self) -> Result<String, TracefsError> {
        read_text(&self.file("available_tracers"))
    }

    /// Every trace option, as `trace-cmd list -o` (3.1.6) lists them: the files of
    /// `options/` in directory order (also the options of tracers not in use, which
    /// `trace_options` leaves out), each as its name when set and `no<name>` when not.
    pub fn trace_options_listing(&self) -> Result<Vec<String>, TracefsError> {
        let dir = self.file("options");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let set = read_text(&entry.path())?.trim() == "1";
            out.push(if set { name } else { format!("no{name}") });
        }
        Ok(out)
    }

    /// Resolves `-e` selectors against this instance's events (see [`resolve_events`]).
    pub fn resolve_events(&self, selectors: &[&str]) -> Result<Vec<EventName>, TracefsError> {
        resolve_events(&self.available_events()?, selectors)
    }

    /// The events currently enabled (from `set_event`).
    pub fn enabled_events(&self) -> Result<Vec<EventName>, TracefsError> {
        let path = self.file("set_event");
        let text = read_text(&path)?;
        let mut out: Vec<EventName> = text
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(s, e)| EventName {
                system: s.to_string(),
                event: e.to_string(),
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Enables or disables one event (`events/<sys>/<event>/enable`).
    pub fn set_event_enabled(&self, ev: &EventName, on: bool) -> Result<(), TracefsError> {
        let path = self
            .file("events")
            .join(&ev.system)
            .join(&ev.event)
            .join("enable");
        write_text(&path, if on { "1" } else { "0" })
    }

    /// The per-CPU buffer size in KiB, as the buffer is while tracing
    /// ([`BufferSize::recording_kb`]). A top buffer not yet expanded (fresh from
    /// boot: `7 (expanded: 1408)`) gives the expanded size: its first use expands it
    /// for good, so that is the size that puts it back as found; writing the small
    /// number back would leave a 7 KiB buffer.
    pub fn buffer_size_kb(&self) -> Result<u64, TracefsError> {
        let path = self.file("buffer_size_kb");
        let text = read_text(&path)?;
        let detail = match BufferSize::parse(&text) {
            Some(size @ BufferSize::Uniform { .. }) => {
                return Ok(size.recording_kb().unwrap_or_default())
            }
            Some(BufferSize::PerCpu) => {
                "the CPUs' buffers differ in size (\"X\"); set one size for all first".to_string()
            }
            None => format!("expected a size in KiB, found {:?}", text.trim()),
        };
        Err(TracefsError::Parse { path, detail })
    }

    /// Sets the per-CPU buffer size in KiB.
    pub fn set_buffer_size_kb(&self, kb: u64) -> Result<(), TracefsError> {
        write_text(&self.file("buffer_size_kb"), &kb.to_string())
    }

    /// The `trace_clock` file text, e.g. `"[local] global counter ...\n"`.
    pub fn trace_clock_text(&self) -> Result<String, TracefsError> {
        read_text(&self.file("trace_clock"))
    }

    /// The clock in use and every available clock.
    pub fn trace_clock(&self) -> Result<(String, Vec<String>), TracefsError> {
        let path = self.file("trace_clock");
        let text = read_text(&path)?;
        parse_trace_clock(&text).ok_or_else(|| TracefsError::Parse {
            path,
            detail: format!("no `[clock]` marks the current clock in {:?}", text.trim()),
        })
    }

    /// Selects the trace clock; an unknown name is an error listing the valid ones.
    pub fn set_trace_clock(&self, clock: &str) -> Result<(), TracefsError> {
        let (_, available) = self.trace_clock()?;
        if !available.iter().any(|c| c == clock) {
            return Err(TracefsError::UnknownClock {
                clock: clock.to_string(),
                available,
            });
        }
        write_text(&self.file("trace_clock"), clock)
    }

    /// Whether the ring buffer records (`tracing_on`).
    pub fn tracing_on(&self) -> Result<bool, TracefsError> {
        let path = self.file("tracing_on");
        match read_text(&path)?.trim() {
            "0" => Ok(false),
            "1" => Ok(true),
            other => Err(TracefsError::Parse {
                path,
                detail: format!("expected 0 or 1, found {other:?}"),
            }),
        }
    }

    /// Turns recording into the ring buffer on or off.
    pub fn set_tracing_on(&self, on: bool) -> Result<(), TracefsError> {
        write_text(&self.file("tracing_on"), if on { "1" } else { "0" })
    }

    /// The tracer in use (`current_tracer`, e.g. `nop`).
    pub fn current_tracer(&self) -> Result<String, TracefsError> {
        Ok(read_text(&self.file("current_tracer"))?.trim().to_string())
    }

    /// Selects a tracer; the kernel's refusal (e.g. EPERM for `function` on a
    /// locked-down kernel) comes back as an error naming `current_tracer`.
    pub fn set_current_tracer(&self, tracer: &str) -> Result<(), TracefsError> {
        write_text(&self.file("current_tracer"), tracer)
    }

    /// Discards everything in the ring buffer (opening `trace` with O_TRUNC).
    pub fn clear_buffer(&self) -> Result<(), TracefsError> {
        let path = self.file("trace");
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .map(drop)
            .map_err(io_err(&path))
    }

    /// `per_cpu/cpu<cpu>/stats`, parsed.
    pub fn cpu_stats(&self, cpu: usize) -> Result<CpuStats, TracefsError> {
        let path = self.file(&format!("per_cpu/cpu{cpu}/stats"));
        let text = read_text(&path)?;
        CpuStats::parse(&text).map_err(|detail| TracefsError::Parse { path, detail })
    }

    /// The path of `per_cpu/cpu<cpu>/trace_pipe_raw`.
    pub fn trace_pipe_raw(&self, cpu: usize) -> PathBuf {
        self.file(&format!("per_cpu/cpu{cpu}/trace_pipe_raw"))
    }

    /// `events/header_page`, verbatim (the ring-buffer page layout).
    pub fn header_page(&self) -> Result<Vec<u8>, TracefsError> {
        read_bytes(&self.file("events/header_page"))
    }

    /// `events/header_event`, verbatim (the event header layout).
    pub fn header_event(&self) -> Result<Vec<u8>, TracefsError> {
        read_bytes(&self.file("events/header_event"))
    }

    /// The `format` file of one event, verbatim.
    pub fn event_format(&self, ev: &EventName) -> Result<Vec<u8>, TracefsError> {
        read_bytes(
            &self
                .file("events")
                .join(&ev.system)
                .join(&ev.event)
                .join("format"),
        )
    }

    /// Every `events/ftrace/*/format`, in sorted event-name order.
    pub fn ftrace_formats(&self) -> Result<Vec<(String, Vec<u8>)>, TracefsError> {
        let events: Vec<EventName> = self
            .available_events()?
            .into_iter()
            .filter(|e| e.system == "ftrace")
            .collect();
        events
            .into_iter()
            .map(|e| Ok((e.event.clone(), self.event_format(&e)?)))
            .collect()
    }

    /// The formats of the given events grouped by system, systems and events sorted;
    /// the `ftrace` system is left out (it has its own section in trace.dat).
    pub fn system_formats(&self, events: &[EventName]) -> Result<Vec<SystemFormats>, TracefsError> {
        let mut sorted: Vec<&EventName> = events.iter().filter(|e| e.system != "ftrace").collect();
        sorted.sort();
        sorted.dedup();
        let mut out: Vec<SystemFormats> = Vec::new();
        for ev in sorted {
            let fmt = self.event_format(ev)?;
            match out.last_mut() {
                Some((sys, list)) if *sys == ev.system => list.push((ev.event.clone(), fmt)),
                _ => out.push((ev.system.clone(), vec![(ev.event.clone(), fmt)])),
            }
        }
        Ok(out)
    }
}

/// `/proc/kallsyms`, verbatim (empty if the file does not exist).
pub fn kallsyms() -> Result<Vec<u8>, TracefsError> {
    let path = Path::new("/proc/kallsyms");
    match read_file(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The top-level `printk_formats`, verbatim.
pub fn printk_formats() -> Result<Vec<u8>, TracefsError> {
    read_bytes(&tracing_dir()?.join("printk_formats"))
}

/// The top-level `saved_cmdlines`, verbatim.
pub fn saved_cmdlines() -> Result<Vec<u8>, TracefsError> {
    read_bytes(&tracing_dir()?.join("saved_cmdlines"))
}

/// `"sysname nodename release machine"`, as trace-cmd's UNAME option holds it.
pub fn uname() -> String {
    let u = nix::sys::utsname::uname();
    match u {
        Ok(u) => format!(
            "{} {} {} {}",
            u.sysname().to_string_lossy(),
            u.nodename().to_string_lossy(),
            u.release().to_string_lossy(),
            u.machine().to_string_lossy()
        ),
        Err(e) => {
            log::warn!("uname failed: {e}");
            String::from("Linux unknown unknown unknown")
        }
    }
}

// ---------------------------------------------------------------------------
// Remembering and restoring what a recording changes
// ---------------------------------------------------------------------------

/// What [`TracefsState::prepare_recording`] sets besides the events (`-p`, `-b`, `-C`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RecordingSetup<'a> {
    pub tracer: Option<&'a str>,
    pub buffer_kb: Option<u64>,
    pub clock: Option<&'a str>,
}

/// Changes tracefs settings of one instance and remembers the original values, so
/// that [`TracefsState::restore`] (or dropping the guard) puts back exactly what
/// was changed: enabled events, tracer, buffer size, trace clock and `tracing_on`.
///
/// `restore` is idempotent, so a Ctrl-C path can call it and the later drop is a
/// no-op. Settings changed again after a restore are remembered anew.
#[derive(Debug)]
pub struct TracefsState {
    instance: Instance,
    events: Vec<(EventName, bool)>,
    buffer_size_kb: Option<u64>,
    clock: Option<String>,
    tracing_on: Option<bool>,
    tracer: Option<String>,
}

impl TracefsState {
    /// A guard for the instance at `instance.path()` (the guard does not own or
    /// remove the instance).
    pub fn new(instance: &Instance) -> TracefsState {
        TracefsState {
            instance: Instance {
                path: instance.path.clone(),
                remove_on_drop: false,
            },
            events: Vec::new(),
            buffer_size_kb: None,
            clock: None,
            tracing_on: None,
            tracer: None,
        }
    }

    /// Enables (or disables) the events, remembering each one's original state;
    /// `ftrace` events are skipped (they cannot be switched). On an error the
    /// events already changed stay remembered for restore.
    pub fn set_events(&mut self, events: &[EventName], on: bool) -> Result<(), TracefsError> {
        let enabled = self.instance.enabled_events()?;
        // The `ftrace` system's events (print, function, ...) have no switch:
        // they are recorded whenever their source (trace_marker, a tracer) writes.
        for ev in events.iter().filter(|e| e.system != "ftrace") {
            let was = enabled.binary_search(ev).is_ok();
            if was == on {
                continue;
            }
            // A failed write changed nothing, so only successes are remembered.
            self.instance.set_event_enabled(ev, on)?;
            if !self.events.iter().any(|(e, _)| e == ev) {
                self.events.push((ev.clone(), was));
            }
        }
        Ok(())
    }

    /// Enables the events (see [`TracefsState::set_events`]).
    pub fn enable_events(&mut self, events: &[EventName]) -> Result<(), TracefsError> {
        self.set_events(events, true)
    }

    /// Sets the per-CPU buffer size, remembering the original.
    pub fn set_buffer_size_kb(&mut self, kb: u64) -> Result<(), TracefsError> {
        if self.buffer_size_kb.is_none() {
            self.buffer_size_kb = Some(self.instance.buffer_size_kb()?);
        }
        self.instance.set_buffer_size_kb(kb)
    }

    /// Selects the trace clock, remembering the original.
    pub fn set_trace_clock(&mut self, clock: &str) -> Result<(), TracefsError> {
        if self.clock.is_none() {
            self.clock = Some(self.instance.trace_clock()?.0);
        }
        self.instance.set_trace_clock(clock)
    }

    /// Selects a tracer (`-p`), remembering the original (only once it succeeded).
    pub fn set_tracer(&mut self, tracer: &str) -> Result<(), TracefsError> {
        let original = self.instance.current_tracer()?;
        self.instance.set_current_tracer(tracer)?;
        self.tracer.get_or_insert(original);
        Ok(())
    }

    /// Sets `tracing_on`, remembering the original.
    pub fn set_tracing_on(&mut self, on: bool) -> Result<(), TracefsError> {
        if self.tracing_on.is_none() {
            self.tracing_on = Some(self.instance.tracing_on()?);
        }
        self.instance.set_tracing_on(on)
    }

    /// Sets the instance up for a recording and remembers what it changed: tracing
    /// off, the tracer, buffer size and clock when given, exactly `events` enabled
    /// (events someone else left on are switched off, since only the requested
    /// events' formats go into the file), and an empty buffer. `events` is sorted.
    pub fn prepare_recording(
        &mut self,
        setup: &RecordingSetup<'_>,
        events: &[EventName],
    ) -> Result<(), TracefsError> {
        self.set_tracing_on(false)?;
        if let Some(t) = setup.tracer {
            self.set_tracer(t)?;
        }
        if let Some(kb) = setup.buffer_kb {
            self.set_buffer_size_kb(kb)?;
        }
        if let Some(c) = setup.clock {
            self.set_trace_clock(c)?;
        }
        let others: Vec<EventName> = self
            .instance
            .enabled_events()?
            .into_iter()
            .filter(|e| events.binary_search(e).is_err())
            .collect();
        self.set_events(&others, false)?;
        self.enable_events(events)?;
        self.instance.clear_buffer()
    }

    /// Puts back every remembered setting. Tries all of them even if one fails and
    /// returns the first error. Calling it again does nothing.
    pub fn restore(&mut self) -> Result<(), TracefsError> {
        let mut first_err = None;
        let mut note = |r: Result<(), TracefsError>| {
            if let Err(e) = r {
                log::warn!("restoring tracefs: {e}");
                first_err.get_or_insert(e);
            }
        };
        // Stop recording first so that restoring events adds nothing to the buffer.
        if self.tracing_on == Some(false) {
            note(self.instance.set_tracing_on(false));
        }
        for (ev, was) in std::mem::take(&mut self.events) {
            note(self.instance.set_event_enabled(&ev, was));
        }
        if let Some(tracer) = self.tracer.take() {
            note(self.instance.set_current_tracer(&tracer));
        }
        if let Some(clock) = self.clock.take() {
            note(write_text(&self.instance.file("trace_clock"), &clock));
        }
        if let Some(kb) = self.buffer_size_kb.take() {
            note(self.instance.set_buffer_size_kb(kb));
        }
        if let Some(on) = self.tracing_on.take() {
            note(self.instance.set_tracing_on(on));
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for TracefsState {
    fn drop(&mut self) {
        // Errors are logged by restore().
        let _ = self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instance over a fake tracing directory holding `events` (`sys:event`).
    fn fake_instance(tag: &str, events: &[&str]) -> Instance {
        let dir = std::env::temp_dir().join(format!("tcrs-list-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for e in events {
            let (sys, ev) = e.split_once(':').unwrap();
            std::fs::create_dir_all(dir.join("events").join(sys).join(ev)).unwrap();
        }
        std::fs::write(dir.join("events/enable"), "0\n").unwrap();
        std::fs::write(dir.join("available_events"), events.join("\n") + "\n").unwrap();
        Instance {
            path: dir,
            remove_on_drop: false,
        }
    }

    #[test]
    fn list_events_selects_as_trace_cmd_does() {
        let inst = fake_instance(
            "sel",
            &[
                "sched:sched_switch",
                "sched:sched_wakeup",
                "syscalls:sys_enter_sched_yield",
                "irq:irq_handler_entry",
                "schedx:other",
            ],
        );
        let list = |re: Option<&str>| inst.list_events(re).unwrap();
        assert_eq!(list(None).len(), 5);
        assert_eq!(list(Some("")).len(), 5);
        // A system match gives the whole system; otherwise event names match.
        assert_eq!(
            list(Some("^sched$")),
            ["sched:sched_switch", "sched:sched_wakeup"]
        );
        assert_eq!(
            list(Some("sched_")),
            [
                "sched:sched_switch",
                "sched:sched_wakeup",
                "syscalls:sys_enter_sched_yield"
            ]
        );
        // A trailing ':' means systems only.
        assert_eq!(list(Some("^sched:")).len(), 3);
        assert_eq!(list(Some("handler:")), Vec::<String>::new());
        // SYS:EVENT, case-insensitive, anchored where the user anchors.
        assert_eq!(list(Some("SCHED:WAKE")), ["sched:sched_wakeup"]);
        assert_eq!(list(Some("sched:switch$")), ["sched:sched_switch"]);
        assert_eq!(list(Some("sch:o")), ["schedx:other"]);
        // POSIX basic syntax: `+` is a literal there.
        assert_eq!(list(Some("sched_+")), Vec::<String>::new());
        assert!(matches!(
            inst.list_events(Some("sched[")),
            Err(TracefsError::BadRegex(_))
        ));
        let _ = std::fs::remove_dir_all(inst.path());
    }

    #[test]
    fn buffer_size_is_read_in_every_kernel_format() {
        // Expanded (and every per-CPU file).
        let plain = BufferSize::parse("1408\n").unwrap();
        assert_eq!(
            plain,
            BufferSize::Uniform {
                kb: 1408,
                expands_to: None
            }
        );
        assert_eq!(
            (plain.current_kb(), plain.recording_kb()),
            (Some(1408), Some(1408))
        );
        // The top buffer at its boot-time size: restore the 7, record with 1408.
        let boot = BufferSize::parse("7 (expanded: 1408)\n").unwrap();
        assert_eq!(
            boot,
            BufferSize::Uniform {
                kb: 7,
                expands_to: Some(1408)
            }
        );
        assert_eq!(
            (boot.current_kb(), boot.recording_kb()),
            (Some(7), Some(1408))
        );
        // An instance before Linux 6.7 while the top buffer was not expanded.
        let old = BufferSize::parse("1410 (expanded: 1408)").unwrap();
        assert_eq!(
            (old.current_kb(), old.recording_kb()),
            (Some(1410), Some(1410))
        );
        // CPUs of different sizes.
        let x = BufferSize::parse("X\n").unwrap();
        assert_eq!(x, BufferSize::PerCpu);
        assert_eq!((x.current_kb(), x.recording_kb()), (None, None));
        for bad in [
            "",
            "\n",
            "x",
            "garbage",
            "-7",
            "+7",
            "7 (expanded: )",
            "7 (expanded: 1408",
            "7 (expanded: +1408)",
            "7 (shrunk: 1408)",
            "99999999999999999999",
        ] {
            assert_eq!(BufferSize::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            BufferSize::parse("18446744073709551615").and_then(BufferSize::current_kb),
            Some(u64::MAX)
        );
        // The plain function answers the configured size.
        assert_eq!(parse_buffer_size_kb("7 (expanded: 1408)\n"), Some(7));
        assert_eq!(parse_buffer_size_kb("1410\n"), Some(1410));
        assert_eq!(parse_buffer_size_kb("X\n"), None);
    }

    #[test]
    fn instance_is_created_and_removed() {
        let Ok(top) = Instance::top() else {
            panic!("tracefs is not mounted: run as root with tracefs mounted (.ci/install-deps mounts it)");
        };
        let name = format!("tracecmd-rs-test-{}", std::process::id());
        {
            let inst = Instance::create(&name).expect("create instance (needs root)");
            assert!(inst.path().join("per_cpu").is_dir());
            assert!(cpu_count(&inst).unwrap() >= 1);
            inst.write("tracing_on", "0").unwrap();
            assert_eq!(inst.read("tracing_on").unwrap().trim(), "0");
        }
        assert!(!top.path().join("instances").join(&name).exists());
        assert!(Instance::create("a/b").is_err());
    }
}
