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
    pub variant: Variant,
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
    let plan = day_plan(lake, &registry, cfg, model, variant, date).await?;
    let from = NaiveDate::parse_from_str(&plan.from, "%Y-%m-%d")?;
    let eval_date = NaiveDate::parse_from_str(&plan.eval_date, "%Y-%m-%d")?;
    let variant = plan.variant;
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
            replicas: None,
        },
    )
    .await?;
    let version = train.version;
    let judge = Judge { lake, registry: &registry, cfg, model, eval_date, eval_slice };
    let candidate = judge.evaluation(version).await?;
    let current_candidate = registry.alias(model, "candidate").await?;
    if current_candidate != Some(version) {
        registry
            .set_alias(model, "candidate", version, current_candidate, &format!("marnflow run --date {}", plan.date))
            .await?;
    }
    let decision = judge.promotion(&plan, version, &candidate, promote_if_better).await?;
    Ok(RunOutcome {
        plan,
        train,
        candidate,
        production_before: decision.production_before,
        production_score: decision.production_score,
        candidate_score: decision.candidate_score,
        promoted: decision.promoted,
    })
}

/// The day's plan: the one an earlier run of this day saved, else a new one, saved before
/// anything is trained. A saved plan that cannot be read is an error, never replanned.
async fn day_plan(
    lake: &Lake,
    registry: &marnflow_registry::Registry,
    cfg: &Config,
    model: &str,
    variant: Variant,
    date: NaiveDate,
) -> Result<RunPlan> {
    let path = plan_path(model, date);
    if let Some(bytes) = lake.get_opt(&path).await.with_context(|| format!("reading the saved plan {path}"))? {
        let plan: RunPlan =
            serde_json::from_slice(&bytes).with_context(|| format!("the saved plan {path} cannot be read"))?;
        info!(date = %plan.date, "continuing the plan of an earlier run of this day");
        return Ok(plan);
    }
    let settings = &cfg.train;
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
        variant,
        from: day_string(from),
        warm_start,
        eval_date: day_string(eval_date),
        holdout_share,
    };
    lake.put_atomic(&path, serde_json::to_vec_pretty(&plan)?).await?;
    Ok(plan)
}

/// Evaluates versions of the day's model on the day's evaluation rows, and decides promotion.
struct Judge<'a> {
    lake: &'a Lake,
    registry: &'a marnflow_registry::Registry,
    cfg: &'a Config,
    model: &'a str,
    eval_date: NaiveDate,
    eval_slice: Slice,
}

/// What the promotion step found and did.
struct Decision {
    production_before: Option<u32>,
    production_score: Option<f64>,
    candidate_score: Option<f64>,
    promoted: bool,
}

impl Judge<'_> {
    /// A version's evaluation: the saved one, after checking every file of the version against
    /// its checksum (evaluating loads, and so checks, the version itself): a damaged version is
    /// never made candidate or production.
    async fn evaluation(&self, v: u32) -> Result<Evaluation> {
        let (lake, model) = (self.lake, self.model);
        match saved_evaluation(lake, model, v, &day_string(self.eval_date), self.eval_slice).await? {
            Some(e) => {
                self.registry.load(model, v).await.with_context(|| format!("checking {model}@v{v} before using it"))?;
                Ok(e)
            }
            None => {
                let settings = &self.cfg.train;
                evaluate::evaluate(
                    lake,
                    &format!("{model}@v{v}"),
                    self.eval_date,
                    self.eval_date,
                    self.eval_slice,
                    settings.device,
                    settings.recall_users,
                )
                .await
            }
        }
    }

    /// With `promote_if_better`, promotes `version` when it beats production on
    /// `train.promote_metric` (or there is no production). One read of production's history
    /// says where it points now and whether it was ever moved away from this version (a
    /// rollback, or a promotion of another): such a version is not promoted again
    /// automatically; a person took it out, a person puts it back.
    async fn promotion(
        &self,
        plan: &RunPlan,
        version: u32,
        candidate: &Evaluation,
        promote_if_better: bool,
    ) -> Result<Decision> {
        let (registry, model) = (self.registry, self.model);
        let history = registry.alias_history(model, "production").await?;
        let production = history.last().map(|e| e.version);
        let moved_away = history.iter().find(|e| e.previous == Some(version) && e.version != version);
        let metric = self.cfg.train.promote_metric;
        let candidate_score = candidate.score(metric);
        let mut decision =
            Decision { production_before: production, production_score: None, candidate_score, promoted: false };
        if !promote_if_better {
            return Ok(decision);
        }
        if production == Some(version) {
            // A rerun after this version was promoted: production already is the candidate.
            decision.production_score = candidate_score;
            decision.promoted = true;
            return Ok(decision);
        }
        if let Some(e) = moved_away {
            tracing::warn!(
                version,
                at = %e.at,
                reason = %e.reason,
                "production was moved away from this version before; not promoting it again (use `marnflow models promote`)"
            );
            return Ok(decision);
        }
        let better = match production {
            None => true,
            Some(p) => {
                decision.production_score = self.evaluation(p).await?.score(metric);
                match (candidate_score, decision.production_score) {
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
                decision.production_score.map_or("none".into(), |v| format!("{:.4}", v.abs()))
            );
            registry.set_alias(model, "production", version, production, &reason).await?;
            decision.promoted = true;
        }
        Ok(decision)
    }
}
