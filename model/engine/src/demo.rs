//! `marnflow demo`: a generated world (or MovieLens-100K) taken through every stage — world or
//! import, features, the analyst queries, the models trained and evaluated — into a report.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::NaiveDate;
use marnflow_model::Variant;
use marnflow_pipeline::features::run_features;
use marnflow_pipeline::lake::Lake;
use marnflow_pipeline::query::{write_batches, LakeSession, OutputFormat};
use marnflow_pipeline::world::{generate, WorldConfig, WorldSummary};

use crate::config::Config;
use crate::{data, evaluate, plot, training};

/// The demo world's configuration, embedded so `marnflow demo` needs no file.
pub const DEMO_CONFIG: &str = include_str!("../../../configs/demo.toml");
/// The MovieLens demo's configuration.
pub const MOVIELENS_CONFIG: &str = include_str!("../../../configs/movielens.toml");
/// Analyst queries the demo shows (they live in sql/analysis/ for everyone to reuse).
const DEMO_QUERIES: [(&str, &str); 4] = [
    ("rows and click rate per day", include_str!("../../../sql/analysis/rows_per_day.sql")),
    ("click rate by slate position", include_str!("../../../sql/analysis/ctr_by_position.sql")),
    ("planted category profiles", include_str!("../../../sql/analysis/modality_profiles.sql")),
    ("training samples per day (marnflow features)", include_str!("../../../sql/analysis/samples_per_day.sql")),
];

/// What the demo trains and where it reports.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Folder of the report.
    pub report: PathBuf,
    /// MovieLens: import only the ratings from this day on.
    pub since: Option<NaiveDate>,
    /// MovieLens: the last N days are evaluated on (pooled).
    pub test_days: u32,
    /// Models to train (empty: the default few).
    pub variants: Vec<Variant>,
    /// Every model of the paper's Table 2 instead.
    pub table2: bool,
}

/// Generates the world, with a progress bar on a terminal.
pub async fn generate_with_progress(lake: &Lake, cfg: &WorldConfig) -> Result<WorldSummary> {
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

/// The world summary `generate` and `demo` print.
pub fn print_summary(lake: &Lake, s: &WorldSummary, out: &mut dyn Write) -> Result<()> {
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

/// The models the demo trains, in the order of the paper's Table 3 (baselines first).
const DEMO_VARIANTS: [Variant; 4] = [Variant::YoutubeNet, Variant::Ids, Variant::Conc, Variant::Marn];

/// The models of the MovieLens demo: baselines, then MARN's ablations (no images there).
const MOVIELENS_VARIANTS: [Variant; 7] =
    [Variant::Lr, Variant::YoutubeNet, Variant::Din, Variant::Ids, Variant::Conc, Variant::Maf, Variant::Marn];

/// The generated-world demo: world, features, the analyst queries, models compared, a report.
pub async fn demo(cfg: &Config, args: &DemoOptions) -> Result<()> {
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
pub async fn demo_movielens(cfg: &Config, args: &DemoOptions, dir: &Path) -> Result<()> {
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

fn variant_list(args: &DemoOptions, default: &[Variant]) -> Vec<Variant> {
    if args.table2 {
        Variant::table2()
    } else if args.variants.is_empty() {
        default.to_vec()
    } else {
        args.variants.clone()
    }
}

type Compared = (String, training::TrainOutcome, evaluate::Evaluation);

/// Trains each of `names` as `<prefix>-<name>` on `train`, evaluates it on `eval` and writes its
/// report into `report/<name>/`.
async fn compare_models(
    lake: &Lake,
    cfg: &Config,
    prefix: &str,
    names: &[Variant],
    train: (chrono::NaiveDate, chrono::NaiveDate),
    eval: (chrono::NaiveDate, chrono::NaiveDate),
    report: &Path,
) -> Result<Vec<Compared>> {
    let mut rows = Vec::new();
    for &variant in names {
        let name = variant.as_str();
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
                replicas: None,
            },
        )
        .await
        .with_context(|| format!("training {name}"))?;
        let spec = format!("{prefix}-{name}@v{}", outcome.version);
        let e =
            evaluate::evaluate(lake, &spec, eval.0, eval.1, data::Slice::All, cfg.train.device, cfg.train.recall_users)
                .await
                .with_context(|| format!("evaluating {name}"))?;
        let (_, files) = training::load_version(lake, &spec).await?;
        let record = training::training_record(&files).with_context(|| format!("model {spec}"))?;
        evaluate::write_report(&report.join(name), &e, record.as_ref())?;
        tracing::info!(model = %name, seconds = started.elapsed().as_secs_f64(), "trained and evaluated");
        rows.push((name.to_string(), outcome, e));
    }
    Ok(rows)
}

/// Prints and writes the comparison table and the decile chart.
fn finish_demo(
    cfg: &Config,
    rows: &[Compared],
    period: &str,
    report: &Path,
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
