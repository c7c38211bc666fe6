//! Benchmark of the feature pipeline (`marnflow features`): raw events per second of a backfill
//! and of a daily run, the time of one incremental window day against a full recompute of the
//! 30-day window, and peak resident memory.
//!
//! ```text
//! cargo bench --bench features
//! MARNFLOW_BENCH_EXPOSURES_PER_DAY=50000 cargo bench --bench features
//! ```

use std::time::Instant;

use chrono::{Duration, NaiveDate};
use marnflow_pipeline::contract;
use marnflow_pipeline::features::{load_daily_counts, run_features, FeaturesConfig};
use marnflow_pipeline::lake::Lake;
use marnflow_pipeline::windows::{item_window_stats_timed, Topology};
use marnflow_pipeline::world::{generate, WorldConfig};

fn main() {
    marnflow_model::device::restart_with_retaining_malloc();
    let per_day: u64 =
        std::env::var("MARNFLOW_BENCH_EXPOSURES_PER_DAY").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let days = 31u32;
    let world = WorldConfig {
        users: 20_000,
        items: 20_000,
        days,
        image_dim: 32,
        exposures_per_day: per_day,
        categories: 50,
        shops: 1_000,
        brands: 2_000,
        ..Default::default()
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let lake = Lake::open(dir.path().to_str().expect("utf-8 path")).expect("lake");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let summary = runtime.block_on(generate(&lake, &world, &mut |_| {})).expect("generate");
    let events = summary.exposures + summary.clicks + summary.behaviors;
    let start = NaiveDate::from_ymd_opt(2026, 1, 1).expect("date");
    let last = start + Duration::days(i64::from(days) - 1);
    let cfg = FeaturesConfig { sql_dir: "/nonexistent".into(), ..Default::default() };

    let t = Instant::now();
    let reports = runtime.block_on(run_features(&lake, &cfg, start, last, None)).expect("backfill");
    let backfill = t.elapsed().as_secs_f64();
    let day_events: u64 = reports.last().map_or(0, |r| r.exposures.input + r.clicks.input + r.behaviors.input);

    let t = Instant::now();
    runtime.block_on(run_features(&lake, &cfg, last, last, None)).expect("daily run");
    let daily = t.elapsed().as_secs_f64();

    // Windows alone: 30 warm days then one more (incremental), against a fresh dataflow that
    // recomputes the last 30-day window from its 30 daily aggregates.
    let counts = runtime.block_on(load_daily_counts(&lake, start, last)).expect("daily counts");
    let epoch = |d: NaiveDate| contract::epoch_day(d) as u32;
    let (_, steps) =
        item_window_stats_timed(&counts, &cfg.windows, &[epoch(last) + 1], &Topology::Threads(1)).expect("windows");
    let incremental = steps.last().map_or(f64::NAN, |s| s.1);
    let recent: Vec<_> = counts.iter().filter(|c| c.day + 30 > epoch(last)).cloned().collect();
    let t = Instant::now();
    let (_, _) =
        item_window_stats_timed(&recent, &cfg.windows, &[epoch(last) + 1], &Topology::Threads(1)).expect("recompute");
    let full = t.elapsed().as_secs_f64();

    println!("| metric | value |");
    println!("|---|---|");
    println!("| world | {} days, {} exposures/day, {} raw events in all |", days, per_day, events);
    println!("| backfill of {days} days | {backfill:.1} s, {:.0} raw events/s |", events as f64 / backfill);
    println!("| daily run (one day) | {daily:.2} s, {:.0} raw events/s |", day_events as f64 / daily);
    println!("| windows: one incremental day (warm dataflow) | {:.1} ms |", incremental * 1e3);
    println!("| windows: full recompute of the 30-day window | {:.1} ms |", full * 1e3);
    println!("| incremental / full | {:.3} (1/W = {:.3}) |", incremental / full, 1.0 / 30.0);
    println!("| peak RSS | {:.0} MiB |", marnflow_model::device::peak_rss_mib());
}
