//! The `marnflow` binary: parses flags, loads config, installs logging, and calls the
//! pipeline and model crates. No work of its own lives here.

mod cli;
mod config;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use marnflow_pipeline::features::run_features;
use marnflow_pipeline::lake::Lake;
use marnflow_pipeline::query::{write_batches, LakeSession, OutputFormat};
use marnflow_pipeline::world::{generate, WorldConfig, WorldSummary};
use marnflow_pipeline::PipelineError;

use cli::{Cli, Command, LogFormat, SqlFormat};
use config::{Config, ConfigError};

/// The demo world's configuration, embedded so `marnflow demo` needs no file.
const DEMO_CONFIG: &str = include_str!("../configs/demo.toml");
/// Analyst queries the demo shows (they live in sql/analysis/ for everyone to reuse).
const DEMO_QUERIES: [(&str, &str); 4] = [
    ("rows and click rate per day", include_str!("../sql/analysis/rows_per_day.sql")),
    ("click rate by slate position", include_str!("../sql/analysis/ctr_by_position.sql")),
    ("planted category profiles", include_str!("../sql/analysis/modality_profiles.sql")),
    ("training samples per day (marnflow features)", include_str!("../sql/analysis/samples_per_day.sql")),
];

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_logging(cli.log_format, cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Some sources (DataFusion) repeat their causes in their own message: show each once.
            let mut shown = e.to_string();
            eprintln!("error: {shown}");
            for cause in e.chain().skip(1) {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown.push_str(&text);
                }
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 2 for usage and configuration errors, 1 for everything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    let usage = e.chain().any(|c| {
        c.downcast_ref::<ConfigError>().is_some()
            || c.downcast_ref::<PipelineError>().is_some_and(PipelineError::is_usage)
    });
    if usage {
        2
    } else {
        1
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "warn,marnflow={level},marnflow_pipeline={level},marnflow_model={level}"
        ))
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn run(cli: Cli) -> Result<()> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    match cli.command {
        Command::Demo(ref args) => {
            let mut cfg = Config::layered(Some(("embedded configs/demo.toml", DEMO_CONFIG)), std::iter::empty())?;
            cfg.generate.seed = args.seed;
            if let Some(lake) = &cli.lake {
                cfg.lake = lake.clone();
            }
            cfg.validate()?;
            runtime.block_on(demo(&cfg))
        }
        Command::Generate(ref args) => {
            let mut cfg = Config::load(cli.config.as_deref())?;
            apply_common_flags(&mut cfg, &cli);
            apply_generate_flags(&mut cfg.generate, args)?;
            cfg.validate()?;
            let lake = Lake::open(&cfg.lake)?;
            let summary = runtime.block_on(generate_with_progress(&lake, &cfg.generate))?;
            if args.json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print_summary(&lake, &summary, &mut std::io::stdout())?;
            }
            Ok(())
        }
        Command::Features(ref args) => {
            let mut cfg = Config::load(cli.config.as_deref())?;
            apply_common_flags(&mut cfg, &cli);
            if let Some(w) = args.workers {
                cfg.features.workers = usize::try_from(w)?;
            }
            if let Some(s) = args.max_bad_share {
                cfg.features.max_bad_share = s;
            }
            if let Some(f) = args.format {
                cfg.features.raw_format = match f {
                    cli::RawFormat::Parquet => "parquet",
                    cli::RawFormat::Csv => "csv",
                    cli::RawFormat::Json => "json",
                }
                .into();
            }
            cfg.validate()?;
            let (from, to) = match (args.date, args.from, args.to) {
                (Some(d), _, _) => (d, d),
                (None, Some(f), Some(t)) => (f, t),
                _ => bail!(ConfigError(vec!["give --date D or --from D1 --to D2".into()])),
            };
            if to < from {
                bail!(ConfigError(vec![format!("--to {to} is before --from {from}")]));
            }
            let cluster = match (args.process, args.processes, &args.hostfile) {
                (Some(process), Some(processes), Some(file)) => Some(cluster_addresses(process, processes, file)?),
                _ => None,
            };
            let lake = Lake::open(&cfg.lake)?;
            let reports = runtime
                .block_on(run_features(&lake, &cfg.features, from, to, cluster))
                .with_context(|| format!("building features {from} .. {to} in {}", lake.uri()))?;
            if args.json {
                println!("{}", serde_json::to_string(&reports)?);
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:<12} {:>22} {:>22} {:>22} {:>9} {:>8}",
                    "day", "exposures in/ok/bad", "clicks in/ok/bad", "behaviors in/ok/bad", "samples", "ctr"
                )?;
                for r in &reports {
                    let acc = |a: &marnflow_pipeline::features::Accounting| {
                        format!("{}/{}/{}", a.input, a.accepted, a.quarantined)
                    };
                    writeln!(
                        out,
                        "{:<12} {:>22} {:>22} {:>22} {:>9} {:>8.4}",
                        r.date,
                        acc(&r.exposures),
                        acc(&r.clicks),
                        acc(&r.behaviors),
                        r.samples,
                        r.positive_rate
                    )?;
                }
            }
            Ok(())
        }
        Command::Sql(ref args) => {
            let mut cfg = Config::load(cli.config.as_deref())?;
            apply_common_flags(&mut cfg, &cli);
            cfg.validate()?;
            let query = match (&args.query, &args.file) {
                (Some(q), _) => q.clone(),
                (None, Some(f)) => {
                    std::fs::read_to_string(f).with_context(|| format!("cannot read SQL file {}", f.display()))?
                }
                (None, None) => bail!(ConfigError(vec!["give a SQL statement or --file".into()])),
            };
            let format = match args.format {
                SqlFormat::Table => OutputFormat::Table,
                SqlFormat::Csv => OutputFormat::Csv,
                SqlFormat::Json => OutputFormat::Json,
                SqlFormat::Parquet => OutputFormat::Parquet,
            };
            if format == OutputFormat::Parquet && args.output.is_none() {
                bail!(ConfigError(vec!["--format parquet needs --output PATH".into()]));
            }
            let lake = Lake::open(&cfg.lake)?;
            let batches = runtime.block_on(async {
                let session = LakeSession::open(&lake).await?;
                if session.tables().is_empty() {
                    tracing::warn!(lake = lake.uri(), "no tables in the lake; run `marnflow generate` first");
                }
                session.sql(&query).await
            })?;
            match &args.output {
                Some(path) => {
                    let shown = path.display().to_string();
                    let mut file = std::fs::File::create(path).with_context(|| format!("cannot create {shown}"))?;
                    write_batches(&batches, format, &mut file, &shown)?;
                }
                None => write_batches(&batches, format, &mut std::io::stdout().lock(), "stdout")?,
            }
            Ok(())
        }
    }
}

/// Reads the hostfile of timely's cluster mode: one `host:port` per line, one per process.
fn cluster_addresses(process: usize, processes: u64, file: &std::path::Path) -> Result<(usize, Vec<String>)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read hostfile {}", file.display()))?;
    let addresses: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    let mut problems = Vec::new();
    let n = usize::try_from(processes)?;
    if addresses.len() < n {
        problems.push(format!("hostfile {} has {} addresses for --processes {n}", file.display(), addresses.len()));
    }
    if process >= n {
        problems.push(format!("--process {process} is out of range: allowed 0 to {}", n.saturating_sub(1)));
    }
    for a in &addresses {
        if a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            problems.push(format!("hostfile {}: '{a}' is not host:port", file.display()));
        }
    }
    if !problems.is_empty() {
        bail!(ConfigError(problems));
    }
    Ok((process, addresses.into_iter().take(n).collect()))
}

fn apply_common_flags(cfg: &mut Config, cli: &Cli) {
    if let Some(lake) = &cli.lake {
        cfg.lake = lake.clone();
    }
}

fn apply_generate_flags(g: &mut WorldConfig, a: &cli::GenerateArgs) -> Result<()> {
    if let Some(v) = a.users {
        g.users = usize::try_from(v)?;
    }
    if let Some(v) = a.items {
        g.items = usize::try_from(v)?;
    }
    if let Some(v) = a.start_date {
        g.start_date = v.to_string();
    }
    if let Some(v) = a.days {
        g.days = v;
    }
    if let Some(end) = a.end_date {
        let start = g.start().context("generate.start_date is not a date")?;
        let span = (end - start).num_days() + 1;
        if span < 1 {
            bail!(ConfigError(vec![format!("--end-date {end} is before generate.start_date {start}")]));
        }
        g.days = u32::try_from(span).context("--end-date is too far after the start")?;
    }
    if let Some(v) = a.seed {
        g.seed = v;
    }
    if let Some(v) = a.image_dim {
        g.image_dim = usize::try_from(v)?;
    }
    if let Some(v) = a.exposures_per_day {
        g.exposures_per_day = v;
    }
    Ok(())
}

async fn generate_with_progress(lake: &Lake, cfg: &WorldConfig) -> Result<WorldSummary> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(u64::from(cfg.days));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} generating day {pos}/{len} [{elapsed_precise}] {wide_bar}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let summary = generate(lake, cfg, &mut |_| {
        if let Some(b) = &bar {
            b.inc(1);
        }
    })
    .await
    .with_context(|| format!("generating the world into {}", lake.uri()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(summary)
}

fn print_summary(lake: &Lake, s: &WorldSummary, out: &mut dyn Write) -> Result<()> {
    let first = s.days.first().map_or("", String::as_str);
    let last = s.days.last().map_or("", String::as_str);
    writeln!(out, "wrote a synthetic world to {} ({} days, {first} .. {last})", lake.uri(), s.days.len())?;
    for (table, n) in [
        ("raw/exposures", s.exposures),
        ("raw/clicks", s.clicks),
        ("raw/behaviors", s.behaviors),
        ("raw/items", s.items),
        ("raw/word_vectors", s.word_vectors),
    ] {
        writeln!(out, "  {table:<20} {n:>12} rows")?;
    }
    writeln!(out, "  {:<20} {:>12.2}%", "click rate", 100.0 * s.click_rate)?;
    match s.bayes_auc {
        Some(a) => writeln!(
            out,
            "  {:<20} {a:>12.4}   (AUC of the true p_click: the ceiling for any model)",
            "Bayes-optimal AUC"
        )?,
        None => writeln!(out, "  {:<20} {:>12}   (needs both clicks and non-clicks)", "Bayes-optimal AUC", "n/a")?,
    }
    writeln!(out, "  {:<20} {:>12}   first exposed on {last}", "cold-start items", s.cold_start_items_last_day)?;
    writeln!(
        out,
        "  {:<20} {:>11.1}%   of exposures go to the top 1% of items",
        "popularity",
        100.0 * s.top1pct_exposure_share
    )?;
    Ok(())
}

async fn demo(cfg: &Config) -> Result<()> {
    let lake = Lake::open(&cfg.lake)?;
    let started = std::time::Instant::now();
    let summary = generate_with_progress(&lake, &cfg.generate).await?;
    let mut out = std::io::stdout().lock();
    print_summary(&lake, &summary, &mut out)?;
    writeln!(out, "  {:<20} {:>12.1}s", "generated in", started.elapsed().as_secs_f64())?;
    let started = std::time::Instant::now();
    let (first, last) =
        (cfg.generate.start().context("demo start date")?, *cfg.generate.dates().last().context("demo days")?);
    let reports =
        run_features(&lake, &cfg.features, first, last, None).await.context("building the demo's features")?;
    let samples: u64 = reports.iter().map(|r| r.samples).sum();
    writeln!(
        out,
        "  {:<20} {:>12}   samples in features/samples, built in {:.1}s",
        "features",
        samples,
        started.elapsed().as_secs_f64()
    )?;
    let session = LakeSession::open(&lake).await?;
    for (title, sql) in DEMO_QUERIES {
        writeln!(out, "\n{title}:")?;
        let batches = session.sql(sql).await.with_context(|| format!("demo query '{title}'"))?;
        write_batches(&batches, OutputFormat::Table, &mut out, "stdout")?;
    }
    writeln!(out, "\nquery it yourself: marnflow --lake {} sql \"SHOW TABLES\"", cfg.lake)?;
    Ok(())
}
