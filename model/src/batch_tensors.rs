//! A validated [`Batch`] moved onto a device as tensors, in the layout the modules consume.
//!
//! Everything a step derives from the batch alone (masks, the rows each embedding table is read
//! at) is built here, where the trainer's reader thread builds it ahead of the step, and not in
//! the step's hot path.

use std::sync::Arc;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::batch::{Batch, ModelInputs};
use crate::error::{Error, Result};

/// Smallest padded title length: the widest TextCNN window (4) needs at least 4 positions.
pub(crate) const MIN_TITLE_LEN: usize = 4;

/// Tensors of one batch. `n` = distinct items, `B` = samples, `T` = padded sequence length.
#[derive(Debug, Clone)]
pub struct BatchTensors {
    /// Distinct items `n`.
    pub n_items: usize,
    /// Samples `B`.
    pub batch_size: usize,
    /// Padded sequence length `T`.
    pub seq_len: usize,
    /// `[n]` item ids.
    pub item: Tensor<1, Int>,
    /// `[n]` shop ids, when the model uses shops.
    pub shop: Option<Tensor<1, Int>>,
    /// `[n]` brand ids, when the model uses brands.
    pub brand: Option<Tensor<1, Int>>,
    /// `[n]` category ids, when the model uses categories.
    pub category: Option<Tensor<1, Int>>,
    /// `[n * 2 * n_stats]` rows of one flat statistic table (coarse then fine, per statistic),
    /// when the model uses statistics.
    pub stat_rows: Option<Tensor<1, Int>>,
    /// `[n, image_dim]`, when the model uses images.
    pub images: Option<Tensor<2>>,
    /// `[n, 1]` 1.0 where the item has an image, 0.0 where it has none (when the model uses
    /// images).
    pub image_present: Option<Tensor<2>>,
    /// `[n * L]` title word indices (L = padded title length, at least 4), when the model uses
    /// titles.
    pub title_tokens: Option<Tensor<1, Int>>,
    /// `[n, L, 1]` 1.0 at a title's real words, 0.0 at its padding, when the model uses titles.
    pub title_word_mask: Option<Tensor<3>>,
    /// The batch's distinct title words, sorted (`[V]`), and every title position's row among them
    /// (`[n, L]`; padding is `V`): the title TextCNN's input on burn's CPU backend
    /// ([`crate::modules::fused::title_pool`]).
    pub title_words: Option<(Tensor<1, Int>, Tensor<2, Int>)>,
    /// `[n, 1]` 1.0 where the item has a title (at least one word), 0.0 where it has none (when
    /// the model uses titles).
    pub title_present: Option<Tensor<2>>,
    /// `[B]` candidate rows of the item table.
    pub candidate: Tensor<1, Int>,
    /// `[B * T]` history rows of the item table.
    pub history: Tensor<1, Int>,
    /// `[B * T]` behavior type ids.
    pub behavior_type: Tensor<1, Int>,
    /// `[B * T]` time bucket ids.
    pub time_bucket: Tensor<1, Int>,
    /// `[B, T]` true at padding positions (`position >= length`).
    pub padding: Tensor<2, Bool>,
    /// `[B, T]` 1.0 at real positions, 0.0 at padding.
    pub mask: Tensor<2>,
    /// `[B, T]` 1.0 at each sample's last real position (all 0.0 for an empty history): picks
    /// the last real hidden state of a GRU.
    pub last: Tensor<2>,
    /// `[B]` real lengths.
    pub lengths: Vec<u32>,
    /// `[B]` labels.
    pub labels: Tensor<1>,
    /// The rows of each embedding table this batch reads, sorted and distinct: the only rows
    /// whose gradient can be non-zero (the row-wise AdaGrad updates those alone).
    pub rows: TableRows,
}

/// An embedding table of the modality embedding layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Item ids.
    Item,
    /// Shop ids.
    Shop,
    /// Brand ids.
    Brand,
    /// Category ids.
    Category,
    /// The flat statistic bucket table.
    Statistic,
    /// Title word vectors.
    Word,
    /// Behavior types.
    BehaviorType,
    /// Time buckets.
    Time,
}

/// The sorted, distinct rows a batch reads of each embedding table (host memory; shared, so a
/// clone is free).
#[derive(Debug, Clone, Default)]
pub struct TableRows {
    rows: [Option<Arc<[i64]>>; 8],
}

impl TableRows {
    /// The rows of `table` this batch reads (`None`: the batch does not read that table).
    pub fn get(&self, table: Table) -> Option<Arc<[i64]>> {
        self.rows[table as usize].clone()
    }

    fn set(&mut self, table: Table, ids: impl IntoIterator<Item = u32>) {
        let mut v: Vec<i64> = ids.into_iter().map(i64::from).collect();
        v.sort_unstable();
        v.dedup();
        self.rows[table as usize] = Some(v.into());
    }
}

fn column(values: impl IntoIterator<Item = f32>, device: &Device) -> Tensor<2> {
    let v: Vec<f32> = values.into_iter().collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n, 1]), device)
}

pub(crate) fn ints(values: impl IntoIterator<Item = u32>, device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = values.into_iter().map(i64::from).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// An image table kept on the model's device for a whole run: each item's image once, so a batch
/// sends row indices ([`ItemTable::image_rows`](crate::ItemTable::image_rows)) instead of its
/// items' images, and [`BatchTensors::with_images`] gathers them on the device. Cloning shares
/// the tensors.
#[derive(Debug, Clone)]
pub struct ResidentImages {
    /// `[rows, dim]`.
    images: Tensor<2>,
    /// `[rows, 1]` 1.0 where the row has an image.
    present: Tensor<2>,
    rows: usize,
    dim: usize,
}

impl ResidentImages {
    /// The table of `present.len()` rows of `dim` values each (`values` row-major; a row whose
    /// `present` is false is ignored, any finite values), moved to `device`.
    pub fn new(values: Vec<f32>, present: &[bool], dim: usize, device: &Device) -> Result<Self> {
        let rows = present.len();
        if dim == 0 || rows == 0 || values.len() != rows * dim {
            return Err(Error::Batch(format!(
                "a resident image table needs {rows} rows of {dim} values (rows and width above 0), got {} values",
                values.len()
            )));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Batch("the resident image table holds a non-finite value".into()));
        }
        Ok(Self {
            images: Tensor::from_data(TensorData::new(values, [rows, dim]), device),
            present: column(present.iter().map(|&p| if p { 1.0 } else { 0.0 }), device),
            rows,
            dim,
        })
    }

    /// `batch`'s own images as a table on `device`, and the batch giving them as its rows:
    /// what a benchmark needs to time a batch whose images already wait on the device.
    pub fn from_batch(batch: &Batch, image_dim: usize, device: &Device) -> Result<(Batch, Self)> {
        let (mut items, samples) = batch.clone().into_parts();
        let n = items.len();
        let values = items.images.take().ok_or_else(|| Error::Batch("the batch has no images to move".into()))?;
        let present = std::mem::take(&mut items.image_present);
        let present = if present.is_empty() { vec![true; n] } else { present };
        items.image_rows = (0..n as u32).collect();
        let table = Self::new(values, &present, image_dim, device)?;
        Ok((Batch::new(items, samples)?, table))
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Width of a row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Bytes the table holds on its device.
    pub fn bytes(&self) -> usize {
        self.rows * (self.dim + 1) * std::mem::size_of::<f32>()
    }

    /// The images and presence column `[n, dim]`, `[n, 1]` of `rows`, gathered on the device.
    fn gather(&self, rows: &[u32], device: &Device) -> Result<(Tensor<2>, Tensor<2>)> {
        if let Some(bad) = rows.iter().find(|&&r| r as usize >= self.rows) {
            return Err(Error::Batch(format!(
                "items.image_rows holds {bad}, outside the resident image table's 0..{}",
                self.rows
            )));
        }
        let at = ints(rows.iter().copied(), device);
        Ok((self.images.clone().select(0, at.clone()), self.present.clone().select(0, at)))
    }
}

impl BatchTensors {
    /// Validate `batch` against `inputs` and move it to `device`.
    pub fn new(batch: &Batch, inputs: &ModelInputs, device: &Device) -> Result<Self> {
        Self::with_images(batch, inputs, device, None)
    }

    /// [`BatchTensors::new`] for a batch that may give its images as rows of `resident` (on
    /// `device`), gathered there.
    pub fn with_images(
        batch: &Batch,
        inputs: &ModelInputs,
        device: &Device,
        resident: Option<&ResidentImages>,
    ) -> Result<Self> {
        batch.check_inputs(inputs)?;
        let items = batch.items();
        let s = batch.samples();
        let n = items.len();
        let b = batch.len();
        let t = batch.seq_len();

        let opt_ids = |vocab: usize, field: &Vec<u32>| (vocab > 0).then(|| ints(field.iter().copied(), device));
        // Rows of one flat statistic table: coarse then fine buckets, per statistic.
        let stat_table_rows: Option<Vec<u32>> = inputs.has_stats().then(|| {
            let k = inputs.n_stats;
            let coarse = inputs.stat_coarse_buckets as u32;
            let fine = inputs.stat_fine_buckets as u32;
            items
                .stat_buckets
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let col = (i % (2 * k)) as u32;
                    if (col as usize) < k {
                        col * coarse + v
                    } else {
                        k as u32 * coarse + (col - k as u32) * fine + v
                    }
                })
                .collect()
        });
        let stat_rows = stat_table_rows.as_ref().map(|rows| ints(rows.iter().copied(), device));
        let (images, image_present) = match (&items.images, inputs.has_images()) {
            (None, true) if !items.image_rows.is_empty() => {
                let resident = resident.ok_or_else(|| {
                    Error::Batch("the batch gives its images as resident rows, but no resident table was given".into())
                })?;
                if resident.dim != inputs.image_dim {
                    return Err(Error::Batch(format!(
                        "the resident image table is {} wide, the model reads {}",
                        resident.dim, inputs.image_dim
                    )));
                }
                let (images, present) = resident.gather(&items.image_rows, device)?;
                (Some(images), Some(present))
            }
            (Some(images), true) => {
                let present =
                    (0..n).map(|i| if items.image_present.get(i).copied().unwrap_or(true) { 1.0 } else { 0.0 });
                (
                    Some(Tensor::<2>::from_data(TensorData::new(images.clone(), [n, inputs.image_dim]), device)),
                    Some(column(present, device)),
                )
            }
            _ => (None, None),
        };
        let title_present = (inputs.has_titles() && items.titles.is_some()).then(|| {
            let lengths = items.titles.as_ref().map(|t| t.lengths.as_slice()).unwrap_or(&[]);
            column(lengths.iter().map(|&l| if l > 0 { 1.0 } else { 0.0 }), device)
        });
        let mut rows = TableRows::default();
        let (title_tokens, title_word_mask, title_words) = match (&items.titles, inputs.has_titles()) {
            (Some(titles), true) => {
                let l = titles.max_len.max(MIN_TITLE_LEN);
                let mut tokens = vec![0u32; n * l];
                let mut word_mask = vec![0.0f32; n * l];
                for i in 0..n {
                    let len = titles.lengths[i] as usize;
                    tokens[i * l..i * l + len]
                        .copy_from_slice(&titles.tokens[i * titles.max_len..i * titles.max_len + len]);
                    word_mask[i * l..i * l + len].fill(1.0);
                }
                // Every real word's row among the distinct words (a table over the vocabulary).
                let mut row_of = vec![u32::MAX; inputs.title_vocab.max(1)];
                for i in 0..n {
                    for &w in &tokens[i * l..i * l + titles.lengths[i] as usize] {
                        if let Some(r) = row_of.get_mut(w as usize) {
                            *r = 0;
                        }
                    }
                }
                let mut words = Vec::new();
                for (w, r) in row_of.iter_mut().enumerate() {
                    if *r == 0 {
                        *r = words.len() as u32;
                        words.push(w as u32);
                    }
                }
                let pad = words.len() as u32;
                let mut local = vec![pad; n * l];
                for i in 0..n {
                    for p in 0..titles.lengths[i] as usize {
                        local[i * l + p] = row_of.get(tokens[i * l + p] as usize).copied().unwrap_or(pad);
                    }
                }
                let local: Vec<i64> = local.into_iter().map(i64::from).collect();
                let title_words = (ints(words, device), Tensor::from_data(TensorData::new(local, [n, l]), device));
                rows.set(Table::Word, tokens.iter().copied());
                let word_mask = Tensor::<3>::from_data(TensorData::new(word_mask, [n, l, 1]), device);
                (Some(ints(tokens, device)), Some(word_mask), Some(title_words))
            }
            _ => (None, None, None),
        };

        rows.set(Table::Item, items.item.iter().copied());
        for (table, vocab, ids) in [
            (Table::Shop, inputs.n_shops, &items.shop),
            (Table::Brand, inputs.n_brands, &items.brand),
            (Table::Category, inputs.n_categories, &items.category),
        ] {
            if vocab > 0 {
                rows.set(table, ids.iter().copied());
            }
        }
        if let Some(stat) = stat_table_rows {
            rows.set(Table::Statistic, stat);
        }
        rows.set(Table::BehaviorType, s.behavior_type.iter().copied());
        rows.set(Table::Time, s.time_bucket.iter().copied());

        let mut padding = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        let mut last = Vec::with_capacity(b * t);
        for &len in &s.lengths {
            for p in 0..t {
                padding.push(p >= len as usize);
                mask.push(if p < len as usize { 1.0f32 } else { 0.0 });
                last.push(if p + 1 == len as usize { 1.0f32 } else { 0.0 });
            }
        }
        Ok(Self {
            n_items: n,
            batch_size: b,
            seq_len: t,
            item: ints(items.item.iter().copied(), device),
            shop: opt_ids(inputs.n_shops, &items.shop),
            brand: opt_ids(inputs.n_brands, &items.brand),
            category: opt_ids(inputs.n_categories, &items.category),
            stat_rows,
            images,
            image_present,
            title_tokens,
            title_word_mask,
            title_words,
            title_present,
            candidate: ints(s.candidate.iter().copied(), device),
            history: ints(s.history.iter().copied(), device),
            behavior_type: ints(s.behavior_type.iter().copied(), device),
            time_bucket: ints(s.time_bucket.iter().copied(), device),
            padding: Tensor::from_data(TensorData::new(padding, [b, t]), device),
            mask: Tensor::from_data(TensorData::new(mask, [b, t]), device),
            last: Tensor::from_data(TensorData::new(last, [b, t]), device),
            lengths: s.lengths.clone(),
            labels: Tensor::from_data(TensorData::new(s.label.clone(), [b]), device),
            rows,
        })
    }
}
