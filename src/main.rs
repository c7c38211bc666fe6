//! The `marnflow` binary: parses flags, loads config, installs logging, and calls the
//! pipeline and model crates. No work of its own lives here.

mod cli;
mod models_cmd;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use marnflow_pipeline::features::{run_features, RawFormat};
use marnflow_pipeline::lake::Lake;
use marnflow_pipeline::query::{write_batches, LakeSession, OutputFormat};
use marnflow_pipeline::world::WorldConfig;
use marnflow_pipeline::PipelineError;

use cli::{Cli, Command, LogFormat, SqlFormat};
use marnflow_engine::config::{Config, ConfigError};
use marnflow_engine::demo::{generate_with_progress, print_summary, DemoOptions, DEMO_CONFIG, MOVIELENS_CONFIG};
use marnflow_engine::{daily, data, evaluate, serving, training};

fn main() -> ExitCode {
    marnflow_model::device::restart_with_retaining_malloc();
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
            "warn,marnflow={level},marnflow_pipeline={level},marnflow_model={level},ballista_scheduler={level},ballista_executor={level}"
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
        Command::Stream(ref args) => stream_command(&cli, args, &runtime),
        Command::Replay(ref args) => replay_command(&cli, args, &runtime),
        Command::Train(ref args) => train_command(&cli, args, &runtime),
        Command::Evaluate(ref args) => evaluate_command(&cli, args, &runtime),
        Command::Models(ref args) => models_command(&cli, args, &runtime),
        Command::Run(ref args) => run_command(&cli, args, &runtime),
        Command::ExportItemEmbeddings(ref args) => export_command(&cli, args, &runtime),
        Command::Score(ref args) => score_command(&cli, args, &runtime),
        Command::Sql(ref args) => sql_command(&cli, args, &runtime),
        Command::Cluster(ref args) => cluster_command(args, &runtime),
    }
}

/// `demo`: the embedded world (or MovieLens), features, models compared, a report.
fn demo_command(cli: &Cli, args: &cli::DemoArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let base = match args.movielens {
        Some(_) => ("embedded configs/movielens.toml", MOVIELENS_CONFIG),
        None => ("embedded configs/demo.toml", DEMO_CONFIG),
    };
    // The embedded file replaces --config; the MARNFLOW_* variables still apply (e.g.
    // MARNFLOW_TRAIN_SEED for another training seed), then the flags.
    let mut cfg = Config::layered(Some(base), std::env::vars())?;
    cfg.generate.seed = args.seed;
    if let Some(e) = args.epochs {
        cfg.train.epochs = e;
    }
    if let Some(lake) = &cli.lake {
        cfg.lake = lake.clone();
    }
    cfg.validate()?;
    let options = DemoOptions {
        report: args.report.clone(),
        since: args.since,
        test_days: args.test_days,
        variants: args.variants.clone(),
        table2: args.table2,
    };
    match &args.movielens {
        Some(dir) => runtime.block_on(marnflow_engine::demo::demo_movielens(&cfg, &options, dir)),
        None => runtime.block_on(marnflow_engine::demo::demo(&cfg, &options)),
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

/// `cluster scheduler|executor`: one process of a Ballista cluster, until it is stopped.
fn cluster_command(args: &cli::ClusterArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    use marnflow_pipeline::cluster;
    match &args.role {
        cli::ClusterRole::Scheduler { bind, executor_timeout } => runtime
            .block_on(cluster::scheduler(*bind, std::time::Duration::from_secs(*executor_timeout)))
            .context("the Ballista scheduler stopped"),
        cli::ClusterRole::Executor { scheduler, bind, external_host, concurrent_tasks, work_dir, heartbeat } => {
            let (host, port) = scheduler
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .filter(|(h, _)| !h.is_empty())
                .ok_or_else(|| ConfigError(vec![format!("--scheduler {scheduler:?}: give HOST:PORT")]))?;
            let opts = cluster::ExecutorOptions {
                scheduler: (host, port),
                bind: *bind,
                external_host: external_host.clone(),
                concurrent_tasks: concurrent_tasks.map(usize::try_from).transpose()?,
                work_dir: work_dir.clone(),
                heartbeat: std::time::Duration::from_secs(*heartbeat),
            };
            runtime.block_on(cluster::executor(opts)).context("the Ballista executor stopped")
        }
    }
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
            cli::RawFormat::Parquet => RawFormat::Parquet,
            cli::RawFormat::Csv => RawFormat::Csv,
            cli::RawFormat::Json => RawFormat::Json,
        };
    }
    if let Some(e) = &args.engine {
        cfg.features.engine = e.parse().map_err(|e: String| ConfigError(vec![format!("--engine: {e}")]))?;
    }
    if let Some(n) = args.partitions {
        cfg.features.partitions = usize::try_from(n)?;
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
        if let Some(r) = reports.first() {
            match &r.windows_resumed_from {
                Some(d) => writeln!(out, "windows: resumed from the window state left for {d}")?,
                None => writeln!(out, "windows: rebuilt from the daily aggregates")?,
            }
        }
    }
    Ok(())
}

/// `replay`: another lake's raw logs written into this one slice by slice.
fn replay_command(cli: &Cli, args: &cli::ReplayArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    use marnflow_pipeline::replay::{replay, ReplayOptions};
    let cfg = load_config(cli)?;
    cfg.validate()?;
    let to = args.to.unwrap_or(args.from);
    let mut problems = Vec::new();
    if to < args.from {
        problems.push(format!("--to {to} is before --from {}", args.from));
    }
    if !(0.0..=24.0).contains(&args.start_hour) {
        problems.push(format!("--start-hour {}: allowed 0 to 24", args.start_hour));
    }
    if args.hours.is_some_and(|h| !(h > 0.0 && h.is_finite())) {
        problems.push("--hours: give a positive number of hours".into());
    }
    if !problems.is_empty() {
        bail!(ConfigError(problems));
    }
    let source = Lake::open(&args.source)?;
    let target = Lake::open(&cfg.lake)?;
    if source.uri() == target.uri() {
        bail!(ConfigError(vec![format!("--source {} is the lake written to: give another lake", args.source)]));
    }
    let opts = ReplayOptions {
        from: args.from,
        to,
        slice_seconds: args.slice_seconds,
        speed: args.speed,
        start_hour: args.start_hour,
        hours: args.hours,
    };
    let report = runtime
        .block_on(replay(&source, &target, &opts, |day, at, files| {
            tracing::debug!(day = %day, slice_start_s = at, files, "slice written");
        }))
        .with_context(|| format!("replaying {} into {}", source.uri(), target.uri()))?;
    println!("replayed {} rows in {} files in {:.1} s", report.rows, report.files, report.seconds);
    Ok(())
}

/// One part trained online, on stdout (a JSON object with `"event": "trained"`, or a line).
fn print_online(r: &marnflow_engine::online::OnlineReport, json: bool) {
    let line = if json {
        match serde_json::to_value(r) {
            Ok(serde_json::Value::Object(mut m)) => {
                m.insert("event".into(), "trained".into());
                serde_json::Value::Object(m).to_string()
            }
            _ => return,
        }
    } else {
        format!(
            "{:<12} trained part {:>5}: {:>7} rows, {:.0} samples/s, online AUC {}{}",
            r.date,
            r.part,
            r.rows,
            r.samples_per_second,
            r.online_auc.map_or("-".to_string(), |a| format!("{a:.4}")),
            r.registered.map_or(String::new(), |v| format!(", registered v{v}"))
        )
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `stream`: the feature job following the raw logs, day by day as each closes.
fn stream_command(cli: &Cli, args: &cli::StreamArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    use marnflow_pipeline::stream::{run_stream, StreamEvent, StreamOptions};
    let mut cfg = load_config(cli)?;
    if let Some(w) = args.workers {
        cfg.features.workers = usize::try_from(w)?;
    }
    cfg.validate()?;
    if let (Some(from), Some(until)) = (args.from, args.until) {
        if until < from {
            bail!(ConfigError(vec![format!("--until {until} is before --from {from}")]));
        }
    }
    let opts = StreamOptions {
        from: args.from,
        until: args.until,
        once: args.once,
        poll: std::time::Duration::from_secs_f64(args.poll_seconds),
        lateness: std::time::Duration::from_secs_f64(args.lateness_seconds),
        out_of_order: std::time::Duration::from_secs_f64(args.out_of_order_seconds),
    };
    let lake = Lake::open(&cfg.lake)?;
    let json = args.json;
    let online = args.train.as_ref().map(|model| marnflow_engine::online::OnlineOptions {
        model: model.clone(),
        every_steps: args.register_every_steps,
        every: std::time::Duration::from_secs_f64(args.register_every_minutes * 60.0),
        poll: opts.poll,
        once: args.once,
        settings: cfg.train.clone(),
    });
    if let Some(o) = &online {
        marnflow_registry::validate_name("model", &o.model)?;
        if cfg.features.label_window_seconds == 0 {
            bail!(ConfigError(vec![
                "--train trains on the rows emitted within the day: set features.label_window_seconds (e.g. 60)".into()
            ]));
        }
    }
    // Online training follows the lake on a thread of its own. A failure does not stop the
    // stream (its rows and days go on): it is logged, and training starts again from its saved
    // state after a pause that doubles up to 10 minutes.
    if let (Some(o), false) = (&online, args.once) {
        let (o, lake) = (o.clone(), lake.clone());
        std::thread::Builder::new().name("online-training".into()).spawn(move || {
            let mut pause = std::time::Duration::from_secs(30);
            loop {
                let done = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| {
                        rt.block_on(marnflow_engine::online::run_online(&lake, &o, |r| print_online(r, json)))
                    });
                match done {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::error!(
                            error = format!("{e:#}"),
                            retry_in_seconds = pause.as_secs(),
                            "online training failed; the stream goes on, and training starts again from its saved state"
                        );
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(std::time::Duration::from_secs(600));
                    }
                }
            }
        })?;
    }
    let mut header = false;
    let built = runtime
        .block_on(run_stream(&lake, &cfg.features, &opts, |event| {
            let mut out = std::io::stdout().lock();
            let line = if json {
                serde_json::to_string(event).map_err(std::io::Error::other)
            } else {
                match event {
                    StreamEvent::Day(day) => {
                        if !header {
                            header = true;
                            let _ = writeln!(
                                out,
                                "{:<12} {:>9} {:>12} {:>9} {:>10} {:>8} {:>4} {:>9} {:>5}",
                                "day",
                                "seconds",
                                "raw events/s",
                                "samples",
                                "window ms",
                                "ctr",
                                "lag",
                                "delay s",
                                "late"
                            );
                        }
                        Ok(format!(
                            "{:<12} {:>9.2} {:>12.0} {:>9} {:>10.1} {:>8.4} {:>4} {:>9.1} {:>5}",
                            day.date,
                            day.seconds,
                            day.events_per_second,
                            day.report.samples,
                            day.window_step_ms,
                            day.report.positive_rate,
                            day.lag_days,
                            day.delay_seconds,
                            day.late_files
                        ))
                    }
                    StreamEvent::Part(p) => Ok(format!(
                        "{:<12} part {:>5}: {:>7} rows through {}, {:.0} raw events/s, delay p50 {:.2} s p99 {:.2} s",
                        p.date,
                        p.part,
                        p.rows,
                        p.emitted_through,
                        p.events_per_second,
                        p.delay_p50_seconds,
                        p.delay_p99_seconds
                    )),
                }
            };
            // A closed stdout (a pipe whose reader went away) must not stop the stream.
            if let Ok(line) = line {
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }))
        .with_context(|| format!("streaming features in {}", lake.uri()))?;
    if let (Some(o), true) = (&online, args.once) {
        runtime
            .block_on(marnflow_engine::online::run_online(&lake, o, |r| print_online(r, json)))
            .with_context(|| format!("training {} online", o.model))?;
    }
    tracing::info!(days = built, "stream stopped");
    Ok(())
}

/// The config with the training flags applied and validated, its variant, and the lake
/// (`train` and `run`).
fn train_setup(cli: &Cli, flags: &cli::TrainFlags) -> Result<(Config, marnflow_model::Variant, Lake)> {
    let mut cfg = load_config(cli)?;
    apply_train_flags(&mut cfg, flags)?;
    cfg.validate()?;
    let variant = cfg.train.model.variant;
    let lake = Lake::open(&cfg.lake)?;
    Ok((cfg, variant, lake))
}

/// `train`: one model version, registered.
fn train_command(cli: &Cli, args: &cli::TrainArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let (cfg, variant, lake) = train_setup(cli, &args.flags)?;
    let workers = args.workers.unwrap_or(1);
    if cfg.train.batch_size as u64 % workers != 0 {
        return Err(ConfigError(vec![format!(
            "train.batch_size {} is the global batch: it must be a multiple of the {workers} replicas (--workers)",
            cfg.train.batch_size
        )])
        .into());
    }
    let world = std::env::var(replicas_env::WORLD_SIZE).ok();
    let replicas = match (world, workers) {
        (None, 1) => None,
        // The launcher: this process starts the N replicas on this machine and waits for them.
        (None, n) => return launch_replicas(n),
        (Some(size), n) if size != n.to_string() => {
            return Err(ConfigError(vec![format!(
                "mpirun started {size} processes but --workers is {n}: give --workers {size}"
            )])
            .into())
        }
        (Some(_), _) => Some(replicas_env::connect()?),
    };
    let rank = replicas.as_ref().map_or(0, |c| c.rank());
    let abort = replicas.clone();
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
        replicas,
    };
    let outcome = match (runtime.block_on(training::train(&lake, &request)), abort) {
        (Ok(outcome), _) => outcome,
        // A failed replica ends them all: the others would wait for it in the next exchange.
        (Err(e), Some(replicas)) => {
            eprintln!("error: replica {rank}: {e:#}");
            replicas.abort(1)
        }
        (Err(e), None) => return Err(e),
    };
    if rank != 0 {
        // Rank 0 registered the version and reports it.
        return Ok(());
    }
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

/// `train --workers N` on one machine: `mpirun -n N` of this same command (which each replica
/// recognizes by Open MPI's environment), with the settings one machine needs, its exit status
/// passed on.
fn launch_replicas(n: u64) -> Result<()> {
    if !cfg!(feature = "mpi") {
        return Err(ConfigError(vec![format!(
            "--workers {n} needs a marnflow built with data-parallel training: \
             `cargo build --release --features mpi` (Open MPI and libclang first: bash ops/setup-mpi.sh)"
        )])
        .into());
    }
    let exe = std::env::current_exe().context("finding this program to start its replicas")?;
    let mut cmd = std::process::Command::new("mpirun");
    cmd.args(["-n", &n.to_string(), "--oversubscribe", "--bind-to", "none"]);
    // One machine: shared memory between the replicas, without the kernel's cross-memory attach
    // (refused in many containers).
    cmd.args(["--mca", "btl", "self,vader", "--mca", "btl_vader_single_copy_mechanism", "none"]);
    // Open MPI refuses to start as root unless told (containers, CI): /proc/self belongs to this
    // process's effective user.
    if std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0) {
        cmd.arg("--allow-run-as-root");
    }
    cmd.arg(exe).args(std::env::args_os().skip(1));
    tracing::info!(replicas = n, "starting the replicas with mpirun");
    let status = cmd.status().map_err(|e| {
        anyhow::anyhow!("starting mpirun for --workers {n}: {e} (Open MPI's launcher; Debian: bash ops/setup-mpi.sh)")
    })?;
    if !status.success() {
        bail!("the {n} training replicas failed ({status}); their messages are above");
    }
    Ok(())
}

/// The replicas' side of `train --workers N`.
mod replicas_env {
    /// Set by Open MPI's launcher in every process it starts.
    pub const WORLD_SIZE: &str = "OMPI_COMM_WORLD_SIZE";

    #[cfg(feature = "mpi")]
    pub fn connect() -> anyhow::Result<std::sync::Arc<dyn marnflow_model::Collective>> {
        Ok(std::sync::Arc::new(marnflow_engine::replicas::MpiCollective::init()?))
    }

    #[cfg(not(feature = "mpi"))]
    pub fn connect() -> anyhow::Result<std::sync::Arc<dyn marnflow_model::Collective>> {
        anyhow::bail!(
            "started by mpirun, but this marnflow was built without data-parallel training: \
             `cargo build --release --features mpi`"
        )
    }
}

/// `evaluate`: a version on one day or a range, with an optional report.
fn evaluate_command(cli: &Cli, args: &cli::EvaluateArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let mut cfg = load_config(cli)?;
    if let Some(d) = args.device {
        cfg.train.device = d;
    }
    cfg.validate()?;
    let lake = Lake::open(&cfg.lake)?;
    let e = runtime.block_on(evaluate::evaluate(
        &lake,
        &args.model,
        args.date,
        args.to.unwrap_or(args.date),
        data::Slice::All,
        cfg.train.device,
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
        cfg.train.device,
    ))?;
    println!("wrote {rows} item embeddings ({width} wide) to {}", args.out);
    Ok(())
}

/// `score`: a click probability for every sample row of a day.
fn score_command(cli: &Cli, args: &cli::ScoreArgs, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let (cfg, lake) = open_lake(cli)?;
    let rows = runtime.block_on(serving::score(&lake, &args.model, args.date, &args.out, cfg.train.device))?;
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

fn apply_train_flags(cfg: &mut Config, f: &cli::TrainFlags) -> Result<()> {
    if let Some(v) = f.variant {
        cfg.train.model.variant = v;
    }
    if let Some(v) = f.epochs {
        cfg.train.epochs = v;
    }
    if let Some(v) = f.batch_size {
        cfg.train.batch_size = usize::try_from(v)?;
    }
    if let Some(v) = f.device {
        cfg.train.device = v;
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
