//! The batch contract: what the feature pipeline hands the model, as plain Rust vectors.
//!
//! A batch is built for speed (§5 of the issue, §4.9.2 of the paper): an item's representation
//! depends on the item alone, so a batch carries a table of its **distinct** items
//! ([`ItemTable`]) and every sample refers to rows of that table, for its candidate and for each
//! of its behaviors. The model computes each distinct item once and gathers. Sequences are padded
//! only up to the longest one in the batch (`seq_len`), never further.
//!
//! All 2-D arrays are row-major `Vec`s; their shapes are documented per field. Ids are `u32`
//! (vocabularies up to 4 billion); index 0 of every vocabulary is a valid id (conventionally
//! "unknown").
//!
//! ```
//! use marnflow_model::{Batch, ItemTable, ModelInputs, Samples};
//! let inputs = ModelInputs::ids_only(100, 10);
//! let items = ItemTable::ids_only(vec![5, 7], vec![1, 2]);
//! let samples = Samples {
//!     candidate: vec![0],
//!     history: vec![1, 0],
//!     behavior_type: vec![0, 0],
//!     time_bucket: vec![3, 0],
//!     lengths: vec![1],
//!     seq_len: 2,
//!     label: vec![1.0],
//! };
//! let batch = Batch::new(items, samples).unwrap();
//! batch.check_inputs(&inputs).unwrap();
//! assert_eq!(batch.len(), 1);
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What the data provides: vocabulary sizes and dense widths. A modality whose size is 0 is
/// absent, and the model drops it (no images: `image_dim = 0`; no titles: `title_vocab = 0`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInputs {
    /// Item id vocabulary size (ids `0..n_items`). Must be > 0.
    pub n_items: usize,
    /// Shop id vocabulary size; 0 when the data has no shops.
    pub n_shops: usize,
    /// Brand id vocabulary size; 0 when the data has no brands.
    pub n_brands: usize,
    /// Category id vocabulary size; 0 when the data has no categories.
    pub n_categories: usize,
    /// Number of item statistics (exposures, clicks, orders, ...); 0 when absent.
    pub n_stats: usize,
    /// Buckets of the coarse discretisation of every statistic (the paper: 10).
    pub stat_coarse_buckets: usize,
    /// Buckets of the fine discretisation of every statistic (the paper: 100).
    pub stat_fine_buckets: usize,
    /// Behavior types (click, add-to-cart, purchase, ...). Must be > 0.
    pub n_behavior_types: usize,
    /// Buckets of the discretised time between a behavior and the exposure. Must be > 0.
    pub n_time_buckets: usize,
    /// Width of the image embedding rows (4096 for VGG16 fc7); 0 when the data has no images.
    pub image_dim: usize,
    /// Title word vocabulary size; 0 when the data has no titles.
    pub title_vocab: usize,
    /// Word vector width (the paper: 300). Ignored when `title_vocab = 0`.
    pub word_dim: usize,
}

impl ModelInputs {
    /// Inputs with item and category ids only (no shop, brand, statistic, image or title);
    /// 3 behavior types and 16 time buckets.
    pub fn ids_only(n_items: usize, n_categories: usize) -> Self {
        Self {
            n_items,
            n_shops: 0,
            n_brands: 0,
            n_categories,
            n_stats: 0,
            stat_coarse_buckets: 10,
            stat_fine_buckets: 100,
            n_behavior_types: 3,
            n_time_buckets: 16,
            image_dim: 0,
            title_vocab: 0,
            word_dim: 0,
        }
    }

    /// Whether the data carries images.
    pub fn has_images(&self) -> bool {
        self.image_dim > 0
    }

    /// Whether the data carries titles.
    pub fn has_titles(&self) -> bool {
        self.title_vocab > 0 && self.word_dim > 0
    }

    /// Whether the data carries statistics.
    pub fn has_stats(&self) -> bool {
        self.n_stats > 0 && self.stat_coarse_buckets > 0 && self.stat_fine_buckets > 0
    }

    /// Report every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.n_items == 0 {
            problems.push("n_items must be > 0".to_string());
        }
        if self.n_behavior_types == 0 {
            problems.push("n_behavior_types must be > 0".to_string());
        }
        if self.n_time_buckets == 0 {
            problems.push("n_time_buckets must be > 0".to_string());
        }
        if self.n_stats > 0 && (self.stat_coarse_buckets == 0 || self.stat_fine_buckets == 0) {
            problems.push("statistics need stat_coarse_buckets > 0 and stat_fine_buckets > 0".into());
        }
        if self.title_vocab > 0 && self.word_dim == 0 {
            problems.push("titles need word_dim > 0".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems.join("; ")))
        }
    }
}

/// Title word indices of the distinct items, padded to the longest title of the batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Titles {
    /// `[n_items, max_len]` word indices (`< title_vocab`); positions at or past a title's
    /// length are padding and are ignored (any value in range).
    pub tokens: Vec<u32>,
    /// `[n_items]` number of real words of every title (`<= max_len`).
    pub lengths: Vec<u32>,
    /// Padded title length of this batch.
    pub max_len: usize,
}

/// The batch's distinct items and their features. Row `i` of every field describes item `i`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemTable {
    /// `[n]` item ids (`< n_items`).
    pub item: Vec<u32>,
    /// `[n]` shop ids (`< n_shops`), or empty when the data has no shops.
    pub shop: Vec<u32>,
    /// `[n]` brand ids (`< n_brands`), or empty when the data has no brands.
    pub brand: Vec<u32>,
    /// `[n]` category ids (`< n_categories`), or empty when the data has no categories.
    pub category: Vec<u32>,
    /// `[n, 2 * n_stats]` bucket ids: columns `0..n_stats` are the coarse (10-bucket) ids of
    /// every statistic, columns `n_stats..2 * n_stats` the fine (100-bucket) ids. Empty when
    /// the data has no statistics.
    pub stat_buckets: Vec<u32>,
    /// `[n, image_dim]` image embeddings, when the data has images. The row of an item without
    /// an image is ignored (any finite values).
    pub images: Option<Vec<f32>>,
    /// `[n]` whether each item has an image; empty means every item has one. An item without an
    /// image leaves the image modality out of MAF, the discriminators and the max-pool.
    pub image_present: Vec<bool>,
    /// `[n]` rows of an image table kept on the model's device
    /// ([`ResidentImages`](crate::ResidentImages)), given instead of `images` and
    /// `image_present`: the batch then carries indices, and the images are gathered on the
    /// device. Empty when the batch carries its images itself.
    pub image_rows: Vec<u32>,
    /// Title words, when the data has titles.
    pub titles: Option<Titles>,
}

impl ItemTable {
    /// A table with item and category ids only.
    pub fn ids_only(item: Vec<u32>, category: Vec<u32>) -> Self {
        Self { item, category, ..Self::default() }
    }

    /// Number of distinct items.
    pub fn len(&self) -> usize {
        self.item.len()
    }

    /// Whether the table has no item.
    pub fn is_empty(&self) -> bool {
        self.item.is_empty()
    }
}

/// Per-sample fields: one impression (a user's behavior sequence and a candidate) per row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Samples {
    /// `[batch]` candidate item: a row of the [`ItemTable`].
    pub candidate: Vec<u32>,
    /// `[batch, seq_len]` behavior items, oldest first: rows of the [`ItemTable`]. Positions at
    /// or past a sample's length are padding (any row in range).
    pub history: Vec<u32>,
    /// `[batch, seq_len]` behavior type ids (`< n_behavior_types`).
    pub behavior_type: Vec<u32>,
    /// `[batch, seq_len]` discretised time-before-exposure bucket ids (`< n_time_buckets`).
    pub time_bucket: Vec<u32>,
    /// `[batch]` real sequence lengths (`<= seq_len`); the mask is `position < length`.
    pub lengths: Vec<u32>,
    /// `T`, the padded sequence length: the longest real sequence of the batch (a larger value
    /// is accepted and changes nothing but the work done).
    pub seq_len: usize,
    /// `[batch]` labels, 1.0 = click, 0.0 = no click.
    pub label: Vec<f32>,
}

/// A validated batch: distinct items plus samples that index them.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    items: ItemTable,
    samples: Samples,
}

fn check_len(problems: &mut Vec<String>, name: &str, got: usize, want: usize) {
    if got != want {
        problems.push(format!("{name} has {got} values, expected {want}"));
    }
}

fn check_range(problems: &mut Vec<String>, name: &str, values: &[u32], bound: usize) {
    if let Some(bad) = values.iter().find(|&&v| v as usize >= bound) {
        problems.push(format!("{name} holds {bad}, outside 0..{bound}"));
    }
}

impl Batch {
    /// Build a batch, checking that every shape is consistent and that every row index points
    /// into the item table. Vocabulary ranges are checked by [`Batch::check_inputs`].
    pub fn new(items: ItemTable, samples: Samples) -> Result<Self> {
        let mut problems = Vec::new();
        let n = items.item.len();
        let b = samples.candidate.len();
        let t = samples.seq_len;
        if n == 0 {
            problems.push("the item table is empty".to_string());
        }
        if b == 0 {
            problems.push("the batch has no sample".to_string());
        }
        for (name, field) in
            [("items.shop", &items.shop), ("items.brand", &items.brand), ("items.category", &items.category)]
        {
            if !field.is_empty() {
                check_len(&mut problems, name, field.len(), n);
            }
        }
        if !items.stat_buckets.is_empty() && (n == 0 || items.stat_buckets.len() % (2 * n) != 0) {
            problems.push(format!(
                "items.stat_buckets has {} values, not a multiple of 2 * {n} items",
                items.stat_buckets.len()
            ));
        }
        if let Some(images) = &items.images {
            if n == 0 || images.len() % n != 0 || images.is_empty() {
                problems
                    .push(format!("items.images has {} values, not a positive multiple of {n} items", images.len()));
            } else if images.iter().any(|v| !v.is_finite()) {
                problems.push("items.images holds a non-finite value".to_string());
            }
        }
        if !items.image_present.is_empty() {
            check_len(&mut problems, "items.image_present", items.image_present.len(), n);
        }
        if !items.image_rows.is_empty() {
            check_len(&mut problems, "items.image_rows", items.image_rows.len(), n);
            if items.images.is_some() || !items.image_present.is_empty() {
                problems.push("items.image_rows is given together with items.images: give one or the other".into());
            }
        }
        if let Some(titles) = &items.titles {
            check_len(&mut problems, "items.titles.lengths", titles.lengths.len(), n);
            check_len(&mut problems, "items.titles.tokens", titles.tokens.len(), n * titles.max_len);
            if let Some(bad) = titles.lengths.iter().find(|&&l| l as usize > titles.max_len) {
                problems.push(format!("a title length {bad} exceeds titles.max_len {}", titles.max_len));
            }
        }
        check_len(&mut problems, "samples.history", samples.history.len(), b * t);
        check_len(&mut problems, "samples.behavior_type", samples.behavior_type.len(), b * t);
        check_len(&mut problems, "samples.time_bucket", samples.time_bucket.len(), b * t);
        check_len(&mut problems, "samples.lengths", samples.lengths.len(), b);
        check_len(&mut problems, "samples.label", samples.label.len(), b);
        check_range(&mut problems, "samples.candidate", &samples.candidate, n);
        check_range(&mut problems, "samples.history", &samples.history, n);
        if let Some(bad) = samples.lengths.iter().find(|&&l| l as usize > t) {
            problems.push(format!("a sequence length {bad} exceeds seq_len {t}"));
        }
        if let Some(bad) = samples.label.iter().find(|l| !(0.0..=1.0).contains(*l)) {
            problems.push(format!("label {bad} is outside [0, 1]"));
        }
        if problems.is_empty() {
            Ok(Self { items, samples })
        } else {
            Err(Error::Batch(problems.join("; ")))
        }
    }

    /// Check ids against the vocabularies and dense widths the model was built for. A modality
    /// the model uses must be present in the batch; one it does not use is ignored.
    pub fn check_inputs(&self, inputs: &ModelInputs) -> Result<()> {
        let mut problems = Vec::new();
        let items = &self.items;
        let n = items.len();
        check_range(&mut problems, "items.item", &items.item, inputs.n_items);
        for (name, field, vocab) in [
            ("items.shop", &items.shop, inputs.n_shops),
            ("items.brand", &items.brand, inputs.n_brands),
            ("items.category", &items.category, inputs.n_categories),
        ] {
            if vocab > 0 {
                if field.is_empty() {
                    problems.push(format!("{name} is missing but the model uses it"));
                }
                check_range(&mut problems, name, field, vocab);
            }
        }
        if inputs.has_stats() {
            check_len(&mut problems, "items.stat_buckets", items.stat_buckets.len(), n * 2 * inputs.n_stats);
            for (i, &v) in items.stat_buckets.iter().enumerate() {
                let col = i % (2 * inputs.n_stats);
                let bound = if col < inputs.n_stats { inputs.stat_coarse_buckets } else { inputs.stat_fine_buckets };
                if v as usize >= bound {
                    problems.push(format!("items.stat_buckets holds {v} in column {col}, outside 0..{bound}"));
                    break;
                }
            }
        }
        if inputs.has_images() {
            match &items.images {
                None if items.image_rows.is_empty() => {
                    problems.push("items.images is missing but the model uses images".into())
                }
                None => {}
                Some(images) => check_len(&mut problems, "items.images", images.len(), n * inputs.image_dim),
            }
        }
        if inputs.has_titles() {
            match &items.titles {
                None => problems.push("items.titles is missing but the model uses titles".into()),
                Some(titles) => check_range(&mut problems, "items.titles.tokens", &titles.tokens, inputs.title_vocab),
            }
        }
        let s = &self.samples;
        check_range(&mut problems, "samples.behavior_type", &s.behavior_type, inputs.n_behavior_types);
        check_range(&mut problems, "samples.time_bucket", &s.time_bucket, inputs.n_time_buckets);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Batch(problems.join("; ")))
        }
    }

    /// The distinct items.
    pub fn items(&self) -> &ItemTable {
        &self.items
    }

    /// The samples.
    pub fn samples(&self) -> &Samples {
        &self.samples
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.candidate.len()
    }

    /// Whether the batch has no sample (never true for a validated batch).
    pub fn is_empty(&self) -> bool {
        self.samples.candidate.is_empty()
    }

    /// Padded sequence length `T`.
    pub fn seq_len(&self) -> usize {
        self.samples.seq_len
    }

    /// Number of distinct items.
    pub fn n_items(&self) -> usize {
        self.items.len()
    }

    /// Labels, `[batch]`.
    pub fn labels(&self) -> &[f32] {
        &self.samples.label
    }

    /// Take the parts back.
    pub fn into_parts(self) -> (ItemTable, Samples) {
        (self.items, self.samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (ItemTable, Samples) {
        let items = ItemTable::ids_only(vec![5, 7, 9], vec![1, 2, 1]);
        let samples = Samples {
            candidate: vec![0, 2],
            history: vec![1, 2, 0, 1, 0, 0],
            behavior_type: vec![0; 6],
            time_bucket: vec![0; 6],
            lengths: vec![3, 1],
            seq_len: 3,
            label: vec![1.0, 0.0],
        };
        (items, samples)
    }

    #[test]
    fn a_consistent_batch_is_accepted() {
        let (items, samples) = tiny();
        let batch = Batch::new(items, samples).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.n_items(), 3);
        batch.check_inputs(&ModelInputs::ids_only(10, 3)).unwrap();
    }

    #[test]
    fn every_shape_problem_is_reported_at_once() {
        let (items, mut samples) = tiny();
        samples.history.pop();
        samples.candidate[0] = 3;
        samples.lengths[1] = 4;
        let err = Batch::new(items, samples).unwrap_err().to_string();
        assert!(err.contains("samples.history has 5"), "{err}");
        assert!(err.contains("samples.candidate holds 3"), "{err}");
        assert!(err.contains("exceeds seq_len"), "{err}");
    }

    #[test]
    fn ids_outside_the_vocabulary_are_errors() {
        let (items, samples) = tiny();
        let batch = Batch::new(items, samples).unwrap();
        let err = batch.check_inputs(&ModelInputs::ids_only(8, 3)).unwrap_err().to_string();
        assert!(err.contains("items.item holds 9"), "{err}");
        let mut inputs = ModelInputs::ids_only(10, 3);
        inputs.image_dim = 4;
        assert!(batch.check_inputs(&inputs).is_err());
    }
}
