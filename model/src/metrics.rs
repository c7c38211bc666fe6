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
    // Users in order of first appearance: the sums below run in the same order every time, so
    // the same inputs give bit-identical results (a HashMap's order changes from run to run).
    let mut index: HashMap<U, usize> = HashMap::new();
    let mut groups: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    for ((&s, &l), &u) in scores.iter().zip(labels).zip(users) {
        let k = *index.entry(u).or_insert_with(|| {
            groups.push((Vec::new(), Vec::new()));
            groups.len() - 1
        });
        groups[k].0.push(s);
        groups[k].1.push(l);
    }
    let (mut weighted, mut unweighted, mut n_users, mut impressions) = (0.0, 0.0, 0usize, 0usize);
    for (s, l) in &groups {
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

/// Spearman rank correlation of two equally long samples (average ranks for ties); `None` for
/// fewer than 3 pairs, unequal lengths, or a constant sample.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 3 {
        return None;
    }
    let rank = |v: &[f64]| -> Vec<f64> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut ranks = vec![0.0; v.len()];
        let mut k = 0;
        while k < order.len() {
            let mut end = k;
            while end + 1 < order.len() && v[order[end + 1]] == v[order[k]] {
                end += 1;
            }
            let average = (k + end) as f64 / 2.0;
            for &i in &order[k..=end] {
                ranks[i] = average;
            }
            k = end + 1;
        }
        ranks
    };
    pearson(&rank(a), &rank(b))
}

/// Pearson correlation; `None` for a constant sample.
pub fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// Projects the rows of `points` (all `d` wide) on their first two principal components
/// (power iteration with deflation, deterministic), returning the 2-D points and the share of
/// the total variance the two components explain.
pub fn pca_2d(points: &[Vec<f32>]) -> (Vec<(f64, f64)>, f64) {
    let n = points.len();
    let d = points.first().map_or(0, Vec::len);
    if n == 0 || d == 0 {
        return (vec![(0.0, 0.0); n], 0.0);
    }
    let mut mean = vec![0.0f64; d];
    for p in points {
        for (m, &x) in mean.iter_mut().zip(p) {
            *m += f64::from(x) / n as f64;
        }
    }
    let centred: Vec<Vec<f64>> =
        points.iter().map(|p| p.iter().zip(&mean).map(|(&x, m)| f64::from(x) - m).collect()).collect();
    let mut cov = vec![0.0f64; d * d];
    for p in &centred {
        for i in 0..d {
            let pi = p[i];
            for j in i..d {
                cov[i * d + j] += pi * p[j];
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            cov[i * d + j] = cov[j * d + i];
        }
    }
    let total: f64 = (0..d).map(|i| cov[i * d + i]).sum();
    let mut components: Vec<Vec<f64>> = Vec::new();
    let mut explained = 0.0;
    for c in 0..2 {
        // Start away from any symmetric direction; 200 iterations converge for these sizes.
        let mut v: Vec<f64> = (0..d).map(|i| 1.0 + ((i * 7 + c * 3) % 11) as f64 / 11.0).collect();
        let mut eigenvalue = 0.0;
        for _ in 0..200 {
            let mut w: Vec<f64> = (0..d).map(|i| (0..d).map(|j| cov[i * d + j] * v[j]).sum()).collect();
            for u in &components {
                let dot: f64 = w.iter().zip(u).map(|(a, b)| a * b).sum();
                for (x, y) in w.iter_mut().zip(u) {
                    *x -= dot * y;
                }
            }
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm == 0.0 {
                break;
            }
            eigenvalue = norm;
            v = w.into_iter().map(|x| x / norm).collect();
        }
        explained += eigenvalue;
        components.push(v);
    }
    let project = |p: &[f64], u: &[f64]| p.iter().zip(u).map(|(a, b)| a * b).sum::<f64>();
    let out = centred.iter().map(|p| (project(p, &components[0]), project(p, &components[1]))).collect();
    (out, if total > 0.0 { explained / total } else { 0.0 })
}

/// Distance between the centroids of two point sets over the root mean square distance of
/// their points to their own centroid: large when the sets are apart, near 0 when they overlap.
pub fn separation(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let centroid = |s: &[Vec<f32>]| -> Vec<f64> {
        let d = s.first().map_or(0, Vec::len);
        let mut c = vec![0.0; d];
        for p in s {
            for (m, &x) in c.iter_mut().zip(p) {
                *m += f64::from(x) / s.len() as f64;
            }
        }
        c
    };
    let (ca, cb) = (centroid(a), centroid(b));
    let spread: f64 = a
        .iter()
        .map(|p| (p, &ca))
        .chain(b.iter().map(|p| (p, &cb)))
        .map(|(p, c)| p.iter().zip(c).map(|(&x, m)| (f64::from(x) - m).powi(2)).sum::<f64>())
        .sum::<f64>()
        / (a.len() + b.len()).max(1) as f64;
    let gap = ca.iter().zip(&cb).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    if spread > 0.0 {
        gap / spread.sqrt()
    } else {
        0.0
    }
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
    fn user_auc_is_bit_identical_across_calls() {
        // Many users with uneven AUCs: a sum in hash order would differ in its last bits.
        let n = 3000;
        let users: Vec<u32> = (0..n).map(|i| (i * 7919 % 401) as u32).collect();
        let scores: Vec<f32> = (0..n).map(|i| ((i * 2654435761u64 as usize) % 1000) as f32 / 1000.0).collect();
        let labels: Vec<f32> = (0..n).map(|i| f32::from(u8::from(i % 3 == 0))).collect();
        let first = user_auc(&scores, &labels, &users).unwrap().unwrap();
        for _ in 0..20 {
            let again = user_auc(&scores, &labels, &users).unwrap().unwrap();
            assert_eq!(again.weighted.to_bits(), first.weighted.to_bits());
            assert_eq!(again.unweighted.to_bits(), first.unweighted.to_bits());
        }
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

    #[test]
    fn spearman_is_one_for_a_monotone_relation_and_handles_ties() {
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [10.0, 20.0, 35.0, 1000.0];
        assert!((spearman(&a, &b).unwrap() - 1.0).abs() < 1e-12);
        let reversed: Vec<f64> = b.iter().rev().copied().collect();
        assert!((spearman(&a, &reversed).unwrap() + 1.0).abs() < 1e-12);
        assert!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_none());
        assert!(spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).unwrap() > 0.9);
    }

    #[test]
    fn pca_finds_the_direction_of_largest_spread_and_separation_tells_sets_apart() {
        // Points along (1, 1, 0) with a little spread along (0, 0, 1).
        let points: Vec<Vec<f32>> = (0..20).map(|i| vec![i as f32, i as f32, (i % 2) as f32 * 0.1]).collect();
        let (projected, explained) = pca_2d(&points);
        assert!(explained > 0.999, "{explained}");
        let first: Vec<f64> = projected.iter().map(|p| p.0.abs()).collect();
        assert!((first[0] - first[19]).abs() < 1e-6, "symmetric ends: {first:?}");
        let far: Vec<Vec<f32>> = (0..10).map(|i| vec![100.0 + i as f32 * 0.1, 0.0]).collect();
        let near: Vec<Vec<f32>> = (0..10).map(|i| vec![i as f32 * 0.1, 0.0]).collect();
        let same: Vec<Vec<f32>> = (0..10).map(|i| vec![0.05 + i as f32 * 0.1, 0.0]).collect();
        assert!(separation(&far, &near) > 100.0);
        assert!(separation(&same, &near) < 0.3);
    }
}
