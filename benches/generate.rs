//! Benchmark of `marnflow generate`: exposures written per second and peak resident memory.
//!
//! ```text
//! cargo bench --bench generate                          # 10 million exposures (default)
//! MARNFLOW_BENCH_EXPOSURES=2000000 cargo bench --bench generate
//! ```
//!
//! The world is 100k users and 100k items with 4096-wide image embeddings (as VGG16 fc7), 10
//! days; the exposures are spread evenly over the days. Written to a temporary local lake.

use std::time::Instant;

use marnflow_pipeline::lake::Lake;
use marnflow_pipeline::world::{generate, WorldConfig};

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_bytes(&p)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let total: u64 = std::env::var("MARNFLOW_BENCH_EXPOSURES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let days = 10u32;
    let cfg = WorldConfig {
        users: 100_000,
        items: 100_000,
        days,
        image_dim: 4096,
        exposures_per_day: total / u64::from(days),
        categories: 100,
        shops: 5_000,
        brands: 8_000,
        vocab_size: 20_000,
        ..Default::default()
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let lake = Lake::open(dir.path().to_str().expect("utf-8 path")).expect("lake");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let rss_before = marnflow_model::device::peak_rss_mib();
    let started = Instant::now();
    let mut day_times = Vec::new();
    let mut last = Instant::now();
    let summary = runtime
        .block_on(generate(&lake, &cfg, &mut |_| {
            day_times.push(last.elapsed().as_secs_f64());
            last = Instant::now();
        }))
        .expect("generate");
    let secs = started.elapsed().as_secs_f64();
    // The first day's time includes the catalogue (items, word vectors); the others are logs only.
    let later: &[f64] = day_times.get(1..).unwrap_or(&[]);
    let per_day = later.iter().sum::<f64>() / later.len().max(1) as f64;
    let catalogue_secs = day_times.first().copied().unwrap_or(0.0) - per_day;
    println!("| metric | value |");
    println!("|---|---|");
    println!("| exposures | {} |", summary.exposures);
    println!("| users / items / image dim | {} / {} / {} |", cfg.users, cfg.items, cfg.image_dim);
    println!("| wall time, whole run | {secs:.1} s |");
    println!("| exposures/s, whole run (items and word vectors included) | {:.0} |", summary.exposures as f64 / secs);
    println!("| exposures/s, daily logs only (days 2..) | {:.0} |", cfg.exposures_per_day as f64 / per_day);
    println!("| catalogue (items with images, word vectors) | {catalogue_secs:.1} s |");
    println!(
        "| peak RSS | {:.0} MiB (before generating: {rss_before:.0} MiB) |",
        marnflow_model::device::peak_rss_mib()
    );
    println!("| lake size | {:.0} MiB |", dir_bytes(dir.path()) as f64 / (1024.0 * 1024.0));
    println!(
        "| click rate / Bayes-optimal AUC | {:.4} / {:.4} |",
        summary.click_rate,
        summary.bayes_auc.unwrap_or(f64::NAN)
    );
}
