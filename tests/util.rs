//! Helpers for running the `marnflow` binary in tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Small model widths so every test trains in seconds (a `--config` file's text). `[train]`
/// comes last, so keys appended to it land in `[train]`.
pub const SMALL: &str = "[train.model]\nrepresentation_dim = 24\ngru_dim = 24\nattention_dim = 16\n\
head_layers = [32, 16]\n[train.model.embedding]\nmodality_dim = 24\ntitle_filters = 8\n\
[train]\nbatch_size = 128\nrecall_users = 40\n";

/// The marnflow binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_marnflow")
}

/// A command with a clean environment: no MARNFLOW_* (marnflow rejects unknown ones) and no
/// RUST_LOG from the caller.
pub fn clean(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("MARNFLOW_") || k == "RUST_LOG") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A `marnflow` command with a clean environment.
pub fn marnflow() -> Command {
    clean(bin())
}

/// Runs `marnflow args…` and returns its output.
pub fn run(args: &[&str]) -> Output {
    marnflow().args(args).output().expect("the marnflow binary runs")
}

/// Runs and asserts success, returning stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "marnflow {args:?} failed ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs and asserts the exit code, returning stderr.
pub fn fails(args: &[&str], code: i32) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "marnflow {args:?}: expected exit {code}; stderr:\n{stderr}");
    stderr
}

/// Generates a world into `lake` with `marnflow generate` and returns its JSON summary.
pub fn generate_world(
    lake: &Path,
    users: u32,
    items: u32,
    days: u32,
    image_dim: u32,
    exposures_per_day: u32,
    seed: u64,
) -> serde_json::Value {
    let numbers = [users.to_string(), items.to_string(), days.to_string(), image_dim.to_string()];
    let (per_day, seed) = (exposures_per_day.to_string(), seed.to_string());
    summary(&ok(&[
        "--lake",
        lake.to_str().unwrap(),
        "generate",
        "--users",
        &numbers[0],
        "--items",
        &numbers[1],
        "--days",
        &numbers[2],
        "--image-dim",
        &numbers[3],
        "--exposures-per-day",
        &per_day,
        "--seed",
        &seed,
        "--json",
    ]))
}

/// A small, fast world (150 users, 400 items, 4 days, 16-wide images, 3000 exposures a day).
pub fn tiny_world(lake: &Path, seed: u64) -> serde_json::Value {
    generate_world(lake, 150, 400, 4, 16, 3000, seed)
}

/// Every file under `dir`, relative, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

/// The Parquet files of the lake that readers see (outside `_staging/`).
pub fn visible_parquet(lake: &Path) -> Vec<PathBuf> {
    files(lake)
        .into_iter()
        .filter(|p| !p.starts_with("_staging") && p.extension().is_some_and(|e| e == "parquet"))
        .collect()
}

/// The Parquet files readers see under `prefix` in lakes `a` and `b` are the same files with the
/// same bytes; returns them. `what` names the comparison in a failure.
pub fn assert_same_parquet(a: &Path, b: &Path, prefix: &str, what: &str) -> Vec<PathBuf> {
    let under =
        |lake: &Path| -> Vec<PathBuf> { visible_parquet(lake).into_iter().filter(|p| p.starts_with(prefix)).collect() };
    let files = under(a);
    assert_eq!(files, under(b), "{what}: other files");
    for f in &files {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{what}: {} differs",
            f.display()
        );
    }
    files
}

/// Every batch of every Parquet file under `lake/rel` (a table or one partition).
pub fn read_table(lake: &Path, rel: &str) -> Vec<arrow::array::RecordBatch> {
    let mut out = Vec::new();
    for f in visible_parquet(lake).into_iter().filter(|p| p.starts_with(rel)) {
        let file = std::fs::File::open(lake.join(&f)).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        out.extend(reader.map(Result::unwrap));
    }
    out
}

/// The Arrow schema stored in a Parquet file.
pub fn parquet_schema(path: &Path) -> arrow::datatypes::SchemaRef {
    let file = std::fs::File::open(path).unwrap();
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap_or_else(|e| panic!("{} is not a readable Parquet file: {e}", path.display()));
    builder.schema().clone()
}

/// The JSON summary printed by `generate --json`.
pub fn summary(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The number `key` of a JSON object; panics naming the key when it is absent.
pub fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}
