//! Seeded synthetic batches for tests, examples and benchmarks: Zipf-distributed item
//! popularity, item features derived from the item id, and labels with a learnable signal
//! (a click is likelier when the candidate's category occurs in the history).

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::batch::{Batch, ItemTable, ModelInputs, Samples, Titles};
use crate::error::Result;

/// Shape of a synthetic world and batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    /// Samples per batch.
    pub batch_size: usize,
    /// Longest behavior sequence.
    pub max_seq_len: usize,
    /// Every sequence has `max_seq_len` behaviors (else uniform in `0..=max_seq_len`).
    pub full_length: bool,
    /// Item vocabulary.
    pub n_items: usize,
    /// Category vocabulary.
    pub n_categories: usize,
    /// Shop vocabulary (0: none).
    pub n_shops: usize,
    /// Brand vocabulary (0: none).
    pub n_brands: usize,
    /// Statistics (0: none).
    pub n_stats: usize,
    /// Image width (0: none).
    pub image_dim: usize,
    /// Title vocabulary (0: none).
    pub title_vocab: usize,
    /// Word vector width.
    pub word_dim: usize,
    /// Longest title.
    pub max_title_len: usize,
    /// Zipf exponent of item popularity (0: uniform).
    pub zipf_exponent: f64,
    /// Deduplicate items (the contract); false gives every slot its own table row, the
    /// per-slot baseline of the benchmark.
    pub dedup: bool,
    /// Random seed.
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            batch_size: 8,
            max_seq_len: 6,
            full_length: false,
            n_items: 50,
            n_categories: 5,
            n_shops: 7,
            n_brands: 6,
            n_stats: 2,
            image_dim: 12,
            title_vocab: 30,
            word_dim: 8,
            max_title_len: 6,
            zipf_exponent: 1.0,
            dedup: true,
            seed: 7,
        }
    }
}

impl SyntheticSpec {
    /// The data description of this world.
    pub fn inputs(&self) -> ModelInputs {
        ModelInputs {
            n_items: self.n_items,
            n_shops: self.n_shops,
            n_brands: self.n_brands,
            n_categories: self.n_categories,
            n_stats: self.n_stats,
            stat_coarse_buckets: 10,
            stat_fine_buckets: 100,
            n_behavior_types: 3,
            n_time_buckets: 8,
            image_dim: self.image_dim,
            title_vocab: self.title_vocab,
            word_dim: self.word_dim,
        }
    }

    /// One batch.
    pub fn batch(&self) -> Result<Batch> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let cdf = zipf_cdf(self.n_items.max(1), self.zipf_exponent);
        let draw = |rng: &mut ChaCha8Rng| -> u32 {
            let u: f64 = rng.random();
            cdf.partition_point(|&c| c < u).min(self.n_items.saturating_sub(1)) as u32
        };
        let mut table = ItemTableBuilder::new(self);
        let b = self.batch_size;
        let mut lengths = Vec::with_capacity(b);
        let mut sequences = Vec::with_capacity(b);
        let mut candidates = Vec::with_capacity(b);
        for _ in 0..b {
            let len = if self.full_length { self.max_seq_len } else { rng.random_range(0..=self.max_seq_len) };
            let seq: Vec<u32> = (0..len).map(|_| draw(&mut rng)).collect();
            candidates.push(draw(&mut rng));
            lengths.push(len as u32);
            sequences.push(seq);
        }
        let t = lengths.iter().copied().max().unwrap_or(0) as usize;
        let mut samples = Samples { seq_len: t, ..Samples::default() };
        for ((seq, cand), &len) in sequences.iter().zip(&candidates).zip(&lengths) {
            let cand_category = cand % self.n_categories.max(1) as u32;
            let hit = seq.iter().any(|i| i % self.n_categories.max(1) as u32 == cand_category);
            let p = if hit { 0.8 } else { 0.2 };
            samples.label.push(if rng.random::<f64>() < p { 1.0 } else { 0.0 });
            samples.candidate.push(table.row(*cand));
            samples.lengths.push(len);
            for pos in 0..t {
                let (row, kind, time) = match seq.get(pos) {
                    Some(&item) => (table.row(item), rng.random_range(0..3), rng.random_range(0..8)),
                    None => (0, 0, 0),
                };
                samples.history.push(row);
                samples.behavior_type.push(kind);
                samples.time_bucket.push(time);
            }
        }
        Batch::new(table.finish(), samples)
    }
}

fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (0..n).map(|k| 1.0 / ((k + 1) as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

/// Cheap deterministic hash of an item id, for its derived features.
fn mix(item: u32, salt: u64) -> u64 {
    let mut x = (item as u64) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

struct ItemTableBuilder<'a> {
    spec: &'a SyntheticSpec,
    rows: HashMap<u32, u32>,
    table: ItemTable,
    title_tokens: Vec<Vec<u32>>,
}

impl<'a> ItemTableBuilder<'a> {
    fn new(spec: &'a SyntheticSpec) -> Self {
        let mut table = ItemTable::default();
        if spec.image_dim > 0 {
            table.images = Some(Vec::new());
        }
        Self { spec, rows: HashMap::new(), table, title_tokens: Vec::new() }
    }

    fn row(&mut self, item: u32) -> u32 {
        if self.spec.dedup {
            if let Some(&r) = self.rows.get(&item) {
                return r;
            }
        }
        let s = self.spec;
        let r = self.table.item.len() as u32;
        let t = &mut self.table;
        t.item.push(item);
        if s.n_categories > 0 {
            t.category.push(item % s.n_categories as u32);
        }
        if s.n_shops > 0 {
            t.shop.push((mix(item, 1) % s.n_shops as u64) as u32);
        }
        if s.n_brands > 0 {
            t.brand.push((mix(item, 2) % s.n_brands as u64) as u32);
        }
        for k in 0..s.n_stats {
            t.stat_buckets.push((mix(item, 10 + k as u64) % 10) as u32);
        }
        for k in 0..s.n_stats {
            t.stat_buckets.push((mix(item, 10 + k as u64) % 100) as u32);
        }
        if let Some(images) = &mut t.images {
            for j in 0..s.image_dim {
                images.push((mix(item, 100 + j as u64) % 1000) as f32 / 1000.0 - 0.5);
            }
            // One item in ten has no image, and one in ten no title.
            t.image_present.push(mix(item, 4) % 10 != 0);
        }
        if s.title_vocab > 0 {
            let len =
                if mix(item, 5) % 10 == 0 { 0 } else { 1 + (mix(item, 3) % s.max_title_len.max(1) as u64) as usize };
            self.title_tokens
                .push((0..len).map(|j| (mix(item, 200 + j as u64) % s.title_vocab as u64) as u32).collect());
        }
        self.rows.insert(item, r);
        r
    }

    fn finish(mut self) -> ItemTable {
        if self.spec.title_vocab > 0 {
            let max_len = self.title_tokens.iter().map(Vec::len).max().unwrap_or(0);
            let mut titles = Titles { max_len, ..Titles::default() };
            for tokens in &self.title_tokens {
                titles.lengths.push(tokens.len() as u32);
                titles.tokens.extend(tokens);
                titles.tokens.extend(std::iter::repeat_n(0, max_len - tokens.len()));
            }
            self.table.titles = Some(titles);
        }
        self.table
    }
}
