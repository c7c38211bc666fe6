//! `marnflow stream`: the feature job as a long-running process that follows the raw logs.
//!
//! It watches `raw/{exposures,clicks,behaviors}/dt=D/` and builds each day once the day has
//! **closed**: every raw table has files of a later day, and has had them for at least the
//! allowed lateness (event time has moved past `D` in every log). Days are built in order, with
//! the daily job's own steps ([`DayRunner`]), so a streamed day's tables are byte for byte those
//! of `marnflow features --date D`.
//!
//! Between days the process keeps what a daily run would rebuild or read again:
//! - the **rolling windows** in a live differential dataflow ([`LiveWindows`]): each day is one
//!   incremental step (the day's counts in, the counts that leave a window out), started once
//!   from the last `max window` days of aggregates;
//! - the **user state** (each user's last `T` behaviors) and the item pointers of the last day,
//!   in memory.
//!
//! It still leaves each day's window state on the lake ([`WINDOW_STATE`]), so a daily run can take
//! over from a stream and a stream from a daily run.
//!
//! **Progress and restarts.** After a day's tables and window state have landed, the day is
//! recorded in `_state/stream/progress.json` (written atomically). A process killed at any point
//! (`kill -9` included) restarts at the day after the last one recorded: a day that was cut short
//! is built again from its raw files, and since every table of a day is rewritten whole with the
//! same bytes, nothing is lost and nothing is counted twice.
//!
//! **Late files.** A raw file that appears in a day already built (or changes there) is not
//! silently left out: it is counted (`late_files`), named in a warning with the command that
//! takes it in (`marnflow features --from D --to <last day built>`), and kept in the progress
//! file. Files are tracked for the [`TRACKED_DAYS`] days before the last one built.

use std::collections::BTreeMap;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::contract;
use crate::error::{PipelineError, Result};
use crate::features::{epoch_day, load_daily_counts, write_window_state, DayReport, DayRunner, FeaturesConfig};
use crate::lake::{partition, partition_day, Lake};
use crate::windows::{DailyCounts, ItemWindows, LiveWindows};

/// Where the stream records the days it has built.
pub const PROGRESS: &str = "_state/stream/progress.json";
/// The raw tables whose event time decides when a day closes.
pub const RAW_TABLES: [&str; 3] = [contract::EXPOSURES, contract::CLICKS, contract::BEHAVIORS];
/// How often a waiting stream logs that it is alive.
pub const ALIVE_EVERY: StdDuration = StdDuration::from_secs(300);
/// Days before the last one built whose raw files are watched for late arrivals.
pub const TRACKED_DAYS: i64 = 30;

/// How `marnflow stream` runs.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The first day to build when the lake has no stream progress (default: the earliest raw day).
    pub from: Option<NaiveDate>,
    /// Stop once this day is built.
    pub until: Option<NaiveDate>,
    /// Build the days closed now, then return instead of waiting for more.
    pub once: bool,
    /// How often the lake is listed for new files.
    pub poll: StdDuration,
    /// How long every raw table must have had files of a later day before a day closes.
    pub lateness: StdDuration,
}

/// What the stream records after each day (`_state/stream/progress.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The last day built, `YYYY-MM-DD`.
    pub last_day: Option<String>,
    /// Days built by the stream since the progress file was created.
    pub days_built: u64,
    /// Raw files that arrived in a day after it was built.
    pub late_files: u64,
    /// The raw files (path → bytes) each tracked day was built from.
    pub files: BTreeMap<String, BTreeMap<String, u64>>,
}

/// One day built by the stream: the daily job's report and the stream's measures.
#[derive(Debug, Clone, Serialize)]
pub struct StreamDay {
    pub date: String,
    /// Seconds from the start of the day's build to its progress being recorded.
    pub seconds: f64,
    /// Raw rows read (exposures, clicks and behaviors, accepted and quarantined).
    pub raw_events: u64,
    pub events_per_second: f64,
    pub samples_per_second: f64,
    /// The live dataflow's step for the day (its counts in, the due retractions out), in ms.
    pub window_step_ms: f64,
    /// Closed days still waiting after this one (0: the stream has caught up).
    pub lag_days: i64,
    /// Seconds from the day's close (every raw table past it for the lateness, by the files'
    /// modification times) to its tables and progress landing: how fresh the stream's days are.
    pub delay_seconds: f64,
    /// Late raw files counted so far.
    pub late_files: u64,
    pub report: DayReport,
}

/// One partition of a raw table: its files (path → bytes) and when the first of them appeared.
#[derive(Debug, Clone)]
struct RawDay {
    files: BTreeMap<String, u64>,
    first_seen: DateTime<Utc>,
}

/// Each raw table's partitions by day.
type RawListing = BTreeMap<&'static str, BTreeMap<NaiveDate, RawDay>>;

/// The raw tables' partitions from day `from` on (every day without it).
async fn list_raw(lake: &Lake, from: Option<NaiveDate>) -> Result<RawListing> {
    let mut out = RawListing::new();
    for table in RAW_TABLES {
        let days = out.entry(table).or_default();
        let listed = match from {
            Some(from) => lake.list_after(table, &partition(table, &from.to_string())).await?,
            None => lake.list(table).await?,
        };
        for meta in listed {
            let Some(rel) = lake.relative(&meta.location) else { continue };
            let Some(day) = partition_day(&rel) else { continue };
            let entry =
                days.entry(day).or_insert_with(|| RawDay { files: BTreeMap::new(), first_seen: meta.last_modified });
            entry.first_seen = entry.first_seen.min(meta.last_modified);
            entry.files.insert(rel, meta.size);
        }
    }
    Ok(out)
}

/// The last closed day: the day before the latest day that every raw table has had files of
/// for at least `lateness` (`None`: no day has closed).
fn closed_through(listing: &RawListing, now: DateTime<Utc>, lateness: StdDuration) -> Option<NaiveDate> {
    let lateness = Duration::from_std(lateness).unwrap_or(Duration::MAX);
    let horizon = RAW_TABLES.iter().map(|t| {
        listing.get(t).and_then(|days| days.iter().rev().find(|(_, d)| now - d.first_seen >= lateness).map(|(d, _)| *d))
    });
    let earliest = horizon.collect::<Option<Vec<NaiveDate>>>()?.into_iter().min()?;
    earliest.pred_opt()
}

/// When day `day` closed: the latest, over the raw tables, of the moment a partition after it
/// first appeared there, plus the lateness (`None` while it is open).
fn closed_at(listing: &RawListing, day: NaiveDate, lateness: StdDuration) -> Option<DateTime<Utc>> {
    let lateness = Duration::from_std(lateness).ok()?;
    let next = day.succ_opt()?;
    let firsts = RAW_TABLES.iter().map(|t| listing.get(t)?.range(next..).map(|(_, d)| d.first_seen).min());
    Some(firsts.collect::<Option<Vec<_>>>()?.into_iter().max()? + lateness)
}

/// The files of day `day` in every raw table (path → bytes).
fn day_files(listing: &RawListing, day: NaiveDate) -> BTreeMap<String, u64> {
    listing.values().filter_map(|days| days.get(&day)).flat_map(|d| d.files.clone()).collect()
}

/// Reads the progress file; a missing one is a fresh start, an unreadable one an error (the
/// stream does not guess where it was).
pub async fn read_progress(lake: &Lake) -> Result<Progress> {
    match lake.get_opt(PROGRESS).await? {
        None => Ok(Progress::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            PipelineError::Config(vec![format!(
                "{}: not a stream progress file ({e}); move it away to start the stream afresh (it then starts at --from)",
                lake.file_url(PROGRESS)
            )])
        }),
    }
}

async fn write_progress(lake: &Lake, progress: &Progress) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(progress).map_err(|e| PipelineError::Dataflow(format!("progress: {e}")))?;
    lake.put_atomic(PROGRESS, bytes).await
}

/// The live windows for a stream whose next day is `day`: started and fed the daily aggregates
/// of the `max window` days before it; returns them and the totals at the end of `day − 1`.
async fn start_windows(lake: &Lake, cfg: &FeaturesConfig, day: NaiveDate) -> Result<(LiveWindows, Vec<ItemWindows>)> {
    let started = Instant::now();
    let mut live = LiveWindows::start(&cfg.windows, cfg.workers)?;
    let max_w = i64::from(cfg.windows.iter().copied().max().unwrap_or(1));
    let eve = epoch_day(day).saturating_sub(1);
    let mut totals = Vec::new();
    if eve > 0 {
        for counts in load_daily_counts(lake, day - Duration::days(max_w), day - Duration::days(1)).await? {
            let (t, _) = live.feed(&counts, counts.day == eve)?;
            if let Some(t) = t {
                totals = t;
            }
        }
        if live.last_day() != Some(eve) {
            totals = live.feed(&DailyCounts { day: eve, rows: Vec::new() }, true)?.0.unwrap_or_default();
        }
    }
    info!(day = %day, items = totals.len(), ms = started.elapsed().as_millis() as u64, "live windows started");
    Ok((live, totals))
}

/// Runs the stream until `opts.until` is built, or, with `opts.once`, until no closed day is
/// left; calls `on_day` after each day. Returns the days built by this call.
pub async fn run_stream(
    lake: &Lake,
    cfg: &FeaturesConfig,
    opts: &StreamOptions,
    mut on_day: impl FnMut(&StreamDay),
) -> Result<u64> {
    let mut runner = DayRunner::new(cfg)?;
    let mut progress = read_progress(lake).await?;
    let mut next = match &progress.last_day {
        Some(d) => Some(
            NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|e| {
                PipelineError::Config(vec![format!("{}: last_day {d:?}: {e}", lake.file_url(PROGRESS))])
            })? + Duration::days(1),
        ),
        None => opts.from,
    };
    if let (Some(n), Some(from)) = (next, opts.from) {
        if progress.last_day.is_some() && from != n {
            info!(next = %n, from = %from, "the stream resumes after its last day built; --from applies to a fresh start only");
        }
    }
    info!(
        lake = lake.uri(),
        next = next.map(|d| d.to_string()).unwrap_or_else(|| "the earliest raw day".into()),
        "stream starts"
    );
    let mut windows: Option<(LiveWindows, Vec<ItemWindows>)> = None;
    let mut built = 0u64;
    let mut waiting_logged = None;
    let mut alive = Instant::now();
    loop {
        // Days before the next one and the ones tracked for late files cannot matter: not listed.
        let tracked = progress.files.keys().next().and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
        let listing = list_raw(lake, next.map(|n| tracked.map_or(n, |t| t.min(n)))).await?;
        note_late_files(&listing, &mut progress, lake).await?;
        if next.is_none() {
            next = listing.values().filter_map(|days| days.keys().next().copied()).min();
        }
        let closed = closed_through(&listing, Utc::now(), opts.lateness);
        while let (Some(day), Some(last_closed)) = (next, closed) {
            if day > last_closed || opts.until.is_some_and(|u| day > u) {
                break;
            }
            let started = Instant::now();
            let (mut live, stats) = match windows.take() {
                Some(w) if w.0.last_day() == epoch_day(day).checked_sub(1) => w,
                _ => start_windows(lake, cfg, day).await?,
            };
            let (report, counts) = runner.run_day(lake, cfg, day, &stats).await?;
            let (totals, step) = live.feed(&counts, true)?;
            let totals = totals.unwrap_or_default();
            let next_day = day + Duration::days(1);
            write_window_state(lake, &cfg.windows, next_day, &totals)?.await?;
            progress.last_day = Some(day.to_string());
            progress.days_built += 1;
            progress.files.insert(day.to_string(), day_files(&listing, day));
            let oldest = (day - Duration::days(TRACKED_DAYS)).to_string();
            progress.files.retain(|d, _| *d >= oldest);
            write_progress(lake, &progress).await?;
            windows = Some((live, totals));
            built += 1;
            next = Some(next_day);
            let seconds = started.elapsed().as_secs_f64();
            let raw_events = report.exposures.input + report.clicks.input + report.behaviors.input;
            let done = StreamDay {
                date: day.to_string(),
                seconds,
                raw_events,
                events_per_second: raw_events as f64 / seconds.max(1e-9),
                samples_per_second: report.samples as f64 / seconds.max(1e-9),
                window_step_ms: step * 1e3,
                lag_days: (last_closed - day).num_days(),
                delay_seconds: closed_at(&listing, day, opts.lateness)
                    .map_or(0.0, |at| (Utc::now() - at).num_milliseconds() as f64 / 1e3),
                late_files: progress.late_files,
                report,
            };
            info!(
                day = done.date,
                seconds = format!("{:.2}", done.seconds),
                events_per_second = done.events_per_second.round(),
                samples = done.report.samples,
                window_step_ms = format!("{:.1}", done.window_step_ms),
                lag_days = done.lag_days,
                delay_seconds = format!("{:.1}", done.delay_seconds),
                late_files = done.late_files,
                "day streamed"
            );
            on_day(&done);
        }
        if opts.until.is_some_and(|u| next.is_some_and(|n| n > u)) || opts.once {
            return Ok(built);
        }
        let shown = |d: Option<NaiveDate>| d.map_or_else(|| "-".to_string(), |d| d.to_string());
        if waiting_logged != next {
            info!(
                next = shown(next),
                closed_through = shown(closed),
                "waiting for the raw logs to move past the next day"
            );
            waiting_logged = next;
            alive = Instant::now();
        } else if alive.elapsed() >= ALIVE_EVERY {
            info!(
                next = shown(next),
                closed_through = shown(closed),
                days_built = progress.days_built,
                late_files = progress.late_files,
                "stream alive"
            );
            alive = Instant::now();
        }
        tokio::time::sleep(opts.poll).await;
    }
}

/// Counts and names raw files that appeared in, or changed in, a day already built.
async fn note_late_files(listing: &RawListing, progress: &mut Progress, lake: &Lake) -> Result<()> {
    let Some(last) = progress.last_day.clone() else { return Ok(()) };
    let mut late: Vec<(String, String)> = Vec::new();
    for (dt, seen) in progress.files.iter_mut() {
        let Ok(day) = NaiveDate::parse_from_str(dt, "%Y-%m-%d") else { continue };
        for (path, size) in day_files(listing, day) {
            if seen.get(&path) != Some(&size) {
                late.push((dt.clone(), path.clone()));
                seen.insert(path, size);
            }
        }
    }
    if late.is_empty() {
        return Ok(());
    }
    progress.late_files += late.len() as u64;
    for (dt, path) in &late {
        warn!(
            day = dt,
            file = path,
            late_files = progress.late_files,
            "a raw file arrived in a day already built; the day's tables do not include it: run `marnflow features --from {dt} --to {last}` to take it in"
        );
    }
    write_progress(lake, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{BEHAVIORS, CLICKS, EXPOSURES};

    fn day(d: &str) -> NaiveDate {
        NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap()
    }

    fn listing(parts: &[(&'static str, &str, i64)], now: DateTime<Utc>) -> RawListing {
        let mut out = RawListing::new();
        for (table, d, age_s) in parts {
            out.entry(*table).or_default().insert(
                day(d),
                RawDay {
                    files: BTreeMap::from([(format!("{table}/dt={d}/a.parquet"), 1)]),
                    first_seen: now - Duration::seconds(*age_s),
                },
            );
        }
        out
    }

    #[test]
    fn a_day_closes_once_every_raw_table_has_moved_past_it_for_the_lateness() {
        let now = Utc::now();
        let lateness = StdDuration::from_secs(60);
        let all = |d: &'static str, age| [(EXPOSURES, d, age), (CLICKS, d, age), (BEHAVIORS, d, age)];
        let mut parts: Vec<(&'static str, &str, i64)> = Vec::new();
        parts.extend(all("2026-01-01", 500));
        assert_eq!(closed_through(&listing(&parts, now), now, lateness), Some(day("2025-12-31")));
        // Day 2 has begun in two tables only: day 1 is still open.
        parts.extend([(EXPOSURES, "2026-01-02", 500), (CLICKS, "2026-01-02", 500)]);
        assert_eq!(closed_through(&listing(&parts, now), now, lateness), Some(day("2025-12-31")));
        // Every table has day 2, one of them for less than the lateness: still open.
        parts.push((BEHAVIORS, "2026-01-02", 10));
        assert_eq!(closed_through(&listing(&parts, now), now, lateness), Some(day("2025-12-31")));
        assert_eq!(closed_through(&listing(&parts, now), now, StdDuration::from_secs(5)), Some(day("2026-01-01")));
        // Day 1 closed when the last table (behaviors, 10 s ago) had day 2, plus the lateness.
        let at = closed_at(&listing(&parts, now), day("2026-01-01"), StdDuration::from_secs(5)).unwrap();
        assert_eq!(at, now - Duration::seconds(10) + Duration::seconds(5));
        assert_eq!(closed_at(&listing(&parts, now), day("2026-01-02"), StdDuration::ZERO), None);
        // A table with no files at all closes nothing.
        let mut no_clicks = parts.clone();
        no_clicks.retain(|(t, _, _)| *t != CLICKS);
        assert_eq!(closed_through(&listing(&no_clicks, now), now, StdDuration::ZERO), None);
    }
}
