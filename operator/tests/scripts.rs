//! Test level "scripts": every shell script in `scripts/` and `.ci/run` parses (`bash -n`) and
//! passes `shellcheck` (following the files they source).
//!
//! `shellcheck` is taken from `PATH` (`scripts/test.sh` installs it with apt when missing). Without
//! it that test prints a skip line and passes, unless `TRIBUTARY_TEST_STRICT=1` (the test runner's
//! setting), which makes it fail.

// Helpers outside the `#[test]` functions fail a test the same way: with a panic and its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The scripts, relative to the repository root (so messages name them as a user would).
fn scripts() -> Vec<PathBuf> {
    let root = repo_root();
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(root.join("scripts"))
        .expect("scripts/ is readable")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "sh"))
        .map(|path| path.strip_prefix(&root).expect("under the root").to_path_buf())
        .collect();
    scripts.sort();
    assert!(scripts.iter().any(|script| script.ends_with("test.sh")), "scripts/test.sh not found among {scripts:?}");
    scripts.push(PathBuf::from(".ci/run"));
    scripts
}

fn run(program: &str, args: &[&str], script: &Path) -> std::io::Result<Output> {
    Command::new(program).args(args).arg(script).current_dir(repo_root()).output()
}

fn report(script: &Path, output: &Output) -> String {
    format!("{}:\n{}{}", script.display(), String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn every_script_parses() {
    let failures: Vec<String> = scripts()
        .iter()
        .filter_map(|script| {
            let output = run("bash", &["-n"], script).expect("bash runs");
            (!output.status.success()).then(|| report(script, &output))
        })
        .collect();
    assert!(failures.is_empty(), "bash -n failed:\n{}", failures.join("\n"));
}

#[test]
fn every_script_passes_shellcheck() {
    if let Err(error) = Command::new("shellcheck").arg("--version").output() {
        assert_eq!(error.kind(), ErrorKind::NotFound, "shellcheck --version: {error}");
        tributary_testkit::prerequisite::skip("shellcheck test", "shellcheck not found on PATH: install it (apt-get install shellcheck)");
        return;
    }
    let failures: Vec<String> = scripts()
        .iter()
        .filter_map(|script| {
            let output = run("shellcheck", &["--external-sources"], script).expect("shellcheck runs");
            (!output.status.success()).then(|| report(script, &output))
        })
        .collect();
    assert!(failures.is_empty(), "shellcheck found problems:\n{}", failures.join("\n"));
}
