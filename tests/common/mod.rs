//! Helpers shared by the integration tests: running `rg`, the tiny random model, and finding a
//! tensor's bytes in a shard.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use rgweb::weights::safetensors::header_of;

pub fn rg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rg")).args(args).output().expect("rg runs")
}

pub fn ok(args: &[&str]) -> Output {
    let out = rg(args);
    assert!(out.status.success(), "rg {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs rg, expecting a failure whose single stderr line mentions `message`.
pub fn fails_with(args: &[&str], message: &str) {
    let out = rg(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "rg {args:?} should fail with exit code 1 (not abort or succeed)");
    assert!(!stderr.contains("panicked"), "rg {args:?} panicked: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains(message), "rg {args:?}: {stderr} lacks '{message}'");
}

pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The tiny random checkpoint and its conversions, made once for all tests.
pub struct Tiny {
    _dir: tempfile::TempDir,
    pub hf: PathBuf,
    pub f32: PathBuf,
    pub int8: PathBuf,
    pub int4: PathBuf,
}

pub fn tiny() -> &'static Tiny {
    static TINY: OnceLock<Tiny> = OnceLock::new();
    TINY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let [hf, f32, int8, int4] = ["hf", "f32", "int8", "int4"].map(|name| dir.path().join(name));
        ok(&["random", "--preset", "tiny", "--seed", "7", s(&hf)]);
        for (out, quant) in [(&f32, "f32"), (&int8, "int8"), (&int4, "int4")] {
            ok(&["convert", s(&hf), s(out), "--quant", quant]);
        }
        Tiny { _dir: dir, hf, f32, int8, int4 }
    })
}

/// Where tensor (or piece) `name`'s bytes lie in a shard.
pub fn tensor_range(shard: &[u8], name: &str) -> std::ops::Range<usize> {
    let entry = header_of(shard).unwrap().entries.into_iter().find(|e| e.name == name).unwrap();
    entry.start as usize..entry.end as usize
}

/// The same one-line error from both backends (they share the manifest check and the parser).
pub fn logits_fail_with(dir: &tempfile::TempDir, message: &str) {
    for backend in ["cpu", "gpu"] {
        fails_with(&["logits", s(dir.path()), "--tokens", "2", "--backend", backend, "--out", "/tmp/x.npy"], message);
    }
}

pub fn tokenizer_path() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/gemma-tokenizer/tokenizer.json");
    assert!(path.exists(), "run scripts/fetch-tokenizer.sh first ({})", path.display());
    path
}
