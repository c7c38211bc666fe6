//! Benchmark of the feature pipeline (`marnflow features`): raw events per second of a backfill
//! and of a daily run, the daily run's window part resumed from the window state the run before
//! left against rebuilt from the daily aggregates, the time of one incremental window day against
//! a full recompute of the 30-day window, the same day built by `marnflow stream` (its windows
//! one step of a live dataflow, the user state of the day before in memory), and peak resident
//! memory.
//!
//! ```text
//! cargo bench --bench features
//! MARNFLOW_BENCH_EXPOSURES_PER_DAY=50000 cargo bench --bench features
//! ```

use std::time::Instant;

use chrono::{Duration, NaiveDate};
use marnflow_pipeline::contract;
use marnflow_pipeline::features::{
    load_daily_counts, run_features, window_part, DayRunner, FeaturesConfig, WINDOW_STATE,
};
use marnflow_pipeline::lake::Lake;
use marnflow_pipeline::windows::{item_window_stats_timed, LiveWindows, Topology};
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

    // The backfill stops the day before the last; the last day is the daily run, which resumes
    // from the window state the backfill left for it, or (that state removed) rebuilds the
    // windows from the last 30 days of aggregates. Three runs each, in turn.
    let t = Instant::now();
    let reports = runtime.block_on(run_features(&lake, &cfg, start, last - Duration::days(1), None)).expect("backfill");
    let backfill = t.elapsed().as_secs_f64();
    let backfill_events: u64 = reports.iter().map(|r| r.exposures.input + r.clicks.input + r.behaviors.input).sum();
    let state = format!("{WINDOW_STATE}/dt={}/part-00000.parquet", last - Duration::days(1));
    let state_bytes = runtime.block_on(lake.get(&state)).expect("the backfill's window state").to_vec();
    let set_state = |with_state: bool| {
        runtime.block_on(lake.remove_all(WINDOW_STATE)).expect("remove the window states");
        if with_state {
            runtime.block_on(lake.put_atomic(&state, state_bytes.clone())).expect("restore the window state");
        }
    };
    let (mut resumed, mut rebuilt, mut resumed_part, mut rebuilt_part) = (vec![], vec![], vec![], vec![]);
    let mut day_events = 0;
    // What the window state's write still takes once the window part returns (a run overlaps it
    // with its days' SQL).
    let mut state_write = Vec::new();
    for _ in 0..3 {
        for with_state in [true, false] {
            // The whole daily run, then its window part alone (pass 2, the same function).
            set_state(with_state);
            let t = Instant::now();
            let day = runtime.block_on(run_features(&lake, &cfg, last, last, None)).expect("daily run");
            let wall = t.elapsed().as_secs_f64();
            assert_eq!(day[0].windows_resumed_from.is_some(), with_state, "the daily run did not start as set up");
            day_events = day[0].exposures.input + day[0].clicks.input + day[0].behaviors.input;
            set_state(with_state);
            let t = Instant::now();
            let (_, from, write) =
                runtime.block_on(window_part(&lake, &cfg, &[last], &Topology::Threads(cfg.workers))).expect("windows");
            let part = t.elapsed().as_secs_f64();
            runtime.block_on(write.finish()).expect("the window state's write");
            state_write.push(t.elapsed().as_secs_f64() - part);
            assert_eq!(from.is_some(), with_state);
            let (walls, parts) =
                if with_state { (&mut resumed, &mut resumed_part) } else { (&mut rebuilt, &mut rebuilt_part) };
            walls.push(wall);
            parts.push(part);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (daily, daily_windows) = (median(&mut resumed), median(&mut resumed_part));
    let (daily_rebuilt, rebuilt_windows) = (median(&mut rebuilt), median(&mut rebuilt_part));

    // The last day as the stream builds it: the windows one step of a live dataflow that has
    // seen the days before, the user state of the day before in memory (that day built just
    // before by the same runner).
    let eve = last - Duration::days(1);
    let before = runtime.block_on(load_daily_counts(&lake, eve - Duration::days(30), eve)).expect("daily counts");
    let (mut streamed, mut streamed_part) = (vec![], vec![]);
    for _ in 0..3 {
        let mut live = LiveWindows::start(&cfg.windows, cfg.workers).expect("live windows");
        let mut stats = Vec::new();
        for c in &before[..before.len() - 1] {
            stats = live.feed(c, true).expect("warm-up").0.unwrap_or_default();
        }
        let mut runner = DayRunner::new(&cfg).expect("runner");
        let (_, counts) = runtime.block_on(runner.run_day(&lake, &cfg, eve, &stats)).expect("the day before");
        let stats = live.feed(&counts, true).expect("the day before's step").0.unwrap_or_default();
        let t = Instant::now();
        let (_, counts) = runtime.block_on(runner.run_day(&lake, &cfg, last, &stats)).expect("streamed day");
        // The window part: the step and the next day's totals (the day's aggregates come from
        // the day's own SQL, in memory).
        let started = Instant::now();
        let _ = live.feed(&counts, true).expect("the day's step");
        streamed_part.push(started.elapsed().as_secs_f64());
        streamed.push(t.elapsed().as_secs_f64());
    }
    let (streamed, streamed_windows) = (median(&mut streamed), median(&mut streamed_part));

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
    println!(
        "| backfill of {} days | {backfill:.1} s, {:.0} raw events/s |",
        days - 1,
        backfill_events as f64 / backfill
    );
    println!(
        "| daily run (one day), resumed from the window state | {daily:.2} s, {:.0} raw events/s; window part {:.0} ms |",
        day_events as f64 / daily,
        daily_windows * 1e3
    );
    println!(
        "| daily run (one day), windows rebuilt from 30 days of aggregates | {daily_rebuilt:.2} s, {:.0} raw events/s; window part {:.0} ms |",
        day_events as f64 / daily_rebuilt,
        rebuilt_windows * 1e3
    );
    println!(
        "| window part, resumed / rebuilt | {:.3} (goal: 1.5/W = {:.3}) |",
        daily_windows / rebuilt_windows,
        1.5 / 30.0
    );
    println!(
        "| the same day streamed (`marnflow stream`: live windows, user state in memory) | {streamed:.2} s, {:.0} raw events/s; window part {:.1} ms |",
        day_events as f64 / streamed,
        streamed_windows * 1e3
    );
    println!(
        "| window part, streamed / rebuilt | {:.3} (goal: 1.5/W = {:.3}) |",
        streamed_windows / rebuilt_windows,
        1.5 / 30.0
    );
    println!(
        "| writing the window state, after the window part returns (overlapped with the day's SQL) | {:.0} ms |",
        median(&mut state_write) * 1e3
    );
    println!("| windows: one incremental day (warm dataflow) | {:.1} ms |", incremental * 1e3);
    println!("| windows: full recompute of the 30-day window | {:.1} ms |", full * 1e3);
    println!("| incremental / full | {:.3} (1/W = {:.3}) |", incremental / full, 1.0 / 30.0);
    println!("| peak RSS | {:.0} MiB |", marnflow_model::device::peak_rss_mib());
}
