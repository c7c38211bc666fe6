//! Sample rows within the day: `marnflow stream` with a label window
//! (`features.label_window_seconds > 0`).
//!
//! While a day is open the stream takes in its raw files as they arrive (oldest first), checks
//! their rows with the daily job's `clean_*.sql`, and keeps the accepted rows in memory. Each raw
//! log has a **watermark**: the newest event time it has shown, less the allowed out-of-order
//! time. An exposure at `t` is **due** once its click window has closed in every log:
//!
//! ```text
//! t <= min(watermark(exposures), watermark(clicks) − label window, watermark(behaviors))
//! ```
//!
//! Every click that can make its label 1 has then been seen, and every behavior before `t` (its
//! history). The due exposures' rows are computed by the daily job's `labels.sql` and
//! `samples.sql` ([`OpenDay::samples`]) and written as one file of
//! [`STREAM_SAMPLES`]`/dt=D/part-NNNNN.parquet`. When the day closes, whatever is left is emitted
//! with the whole day's clicks, and the day is built as before. So the rows of a day's parts are
//! the rows of `features/samples/dt=D`; a click that arrives after its exposure's row was
//! emitted (later than the out-of-order time allows) cannot change that row: the day's build
//! counts such rows (`late_labels`) and names them in a warning.
//!
//! **Exactly once.** After each part the stream records, in its progress file, the raw files
//! taken in (in order), the cutoff emitted through and the number of parts. A restarted stream
//! reads the same files again, keeps the exposures after the cutoff as pending, and removes any
//! part written after the last one recorded (a process killed between the two writes), so no
//! row is lost or emitted twice.

use std::collections::BTreeMap;
use std::time::Instant;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::DataType;
use chrono::{DateTime, NaiveDate, Utc};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{PipelineError, Result};
use crate::features::OpenDay;
use crate::lake::{partition, Lake};
use crate::raw_files::{self, DataFile};

/// Where the stream writes the sample rows of a day still open: one file per emission.
pub const STREAM_SAMPLES: &str = "features/stream_samples";

/// What the stream records of the day it has open (in `_state/stream/progress.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenProgress {
    /// The day, `YYYY-MM-DD`.
    pub day: String,
    /// The raw files taken in, in the order they were read (path, bytes).
    pub files: Vec<(String, u64)>,
    /// Exposures at or before this event time (ms since the epoch) have had their rows emitted;
    /// `i64::MAX` once the day's last part is written.
    pub cutoff_ms: i64,
    /// Part files written (`part-00000` to `part-<parts − 1>`).
    pub parts: u32,
    /// Sample rows emitted.
    pub rows: u64,
}

/// One file of sample rows emitted within the day.
#[derive(Debug, Clone, Serialize)]
pub struct StreamPart {
    pub date: String,
    pub part: u32,
    pub rows: u64,
    /// Raw rows taken in since the part before (accepted and not).
    pub raw_events: u64,
    /// Raw files taken in since the part before.
    pub files: u64,
    /// Seconds from the start of the poll to the part landing.
    pub seconds: f64,
    pub events_per_second: f64,
    pub samples_per_second: f64,
    /// The cutoff: the part has the exposures up to this event time (RFC 3339; the day's end
    /// for its last part).
    pub emitted_through: String,
    /// Event time between the newest raw event and the cutoff, in seconds: at least the label
    /// window plus the out-of-order time while the logs flow evenly.
    pub event_lag_seconds: f64,
    /// Seconds from the moment each row could be computed to the part landing, median and 99th
    /// percentile over the part's rows. That moment is the arrival of the newest raw file of the
    /// pass that emitted the row (the pass takes its new files in together, so when it takes in
    /// several slices of the logs this is an upper bound); for an exposure that arrived after
    /// its window had been emitted through, its own arrival; for the day's last part, the day's
    /// close.
    pub delay_p50_seconds: f64,
    pub delay_p99_seconds: f64,
    /// The same over every row this process has emitted for the day so far.
    pub day_delay_p50_seconds: f64,
    pub day_delay_p99_seconds: f64,
    /// Exposures that arrived after their window had already been emitted through (emitted in
    /// this part, late).
    pub late_exposures: u64,
    /// Rows that broke the contract in the files taken in (the day's build quarantines them).
    pub rejected: u64,
}

/// A raw file of the open day as listed: its table, path, bytes and arrival.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub table: &'static str,
    pub path: String,
    pub bytes: u64,
    pub at: DateTime<Utc>,
}

/// The settings of emission within the day.
#[derive(Debug, Clone, Copy)]
pub struct Emission {
    /// The label window, ms.
    pub window_ms: i64,
    /// How far behind its log's newest event an event may still arrive, ms.
    pub out_of_order_ms: i64,
}

/// Index of each raw table in the watermarks.
fn table_index(table: &str) -> usize {
    match table {
        crate::contract::EXPOSURES => 0,
        crate::contract::CLICKS => 1,
        _ => 2,
    }
}

/// Exposures accepted and not yet emitted, with when their file arrived.
struct Pending {
    rows: RecordBatch,
    arrived: DateTime<Utc>,
}

/// The day the stream has open: its session, what it has taken in, and what is left to emit.
pub struct LiveDay {
    pub day: NaiveDate,
    open: OpenDay,
    progress: OpenProgress,
    taken: BTreeMap<String, u64>,
    pending: Vec<Pending>,
    clicks: Vec<RecordBatch>,
    behaviors: Vec<RecordBatch>,
    /// Newest accepted event time per raw table (exposures, clicks, behaviors), ms.
    newest: [Option<i64>; 3],
    /// Since the last part: raw rows, files and rows rejected.
    raw_events: u64,
    files: u64,
    rejected: u64,
    /// Every row's delay emitted by this process for the day, seconds.
    delays: Vec<f32>,
    /// Files taken in that changed since, with the size they were last seen at (warned once).
    changed: BTreeMap<String, u64>,
}

/// Event times of `batch`'s `event_time` column in ms (nulls as `i64::MIN`).
fn event_times(batch: &RecordBatch) -> Result<Int64Array> {
    let column = batch
        .column_by_name("event_time")
        .ok_or_else(|| PipelineError::Dataflow("an accepted raw table has no event_time column".into()))?;
    let plain = arrow::compute::cast(column, &DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None))
        .and_then(|c| arrow::compute::cast(&c, &DataType::Int64))
        .map_err(|e| PipelineError::arrow("event times", e))?;
    let times =
        plain.as_any().downcast_ref::<Int64Array>().cloned().unwrap_or_else(|| Int64Array::from(Vec::<i64>::new()));
    Ok(times.iter().map(|t| Some(t.unwrap_or(i64::MIN))).collect())
}

fn newest_of(batches: &[RecordBatch]) -> Result<Option<i64>> {
    let mut newest = None;
    for b in batches {
        newest = newest.max(arrow::compute::max(&event_times(b)?));
    }
    Ok(newest)
}

/// The rows of `batch` with event time at or before `cutoff` and the others.
fn split_at(batch: &RecordBatch, cutoff: i64) -> Result<(RecordBatch, RecordBatch)> {
    let times = event_times(batch)?;
    let due = arrow::compute::kernels::cmp::lt_eq(&times, &Int64Array::new_scalar(cutoff))
        .map_err(|e| PipelineError::arrow("due exposures", e))?;
    let later = arrow::compute::not(&due).map_err(|e| PipelineError::arrow("due exposures", e))?;
    let take =
        |mask| arrow::compute::filter_record_batch(batch, mask).map_err(|e| PipelineError::arrow("due exposures", e));
    Ok((take(&due)?, take(&later)?))
}

/// Appends `more` to `rows`, merged into one batch every [`COMPACT_AT`] files, so that a day of
/// small files does not become thousands of batches for every query over it.
fn compact_into(rows: &mut Vec<RecordBatch>, more: Vec<RecordBatch>) -> Result<()> {
    rows.extend(more);
    if rows.len() >= COMPACT_AT {
        let schema = rows[0].schema();
        let one = arrow::compute::concat_batches(&schema, rows.iter())
            .map_err(|e| PipelineError::arrow("accepted rows", e))?;
        *rows = vec![one];
    }
    Ok(())
}

/// Batches of accepted rows kept before they are merged ([`compact_into`]).
const COMPACT_AT: usize = 32;

/// The `q` quantile of `values` (nearest rank), in linear time (the values are reordered).
fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let at = (((values.len() - 1) as f64 * q).round() as usize).min(values.len() - 1);
    *values.select_nth_unstable_by(at, f64::total_cmp).1
}

fn millis_time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
}

/// The index of a part file (`…/part-NNNNN.parquet`), if `path` names one.
pub fn part_index(path: &str) -> Option<u32> {
    path.rsplit('/').next()?.strip_prefix("part-")?.strip_suffix(".parquet")?.parse().ok()
}

/// The folder of day `dt`'s parts.
pub fn parts_folder(dt: &str) -> String {
    partition(STREAM_SAMPLES, dt)
}

impl std::fmt::Debug for LiveDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveDay").field("progress", &self.progress).finish()
    }
}

impl LiveDay {
    /// Opens day `open.dt()`; `resume`, the progress recorded for this day, is taken in again
    /// (its files read, the exposures after its cutoff pending) and parts written after it
    /// removed.
    pub async fn start(lake: &Lake, day: NaiveDate, open: OpenDay, resume: Option<OpenProgress>) -> Result<Self> {
        let dt = open.dt().to_string();
        let progress = resume.filter(|p| p.day == dt).unwrap_or(OpenProgress {
            day: dt.clone(),
            files: Vec::new(),
            cutoff_ms: i64::MIN,
            parts: 0,
            rows: 0,
        });
        let mut live = LiveDay {
            day,
            open,
            progress: OpenProgress { files: Vec::new(), ..progress.clone() },
            taken: BTreeMap::new(),
            pending: Vec::new(),
            clicks: Vec::new(),
            behaviors: Vec::new(),
            newest: [None; 3],
            raw_events: 0,
            files: 0,
            rejected: 0,
            delays: Vec::new(),
            changed: BTreeMap::new(),
        };
        // Parts after the last one recorded were cut short by a stop: written again.
        let folder = parts_folder(&dt);
        for meta in lake.list(&folder).await? {
            let Some(rel) = lake.relative(&meta.location) else { continue };
            if part_index(&rel).is_none_or(|i| i >= progress.parts) {
                warn!(file = rel, "a part written after the last one recorded (the stream stopped between the two): removed, its rows are emitted again");
                lake.store()
                    .delete(&meta.location)
                    .await
                    .map_err(|e| PipelineError::store("delete", &meta.location, e))?;
            }
        }
        // Empty tables of clicks and behaviors with their accepted schema, for a day without any.
        let ctx = crate::query::new_context(lake);
        for raw in ["clicks", "behaviors"] {
            let none = raw_files::read_files(lake, &ctx, raw, &dt, &[], live.open.raw_format()).await?;
            let (empty, _) = live.open.accept(raw, none.batches).await?;
            match raw {
                "clicks" => live.clicks = empty,
                _ => live.behaviors = empty,
            }
        }
        let started = Instant::now();
        let mut again = Vec::with_capacity(progress.files.len());
        for (path, bytes) in &progress.files {
            let table = crate::stream::RAW_TABLES.into_iter().find(|t| path.starts_with(&format!("{t}/"))).ok_or_else(
                || {
                    PipelineError::Config(vec![format!(
                        "{}: {path} is no raw log file",
                        lake.file_url(crate::stream::PROGRESS)
                    )])
                },
            )?;
            // A file recorded and gone since (moved away by hand): its rows were emitted or are
            // lost with it; the day's build reads what is there.
            if lake.store().head(&lake.path(path)).await.is_err() {
                warn!(day = dt, file = path, "a raw file taken in before the stop is gone: not read again");
                live.taken.insert(path.clone(), *bytes);
                live.progress.files.push((path.clone(), *bytes));
                continue;
            }
            again.push(Arrival { table, path: path.clone(), bytes: *bytes, at: Utc::now() });
        }
        live.take(lake, &again).await?;
        if !progress.files.is_empty() {
            // What was emitted before the stop stays emitted.
            let cutoff = progress.cutoff_ms;
            let mut pending = Vec::new();
            for p in std::mem::take(&mut live.pending) {
                let (_, later) = split_at(&p.rows, cutoff)?;
                if later.num_rows() > 0 {
                    pending.push(Pending { rows: later, arrived: p.arrived });
                }
            }
            live.pending = pending;
            info!(
                day = dt,
                files = progress.files.len(),
                parts = progress.parts,
                ms = started.elapsed().as_millis() as u64,
                "open day resumed"
            );
        }
        live.raw_events = 0;
        live.files = 0;
        live.rejected = 0;
        Ok(live)
    }

    /// What to record in the progress file.
    pub fn progress(&self) -> &OpenProgress {
        &self.progress
    }

    /// Whether the file has been taken in (with these bytes).
    pub fn has(&self, path: &str) -> Option<u64> {
        self.taken.get(path).copied()
    }

    /// Notes that a file taken in now has `bytes`; whether that is news (to be counted and
    /// warned about once, not on every poll).
    pub fn note_changed(&mut self, path: &str, bytes: u64) -> bool {
        self.changed.insert(path.to_string(), bytes) != Some(bytes)
    }

    /// Reads raw files of the day (in arrival order) and keeps their accepted rows: each raw
    /// table's files read and checked together, one `clean_*.sql` run per table.
    async fn take(&mut self, lake: &Lake, files: &[Arrival]) -> Result<()> {
        let Some(latest) = files.iter().map(|f| f.at).max() else { return Ok(()) };
        let ctx = crate::query::new_context(lake);
        for table in crate::stream::RAW_TABLES {
            let data: Vec<DataFile> = files
                .iter()
                .filter(|f| f.table == table)
                .map(|f| DataFile {
                    rel: f.path.clone(),
                    name: f.path.rsplit('/').next().unwrap_or(&f.path).to_string(),
                    bytes: f.bytes,
                })
                .collect();
            if data.is_empty() {
                continue;
            }
            let short = table.strip_prefix("raw/").unwrap_or(table);
            let read = raw_files::read_files(lake, &ctx, short, self.open.dt(), &data, self.open.raw_format()).await?;
            let rows: u64 = read.batches.iter().map(|b| b.num_rows() as u64).sum();
            let unread = read.lines.len() as u64 + read.faults.iter().filter_map(|f| f.rows).sum::<u64>();
            self.raw_events += rows + unread;
            self.rejected += unread;
            for fault in &read.faults {
                warn!(file = fault.path, reason = fault.reason, "a raw file of the open day cannot be read: its rows wait for the day's build, which quarantines it");
            }
            let (good, bad) = self.open.accept(short, read.batches).await?;
            self.rejected += bad;
            let i = table_index(table);
            self.newest[i] = self.newest[i].max(newest_of(&good)?);
            match i {
                0 => self.pending.extend(
                    good.into_iter().filter(|b| b.num_rows() > 0).map(|rows| Pending { rows, arrived: latest }),
                ),
                1 => compact_into(&mut self.clicks, good)?,
                _ => compact_into(&mut self.behaviors, good)?,
            }
        }
        for f in files {
            self.taken.insert(f.path.clone(), f.bytes);
            self.progress.files.push((f.path.clone(), f.bytes));
        }
        self.files += files.len() as u64;
        Ok(())
    }

    /// The cutoff the logs allow now (`None`: a log has shown nothing yet).
    fn cutoff(&self, e: Emission) -> Option<i64> {
        let [x, c, b] = self.newest;
        Some((x? - e.out_of_order_ms).min(c? - e.out_of_order_ms - e.window_ms).min(b? - e.out_of_order_ms))
    }

    /// Takes in `arrivals` (new files of the day, in arrival order) and emits the rows that are
    /// due; with `last`, every row left (the day has closed and `arrivals` completes it).
    /// Returns the part written, if any rows were due.
    pub async fn advance(
        &mut self,
        lake: &Lake,
        arrivals: &[Arrival],
        e: Emission,
        last: bool,
        closed_at: Option<DateTime<Utc>>,
    ) -> Result<Option<StreamPart>> {
        let started = Instant::now();
        let before = self.progress.cutoff_ms;
        // The files are taken in together: a row is counted computable from the newest of them
        // (an upper bound of its delay when a pass takes in several slices of the logs).
        self.take(lake, arrivals).await?;
        let newest_file = arrivals.iter().map(|f| f.at).max();
        let cutoff = if last { i64::MAX } else { self.cutoff(e).unwrap_or(i64::MIN).max(before) };
        let mut due = Vec::new();
        let mut arrived = Vec::new();
        let mut pending = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let (now, later) = split_at(&p.rows, cutoff)?;
            if now.num_rows() > 0 {
                arrived.push((event_times(&now)?, p.arrived));
                due.push(now);
            }
            if later.num_rows() > 0 {
                pending.push(Pending { rows: later, arrived: p.arrived });
            }
        }
        self.pending = pending;
        if due.is_empty() {
            if last {
                self.progress.cutoff_ms = i64::MAX;
            }
            return Ok(None);
        }
        let (schema, rows) = self.open.samples(due, self.clicks.clone(), self.behaviors.clone()).await?;
        let n: u64 = rows.iter().map(|b| b.num_rows() as u64).sum();
        let part = self.progress.parts;
        let target = format!("{}/part-{part:05}.parquet", parts_folder(&self.progress.day));
        crate::lake::write_parquet(lake, target, schema, &rows, 1 << 20).await?;
        let landed = Utc::now();
        // When each row became computable (see `StreamPart::delay_p50_seconds`).
        let closed = if last { closed_at.or(newest_file) } else { newest_file }.unwrap_or(landed);
        let mut delays = Vec::new();
        let mut late_exposures = 0u64;
        for (times, at) in &arrived {
            for t in times.iter().flatten() {
                let covered = if t <= before {
                    late_exposures += 1;
                    *at
                } else {
                    closed.max(*at)
                };
                delays.push((landed - covered).num_milliseconds().max(0) as f64 / 1e3);
            }
        }
        self.delays.extend(delays.iter().map(|&d| d as f32));
        let mut day: Vec<f64> = self.delays.iter().map(|&d| f64::from(d)).collect();
        self.progress.cutoff_ms = cutoff;
        self.progress.parts += 1;
        self.progress.rows += n;
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        let newest = self.newest.iter().flatten().copied().max().unwrap_or(cutoff);
        let done = StreamPart {
            date: self.progress.day.clone(),
            part,
            rows: n,
            raw_events: self.raw_events,
            files: self.files,
            seconds,
            events_per_second: self.raw_events as f64 / seconds,
            samples_per_second: n as f64 / seconds,
            emitted_through: if last { format!("{}T24:00:00Z", self.progress.day) } else { millis_time(cutoff) },
            event_lag_seconds: if last { 0.0 } else { (newest - cutoff).max(0) as f64 / 1e3 },
            delay_p50_seconds: quantile(&mut delays, 0.5),
            delay_p99_seconds: quantile(&mut delays, 0.99),
            day_delay_p50_seconds: quantile(&mut day, 0.5),
            day_delay_p99_seconds: quantile(&mut day, 0.99),
            late_exposures,
            rejected: self.rejected,
        };
        self.raw_events = 0;
        self.files = 0;
        self.rejected = 0;
        Ok(Some(done))
    }
}

/// After day `dt` is built: its emitted rows against the day's samples. Returns (rows emitted,
/// rows of the day, emitted rows whose label the day's build has otherwise: late clicks).
pub async fn reconcile(lake: &Lake, dt: &str) -> Result<(u64, u64, u64)> {
    let ctx = crate::query::new_context(lake);
    let options = datafusion::prelude::ParquetReadOptions::default;
    let mut present = Vec::new();
    for (name, folder) in [("emitted", parts_folder(dt)), ("built", partition(crate::features::SAMPLES, dt))] {
        if !lake.list(&folder).await?.is_empty() {
            ctx.register_parquet(name, lake.folder_url(&folder), options()).await?;
            present.push(name);
        }
    }
    let count = |name: &str| {
        if present.contains(&name) {
            format!("(SELECT count(*) FROM {name})")
        } else {
            "CAST(0 AS BIGINT)".to_string()
        }
    };
    let relabelled = if present.len() == 2 {
        "(SELECT count(*) FROM emitted e JOIN built b ON e.request_id = b.request_id AND e.user_id = b.user_id \
          AND e.item_id = b.item_id AND e.event_time = b.event_time WHERE e.label <> b.label)"
    } else {
        "CAST(0 AS BIGINT)"
    };
    let sql =
        format!("SELECT {} AS emitted, {} AS built, {relabelled} AS relabelled", count("emitted"), count("built"));
    let batches = ctx.sql(&sql).await?.collect().await?;
    let value = |i: usize| {
        batches
            .first()
            .and_then(|b| b.column(i).as_any().downcast_ref::<Int64Array>().map(|a| a.value(0)))
            .map_or(0, |v| u64::try_from(v).unwrap_or(0))
    };
    Ok((value(0), value(1), value(2)))
}
