//! Titles and word vectors of the synthetic world.
//!
//! The vocabulary is made of pronounceable pseudo-words. Each word belongs to one topic (a few
//! are general "filler" words of no topic). A title draws its words from topics whose weights
//! depend on the item's shared and title-only factors and its title appeal, so the title carries
//! exactly those and nothing of the image-only factor. Word vectors sit near their topic's centroid, as
//! real word vectors sit near words of similar meaning.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use super::sampling::WeightedIndex;

const ONSETS: [&str; 16] = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "tr"];
const VOWELS: [&str; 6] = ["a", "e", "i", "o", "u", "ai"];

/// The pseudo-word spelled by index `i` (distinct for distinct `i`).
pub fn pseudo_word(mut i: usize) -> String {
    let mut w = String::new();
    loop {
        let syllable = i % (ONSETS.len() * VOWELS.len());
        w.push_str(ONSETS[syllable / VOWELS.len()]);
        w.push_str(VOWELS[syllable % VOWELS.len()]);
        i /= ONSETS.len() * VOWELS.len();
        if i == 0 {
            break;
        }
        i -= 1;
    }
    w
}

/// The vocabulary: words, their topics and the per-topic samplers.
#[derive(Debug)]
pub struct Vocabulary {
    pub words: Vec<String>,
    /// Topic of each word; `None` for filler words.
    pub topic_of: Vec<Option<usize>>,
    pub n_topics: usize,
    topic_words: Vec<(Vec<usize>, WeightedIndex)>,
    filler: Vec<usize>,
    /// Per topic, a direction in latent space: topic weights are `softmax(dirs · z)`.
    topic_dirs: Vec<Vec<f64>>,
    topic_centroids: Vec<Vec<f32>>,
}

impl Vocabulary {
    /// Builds `size` words over `n_topics` topics; `factor_dim` is the width of the
    /// (shared, title-only, title appeal) factor vector that titles are drawn from.
    pub fn new<R: Rng>(size: usize, n_topics: usize, factor_dim: usize, word_dim: usize, rng: &mut R) -> Self {
        let n_topics = n_topics.max(1);
        let n_filler = (size / 20).clamp(1, 50).min(size.saturating_sub(n_topics).max(1));
        let words: Vec<String> = (0..size).map(pseudo_word).collect();
        let topic_of: Vec<Option<usize>> =
            (0..size).map(|w| (w >= n_filler).then(|| (w - n_filler) % n_topics)).collect();
        let topic_words = (0..n_topics)
            .map(|t| {
                let members: Vec<usize> = (0..size).filter(|&w| topic_of[w] == Some(t)).collect();
                // Zipf-like frequencies inside each topic.
                let sampler = WeightedIndex::new((0..members.len()).map(|r| 1.0 / (r as f64 + 1.0)))
                    .or_else(|| WeightedIndex::new([1.0]))
                    .expect("a one-entry sampler always exists");
                (members, sampler)
            })
            .collect();
        let filler = (0..n_filler.min(size)).collect();
        let topic_dirs = (0..n_topics).map(|_| normal_vec(rng, factor_dim)).collect();
        let topic_centroids =
            (0..n_topics).map(|_| normal_vec(rng, word_dim).into_iter().map(|x| x as f32).collect()).collect();
        Self { words, topic_of, n_topics, topic_words, filler, topic_dirs, topic_centroids }
    }

    /// A title for an item with title factors `z` (shared, title-only and appeal, concatenated).
    pub fn title<R: Rng>(&self, z: &[f64], category_word: Option<&str>, rng: &mut R) -> String {
        let scale = 3.0 / (z.len().max(1) as f64).sqrt();
        let logits: Vec<f64> =
            self.topic_dirs.iter().map(|d| scale * d.iter().zip(z).map(|(a, b)| a * b).sum::<f64>()).collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let topic_sampler = WeightedIndex::new(logits.iter().map(|l| (l - max).exp()));
        let len = rng.random_range(5..=12);
        let mut out: Vec<&str> = Vec::with_capacity(len + 1);
        if let Some(c) = category_word {
            out.push(c);
        }
        for _ in 0..len {
            let word = match (&topic_sampler, rng.random::<f64>() < 0.15) {
                (Some(ts), false) => {
                    let (members, sampler) = &self.topic_words[ts.sample(rng)];
                    members.get(sampler.sample(rng)).copied()
                }
                _ => self.filler.get(rng.random_range(0..self.filler.len().max(1))).copied(),
            };
            if let Some(w) = word {
                out.push(&self.words[w]);
            }
        }
        out.join(" ")
    }

    /// The word vector of word `w`: its topic's centroid plus noise (filler words: noise only).
    pub fn vector<R: Rng>(&self, w: usize, rng: &mut R) -> Vec<f32> {
        let dim = self.topic_centroids.first().map_or(0, Vec::len);
        let noise: Vec<f64> = normal_vec(rng, dim);
        match self.topic_of[w] {
            Some(t) => self.topic_centroids[t].iter().zip(noise).map(|(c, n)| c + 0.5 * n as f32).collect(),
            None => noise.into_iter().map(|n| 0.3 * n as f32).collect(),
        }
    }
}

/// `n` independent standard normal draws.
pub fn normal_vec<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<f64> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn pseudo_words_are_distinct() {
        let words: std::collections::HashSet<_> = (0..20_000).map(pseudo_word).collect();
        assert_eq!(words.len(), 20_000);
    }

    #[test]
    fn titles_follow_their_factors() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let v = Vocabulary::new(500, 10, 4, 8, &mut rng);
        let z = [2.0, -1.0, 0.5, 1.5];
        let topic_hist = |z: &[f64], rng: &mut rand_chacha::ChaCha8Rng| {
            let mut h = vec![0usize; 10];
            for _ in 0..200 {
                for tok in v.title(z, None, rng).split(' ') {
                    let w = v.words.iter().position(|x| x == tok).unwrap();
                    if let Some(t) = v.topic_of[w] {
                        h[t] += 1;
                    }
                }
            }
            h
        };
        let a = topic_hist(&z, &mut rng);
        let b = topic_hist(&[-2.0, 1.0, -0.5, -1.5], &mut rng);
        assert_ne!(
            a.iter().enumerate().max_by_key(|x| x.1).unwrap().0,
            b.iter().enumerate().max_by_key(|x| x.1).unwrap().0
        );
    }
}
