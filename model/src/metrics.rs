//! Evaluation metrics: AUC (ties get the average rank), user-averaged AUC (paper Eq. 11) and log
//! loss. Plain Rust over slices; no tensors.
//!
//! ```
//! use marnflow_model::metrics::{auc, log_loss};
//! let a = auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]).unwrap();
//! assert_eq!(a, Some(0.75));
//! assert!(log_loss(&[0.5], &[1.0]).unwrap() > 0.69);
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn check(scores: &[f32], labels: &[f32]) -> Result<()> {
    if scores.len() != labels.len() {
        return Err(Error::Metrics(format!("{} scores but {} labels", scores.len(), labels.len())));
    }
    if let Some(l) = labels.iter().find(|&&l| l != 0.0 && l != 1.0) {
        return Err(Error::Metrics(format!("label {l} is not 0 or 1")));
    }
    if let Some(s) = scores.iter().find(|s| !s.is_finite()) {
        return Err(Error::Metrics(format!("score {s} is not finite")));
    }
    Ok(())
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half (Mann–Whitney U with average ranks). `None` when the labels
/// hold only one class.
pub fn auc(scores: &[f32], labels: &[f32]) -> Result<Option<f64>> {
    check(scores, labels)?;
    Ok(auc_unchecked(scores, labels))
}

fn auc_unchecked(scores: &[f32], labels: &[f32]) -> Option<f64> {
    let positives = labels.iter().filter(|&&l| l == 1.0).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut positive_rank_sum = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 are tied: each gets their average.
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        let tied_positives = order[i..=j].iter().filter(|&&k| labels[k] == 1.0).count();
        positive_rank_sum += average_rank * tied_positives as f64;
        i = j + 1;
    }
    let p = positives as f64;
    let n = negatives as f64;
    Some((positive_rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// User-averaged AUC over the users with both clicks and non-clicks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UserAuc {
    /// Σ_u n_u AUC_u / Σ_u n_u, each user weighted by its impression count `n_u`.
    pub weighted: f64,
    /// (1/|U|) Σ_u AUC_u, the plain average as Eq. 11 is printed.
    pub unweighted: f64,
    /// Users counted (with both classes).
    pub users: usize,
    /// Impressions of those users.
    pub impressions: usize,
}

/// User-averaged AUC (paper Eq. 11): AUC within every user having both clicks and non-clicks,
/// averaged over those users, both weighted by impressions and plainly. `None` when no user has
/// both classes.
pub fn user_auc<U: Eq + std::hash::Hash + Copy>(
    scores: &[f32],
    labels: &[f32],
    users: &[U],
) -> Result<Option<UserAuc>> {
    check(scores, labels)?;
    if users.len() != scores.len() {
        return Err(Error::Metrics(format!("{} scores but {} users", scores.len(), users.len())));
    }
    let mut groups: HashMap<U, (Vec<f32>, Vec<f32>)> = HashMap::new();
    for ((&s, &l), &u) in scores.iter().zip(labels).zip(users) {
        let g = groups.entry(u).or_default();
        g.0.push(s);
        g.1.push(l);
    }
    let (mut weighted, mut unweighted, mut n_users, mut impressions) = (0.0, 0.0, 0usize, 0usize);
    for (s, l) in groups.values() {
        if let Some(a) = auc_unchecked(s, l) {
            weighted += a * s.len() as f64;
            unweighted += a;
            n_users += 1;
            impressions += s.len();
        }
    }
    Ok((n_users > 0).then(|| UserAuc {
        weighted: weighted / impressions as f64,
        unweighted: unweighted / n_users as f64,
        users: n_users,
        impressions,
    }))
}

/// Mean log loss of probabilities (clamped to `[1e-7, 1 − 1e-7]`). Errors on empty input.
pub fn log_loss(probabilities: &[f32], labels: &[f32]) -> Result<f64> {
    check(probabilities, labels)?;
    if labels.is_empty() {
        return Err(Error::Metrics("log loss of no sample".into()));
    }
    let total: f64 = probabilities
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = (p as f64).clamp(1e-7, 1.0 - 1e-7);
            if y == 1.0 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    Ok(total / labels.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_a_perfect_and_a_reversed_ranking() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[0.0, 0.0, 1.0, 1.0]).unwrap(), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[0.0, 0.0, 1.0, 1.0]).unwrap(), Some(0.0));
    }

    #[test]
    fn auc_counts_ties_as_one_half() {
        // Pairs (pos, neg): (0.5 vs 0.5) tie = 0.5, (0.5 vs 0.2) = 1, (0.9 vs both) = 2 → 3.5/4.
        let a = auc(&[0.5, 0.5, 0.2, 0.9], &[1.0, 0.0, 0.0, 1.0]).unwrap().unwrap();
        assert!((a - 0.875).abs() < 1e-12);
        // All scores equal: 0.5.
        assert_eq!(auc(&[0.3; 4], &[1.0, 0.0, 1.0, 0.0]).unwrap(), Some(0.5));
    }

    #[test]
    fn auc_is_undefined_with_one_class_and_rejects_bad_input() {
        assert_eq!(auc(&[0.1, 0.2], &[1.0, 1.0]).unwrap(), None);
        assert!(auc(&[0.1], &[1.0, 0.0]).is_err());
        assert!(auc(&[0.1, 0.2], &[0.5, 0.0]).is_err());
        assert!(auc(&[f32::NAN, 0.2], &[1.0, 0.0]).is_err());
    }

    #[test]
    fn user_auc_skips_single_class_users_and_weights_by_impressions() {
        // User 1: 3 impressions, AUC 1 (0.9 > 0.1, 0.2). User 2: 2 impressions, AUC 0.
        // User 3: clicks only, skipped.
        let scores = [0.9, 0.1, 0.2, 0.3, 0.7, 0.5];
        let labels = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        let users = [1u64, 1, 1, 2, 2, 3];
        let u = user_auc(&scores, &labels, &users).unwrap().unwrap();
        assert_eq!(u.users, 2);
        assert_eq!(u.impressions, 5);
        assert!((u.weighted - 3.0 / 5.0).abs() < 1e-12);
        assert!((u.unweighted - 0.5).abs() < 1e-12);
        assert!(user_auc(&[0.1], &[1.0], &[1u64]).unwrap().is_none());
    }

    #[test]
    fn log_loss_matches_hand_computed_values() {
        let l = log_loss(&[0.8, 0.25], &[1.0, 0.0]).unwrap();
        let expected = (-(0.8f64.ln()) - (0.75f64.ln())) / 2.0;
        assert!((l - expected).abs() < 1e-7, "{l} vs {expected}");
        assert!(log_loss(&[0.0], &[1.0]).unwrap().is_finite());
        assert!(log_loss(&[], &[]).is_err());
    }
}
