//! `marnflow evaluate`: a registered version on one day's samples, or a range of days' pooled
//! (`--date D1 --to D2`, the label `D1_D2`).
//!
//! - AUC, user-averaged AUC (paper Eq. 11: users with at least one click and one non-click;
//!   plain and impression-weighted), log loss.
//! - AUC per item-popularity decile (Table 4): the rows ordered by their candidate's exposures in
//!   the training days (`features/daily_item_counts`), cut into ten equal parts; decile 1 holds
//!   the least popular candidates.
//! - Recall@N on items never exposed in training (Table 5): the pool is every candidate of the
//!   day with no training exposure; for each user who clicked one (up to `recall_users`, chosen
//!   by a hash of the user id), the model scores the whole pool with the user's sequence at that
//!   click, and recall@N is the share of the user's clicked pool items ranked in the top N.
//! - MAF attention intensity per modality and category (Figure 4): the average l2-norm of the
//!   vector attention `atten_m` over the category's items that have the modality, beside the
//!   planted profile and weights of the category when the lake is a generated world, with how
//!   well they agree (the modality each category weights most, rank correlations).
//! - The modality space (Figure 5): `s_image`, `s_title`, `c_image`, `c_title` and `c` of
//!   evaluation items with both an image and a title, projected on their first two principal
//!   components, and how far apart the two `s` sets and the two `c` sets lie.
//! - The Bayes-optimal AUC: the AUC of `truth/exposures.p_click` on the same rows, when known.
//!
//! The result is saved beside the version (`models/NAME/evaluations/vN/DATE.json`: versions stay
//! immutable) and, with `--report DIR`, written as JSON, Markdown and PNG/SVG plots.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use chrono::NaiveDate;
use marnflow_model::device::DeviceSpec;
use marnflow_model::{metrics, Marn};
use marnflow_pipeline::contract::{TRUTH_CATEGORIES, TRUTH_EXPOSURES};
use marnflow_pipeline::features::DAILY_ITEM_COUNTS;
use marnflow_pipeline::lake::{partition, Lake};
use serde::{Deserialize, Serialize};

use crate::config::PromoteMetric;
use crate::data::{self, day_string, BatchBuilder, Row, Slice};
use crate::plot::{BarChart, BarGroup, Chart, HeatMap, LineChart, ScatterChart, Series};
use crate::training::{self, TrainingRecord};

/// Rows per prediction batch.
const EVAL_BATCH: usize = 1024;

/// AUC of one popularity decile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decile {
    pub decile: usize,
    pub rows: usize,
    pub min_exposures: u64,
    pub max_exposures: u64,
    pub auc: Option<f64>,
}

/// Recall on items never exposed in training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnseenRecall {
    /// Items in the pool.
    pub pool: usize,
    /// Users measured and their clicks on pool items.
    pub users: usize,
    pub clicks: usize,
    /// `N` → recall@N.
    pub recall: BTreeMap<usize, f64>,
    /// AUC on the day's rows whose candidate is unseen.
    pub auc_unseen_rows: Option<f64>,
    pub unseen_rows: usize,
}

/// Attention intensity of each modality, per category (Figure 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    pub modalities: Vec<String>,
    pub categories: Vec<CategoryAttention>,
    /// How the intensities agree with the planted weights (generated worlds).
    #[serde(default)]
    pub agreement: Option<AttentionAgreement>,
    /// How well each modality's specific features `s_m` (what Eq. 3 computes the attention from)
    /// reveal the item's category.
    #[serde(default)]
    pub category_probe: Option<CategoryProbe>,
}

/// A probe of the attention's input: leave-one-out nearest-centroid classification of the
/// category from `s_m`, per modality, over the evaluation items that have the modality.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryProbe {
    /// Per modality (as [`Attention::modalities`]): the share of items whose nearest category
    /// centroid (their own item left out) is their category; `None` below two categories.
    pub accuracy: Vec<Option<f64>>,
    /// The share of the most common category: what guessing it for every item scores.
    pub majority: f64,
    /// Items probed.
    pub items: usize,
}

/// One category's row of the Figure-4 heat map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryAttention {
    pub category: String,
    /// Planted profile (generated worlds).
    pub profile: Option<String>,
    pub items: usize,
    /// Average `‖atten_m‖₂` over the category's items that have modality `m`.
    pub intensity: Vec<f64>,
    /// The planted click weight of each modality (`truth/categories`: `w_id`, `w_image`,
    /// `w_title`, `w_statistics`), generated worlds only.
    #[serde(default)]
    pub planted: Option<Vec<f64>>,
}

/// Agreement between the attention intensities and the planted weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionAgreement {
    /// Categories with planted weights.
    pub categories: usize,
    /// Categories whose most-attended modality is the one with the largest planted weight.
    pub top_matches: usize,
    /// The same after dividing each modality's intensity by its mean over the categories (the
    /// attention layers of different modalities need not share a scale).
    pub top_matches_relative: usize,
    /// Spearman correlation of intensity and planted weight over every (category, modality) cell.
    pub spearman_cells: Option<f64>,
    /// Per modality: Spearman correlation over the categories (does a modality get more attention
    /// where it matters more?).
    pub spearman_per_modality: Vec<Option<f64>>,
}

/// The modality space of Figure 5: 2-D principal-component coordinates of the specific and
/// invariant features, and their separation in the full space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModalitySpace {
    /// Items used (each has an image and a title).
    pub items: usize,
    /// Distance between the centroids of `s_image` and `s_title`, over the root mean square
    /// distance of their points to their centroids.
    pub specific_separation: f64,
    /// The same for `c_image` and `c_title`.
    pub invariant_separation: f64,
    /// Share of the variance the two components explain.
    pub explained: f64,
    /// Per set (`s_image`, `s_title`, `c_image`, `c_title`, `c`): its 2-D points.
    pub sets: Vec<(String, Vec<(f64, f64)>)>,
}

/// Everything `evaluate` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub model: String,
    pub version: u32,
    pub variant: String,
    pub date: String,
    pub slice: String,
    pub rows: usize,
    pub positives: usize,
    pub auc: Option<f64>,
    pub user_auc: Option<f64>,
    pub user_auc_weighted: Option<f64>,
    pub users: usize,
    pub logloss: f64,
    pub oracle_auc: Option<f64>,
    pub deciles: Vec<Decile>,
    pub unseen: UnseenRecall,
    pub attention: Option<Attention>,
    #[serde(default)]
    pub modality_space: Option<ModalitySpace>,
    pub seconds: f64,
}

impl Evaluation {
    /// The value of a `train.promote_metric`, oriented so that higher is better.
    pub fn score(&self, metric: PromoteMetric) -> Option<f64> {
        match metric {
            PromoteMetric::Auc => self.auc,
            PromoteMetric::UserAuc => self.user_auc,
            PromoteMetric::Logloss => Some(-self.logloss),
        }
    }
}

/// The key an evaluation is kept under beside its version (`models/NAME/evaluations/vN/KEY.json`).
pub fn evaluation_key(date: &str, slice: Slice) -> String {
    let suffix = match slice {
        Slice::All => String::new(),
        Slice::HeldOut(s) => format!("-heldout-{s}"),
        Slice::Rest(s) => format!("-rest-{s}"),
    };
    format!("{date}{suffix}")
}

/// A saved evaluation, if any; one that cannot be read is an error.
pub async fn saved_evaluation(
    lake: &Lake,
    model: &str,
    version: u32,
    date: &str,
    slice: Slice,
) -> Result<Option<Evaluation>> {
    Ok(crate::training::registry(lake).evaluation(model, version, &evaluation_key(date, slice)).await?)
}

/// The label of an evaluation period: `D`, or `D1_D2` for the days from D1 to D2.
pub fn period(from: NaiveDate, to: NaiveDate) -> String {
    if from == to {
        day_string(from)
    } else {
        format!("{}_{}", day_string(from), day_string(to))
    }
}

/// Evaluates `spec` (NAME@ALIAS or NAME@vN) on the days `from` to `to`, their rows pooled.
pub async fn evaluate(
    lake: &Lake,
    spec: &str,
    from: NaiveDate,
    to: NaiveDate,
    slice: Slice,
    device: DeviceSpec,
    recall_users: usize,
) -> Result<Evaluation> {
    let started = std::time::Instant::now();
    anyhow::ensure!(to >= from, "the evaluation period ends ({to}) before it starts ({from})");
    let days = data::days(from, to);
    let scorer = training::Scorer::open(lake, spec, &days, device).await?;
    let (manifest, model, record) = (&scorer.manifest, &scorer.model, &scorer.record);
    let rows = scorer.rows(lake, slice).await?;
    anyhow::ensure!(!rows.is_empty(), "{} has no rows to evaluate ({slice:?})", period(from, to));
    let builder = scorer.builder();
    let scores = scorer.predict(&rows)?;
    let labels: Vec<f32> = rows.iter().map(|r| r.label).collect();
    // Every sample's user is in the user dictionary (the feature job adds them day by day).
    let users: Vec<u32> = rows.iter().map(|r| r.user).collect();
    let auc = metrics::auc(&scores, &labels)?;
    let user_auc = metrics::user_auc(&scores, &labels, &users)?;
    let logloss = metrics::log_loss(&scores, &labels)?;
    let oracle_auc = oracle_auc(lake, &days, &rows).await?;

    // Popularity in training: exposures per item over the training days.
    let popularity = match &record {
        Some(r) => training_exposures(lake, r).await?,
        None => HashMap::new(),
    };
    let pop_of = |r: &Row| popularity.get(r.key.as_ref().map_or("", |k| k.item_id.as_str())).copied().unwrap_or(0);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| (pop_of(&rows[i]), rows[i].candidate));
    let deciles = (0..10)
        .map(|d| {
            let part = &order[d * order.len() / 10..(d + 1) * order.len() / 10];
            let s: Vec<f32> = part.iter().map(|&i| scores[i]).collect();
            let l: Vec<f32> = part.iter().map(|&i| labels[i]).collect();
            Decile {
                decile: d + 1,
                rows: part.len(),
                min_exposures: part.first().map_or(0, |&i| pop_of(&rows[i])),
                max_exposures: part.last().map_or(0, |&i| pop_of(&rows[i])),
                auc: metrics::auc(&s, &l).ok().flatten(),
            }
        })
        .collect();
    let unseen = unseen_recall(model, &builder, &rows, &scores, &labels, |r| pop_of(r) == 0, recall_users)?;
    let attention = attention(lake, model, &builder, &rows).await?;
    let modality_space = modality_space(model, &builder, &rows)?;
    let evaluation = Evaluation {
        model: manifest.model.clone(),
        version: manifest.version,
        variant: model.variant().as_str().to_string(),
        date: period(from, to),
        slice: format!("{slice:?}"),
        rows: rows.len(),
        positives: labels.iter().filter(|&&l| l == 1.0).count(),
        auc,
        user_auc: user_auc.map(|u| u.unweighted),
        user_auc_weighted: user_auc.map(|u| u.weighted),
        users: user_auc.map_or(0, |u| u.users),
        logloss,
        oracle_auc,
        deciles,
        unseen,
        attention,
        modality_space,
        seconds: started.elapsed().as_secs_f64(),
    };
    crate::training::registry(lake)
        .save_evaluation(&manifest.model, manifest.version, &evaluation_key(&evaluation.date, slice), &evaluation)
        .await?;
    Ok(evaluation)
}

/// The AUC of the planted click probability on the same rows (generated worlds only).
async fn oracle_auc(lake: &Lake, days: &[NaiveDate], rows: &[Row]) -> Result<Option<f64>> {
    // Truth rows are matched to sample rows by borrowed (request, item) keys: no string copies.
    let index: HashMap<(&str, &str), usize> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.key.as_ref().map(|k| ((k.request_id.as_str(), k.item_id.as_str()), i)))
        .collect();
    let mut truth: Vec<Option<f32>> = vec![None; rows.len()];
    let mut any = false;
    for &day in days {
        let folder = partition(TRUTH_EXPOSURES, &day_string(day));
        for b in &data::read_folder(lake, &folder).await? {
            let req = data::column(b, "request_id", &DataType::Utf8, &folder)?;
            let item = data::column(b, "item_id", &DataType::Utf8, &folder)?;
            let p = data::column(b, "p_click", &DataType::Float64, &folder)?;
            let (req, item, p) = (req.as_string::<i32>(), item.as_string::<i32>(), p.as_primitive::<Float64Type>());
            any |= b.num_rows() > 0;
            for r in 0..b.num_rows() {
                if let Some(&i) = index.get(&(req.value(r), item.value(r))) {
                    truth[i] = Some(p.value(r) as f32);
                }
            }
        }
    }
    if !any {
        return Ok(None);
    }
    let (s, l): (Vec<f32>, Vec<f32>) = truth.iter().zip(rows).filter_map(|(p, r)| p.map(|p| (p, r.label))).unzip();
    if s.len() < rows.len() {
        tracing::warn!(matched = s.len(), rows = rows.len(), "truth/exposures covers only part of the rows");
    }
    Ok(metrics::auc(&s, &l)?)
}

/// Exposures per item id over the training days of a version.
async fn training_exposures(lake: &Lake, record: &TrainingRecord) -> Result<HashMap<String, u64>> {
    let (Ok(from), Ok(to)) =
        (NaiveDate::parse_from_str(&record.from, "%Y-%m-%d"), NaiveDate::parse_from_str(&record.to, "%Y-%m-%d"))
    else {
        return Ok(HashMap::new());
    };
    let mut out = HashMap::new();
    for day in data::days(from, to) {
        let folder = partition(DAILY_ITEM_COUNTS, &day_string(day));
        for b in data::read_folder(lake, &folder).await? {
            let item = data::column(&b, "item_id", &DataType::Utf8, &folder)?;
            let n = data::column(&b, "exposures", &DataType::Int64, &folder)?;
            let (item, n) = (item.as_string::<i32>(), n.as_primitive::<Int64Type>());
            for r in 0..b.num_rows() {
                if !item.is_null(r) && !n.is_null(r) {
                    *out.entry(item.value(r).to_string()).or_insert(0) += n.value(r).max(0) as u64;
                }
            }
        }
    }
    Ok(out)
}

/// Recall sizes measured: 10 to 100, and 1000 when the pool is larger.
fn recall_sizes(pool: usize) -> Vec<usize> {
    let mut n = vec![10, 20, 50, 100];
    if pool > 1000 {
        n.push(1000);
    }
    n
}

fn unseen_recall(
    model: &Marn,
    builder: &BatchBuilder<'_>,
    rows: &[Row],
    scores: &[f32],
    labels: &[f32],
    unseen: impl Fn(&Row) -> bool,
    max_users: usize,
) -> Result<UnseenRecall> {
    let is_unseen: Vec<bool> = rows.iter().map(&unseen).collect();
    let mut pool: Vec<u32> = rows.iter().zip(&is_unseen).filter(|(_, u)| **u).map(|(r, _)| r.candidate).collect();
    pool.sort_unstable();
    pool.dedup();
    let s: Vec<f32> = (0..rows.len()).filter(|&i| is_unseen[i]).map(|i| scores[i]).collect();
    let l: Vec<f32> = (0..rows.len()).filter(|&i| is_unseen[i]).map(|i| labels[i]).collect();
    let auc_unseen_rows = metrics::auc(&s, &l)?;
    // Users with a click on an unseen item: their first such click gives the context.
    let mut contexts: BTreeMap<String, (usize, HashSet<u32>)> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if is_unseen[i] && r.label == 1.0 {
            let user = r.key.as_ref().map_or(String::new(), |k| k.user_id.clone());
            contexts.entry(user).or_insert_with(|| (i, HashSet::new())).1.insert(r.candidate);
        }
    }
    let mut users: Vec<(&String, &(usize, HashSet<u32>))> = contexts.iter().collect();
    users.sort_by(|a, b| data::user_share(a.0).total_cmp(&data::user_share(b.0)).then(a.0.cmp(b.0)));
    users.truncate(max_users);
    let sizes = recall_sizes(pool.len());
    let mut hits = vec![0usize; sizes.len()];
    let mut clicks = 0usize;
    if !pool.is_empty() {
        for (_, (context, clicked)) in &users {
            let row = &rows[*context];
            let mut pool_scores = Vec::with_capacity(pool.len());
            for chunk in pool.chunks(EVAL_BATCH) {
                let refs: Vec<&Row> = std::iter::repeat_n(row, chunk.len()).collect();
                pool_scores.extend(model.predict(&builder.build(&refs, Some(chunk))?)?);
            }
            let mut ranked: Vec<usize> = (0..pool.len()).collect();
            ranked.sort_by(|&a, &b| pool_scores[b].total_cmp(&pool_scores[a]).then(pool[a].cmp(&pool[b])));
            let rank_of: HashMap<u32, usize> = ranked.iter().enumerate().map(|(rank, &k)| (pool[k], rank)).collect();
            for item in clicked.iter() {
                clicks += 1;
                let rank = rank_of.get(item).copied().unwrap_or(usize::MAX);
                for (h, &n) in hits.iter_mut().zip(&sizes) {
                    if rank < n {
                        *h += 1;
                    }
                }
            }
        }
    }
    let recall = sizes.iter().zip(&hits).filter(|_| clicks > 0).map(|(&n, &h)| (n, h as f64 / clicks as f64)).collect();
    Ok(UnseenRecall { pool: pool.len(), users: users.len(), clicks, recall, auc_unseen_rows, unseen_rows: s.len() })
}

/// Every candidate of `rows` once, with the day of the last row it was a candidate on, grouped
/// by day.
fn candidates_by_day(rows: &[Row]) -> Vec<(u16, u32)> {
    let mut last_day: HashMap<u32, u16> = HashMap::new();
    for r in rows {
        let day = last_day.entry(r.candidate).or_insert(r.day);
        *day = (*day).max(r.day);
    }
    let mut items: Vec<(u16, u32)> = last_day.into_iter().map(|(item, day)| (day, item)).collect();
    items.sort_unstable();
    items
}

async fn attention(lake: &Lake, model: &Marn, builder: &BatchBuilder<'_>, rows: &[Row]) -> Result<Option<Attention>> {
    // Every candidate once, with the item table of the last day it was a candidate on.
    let items = candidates_by_day(rows);
    // Per category: items, and per modality the sum of norms and the items that have it.
    let mut per_category: BTreeMap<String, (usize, Vec<(f64, usize)>)> = BTreeMap::new();
    let m = model.modalities().len();
    // Per modality: (category, s_m) of the items that have it, for the category probe.
    let mut probe: Vec<Vec<(String, Vec<f32>)>> = vec![Vec::new(); m];
    for of_day in items.chunk_by(|a, b| a.0 == b.0) {
        let day = of_day[0].0;
        let store = builder.stores.get(&day).ok_or_else(|| anyhow::anyhow!("no item table for day {day}"))?;
        for chunk in of_day.chunks(EVAL_BATCH) {
            let ids: Vec<u32> = chunk.iter().map(|&(_, item)| item).collect();
            let only_items = builder.items(day, &ids)?;
            let x = model.tensors(&only_items)?;
            let f = match model.modality_features(&x)? {
                Some(f) if !f.attention.is_empty() => f,
                _ => return Ok(None),
            };
            for (k, &item) in only_items.items().item.iter().enumerate() {
                let category = store.row(item).map_or("unknown".to_string(), |r| store.category_ids[r].clone());
                let slot = per_category.entry(category.clone()).or_insert_with(|| (0, vec![(0.0, 0); m]));
                slot.0 += 1;
                for (j, (acc, samples)) in slot.1.iter_mut().zip(probe.iter_mut()).enumerate() {
                    if f.presence[j][k] {
                        acc.0 += f64::from(f.attention[j][k]);
                        acc.1 += 1;
                        samples.push((category.clone(), f.specific[j][k * f.dim..(k + 1) * f.dim].to_vec()));
                    }
                }
            }
        }
    }
    let modalities: Vec<String> = model.modalities().iter().map(|m| format!("{m:?}").to_lowercase()).collect();
    let planted = category_truth(lake).await;
    let mut categories: Vec<CategoryAttention> = per_category
        .into_iter()
        .map(|(category, (n, sums))| {
            let truth = planted.get(&category);
            CategoryAttention {
                profile: truth.map(|t| t.profile.clone()),
                planted: truth.map(|t| modalities.iter().map(|m| t.weight(m)).collect()),
                intensity: sums.iter().map(|&(s, k)| if k > 0 { s / k as f64 } else { f64::NAN }).collect(),
                items: n,
                category,
            }
        })
        .collect();
    categories.sort_by(|a, b| b.items.cmp(&a.items).then(a.category.cmp(&b.category)));
    categories.truncate(24);
    categories.sort_by(|a, b| a.profile.cmp(&b.profile).then(a.category.cmp(&b.category)));
    let agreement = attention_agreement(&categories, m);
    let category_probe = category_probe(&probe);
    Ok(Some(Attention { modalities, categories, agreement, category_probe }))
}

/// Leave-one-out nearest-centroid accuracy of the category from each modality's samples.
fn category_probe(per_modality: &[Vec<(String, Vec<f32>)>]) -> Option<CategoryProbe> {
    let all = per_modality.iter().max_by_key(|v| v.len())?;
    if all.is_empty() {
        return None;
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (c, _) in all {
        *counts.entry(c).or_default() += 1;
    }
    let majority = counts.values().max().copied().unwrap_or(0) as f64 / all.len() as f64;
    let accuracy = per_modality.iter().map(|samples| nearest_centroid_accuracy(samples)).collect();
    Some(CategoryProbe { accuracy, majority, items: all.len() })
}

/// Share of `samples` whose nearest class centroid, computed without the sample itself, is its
/// own class (a class of one sample cannot be predicted for it and counts as a miss). `None`
/// with fewer than two classes.
fn nearest_centroid_accuracy(samples: &[(String, Vec<f32>)]) -> Option<f64> {
    let d = samples.first()?.1.len();
    let mut classes: BTreeMap<&str, (Vec<f64>, usize)> = BTreeMap::new();
    for (c, v) in samples {
        let slot = classes.entry(c).or_insert_with(|| (vec![0.0; d], 0));
        for (s, &x) in slot.0.iter_mut().zip(v) {
            *s += f64::from(x);
        }
        slot.1 += 1;
    }
    if classes.len() < 2 {
        return None;
    }
    let mut right = 0usize;
    for (c, v) in samples {
        let best = classes
            .iter()
            .filter_map(|(&k, (sum, n))| {
                // The sample's own class loses the sample.
                let (n, own) = if k == c.as_str() { (*n - 1, true) } else { (*n, false) };
                (n > 0).then(|| {
                    let dist: f64 = sum
                        .iter()
                        .zip(v)
                        .map(|(s, &x)| {
                            let centroid = if own { (s - f64::from(x)) / n as f64 } else { s / n as f64 };
                            (f64::from(x) - centroid).powi(2)
                        })
                        .sum();
                    (dist, k)
                })
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        right += usize::from(best.is_some_and(|(_, k)| k == c.as_str()));
    }
    Some(right as f64 / samples.len() as f64)
}

/// How the attention intensities of `categories` agree with their planted weights.
fn attention_agreement(categories: &[CategoryAttention], m: usize) -> Option<AttentionAgreement> {
    let with_truth: Vec<(&Vec<f64>, &Vec<f64>)> =
        categories.iter().filter_map(|c| c.planted.as_ref().map(|p| (&c.intensity, p))).collect();
    if with_truth.is_empty() || m < 2 {
        return None;
    }
    let argmax = |v: &[f64]| {
        v.iter().enumerate().filter(|(_, x)| x.is_finite()).max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i)
    };
    let modality_mean: Vec<f64> = (0..m)
        .map(|k| {
            let v: Vec<f64> = with_truth.iter().map(|(a, _)| a[k]).filter(|x| x.is_finite()).collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        })
        .collect();
    let mut top = 0;
    let mut top_relative = 0;
    for (a, p) in &with_truth {
        let relative: Vec<f64> = a.iter().zip(&modality_mean).map(|(x, mu)| x / mu).collect();
        let want = argmax(p);
        top += usize::from(argmax(a) == want);
        top_relative += usize::from(argmax(&relative) == want);
    }
    let (cells_a, cells_p): (Vec<f64>, Vec<f64>) = with_truth
        .iter()
        .flat_map(|(a, p)| a.iter().zip(p.iter()).map(|(x, y)| (*x, *y)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .unzip();
    let spearman_per_modality = (0..m)
        .map(|k| {
            let (a, p): (Vec<f64>, Vec<f64>) =
                with_truth.iter().map(|(a, p)| (a[k], p[k])).filter(|(x, y)| x.is_finite() && y.is_finite()).unzip();
            metrics::spearman(&a, &p)
        })
        .collect();
    Some(AttentionAgreement {
        categories: with_truth.len(),
        top_matches: top,
        top_matches_relative: top_relative,
        spearman_cells: metrics::spearman(&cells_a, &cells_p),
        spearman_per_modality,
    })
}

/// Items at most plotted per set in Figure 5.
const SPACE_ITEMS: usize = 400;

/// Figure 5: the specific and invariant features of evaluation items that have both an image
/// and a title (variants with the invariant projection only).
fn modality_space(model: &Marn, builder: &BatchBuilder<'_>, rows: &[Row]) -> Result<Option<ModalitySpace>> {
    use marnflow_model::Modality;
    let position = |m: Modality| model.modalities().iter().position(|&x| x == m);
    let (Some(image), Some(title)) = (position(Modality::Image), position(Modality::Title)) else {
        return Ok(None);
    };
    let mut sets: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 5];
    'days: for of_day in candidates_by_day(rows).chunk_by(|a, b| a.0 == b.0) {
        let day = of_day[0].0;
        for chunk in of_day.chunks(EVAL_BATCH) {
            let ids: Vec<u32> = chunk.iter().map(|&(_, item)| item).collect();
            let x = model.tensors(&builder.items(day, &ids)?)?;
            let Some(f) = model.modality_features(&x)? else { return Ok(None) };
            if f.invariant.is_empty() || f.pooled.is_empty() {
                return Ok(None);
            }
            let d = f.dim;
            let row = |v: &[f32], i: usize| v[i * d..(i + 1) * d].to_vec();
            for i in 0..ids.len() {
                if !(f.presence[image][i] && f.presence[title][i]) {
                    continue;
                }
                sets[0].push(row(&f.specific[image], i));
                sets[1].push(row(&f.specific[title], i));
                sets[2].push(row(&f.invariant[image], i));
                sets[3].push(row(&f.invariant[title], i));
                sets[4].push(row(&f.pooled, i));
                if sets[0].len() >= SPACE_ITEMS {
                    break 'days;
                }
            }
        }
    }
    let items = sets[0].len();
    if items < 3 {
        return Ok(None);
    }
    let all: Vec<Vec<f32>> = sets.iter().flatten().cloned().collect();
    let (projected, explained) = metrics::pca_2d(&all);
    let names = ["s_image", "s_title", "c_image", "c_title", "c"];
    let sets_2d = names
        .iter()
        .enumerate()
        .map(|(k, name)| (name.to_string(), projected[k * items..(k + 1) * items].to_vec()))
        .collect();
    Ok(Some(ModalitySpace {
        items,
        specific_separation: metrics::separation(&sets[0], &sets[1]),
        invariant_separation: metrics::separation(&sets[2], &sets[3]),
        explained,
        sets: sets_2d,
    }))
}

/// The planted side of a category (generated worlds).
#[derive(Debug, Clone)]
struct CategoryTruth {
    profile: String,
    /// (id, image, title, statistics) weights.
    weights: [f64; 4],
}

impl CategoryTruth {
    /// The planted weight of a modality named as in [`Attention::modalities`].
    fn weight(&self, modality: &str) -> f64 {
        match modality {
            "ids" => self.weights[0],
            "image" => self.weights[1],
            "title" => self.weights[2],
            "statistic" => self.weights[3],
            _ => f64::NAN,
        }
    }
}

/// The planted profile and weights of every category (generated worlds only; empty elsewhere).
async fn category_truth(lake: &Lake) -> HashMap<String, CategoryTruth> {
    let mut out = HashMap::new();
    for b in data::read_folder(lake, TRUTH_CATEGORIES).await.unwrap_or_default() {
        let text = |name: &str| data::column(&b, name, &DataType::Utf8, TRUTH_CATEGORIES);
        let number = |name: &str| data::column(&b, name, &DataType::Float64, TRUTH_CATEGORIES);
        let (Ok(c), Ok(p)) = (text("category_id"), text("profile")) else {
            continue;
        };
        let weights: Vec<_> = ["w_id", "w_image", "w_title", "w_statistics"].iter().map(|n| number(n).ok()).collect();
        let (c, p) = (c.as_string::<i32>(), p.as_string::<i32>());
        for r in 0..b.num_rows() {
            let mut w = [f64::NAN; 4];
            for (slot, col) in w.iter_mut().zip(&weights) {
                if let Some(col) = col {
                    *slot = col.as_primitive::<Float64Type>().value(r);
                }
            }
            out.insert(c.value(r).to_string(), CategoryTruth { profile: p.value(r).to_string(), weights: w });
        }
    }
    out
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

/// The Markdown summary of an evaluation.
pub fn markdown(e: &Evaluation, record: Option<&TrainingRecord>) -> String {
    let mut s = format!("# {}@v{} ({}) on {}\n\n", e.model, e.version, e.variant, e.date);
    s += "| metric | value |\n|---|---|\n";
    s += &format!("| rows | {} ({} clicks) |\n", e.rows, e.positives);
    s += &format!("| AUC | {} |\n", fmt(e.auc));
    s += &format!(
        "| user-averaged AUC (Eq. 11) | {} ({} users; weighted {}) |\n",
        fmt(e.user_auc),
        e.users,
        fmt(e.user_auc_weighted)
    );
    s += &format!("| log loss | {:.4} |\n", e.logloss);
    s += &format!("| Bayes-optimal AUC (truth) | {} |\n", fmt(e.oracle_auc));
    s += &format!("| AUC on unseen-item rows | {} ({} rows) |\n", fmt(e.unseen.auc_unseen_rows), e.unseen.unseen_rows);
    if let Some(r) = record {
        s += &format!(
            "| training | {} .. {}, {} samples, {} steps, {:.0} samples/s |\n",
            r.from, r.to, r.samples, r.steps, r.samples_per_second
        );
    }
    s += "\n## AUC per item-popularity decile (Table 4)\n\n| decile | rows | training exposures | AUC |\n|---|---|---|---|\n";
    for d in &e.deciles {
        s += &format!("| {} | {} | {}..{} | {} |\n", d.decile, d.rows, d.min_exposures, d.max_exposures, fmt(d.auc));
    }
    s += &format!(
        "\n## Recall on items never seen in training (Table 5)\n\n{} unseen items, {} users, {} clicks.\n\n| N | recall@N |\n|---|---|\n",
        e.unseen.pool, e.unseen.users, e.unseen.clicks
    );
    for (n, r) in &e.unseen.recall {
        s += &format!("| {n} | {r:.4} |\n");
    }
    if let Some(a) = &e.attention {
        s += "\n## Modality attention per category (Figure 4)\n\nAverage l2-norm of the vector attention \
              `atten_m` over the category's items that have the modality; in brackets, the planted weight.\n\n\
              | category | profile | items |";
        for m in &a.modalities {
            s += &format!(" {m} |");
        }
        s += "\n|---|---|---|";
        s += &"---|".repeat(a.modalities.len());
        s += "\n";
        for c in &a.categories {
            s += &format!("| {} | {} | {} |", c.category, c.profile.as_deref().unwrap_or("-"), c.items);
            for (k, v) in c.intensity.iter().enumerate() {
                match c.planted.as_ref().and_then(|p| p.get(k)) {
                    Some(w) => s += &format!(" {v:.3} ({w:.2}) |"),
                    None => s += &format!(" {v:.3} |"),
                }
            }
            s += "\n";
        }
        if let Some(g) = &a.agreement {
            s += &format!(
                "\nMost-attended modality = most-weighted planted modality in {} of {} categories ({} of {} \
                 with each modality's intensity relative to its mean). Spearman over all cells: {}. Per \
                 modality over the categories: {}.\n",
                g.top_matches,
                g.categories,
                g.top_matches_relative,
                g.categories,
                fmt(g.spearman_cells),
                a.modalities
                    .iter()
                    .zip(&g.spearman_per_modality)
                    .map(|(m, r)| format!("{m} {}", fmt(*r)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(p) = &a.category_probe {
            s += &format!(
                "\nHow well `s_m`, the input of Eq. 3, reveals the category (leave-one-out nearest category \
                 centroid over {} items; guessing the most common category scores {:.3}): {}.\n",
                p.items,
                p.majority,
                a.modalities
                    .iter()
                    .zip(&p.accuracy)
                    .map(|(m, r)| format!("{m} {}", fmt(*r)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if let Some(space) = &e.modality_space {
        s += &format!(
            "\n## Modality space (Figure 5)\n\n{} items with an image and a title. Centroid distance over \
             spread: `s_image` vs `s_title` {:.3}, `c_image` vs `c_title` {:.3}. The two principal \
             components explain {:.1}% of the variance.\n",
            space.items,
            space.specific_separation,
            space.invariant_separation,
            100.0 * space.explained
        );
    }
    if let Some(last) = record.and_then(|r| r.curve.last()) {
        if last.modality_accuracy.is_some() {
            let names = record.map(|r| r.modalities.clone()).unwrap_or_default();
            s += &format!(
                "\n## The adversarial game at the end of training\n\nD0 accuracy {}, D1 accuracy {}, share of \
                 ‖rep‖ from c {}, mean w: {}.\n",
                fmt(last.importance_accuracy),
                fmt(last.modality_accuracy),
                fmt(last.invariant_share),
                last.mean_weights
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(k, w)| format!("{} {w:.3}", names.get(k).map_or("?", String::as_str)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    s += "\nPlots: `loss.png`/`.svg` (Figure 6a), `ddma.png`/`.svg` (the adversarial game), `deciles.png`/`.svg`, \
          `attention.png`/`.svg` (Figure 4), `modality_space.png`/`.svg` (Figure 5).\n";
    s
}

/// Writes `evaluation.json`, `summary.md` and the plots into `dir`.
pub fn write_report(dir: &Path, e: &Evaluation, record: Option<&TrainingRecord>) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create report folder {}", dir.display()))?;
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path.display().to_string());
        Ok(())
    };
    put("evaluation.json", &serde_json::to_vec_pretty(e)?)?;
    put("summary.md", markdown(e, record).as_bytes())?;
    let mut charts: Vec<(&str, Box<dyn Chart>)> = Vec::new();
    if let Some(r) = record {
        let line = |name: &str, f: &dyn Fn(&training::CurvePoint) -> Option<f64>| Series {
            name: name.to_string(),
            points: r.curve.iter().filter_map(|c| f(c).map(|v| (c.samples as f64, v))).collect(),
        };
        let mut series = vec![line("CTR loss", &|c| Some(c.ctr_loss)), line("total loss", &|c| Some(c.total_loss))];
        for (name, f) in [
            (
                "adversarial loss (L_ADV)",
                &(|c: &training::CurvePoint| c.adversarial_loss) as &dyn Fn(&training::CurvePoint) -> Option<f64>,
            ),
            ("D0 loss", &|c: &training::CurvePoint| c.importance_loss),
            ("Ds loss", &|c: &training::CurvePoint| c.specific_loss),
        ] {
            let s = line(name, f);
            if !s.points.is_empty() {
                series.push(s);
            }
        }
        charts.push((
            "loss",
            Box::new(LineChart {
                title: format!("{}@v{} training losses (Figure 6a)", e.model, e.version),
                x_label: "training samples".into(),
                y_label: "loss".into(),
                series,
            }),
        ));
        let mut game = vec![
            line("D0 accuracy", &|c| c.importance_accuracy),
            line("D1 accuracy", &|c| c.modality_accuracy),
            line("share of |rep| from c", &|c| c.invariant_share),
        ];
        for (k, name) in r.modalities.iter().enumerate() {
            game.push(line(&format!("mean w ({name})"), &|c| c.mean_weights.as_ref().and_then(|w| w.get(k).copied())));
        }
        game.retain(|s| !s.points.is_empty());
        if !game.is_empty() {
            charts.push((
                "ddma",
                Box::new(LineChart {
                    title: format!("{}@v{} adversarial game", e.model, e.version),
                    x_label: "training samples".into(),
                    y_label: "share / weight".into(),
                    series: game,
                }),
            ));
        }
    }
    charts.push((
        "deciles",
        Box::new(BarChart {
            title: format!("AUC per item-popularity decile, {}", e.date),
            y_label: "AUC".into(),
            labels: e.deciles.iter().map(|d| d.decile.to_string()).collect(),
            groups: vec![BarGroup {
                name: format!("{}@v{}", e.model, e.version),
                values: e.deciles.iter().map(|d| d.auc.unwrap_or(f64::NAN)).collect(),
            }],
            y_min: Some(0.5),
        }),
    ));
    if let Some(a) = &e.attention {
        charts.push((
            "attention",
            Box::new(HeatMap {
                title: "MAF attention l2-norm per category (Figure 4)".into(),
                row_label: "category (planted profile)".into(),
                col_label: "modality".into(),
                rows: a
                    .categories
                    .iter()
                    .map(|c| match &c.profile {
                        Some(p) => format!("{} ({p})", c.category),
                        None => c.category.clone(),
                    })
                    .collect(),
                cols: a.modalities.clone(),
                values: a.categories.iter().map(|c| c.intensity.clone()).collect(),
            }),
        ));
    }
    if let Some(space) = &e.modality_space {
        charts.push((
            "modality_space",
            Box::new(ScatterChart {
                title: format!("{}@v{} modality space, 2 principal components (Figure 5)", e.model, e.version),
                x_label: "component 1".into(),
                y_label: "component 2".into(),
                series: space
                    .sets
                    .iter()
                    .map(|(name, points)| Series { name: name.clone(), points: points.clone() })
                    .collect(),
            }),
        ));
    }
    for (name, chart) in charts {
        put(&format!("{name}.svg"), chart.svg().as_bytes())?;
        put(&format!("{name}.png"), &chart.png().map_err(|e| anyhow::anyhow!("rendering {name}.png: {e}"))?)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(c: &str, v: [f32; 2]) -> (String, Vec<f32>) {
        (c.to_string(), v.to_vec())
    }

    #[test]
    fn nearest_centroid_reads_separated_classes_and_not_mixed_ones() {
        let separated =
            [sample("a", [0.0, 0.0]), sample("a", [0.2, 0.1]), sample("b", [5.0, 5.0]), sample("b", [5.1, 4.9])];
        assert_eq!(nearest_centroid_accuracy(&separated), Some(1.0));
        // Same points, labels crossed: leaving each point out, its own class's centroid is the
        // other cluster.
        let crossed =
            [sample("a", [0.0, 0.0]), sample("a", [5.0, 5.0]), sample("b", [0.2, 0.1]), sample("b", [5.1, 4.9])];
        assert_eq!(nearest_centroid_accuracy(&crossed), Some(0.0));
        assert_eq!(nearest_centroid_accuracy(&separated[..2]), None);
        let probe = category_probe(&[separated.to_vec(), crossed.to_vec()]).unwrap();
        assert_eq!(probe.accuracy, vec![Some(1.0), Some(0.0)]);
        assert!((probe.majority - 0.5).abs() < 1e-12);
    }
}
