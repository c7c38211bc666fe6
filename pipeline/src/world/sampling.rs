//! Small sampling tools for the generator: weighted choice by binary search over a cumulative
//! table, and a binned AUC accumulator with bounded memory.

use rand::Rng;

/// Draws indices with probability proportional to fixed weights (O(log n) a draw).
#[derive(Debug, Clone)]
pub struct WeightedIndex {
    cumulative: Vec<f64>,
}

impl WeightedIndex {
    /// `None` when there is no positive weight to draw from.
    pub fn new(weights: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut total = 0.0;
        let cumulative: Vec<f64> = weights
            .into_iter()
            .map(|w| {
                total += if w.is_finite() && w > 0.0 { w } else { 0.0 };
                total
            })
            .collect();
        (total > 0.0).then_some(Self { cumulative })
    }

    /// Number of entries (including zero-weight ones).
    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    /// One draw.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let total = *self.cumulative.last().unwrap_or(&0.0);
        let x = rng.random::<f64>() * total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        i.min(self.cumulative.len().saturating_sub(1))
    }
}

/// Area under the ROC curve of scores in [0, 1] against 0/1 labels, accumulated in 2^20 bins.
///
/// Scores that share a bin count as ties (half a correct ordering), so the result is exact up to
/// a score resolution of about 1e-6, with memory fixed at 16 MiB however many rows are seen.
#[derive(Debug, Clone)]
pub struct BinnedAuc {
    positives: Vec<u64>,
    negatives: Vec<u64>,
}

const AUC_BINS: usize = 1 << 20;

impl Default for BinnedAuc {
    fn default() -> Self {
        Self { positives: vec![0; AUC_BINS], negatives: vec![0; AUC_BINS] }
    }
}

impl BinnedAuc {
    /// Adds one scored row.
    pub fn add(&mut self, score: f64, label: bool) {
        let b = ((score.clamp(0.0, 1.0) * AUC_BINS as f64) as usize).min(AUC_BINS - 1);
        if label {
            self.positives[b] += 1;
        } else {
            self.negatives[b] += 1;
        }
    }

    /// The AUC, or `None` when either class is empty.
    pub fn auc(&self) -> Option<f64> {
        let (mut negatives_below, mut correct) = (0u64, 0.0f64);
        for (p, n) in self.positives.iter().zip(&self.negatives) {
            correct += *p as f64 * (negatives_below as f64 + 0.5 * *n as f64);
            negatives_below += n;
        }
        let positives: u64 = self.positives.iter().sum();
        (positives > 0 && negatives_below > 0).then(|| correct / (positives as f64 * negatives_below as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn weighted_index_follows_weights() {
        let w = WeightedIndex::new([1.0, 0.0, 3.0]).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut counts = [0usize; 3];
        for _ in 0..40_000 {
            counts[w.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[1], 0);
        let share = counts[2] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{share}");
        assert!(WeightedIndex::new([0.0, f64::NAN]).is_none());
    }

    #[test]
    fn binned_auc_matches_hand_computed_values() {
        let mut a = BinnedAuc::default();
        // scores: pos 0.9, 0.4; neg 0.5, 0.1 → pairs (0.9>0.5,0.9>0.1,0.4<0.5,0.4>0.1) = 3/4
        for (s, l) in [(0.9, true), (0.4, true), (0.5, false), (0.1, false)] {
            a.add(s, l);
        }
        assert!((a.auc().unwrap() - 0.75).abs() < 1e-12);
        let mut ties = BinnedAuc::default();
        ties.add(0.3, true);
        ties.add(0.3, false);
        assert!((ties.auc().unwrap() - 0.5).abs() < 1e-12);
        assert!(BinnedAuc::default().auc().is_none());
    }
}
