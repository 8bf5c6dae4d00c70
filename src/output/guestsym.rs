//! A guest's kernel symbols in a merged host+guest trace.dat (`record -A`).
//!
//! A file has one kallsyms and one printk_formats table, the host's. `report`
//! (libtraceevent) resolves a function address to the symbol with the nearest lower
//! address in its sorted kallsyms, so a guest address would name whatever host
//! symbol lies below it. Instead the guest's symbols are added to the file's table
//! at `guest address + delta`, in a window no host symbol covers (the middle of the
//! widest gap between the host's addresses: with the host's text near the top of
//! the address space that is in the non-canonical hole, where no real pointer
//! points), and the same delta is added, in the guest's recorded pages, to every
//! field `report` resolves through kallsyms: the ones its event's print fmt prints
//! with `%pS`/`%ps`/`%pF`/`%pf`/`%pB`, and the stack of `kernel_stack`. The string
//! pointers of `bprint` (`fmt`) and `bputs` (`str`), looked up by exact address in
//! printk_formats, move by the same delta, with the guest's printk formats added
//! there at their moved addresses.

use std::collections::HashSet;

use super::layout::parse_fields;

/// Where libtraceevent looks a field's value up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointerKind {
    /// One function address (kallsyms, nearest lower symbol).
    Symbol,
    /// Function addresses from the offset to the end of the record (`kernel_stack`).
    SymbolsToEnd,
    /// A string's address (printk_formats, exact).
    Printk,
}

/// An 8-byte field of a guest event to move by the guest's delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointerField {
    /// Offset in the event payload (from `common_type`).
    pub offset: usize,
    /// How it is looked up.
    pub kind: PointerKind,
}

/// How one guest's addresses move into the file's tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolShift {
    /// Added (wrapping) to each guest address that the guest's kallsyms resolves.
    pub delta: u64,
    /// Lowest and highest guest symbol address moved: a value outside resolves to
    /// no guest symbol, and is left as it is.
    pub lo: u64,
    /// See [`SymbolShift::lo`].
    pub hi: u64,
    /// The guest's printk_formats addresses (moved by `delta` when found).
    pub printk: HashSet<u64>,
}

impl SymbolShift {
    /// The value a guest field of `kind` holds in the merged file.
    pub fn apply(&self, kind: PointerKind, v: u64) -> u64 {
        let moves = match kind {
            PointerKind::Symbol | PointerKind::SymbolsToEnd => (self.lo..=self.hi).contains(&v),
            PointerKind::Printk => self.printk.contains(&v),
        };
        if moves {
            v.wrapping_add(self.delta)
        } else {
            v
        }
    }
}

/// One kallsyms line as libtraceevent reads it: address, type, name (and module).
fn kallsyms_line(line: &str) -> Option<(u64, char, &str)> {
    let mut it = line.split_whitespace();
    let addr = it.next()?;
    if addr.len() > 16 {
        return None;
    }
    let addr = u64::from_str_radix(addr, 16).ok()?;
    let mut ty = it.next()?.chars();
    let t = ty.next()?;
    if ty.next().is_some() {
        return None;
    }
    let name = it.next()?;
    Some((addr, t, name))
}

/// Whether libtraceevent registers the symbol: it skips absolute symbols (x86-64
/// per-CPU offsets) and ARM's `$x` mapping symbols.
fn registered(t: char, name: &str) -> bool {
    t != 'A' && t != 'a' && !name.starts_with('$')
}

/// The addresses of the symbols libtraceevent registers from `kallsyms`, sorted.
fn symbol_addresses(kallsyms: &[u8]) -> Vec<u64> {
    let mut v: Vec<u64> = String::from_utf8_lossy(kallsyms)
        .lines()
        .filter_map(kallsyms_line)
        .filter(|&(_, t, n)| registered(t, n))
        .map(|(a, _, _)| a)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// A gap wider than this between a kernel's own symbols separates per-CPU offsets
/// (small numbers) from its text and data: only the part above it is code.
const CLUSTER_GAP: u64 = 1 << 40;

/// The guest's symbol range worth moving: all of it, or above its widest gap if
/// that gap is a per-CPU/kernel split. `None` without usable addresses (all zero
/// when kptr_restrict hid them).
fn guest_range(addrs: &[u64]) -> Option<(u64, u64)> {
    let hi = *addrs.last()?;
    if hi == 0 {
        return None;
    }
    let mut lo = addrs[0];
    if let Some(w) = addrs.windows(2).max_by_key(|w| w[1] - w[0]) {
        if w[1] - w[0] > CLUSTER_GAP {
            lo = w[1];
        }
    }
    Some((lo, hi))
}

/// Alignment of a guest window's start (keeps the moved addresses readable).
const WINDOW_ALIGN: u64 = 1 << 20;

/// The start of a window of `span` bytes where no address of `taken` (sorted)
/// lies, nor is the nearest lower one of an address in it: the middle of the
/// widest gap. `None` if no gap fits it with room on both sides.
fn window(taken: &[u64], span: u64) -> Option<u64> {
    // Gaps as (first free, last free).
    let mut gaps = Vec::new();
    match taken.first() {
        None => gaps.push((0, u64::MAX)),
        Some(&first) if first > 0 => gaps.push((0, first - 1)),
        Some(_) => {}
    }
    for w in taken.windows(2) {
        if w[1] - w[0] > 1 {
            gaps.push((w[0] + 1, w[1] - 1));
        }
    }
    if let Some(&last) = taken.last() {
        if last < u64::MAX {
            gaps.push((last + 1, u64::MAX));
        }
    }
    let (a, b) = gaps.into_iter().max_by_key(|&(a, b)| b - a)?;
    let room = (b - a).checked_sub(span)?;
    if room < 4 * WINDOW_ALIGN {
        return None;
    }
    let start = (a + room / 2) / WINDOW_ALIGN * WINDOW_ALIGN;
    (start > a && start.checked_add(span)? < b).then_some(start)
}

/// Moves `guest`'s symbols and printk formats into `host_kallsyms` and
/// `host_printk` (appended; libtraceevent sorts them) and returns how its
/// addresses move. `None` (nothing changed) when the guest's table has no usable
/// addresses, is the host's very table (one kernel, one load address), or no free
/// window is wide enough.
pub fn merge_symbols(
    host_kallsyms: &mut Vec<u8>,
    host_printk: &mut Vec<u8>,
    guest_kallsyms: &[u8],
    guest_printk: &[u8],
) -> Option<SymbolShift> {
    if guest_kallsyms == host_kallsyms.as_slice() {
        return None;
    }
    let (lo, hi) = guest_range(&symbol_addresses(guest_kallsyms))?;
    let start = window(&symbol_addresses(host_kallsyms), hi - lo)?;
    let delta = start.wrapping_sub(lo);
    if !host_kallsyms.is_empty() && !host_kallsyms.ends_with(b"\n") {
        host_kallsyms.push(b'\n');
    }
    for line in String::from_utf8_lossy(guest_kallsyms).lines() {
        let Some((addr, t, name)) = kallsyms_line(line) else {
            continue; // a line libtraceevent cannot read would end its parsing
        };
        if !registered(t, name) || !(lo..=hi).contains(&addr) {
            continue;
        }
        let module = line
            .split_once('\t')
            .map(|(_, m)| m.trim())
            .filter(|m| m.starts_with('[') && m.ends_with(']') && !m.contains(char::is_whitespace));
        let moved = addr.wrapping_add(delta);
        let text = match module {
            Some(m) => format!("{moved:016x} {t} {name}\t{m}\n"),
            None => format!("{moved:016x} {t} {name}\n"),
        };
        host_kallsyms.extend_from_slice(text.as_bytes());
    }
    let mut printk = HashSet::new();
    if !host_printk.is_empty() && !host_printk.ends_with(b"\n") {
        host_printk.push(b'\n');
    }
    for line in String::from_utf8_lossy(guest_printk).lines() {
        let Some((addr, fmt)) = line.split_once(" : ") else {
            continue;
        };
        let hex = addr.trim().trim_start_matches("0x");
        let Ok(addr) = u64::from_str_radix(hex, 16) else {
            continue;
        };
        if addr == 0 {
            continue;
        }
        printk.insert(addr);
        let text = format!("0x{:x} : {fmt}\n", addr.wrapping_add(delta));
        host_printk.extend_from_slice(text.as_bytes());
    }
    Some(SymbolShift {
        delta,
        lo,
        hi,
        printk,
    })
}

/// The quoted format string of a `print fmt:` line and the text after it.
fn split_print_fmt(text: &str) -> Option<(String, &str)> {
    let rest = text.split_once("print fmt:")?.1.trim_start();
    let body = rest.strip_prefix('"')?;
    let mut fmt = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, e)) = chars.next() {
                    fmt.push('\\');
                    fmt.push(e);
                }
            }
            '"' => return Some((fmt, &body[i + 1..])),
            c => fmt.push(c),
        }
    }
    None
}

/// The top-level comma-separated arguments after the format string.
fn split_args(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if quoted {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    // The text between the closing quote and the first comma is not an argument.
    out.remove(0);
    out
}

/// For each conversion of `fmt` that takes an argument, in order: whether it
/// prints a symbol (`%pS`, `%ps`, `%pF`, `%pf`, `%pB`).
fn conversions(fmt: &str) -> Vec<bool> {
    let b = fmt.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        i += 1;
        if b.get(i) == Some(&b'%') {
            i += 1;
            continue;
        }
        while i < b.len() && b"-+ #0".contains(&b[i]) {
            i += 1;
        }
        let star = |i: &mut usize, out: &mut Vec<bool>| {
            if b.get(*i) == Some(&b'*') {
                out.push(false);
                *i += 1;
            }
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
        };
        star(&mut i, &mut out);
        if b.get(i) == Some(&b'.') {
            i += 1;
            star(&mut i, &mut out);
        }
        while i < b.len() && b"hlLqjzZt".contains(&b[i]) {
            i += 1;
        }
        let Some(&c) = b.get(i) else { break };
        i += 1;
        out.push(c == b'p' && matches!(b.get(i), Some(b'S' | b's' | b'F' | b'f' | b'B')));
    }
    out
}

/// The field an argument names when it is `REC->field`, under casts and parens.
fn rec_field(arg: &str) -> Option<&str> {
    let mut a = arg.trim();
    loop {
        if let Some(f) = a.strip_prefix("REC->") {
            let ok = !f.is_empty() && f.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
            return ok.then_some(f);
        }
        let inner = a.strip_prefix('(')?;
        let close = inner.find(')')?;
        a = if close + 1 == inner.len() {
            &inner[..close] // (REC->x)
        } else {
            inner[close + 1..].trim_start() // (void *)REC->x
        };
    }
}

/// The 8-byte fields of a guest event, from its format text, that `report` looks
/// up in kallsyms or printk_formats (see the module doc).
pub fn pointer_fields(format: &[u8]) -> Vec<PointerField> {
    let text = String::from_utf8_lossy(format);
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("name:"))
        .map(str::trim)
        .unwrap_or("");
    let fields = parse_fields(format);
    let field = |n: &str| fields.get(n).copied().filter(|&(_, size)| size == 8);
    let mut out = Vec::new();
    let mut push = |offset, kind| {
        let f = PointerField { offset, kind };
        if !out.contains(&f) {
            out.push(f);
        }
    };
    match name {
        "bprint" => field("fmt")
            .into_iter()
            .for_each(|f| push(f.0, PointerKind::Printk)),
        "bputs" => field("str")
            .into_iter()
            .for_each(|f| push(f.0, PointerKind::Printk)),
        "kernel_stack" => {
            if let Some(&(o, _)) = fields.get("caller") {
                push(o, PointerKind::SymbolsToEnd);
            }
        }
        _ => {}
    }
    if let Some((fmt, rest)) = split_print_fmt(&text) {
        for (sym, arg) in conversions(&fmt).into_iter().zip(split_args(rest)) {
            if let Some(f) = sym.then(|| rec_field(arg)).flatten().and_then(field) {
                push(f.0, PointerKind::Symbol);
            }
        }
    }
    out
}

/// Moves the pointer `fields` of one guest event payload by `shift`.
pub fn shift_payload(payload: &mut [u8], fields: &[PointerField], shift: &SymbolShift) -> bool {
    let mut changed = false;
    let mut one = |p: &mut [u8], kind| {
        let Ok(b) = <[u8; 8]>::try_from(&p[..8]) else {
            return;
        };
        let v = u64::from_le_bytes(b);
        let n = shift.apply(kind, v);
        if n != v {
            p[..8].copy_from_slice(&n.to_le_bytes());
            changed = true;
        }
    };
    for f in fields {
        match f.kind {
            PointerKind::SymbolsToEnd => {
                let Some(tail) = payload.get_mut(f.offset..) else {
                    continue;
                };
                for w in tail.chunks_exact_mut(8) {
                    one(w, f.kind);
                }
            }
            kind => {
                if let Some(p) = payload.get_mut(f.offset..f.offset + 8) {
                    one(p, kind);
                }
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRINT: &[u8] = b"name: print\nID: 5\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:unsigned long ip;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:char buf[];\toffset:16;\tsize:0;\tsigned:0;\n\nprint fmt: \"%ps: %s\", (void *)REC->ip, REC->buf\n";

    #[test]
    fn symbol_fields_come_from_the_print_fmt() {
        assert_eq!(
            pointer_fields(PRINT),
            vec![PointerField {
                offset: 8,
                kind: PointerKind::Symbol
            }]
        );
        let f = b"name: x\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:unsigned long b;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:void * c;\toffset:24;\tsize:8;\tsigned:0;\n\nprint fmt: \"%*d %%ps %pM %d (%pS) %pB\", REC->a, (int)(REC->a), REC->c, REC->a, (void *)(REC->b), REC->b + 4\n";
        // `%*d` takes two arguments; `%%ps` none; `%pM` is no symbol; the last
        // argument is an expression.
        assert_eq!(
            pointer_fields(f),
            vec![PointerField {
                offset: 16,
                kind: PointerKind::Symbol
            }]
        );
        let bprint = b"name: bprint\nformat:\n\tfield:unsigned long ip;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:const char * fmt;\toffset:16;\tsize:8;\tsigned:0;\n\nprint fmt: \"%ps: %s\", (void *)REC->ip, REC->fmt\n";
        assert_eq!(
            pointer_fields(bprint),
            vec![
                PointerField {
                    offset: 16,
                    kind: PointerKind::Printk
                },
                PointerField {
                    offset: 8,
                    kind: PointerKind::Symbol
                }
            ]
        );
        // A 4-byte field (a 32-bit guest) cannot hold a moved address.
        let small = String::from_utf8_lossy(PRINT).replace("size:8", "size:4");
        assert!(pointer_fields(small.as_bytes()).is_empty());
    }

    #[test]
    fn guest_symbols_land_in_a_window_no_host_symbol_covers() {
        let mut host = b"ffffffff81000000 T _stext\nffffffff81400000 t host_fn\nffffffffc0200000 t mod_fn\t[m]\n0000000000000000 A fixed_percpu_data\n".to_vec();
        let mut printk = b"0xffffffff82000000 : \"host\"\n".to_vec();
        let guest = b"0000000000000000 D __per_cpu_start\n0000000000001000 D percpu_var\nffffffff81000000 T _stext\nffffffff81400010 t guest_fn\nffffffffc0300000 t gmod_fn\t[gm]\nffffffff81500000 t $x\nbogus line\n";
        let shift = merge_symbols(
            &mut host,
            &mut printk,
            guest,
            b"0xffffffff81400100 : \"guest %d\"\n",
        )
        .unwrap();
        assert_eq!(
            (shift.lo, shift.hi),
            (0xffffffff81000000, 0xffffffffc0300000)
        );
        let host_addrs = [
            0xffffffff81000000u64,
            0xffffffff81400000,
            0xffffffffc0200000,
        ];
        let start = 0xffffffff81000000u64.wrapping_add(shift.delta);
        let end = 0xffffffffc0300000u64.wrapping_add(shift.delta);
        assert!(start < end && host_addrs.iter().all(|&h| h < start || h > end));
        assert_eq!(start % WINDOW_ALIGN, 0);
        let text = String::from_utf8(host).unwrap();
        assert!(text.contains(&format!(
            "{:016x} t guest_fn\n",
            0xffffffff81400010u64.wrapping_add(shift.delta)
        )));
        assert!(text.contains(&format!("{end:016x} t gmod_fn\t[gm]\n")));
        assert!(!text.contains("percpu_var") && !text.contains("$x") && !text.contains("bogus"));
        let p = String::from_utf8(printk).unwrap();
        assert!(p.contains(&format!(
            "0x{:x} : \"guest %d\"\n",
            0xffffffff81400100u64.wrapping_add(shift.delta)
        )));
        // Values the guest's table resolves move; others (NULL, user addresses) stay.
        assert_eq!(
            shift.apply(PointerKind::Symbol, 0xffffffff81400020),
            0xffffffff81400020u64.wrapping_add(shift.delta)
        );
        assert_eq!(shift.apply(PointerKind::Symbol, 0), 0);
        assert_eq!(
            shift.apply(PointerKind::Printk, 0xffffffff81400101),
            0xffffffff81400101
        );
    }

    #[test]
    fn a_second_guest_gets_its_own_window() {
        let mut host = b"ffffffff81000000 T _stext\nffffffff83000000 T _end\n".to_vec();
        let guest = b"ffffffff81000000 T _stext\nffffffff81000100 t g\nffffffff83000000 T _end\n";
        let mut printk = Vec::new();
        let a = merge_symbols(&mut host, &mut printk, guest, b"").unwrap();
        let b = merge_symbols(&mut host, &mut printk, guest, b"").unwrap();
        let span = 0x2000000u64;
        let (sa, sb) = (
            0xffffffff81000000u64.wrapping_add(a.delta),
            0xffffffff81000000u64.wrapping_add(b.delta),
        );
        assert!(sa + span < sb || sb + span < sa, "windows overlap");
    }

    #[test]
    fn nothing_moves_for_the_hosts_own_table_or_hidden_addresses() {
        let k = b"ffffffff81000000 T _stext\n".to_vec();
        assert!(merge_symbols(&mut k.clone(), &mut Vec::new(), &k, b"").is_none());
        let hidden = b"0000000000000000 T _stext\n0000000000000000 t f\n";
        assert!(merge_symbols(&mut k.clone(), &mut Vec::new(), hidden, b"").is_none());
    }

    #[test]
    fn payload_fields_and_stacks_move() {
        let shift = SymbolShift {
            delta: 0x100,
            lo: 0x1000,
            hi: 0x2000,
            printk: HashSet::from([0x1500]),
        };
        let mut p = vec![0u8; 40];
        p[8..16].copy_from_slice(&0x1234u64.to_le_bytes());
        p[16..24].copy_from_slice(&0x1500u64.to_le_bytes());
        p[24..32].copy_from_slice(&0x1800u64.to_le_bytes());
        p[32..40].copy_from_slice(&7u64.to_le_bytes());
        let fields = [
            PointerField {
                offset: 8,
                kind: PointerKind::Symbol,
            },
            PointerField {
                offset: 16,
                kind: PointerKind::Printk,
            },
            PointerField {
                offset: 24,
                kind: PointerKind::SymbolsToEnd,
            },
        ];
        assert!(shift_payload(&mut p, &fields, &shift));
        let at = |o: usize| u64::from_le_bytes(p[o..o + 8].try_into().unwrap());
        assert_eq!((at(8), at(16), at(24), at(32)), (0x1334, 0x1600, 0x1900, 7));
    }
}
