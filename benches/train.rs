//! End-to-end benchmark of `marnflow train` (I/O included): samples/s, the share of the run the
//! trainer waited for the reader thread (the pipeline is the bottleneck only when it is large),
//! and peak resident memory, per variant at the default widths, T = 50, on the flex backend.
//! Compare the samples/s with the model-only figures of `cargo bench --workspace --bench
//! train_throughput` (same widths and batch size).
//!
//! ```text
//! cargo bench --workspace --bench train
//! MARNFLOW_BENCH_TRAIN_EXPOSURES=20000 MARNFLOW_BENCH_TRAIN_BATCH=1024 cargo bench --workspace --bench train
//! ```

use std::process::Command;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn marnflow(lake: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_marnflow"))
        .args(["--lake", lake])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the marnflow binary runs");
    assert!(out.status.success(), "marnflow {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn main() {
    marnflow_model::device::restart_with_retaining_malloc();
    let per_day = env_or("MARNFLOW_BENCH_TRAIN_EXPOSURES", 10_000).to_string();
    let batch = env_or("MARNFLOW_BENCH_TRAIN_BATCH", 1024).to_string();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let lake = dir.path().join("lake");
    let lake = lake.to_str().expect("utf-8 path");
    // Three days so the last one has long histories (up to T = 50).
    marnflow(
        lake,
        &[
            "generate",
            "--users",
            "2000",
            "--items",
            "5000",
            "--days",
            "3",
            "--image-dim",
            "64",
            "--exposures-per-day",
            &per_day,
            "--json",
        ],
    );
    marnflow(lake, &["features", "--from", "2026-01-01", "--to", "2026-01-03", "--json"]);
    println!(
        "train (I/O included), default widths, batch {batch}, last day of 3 ({per_day} exposures), flex, 2 threads"
    );
    println!(
        "{:<12} {:>10} {:>12} {:>16} {:>14}",
        "variant", "samples", "samples/s", "data-wait share", "peak RSS MiB"
    );
    for variant in ["ids", "youtube_net", "conc", "maf_ddma", "marn"] {
        let out = marnflow(
            lake,
            &[
                "train",
                "--model",
                &format!("bench-{variant}"),
                "--from",
                "2026-01-03",
                "--to",
                "2026-01-03",
                "--variant",
                variant,
                "--batch-size",
                &batch,
                "--json",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON outcome");
        println!(
            "{:<12} {:>10} {:>12.1} {:>15.2}% {:>14.0}",
            variant,
            v["samples"],
            v["samples_per_second"].as_f64().unwrap_or(f64::NAN),
            100.0 * v["data_wait_share"].as_f64().unwrap_or(f64::NAN),
            v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
        );
    }
}
