//! `marnflow features`: the daily feature job and its backfills.
//!
//! For each day `D` (in order):
//!
//! 1. **Ingest and validate** (`sql/clean_*.sql`): the day's raw exposures, clicks and behaviors,
//!    each row with the reason it breaks the contract, if any. Bad rows are written to
//!    `quarantine/raw_<table>/dt=D/` with their `reason`; input = accepted + quarantined, always.
//!    Past `max_bad_share` the run fails and shows a few offending rows.
//! 2. **Daily aggregates** (`sql/daily_item_counts.sql`) → `features/daily_item_counts/dt=D/`, and
//!    **labels** (`sql/labels.sql`) → `features/labels/dt=D/`.
//! 3. **Rolling windows** ([`crate::windows`], differential dataflow): one dataflow for the whole
//!    range, fed with the daily aggregates of `[from − max window, to − 1]` →
//!    `features/item_stats/dt=D/` (the statistics known at the end of `D − 1`).
//! 4. **Buckets** (`sql/item_stat_buckets.sql`), **samples** (`sql/samples.sql`, with the compact
//!    user state `sql/user_history.sql`) and the **item side table** (`sql/items.sql`), then the
//!    append-only **dictionaries** (`features/dictionaries/`).
//!
//! Every output is a Parquet file published atomically; rerunning a day rewrites that day's files
//! with the same bytes and touches no other day.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BinaryArray, Float64Array, Int32Array, Int64Array, ListArray, StringArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit, UInt32Type};
use arrow::record_batch::RecordBatch;
use chrono::{Duration, NaiveDate};
use datafusion::catalog::MemTable;
use datafusion::dataframe::DataFrame;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use datafusion::scalar::ScalarValue;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, instrument, warn};

use crate::catalogue::{read_catalogue, Catalogue, CatalogueAccounting, ItemFault};
use crate::cluster::{Engine, Staging};
use crate::contract::DEFAULT_MAX_ID_BYTES;
use crate::error::{PipelineError, Result};
use crate::lake::{data_file, partition, partition_day, write_parquet, Lake};
use crate::lake_write::part_file;
use crate::query::{replace_parquet, LakeSession};
use crate::raw_files;
use crate::windows::{
    item_window_stats_resumed, item_window_stats_timed, DailyCounts, ItemWindows, Topology, WindowSeed, AMOUNT, STATS,
};

/// `features/<name>` tables written by this job.
pub const DAILY_ITEM_COUNTS: &str = "features/daily_item_counts";
/// Where each run leaves the window totals of its last day (`dt=D`: the totals at the end of
/// `D − 1`, which day `D`'s statistics use), for the next run's dataflow to resume from. Not a
/// table (the leading `_` keeps it out of SQL).
pub const WINDOW_STATE: &str = "_state/windows";
pub const LABELS: &str = "features/labels";
pub const ITEM_STATS: &str = "features/item_stats";
pub const ITEM_STAT_BUCKETS: &str = "features/item_stat_buckets";
pub const SAMPLES: &str = "features/samples";
pub const USER_HISTORY: &str = "features/user_history";
pub const ITEMS: &str = "features/items";
pub const ITEM_CONTENT: &str = "features/item_content";
pub const DICTIONARIES: &str = "features/dictionaries";

/// The SQL jobs, one file each under `sql/`, embedded so the binary runs anywhere; a `sql_dir`
/// that exists overrides them, so a data engineer changes a feature without touching Rust.
pub const SQL_JOBS: [(&str, &str); 10] = [
    ("clean_exposures", include_str!("../../sql/clean_exposures.sql")),
    ("clean_clicks", include_str!("../../sql/clean_clicks.sql")),
    ("clean_behaviors", include_str!("../../sql/clean_behaviors.sql")),
    ("daily_item_counts", include_str!("../../sql/daily_item_counts.sql")),
    ("labels", include_str!("../../sql/labels.sql")),
    ("item_stat_buckets", include_str!("../../sql/item_stat_buckets.sql")),
    ("user_history", include_str!("../../sql/user_history.sql")),
    ("samples", include_str!("../../sql/samples.sql")),
    ("item_content", include_str!("../../sql/item_content.sql")),
    ("items", include_str!("../../sql/items.sql")),
];

/// Columns of `features/samples` the trainer reads; a `samples.sql` that drops one fails with the
/// file and the column named.
pub const SAMPLES_REQUIRED: [&str; 11] = [
    "request_id",
    "user_id",
    "item_id",
    "event_time",
    "label",
    "shop_id",
    "brand_id",
    "category_id",
    "hist_item_ids",
    "hist_behaviors",
    "hist_seconds_before",
];

/// The `[features]` section of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    /// Rolling windows in days.
    pub windows: Vec<u32>,
    /// Behaviors kept per sample (most recent first, stored oldest first).
    pub sequence_length: u32,
    /// Smoothed CTR = (clicks + prior_clicks) / (exposures + prior_exposures).
    pub ctr_prior_clicks: f64,
    pub ctr_prior_exposures: f64,
    /// Largest share of quarantined rows per table and day before the run fails.
    pub max_bad_share: f64,
    /// Longest id (request, user, item, shop, brand, category) in bytes; a row with a longer one
    /// is quarantined.
    pub max_id_bytes: u32,
    /// Timely worker threads for the windows.
    pub workers: usize,
    /// Folder with the SQL jobs; the embedded copies are used when it does not exist.
    pub sql_dir: String,
    /// Format of the raw log files: `auto` (by file extension), `parquet`, `csv` or `json`.
    pub raw_format: RawFormat,
    /// Where the SQL jobs run: `embedded` (this process) or `ballista://HOST:PORT` (a Ballista
    /// cluster's scheduler; [`crate::cluster`]).
    pub engine: Engine,
    /// Seconds after an exposure within which its click counts (`labels.sql`); 0: any click of
    /// the exposure's day. With a window, `marnflow stream` emits an exposure's sample row as
    /// soon as the window has closed in every raw log, instead of at the end of the day.
    pub label_window_seconds: u32,
    /// Files per day of the tables keyed by user (`samples`, `user_history`): each holds the
    /// users whose id hashes to its index, as DataFusion's hash repartition assigns them. Above
    /// 1, or on a cluster, those tables are written by the query's partitions themselves
    /// ([`crate::lake_write`]): on Ballista, by the executors.
    pub partitions: usize,
}

/// How the raw log files are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RawFormat {
    /// By each file's extension (`""` in configs of earlier builds).
    #[default]
    Auto,
    /// Apache Parquet, whatever the extension.
    Parquet,
    /// CSV with a header row, whatever the extension.
    Csv,
    /// Newline-delimited JSON, whatever the extension.
    Json,
}

impl TryFrom<String> for RawFormat {
    type Error = String;
    fn try_from(name: String) -> std::result::Result<Self, String> {
        match name.as_str() {
            "auto" | "" => Ok(RawFormat::Auto),
            "parquet" => Ok(RawFormat::Parquet),
            "csv" => Ok(RawFormat::Csv),
            "json" => Ok(RawFormat::Json),
            _ => Err(format!("use auto, parquet, csv or json, not {name:?}")),
        }
    }
}

impl From<RawFormat> for String {
    fn from(f: RawFormat) -> String {
        f.forced().unwrap_or("auto").to_string()
    }
}

impl RawFormat {
    /// The format forced on every raw log file, or `None` to go by extension.
    pub fn forced(self) -> Option<&'static str> {
        match self {
            RawFormat::Auto => None,
            RawFormat::Parquet => Some("parquet"),
            RawFormat::Csv => Some("csv"),
            RawFormat::Json => Some("json"),
        }
    }
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        Self {
            windows: vec![1, 7, 30],
            sequence_length: 50,
            ctr_prior_clicks: 1.0,
            ctr_prior_exposures: 20.0,
            max_bad_share: 0.01,
            max_id_bytes: DEFAULT_MAX_ID_BYTES,
            workers: 1,
            sql_dir: "sql".into(),
            raw_format: RawFormat::Auto,
            engine: Engine::Embedded,
            label_window_seconds: 0,
            partitions: 1,
        }
    }
}

impl FeaturesConfig {
    /// Every problem, naming its key and the allowed range.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.windows.is_empty() || self.windows.iter().any(|&w| w == 0 || w > 3650) {
            p.push(format!("features.windows = {:?}: give one or more windows of 1 to 3650 days", self.windows));
        }
        if !(1..=10_000).contains(&self.sequence_length) {
            p.push(format!("features.sequence_length = {} is out of range: allowed 1 to 10000", self.sequence_length));
        }
        if !(self.ctr_prior_clicks >= 0.0
            && self.ctr_prior_exposures > 0.0
            && self.ctr_prior_clicks <= self.ctr_prior_exposures)
        {
            p.push(
                "features.ctr_prior_clicks and ctr_prior_exposures: need 0 <= clicks <= exposures and exposures > 0"
                    .into(),
            );
        }
        if !(0.0..=1.0).contains(&self.max_bad_share) {
            p.push(format!("features.max_bad_share = {} is out of range: allowed 0 to 1", self.max_bad_share));
        }
        if !(1..=1 << 20).contains(&self.max_id_bytes) {
            p.push(format!("features.max_id_bytes = {} is out of range: allowed 1 to 1048576", self.max_id_bytes));
        }
        if !(1..=1024).contains(&self.workers) {
            p.push(format!("features.workers = {} is out of range: allowed 1 to 1024", self.workers));
        }
        if self.label_window_seconds > 86_400 {
            p.push(format!(
                "features.label_window_seconds = {} is out of range: allowed 0 (the whole day) to 86400",
                self.label_window_seconds
            ));
        }
        if !(1..=4096).contains(&self.partitions) {
            p.push(format!("features.partitions = {} is out of range: allowed 1 to 4096", self.partitions));
        }
        p
    }

    /// Whether the user-keyed tables are written by partitions ([`crate::lake_write`]) rather
    /// than collected here and written as one file.
    pub fn writes_by_partition(&self) -> bool {
        self.partitions > 1 || self.engine != Engine::Embedded
    }

    /// The forced raw format, if any.
    pub fn raw_format(&self) -> Option<&'static str> {
        self.raw_format.forced()
    }

    /// Names of the statistics of `features/item_stats`, in column order (after `item_id`).
    pub fn stat_columns(&self) -> Vec<String> {
        let mut cols = Vec::new();
        for w in &self.windows {
            for s in STATS {
                cols.push(format!("{s}_{w}d"));
            }
        }
        for w in &self.windows {
            cols.push(format!("ctr_{w}d"));
        }
        cols
    }
}

/// The SQL text of every job.
#[derive(Debug, Clone)]
pub struct SqlRegistry {
    jobs: BTreeMap<String, String>,
    origin: String,
}

impl SqlRegistry {
    /// The files of `dir` when it exists (every job must be there), else the embedded copies.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            let jobs = SQL_JOBS.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
            return Ok(Self { jobs, origin: "embedded sql/".into() });
        }
        let mut jobs = BTreeMap::new();
        let mut missing = Vec::new();
        for (name, _) in SQL_JOBS {
            let path = dir.join(format!("{name}.sql"));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    jobs.insert(name.to_string(), text);
                }
                Err(e) => missing.push(format!("{}: {e}", path.display())),
            }
        }
        if !missing.is_empty() {
            return Err(PipelineError::Config(missing));
        }
        Ok(Self { jobs, origin: format!("{}/", dir.display()) })
    }

    /// The statement of job `name`.
    pub fn get(&self, name: &str) -> Result<&str> {
        self.jobs
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| PipelineError::Config(vec![format!("no SQL job named {name}")]))
    }

    /// Where the statements came from (for messages).
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// Rows in, accepted and quarantined for one raw table and day (`input = accepted +
/// quarantined`), and the files of the partition. The rows of a file quarantined whole count in
/// `input` and `quarantined` when it could be read; an unreadable one counts by its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Accounting {
    pub input: u64,
    pub accepted: u64,
    pub quarantined: u64,
    /// Data files in `raw/<table>/dt=D/`.
    pub files: u64,
    /// Of them, quarantined whole (`quarantine/raw_<table>_files/dt=D/` says which and why).
    pub files_quarantined: u64,
    /// The bytes of the partition, and of the files quarantined whole.
    pub bytes: u64,
    pub bytes_quarantined: u64,
    /// Of the quarantined rows, the CSV and JSON records that could not become rows at all
    /// (`quarantine/raw_<table>_lines/dt=D/` has each with its file, line number and reason).
    pub lines_quarantined: u64,
}

/// What one day of the job did.
#[derive(Debug, Clone, Serialize)]
pub struct DayReport {
    pub date: String,
    pub exposures: Accounting,
    pub clicks: Accounting,
    pub behaviors: Accounting,
    /// The item catalogue as this day's item table read it.
    pub items: CatalogueAccounting,
    pub samples: u64,
    pub items_with_stats: u64,
    /// Catalogue items whose content (ids, title, image, price) was new or changed that day: the
    /// rows of its `features/item_content` partition.
    pub items_changed: u64,
    pub positive_rate: f64,
    /// Exposures whose click came only after the label window (`features.label_window_seconds`),
    /// so their label is 0: counted here, not silently lost (0 without a window).
    pub clicked_after_window: u64,
    /// How the run's rolling windows started: from the window state an earlier run left for day
    /// `D` (`Some(D)`; [`WINDOW_STATE`]), or rebuilt from the daily aggregates (`None`). The same
    /// on every day of one run.
    pub windows_resumed_from: Option<String>,
}

/// Runs SQL job `job` with `params` to the end ([`collect`]), logging its rows and time.
async fn run_sql(
    ctx: &SessionContext,
    registry: &SqlRegistry,
    job: &str,
    params: Vec<ScalarValue>,
) -> Result<Vec<RecordBatch>> {
    Ok(run_sql_ordered(ctx, registry, job, params).await?.0)
}

/// [`run_sql`], and the order of the rows returned as far as the executed plan guarantees it
/// ([`collect_ordered`]).
async fn run_sql_ordered(
    ctx: &SessionContext,
    registry: &SqlRegistry,
    job: &str,
    params: Vec<ScalarValue>,
) -> Result<(Vec<RecordBatch>, Vec<datafusion::logical_expr::SortExpr>)> {
    let started = std::time::Instant::now();
    let df = sql_frame(ctx, registry, job, params).await?;
    let (out, order) = collect_ordered(df).await.map_err(|e| sql_error(registry, job, e))?;
    debug!(job, rows = total_rows(&out), ms = started.elapsed().as_millis() as u64, "sql job done");
    Ok((out, order))
}

/// A SQL job's error, naming its file.
fn sql_error(registry: &SqlRegistry, job: &str, e: datafusion::error::DataFusionError) -> PipelineError {
    PipelineError::Sql(datafusion::error::DataFusionError::Context(
        format!("{}{job}.sql", registry.origin()),
        Box::new(e),
    ))
}

/// A SQL job planned with its parameters, not yet run.
async fn sql_frame(
    ctx: &SessionContext,
    registry: &SqlRegistry,
    job: &str,
    params: Vec<ScalarValue>,
) -> Result<DataFrame> {
    let text = registry.get(job)?;
    let mut df = ctx.sql(text).await.map_err(|e| sql_error(registry, job, e))?;
    if !params.is_empty() {
        df = df.with_param_values(params).map_err(|e| sql_error(registry, job, e))?;
    }
    Ok(df)
}

/// Runs SQL job `job` and writes its rows to `folder` by user partitions
/// ([`crate::lake_write::write_partitioned`]), once its result has the columns the trainer needs;
/// returns its rows.
async fn write_sql_by_user(
    ctx: &SessionContext,
    lake: &Lake,
    cfg: &FeaturesConfig,
    registry: &SqlRegistry,
    job: &str,
    params: Vec<ScalarValue>,
    folder: &str,
) -> Result<u64> {
    let df = sql_frame(ctx, registry, job, params).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let required: &[&str] = if job == "samples" { &SAMPLES_REQUIRED } else { &[] };
    check_columns(registry, job, &[RecordBatch::new_empty(schema)], required)?;
    let rows = crate::lake_write::write_partitioned(ctx, df, lake, folder, &["user_id"], cfg.partitions)
        .await
        .map_err(|e| match e {
            PipelineError::Sql(e) => sql_error(registry, job, e),
            other => other,
        })?;
    Ok(rows.iter().sum())
}

/// Runs a query to the end. Never returns an empty vector: a result without rows is one empty
/// batch with the query's columns, so every table registered or published from it keeps them.
/// At `trace` level it logs the executed plan with each operator's metrics (rows, time), as
/// `EXPLAIN ANALYZE` would show it.
async fn collect(df: DataFrame) -> datafusion::error::Result<Vec<RecordBatch>> {
    Ok(collect_ordered(df).await?.0)
}

/// [`collect`], and the order of the rows returned as far as the executed plan guarantees it:
/// the leading columns of its output ordering when it has one partition (empty otherwise).
async fn collect_ordered(
    df: DataFrame,
) -> datafusion::error::Result<(Vec<RecordBatch>, Vec<datafusion::logical_expr::SortExpr>)> {
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::ExecutionPlanProperties;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await?;
    let mut order = Vec::new();
    if plan.output_partitioning().partition_count() == 1 {
        for e in plan.output_ordering().into_iter().flat_map(|o| o.iter()) {
            let Some(c) = e.expr.downcast_ref::<Column>() else { break };
            let column = datafusion::common::Column::new_unqualified(c.name());
            order.push(datafusion::prelude::Expr::Column(column).sort(!e.options.descending, e.options.nulls_first));
        }
    }
    let mut out = datafusion::physical_plan::collect(Arc::clone(&plan), task).await?;
    if tracing::enabled!(tracing::Level::TRACE) {
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref());
        tracing::trace!("executed plan:\n{}", shown.indent(true));
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(schema));
    }
    Ok((out, order))
}

/// The schema of batches from [`collect`] (or built here), which are never empty.
fn schema_of(batches: &[RecordBatch]) -> SchemaRef {
    batches.first().map_or_else(|| Arc::new(Schema::empty()), RecordBatch::schema)
}

/// Registers `batches` as table `name` in `ctx`, replacing it: in memory, or staged on the lake
/// when the session runs on a cluster ([`Staging`]).
async fn replace_table(ctx: &SessionContext, name: &str, batches: Vec<RecordBatch>) -> Result<()> {
    if let Some(staging) = Staging::of(ctx) {
        return staging.register(ctx, name, &batches).await;
    }
    replace_memory_table(ctx, name, batches, Vec::new())
}

/// Registers `batches` in memory as table `name` of `ctx`, one partition, replacing it; `order`,
/// when not empty, is the order the rows are in, declared so that queries keeping it do not sort.
fn replace_memory_table(
    ctx: &SessionContext,
    name: &str,
    batches: Vec<RecordBatch>,
    order: Vec<datafusion::logical_expr::SortExpr>,
) -> Result<()> {
    let _ = ctx.deregister_table(name)?;
    let mut table = MemTable::try_new(schema_of(&batches), vec![batches])?;
    if !order.is_empty() {
        table = table.with_sort_order(vec![order]);
    }
    ctx.register_table(name, Arc::new(table))?;
    Ok(())
}

fn total_rows(batches: &[RecordBatch]) -> u64 {
    batches.iter().map(|b| b.num_rows() as u64).sum()
}

/// The contract's string type everywhere: `Utf8View`/`LargeUtf8` become `Utf8`, inside lists too,
/// so every partition of a table has the same schema whatever SQL functions produced it.
fn plain_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) => {
            let item = if f.data_type() == &DataType::Null { DataType::Utf8 } else { plain_type(f.data_type()) };
            DataType::List(Arc::new(Field::new("item", item, true)))
        }
        other => other.clone(),
    }
}

pub(crate) fn plain_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_data_type(plain_type(f.data_type())))
            .collect::<Vec<_>>(),
    ))
}

pub(crate) fn plain_batch(b: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let cols = b
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PipelineError::arrow("normalizing string types", e))?;
    RecordBatch::try_new(Arc::clone(schema), cols).map_err(|e| PipelineError::arrow("normalizing string types", e))
}

/// Writes `batches` as the single file of `table/dt=D`, strings normalised to `Utf8`.
async fn publish(lake: &Lake, table: &str, dt: &str, batches: &[RecordBatch]) -> Result<u64> {
    let (schema, plain) = plain_batches(batches)?;
    write_partition(lake, table, dt, schema, &plain).await
}

/// Writes already normalised `batches` as the single file of `table/dt=D`; the files an earlier
/// run with more partitions left there are removed, so the partition holds this run's rows only.
async fn write_partition(
    lake: &Lake,
    table: &str,
    dt: &str,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> Result<u64> {
    let folder = partition(table, dt);
    let file = data_file(&folder);
    let rows = write_parquet(lake, file.clone(), schema, batches, 65_536).await?;
    remove_other_files(lake, &folder, &BTreeSet::from([lake.path(&file)])).await?;
    Ok(rows)
}

/// Removes every file under `folder` but those in `keep`.
async fn remove_other_files(lake: &Lake, folder: &str, keep: &BTreeSet<object_store::path::Path>) -> Result<()> {
    for old in lake.list(folder).await? {
        if !keep.contains(&old.location) {
            lake.store().delete(&old.location).await.map_err(|e| PipelineError::store("delete", &old.location, e))?;
        }
    }
    Ok(())
}

/// `batches` with their strings normalised to `Utf8`, as they are written (and read back).
fn plain_batches(batches: &[RecordBatch]) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema = plain_schema(&schema_of(batches));
    let plain = batches.iter().map(|b| plain_batch(b, &schema)).collect::<Result<Vec<_>>>()?;
    Ok((schema, plain))
}

/// The tables of one day that pass 3 writes, in their order. They are written in the background
/// while the next day computes (its user state is handed over in memory), one day after another.
struct DayWrites {
    dt: String,
    tables: Vec<(&'static str, SchemaRef, Vec<RecordBatch>)>,
    /// Tables the query's partitions wrote to a folder of their own: `(table, folder, files)`,
    /// moved into place by [`publish_parts`] before the rest is written.
    parts: Vec<(&'static str, String, usize)>,
    /// What the dictionaries are updated from besides the item content: the day's samples, or,
    /// when the samples were written by partitions, their distinct ids ([`distinct_ids`]).
    dictionary_sources: Option<Vec<RecordBatch>>,
}

impl DayWrites {
    fn new(dt: &str) -> Self {
        Self { dt: dt.to_string(), tables: Vec::new(), parts: Vec::new(), dictionary_sources: None }
    }

    /// The queued batches of `table` (none when it was not queued).
    fn batches(&self, table: &str) -> &[RecordBatch] {
        self.tables.iter().find(|(t, _, _)| *t == table).map_or(&[], |(_, _, b)| b.as_slice())
    }

    /// Queues `table`; returns the batches as written.
    fn add(&mut self, table: &'static str, batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
        let (schema, plain) = plain_batches(batches)?;
        self.tables.push((table, schema, plain.clone()));
        Ok(plain)
    }

    async fn write(self, lake: Lake) -> Result<()> {
        let t = std::time::Instant::now();
        for (table, schema, batches) in &self.tables {
            write_partition(&lake, table, &self.dt, Arc::clone(schema), batches).await?;
        }
        // The dictionaries last, from the day's samples and the item content that changed (the
        // rest is in them already: they only grow).
        let samples = self.dictionary_sources.as_deref().unwrap_or_else(|| self.batches(SAMPLES));
        update_dictionaries(&lake, samples, self.batches(ITEM_CONTENT)).await?;
        debug!(dt = self.dt, ms = format!("{:.0}", t.elapsed().as_secs_f64() * 1e3), "day written");
        Ok(())
    }
}

/// The background writes of the days so far: each day's task waits for the previous day's, so
/// tables and dictionaries are written in day order.
#[derive(Default)]
struct Writer {
    last: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Writer {
    fn push(&mut self, lake: &Lake, writes: DayWrites) {
        let before = self.last.take();
        let lake = lake.clone();
        self.last = Some(tokio::spawn(async move {
            if let Some(before) = before {
                join_writes(before).await?;
            }
            writes.write(lake).await
        }));
    }

    /// Waits for every write queued so far.
    async fn finish(&mut self) -> Result<()> {
        match self.last.take() {
            Some(last) => join_writes(last).await,
            None => Ok(()),
        }
    }
}

async fn join_writes(task: tokio::task::JoinHandle<Result<()>>) -> Result<()> {
    task.await.map_err(|e| PipelineError::Io {
        path: "features".into(),
        source: std::io::Error::other(format!("the background writer stopped: {e}")),
    })?
}

/// Splits a validated table into accepted rows and quarantined rows. Accepted rows lose the
/// `reason` column and the `raw_*` columns (original text kept for quarantine only).
fn split_by_reason(batches: &[RecordBatch], table: &str) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for b in batches {
        let reason_idx =
            b.schema().index_of("reason").map_err(|e| PipelineError::arrow(format!("{table}: no reason column"), e))?;
        let reason = b.column(reason_idx);
        let is_bad = arrow::compute::is_not_null(reason).map_err(|e| PipelineError::arrow(table.to_string(), e))?;
        let is_good = arrow::compute::not(&is_bad).map_err(|e| PipelineError::arrow(table.to_string(), e))?;
        let filter =
            |mask| arrow::compute::filter_record_batch(b, mask).map_err(|e| PipelineError::arrow(table.to_string(), e));
        let g = filter(&is_good)?;
        let keep: Vec<usize> = (0..g.num_columns())
            .filter(|&i| i != reason_idx && !g.schema().field(i).name().starts_with("raw_"))
            .collect();
        good.push(g.project(&keep).map_err(|e| PipelineError::arrow(table.to_string(), e))?);
        bad.push(filter(&is_bad)?);
    }
    Ok((good, bad))
}

fn show_bad_rows(bad: &[RecordBatch], n: usize) -> String {
    let mut shown = Vec::new();
    let mut left = n;
    for b in bad {
        if left == 0 {
            break;
        }
        let take = left.min(b.num_rows());
        shown.push(b.slice(0, take));
        left -= take;
    }
    arrow::util::pretty::pretty_format_batches(&shown).map(|t| t.to_string()).unwrap_or_default()
}

fn day_string(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// A day as the window dataflow's timestamp (days since 1970; earlier dates are 0).
pub(crate) fn epoch_day(d: NaiveDate) -> u32 {
    u32::try_from(crate::contract::epoch_day(d)).unwrap_or(0)
}

/// What the contract check of one raw table and day found.
struct Checked {
    /// Rows checked.
    input: u64,
    /// Rows accepted.
    accepted: u64,
    /// The rows that break the contract, with their `reason`.
    bad: Vec<RecordBatch>,
}

/// Runs `clean_<raw>.sql` for day `dt` and registers its result as `clean_<raw>` (every row, with
/// its `reason`) and the accepted rows as `<raw>`. On a cluster the checked rows stay there: the
/// executors write them to `folder` (default: the session's staging folder), `<raw>` is a view of
/// the accepted ones, and only the rows that break the contract come back.
async fn validate(
    lake: &Lake,
    ctx: &SessionContext,
    registry: &SqlRegistry,
    cfg: &FeaturesConfig,
    raw: &str,
    dt: &str,
    folder: Option<String>,
) -> Result<Checked> {
    let job = format!("clean_{raw}");
    let params = vec![ScalarValue::Utf8(Some(dt.to_string())), ScalarValue::Int64(Some(i64::from(cfg.max_id_bytes)))];
    if let Some(staging) = Staging::of(ctx) {
        let df = sql_frame(ctx, registry, &job, params).await?;
        let folder = folder.unwrap_or_else(|| staging.folder_for(&job));
        let input: u64 = crate::lake_write::write_unordered(ctx, df, lake, &folder).await?.iter().sum();
        register_checked(ctx, lake, raw, &folder).await?;
        let bad = collect(ctx.sql(&format!("SELECT * FROM {job} WHERE reason IS NOT NULL")).await?).await?;
        let accepted = input - total_rows(&bad).min(input);
        return Ok(Checked { input, accepted, bad });
    }
    let checked = run_sql(ctx, registry, &job, params).await?;
    replace_table(ctx, &job, checked.clone()).await?;
    let (good, bad) = split_by_reason(&checked, &job)?;
    let accepted = total_rows(&good);
    replace_table(ctx, raw, good).await?;
    Ok(Checked { input: total_rows(&checked), accepted, bad })
}

/// Registers the checked rows of raw table `raw` written to `folder` ([`validate`] on a cluster)
/// as `clean_<raw>`, and the accepted ones, without `reason` and the original text columns, as
/// the view `<raw>`.
async fn register_checked(ctx: &SessionContext, lake: &Lake, raw: &str, folder: &str) -> Result<()> {
    let job = format!("clean_{raw}");
    replace_parquet(ctx, &job, lake.folder_url(folder), ParquetReadOptions::default()).await?;
    let schema = ctx.table(&job).await?.schema().as_arrow().clone();
    let keep: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.name())
        .filter(|n| *n != "reason" && !n.starts_with("raw_"))
        .map(|n| format!("\"{n}\""))
        .collect();
    let good = ctx.sql(&format!("SELECT {} FROM {job} WHERE reason IS NULL", keep.join(", "))).await?;
    let _ = ctx.deregister_table(raw)?;
    ctx.register_table(raw, good.into_view())?;
    Ok(())
}

/// Where a cluster's pass 1 keeps the checked behaviors of day `dt` for its pass 3 (which then
/// reads no raw file again), outside the session's staging that the pass removes.
fn checked_folder(dt: &str) -> String {
    format!("_cluster/checked-{}-{}-{dt}/clean_behaviors", std::process::id(), crate::cluster::nanos_now())
}

/// Validates one raw table of day `dt`, quarantines its bad rows and checks their share;
/// returns its accounting.
async fn ingest(
    lake: &Lake,
    ctx: &SessionContext,
    registry: &SqlRegistry,
    cfg: &FeaturesConfig,
    raw: &str,
    dt: &str,
    keep: Option<String>,
) -> Result<Accounting> {
    let day = register_raw_day(lake, ctx, cfg, raw, dt).await?;
    quarantine_files(lake, raw, dt, &day.faults).await?;
    quarantine_lines(lake, raw, dt, &day.lines).await?;
    let Checked { input, accepted, bad } = validate(lake, ctx, registry, cfg, raw, dt, keep).await?;
    let file_rows: u64 = day.faults.iter().filter_map(|f| f.rows).sum();
    let lines = day.lines.len() as u64;
    let acc = Accounting {
        input: input + file_rows + lines,
        accepted,
        quarantined: total_rows(&bad) + file_rows + lines,
        files: day.files,
        files_quarantined: day.faults.len() as u64,
        bytes: day.bytes,
        bytes_quarantined: day.faults.iter().map(|f| f.bytes).sum(),
        lines_quarantined: lines,
    };
    debug_assert_eq!(acc.input, acc.accepted + acc.quarantined);
    publish(lake, &format!("quarantine/raw_{raw}"), dt, &bad).await?;
    if acc.quarantined > 0 {
        warn!(table = %format!("raw/{raw}"), dt, quarantined = acc.quarantined, input = acc.input, "rows quarantined");
    }
    // Files that could be read count by their rows (below); unreadable ones by their bytes.
    let unreadable: u64 = day.faults.iter().filter(|f| f.rows.is_none()).map(|f| f.bytes).sum();
    if acc.bytes > 0 && unreadable as f64 > cfg.max_bad_share * acc.bytes as f64 {
        return Err(PipelineError::Config(vec![format!(
            "raw/{raw}/dt={dt}: {} of {} files ({unreadable} of {} bytes unreadable, {:.2}%) cannot be used, more than \
             features.max_bad_share = {}; they are copied to quarantine/_files/raw_{raw}/dt={dt}/ and listed in \
             quarantine/raw_{raw}_files/dt={dt}/:\n{}",
            acc.files_quarantined,
            acc.files,
            acc.bytes,
            100.0 * unreadable as f64 / acc.bytes as f64,
            cfg.max_bad_share,
            list_faults(&day.faults)
        )]));
    }
    if acc.input > 0 && acc.quarantined as f64 > cfg.max_bad_share * acc.input as f64 {
        let mut whole = String::new();
        if file_rows > 0 {
            whole = format!(
                "\n{file_rows} of them in files quarantined whole (copied to quarantine/_files/raw_{raw}/dt={dt}/):\n{}",
                list_faults(&day.faults)
            );
        }
        if lines > 0 {
            whole.push_str(&format!(
                "\n{lines} of them records that are no rows (in quarantine/raw_{raw}_lines/dt={dt}/), the first:\n{}",
                list_lines(&day.lines, 5)
            ));
        }
        return Err(PipelineError::Config(vec![format!(
            "raw/{raw}/dt={dt}: {} of {} rows ({:.2}%) break the contract, more than features.max_bad_share = {}; \
             they are in quarantine/raw_{raw}/dt={dt}/.{whole}\nThe first rows:\n{}",
            acc.quarantined,
            acc.input,
            100.0 * acc.quarantined as f64 / acc.input as f64,
            cfg.max_bad_share,
            show_bad_rows(&bad, 5)
        )]));
    }
    Ok(acc)
}

/// Reads one day of raw log table `raw` file by file and registers its usable rows as
/// `raw.<raw>`, the table the clean SQL jobs read; returns what was read (the batches moved out).
/// On a cluster the job's process stages each file as it reads it (as many at once as it has
/// cores, and no more in memory; each file checked on its own, bad ones quarantined whole) and
/// the executors read the staged files, cast to the day's one schema.
async fn register_raw_day(
    lake: &Lake,
    ctx: &SessionContext,
    cfg: &FeaturesConfig,
    raw: &str,
    dt: &str,
) -> Result<raw_files::RawDay> {
    let name = format!("raw.{raw}");
    if let Some(staging) = Staging::of(ctx) {
        let local = crate::query::new_context(lake);
        let folder = staging.folder_for(&name);
        let (day, schema) = raw_files::stage_day(lake, &local, raw, dt, cfg.raw_format(), &folder).await?;
        if lake.list(&folder).await?.is_empty() {
            staging.register(ctx, &name, &[RecordBatch::new_empty(schema)]).await?;
        } else {
            let options = ParquetReadOptions::default().schema(&schema);
            replace_parquet(ctx, &name, lake.folder_url(&folder), options).await?;
        }
        return Ok(day);
    }
    let mut day = raw_files::read_day(lake, ctx, raw, dt, cfg.raw_format()).await?;
    replace_table(ctx, &name, std::mem::take(&mut day.batches)).await?;
    Ok(day)
}

fn list_faults(faults: &[raw_files::FileFault]) -> String {
    let line = |f: &raw_files::FileFault| {
        let rows = f.rows.map_or(String::new(), |r| format!(", {r} rows"));
        format!("  {} ({} bytes{rows}): {}", f.path, f.bytes, f.reason)
    };
    faults.iter().map(line).collect::<Vec<_>>().join("\n")
}

/// Fails when more than `max_bad_share` of the catalogue's rows are quarantined; warns about
/// what was quarantined or cut otherwise (each file quarantined whole is named when the day's
/// quarantine is written).
fn check_catalogue(cfg: &FeaturesConfig, catalogue: &Catalogue) -> Result<()> {
    let acc = &catalogue.accounting;
    debug_assert_eq!(acc.input, acc.accepted + acc.quarantined);
    if acc.quarantined > 0 || acc.images_quarantined > 0 || acc.titles_cut > 0 {
        warn!(
            input = acc.input,
            quarantined = acc.quarantined,
            images_quarantined = acc.images_quarantined,
            titles_cut = acc.titles_cut,
            "raw/items: items quarantined, images dropped or titles cut"
        );
    }
    if acc.input > 0 && acc.quarantined as f64 > cfg.max_bad_share * acc.input as f64 {
        let shown: Vec<String> = catalogue
            .items
            .iter()
            .filter(|f| !f.kept)
            .take(5)
            .map(|f| format!("  {} row {}: {}", f.path, f.row, f.reason))
            .collect();
        return Err(PipelineError::Config(vec![format!(
            "raw/items: {} of {} item rows ({:.2}%) break the contract, more than features.max_bad_share = {}; \
             they are listed in quarantine/raw_items/ and quarantine/raw_items_files/ of the day built.{}{}\n{}",
            acc.quarantined,
            acc.input,
            100.0 * acc.quarantined as f64 / acc.input as f64,
            cfg.max_bad_share,
            if catalogue.files.is_empty() {
                String::new()
            } else {
                format!("\nFiles quarantined whole:\n{}", list_faults(&catalogue.files))
            },
            if shown.is_empty() { "" } else { "\nThe first items:" },
            shown.join("\n")
        )]));
    }
    Ok(())
}

/// The catalogue's quarantined items, and the items kept without their image, as the table
/// `quarantine.raw_items` (path, row, item_id, kept, reason) in the partition of the day built.
async fn quarantine_items(lake: &Lake, dt: &str, items: &[ItemFault]) -> Result<()> {
    let columns: Vec<(&str, bool, ArrayRef)> = vec![
        ("path", false, Arc::new(StringArray::from_iter_values(items.iter().map(|f| f.path.as_str())))),
        ("row", false, Arc::new(Int64Array::from_iter_values(items.iter().map(|f| saturating_i64(f.row))))),
        ("item_id", true, Arc::new(StringArray::from_iter(items.iter().map(|f| f.item_id.as_deref())))),
        ("kept", false, Arc::new(arrow::array::BooleanArray::from_iter(items.iter().map(|f| Some(f.kept))))),
        ("reason", false, Arc::new(StringArray::from_iter_values(items.iter().map(|f| f.reason.as_str())))),
    ];
    publish_listing(lake, "quarantine/raw_items", dt, columns).await
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Publishes a quarantine listing (files, records or items) from its `(name, nullable, column)`s.
async fn publish_listing(lake: &Lake, table: &str, dt: &str, columns: Vec<(&str, bool, ArrayRef)>) -> Result<()> {
    let fields: Vec<Field> =
        columns.iter().map(|(name, nullable, c)| Field::new(*name, c.data_type().clone(), *nullable)).collect();
    let arrays = columns.into_iter().map(|(_, _, c)| c).collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| PipelineError::arrow(format!("the listing {table}"), e))?;
    publish(lake, table, dt, &[batch]).await?;
    Ok(())
}

fn list_lines(lines: &[raw_files::LineFault], n: usize) -> String {
    let line = |f: &raw_files::LineFault| format!("  {}:{}: {}", f.path, f.line, f.reason);
    lines.iter().take(n).map(line).collect::<Vec<_>>().join("\n")
}

/// Quarantines the records of raw CSV and JSON files that could not become rows, as the table
/// `quarantine.raw_<table>_lines` (path, line, the record as text with invalid UTF-8 replaced,
/// its exact bytes, reason; written, empty, on a clean day too, so a rerun after a fix replaces it).
async fn quarantine_lines(lake: &Lake, raw: &str, dt: &str, lines: &[raw_files::LineFault]) -> Result<()> {
    if let Some(first) = lines.first() {
        warn!(file = %first.path, line = first.line, reason = %first.reason, records = lines.len(),
              "raw records that are no rows quarantined");
    }
    let columns: Vec<(&str, bool, ArrayRef)> = vec![
        ("path", false, Arc::new(StringArray::from_iter_values(lines.iter().map(|f| f.path.as_str())))),
        ("line", false, Arc::new(Int64Array::from_iter_values(lines.iter().map(|f| saturating_i64(f.line))))),
        ("text", false, Arc::new(StringArray::from_iter_values(lines.iter().map(|f| String::from_utf8_lossy(&f.raw))))),
        ("raw", false, Arc::new(BinaryArray::from_iter_values(lines.iter().map(|f| f.raw.as_slice())))),
        ("reason", false, Arc::new(StringArray::from_iter_values(lines.iter().map(|f| f.reason.as_str())))),
    ];
    publish_listing(lake, &format!("quarantine/raw_{raw}_lines"), dt, columns).await
}

/// Quarantines the files of a raw partition that could not be used: a copy of each under
/// `quarantine/_files/raw_<table>/dt=D/` (hidden from SQL), and the list with path, size, rows and
/// reason as the table `quarantine.raw_<table>_files` (written, empty, on a clean day too, so a
/// rerun after a fix replaces it).
async fn quarantine_files(lake: &Lake, raw: &str, dt: &str, faults: &[raw_files::FileFault]) -> Result<()> {
    for f in faults {
        warn!(file = %f.path, bytes = f.bytes, reason = %f.reason, "raw file quarantined whole");
        let name = f.path.rsplit('/').next().unwrap_or(&f.path);
        let bytes = lake.get(&f.path).await?;
        lake.put_atomic(&format!("quarantine/_files/raw_{raw}/dt={dt}/{name}"), bytes.to_vec()).await?;
    }
    let columns: Vec<(&str, bool, ArrayRef)> = vec![
        ("path", false, Arc::new(StringArray::from_iter_values(faults.iter().map(|f| f.path.as_str())))),
        ("bytes", false, Arc::new(Int64Array::from_iter_values(faults.iter().map(|f| saturating_i64(f.bytes))))),
        (
            "rows",
            true,
            Arc::new(Int64Array::from_iter(faults.iter().map(|f| f.rows.and_then(|r| i64::try_from(r).ok())))),
        ),
        ("reason", false, Arc::new(StringArray::from_iter_values(faults.iter().map(|f| f.reason.as_str())))),
    ];
    publish_listing(lake, &format!("quarantine/raw_{raw}_files"), dt, columns).await
}

fn history_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, true),
        Field::new("event_time", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        Field::new("item_id", DataType::Utf8, true),
        Field::new("behavior", DataType::Utf8, true),
    ]))
}

/// Runs the feature job for every day of `[from, to]`, in order.
///
/// `cluster`: `Some((process, addresses))` runs the windows in timely's cluster mode, with
/// `cfg.workers` threads in each process; every process runs this same job (the files they
/// publish are identical), while the dataflow's work is spread over all of them.
#[instrument(skip_all, fields(lake = lake.uri(), from = %from, to = %to))]
pub async fn run_features(
    lake: &Lake,
    cfg: &FeaturesConfig,
    from: NaiveDate,
    to: NaiveDate,
    cluster: Option<(usize, Vec<String>)>,
) -> Result<Vec<DayReport>> {
    let mut problems = Vec::new();
    if to < from {
        problems.push(format!("--to {to} is before --from {from}"));
    }
    let registry = checked_registry(cfg, problems)?;
    let days: Vec<NaiveDate> = (0..=(to - from).num_days()).map(|i| from + Duration::days(i)).collect();
    // The catalogue, read and checked once for every day of the range (first: a catalogue past
    // the share stops the job before any day is written).
    let (catalogue, digests) = checked_catalogue(lake, cfg).await?;
    // On a cluster, each day's checked behaviors between its pass 1 and its pass 3; what a failed
    // run leaves of them is removed here.
    let mut checked: Vec<Option<String>> = Vec::new();
    let ran = run_days(lake, cfg, &registry, &catalogue, &digests, &days, cluster, &mut checked).await;
    for folder in checked.into_iter().flatten() {
        if let Err(e) = lake.remove_all(&folder).await {
            warn!(folder, error = %e, "could not remove a failed run's checked rows");
        }
    }
    ran
}

/// The SQL jobs, once the settings pass their checks (with `problems` found by the caller).
fn checked_registry(cfg: &FeaturesConfig, more: Vec<String>) -> Result<SqlRegistry> {
    let mut problems = cfg.validate();
    problems.extend(more);
    if !problems.is_empty() {
        return Err(PipelineError::Config(problems));
    }
    let registry = SqlRegistry::load(Path::new(&cfg.sql_dir))?;
    info!(sql = registry.origin(), "feature job starts");
    Ok(registry)
}

/// The item catalogue, read and checked against `max_bad_share`, and its content digests.
async fn checked_catalogue(lake: &Lake, cfg: &FeaturesConfig) -> Result<(Catalogue, RecordBatch)> {
    let catalogue = read_catalogue(lake, &crate::query::new_context(lake), cfg.raw_format(), cfg.max_id_bytes).await?;
    check_catalogue(cfg, &catalogue)?;
    let digests = content_digests(&catalogue.batch)?;
    Ok((catalogue, digests))
}

/// [`run_features`] once its settings and catalogue are checked.
#[allow(clippy::too_many_arguments)] // the job's parts, each read once per run
async fn run_days(
    lake: &Lake,
    cfg: &FeaturesConfig,
    registry: &SqlRegistry,
    catalogue: &Catalogue,
    digests: &RecordBatch,
    days: &[NaiveDate],
    cluster: Option<(usize, Vec<String>)>,
    checked: &mut Vec<Option<String>>,
) -> Result<Vec<DayReport>> {
    let Some(&from) = days.first() else { return Ok(Vec::new()) };
    // Window states after `from` count days that pass 1 is about to rewrite.
    remove_window_states_after(lake, from).await?;
    // Pass 1: validate, quarantine, daily aggregates and labels, day by day.
    let mut reports = Vec::new();
    for day in days {
        let (report, behaviors, _) = ingest_day(lake, cfg, registry, catalogue, *day).await?;
        reports.push(report);
        checked.push(behaviors);
    }

    // Pass 2: one dataflow for the whole range, resumed from the window state the run before
    // left, else rebuilt from the daily aggregates; this run's last totals are left for the next.
    let topology = match cluster {
        Some((process, addresses)) => Topology::Cluster { threads: cfg.workers, process, addresses },
        None => Topology::Threads(cfg.workers),
    };
    let (windows, resumed_from, state_write) = window_part(lake, cfg, days, &topology).await?;
    for r in reports.iter_mut() {
        r.windows_resumed_from = resumed_from.clone();
    }

    // Pass 3: statistics, buckets, samples, user state, item side and dictionaries, day by day;
    // a day's tables are written while the next day computes.
    let mut writer = Writer::default();
    let mut state = None;
    for ((day, report), behaviors) in days.iter().zip(reports.iter_mut()).zip(checked.iter_mut()) {
        let stats = windows.get(&epoch_day(*day)).map(Vec::as_slice).unwrap_or(&[]);
        let input = DayInput { day: *day, stats, digests, previous: state.take(), behaviors: behaviors.as_deref() };
        match publish_day(lake, cfg, registry, catalogue, input, report).await {
            Ok((next, writes)) => {
                if let Some(folder) = behaviors.take() {
                    lake.remove_all(&folder).await?;
                }
                state = Some(next);
                land_day(lake, &mut writer, writes).await?;
            }
            Err(e) => {
                // The days before stay written, as they would have been one by one.
                writer.finish().await?;
                return Err(e);
            }
        }
    }
    writer.finish().await?;
    state_write.finish().await?;
    Ok(reports)
}

/// Lands a day's tables: the partitioned ones moved into place now (after the days before,
/// which they follow), since the next day reads them from there; the rest queued on `writer`.
async fn land_day(lake: &Lake, writer: &mut Writer, writes: DayWrites) -> Result<()> {
    if !writes.parts.is_empty() {
        writer.finish().await?;
        publish_parts(lake, &writes.dt, &writes.parts).await?;
    }
    writer.push(lake, writes);
    Ok(())
}

/// The feature job one day at a time, for a process that outlives a day (`marnflow stream`):
/// the SQL jobs and the user state at the end of the last day run stay in memory, and the
/// windows come from the caller (a live dataflow, [`crate::windows::LiveWindows`]). A day is the
/// daily job's day: the same steps write the same tables as `marnflow features --date D`.
pub struct DayRunner {
    registry: SqlRegistry,
    /// The state at the end of `last`, the last day run here.
    state: Option<DayState>,
    last: Option<NaiveDate>,
}

impl std::fmt::Debug for DayRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DayRunner").field("sql", &self.registry.origin()).field("last", &self.last).finish()
    }
}

impl DayRunner {
    /// Checks the settings and loads the SQL jobs.
    pub fn new(cfg: &FeaturesConfig) -> Result<Self> {
        Ok(Self { registry: checked_registry(cfg, Vec::new())?, state: None, last: None })
    }

    /// Runs day `day` given `stats`, the window totals at the end of `day − 1`: the catalogue
    /// read and checked, pass 1 (validation, quarantine, daily aggregates, labels) and pass 3
    /// (statistics, buckets, samples, user state, items, dictionaries). Every table of the day has
    /// landed when it returns, with the day's report and its daily aggregates (what the windows
    /// of the next day need). The user state of the day before comes from memory when that day
    /// was the last one run here, else from the lake. Window states left for later days are
    /// removed first, as a run from `day` does.
    pub async fn run_day(
        &mut self,
        lake: &Lake,
        cfg: &FeaturesConfig,
        day: NaiveDate,
        stats: &[ItemWindows],
    ) -> Result<(DayReport, DailyCounts)> {
        let previous = self.state.take().filter(|_| self.last == Some(day - Duration::days(1)));
        self.last = None;
        remove_window_states_after(lake, day).await?;
        let (catalogue, digests) = checked_catalogue(lake, cfg).await?;
        let (mut report, checked, counts) = ingest_day(lake, cfg, &self.registry, &catalogue, day).await?;
        let input = DayInput { day, stats, digests: &digests, previous, behaviors: checked.as_deref() };
        let published = publish_day(lake, cfg, &self.registry, &catalogue, input, &mut report).await;
        if let Some(folder) = &checked {
            lake.remove_all(folder).await?;
        }
        let (next, writes) = published?;
        let mut writer = Writer::default();
        land_day(lake, &mut writer, writes).await?;
        writer.finish().await?;
        // The day's aggregates as published, from memory (the windows of the next day need them).
        let what = format!("{}'s daily item counts", day_string(day));
        let mut rows = Vec::new();
        for b in &counts {
            append_daily_counts(b, &what, &mut rows)?;
        }
        self.state = Some(next);
        self.last = Some(day);
        Ok((report, DailyCounts { day: epoch_day(day), rows }))
    }
}

impl DayRunner {
    /// A session for the sample rows of day `day` while it is still open (`marnflow stream`
    /// with a label window): what a sample of the day needs that is known when the day starts is
    /// registered once, as the daily job's pass 3 registers it: the catalogue (`raw.items`), the
    /// day's buckets from `stats` (the window totals at the end of `day − 1`), and the user state
    /// at the end of `day − 1` (from memory when that day was the last one run here, else from
    /// the lake). Always in this process, one partition, as the daily job's samples run.
    pub async fn open_day(
        &self,
        lake: &Lake,
        cfg: &FeaturesConfig,
        day: NaiveDate,
        stats: &[ItemWindows],
    ) -> Result<OpenDay> {
        let dt = day_string(day);
        let local = FeaturesConfig { engine: Engine::Embedded, partitions: 1, ..cfg.clone() };
        let session = open_session(lake, &local, &format!("open-{dt}")).await?;
        let ctx = session.context();
        ctx.state_ref().write().config_mut().options_mut().execution.target_partitions = 1;
        let (catalogue, digests) = checked_catalogue(lake, cfg).await?;
        replace_table(ctx, "raw.items", vec![catalogue.batch.clone()]).await?;
        let stats_batch = item_stats_batch(cfg, stats)?;
        let filled = FilledStats::new(cfg, &catalogue.batch, &stats_batch)?;
        replace_table(ctx, "item_stats_long", vec![filled.long.clone()]).await?;
        let buckets = run_sql(ctx, &self.registry, "item_stat_buckets", vec![]).await?;
        replace_table(ctx, "item_stat_buckets_wide", vec![filled.widen(cfg, &buckets)?]).await?;
        let (history, items) = match &self.state {
            Some(state) if self.last == day.pred_opt() => (state.history.clone(), state.items.clone()),
            _ => (previous_history(lake, &session, day, false).await?, previous_items(lake, day).await?),
        };
        history.register(ctx, lake).await?;
        // The day's item side is known when it starts (the catalogue, the content the day before
        // pointed at, the buckets): published now, for whatever reads the rows emitted within the
        // day (the online trainer), with the bytes the day's build writes again. The dictionaries
        // stay the build's.
        replace_table(ctx, "item_digests", vec![digests]).await?;
        replace_table(ctx, "previous_items", vec![items]).await?;
        let content = run_sql(ctx, &self.registry, "item_content", vec![]).await?;
        let items = run_sql(ctx, &self.registry, "items", vec![ScalarValue::Utf8(Some(dt.clone()))]).await?;
        for (table, batches) in [(ITEM_CONTENT, content), (ITEMS, items)] {
            let (schema, plain) = plain_batches(&batches)?;
            write_partition(lake, table, &dt, schema, &plain).await?;
        }
        Ok(OpenDay { session, registry: self.registry.clone(), cfg: local, dt })
    }
}

/// A day still open in `marnflow stream` ([`DayRunner::open_day`]): its rows are validated as
/// they arrive, and the sample rows of its exposures computed once their label window has
/// closed, by the daily job's SQL (`clean_*.sql`, `labels.sql`, `samples.sql`), so that a row
/// is the one `marnflow features --date D` writes.
pub struct OpenDay {
    session: LakeSession,
    registry: SqlRegistry,
    cfg: FeaturesConfig,
    dt: String,
}

impl std::fmt::Debug for OpenDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenDay").field("dt", &self.dt).finish()
    }
}

impl OpenDay {
    /// The day, `YYYY-MM-DD`.
    pub fn dt(&self) -> &str {
        &self.dt
    }

    /// The forced raw format, if any (`features.raw_format`).
    pub fn raw_format(&self) -> Option<&'static str> {
        self.cfg.raw_format()
    }

    /// Runs `clean_<raw>.sql` over `rows` (raw rows of this day, [`raw_files::read_files`]):
    /// returns the accepted rows and how many broke the contract. A click is checked here on its
    /// own: whether it matches an exposure is the labels' join, and the day's build quarantines
    /// those that match none.
    pub async fn accept(&self, raw: &str, rows: Vec<RecordBatch>) -> Result<(Vec<RecordBatch>, u64)> {
        let ctx = self.session.context();
        replace_memory_table(ctx, &format!("raw.{raw}"), rows, Vec::new())?;
        if raw == "clicks" {
            let every_click_shown = "SELECT DISTINCT CAST(request_id AS VARCHAR) AS request_id, \
                CAST(user_id AS VARCHAR) AS user_id, CAST(item_id AS VARCHAR) AS item_id, \
                CAST(NULL AS VARCHAR) AS reason FROM raw.clicks";
            let _ = ctx.deregister_table("clean_exposures")?;
            ctx.register_table("clean_exposures", ctx.sql(every_click_shown).await?.into_view())?;
        }
        let job = format!("clean_{raw}");
        let params =
            vec![ScalarValue::Utf8(Some(self.dt.clone())), ScalarValue::Int64(Some(i64::from(self.cfg.max_id_bytes)))];
        let checked = run_sql(ctx, &self.registry, &job, params).await?;
        let (good, bad) = split_by_reason(&checked, &job)?;
        Ok((good, total_rows(&bad)))
    }

    /// The sample rows of the exposures `due` (accepted rows of this day whose label window has
    /// closed), given the day's accepted `clicks` and `behaviors` so far, in the daily job's
    /// order (`labels.sql`'s), with its columns and types as written to the lake.
    pub async fn samples(
        &self,
        due: Vec<RecordBatch>,
        clicks: Vec<RecordBatch>,
        behaviors: Vec<RecordBatch>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let ctx = self.session.context();
        replace_memory_table(ctx, "exposures", due, Vec::new())?;
        replace_memory_table(ctx, "clicks", clicks, Vec::new())?;
        replace_memory_table(ctx, "behaviors", behaviors, Vec::new())?;
        let labels = run_sql(ctx, &self.registry, "labels", vec![label_window(&self.cfg)]).await?;
        // As the daily job reads them back from the lake: strings plain.
        let (_, labels) = plain_batches(&labels)?;
        register_ordered_labels(ctx, labels)?;
        let t = ScalarValue::Int64(Some(i64::from(self.cfg.sequence_length)));
        let samples = run_sql(ctx, &self.registry, "samples", vec![t]).await?;
        check_columns(&self.registry, "samples", &samples, &SAMPLES_REQUIRED)?;
        plain_batches(&samples)
    }
}

/// The write of the window state a run of day `day` leaves ([`WINDOW_STATE`]): `items`, the
/// totals at the end of `day − 1`, which a later daily run resumes from. The rows are built now;
/// the returned future owns them and writes the file.
pub fn write_window_state(
    lake: &Lake,
    windows: &[u32],
    day: NaiveDate,
    items: &[ItemWindows],
) -> Result<impl std::future::Future<Output = Result<()>> + Send + 'static> {
    let (target, schema, batch) = window_state_batch(windows, day, items)?;
    let lake = lake.clone();
    Ok(async move { write_parquet(&lake, target, schema, &[batch], 1 << 20).await.map(|_| ()) })
}

/// Pass 1 for one day: the raw logs validated (rows that break the contract quarantined), the
/// daily item counts and the labels published. Returns the day's report, where a cluster keeps
/// its checked behaviors, and the daily item counts as published.
async fn ingest_day(
    lake: &Lake,
    cfg: &FeaturesConfig,
    registry: &SqlRegistry,
    catalogue: &Catalogue,
    day: NaiveDate,
) -> Result<(DayReport, Option<String>, Vec<RecordBatch>)> {
    let dt = day_string(day);
    let mut steps = Steps::start();
    let session = open_session(lake, cfg, &format!("ingest-{dt}")).await?;
    require_raw(&session)?;
    let ctx = session.context();
    replace_table(ctx, "raw.items", vec![catalogue.batch.clone()]).await?;
    steps.mark("session");
    let exposures = ingest(lake, ctx, registry, cfg, "exposures", &dt, None).await?;
    steps.mark("exposures");
    let clicks = ingest(lake, ctx, registry, cfg, "clicks", &dt, None).await?;
    steps.mark("clicks");
    // On a cluster the checked behaviors stay on the lake for pass 3.
    let checked = Staging::of(ctx).map(|_| checked_folder(&dt));
    let behaviors = ingest(lake, ctx, registry, cfg, "behaviors", &dt, checked.clone()).await?;
    steps.mark("behaviors");
    let counts = run_sql(ctx, registry, "daily_item_counts", vec![]).await?;
    publish(lake, DAILY_ITEM_COUNTS, &dt, &counts).await?;
    steps.mark("daily_item_counts");
    let (n, positives) = if cfg.writes_by_partition() {
        // Written by the query's partitions (on a cluster, the executors) straight into place.
        let folder = format!("{}/{LABELS}", parts_folder(&dt));
        let n = write_sql_by_user(ctx, lake, cfg, registry, "labels", vec![label_window(cfg)], &folder).await?;
        publish_parts(lake, &dt, &[(LABELS, folder, cfg.partitions)]).await?;
        register_labels(ctx, lake, &dt).await?;
        let sum =
            ctx.sql("SELECT CAST(coalesce(sum(CAST(label AS BIGINT)), 0) AS BIGINT) AS label FROM labels").await?;
        (n, labels_positive(&collect(sum).await?))
    } else {
        let labels = run_sql(ctx, registry, "labels", vec![label_window(cfg)]).await?;
        publish(lake, LABELS, &dt, &labels).await?;
        (total_rows(&labels), labels_positive(&labels))
    };
    steps.mark("labels");
    let clicked_after_window = clicked_after_window(ctx, cfg).await?;
    remove_staging(ctx).await?;
    info!(dt, exposures = exposures.accepted, clicks = clicks.accepted, behaviors = behaviors.accepted, %steps, "day ingested");
    let report = DayReport {
        date: dt,
        exposures,
        clicks,
        behaviors,
        items: CatalogueAccounting::default(),
        samples: 0,
        items_with_stats: 0,
        items_changed: 0,
        positive_rate: if n > 0 { positives as f64 / n as f64 } else { 0.0 },
        clicked_after_window,
        windows_resumed_from: None,
    };
    Ok((report, checked, counts))
}

/// `labels.sql`'s parameter: the label window in seconds (0: the whole day).
pub(crate) fn label_window(cfg: &FeaturesConfig) -> ScalarValue {
    ScalarValue::Int64(Some(i64::from(cfg.label_window_seconds)))
}

/// The exposures of the session's day (tables `exposures`, `clicks`) clicked only after the
/// label window: their label is 0, and they are counted, not lost in silence. 0 without a window.
pub(crate) async fn clicked_after_window(ctx: &SessionContext, cfg: &FeaturesConfig) -> Result<u64> {
    if cfg.label_window_seconds == 0 {
        return Ok(0);
    }
    let sql = "SELECT CAST(count(*) AS BIGINT) AS n FROM exposures e \
               JOIN (SELECT request_id, user_id, item_id, min(event_time) AS first_click FROM clicks \
                     GROUP BY request_id, user_id, item_id) c \
                 ON c.request_id = e.request_id AND c.user_id = e.user_id AND c.item_id = e.item_id \
               WHERE CAST(c.first_click AS BIGINT) > CAST(e.event_time AS BIGINT) + $1 * 1000";
    let df = ctx.sql(sql).await?.with_param_values(vec![label_window(cfg)])?;
    let batches = collect(df).await?;
    let n = batches
        .first()
        .and_then(|b| b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>())
        .map_or(0, |a| a.value(0));
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Wall time of each step of a day's pass, logged with the day (where the feature job's time
/// goes, per step, without a profiler).
struct Steps {
    last: std::time::Instant,
    done: Vec<(&'static str, f64)>,
}

impl Steps {
    fn start() -> Self {
        Self { last: std::time::Instant::now(), done: Vec::new() }
    }

    /// Closes the step that ran since the previous mark.
    fn mark(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((step, (now - self.last).as_secs_f64() * 1e3));
        self.last = now;
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, ms)) in self.done.iter().enumerate() {
            write!(f, "{}{step}={ms:.0}ms", if i > 0 { " " } else { "" })?;
        }
        Ok(())
    }
}

/// What pass 3 needs of one day besides the job's settings.
struct DayInput<'a> {
    day: NaiveDate,
    /// Where pass 1 left the day's checked behaviors on a cluster (else they are read again).
    behaviors: Option<&'a str>,
    /// The day's window statistics.
    stats: &'a [ItemWindows],
    /// The catalogue's content digests ([`content_digests`]).
    digests: &'a RecordBatch,
    /// The state at the end of the day before, when the run computed it (else it is read from
    /// the lake).
    previous: Option<DayState>,
}

/// What a day hands to the next: the user state and where each item's content is.
struct DayState {
    /// `user_id, event_time, item_id, behavior`: each user's latest T behaviors.
    history: History,
    /// `item_id, content_dt, content_digest` of the day's item table.
    items: RecordBatch,
}

/// The user state at the end of a day: in memory, or in its place on the lake (the partition of
/// `features/user_history` of that day), which a session on a cluster reads from there.
#[derive(Clone)]
enum History {
    /// The rows, and the order they are in when the query that made them said so (empty: none
    /// known), declared to the next day's session so that its queries do not sort them again.
    Batches(Vec<RecordBatch>, Vec<datafusion::logical_expr::SortExpr>),
    Published {
        dt: String,
    },
}

impl History {
    /// Registers the state as table `previous_history` of `ctx`.
    async fn register(self, ctx: &SessionContext, lake: &Lake) -> Result<()> {
        match self {
            History::Batches(batches, order) if Staging::of(ctx).is_none() => {
                replace_memory_table(ctx, "previous_history", batches, order)
            }
            History::Batches(batches, _) => replace_table(ctx, "previous_history", batches).await,
            History::Published { dt } => {
                let folder = lake.folder_url(&partition(USER_HISTORY, &dt));
                replace_parquet(ctx, "previous_history", folder, ParquetReadOptions::default()).await
            }
        }
    }
}

/// A folder of its own for the tables of day `dt` that the query's partitions write, before they
/// are moved into place ([`publish_parts`]).
fn parts_folder(dt: &str) -> String {
    format!("_cluster/parts-{}-{}-{dt}", std::process::id(), crate::cluster::nanos_now())
}

/// Registers the day's labels where pass 1 wrote them (on a cluster, the executors) as `labels`.
async fn register_labels(ctx: &SessionContext, lake: &Lake, dt: &str) -> Result<()> {
    replace_parquet(ctx, "labels", lake.folder_url(&partition(LABELS, dt)), ParquetReadOptions::default()).await
}

/// Moves the partitioned tables of day `dt` into place: file `k` of each replaces file `k` of the
/// day's partition, and files of an earlier run with more partitions are removed.
async fn publish_parts(lake: &Lake, dt: &str, parts: &[(&'static str, String, usize)]) -> Result<()> {
    for (table, folder, n) in parts {
        let target = partition(table, dt);
        let mut names = BTreeSet::new();
        for k in 0..*n {
            let (from, to) = (part_file(folder, k), part_file(&target, k));
            lake.store()
                .rename(&lake.path(&from), &lake.path(&to))
                .await
                .map_err(|e| PipelineError::store("publish", lake.path(&to), e))?;
            names.insert(lake.path(&to));
        }
        remove_other_files(lake, &target, &names).await?;
    }
    Ok(())
}

/// Pass 3 for one day, given its window statistics and the state at the end of the day before
/// (`None`: read from the lake): item stats and buckets, samples, user history, the item content
/// that changed and the item side computed, `report` completed. Returns the day's state, for the
/// next day, and the day's tables to write.
async fn publish_day(
    lake: &Lake,
    cfg: &FeaturesConfig,
    registry: &SqlRegistry,
    catalogue: &Catalogue,
    input: DayInput<'_>,
    report: &mut DayReport,
) -> Result<(DayState, DayWrites)> {
    let DayInput { day, stats, digests, previous, behaviors } = input;
    let dt = day_string(day);
    let mut steps = Steps::start();
    let mut writes = DayWrites::new(&dt);
    let stats_batch = item_stats_batch(cfg, stats)?;
    writes.add(ITEM_STATS, std::slice::from_ref(&stats_batch))?;
    report.items_with_stats = stats.len() as u64;
    steps.mark("item_stats");

    let session = open_session(lake, cfg, &format!("publish-{dt}")).await?;
    let ctx = session.context();
    replace_table(ctx, "raw.items", vec![catalogue.batch.clone()]).await?;
    let filled = FilledStats::new(cfg, &catalogue.batch, &stats_batch)?;
    replace_table(ctx, "item_stats_long", vec![filled.long.clone()]).await?;
    steps.mark("session");
    let buckets = run_sql(ctx, registry, "item_stat_buckets", vec![]).await?;
    let wide = filled.widen(cfg, &buckets)?;
    writes.add(ITEM_STAT_BUCKETS, std::slice::from_ref(&wide))?;
    replace_table(ctx, "item_stat_buckets_wide", vec![wide]).await?;
    steps.mark("buckets");

    // This day's accepted behaviors, from the same files as pass 1 (read and validated again:
    // cheap, and no state kept in memory; the file faults were quarantined then).
    match behaviors {
        // On a cluster, as pass 1 checked them: no raw file is read twice.
        Some(folder) => register_checked(ctx, lake, "behaviors", folder).await?,
        None => {
            register_raw_day(lake, ctx, cfg, "behaviors", &dt).await?;
            validate(lake, ctx, registry, cfg, "behaviors", &dt, None).await?;
        }
    }
    steps.mark("behaviors");
    let by_partition = cfg.writes_by_partition();
    let (previous, previous_items) = match previous {
        Some(DayState { history, items }) => (history, items),
        None => (previous_history(lake, &session, day, by_partition).await?, previous_items(lake, day).await?),
    };
    previous.register(ctx, lake).await?;
    if by_partition {
        register_labels(ctx, lake, &dt).await?;
    } else {
        // One file a day is one ordered stream: from here on, the session's queries (the labels
        // read back, the samples, the user state) run on one partition. On two, each query's
        // output was sorted per partition and then merged on one thread, the samples' lists
        // copied twice more (10× lake, day 14: samples 9.8 → 5.7 s, user state 5.0 → 2.4 s), and
        // the labels read back came in the order the partitions' batches arrived, not the file's.
        // More files a day (`partitions`) write the query's partitions in parallel instead.
        ctx.state_ref().write().config_mut().options_mut().execution.target_partitions = 1;
        let labels_df = ctx
            .sql("SELECT * FROM features.labels WHERE dt = $1")
            .await?
            .with_param_values(vec![ScalarValue::Utf8(Some(dt.clone()))])?
            .drop_columns(&["dt"])?;
        register_ordered_labels(ctx, collect(labels_df).await?)?;
    }
    steps.mark("state");

    let t = ScalarValue::Int64(Some(i64::from(cfg.sequence_length)));
    let history = if by_partition {
        let folder = parts_folder(&dt);
        let samples = format!("{folder}/{SAMPLES}");
        let params = vec![t.clone()];
        report.samples = write_sql_by_user(ctx, lake, cfg, registry, "samples", params, &samples).await?;
        writes.dictionary_sources = Some(distinct_ids(ctx, lake, &samples).await?);
        writes.parts.push((SAMPLES, samples, cfg.partitions));
        steps.mark("samples");
        let history = format!("{folder}/{USER_HISTORY}");
        write_sql_by_user(ctx, lake, cfg, registry, "user_history", vec![t], &history).await?;
        writes.parts.push((USER_HISTORY, history, cfg.partitions));
        steps.mark("user_history");
        History::Published { dt: dt.clone() }
    } else {
        // The labels stream through the samples' last join in their order (declared above), so
        // the samples need no sort of their own.
        let samples = run_sql(ctx, registry, "samples", vec![t.clone()]).await?;
        check_columns(registry, "samples", &samples, &SAMPLES_REQUIRED)?;
        report.samples = total_rows(&samples);
        writes.add(SAMPLES, &samples)?;
        steps.mark("samples");
        let (history, order) = run_sql_ordered(ctx, registry, "user_history", vec![t]).await?;
        steps.mark("user_history");
        History::Batches(writes.add(USER_HISTORY, &history)?, order)
    };
    quarantine_files(lake, "items", &dt, &catalogue.files).await?;
    quarantine_items(lake, &dt, &catalogue.items).await?;
    report.items = catalogue.accounting.clone();
    replace_table(ctx, "item_digests", vec![digests.clone()]).await?;
    replace_table(ctx, "previous_items", vec![previous_items]).await?;
    let content = run_sql(ctx, registry, "item_content", vec![]).await?;
    report.items_changed = total_rows(&content);
    writes.add(ITEM_CONTENT, &content)?;
    let items = run_sql(ctx, registry, "items", vec![ScalarValue::Utf8(Some(dt.clone()))]).await?;
    let items = writes.add(ITEMS, &items)?;
    let items = item_pointers(&items)?.ok_or_else(|| {
        PipelineError::Config(vec![format!(
            "{}items.sql does not produce columns item_id, content_dt and content_digest, which the next day and the trainer need",
            registry.origin()
        )])
    })?;
    remove_staging(ctx).await?;
    steps.mark("items");
    info!(dt, samples = report.samples, items_with_stats = report.items_with_stats, items_changed = report.items_changed, %steps, "day computed");
    Ok((DayState { history, items }, writes))
}

/// The order of the day's labels (`labels.sql`), which the samples keep: each column ascending,
/// nulls last (SQL's `ORDER BY` default; `position` may be null).
const LABEL_ORDER: [&str; 4] = ["event_time", "request_id", "position", "item_id"];
const LABEL_SORT: arrow::compute::SortOptions = arrow::compute::SortOptions { descending: false, nulls_first: false };

/// Registers the day's labels as table `labels`, one partition in [`LABEL_ORDER`], with that order
/// declared, so that a query keeping it needs no sort. Labels in another order (a `labels.sql`
/// that changed its `ORDER BY`) are sorted here first: the declared order is always true.
fn register_ordered_labels(ctx: &SessionContext, batches: Vec<RecordBatch>) -> Result<()> {
    let schema = schema_of(&batches);
    let arrow_err = |e| PipelineError::arrow("ordering the labels", e);
    let batch = arrow::compute::concat_batches(&schema, &batches).map_err(arrow_err)?;
    let mut keys = Vec::with_capacity(LABEL_ORDER.len());
    for name in LABEL_ORDER {
        let column = batch.column_by_name(name).ok_or_else(|| {
            PipelineError::Config(vec![format!(
                "labels.sql does not produce column {name}, which the samples are ordered by"
            )])
        })?;
        keys.push(arrow::compute::SortColumn { values: Arc::clone(column), options: Some(LABEL_SORT) });
    }
    let converter = arrow::row::RowConverter::new(
        keys.iter()
            .map(|k| arrow::row::SortField::new_with_options(k.values.data_type().clone(), LABEL_SORT))
            .collect(),
    )
    .map_err(arrow_err)?;
    let rows = converter
        .convert_columns(&keys.iter().map(|k| Arc::clone(&k.values)).collect::<Vec<_>>())
        .map_err(arrow_err)?;
    let ordered = (1..rows.num_rows()).all(|i| rows.row(i - 1) <= rows.row(i));
    let batch = if ordered {
        batch
    } else {
        let order = arrow::compute::lexsort_to_indices(&keys, None).map_err(arrow_err)?;
        arrow::compute::take_record_batch(&batch, &order).map_err(arrow_err)?
    };
    let sort = |c: &&str| datafusion::prelude::col(*c).sort(!LABEL_SORT.descending, LABEL_SORT.nulls_first);
    replace_memory_table(ctx, "labels", vec![batch], LABEL_ORDER.iter().map(sort).collect())
}

/// A session over the lake for one step of the job, on `cfg.engine`.
async fn open_session(lake: &Lake, cfg: &FeaturesConfig, job: &str) -> Result<LakeSession> {
    let ctx = crate::cluster::context(lake, &cfg.engine, job).await?;
    LakeSession::open_without_raw_logs_in(ctx, lake, cfg.raw_format()).await
}

/// Removes what a session on a cluster staged (nothing to do embedded).
async fn remove_staging(ctx: &SessionContext) -> Result<()> {
    match Staging::of(ctx) {
        Some(staging) => staging.remove().await,
        None => Ok(()),
    }
}

fn require_raw(session: &LakeSession) -> Result<()> {
    let have: BTreeSet<String> = session.tables().iter().map(|t| t.qualified()).collect();
    let missing: Vec<String> = ["raw.exposures", "raw.clicks", "raw.behaviors", "raw.items"]
        .iter()
        .filter(|t| !have.contains(**t))
        .map(|t| format!("{t} is missing from the lake (run `marnflow generate` or an importer first)"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PipelineError::Config(missing))
    }
}

fn labels_positive(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .filter_map(|b| b.column_by_name("label"))
        .filter_map(|c| arrow::compute::cast(c, &DataType::Int64).ok())
        .map(|c| c.as_primitive::<Int64Type>().iter().flatten().sum::<i64>() as u64)
        .sum()
}

fn check_columns(registry: &SqlRegistry, job: &str, batches: &[RecordBatch], required: &[&str]) -> Result<()> {
    let Some(b) = batches.first() else { return Ok(()) };
    let missing: Vec<String> = required
        .iter()
        .filter(|c| b.schema().index_of(c).is_err())
        .map(|c| format!("{}{job}.sql does not produce column `{c}`, which the trainer needs", registry.origin()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PipelineError::Config(missing))
    }
}

/// A run's window part (its pass 2, once the daily aggregates of `days` are on the lake): the
/// rolling windows of every day of `days` (consecutive) by [`compute_windows`]. Returns the
/// windows by report day, the day of the state they resumed from (`None`: rebuilt), and the
/// write of the last day's window state for the next run, which goes on while the run computes
/// its days ([`StateWrite::finish`] waits for it).
pub async fn window_part(
    lake: &Lake,
    cfg: &FeaturesConfig,
    days: &[NaiveDate],
    topology: &Topology,
) -> Result<(BTreeMap<u32, Vec<ItemWindows>>, Option<String>, StateWrite)> {
    let started = std::time::Instant::now();
    let (windows, resumed_from) = compute_windows(lake, cfg, days, topology).await?;
    let write = match days.last() {
        Some(&to) => {
            let last = windows.get(&epoch_day(to)).map(Vec::as_slice).unwrap_or(&[]);
            StateWrite(Some(tokio::spawn(write_window_state(lake, &cfg.windows, to, last)?)))
        }
        None => StateWrite(None),
    };
    let ms = started.elapsed().as_millis() as u64;
    info!(days = days.len(), resumed_from = resumed_from.as_deref().unwrap_or("-"), ms, "windows computed");
    Ok((windows, resumed_from, write))
}

/// The write of a run's window state ([`WINDOW_STATE`]), under way in the background.
#[derive(Debug)]
pub struct StateWrite(Option<tokio::task::JoinHandle<Result<()>>>);

impl StateWrite {
    /// Waits for the write to land.
    pub async fn finish(self) -> Result<()> {
        match self.0 {
            Some(handle) => handle
                .await
                .map_err(|e| PipelineError::Dataflow(format!("the window state's write did not finish: {e}")))?,
            None => Ok(()),
        }
    }
}

/// The rolling windows of every day of `days` (consecutive), and the day of the window state
/// they resumed from (`None`: rebuilt from the daily aggregates).
///
/// A run of `[from, to]` resumes from the latest state left for a day `D` in
/// `[from − max window, from − 1]` (its totals at the end of `D − 1`): the dataflow is seeded with
/// them and fed only the days from `D − 1` on and the retractions that fall due, one day per
/// window and day run. The run's own state (for `to`) is never among those, so the processes of
/// a timely cluster, which write it too, all choose the same one. A missing or unreadable state
/// falls back to the rebuild from the last `max window` days of aggregates, with a warning; the
/// windows are the same either way.
async fn compute_windows(
    lake: &Lake,
    cfg: &FeaturesConfig,
    days: &[NaiveDate],
    topology: &Topology,
) -> Result<(BTreeMap<u32, Vec<ItemWindows>>, Option<String>)> {
    let (Some(&from), Some(&to)) = (days.first(), days.last()) else { return Ok((BTreeMap::new(), None)) };
    let report_days: Vec<u32> = days.iter().map(|d| epoch_day(*d)).collect();
    let max_w = i64::from(cfg.windows.iter().copied().max().unwrap_or(1));
    let oldest_useful = from - Duration::days(max_w);
    let states = partition_files(lake, WINDOW_STATE).await?;
    let daily_files = partition_files(lake, DAILY_ITEM_COUNTS).await?;
    if let Some(&state_day) = states.range(oldest_useful..from).next_back().map(|(d, _)| d) {
        let started = std::time::Instant::now();
        match read_window_state(lake, &cfg.windows, state_day).await {
            Ok(seed) => {
                let read_ms = started.elapsed().as_secs_f64() * 1e3;
                let needed: BTreeSet<NaiveDate> = crate::windows::resumed_days(&cfg.windows, seed.as_of, epoch_day(to))
                    .into_iter()
                    .map(|d| NaiveDate::default() + Duration::days(i64::from(d)))
                    .collect();
                let daily = read_daily_counts(lake, &daily_files, &needed).await?;
                let load_ms = started.elapsed().as_secs_f64() * 1e3 - read_ms;
                let (windows, steps) = item_window_stats_resumed(&daily, &cfg.windows, &report_days, &seed, topology)?;
                debug!(read_ms, load_ms, ?steps, "windows resumed");
                return Ok((windows, Some(day_string(state_day))));
            }
            Err(e) => {
                warn!(state = %day_string(state_day), error = %e, "the window state cannot be used; rebuilding the windows from the daily aggregates")
            }
        }
    } else if daily_files.range(oldest_useful..from).next().is_some() {
        warn!(
            from = %day_string(oldest_useful),
            to = %day_string(from - Duration::days(1)),
            "no window state left by a run of a day in this range; rebuilding the windows from the daily aggregates"
        );
    }
    let needed: BTreeSet<NaiveDate> = oldest_useful.iter_days().take_while(|d| *d < to).collect();
    let daily = read_daily_counts(lake, &daily_files, &needed).await?;
    let (windows, _) = item_window_stats_timed(&daily, &cfg.windows, &report_days, topology)?;
    Ok((windows, None))
}

/// Schema metadata of a window state file: the windows it holds and the day its totals are at
/// the end of, checked when it is read.
const STATE_WINDOWS_KEY: &str = "marnflow.windows";
const STATE_AS_OF_KEY: &str = "marnflow.as_of";

fn window_state_schema(windows: &[u32], as_of: NaiveDate) -> SchemaRef {
    let list: Vec<String> = windows.iter().map(u32::to_string).collect();
    let metadata = HashMap::from([
        (STATE_WINDOWS_KEY.to_string(), list.join(",")),
        (STATE_AS_OF_KEY.to_string(), day_string(as_of)),
    ]);
    let mut fields =
        vec![Field::new("item_id", DataType::Utf8, false), Field::new("window_days", DataType::UInt32, false)];
    fields.extend(STATS.iter().map(|s| Field::new(*s, DataType::Int64, false)));
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// The window totals of report day `day` (those at the end of `day − 1`) as the next run reads
/// them, and where they go: one row per item and window with a non-zero total (the amount in
/// cents, exact), by item then window.
fn window_state_batch(
    windows: &[u32],
    day: NaiveDate,
    items: &[ItemWindows],
) -> Result<(String, SchemaRef, RecordBatch)> {
    let schema = window_state_schema(windows, day - Duration::days(1));
    let mut ids = Vec::new();
    let mut widths = Vec::new();
    let mut columns: Vec<Vec<i64>> = vec![Vec::new(); STATS.len()];
    for item in items {
        for (total, &width) in item.sums.iter().zip(windows) {
            if total.iter().any(|&v| v != 0) {
                ids.push(item.item_id.as_str());
                widths.push(width);
                for (c, v) in columns.iter_mut().zip(total) {
                    c.push(*v);
                }
            }
        }
    }
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(StringArray::from(ids)), Arc::new(UInt32Array::from(widths))];
    arrays.extend(columns.into_iter().map(|c| Arc::new(Int64Array::from(c)) as ArrayRef));
    let batch =
        RecordBatch::try_new(Arc::clone(&schema), arrays).map_err(|e| PipelineError::arrow("window state", e))?;
    Ok((data_file(&partition(WINDOW_STATE, &day_string(day))), schema, batch))
}

/// The window state left for report day `day`, checked: its windows are `windows`, its day is
/// `day − 1`, and every row is an item and one of those windows.
async fn read_window_state(lake: &Lake, windows: &[u32], day: NaiveDate) -> Result<WindowSeed> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = data_file(&partition(WINDOW_STATE, &day_string(day)));
    let bytes = lake.get(&file).await?;
    let bad = |what: String| PipelineError::Dataflow(format!("window state {file}: {what}"));
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| PipelineError::parquet("read", &file, e))?;
    let expected = window_state_schema(windows, day - Duration::days(1));
    let found = builder.schema();
    if found.fields() != expected.fields() || found.metadata() != expected.metadata() {
        return Err(bad(format!(
            "written for windows {:?} as of {:?}, with columns {:?}; this run needs windows {windows:?} as of {}",
            found.metadata().get(STATE_WINDOWS_KEY),
            found.metadata().get(STATE_AS_OF_KEY),
            found.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(),
            day_string(day - Duration::days(1)),
        )));
    }
    let reader = builder.build().map_err(|e| PipelineError::parquet("read", &file, e))?;
    // Rows come as written: by item, then window.
    let mut items: Vec<ItemWindows> = Vec::new();
    let mut row = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| PipelineError::arrow("window state", e))?;
        let ids = batch.column(0).as_string::<i32>();
        let widths = batch.column(1).as_primitive::<UInt32Type>();
        let values: Vec<&Int64Array> =
            (2..2 + STATS.len()).map(|c| batch.column(c).as_primitive::<Int64Type>()).collect();
        for r in 0..batch.num_rows() {
            let Some(w) = windows.iter().position(|&x| x == widths.value(r)) else {
                return Err(bad(format!("row {} is for a window of {} days", row + r, widths.value(r))));
            };
            let id = ids.value(r);
            let previous = items.last().map(|l| l.item_id.as_str());
            if previous.is_some_and(|p| p > id) {
                return Err(bad(format!("row {} is out of order: item {id} after {previous:?}", row + r)));
            }
            if previous != Some(id) {
                items.push(ItemWindows { item_id: id.to_string(), sums: vec![[0; 5]; windows.len()] });
            }
            if let Some(last) = items.last_mut() {
                for (s, v) in values.iter().enumerate() {
                    last.sums[w][s] = v.value(r);
                }
            }
        }
        row += batch.num_rows();
    }
    let as_of = epoch_day(day) - 1;
    Ok(WindowSeed { as_of, items })
}

/// Removes the window states left for days after `day`: they count days a run from `day` is
/// about to rewrite. A file already gone (another process of a timely cluster removed it) is
/// not an error.
async fn remove_window_states_after(lake: &Lake, day: NaiveDate) -> Result<()> {
    let states = partition_files(lake, WINDOW_STATE).await?;
    for file in states.range((std::ops::Bound::Excluded(day), std::ops::Bound::Unbounded)).flat_map(|(_, files)| files)
    {
        let location = lake.path(file);
        match lake.store().delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(PipelineError::store("delete", &location, e)),
        }
    }
    Ok(())
}

/// The daily aggregates of `[first, last]` from `features/daily_item_counts`.
pub async fn load_daily_counts(lake: &Lake, first: NaiveDate, last: NaiveDate) -> Result<Vec<DailyCounts>> {
    let days: BTreeSet<NaiveDate> = first.iter_days().take_while(|d| *d <= last).collect();
    read_daily_counts(lake, &partition_files(lake, DAILY_ITEM_COUNTS).await?, &days).await
}

/// The Parquet files of each `dt=D` partition under `table` (lake-relative paths), by day.
async fn partition_files(lake: &Lake, table: &str) -> Result<BTreeMap<NaiveDate, Vec<String>>> {
    let mut days: BTreeMap<NaiveDate, Vec<String>> = BTreeMap::new();
    for meta in lake.list(table).await? {
        let Some(rel) = lake.relative(&meta.location) else { continue };
        if let Some(day) = partition_day(&rel) {
            if rel.ends_with(".parquet") {
                days.entry(day).or_default().push(rel);
            }
        }
    }
    Ok(days)
}

/// Appends the rows of a batch of `features/daily_item_counts` (`what` names where it is from in
/// an error) as window counts: the amount in cents.
fn append_daily_counts(b: &RecordBatch, what: &str, rows: &mut Vec<(String, [i64; 5])>) -> Result<()> {
    let column = |name: &str, to: &DataType| -> Result<ArrayRef> {
        let c = b
            .column_by_name(name)
            .ok_or_else(|| PipelineError::Dataflow(format!("{what} has no column {name}: not daily item counts")))?;
        arrow::compute::cast(c, to).map_err(|e| PipelineError::arrow("daily counts", e))
    };
    let item = column("item_id", &DataType::Utf8)?;
    let item = item.as_string::<i32>();
    let ints: Vec<ArrayRef> = ["exposures", "clicks", "carts", "purchases"]
        .iter()
        .map(|c| column(c, &DataType::Int64))
        .collect::<Result<_>>()?;
    let ints: Vec<&Int64Array> = ints.iter().map(|a| a.as_primitive::<Int64Type>()).collect();
    let amount = column("amount", &DataType::Float64)?;
    let amount = amount.as_primitive::<arrow::datatypes::Float64Type>();
    for r in 0..b.num_rows() {
        let mut c = [0i64; 5];
        for (k, a) in ints.iter().enumerate() {
            c[k] = a.value(r);
        }
        c[AMOUNT] = (amount.value(r) * 100.0).round() as i64;
        rows.push((item.value(r).to_string(), c));
    }
    Ok(())
}

/// The daily aggregates of `days` (those that have a partition) from `files`, the
/// `features/daily_item_counts` files by day ([`partition_files`]), reading only theirs.
async fn read_daily_counts(
    lake: &Lake,
    files: &BTreeMap<NaiveDate, Vec<String>>,
    days: &BTreeSet<NaiveDate>,
) -> Result<Vec<DailyCounts>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut out = Vec::new();
    for (day, paths) in files.iter().filter(|(d, _)| days.contains(d)) {
        let mut rows: Vec<(String, [i64; 5])> = Vec::new();
        for path in paths {
            let bytes = lake.get(path).await?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .and_then(|b| b.build())
                .map_err(|e| PipelineError::parquet("read", path, e))?;
            for batch in reader {
                let b = batch.map_err(|e| PipelineError::arrow("daily counts", e))?;
                append_daily_counts(&b, path, &mut rows)?;
            }
        }
        out.push(DailyCounts { day: epoch_day(*day), rows });
    }
    Ok(out)
}

/// The `features/item_stats` batch of one day from the window sums.
pub fn item_stats_batch(cfg: &FeaturesConfig, stats: &[ItemWindows]) -> Result<RecordBatch> {
    let mut fields = vec![Field::new("item_id", DataType::Utf8, false)];
    let mut cols: Vec<ArrayRef> =
        vec![Arc::new(StringArray::from_iter_values(stats.iter().map(|s| s.item_id.as_str())))];
    for (w, width) in cfg.windows.iter().enumerate() {
        for (s, name) in STATS.iter().enumerate() {
            let col = format!("{name}_{width}d");
            if s == AMOUNT {
                fields.push(Field::new(col, DataType::Float64, false));
                cols.push(Arc::new(Float64Array::from_iter_values(stats.iter().map(|x| x.sums[w][s] as f64 / 100.0))));
            } else {
                fields.push(Field::new(col, DataType::Int64, false));
                cols.push(Arc::new(Int64Array::from_iter_values(stats.iter().map(|x| x.sums[w][s]))));
            }
        }
    }
    for (w, width) in cfg.windows.iter().enumerate() {
        fields.push(Field::new(format!("ctr_{width}d"), DataType::Float64, false));
        cols.push(Arc::new(Float64Array::from_iter_values(
            stats.iter().map(|x| {
                (x.sums[w][1] as f64 + cfg.ctr_prior_clicks) / (x.sums[w][0] as f64 + cfg.ctr_prior_exposures)
            }),
        )));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|e| PipelineError::arrow("building item_stats", e))
}

/// Every catalogue item's window statistics in long form for the bucket job: one row
/// `(item, stat, value)` per item and statistic, `item` the item's place in the catalogue sorted
/// by id and `stat` the statistic's place in [`FeaturesConfig::stat_columns`]. Items without
/// activity in the windows take the statistic's empty value (0 for counts, the CTR prior for
/// rates: what [`item_stats_batch`] gives an item whose sums are all 0). Items with statistics but
/// not in the catalogue are not ranked.
struct FilledStats<'a> {
    /// The catalogue's item ids, sorted.
    ids: Vec<&'a str>,
    long: RecordBatch,
}

impl<'a> FilledStats<'a> {
    fn new(cfg: &FeaturesConfig, catalogue: &'a RecordBatch, stats: &RecordBatch) -> Result<Self> {
        let catalogue_ids = catalogue.column(0).as_string::<i32>();
        let mut ids: Vec<&'a str> = catalogue_ids.iter().flatten().collect();
        ids.sort_unstable();
        let stat_ids = stats.column(0).as_string::<i32>();
        let row_of: HashMap<&str, usize> = stat_ids.iter().enumerate().filter_map(|(r, id)| Some((id?, r))).collect();
        let rows: Vec<Option<usize>> = ids.iter().map(|id| row_of.get(id).copied()).collect();
        let prior = cfg.ctr_prior_clicks / cfg.ctr_prior_exposures;
        let names = cfg.stat_columns();
        let n = ids.len();
        let (mut item, mut stat) = (Vec::with_capacity(n * names.len()), Vec::with_capacity(n * names.len()));
        let mut value = Vec::with_capacity(n * names.len());
        for (k, name) in names.iter().enumerate() {
            let col = stats
                .column_by_name(name)
                .ok_or_else(|| PipelineError::Config(vec![format!("item_stats lacks {name}")]))?;
            let col =
                arrow::compute::cast(col, &DataType::Float64).map_err(|e| PipelineError::arrow("long stats", e))?;
            let col = col.as_primitive::<arrow::datatypes::Float64Type>();
            let empty = if name.starts_with("ctr_") { prior } else { 0.0 };
            for (i, row) in rows.iter().enumerate() {
                item.push(i as u32);
                stat.push(k as u32);
                value.push(row.map_or(empty, |r| col.value(r)));
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("item", DataType::UInt32, false),
            Field::new("stat", DataType::UInt32, false),
            Field::new("value", DataType::Float64, false),
        ]));
        let long = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt32Array::from(item)),
                Arc::new(UInt32Array::from(stat)),
                Arc::new(Float64Array::from(value)),
            ],
        )
        .map_err(|e| PipelineError::arrow("building item_stats_long", e))?;
        Ok(Self { ids, long })
    }

    /// Pivots the bucket job's `(item, stat, b10, b100)` rows into one row per catalogue item,
    /// sorted by id, with `<stat>_b10`, `<stat>_b100`. A pair the job did not return is an error.
    fn widen(&self, cfg: &FeaturesConfig, long: &[RecordBatch]) -> Result<RecordBatch> {
        let names = cfg.stat_columns();
        let n = self.ids.len();
        // buckets[stat][item] = (b10, b100); -1: not returned.
        let mut buckets = vec![vec![(-1i32, -1i32); n]; names.len()];
        let cast =
            |c: &ArrayRef, t: &DataType| arrow::compute::cast(c, t).map_err(|e| PipelineError::arrow("buckets", e));
        let problem = |what: String| PipelineError::Config(vec![format!("item_stat_buckets.sql: {what}")]);
        for b in long {
            let column = |c: &str, t: &DataType| {
                cast(b.column_by_name(c).ok_or_else(|| problem(format!("no column `{c}` in its output")))?, t)
            };
            let (item, stat) = (column("item", &DataType::UInt32)?, column("stat", &DataType::UInt32)?);
            let (b10, b100) = (column("b10", &DataType::Int32)?, column("b100", &DataType::Int32)?);
            let (item, stat) = (item.as_primitive::<UInt32Type>(), stat.as_primitive::<UInt32Type>());
            let (b10, b100) = (b10.as_primitive::<Int32Type>(), b100.as_primitive::<Int32Type>());
            for r in 0..b.num_rows() {
                let (i, k) = (item.value(r) as usize, stat.value(r) as usize);
                let slot = buckets
                    .get_mut(k)
                    .and_then(|s| s.get_mut(i))
                    .ok_or_else(|| problem(format!("row (item {i}, stat {k}) is not one of its input's")))?;
                *slot = (b10.value(r), b100.value(r));
            }
        }
        let mut fields = vec![Field::new("item_id", DataType::Utf8, false)];
        let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(self.ids.iter().copied()))];
        for (k, name) in names.iter().enumerate() {
            if let Some(i) = buckets[k].iter().position(|b| b.0 < 0 || b.1 < 0) {
                return Err(problem(format!("no buckets (or negative ones) for item {} and {name}", self.ids[i])));
            }
            fields.push(Field::new(format!("{name}_b10"), DataType::Int32, false));
            cols.push(Arc::new(Int32Array::from_iter_values(buckets[k].iter().map(|b| b.0))));
            fields.push(Field::new(format!("{name}_b100"), DataType::Int32, false));
            cols.push(Arc::new(Int32Array::from_iter_values(buckets[k].iter().map(|b| b.1))));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(|e| PipelineError::arrow("building item_stat_buckets", e))
    }
}

/// Per catalogue row, `item_id` and `content_digest`: the xxHash64 (hex) of its content columns
/// (shop, brand, category, title, image, price), each length-prefixed with its nulls marked, so
/// a change to any of them changes the digest. Stable across runs and builds: the next run
/// compares it with the digest the item table stored. Digests are only compared item by item
/// (an item's old content against its new), so 64 bits leave a change unseen with probability
/// 2^-64 per change.
pub fn content_digests(catalogue: &RecordBatch) -> Result<RecordBatch> {
    use arrow::array::Array;
    let text = |name: &str| -> Result<ArrayRef> {
        let c = catalogue
            .column_by_name(name)
            .ok_or_else(|| PipelineError::Config(vec![format!("the catalogue lacks {name}")]))?;
        arrow::compute::cast(c, &DataType::Utf8).map_err(|e| PipelineError::arrow("content digests", e))
    };
    let ids = text("item_id")?;
    let texts = ["shop_id", "brand_id", "category_id", "title"].map(text);
    let texts: Vec<ArrayRef> = texts.into_iter().collect::<Result<_>>()?;
    let price = catalogue
        .column_by_name("price")
        .map(|c| arrow::compute::cast(c, &DataType::Float64))
        .transpose()
        .map_err(|e| PipelineError::arrow("content digests", e))?;
    let image = catalogue.column_by_name("image_embedding").and_then(|c| c.as_fixed_size_list_opt().cloned());
    let image_values = image
        .as_ref()
        .map(|a| arrow::compute::cast(a.values(), &DataType::Float32))
        .transpose()
        .map_err(|e| PipelineError::arrow("content digests", e))?;
    let mut digests = Vec::with_capacity(catalogue.num_rows());
    // One buffer per row, hashed once: marker byte, then length and bytes, per column.
    let mut row = Vec::new();
    for r in 0..catalogue.num_rows() {
        row.clear();
        for t in &texts {
            let t = t.as_string::<i32>();
            if t.is_null(r) {
                row.push(0);
            } else {
                row.push(1);
                row.extend_from_slice(&(t.value(r).len() as u64).to_le_bytes());
                row.extend_from_slice(t.value(r).as_bytes());
            }
        }
        match &price {
            Some(p) if p.is_valid(r) => {
                row.push(1);
                row.extend_from_slice(
                    &p.as_primitive::<arrow::datatypes::Float64Type>().value(r).to_bits().to_le_bytes(),
                );
            }
            _ => row.push(0),
        }
        match (&image, &image_values) {
            (Some(a), Some(v)) if a.is_valid(r) => {
                let w = a.value_length() as usize;
                let v = &v.as_primitive::<arrow::datatypes::Float32Type>().values()[r * w..(r + 1) * w];
                row.push(1);
                row.extend_from_slice(&(w as u64).to_le_bytes());
                for x in v {
                    row.extend_from_slice(&x.to_bits().to_le_bytes());
                }
            }
            _ => row.push(0),
        }
        digests.push(format!("{:016x}", twox_hash::XxHash64::oneshot(0, &row)));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, true),
        Field::new("content_digest", DataType::Utf8, false),
    ]));
    RecordBatch::try_new(schema, vec![ids, Arc::new(StringArray::from(digests))])
        .map_err(|e| PipelineError::arrow("content digests", e))
}

/// `item_id, content_dt, content_digest` of an item table as written (`None`: it lacks one of
/// them, as tables written before the content was split out do).
fn item_pointers(batches: &[RecordBatch]) -> Result<Option<RecordBatch>> {
    let schema = pointer_schema();
    let fail = |e| PipelineError::arrow("item table pointers", e);
    let mut parts = Vec::with_capacity(batches.len());
    for b in batches {
        let mut cols = Vec::with_capacity(3);
        for f in schema.fields() {
            let Some(c) = b.column_by_name(f.name()) else { return Ok(None) };
            cols.push(arrow::compute::cast(c, &DataType::Utf8).map_err(fail)?);
        }
        parts.push(RecordBatch::try_new(Arc::clone(&schema), cols).map_err(fail)?);
    }
    arrow::compute::concat_batches(&schema, &parts).map(Some).map_err(fail)
}

fn pointer_schema() -> SchemaRef {
    Arc::new(Schema::new(
        ["item_id", "content_dt", "content_digest"].map(|n| Field::new(n, DataType::Utf8, true)).to_vec(),
    ))
}

/// Where each item's content was at the end of the day before `day`, from its item table: empty
/// when there is none, or when it predates `content_dt` (every item's content is then written
/// again, once).
async fn previous_items(lake: &Lake, day: NaiveDate) -> Result<RecordBatch> {
    let rel = data_file(&partition(ITEMS, &day_string(day - Duration::days(1))));
    let batches = read_parquet_file(lake, &rel).await?.unwrap_or_default();
    Ok(item_pointers(&batches)?.unwrap_or_else(|| RecordBatch::new_empty(pointer_schema())))
}

/// The user state at the end of the day before `day` (empty before the data starts); left in
/// its place on the lake when `in_place`.
async fn previous_history(lake: &Lake, session: &LakeSession, day: NaiveDate, in_place: bool) -> Result<History> {
    let prev = day_string(day - Duration::days(1));
    let has_table = session.tables().iter().any(|t| t.qualified() == "features.user_history");
    let exists = has_table && !lake.list(&partition(USER_HISTORY, &prev)).await?.is_empty();
    if exists && in_place {
        return Ok(History::Published { dt: prev });
    }
    if exists {
        let df = session
            .context()
            .sql("SELECT user_id, event_time, item_id, behavior FROM features.user_history WHERE dt = $1")
            .await?
            .with_param_values(vec![ScalarValue::Utf8(Some(prev.clone()))])?;
        return Ok(History::Batches(collect(df).await?, Vec::new()));
    }
    // No state for the previous day: fine before the data starts, an error after it.
    let raw_prev = lake.list(&partition(crate::contract::BEHAVIORS, &prev)).await?;
    if !raw_prev.is_empty() {
        return Err(PipelineError::Config(vec![format!(
            "features/user_history/dt={prev} is missing but raw behaviors of {prev} exist: \
             run `marnflow features --from <first day> --to {}` so every day's state is built in order",
            day_string(day)
        )]));
    }
    Ok(History::Batches(vec![RecordBatch::new_empty(history_schema())], Vec::new()))
}

/// The dictionaries and which columns feed them.
pub const DICTIONARY_NAMES: [&str; 6] = ["item", "shop", "brand", "category", "user", "token"];
/// Reserved indices: padding and unknown; real values start at 2.
pub const PADDING: i64 = 0;
pub const UNKNOWN: i64 = 1;

fn dictionary_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, false), Field::new("index", DataType::Int64, false)]))
}

/// The string arrays behind `col` (a list column's values, flattened), cast to Utf8 where they
/// are of another type. Of a list column of strings, a row equal to the row before is left out:
/// the exposures of one slate follow each other with the same history, so the day's 50 M history
/// ids (10× lake) come down to about a tenth before they are hashed.
fn string_arrays(col: &ArrayRef, out: &mut Vec<ArrayRef>) {
    match col.data_type() {
        DataType::List(_) => {
            if let Some(list) = col.as_any().downcast_ref::<ListArray>() {
                match list.values().as_string_opt::<i32>() {
                    Some(values) => out.push(distinct_runs(list, values)),
                    None => string_arrays(list.values(), out),
                }
            }
        }
        DataType::Utf8 => out.push(Arc::clone(col)),
        _ => {
            if let Ok(c) = arrow::compute::cast(col, &DataType::Utf8) {
                out.push(c);
            }
        }
    }
}

/// The values of `list`'s rows (its values, `values`) with every row equal to the row before left
/// out.
fn distinct_runs(list: &ListArray, values: &StringArray) -> ArrayRef {
    use arrow::array::Array;
    let (rows, bytes) = (list.value_offsets(), values.value_offsets());
    let same = |a: usize, b: usize| {
        let (a0, a1, b0, b1) = (rows[a] as usize, rows[a + 1] as usize, rows[b] as usize, rows[b + 1] as usize);
        a1 - a0 == b1 - b0
            && (0..=a1 - a0).all(|k| bytes[a0 + k] - bytes[a0] == bytes[b0 + k] - bytes[b0])
            && values.value_data()[bytes[a0] as usize..bytes[a1] as usize]
                == values.value_data()[bytes[b0] as usize..bytes[b1] as usize]
            && (values.null_count() == 0 || (a0..a1).all(|k| values.is_valid(k) == values.is_valid(b0 + k - a0)))
    };
    let mut kept = Vec::new();
    for row in 0..list.len() {
        if row == 0 || !same(row - 1, row) {
            kept.extend(rows[row] as u32..rows[row + 1] as u32);
        }
    }
    // A subset of `values` fits its offsets, so the take cannot fail; all of them would do too.
    arrow::compute::take(values, &UInt32Array::from(kept), None).unwrap_or_else(|_| Arc::new(values.clone()))
}

/// Each dictionary and the columns (of the samples and the item content) its values come from.
const DICTIONARY_SOURCES: [(&str, &[&str]); 6] = [
    ("item", &["item_id", "hist_item_ids"]),
    ("shop", &["shop_id"]),
    ("brand", &["brand_id"]),
    ("category", &["category_id"]),
    ("user", &["user_id"]),
    ("token", &["title_tokens"]),
];

/// The distinct values of every dictionary column of the samples written to `folder`, one batch
/// per column named after it (a list column's elements): what [`update_dictionaries`] needs of
/// the day's samples, computed where the samples are (on a cluster, by the executors).
async fn distinct_ids(ctx: &SessionContext, lake: &Lake, folder: &str) -> Result<Vec<RecordBatch>> {
    const TABLE: &str = "written_samples";
    replace_parquet(ctx, TABLE, lake.folder_url(folder), ParquetReadOptions::default()).await?;
    let schema: SchemaRef = Arc::new(ctx.table(TABLE).await?.schema().as_arrow().clone());
    // One query (one pass, one job on a cluster): (source column, value) for every column.
    let mut columns = Vec::new();
    let mut parts = Vec::new();
    for column in DICTIONARY_SOURCES.iter().flat_map(|(_, columns)| columns.iter()) {
        let Ok(field) = schema.field_with_name(column) else { continue };
        let values = match field.data_type() {
            DataType::List(_) | DataType::LargeList(_) => format!("(SELECT unnest(\"{column}\") AS v FROM {TABLE})"),
            _ => format!("(SELECT \"{column}\" AS v FROM {TABLE})"),
        };
        parts.push(format!("SELECT DISTINCT '{column}' AS source, CAST(v AS VARCHAR) AS value FROM {values}"));
        columns.push(*column);
    }
    let mut out = Vec::new();
    if !parts.is_empty() {
        let pairs = ctx.sql(&parts.join(" UNION ALL ")).await?.collect().await?;
        let arrow_err = |e| PipelineError::arrow("distinct ids of the samples", e);
        for column in columns {
            let field = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, true)]));
            for b in &pairs {
                let source = arrow::compute::cast(b.column(0), &DataType::Utf8).map_err(arrow_err)?;
                let mine =
                    arrow::compute::kernels::cmp::eq(&source, &StringArray::new_scalar(column)).map_err(arrow_err)?;
                let value = arrow::compute::cast(b.column(1), &DataType::Utf8).map_err(arrow_err)?;
                let value = arrow::compute::filter(&value, &mine).map_err(arrow_err)?;
                out.push(RecordBatch::try_new(Arc::clone(&field), vec![value]).map_err(arrow_err)?);
            }
        }
    }
    let _ = ctx.deregister_table(TABLE)?;
    Ok(out)
}

/// Appends the day's new ids and tokens to `features/dictionaries/<name>.parquet`.
async fn update_dictionaries(lake: &Lake, samples: &[RecordBatch], items: &[RecordBatch]) -> Result<()> {
    for (name, columns) in DICTIONARY_SOURCES {
        let mut arrays = Vec::new();
        for b in samples.iter().chain(items) {
            for c in columns {
                if let Some(col) = b.column_by_name(c) {
                    string_arrays(col, &mut arrays);
                }
            }
        }
        // Borrowed and hashed: the histories repeat each id many times a day.
        let seen: HashSet<&str> = arrays.iter().flat_map(|a| a.as_string::<i32>().iter().flatten()).collect();
        let rel = format!("{DICTIONARIES}/{name}.parquet");
        let mut existing = read_dictionary(lake, &rel).await?;
        let next = existing.values().copied().max().map_or(UNKNOWN + 1, |m| m + 1);
        let new: BTreeSet<String> =
            seen.into_iter().filter(|v| !existing.contains_key(*v)).map(str::to_string).collect();
        if new.is_empty() && !existing.is_empty() {
            continue;
        }
        for (k, v) in new.into_iter().enumerate() {
            existing.insert(v, next + k as i64);
        }
        let mut rows: Vec<(&String, &i64)> = existing.iter().collect();
        rows.sort_by_key(|(_, i)| **i);
        let batch = RecordBatch::try_new(
            dictionary_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|(v, _)| v.as_str()))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, i)| **i))),
            ],
        )
        .map_err(|e| PipelineError::arrow("building a dictionary", e))?;
        write_parquet(lake, rel, dictionary_schema(), &[batch], 1 << 20).await?;
    }
    Ok(())
}

/// Every batch of the Parquet file `rel` (`None`: there is no such file).
async fn read_parquet_file(lake: &Lake, rel: &str) -> Result<Option<Vec<RecordBatch>>> {
    let Some(bytes) = lake.get_opt(rel).await? else { return Ok(None) };
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| PipelineError::parquet("read", rel, e))?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PipelineError::arrow(format!("reading {rel}"), e))?;
    Ok(Some(batches))
}

/// A dictionary as value → index (empty when it does not exist yet).
pub async fn read_dictionary(lake: &Lake, rel: &str) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for b in read_parquet_file(lake, rel).await?.unwrap_or_default() {
        if b.num_columns() < 2 {
            return Err(PipelineError::Config(vec![format!("{rel}: a dictionary needs columns value and index")]));
        }
        let cast = |c: &ArrayRef, t: &DataType| {
            arrow::compute::cast(c, t).map_err(|e| PipelineError::arrow(format!("reading {rel}"), e))
        };
        let (v, i) = (cast(b.column(0), &DataType::Utf8)?, cast(b.column(1), &DataType::Int64)?);
        let (v, i) = (v.as_string::<i32>(), i.as_primitive::<Int64Type>());
        for r in 0..b.num_rows() {
            out.insert(v.value(r).to_string(), i.value(r));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dictionaries' sources: a list row equal to the one before is left out, and nothing
    /// else (equal bytes split otherwise, other nulls, a row between two equal ones).
    #[test]
    fn only_a_list_row_equal_to_the_row_before_is_left_out() {
        use arrow::array::{Array, ListBuilder, StringBuilder};
        let rows: [&[Option<&str>]; 8] = [
            &[Some("a"), Some("b")],
            &[Some("a"), Some("b")],
            &[Some("ab")],
            &[Some("a"), None, Some("b")],
            &[Some("a"), Some("b"), None],
            &[Some("a"), Some("b")],
            &[],
            &[],
        ];
        let mut builder = ListBuilder::new(StringBuilder::new());
        for row in rows {
            for v in row {
                builder.values().append_option(*v);
            }
            builder.append(true);
        }
        let list = builder.finish();
        let mut out = Vec::new();
        // A slice, as a query's batches can be: its first row is kept whatever came before.
        string_arrays(&(Arc::new(list.slice(1, 7)) as ArrayRef), &mut out);
        let [kept] = &out[..] else { panic!("{out:?}") };
        let kept: Vec<Option<&str>> = kept.as_string::<i32>().iter().collect();
        let want: Vec<Option<&str>> = [1, 2, 3, 4, 5, 6].iter().flat_map(|&r| rows[r].iter().copied()).collect();
        assert_eq!(kept, want);
        assert_eq!(list.len(), 8);
    }

    /// Labels out of order are sorted before their order is declared, nulls where the declaration
    /// says: a query asking for that order, which DataFusion then does not sort, gets it.
    #[tokio::test]
    async fn labels_are_registered_in_their_declared_order() {
        use arrow::array::{Int32Array, StringArray, TimestampMillisecondArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new("request_id", DataType::Utf8, true),
            Field::new("item_id", DataType::Utf8, true),
            Field::new("event_time", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
            Field::new("position", DataType::Int32, true),
        ]));
        let batch = |requests: Vec<&str>, items: Vec<&str>, times: Vec<i64>, positions: Vec<Option<i32>>| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from(requests)),
                    Arc::new(StringArray::from(items)),
                    Arc::new(TimestampMillisecondArray::from(times).with_timezone("UTC")),
                    Arc::new(Int32Array::from(positions)),
                ],
            )
            .unwrap()
        };
        let ctx = SessionContext::new_with_config(datafusion::prelude::SessionConfig::new().with_target_partitions(1));
        let unordered = vec![
            batch(
                vec!["r2", "r1", "r1", "r1"],
                vec!["b", "c", "b", "a"],
                vec![5, 5, 5, 5],
                vec![Some(1), None, Some(2), Some(2)],
            ),
            batch(vec!["r0"], vec!["z"], vec![1], vec![Some(9)]),
        ];
        register_ordered_labels(&ctx, unordered).unwrap();
        let sql = "SELECT request_id, item_id FROM labels ORDER BY event_time, request_id, position, item_id";
        let plan = ctx.sql(&format!("EXPLAIN {sql}")).await.unwrap().collect().await.unwrap();
        let shown = arrow::util::pretty::pretty_format_batches(&plan).unwrap().to_string();
        assert!(!shown.contains("SortExec"), "the declared order was not used:\n{shown}");
        let out = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let rows: Vec<String> = out
            .iter()
            .flat_map(|b| {
                let (r, i) = (b.column(0).as_string::<i32>(), b.column(1).as_string::<i32>());
                (0..b.num_rows()).map(|k| format!("{}/{}", r.value(k), i.value(k))).collect::<Vec<_>>()
            })
            .collect();
        // A null position after the others, as SQL's ORDER BY puts it (and as declared).
        assert_eq!(rows, ["r0/z", "r1/a", "r1/b", "r1/c", "r2/b"]);
    }

    #[test]
    fn every_sql_file_is_registered() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".sql")).map(str::to_string))
            .collect();
        files.sort();
        let mut jobs: Vec<String> = SQL_JOBS.iter().map(|(n, _)| n.to_string()).collect();
        jobs.sort();
        assert_eq!(files, jobs, "every sql/*.sql is a registered job and every job has a file");
        for (name, text) in SQL_JOBS {
            assert!(text.starts_with(&format!("-- {name}:")), "{name}.sql lacks its header comment");
            for key in ["-- inputs:", "-- outputs:", "-- params:"] {
                assert!(text.contains(key), "{name}.sql header lacks {key}");
            }
        }
    }

    #[test]
    fn config_validation_lists_every_problem() {
        let cfg = FeaturesConfig {
            windows: vec![0],
            sequence_length: 0,
            max_bad_share: 2.0,
            workers: 0,
            partitions: 0,
            ..Default::default()
        };
        assert_eq!(cfg.validate().len(), 5);
        assert_eq!(FeaturesConfig::default().stat_columns().len(), 18);
    }

    fn strings(name: &str, values: &[&str]) -> (Field, ArrayRef) {
        (Field::new(name, DataType::Utf8, false), Arc::new(StringArray::from_iter_values(values.iter().copied())))
    }

    /// The bucket job's input covers the catalogue, in id order, items without activity at the
    /// statistic's empty value; its output pivots back by position, and a missing pair is an error.
    #[test]
    fn filled_stats_cover_the_catalogue_and_widen_by_position() {
        let cfg = FeaturesConfig { windows: vec![1], ..Default::default() };
        let (f, c) = strings("item_id", &["b", "c", "a"]);
        let catalogue = RecordBatch::try_new(Arc::new(Schema::new(vec![f])), vec![c]).unwrap();
        // "z" has statistics but is not in the catalogue; "a" and "c" have none.
        let days = [
            ItemWindows { item_id: "b".into(), sums: vec![[10, 2, 0, 0, 150]] },
            ItemWindows { item_id: "z".into(), sums: vec![[5, 5, 0, 0, 0]] },
        ];
        let stats = item_stats_batch(&cfg, &days).unwrap();
        let filled = FilledStats::new(&cfg, &catalogue, &stats).unwrap();
        assert_eq!(filled.ids, ["a", "b", "c"]);
        let names = cfg.stat_columns();
        assert_eq!(filled.long.num_rows(), 3 * names.len());
        let (item, stat) =
            (filled.long.column(0).as_primitive::<UInt32Type>(), filled.long.column(1).as_primitive::<UInt32Type>());
        let value = filled.long.column(2).as_primitive::<arrow::datatypes::Float64Type>();
        let prior = cfg.ctr_prior_clicks / cfg.ctr_prior_exposures;
        let at = |i: u32, name: &str| {
            let k = names.iter().position(|n| n == name).unwrap() as u32;
            (0..filled.long.num_rows())
                .find(|&r| item.value(r) == i && stat.value(r) == k)
                .map(|r| value.value(r))
                .unwrap()
        };
        assert_eq!(at(1, "exposures_1d"), 10.0);
        assert_eq!(at(1, "amount_1d"), 1.5);
        assert_eq!(at(0, "exposures_1d"), 0.0);
        assert!((at(2, "ctr_1d") - prior).abs() < 1e-12);
        assert!((at(1, "ctr_1d") - (2.0 + cfg.ctr_prior_clicks) / (10.0 + cfg.ctr_prior_exposures)).abs() < 1e-12);

        // The job's answer, one row per input row: bucket = item position, b100 = 10 × that.
        let answer = |rows: usize| {
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("item", DataType::UInt32, false),
                    Field::new("stat", DataType::UInt32, false),
                    Field::new("b10", DataType::Int32, false),
                    Field::new("b100", DataType::Int32, false),
                ])),
                vec![
                    Arc::new(UInt32Array::from_iter_values((0..rows).map(|r| item.value(r)))),
                    Arc::new(UInt32Array::from_iter_values((0..rows).map(|r| stat.value(r)))),
                    Arc::new(Int32Array::from_iter_values((0..rows).map(|r| item.value(r) as i32))),
                    Arc::new(Int32Array::from_iter_values((0..rows).map(|r| 10 * item.value(r) as i32))),
                ],
            )
            .unwrap()
        };
        let wide = filled.widen(&cfg, &[answer(filled.long.num_rows())]).unwrap();
        assert_eq!(wide.column(0).as_string::<i32>().iter().flatten().collect::<Vec<_>>(), ["a", "b", "c"]);
        let clicks_b100 = wide.column_by_name("clicks_1d_b100").unwrap().as_primitive::<Int32Type>();
        assert_eq!(clicks_b100.values().to_vec(), [0, 10, 20]);
        let err = filled.widen(&cfg, &[answer(filled.long.num_rows() - 1)]).unwrap_err().to_string();
        assert!(err.contains("no buckets") && err.contains("item c"), "{err}");
    }
}
