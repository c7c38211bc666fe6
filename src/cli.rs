//! Command-line flags. Parsing and validation of single values only; the layering of file,
//! environment and flags happens in `config.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use marnflow_model::device::DeviceSpec;
use marnflow_model::Variant;

/// marnflow: raw e-commerce logs to trained click-through-rate models (MARN), every day.
#[derive(Debug, Parser)]
#[command(name = "marnflow", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Lake root: a local path, file://…, s3://bucket/prefix or memory:// [default: ./lake]
    #[arg(long, global = true, value_name = "URI", help_heading = "Global")]
    pub lake: Option<String>,

    /// TOML config file; keys are those of configs/default.toml
    #[arg(long, global = true, value_name = "FILE", env = "MARNFLOW_CONFIG", help_heading = "Global")]
    pub config: Option<PathBuf>,

    /// Log format on stderr
    #[arg(long, global = true, value_enum, env = "MARNFLOW_LOG_FORMAT", default_value_t = LogFormat::Human, help_heading = "Global")]
    pub log_format: LogFormat,

    /// More log detail: -v debug, -vv trace (RUST_LOG overrides)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global")]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines for a terminal
    Human,
    /// One JSON object per line, for log collectors
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a synthetic e-commerce world (raw logs and ground truth) to the lake
    Generate(GenerateArgs),
    /// Import a public dataset (MovieLens, Amazon) into the lake's raw logs
    Import(ImportArgs),
    /// Build the feature tables of one day or a range: windows, labels, samples, items
    Features(FeaturesArgs),
    /// Follow the raw logs as a long-running process: build each day once it closes, with the
    /// rolling windows and user state kept live between days
    Stream(StreamArgs),
    /// Write the raw logs of some days of another lake into this one as they would arrive: in
    /// slices of event time, at N times real time (load for `stream`, a catch-up rehearsal)
    Replay(ReplayArgs),
    /// Run SQL over every table of the lake (DataFusion)
    Sql(SqlArgs),
    /// Run one process of a Ballista cluster for the feature SQL: the scheduler or an executor
    Cluster(ClusterArgs),
    /// Train a model on the samples of a date range and register it as a new version
    Train(TrainArgs),
    /// Evaluate a registered version on one day: AUC, user AUC, deciles, unseen-item recall
    Evaluate(EvaluateArgs),
    /// The model registry: list, show, diff, promote, rollback
    Models(ModelsArgs),
    /// The scheduled daily job: features, train, evaluate, register as candidate, maybe promote
    Run(RunArgs),
    /// Write every item's representation (rep) of a version as Parquet
    ExportItemEmbeddings(ExportArgs),
    /// Write a click probability for every sample row of a day as Parquet
    Score(ScoreArgs),
    /// Generate a small world (or import MovieLens), build features, train MARN and baselines, evaluate and report
    Demo(DemoArgs),
}

/// Training settings shared by `train` and `run`.
#[derive(Debug, Args)]
pub struct TrainFlags {
    /// Model variant: marn; its ablations maf_ddma, maf_adv, maf, conc, image, ids; the baselines lr, fm,
    /// youtube_net, xdeepfm, dupn, dien, dmf, mmss, naml, din
    #[arg(long, value_name = "V", value_parser = parse_variant, help_heading = "Training")]
    pub variant: Option<Variant>,

    /// Passes over the data
    #[arg(long, value_name = "E", value_parser = clap::value_parser!(u32).range(1..=1000), help_heading = "Training")]
    pub epochs: Option<u32>,

    /// Samples per step
    #[arg(long, value_name = "B", value_parser = clap::value_parser!(u64).range(1..=1048576), help_heading = "Training")]
    pub batch_size: Option<u64>,

    /// cpu, cuda:N, tch:cpu or tch:cuda:N
    #[arg(long, value_name = "DEVICE", value_parser = parse_device, help_heading = "Training")]
    pub device: Option<DeviceSpec>,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Name of the model in the registry
    #[arg(long, value_name = "NAME")]
    pub model: String,

    /// First training day
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub from: chrono::NaiveDate,

    /// Last training day
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub to: chrono::NaiveDate,

    #[command(flatten)]
    pub flags: TrainFlags,

    /// Continue from a registered version (NAME@ALIAS or NAME@vN); new ids get fresh rows
    #[arg(long, value_name = "NAME@X")]
    pub warm_start: Option<String>,

    /// Continue an interrupted run with the same settings from its last checkpoint
    #[arg(long)]
    pub resume: bool,

    /// Data-parallel replicas: N processes, each on its shard of every global batch
    /// (train.batch_size), gradients combined every step over MPI. On one machine marnflow
    /// starts them with `mpirun -n N`; across machines run `mpirun -n N --hostfile H marnflow
    /// train … --workers N` yourself. Needs a build with `--features mpi`
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub workers: Option<u64>,

    /// Print the outcome as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The version: NAME@ALIAS or NAME@vN
    #[arg(long, value_name = "NAME@X")]
    pub model: String,

    /// Day to evaluate on (the first day, with --to)
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub date: chrono::NaiveDate,

    /// Last day of a range starting at --date: the rows of every day are pooled
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub to: Option<chrono::NaiveDate>,

    /// Print one JSON object
    #[arg(long)]
    pub json: bool,

    /// Write evaluation.json, summary.md and PNG/SVG plots into this folder
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,

    /// cpu, cuda:N, tch:cpu or tch:cuda:N
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    pub device: Option<DeviceSpec>,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Every model with its versions and aliases
    List {
        /// One JSON object
        #[arg(long)]
        json: bool,
    },
    /// A version's manifest, aliases and evaluations
    Show {
        /// NAME@ALIAS or NAME@vN
        #[arg(value_name = "NAME@X")]
        spec: String,
        /// The manifest as JSON
        #[arg(long)]
        json: bool,
    },
    /// What differs between two versions: data, settings, metrics
    Diff {
        /// NAME@ALIAS or NAME@vN
        #[arg(value_name = "NAME@A")]
        a: String,
        /// NAME@ALIAS or NAME@vN
        #[arg(value_name = "NAME@B")]
        b: String,
    },
    /// Point an alias at a version (a conditional write: a racing change fails cleanly)
    Promote {
        /// NAME@vN or NAME@ALIAS
        #[arg(value_name = "NAME@X")]
        spec: String,
        /// The alias to move (production, candidate, …)
        #[arg(long, value_name = "ALIAS")]
        to: String,
        /// Why, kept in the alias history
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Return an alias to the version it pointed at before its latest change
    Rollback {
        /// Model name
        #[arg(value_name = "NAME")]
        model: String,
        /// The alias to roll back
        #[arg(long, value_name = "ALIAS")]
        alias: String,
        /// Why, kept in the alias history
        #[arg(long, value_name = "TEXT", default_value = "rollback")]
        reason: String,
    },
    /// Every change of an alias: when, from, to, why
    History {
        /// Model name
        #[arg(value_name = "NAME")]
        model: String,
        /// The alias
        #[arg(long, value_name = "ALIAS")]
        alias: String,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The day to run
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub date: chrono::NaiveDate,

    /// Name of the model in the registry
    #[arg(long, value_name = "NAME", default_value = "ctr")]
    pub model: String,

    #[command(flatten)]
    pub flags: TrainFlags,

    /// Promote the candidate to production when it beats production on train.promote_metric
    #[arg(long)]
    pub promote_if_better: bool,

    /// Print the outcome as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The version: NAME@ALIAS or NAME@vN
    #[arg(long, value_name = "NAME@X")]
    pub model: String,

    /// Output Parquet file: a path, file://…, s3://bucket/key
    #[arg(long, value_name = "URI")]
    pub out: String,

    /// Day whose item table and statistics to use [default: the last day with features]
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub date: Option<chrono::NaiveDate>,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The version: NAME@ALIAS or NAME@vN
    #[arg(long, value_name = "NAME@X")]
    pub model: String,

    /// Day whose samples to score
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub date: chrono::NaiveDate,

    /// Output Parquet file: a path, file://…, s3://bucket/key
    #[arg(long, value_name = "URI")]
    pub out: String,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of users
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "World")]
    pub users: Option<u64>,

    /// Number of items in the catalogue
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..), help_heading = "World")]
    pub items: Option<u64>,

    /// Number of days of logs
    #[arg(long, value_name = "D", value_parser = clap::value_parser!(u32).range(1..=3660), conflicts_with = "end_date", help_heading = "World")]
    pub days: Option<u32>,

    /// First day (YYYY-MM-DD)
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, help_heading = "World")]
    pub start_date: Option<chrono::NaiveDate>,

    /// Last day (YYYY-MM-DD), instead of --days
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, help_heading = "World")]
    pub end_date: Option<chrono::NaiveDate>,

    /// Seed of every random draw: the same seed gives byte-identical files
    #[arg(long, value_name = "S", help_heading = "World")]
    pub seed: Option<u64>,

    /// Width of the image embeddings (VGG16 fc7 is 4096)
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=65536), help_heading = "World")]
    pub image_dim: Option<u64>,

    /// Exposures per day (rounded up to whole slates)
    #[arg(long, value_name = "E", value_parser = clap::value_parser!(u64).range(1..), help_heading = "World")]
    pub exposures_per_day: Option<u64>,

    /// Print the summary as one JSON object
    #[arg(long, help_heading = "Output")]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("days").required(true).args(["date", "from"]))]
pub struct FeaturesArgs {
    /// The day to build (YYYY-MM-DD)
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, conflicts_with_all = ["from", "to"])]
    pub date: Option<chrono::NaiveDate>,

    /// First day of a backfill (YYYY-MM-DD)
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, requires = "to")]
    pub from: Option<chrono::NaiveDate>,

    /// Last day of a backfill, inclusive (YYYY-MM-DD)
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, requires = "from")]
    pub to: Option<chrono::NaiveDate>,

    /// Timely worker threads for the rolling windows
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub workers: Option<u64>,

    /// This process's index in timely's cluster mode (0-based; with --processes and --hostfile)
    #[arg(long, value_name = "I", requires_all = ["processes", "hostfile"], help_heading = "Cluster")]
    pub process: Option<usize>,

    /// Number of processes in timely's cluster mode
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096), requires_all = ["process", "hostfile"], help_heading = "Cluster")]
    pub processes: Option<u64>,

    /// File with one host:port per line, one line per process, in process order
    #[arg(long, value_name = "FILE", requires_all = ["process", "processes"], help_heading = "Cluster")]
    pub hostfile: Option<PathBuf>,

    /// Largest share of bad rows per raw table and day before the run fails (0 to 1)
    #[arg(long, value_name = "SHARE")]
    pub max_bad_share: Option<f64>,

    /// Read raw files as this format whatever their extension (default: by extension)
    #[arg(long, value_enum)]
    pub format: Option<RawFormat>,

    /// Where the SQL jobs run: embedded, or ballista://HOST:PORT (a scheduler of `marnflow
    /// cluster`); overrides features.engine
    #[arg(long, value_name = "URI", help_heading = "Cluster")]
    pub engine: Option<String>,

    /// Files per day of the user-keyed tables (samples, user_history), hash-partitioned by user;
    /// above 1, or on a cluster, the query's partitions write them (on Ballista, the executors);
    /// overrides features.partitions
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096), help_heading = "Cluster")]
    pub partitions: Option<u64>,

    /// Print the per-day report as JSON
    #[arg(long)]
    pub json: bool,
}

/// `marnflow stream`: the feature job following the raw logs.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// The first day to build when the lake has no stream progress [default: the earliest raw day]
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub from: Option<chrono::NaiveDate>,

    /// Stop once this day is built
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub until: Option<chrono::NaiveDate>,

    /// Build the days that have closed, then exit instead of waiting for more (catching up)
    #[arg(long)]
    pub once: bool,

    /// Seconds between listings of the raw logs
    #[arg(long, value_name = "S", default_value_t = 10.0, value_parser = parse_seconds)]
    pub poll_seconds: f64,

    /// Seconds every raw table must have had files of a later day before a day closes
    #[arg(long, value_name = "S", default_value_t = 300.0, value_parser = parse_seconds)]
    pub lateness_seconds: f64,

    /// With a label window (features.label_window_seconds): event-time seconds an event may
    /// arrive behind its log's newest one and still count in the rows emitted within the day
    #[arg(long, value_name = "S", default_value_t = 60.0, value_parser = parse_seconds)]
    pub out_of_order_seconds: f64,

    /// Train model M online from the rows emitted within the day, warm-started from M@production,
    /// registering a version every --register-every-steps or --register-every-minutes
    #[arg(long, value_name = "M")]
    pub train: Option<String>,

    /// With --train: register a version after this many training steps
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub register_every_steps: u64,

    /// With --train: register a version after this many minutes (if it has trained since)
    #[arg(long, value_name = "MIN", default_value_t = 10.0, value_parser = parse_minutes)]
    pub register_every_minutes: f64,

    /// Timely worker threads for the rolling windows
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub workers: Option<u64>,

    /// Print one JSON object per day built, per part of rows emitted and per part trained on stdout
    #[arg(long)]
    pub json: bool,
}

/// `marnflow replay`: raw logs of another lake written into this one slice by slice.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The lake to read the raw logs from (a path or s3://bucket/prefix)
    #[arg(long, value_name = "LAKE")]
    pub source: String,

    /// The first day to replay
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub from: chrono::NaiveDate,

    /// The last day to replay [default: --from]
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub to: Option<chrono::NaiveDate>,

    /// Times real time; 0 writes the slices as fast as it can
    #[arg(long, value_name = "X", default_value_t = 10.0, value_parser = parse_speed)]
    pub speed: f64,

    /// Event-time seconds per file of each log
    #[arg(long, value_name = "S", default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub slice_seconds: u32,

    /// Start at this hour of the first day's event time (0 to 24)
    #[arg(long, value_name = "H", default_value_t = 0.0)]
    pub start_hour: f64,

    /// Replay this many hours of event time, then stop [default: to the end of --to]
    #[arg(long, value_name = "H")]
    pub hours: Option<f64>,
}

fn parse_minutes(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 7.0 * 24.0 * 60.0 => Ok(v),
        _ => Err(format!("{s:?}: give minutes, above 0 and at most a week")),
    }
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e6).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: give a speed from 0 (as fast as it can) to 1000000")),
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0 * 365.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: give seconds, from 0 to a year")),
    }
}

/// `marnflow cluster`: the processes of a Ballista cluster, with marnflow's SQL functions.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub role: ClusterRole,
}

#[derive(Debug, Subcommand)]
pub enum ClusterRole {
    /// The scheduler: splits each query into stages and hands their tasks to the executors
    Scheduler {
        /// Address to listen on (gRPC)
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50050")]
        bind: std::net::SocketAddr,
        /// Seconds without a heartbeat after which an executor counts as lost and its tasks run
        /// again elsewhere (longer than the executors' --heartbeat)
        #[arg(long, value_name = "SECONDS", default_value_t = 180, value_parser = clap::value_parser!(u64).range(2..=86_400))]
        executor_timeout: u64,
    },
    /// An executor: runs tasks, reads the lake, and serves its shuffle output on PORT (Arrow
    /// Flight) and the scheduler's calls on PORT+1 (gRPC)
    Executor {
        /// The scheduler's address
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// Address to listen on
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50051")]
        bind: std::net::SocketAddr,
        /// Host name the scheduler and the other executors reach this one at [default: the bind address]
        #[arg(long, value_name = "HOST")]
        external_host: Option<String>,
        /// Tasks run at once [default: the machine's cores]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
        concurrent_tasks: Option<u64>,
        /// Scratch folder for shuffle files
        #[arg(long, value_name = "DIR")]
        work_dir: PathBuf,
        /// Seconds between heartbeats to the scheduler (shorter than its --executor-timeout)
        #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3_600))]
        heartbeat: u64,
    },
}

/// Formats of raw log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RawFormat {
    /// Apache Parquet
    Parquet,
    /// CSV with a header row
    Csv,
    /// Newline-delimited JSON
    Json,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The SQL statement, e.g. "SELECT dt, count(*) FROM raw.exposures GROUP BY dt"
    #[arg(value_name = "QUERY", required_unless_present = "file", conflicts_with = "file")]
    pub query: Option<String>,

    /// Read the statement from a file instead
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Output format
    #[arg(long, value_enum, default_value_t = SqlFormat::Table)]
    pub format: SqlFormat,

    /// Write the result to this file instead of stdout (required for parquet)
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// Result formats of `marnflow sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqlFormat {
    /// An aligned text table
    Table,
    /// CSV with a header row
    Csv,
    /// Newline-delimited JSON, one object per row
    Json,
    /// A Parquet file (needs --output)
    Parquet,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub source: ImportSource,
}

/// Word vectors and output of every importer.
#[derive(Debug, Args)]
pub struct ImportCommon {
    /// Pretrained word vectors for the titles (GloVe text format, plain or .gz); tokens without
    /// one get a seeded random vector
    #[arg(long, value_name = "FILE")]
    pub word_vectors: Option<PathBuf>,

    /// Width of the random word vectors (a --word-vectors file's own width wins)
    #[arg(long, value_name = "D", default_value_t = marnflow_pipeline::import::DEFAULT_WORD_DIM as u64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub word_dim: u64,

    /// Seed of the random word vectors (and of Amazon's negative sampling)
    #[arg(long, value_name = "S", default_value_t = marnflow_pipeline::import::DEFAULT_SEED)]
    pub seed: u64,

    /// Fail when more than this share of the input lines cannot be imported
    #[arg(long, value_name = "SHARE", default_value_t = marnflow_pipeline::import::DEFAULT_MAX_BAD_SHARE)]
    pub max_bad_share: f64,

    /// Print the summary as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImportSource {
    /// MovieLens-100K: the GroupLens layout (u.data, u.item, u.user) or RecBole's (*.inter, *.item, *.user)
    Movielens {
        /// The folder holding the files
        #[arg(long, value_name = "DIR")]
        input: PathBuf,

        /// Ratings at or above this are clicks (label 1)
        #[arg(long, value_name = "R", default_value_t = marnflow_pipeline::import::movielens::DEFAULT_POSITIVE_RATING)]
        positive_rating: f64,

        #[command(flatten)]
        common: ImportCommon,
    },
    /// Amazon product data (reviews, metadata, image features), JSON or Python-literal lines, plain or gzipped
    Amazon {
        /// Reviews: reviewerID, asin, unixReviewTime per line
        #[arg(long, value_name = "FILE")]
        reviews: PathBuf,

        /// Metadata: asin, title, categories, brand, price per line
        #[arg(long, value_name = "FILE")]
        meta: PathBuf,

        /// Image features: a 10-byte ASIN then --image-dim little-endian float32 values per record
        #[arg(long, value_name = "FILE")]
        image_features: Option<PathBuf>,

        /// Floats per image feature record
        #[arg(long, value_name = "D", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=65536))]
        image_dim: u64,

        #[command(flatten)]
        common: ImportCommon,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seed of the demo world
    #[arg(long, value_name = "S", default_value_t = 7)]
    pub seed: u64,

    /// Folder of the demo's report (Table 3, plots)
    #[arg(long, value_name = "DIR", default_value = "demo-report")]
    pub report: PathBuf,

    /// Run on MovieLens-100K instead of a generated world: the folder of u.data/u.item or of
    /// RecBole's *.inter/*.item (e.g. ../shared/data/movielens-100k)
    #[arg(long, value_name = "DIR")]
    pub movielens: Option<PathBuf>,

    /// MovieLens: import only the ratings from this day on (a shorter run) [default: all]
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, requires = "movielens")]
    pub since: Option<chrono::NaiveDate>,

    /// MovieLens: the last N days are evaluated on (pooled), the days before are trained on
    #[arg(long, value_name = "N", default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=365))]
    pub test_days: u32,

    /// Passes over the training days (overrides train.epochs)
    #[arg(long, value_name = "E", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub epochs: Option<u32>,

    /// Models to train, comma-separated [default: a few baselines and MARN variants]
    #[arg(long, value_name = "V,V,…", value_delimiter = ',', value_parser = parse_variant, conflicts_with = "table2")]
    pub variants: Vec<Variant>,

    /// Train every model of the paper's Table 2 (LR … NAML, then MARN) instead of the default few
    #[arg(long)]
    pub table2: bool,
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    s.parse().map_err(|e: marnflow_model::Error| e.to_string())
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse().map_err(|e: marnflow_model::Error| e.to_string())
}

fn parse_date(s: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| format!("'{s}' is not a date (YYYY-MM-DD): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_help() {
        fn walk(cmd: &clap::Command) {
            for arg in cmd.get_arguments() {
                if arg.get_id() != "help" && arg.get_id() != "version" {
                    assert!(arg.get_help().is_some(), "{} --{} has no help", cmd.get_name(), arg.get_id());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub);
            }
        }
        walk(&Cli::command());
    }

    #[test]
    fn impossible_values_are_refused_by_the_parser() {
        for bad in [
            vec!["marnflow", "generate", "--users", "0"],
            vec!["marnflow", "generate", "--image-dim", "0"],
            vec!["marnflow", "generate", "--start-date", "2026-13-01"],
            vec!["marnflow", "generate", "--days", "3", "--end-date", "2026-01-05"],
            vec!["marnflow", "generate", "--bogus"],
            vec!["marnflow", "sql"],
            vec!["marnflow", "features"],
            vec!["marnflow", "features", "--from", "2026-01-01"],
            vec!["marnflow", "features", "--date", "2026-01-01", "--from", "2026-01-01", "--to", "2026-01-02"],
            vec!["marnflow", "features", "--date", "2026-01-01", "--workers", "0"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?} was accepted");
        }
    }
}
