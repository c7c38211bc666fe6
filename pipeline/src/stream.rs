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
use crate::intraday::{reconcile, Arrival, Emission, LiveDay, OpenProgress, StreamPart};
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
/// Staged files of stopped writers older than this are removed when the stream starts.
pub const STALE_STAGING: StdDuration = StdDuration::from_secs(600);

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
    /// With a label window: how far behind its log's newest event time an event may still
    /// arrive and be counted in the rows emitted within the day.
    pub out_of_order: StdDuration,
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
    /// With a label window: the day open, what it has taken in and emitted
    /// ([`crate::intraday`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<OpenProgress>,
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
    /// With a label window: the day's rows emitted within the day (`features/stream_samples`),
    /// and of them those whose label the day's build has otherwise (a click later than the
    /// out-of-order time allows).
    pub stream_rows: u64,
    pub late_labels: u64,
    pub report: DayReport,
}

/// What the stream reports as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StreamEvent {
    /// A day built (its tables landed).
    Day(Box<StreamDay>),
    /// Sample rows emitted within a day ([`crate::intraday`]).
    Part(StreamPart),
}

/// One partition of a raw table: its files (path → bytes) and when the first of them appeared.
#[derive(Debug, Clone)]
struct RawDay {
    files: BTreeMap<String, u64>,
    /// When each file was last modified (its arrival).
    arrived: BTreeMap<String, DateTime<Utc>>,
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
            let entry = days.entry(day).or_insert_with(|| RawDay {
                files: BTreeMap::new(),
                arrived: BTreeMap::new(),
                first_seen: meta.last_modified,
            });
            entry.first_seen = entry.first_seen.min(meta.last_modified);
            entry.arrived.insert(rel.clone(), meta.last_modified);
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

/// The files of day `day` that `live` has not taken in, oldest first (by arrival, then path). A
/// file taken in that has changed since is counted in `late_files` and named: the rows emitted
/// keep what it had, the day's build reads it as it is.
fn arrivals(listing: &RawListing, day: NaiveDate, live: &mut LiveDay, late_files: &mut u64) -> Vec<Arrival> {
    let mut out = Vec::new();
    for (table, days) in listing {
        let Some(d) = days.get(&day) else { continue };
        for (path, bytes) in &d.files {
            match live.has(path) {
                None => out.push(Arrival {
                    table,
                    path: path.clone(),
                    bytes: *bytes,
                    at: d.arrived.get(path).copied().unwrap_or(d.first_seen),
                }),
                Some(b) if b != *bytes && live.note_changed(path, *bytes) => {
                    *late_files += 1;
                    warn!(day = %day, file = path, "a raw file changed after the stream took it in: the rows emitted keep what it had, the day's build reads it as it is");
                }
                Some(_) => {}
            }
        }
    }
    out.sort_by(|a, b| (a.at, &a.path).cmp(&(b.at, &b.path)));
    out
}

/// Makes `windows` the live windows for day `day` (their totals those at the end of `day − 1`),
/// started from the lake when they are not.
async fn windows_for(
    windows: &mut Option<(LiveWindows, Vec<ItemWindows>)>,
    lake: &Lake,
    cfg: &FeaturesConfig,
    day: NaiveDate,
) -> Result<()> {
    if !matches!(windows, Some(w) if w.0.last_day() == epoch_day(day).checked_sub(1)) {
        *windows = None;
        *windows = Some(start_windows(lake, cfg, day).await?);
    }
    Ok(())
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
    mut on_event: impl FnMut(&StreamEvent),
) -> Result<u64> {
    let mut runner = DayRunner::new(cfg)?;
    let mut progress = read_progress(lake).await?;
    let mut next = match &progress.last_day {
        Some(d) => Some(
            NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|e| {
                PipelineError::Config(vec![format!("{}: last_day {d:?}: {e}", lake.file_url(PROGRESS))])
            })? + Duration::days(1),
        ),
        // No day built yet: the day open within (rows emitted before a stop), else --from.
        None => match &progress.open {
            Some(open) => Some(NaiveDate::parse_from_str(&open.day, "%Y-%m-%d").map_err(|e| {
                PipelineError::Config(vec![format!("{}: open day {:?}: {e}", lake.file_url(PROGRESS), open.day)])
            })?),
            None => opts.from,
        },
    };
    if let (Some(n), Some(from)) = (next, opts.from) {
        if (progress.last_day.is_some() || progress.open.is_some()) && from != n {
            info!(next = %n, from = %from, "the stream resumes after its last day built; --from applies to a fresh start only");
        }
    }
    info!(
        lake = lake.uri(),
        next = next.map(|d| d.to_string()).unwrap_or_else(|| "the earliest raw day".into()),
        "stream starts"
    );
    // What a stream killed mid-write left half-written (never published, so never read).
    let stale = lake.remove_stale_staging(STALE_STAGING).await?;
    if stale > 0 {
        info!(files = stale, "removed files left in _staging/ by stopped writers");
    }
    let mut windows: Option<(LiveWindows, Vec<ItemWindows>)> = None;
    // With a label window, rows are emitted within the day ([`crate::intraday`]).
    let emission = (cfg.label_window_seconds > 0).then(|| Emission {
        window_ms: i64::from(cfg.label_window_seconds) * 1000,
        out_of_order_ms: i64::try_from(opts.out_of_order.as_millis()).unwrap_or(i64::MAX),
    });
    let mut open: Option<LiveDay> = None;
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
            windows_for(&mut windows, lake, cfg, day).await?;
            let Some((mut live, stats)) = windows.take() else { continue };
            let closed_at = closed_at(&listing, day, opts.lateness);
            if let Some(e) = emission {
                // The day's last rows, with all of its clicks.
                let mut day_open = match open.take() {
                    Some(o) if o.day == day => o,
                    _ => open_day(lake, cfg, &runner, &progress, day, &stats).await?,
                };
                let new = arrivals(&listing, day, &mut day_open, &mut progress.late_files);
                if let Some(part) = day_open.advance(lake, &new, e, true, closed_at).await? {
                    on_event(&StreamEvent::Part(part));
                }
                progress.open = Some(day_open.progress().clone());
                write_progress(lake, &progress).await?;
            }
            let (report, counts) = runner.run_day(lake, cfg, day, &stats).await?;
            let (stream_rows, late_labels) = match emission {
                Some(_) => emitted_against_built(lake, &day.to_string()).await?,
                None => (0, 0),
            };
            let (totals, step) = live.feed(&counts, true)?;
            let totals = totals.unwrap_or_default();
            let next_day = day + Duration::days(1);
            write_window_state(lake, &cfg.windows, next_day, &totals)?.await?;
            progress.last_day = Some(day.to_string());
            progress.open = None;
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
                delay_seconds: closed_at.map_or(0.0, |at| (Utc::now() - at).num_milliseconds() as f64 / 1e3),
                late_files: progress.late_files,
                stream_rows,
                late_labels,
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
            on_event(&StreamEvent::Day(Box::new(done)));
        }
        // The day open: its new files taken in, the rows that are due emitted.
        if let (Some(e), Some(day)) = (emission, next) {
            let wanted = opts.until.is_none_or(|u| day <= u) && closed.is_none_or(|c| day > c);
            if wanted && !day_files(&listing, day).is_empty() {
                let mut day_open = match open.take() {
                    Some(o) if o.day == day => o,
                    _ => {
                        windows_for(&mut windows, lake, cfg, day).await?;
                        let stats = windows.as_ref().map(|w| w.1.clone()).unwrap_or_default();
                        open_day(lake, cfg, &runner, &progress, day, &stats).await?
                    }
                };
                let new = arrivals(&listing, day, &mut day_open, &mut progress.late_files);
                if !new.is_empty() {
                    if let Some(part) = day_open.advance(lake, &new, e, false, None).await? {
                        progress.open = Some(day_open.progress().clone());
                        write_progress(lake, &progress).await?;
                        info!(
                            day = part.date,
                            part = part.part,
                            rows = part.rows,
                            emitted_through = part.emitted_through,
                            event_lag_seconds = part.event_lag_seconds,
                            delay_p50_seconds = format!("{:.2}", part.delay_p50_seconds),
                            delay_p99_seconds = format!("{:.2}", part.delay_p99_seconds),
                            events_per_second = part.events_per_second.round(),
                            "rows emitted"
                        );
                        on_event(&StreamEvent::Part(part));
                    }
                }
                open = Some(day_open);
            }
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

/// Opens day `day` for rows within the day, resuming what the progress file recorded of it.
async fn open_day(
    lake: &Lake,
    cfg: &FeaturesConfig,
    runner: &DayRunner,
    progress: &Progress,
    day: NaiveDate,
    stats: &[ItemWindows],
) -> Result<LiveDay> {
    let session = runner.open_day(lake, cfg, day, stats).await?;
    LiveDay::start(lake, day, session, progress.open.clone()).await
}

/// The rows emitted within day `dt` against the day's build: (rows emitted, rows relabelled by
/// late clicks). Rows the build has and the stream did not emit (a raw file that landed while the
/// day was built) are named in a warning: the day's tables have them, the online trainer not.
async fn emitted_against_built(lake: &Lake, dt: &str) -> Result<(u64, u64)> {
    let (emitted, built, relabelled) = reconcile(lake, dt).await?;
    if emitted != built {
        warn!(
            day = dt,
            emitted,
            built,
            "the rows emitted within the day are not the day's build: a raw file landed while the day was built (raise --lateness-seconds); features/samples has them all"
        );
    }
    if relabelled > 0 {
        warn!(
            day = dt,
            late_labels = relabelled,
            "clicks arrived after their exposures' rows were emitted: those rows keep label 0 in features/stream_samples, the day's build has 1 (raise --out-of-order-seconds to wait for them)"
        );
    }
    Ok((emitted, relabelled))
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
                    arrived: BTreeMap::new(),
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
