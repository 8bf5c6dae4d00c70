//! The benchmark scripts and the tests that run Debian's trace-cmd find
//! `shared/tools/ftrace-sandbox` from where the repository lies, never from an
//! absolute path of one machine (issue 15 item 8).

use std::path::{Path, PathBuf};
use std::process::Command;

fn cli_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bench_scripts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cli_dir().join("bench"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .collect();
    v.sort();
    assert!(v.len() >= 2, "no benchmark scripts found: {v:?}");
    v
}

#[test]
fn no_absolute_sandbox_path() {
    let mut files = bench_scripts();
    files.push(cli_dir().join("tests/net_record.rs"));
    for dir in ["../testkit/src", "../tests"] {
        for e in std::fs::read_dir(cli_dir().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            assert!(
                !line.contains("\"/work/"),
                "{}:{}: absolute path: {line}",
                f.display(),
                i + 1
            );
        }
    }
}

/// Each script's `--sandbox` default, as its `--help` shows it, is the sandbox
/// beside the repository: `<repo>/../shared/tools/ftrace-sandbox`.
#[test]
fn bench_sandbox_default_follows_the_repository() {
    let want = cli_dir().join("../../shared/tools/ftrace-sandbox");
    let want = std::fs::canonicalize(&want).unwrap_or(want);
    for script in bench_scripts() {
        let text = std::fs::read_to_string(&script).unwrap();
        if !text.contains("--sandbox") {
            continue;
        }
        let out = Command::new("python3")
            .arg(&script)
            .arg("--help")
            .env("COLUMNS", "1000")
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "{} --help failed", script.display());
        let help = String::from_utf8_lossy(&out.stdout);
        let shown = help
            .split("(default: ")
            .skip(1)
            .map(|s| s.split(')').next().unwrap_or(""))
            .find(|s| s.ends_with("ftrace-sandbox"))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no sandbox default in --help:\n{help}",
                    script.display()
                )
            });
        let shown = Path::new(shown);
        assert!(
            shown.is_absolute(),
            "{}: {}",
            script.display(),
            shown.display()
        );
        assert_eq!(
            std::fs::canonicalize(shown).unwrap_or(shown.to_path_buf()),
            want,
            "{}",
            script.display()
        );
    }
}
