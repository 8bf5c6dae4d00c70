//! What a recorder learns about its ring buffer from tracefs when it is made: the
//! page (sub-buffer) size it reads, pads and splits the max-kb ring by, and the size
//! of the ring, which bounds a flush and sets the wake policy.

use std::path::Path;

use crate::tracefs::BufferSize;

/// The system's page size (the ring buffer's page size unless `buffer_subbuf_size_kb`
/// says otherwise).
pub(super) fn system_page_size() -> usize {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => 4096,
    }
}

/// The ring buffer's sub-buffer size of a buffer directory (kernels ≥ 6.8 let it differ
/// from the page size); the page size when the file is missing or unreadable.
pub(super) fn subbuf_size(dir: &Path, page: usize) -> usize {
    let Ok(text) = std::fs::read_to_string(dir.join("buffer_subbuf_size_kb")) else {
        return page;
    };
    parse_subbuf_kb(&text, page).unwrap_or_else(|| {
        log::warn!(
            "ignoring unexpected buffer_subbuf_size_kb {:?} in {}",
            text.trim(),
            dir.display()
        );
        page
    })
}

/// `buffer_subbuf_size_kb` text → bytes (a power of two up to 1 MiB, at least `page`).
fn parse_subbuf_kb(text: &str, page: usize) -> Option<usize> {
    match text.trim().parse::<usize>() {
        Ok(kb) if kb > 0 && kb <= 1024 && (kb * 1024).is_power_of_two() => {
            Some((kb * 1024).max(page))
        }
        _ => None,
    }
}

/// The per-CPU ring-buffer size of a buffer directory in bytes while recording, if it
/// can be read: the CPU's own `per_cpu/cpuN/buffer_size_kb`, else the buffer's
/// `buffer_size_kb`, whose not yet expanded "7 (expanded: 1408)" means 1408 KiB once
/// tracing runs (the buffer grows at its first use).
pub(super) fn buffer_bytes(dir: &Path, cpu: usize) -> Option<u64> {
    let per_cpu = dir.join(format!("per_cpu/cpu{cpu}/buffer_size_kb"));
    let text = std::fs::read_to_string(per_cpu)
        .or_else(|_| std::fs::read_to_string(dir.join("buffer_size_kb")))
        .ok()?;
    recording_bytes(&text)
}

/// `buffer_size_kb` text → the bytes a CPU's buffer holds while recording.
fn recording_bytes(text: &str) -> Option<u64> {
    let kb = BufferSize::parse(text)?.recording_kb()?;
    Some(kb.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::tmp;

    #[test]
    fn buffer_size_is_read_in_both_kernel_formats() {
        let dir = tmp("bufsize");
        std::fs::create_dir_all(dir.join("per_cpu/cpu1")).unwrap();
        std::fs::write(dir.join("buffer_size_kb"), "7 (expanded: 1408)\n").unwrap();
        assert_eq!(buffer_bytes(&dir, 0), Some(1408 * 1024));
        std::fs::write(dir.join("per_cpu/cpu1/buffer_size_kb"), "1027\n").unwrap();
        assert_eq!(buffer_bytes(&dir, 1), Some(1027 * 1024));
        std::fs::write(dir.join("buffer_size_kb"), "garbage").unwrap();
        assert_eq!(buffer_bytes(&dir, 0), None);
        assert_eq!(buffer_bytes(Path::new("/nonexistent"), 0), None);
    }

    #[test]
    fn size_parsers_never_panic_on_random_text() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"0123456789 ()expanded:\n\t-+kKx\xff";
        for round in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((x >> (i % 50)) as usize + i * 7 + round) % alphabet.len()])
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            if let Some(b) = parse_subbuf_kb(&text, 4096) {
                assert!(
                    b.is_power_of_two() && (4096..=1 << 20).contains(&b),
                    "{text:?}"
                );
            }
            let _ = recording_bytes(&text);
        }
        assert_eq!(parse_subbuf_kb("8\n", 4096), Some(8192));
        assert_eq!(parse_subbuf_kb("3\n", 4096), None);
        assert_eq!(parse_subbuf_kb("99999999999999999999999", 4096), None);
        assert_eq!(recording_bytes("99999999999999999999"), None);
        assert_eq!(recording_bytes("18446744073709551615"), Some(u64::MAX));
    }
}
