//! `marnflow run --date D`: the scheduled daily job.
//!
//! 1. Features for D (rewriting D's partitions with the same bytes when rerun).
//! 2. Train on the trailing `train.window_days` days ending at D that have samples, warm-started
//!    from `production` when it exists and has the same variant.
//! 3. Evaluate on D+1 when its samples exist; otherwise a held-out slice of D: the users whose
//!    id hashes below `train.holdout_share` are left out of D's training rows and evaluated.
//! 4. Register the version and point `candidate` at it; with `--promote-if-better`, evaluate
//!    `production` on the same rows and promote the candidate when it is better on
//!    `train.promote_metric` (or when there is no production yet).
//!
//! Safeguards: a day without samples (its raw logs have not landed) fails before anything is
//! planned or registered; every file of the version is checked against its checksum before it
//! becomes candidate or production, even when a saved evaluation is reused; and a version that
//! production was moved away from (a rollback) is never promoted again automatically.
//!
//! Rerunning a day is safe: the plan of a day (warm-start version, evaluation rows) is written
//! before training, so a rerun — after a kill at any point, or after completion — trains the same
//! run key (the registered version is found, or the training resumes from its last checkpoint),
//! reuses the saved evaluations, and moves aliases only where they are not already in place.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use chrono::{Duration, NaiveDate};
use marnflow_model::Variant;
use marnflow_pipeline::features::{run_features, SAMPLES};
use marnflow_pipeline::lake::Lake;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::config::Config;
use crate::data::{self, day_string, Slice};
use crate::evaluate::{self, saved_evaluation, Evaluation};
use crate::training::{self, registry, TrainOutcome, TrainRequest};

/// What a day's run decided before training (kept so a rerun decides the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    pub date: String,
    pub model: String,
    pub variant: String,
    pub from: String,
    pub warm_start: Option<u32>,
    pub eval_date: String,
    /// The held-out share of D's users, when D+1 was not available.
    pub holdout_share: Option<f64>,
}

/// What a day's run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub plan: RunPlan,
    pub train: TrainOutcome,
    pub candidate: Evaluation,
    pub production_before: Option<u32>,
    pub production_score: Option<f64>,
    pub candidate_score: Option<f64>,
    pub promoted: bool,
}

fn plan_path(model: &str, date: NaiveDate) -> String {
    format!("runs/{model}/{}.plan.json", day_string(date))
}

async fn has_samples(lake: &Lake, day: NaiveDate) -> Result<bool> {
    Ok(!data::partition_files(lake, SAMPLES, day).await?.is_empty())
}

/// Runs day `date`; see the module docs.
pub async fn run_day(
    lake: &Lake,
    cfg: &Config,
    model: &str,
    variant: Variant,
    date: NaiveDate,
    promote_if_better: bool,
) -> Result<RunOutcome> {
    marnflow_registry::validate_name("model", model)?;
    let settings = &cfg.train;
    let reports = run_features(lake, &cfg.features, date, date, None)
        .await
        .with_context(|| format!("building the features of {}", day_string(date)))?;
    let samples: u64 = reports.iter().map(|r| r.samples).sum();
    info!(date = %day_string(date), samples, "features built");
    // A day whose raw logs have not landed would train on the other days of the window and
    // register a version that learned nothing of D: refuse before anything is registered.
    anyhow::ensure!(
        samples > 0,
        "{} has no samples: its raw logs (raw/exposures/dt={}) have not landed or are empty; rerun the day once they are",
        day_string(date),
        day_string(date)
    );
    let registry = registry(lake);

    let plan =
        match lake.get(&plan_path(model, date)).await.ok().and_then(|b| serde_json::from_slice::<RunPlan>(&b).ok()) {
            Some(plan) => {
                info!(date = %plan.date, "continuing the plan of an earlier run of this day");
                plan
            }
            None => {
                let mut from = date;
                while (date - from).num_days() + 1 < i64::from(settings.window_days)
                    && has_samples(lake, from - Duration::days(1)).await?
                {
                    from -= Duration::days(1);
                }
                let next = date + Duration::days(1);
                let (eval_date, holdout_share) =
                    if has_samples(lake, next).await? { (next, None) } else { (date, Some(settings.holdout_share)) };
                let warm_start = match registry.alias(model, "production").await? {
                    Some(v) => {
                        let m = registry.manifest(model, v).await?;
                        (m.metadata.variant == variant.as_str()).then_some(v)
                    }
                    None => None,
                };
                let plan = RunPlan {
                    date: day_string(date),
                    model: model.to_string(),
                    variant: variant.as_str().to_string(),
                    from: day_string(from),
                    warm_start,
                    eval_date: day_string(eval_date),
                    holdout_share,
                };
                lake.put_atomic(&plan_path(model, date), serde_json::to_vec_pretty(&plan)?).await?;
                plan
            }
        };
    let from = NaiveDate::parse_from_str(&plan.from, "%Y-%m-%d")?;
    let eval_date = NaiveDate::parse_from_str(&plan.eval_date, "%Y-%m-%d")?;
    let variant: Variant = plan.variant.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut slices = BTreeMap::new();
    let eval_slice = match plan.holdout_share {
        Some(share) => {
            slices.insert(date, Slice::Rest(share));
            Slice::HeldOut(share)
        }
        None => Slice::All,
    };
    let train = training::train(
        lake,
        &TrainRequest {
            model: model.to_string(),
            from,
            to: date,
            variant,
            settings: settings.clone(),
            warm_start: plan.warm_start.map(|v| format!("{model}@v{v}")),
            resume: true,
            slices,
            progress: true,
        },
    )
    .await?;
    let version = train.version;
    // A version's evaluation: the saved one, after checking every file of the version against
    // its checksum (evaluating loads, and so checks, the version itself): a damaged version is
    // never made candidate or production.
    let checked = &registry;
    let evaluation = |v: u32| async move {
        match saved_evaluation(lake, model, v, &day_string(eval_date), eval_slice).await? {
            Some(e) => {
                checked.load(model, v).await.with_context(|| format!("checking {model}@v{v} before using it"))?;
                Ok::<Evaluation, anyhow::Error>(e)
            }
            None => {
                evaluate::evaluate(
                    lake,
                    &format!("{model}@v{v}"),
                    eval_date,
                    eval_date,
                    eval_slice,
                    &settings.device,
                    settings.recall_users,
                )
                .await
            }
        }
    };
    let candidate = evaluation(version).await?;
    let current_candidate = registry.alias(model, "candidate").await?;
    if current_candidate != Some(version) {
        registry
            .set_alias(model, "candidate", version, current_candidate, &format!("marnflow run --date {}", plan.date))
            .await?;
    }
    // One read of production's history: where it points now, and whether it was ever moved away
    // from this version (a rollback, or a promotion of another). Such a version is not promoted
    // again automatically: a person took it out, a person puts it back.
    let history = registry.alias_history(model, "production").await?;
    let production = history.last().map(|e| e.version);
    let moved_away = history.iter().find(|e| e.previous == Some(version) && e.version != version);
    let metric = settings.promote_metric.as_str();
    let candidate_score = candidate.score(metric);
    let mut production_score = None;
    let mut promoted = false;
    if promote_if_better && production == Some(version) {
        // A rerun after this version was promoted: production already is the candidate.
        production_score = candidate_score;
        promoted = true;
    } else if let (true, Some(e)) = (promote_if_better, moved_away) {
        tracing::warn!(
            version,
            at = %e.at,
            reason = %e.reason,
            "production was moved away from this version before; not promoting it again (use `marnflow models promote`)"
        );
    } else if promote_if_better {
        let better = match production {
            None => true,
            Some(p) => {
                let e = evaluation(p).await?;
                production_score = e.score(metric);
                match (candidate_score, production_score) {
                    (Some(c), Some(p)) => c > p,
                    (Some(_), None) => true,
                    _ => false,
                }
            }
        };
        if better {
            let reason = format!(
                "marnflow run --date {}: {metric} {} vs production {}",
                plan.date,
                candidate_score.map_or("-".into(), |v| format!("{:.4}", v.abs())),
                production_score.map_or("none".into(), |v| format!("{:.4}", v.abs()))
            );
            registry.set_alias(model, "production", version, production, &reason).await?;
            promoted = true;
        }
    }
    Ok(RunOutcome {
        plan,
        train,
        candidate,
        production_before: production,
        production_score,
        candidate_score,
        promoted,
    })
}
