//! The `marnflow` binary: parses flags, loads config, installs logging, and calls the
//! pipeline and model crates. No work of its own lives here.

mod cli;
mod config;
mod daily;
mod data;
mod evaluate;
mod models_cmd;
mod plot;
mod serving;
mod training;

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
const MOVIELENS_CONFIG: &str = include_str!("../configs/movielens.toml");
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
        Command::Demo(ref args) => demo_command(&cli, args, &runtime),
        Command::Generate(ref args) => generate_command(&cli, args, &runtime),
        Command::Import(ref args) => import_command(&cli, args, &runtime),
        Command::Features(ref args) => features_command(&cli, args, &runtime),
        Command::Train(ref args) => train_command(&cli, args, &runtime),
        Command::Evaluate(ref args) => evaluate_command(&cli, args, &runtime),
        Command::Models(ref args) => models_command(&cli, args, &runtime),
        Command::Run(ref args) => run_command(&cli, args, &runtime),
        Command::ExportItemEmbeddings(ref args) => export_command(&cli, args, &runtime),
        Command::Score(ref args) => score_command(&cli, args, &runtime),
        Command::Sql(ref args) => sql_command(&cli, args, &runtime),
    }
}

/// `demo`: the embedded world (or MovieLens), features, models compared, a report.
fn demo_command(cli: &Cli, args: &cli::DemoArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let base = match args.movielens {
        Some(_) => ("embedded configs/movielens.toml", MOVIELENS_CONFIG),
        None => ("embedded configs/demo.toml", DEMO_CONFIG),
    };
    let mut cfg = Config::layered(Some(base), std::iter::empty())?;
    cfg.generate.seed = args.seed;
    if let Some(e) = args.epochs {
        cfg.train.epochs = e;
    }
    if let Some(lake) = &cli.lake {
        cfg.lake = lake.clone();
    }
    cfg.validate()?;
    for v in &args.variants {
        parse_variant(v)?;
    }
    match &args.movielens {
        Some(dir) => runtime.block_on(demo_movielens(&cfg, args, dir)),
        None => runtime.block_on(demo(&cfg, args)),
    }
}

/// `generate`: a synthetic world with planted answers.
fn generate_command(cli: &Cli, args: &cli::GenerateArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let mut cfg = load_config(cli)?;
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

/// `import`: MovieLens or Amazon logs into the raw contract.
fn import_command(cli: &Cli, args: &cli::ImportArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let (_, lake) = open_lake(cli)?;
    runtime.block_on(import(&lake, &args.source))
}

/// `features`: the daily feature job for one day or a range.
fn features_command(cli: &Cli, args: &cli::FeaturesArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let mut cfg = load_config(cli)?;
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
            let acc =
                |a: &marnflow_pipeline::features::Accounting| format!("{}/{}/{}", a.input, a.accepted, a.quarantined);
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

/// The config with the training flags applied and validated, its variant, and the lake
/// (`train` and `run`).
fn train_setup(cli: &Cli, flags: &cli::TrainFlags) -> Result<(Config, marnflow_model::Variant, Lake)> {
    let mut cfg = load_config(cli)?;
    apply_train_flags(&mut cfg, flags)?;
    cfg.validate()?;
    let variant = parse_variant(&cfg.train.variant)?;
    let lake = Lake::open(&cfg.lake)?;
    Ok((cfg, variant, lake))
}

/// `train`: one model version, registered.
fn train_command(cli: &Cli, args: &cli::TrainArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let (cfg, variant, lake) = train_setup(cli, &args.flags)?;
    let request = training::TrainRequest {
        model: args.model.clone(),
        from: args.from,
        to: args.to,
        variant,
        settings: cfg.train.clone(),
        warm_start: args.warm_start.clone(),
        resume: args.resume,
        slices: Default::default(),
        progress: true,
    };
    let outcome = runtime.block_on(training::train(&lake, &request))?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!(
            "{}@v{}{}: {} samples, {} steps, {:.1}s ({:.0} samples/s), final CTR loss {}",
            outcome.model,
            outcome.version,
            if outcome.reused { " (already registered by an identical run)" } else { "" },
            outcome.samples,
            outcome.steps,
            outcome.seconds,
            outcome.samples_per_second,
            outcome.final_ctr_loss.map_or("-".into(), |l| format!("{l:.4}"))
        );
    }
    Ok(())
}

/// `evaluate`: a version on one day or a range, with an optional report.
fn evaluate_command(cli: &Cli, args: &cli::EvaluateArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let mut cfg = load_config(cli)?;
    if let Some(d) = &args.device {
        cfg.train.device = d.clone();
    }
    cfg.validate()?;
    let lake = Lake::open(&cfg.lake)?;
    let e = runtime.block_on(evaluate::evaluate(
        &lake,
        &args.model,
        args.date,
        args.to.unwrap_or(args.date),
        data::Slice::All,
        &cfg.train.device,
        cfg.train.recall_users,
    ))?;
    if let Some(dir) = &args.report {
        let (_, files) = runtime.block_on(training::load_version(&lake, &format!("{}@v{}", e.model, e.version)))?;
        let record = training::training_record(&files).with_context(|| format!("{}@v{}", e.model, e.version))?;
        let written = evaluate::write_report(dir, &e, record.as_ref())?;
        tracing::info!(files = written.len(), dir = %dir.display(), "report written");
    }
    if args.json {
        println!("{}", serde_json::to_string(&e)?);
    } else {
        print!("{}", evaluate::markdown(&e, None));
    }
    Ok(())
}

/// `models`: the registry (list, show, promote, rollback, diff, history).
fn models_command(cli: &Cli, args: &cli::ModelsArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let (_, lake) = open_lake(cli)?;
    runtime.block_on(models_cmd::run(&lake, &args.command, &mut std::io::stdout().lock()))
}

/// `run`: the daily job for one day.
fn run_command(cli: &Cli, args: &cli::RunArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let (cfg, variant, lake) = train_setup(cli, &args.flags)?;
    let o = runtime.block_on(daily::run_day(&lake, &cfg, &args.model, variant, args.date, args.promote_if_better))?;
    if args.json {
        println!("{}", serde_json::to_string(&o)?);
    } else {
        let m = &cfg.train.promote_metric;
        println!(
            "{}: trained {}@v{} on {} .. {}{}; evaluated on {} ({}): AUC {}, user AUC {}; candidate → v{}{}",
            o.plan.date,
            o.train.model,
            o.train.version,
            o.plan.from,
            o.plan.date,
            o.plan.warm_start.map_or(String::new(), |v| format!(" warm-started from v{v}")),
            o.plan.eval_date,
            if o.plan.holdout_share.is_some() { "held-out users" } else { "next day" },
            o.candidate.auc.map_or("-".into(), |a| format!("{a:.4}")),
            o.candidate.user_auc.map_or("-".into(), |a| format!("{a:.4}")),
            o.train.version,
            if !args.promote_if_better {
                String::new()
            } else if o.promoted {
                format!("; production → v{} ({m})", o.train.version)
            } else {
                format!(
                    "; production stays v{} ({m} {} vs {})",
                    o.production_before.map_or("-".into(), |v| v.to_string()),
                    o.production_score.map_or("-".into(), |v| format!("{:.4}", v.abs())),
                    o.candidate_score.map_or("-".into(), |v| format!("{:.4}", v.abs()))
                )
            }
        );
    }
    Ok(())
}

/// `export-item-embeddings`: every item's representation of a day.
fn export_command(cli: &Cli, args: &cli::ExportArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let (cfg, lake) = open_lake(cli)?;
    let (rows, width) = runtime.block_on(serving::export_item_embeddings(
        &lake,
        &args.model,
        args.date,
        &args.out,
        &cfg.train.device,
    ))?;
    println!("wrote {rows} item embeddings ({width} wide) to {}", args.out);
    Ok(())
}

/// `score`: a click probability for every sample row of a day.
fn score_command(cli: &Cli, args: &cli::ScoreArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let (cfg, lake) = open_lake(cli)?;
    let rows = runtime.block_on(serving::score(&lake, &args.model, args.date, &args.out, &cfg.train.device))?;
    println!("wrote {rows} scores to {}", args.out);
    Ok(())
}

/// `sql`: a query over the lake's tables.
fn sql_command(cli: &Cli, args: &cli::SqlArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let cfg = load_config(cli)?;
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

fn parse_variant(name: &str) -> Result<marnflow_model::Variant> {
    name.parse().map_err(|e| anyhow::anyhow!(ConfigError(vec![format!("train.variant: {e}")])))
}

fn apply_train_flags(cfg: &mut Config, f: &cli::TrainFlags) -> Result<()> {
    if let Some(v) = &f.variant {
        cfg.train.variant = v.clone();
    }
    if let Some(v) = f.epochs {
        cfg.train.epochs = v;
    }
    if let Some(v) = f.batch_size {
        cfg.train.batch_size = usize::try_from(v)?;
    }
    if let Some(v) = &f.device {
        cfg.train.device = v.clone();
    }
    Ok(())
}

/// The config file and environment, with the global flags applied (not yet validated).
fn load_config(cli: &Cli) -> Result<Config> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    apply_common_flags(&mut cfg, cli);
    Ok(cfg)
}

/// For commands without flags of their own: the validated config and its lake.
fn open_lake(cli: &Cli) -> Result<(Config, Lake)> {
    let cfg = load_config(cli)?;
    cfg.validate()?;
    let lake = Lake::open(&cfg.lake)?;
    Ok((cfg, lake))
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

async fn import(lake: &Lake, source: &cli::ImportSource) -> Result<()> {
    use marnflow_pipeline::import;
    let common = match source {
        cli::ImportSource::Movielens { common, .. } | cli::ImportSource::Amazon { common, .. } => common,
    };
    if !(0.0..=1.0).contains(&common.max_bad_share) {
        bail!(ConfigError(vec![format!("--max-bad-share {} is not in 0..1", common.max_bad_share)]));
    }
    let (name, data) = match source {
        cli::ImportSource::Movielens { input, positive_rating, .. } => {
            ("movielens", import::movielens::read(input, *positive_rating)?)
        }
        cli::ImportSource::Amazon { reviews, meta, image_features, image_dim, .. } => {
            let input = import::amazon::AmazonInput {
                reviews: reviews.clone(),
                meta: meta.clone(),
                image_features: image_features.clone(),
                image_dim: *image_dim as usize,
                seed: common.seed,
            };
            ("amazon", import::amazon::read(&input)?)
        }
    };
    let words = import::WordVectorSource {
        file: common.word_vectors.clone(),
        dim: common.word_dim as usize,
        seed: common.seed,
    };
    let s = import::write(lake, name, data, &words, common.max_bad_share).await?;
    if common.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "imported {} into {}", s.source, s.lake)?;
    writeln!(out, "  {:<22} {} .. {} ({} days)", "days", s.first_day, s.last_day, s.days)?;
    for (k, v) in [
        ("users", s.users as u64),
        ("items", s.items as u64),
        ("categories", s.categories as u64),
        ("exposures", s.exposures),
        ("clicks", s.clicks),
        ("items with an image", s.items_with_image as u64),
        ("title tokens", s.tokens as u64),
        ("  with a pretrained vector", s.tokens_pretrained as u64),
        ("lines read", s.lines_read),
        ("lines quarantined", s.lines_quarantined),
    ] {
        writeln!(out, "  {k:<22} {v}")?;
    }
    writeln!(out, "  {:<22} {:.4}", "click rate", s.click_rate)?;
    for (reason, n) in &s.quarantine_reasons {
        writeln!(out, "    {n} × {reason}")?;
    }
    if let Some(q) = &s.quarantine {
        writeln!(
            out,
            "  quarantined lines are in {q}/ (marnflow sql \"SELECT * FROM quarantine.import_{}\")",
            s.source
        )?;
    }
    for (k, v) in &s.notes {
        writeln!(out, "  {k:<22} {v}")?;
    }
    writeln!(out, "next: marnflow --lake {} features --from {} --to {}", s.lake, s.first_day, s.last_day)?;
    Ok(())
}

/// The models the demo trains, in the order of the paper's Table 3 (baselines first).
const DEMO_VARIANTS: [&str; 4] = ["youtube_net", "ids", "conc", "marn"];

/// The models of the MovieLens demo: baselines, then MARN's ablations (no images there).
const MOVIELENS_VARIANTS: [&str; 7] = ["lr", "youtube_net", "din", "ids", "conc", "maf", "marn"];

async fn demo(cfg: &Config, args: &cli::DemoArgs) -> Result<()> {
    let lake = Lake::open(&cfg.lake)?;
    let demo_started = std::time::Instant::now();
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
    anyhow::ensure!(last > first, "the demo needs at least two days: one to train on, one to evaluate");
    let train_to = last - chrono::Duration::days(1);
    writeln!(out, "\ntraining on {first} .. {train_to}, evaluating on {last} (the paper's Table 3, on this world):")?;
    out.flush()?;
    drop(out);
    let names = variant_list(args, &DEMO_VARIANTS);
    let rows = compare_models(&lake, cfg, "demo", &names, (first, train_to), (last, last), &args.report).await?;
    finish_demo(cfg, &rows, &format!("on {last}"), &args.report, demo_started)
}

/// The MovieLens demo: import, features, then the models trained on all but the last
/// `--test-days` days and evaluated on those, pooled.
async fn demo_movielens(cfg: &Config, args: &cli::DemoArgs, dir: &std::path::Path) -> Result<()> {
    use marnflow_pipeline::import;
    let lake = Lake::open(&cfg.lake)?;
    let demo_started = std::time::Instant::now();
    let mut data = import::movielens::read(dir, import::movielens::DEFAULT_POSITIVE_RATING)?;
    if let Some(since) = args.since {
        let start = since.and_hms_opt(0, 0, 0).context("--since")?.and_utc().timestamp_millis();
        let before = data.interactions.len();
        data.interactions.retain(|i| i.time_ms >= start);
        let left_out = before - data.interactions.len();
        data.notes.insert("ratings_before_since".into(), serde_json::json!(left_out));
        tracing::info!(%since, left_out, "--since: ratings before it are not imported");
    }
    let words = import::WordVectorSource::default();
    let s = import::write(&lake, "movielens", data, &words, import::DEFAULT_MAX_BAD_SHARE).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "imported MovieLens from {}: {} ratings ({} clicks: rating >= {}) of {} users on {} movies, {} .. {}",
        dir.display(),
        s.exposures,
        s.clicks,
        import::movielens::DEFAULT_POSITIVE_RATING,
        s.users,
        s.items,
        s.first_day,
        s.last_day
    )?;
    let parse = |d: &str| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").context("import summary date");
    let (first, last) = (parse(&s.first_day)?, parse(&s.last_day)?);
    let from = first;
    let test_from = last - chrono::Duration::days(i64::from(args.test_days) - 1);
    anyhow::ensure!(
        test_from > from,
        "--since {from} leaves no day to train on before the {} test days from {test_from}",
        args.test_days
    );
    let started = std::time::Instant::now();
    writeln!(out, "building features for {from} .. {last} ({} days)", (last - from).num_days() + 1)?;
    out.flush()?;
    let reports = run_features(&lake, &cfg.features, from, last, None).await.context("building MovieLens features")?;
    let samples: u64 = reports.iter().map(|r| r.samples).sum();
    writeln!(out, "  {samples} samples in {:.1}s", started.elapsed().as_secs_f64())?;
    let train_to = test_from - chrono::Duration::days(1);
    writeln!(out, "\ntraining on {from} .. {train_to}, evaluating on {test_from} .. {last} (pooled):")?;
    out.flush()?;
    drop(out);
    let names = variant_list(args, &MOVIELENS_VARIANTS);
    let rows =
        compare_models(&lake, cfg, "movielens", &names, (from, train_to), (test_from, last), &args.report).await?;
    finish_demo(cfg, &rows, &format!("MovieLens-100K, {test_from} .. {last}"), &args.report, demo_started)
}

fn variant_list(args: &cli::DemoArgs, default: &[&str]) -> Vec<String> {
    let given = &args.variants;
    if args.table2 {
        marnflow_model::Variant::table2().iter().map(|v| v.to_string()).collect()
    } else if given.is_empty() {
        default.iter().map(|v| v.to_string()).collect()
    } else {
        given.to_vec()
    }
}

type Compared = (String, training::TrainOutcome, evaluate::Evaluation);

/// Trains each of `names` as `<prefix>-<name>` on `train`, evaluates it on `eval` and writes its
/// report into `report/<name>/`.
async fn compare_models(
    lake: &Lake,
    cfg: &Config,
    prefix: &str,
    names: &[String],
    train: (chrono::NaiveDate, chrono::NaiveDate),
    eval: (chrono::NaiveDate, chrono::NaiveDate),
    report: &std::path::Path,
) -> Result<Vec<Compared>> {
    let mut rows = Vec::new();
    for name in names {
        let variant = parse_variant(name)?;
        let started = std::time::Instant::now();
        let outcome = training::train(
            lake,
            &training::TrainRequest {
                model: format!("{prefix}-{name}"),
                from: train.0,
                to: train.1,
                variant,
                settings: cfg.train.clone(),
                warm_start: None,
                resume: false,
                slices: Default::default(),
                progress: true,
            },
        )
        .await
        .with_context(|| format!("training {name}"))?;
        let spec = format!("{prefix}-{name}@v{}", outcome.version);
        let e = evaluate::evaluate(
            lake,
            &spec,
            eval.0,
            eval.1,
            data::Slice::All,
            &cfg.train.device,
            cfg.train.recall_users,
        )
        .await
        .with_context(|| format!("evaluating {name}"))?;
        let (_, files) = training::load_version(lake, &spec).await?;
        let record = training::training_record(&files).with_context(|| format!("model {spec}"))?;
        evaluate::write_report(&report.join(name), &e, record.as_ref())?;
        tracing::info!(model = %name, seconds = started.elapsed().as_secs_f64(), "trained and evaluated");
        rows.push((name.clone(), outcome, e));
    }
    Ok(rows)
}

/// Prints and writes the comparison table and the decile chart.
fn finish_demo(
    cfg: &Config,
    rows: &[Compared],
    period: &str,
    report: &std::path::Path,
    started: std::time::Instant,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let table = demo_table(rows);
    writeln!(out, "{table}")?;
    std::fs::create_dir_all(report).with_context(|| format!("cannot create {}", report.display()))?;
    std::fs::write(report.join("table3.md"), &table).with_context(|| format!("cannot write {}", report.display()))?;
    let deciles = plot::BarChart {
        title: format!("AUC per item-popularity decile, {period} (Table 4)"),
        y_label: "AUC".into(),
        labels: (1..=10).map(|d| d.to_string()).collect(),
        groups: rows
            .iter()
            .map(|(name, _, e)| plot::BarGroup {
                name: name.to_string(),
                values: e.deciles.iter().map(|d| d.auc.unwrap_or(f64::NAN)).collect(),
            })
            .collect(),
        y_min: Some(0.5),
    };
    use plot::Chart;
    std::fs::write(report.join("deciles.svg"), deciles.svg())?;
    std::fs::write(report.join("deciles.png"), deciles.png().map_err(|e| anyhow::anyhow!("deciles.png: {e}"))?)?;
    writeln!(
        out,
        "report: {}/table3.md, per-model reports (summary.md; loss, ddma, deciles, attention, modality_space as .png/.svg) in {}/<model>/",
        report.display(),
        report.display()
    )?;
    writeln!(out, "demo finished in {:.1}s", started.elapsed().as_secs_f64())?;
    writeln!(out, "\nquery it yourself: marnflow --lake {} sql \"SHOW TABLES\"", cfg.lake)?;
    writeln!(out, "the registry: marnflow --lake {} models list", cfg.lake)?;
    Ok(())
}

/// The Table-3-shaped comparison of the demo.
fn demo_table(rows: &[Compared]) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let mut s = String::from(
        "| model | AUC | user AUC | log loss | AUC deciles 1-3 | AUC unseen items | recall@50 unseen | train samples/s |\n|---|---|---|---|---|---|---|---|\n",
    );
    let oracle = rows.iter().find_map(|(_, _, e)| e.oracle_auc);
    for (name, t, e) in rows {
        let low: Vec<f64> = e.deciles.iter().take(3).filter_map(|d| d.auc).collect();
        let low = (!low.is_empty()).then(|| low.iter().sum::<f64>() / low.len() as f64);
        s += &format!(
            "| {name} | {} | {} | {:.4} | {} | {} | {} | {:.0} |\n",
            f(e.auc),
            f(e.user_auc),
            e.logloss,
            f(low),
            f(e.unseen.auc_unseen_rows),
            f(e.unseen.recall.get(&50).copied()),
            t.samples_per_second
        );
    }
    if oracle.is_some() {
        s += &format!("| Bayes-optimal (truth/) | {} | | | | | | |\n", f(oracle));
    }
    s
}
