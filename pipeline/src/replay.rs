//! `marnflow replay`: the raw logs of some days of one lake written into another as they would
//! arrive, in slices of event time at a chosen speed — the load a stream sees in production, for
//! testing and measuring `marnflow stream`, and for rehearsing a catch-up.
//!
//! Each day of `raw/{exposures,clicks,behaviors}` is read from the source (any raw format, as the
//! feature job reads it), cut by event time into slices of `slice` seconds, and slice `k` of every
//! log is written as `raw/<log>/dt=D/part-<HHMMSS>.parquet` (the slice's start) once the replay
//! clock has passed the slice's end: at `speed`× real time (`speed` 10: an hour of logs in six
//! minutes), or as fast as it can go (`speed` 0). A row without a readable event time goes with
//! the day's last slice, where the feature job quarantines it.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use arrow::array::{Array, Float64Array, RecordBatch, UInt32Array};
use chrono::{Duration, NaiveDate};
use datafusion::prelude::SessionContext;
use tracing::info;

use crate::error::{PipelineError, Result};
use crate::lake::{partition, write_parquet, Lake};
use crate::stream::RAW_TABLES;

/// What to replay and how fast.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Event-time seconds per file.
    pub slice_seconds: u32,
    /// Times real time (0: as fast as the files can be written).
    pub speed: f64,
    /// Event time of the first day to start at, in hours from midnight.
    pub start_hour: f64,
    /// Hours of event time to replay from the start (`None`: to the end of `to`).
    pub hours: Option<f64>,
}

/// What a replay wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplayReport {
    pub files: u64,
    pub rows: u64,
    pub seconds: f64,
}

/// One day of one log, with each row's slice.
struct SlicedDay {
    batch: RecordBatch,
    slices: UInt32Array,
}

async fn slice_day(source: &Lake, table: &str, day: NaiveDate, slice_seconds: u32) -> Result<SlicedDay> {
    let dt = day.to_string();
    let ctx = crate::query::new_context(source);
    let short = table.strip_prefix("raw/").unwrap_or(table);
    let read = crate::raw_files::read_day(source, &ctx, short, &dt, None).await?;
    if !read.faults.is_empty() || !read.lines.is_empty() {
        return Err(PipelineError::Config(vec![format!(
            "raw/{table}/dt={dt} of {} has files or records that cannot be read ({} files, {} records): a replay copies readable logs only",
            source.uri(),
            read.faults.len(),
            read.lines.len()
        )]));
    }
    let schema =
        read.batches.first().map(RecordBatch::schema).ok_or_else(|| PipelineError::Dataflow("no batch".into()))?;
    let batch =
        arrow::compute::concat_batches(&schema, &read.batches).map_err(|e| PipelineError::arrow("replay", e))?;
    let keep: Vec<usize> = (0..batch.num_columns()).filter(|&i| schema.field(i).name() != "dt").collect();
    let batch = batch.project(&keep).map_err(|e| PipelineError::arrow("replay", e))?;
    // Seconds since the day's midnight, by DataFusion's reading of the event time.
    // One partition: the seconds come back in the rows' order.
    let local = SessionContext::new_with_config(datafusion::prelude::SessionConfig::new().with_target_partitions(1));
    local.register_batch("day", batch.clone())?;
    let start = day.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp());
    let df = local
        .sql(&format!(
            "SELECT CAST(date_part('epoch', try_cast(event_time AS TIMESTAMP)) AS DOUBLE) - {start} AS s FROM day"
        ))
        .await?;
    let seconds = df.collect().await?;
    let last = 86_400 / slice_seconds.max(1) - 1 + u32::from(86_400 % slice_seconds.max(1) != 0);
    let mut slices = Vec::with_capacity(batch.num_rows());
    for b in &seconds {
        let s = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Float64)
            .map_err(|e| PipelineError::arrow("replay", e))?;
        let s =
            s.as_any().downcast_ref::<Float64Array>().cloned().unwrap_or_else(|| Float64Array::from(Vec::<f64>::new()));
        for v in s.iter() {
            slices.push(match v {
                Some(v) if v.is_finite() => ((v.max(0.0) / f64::from(slice_seconds)) as u32).min(last),
                _ => last,
            });
        }
    }
    Ok(SlicedDay { batch, slices: UInt32Array::from(slices) })
}

/// Replays `opts` from `source` into `target`; calls `on_slice(day, slice start, files)` after
/// each slice is written.
pub async fn replay(
    source: &Lake,
    target: &Lake,
    opts: &ReplayOptions,
    mut on_slice: impl FnMut(NaiveDate, u32, u64),
) -> Result<ReplayReport> {
    if opts.slice_seconds == 0 || opts.slice_seconds > 86_400 {
        return Err(PipelineError::Config(vec![format!("--slice-seconds {}: allowed 1 to 86400", opts.slice_seconds)]));
    }
    let started = Instant::now();
    let mut report = ReplayReport::default();
    let origin =
        opts.from.and_hms_opt(0, 0, 0).map_or(0.0, |t| t.and_utc().timestamp() as f64) + opts.start_hour * 3600.0;
    let end = opts.hours.map(|h| origin + h * 3600.0);
    let mut day = opts.from;
    while day <= opts.to {
        let midnight = day.and_hms_opt(0, 0, 0).map_or(0.0, |t| t.and_utc().timestamp() as f64);
        if end.is_some_and(|e| midnight >= e) {
            break;
        }
        let mut logs = Vec::new();
        for table in RAW_TABLES {
            logs.push((table, slice_day(source, table, day, opts.slice_seconds).await?));
        }
        let slices = logs.iter().flat_map(|(_, l)| l.slices.values().iter().copied()).max().unwrap_or(0);
        for k in 0..=slices {
            let (from, until) =
                (midnight + f64::from(k * opts.slice_seconds), midnight + f64::from((k + 1) * opts.slice_seconds));
            if until <= origin {
                continue;
            }
            if end.is_some_and(|e| from >= e) {
                break;
            }
            // The slice is complete once the replay clock passes its end.
            if opts.speed > 0.0 {
                let due = StdDuration::from_secs_f64(((until - origin) / opts.speed).max(0.0));
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            let mut files = 0;
            for (table, log) in &logs {
                let mask = arrow::compute::kernels::cmp::eq(&log.slices, &UInt32Array::new_scalar(k))
                    .map_err(|e| PipelineError::arrow("replay", e))?;
                let rows = arrow::compute::filter_record_batch(&log.batch, &mask)
                    .map_err(|e| PipelineError::arrow("replay", e))?;
                if rows.num_rows() == 0 {
                    continue;
                }
                let at = k * opts.slice_seconds;
                let name = format!("{:02}{:02}{:02}", at / 3600, at / 60 % 60, at % 60);
                let target_file = format!("{}/part-{name}.parquet", partition(table, &day.to_string()));
                report.rows += write_parquet(target, target_file, Arc::clone(&rows.schema()), &[rows], 1 << 20).await?;
                files += 1;
            }
            report.files += files;
            on_slice(day, k * opts.slice_seconds, files);
        }
        info!(day = %day, files = report.files, rows = report.rows, "day replayed");
        day += Duration::days(1);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
