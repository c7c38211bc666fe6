//! Modality embedding layer (paper §3.1) and the specific/invariant projections (§3.2).
//!
//! Every modality of an item becomes one vector `e_m` of a common width:
//! - **IDs** (Eq. 1): item, shop, brand and category embeddings (32/24/24/16), concatenated and
//!   projected;
//! - **image**: a projection of the (pre-extracted, e.g. VGG16) image embedding, standardised
//!   per item first (zero mean, unit variance over its components; no parameters, so nothing to
//!   learn or store: a per-component scale and shift would be absorbed by the projection anyway).
//!   Without it the raw activations (non-negative, of any scale) swamp the id embeddings under
//!   AdaGrad: on the demo world adding the raw image to `ids` cost 0.05 AUC, on the training days
//!   too;
//! - **title**: a TextCNN over word vectors (windows 2, 3, 4, ReLU, max-pool over the real words);
//!   word vectors may be initialised from a supplied table and fine-tuned or frozen;
//! - **statistic**: two 8-d embeddings per statistic (its 10- and 100-bucket ids), concatenated
//!   and projected.
//!
//! The behavior property (§3.1.2) is the concatenation of a behavior-type embedding and a
//! time-before-exposure bucket embedding.
//!
//! [`ModalityProjection`] then gives `s_m = S_m(e_m)` (one projection per modality) and
//! `c_m = I(e_m)` (one projection shared by all modalities), both `tanh`, width 256 by default.
//!
//! Everything here works on the batch's **distinct** items (`n` rows), never per sequence slot.

use burn::module::{Module, Param, ParamId};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{linear, per_modality_linear, tanh};
use crate::batch::ModelInputs;
use crate::batch_tensors::{BatchTensors, Table};
use crate::error::{Error, Result};

/// One item modality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    /// Item, shop, brand and category ids.
    Ids,
    /// Image embedding.
    Image,
    /// Title words.
    Title,
    /// Discretised statistics.
    Statistic,
}

impl Modality {
    /// The modalities `inputs` provide, in the canonical order (IDs, image, title, statistic).
    pub fn available(inputs: &ModelInputs) -> Vec<Modality> {
        let mut out = vec![Modality::Ids];
        if inputs.has_images() {
            out.push(Modality::Image);
        }
        if inputs.has_titles() {
            out.push(Modality::Title);
        }
        if inputs.has_stats() {
            out.push(Modality::Statistic);
        }
        out
    }
}

/// Widths of the modality embedding layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModalityEmbeddingConfig {
    /// Item id embedding width (paper: 32).
    pub item_dim: usize,
    /// Shop id embedding width (paper: 24).
    pub shop_dim: usize,
    /// Brand id embedding width (paper: 24).
    pub brand_dim: usize,
    /// Category id embedding width (paper: 16).
    pub category_dim: usize,
    /// Width of each of the two embeddings of a statistic (paper: 8).
    pub stat_dim: usize,
    /// TextCNN filters per window.
    pub title_filters: usize,
    /// TextCNN windows (paper: 2, 3, 4). Every window must be in `1..=4`.
    pub title_windows: Vec<usize>,
    /// Whether word vectors are trained (true) or kept as supplied (false).
    pub fine_tune_word_vectors: bool,
    /// Common width `e_m` of every modality after projection.
    pub modality_dim: usize,
    /// Behavior type embedding width.
    pub behavior_type_dim: usize,
    /// Time bucket embedding width.
    pub time_dim: usize,
}

impl Default for ModalityEmbeddingConfig {
    fn default() -> Self {
        Self {
            item_dim: 32,
            shop_dim: 24,
            brand_dim: 24,
            category_dim: 16,
            stat_dim: 8,
            title_filters: 32,
            title_windows: vec![2, 3, 4],
            fine_tune_word_vectors: true,
            modality_dim: 128,
            behavior_type_dim: 8,
            time_dim: 8,
        }
    }
}

fn embedding(rows: usize, dim: usize, device: &Device) -> Embedding {
    EmbeddingConfig::new(rows.max(1), dim).with_initializer(Initializer::Normal { mean: 0.0, std: 0.1 }).init(device)
}

fn lookup(table: &Embedding, ids: Tensor<1, Int>) -> Tensor<2> {
    table.weight.val().select(0, ids)
}

/// Every row scaled to zero mean and unit variance over its components; an all-zero row (an item
/// without an image) stays zero.
///
/// # Shapes
/// - `x`, output: `[n, d]`
pub fn standardize(x: Tensor<2>) -> Tensor<2> {
    let (var, mean) = x.clone().var_mean_bias(1);
    (x - mean) / var.add_scalar(1e-5).sqrt()
}

impl ModalityEmbeddingConfig {
    /// Problems with this config, for the caller's `validate`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (name, v) in [
            ("item_dim", self.item_dim),
            ("stat_dim", self.stat_dim),
            ("title_filters", self.title_filters),
            ("modality_dim", self.modality_dim),
            ("behavior_type_dim", self.behavior_type_dim),
            ("time_dim", self.time_dim),
        ] {
            if v == 0 || v > super::marn::MAX_WIDTH {
                p.push(format!("embedding.{name} = {v} is out of range: allowed 1 to {}", super::marn::MAX_WIDTH));
            }
        }
        if self.title_windows.is_empty() || self.title_windows.iter().any(|&w| w == 0 || w > 4) {
            p.push("embedding.title_windows must be a non-empty list of values in 1..=4".into());
        }
        p
    }

    /// Width of the behavior property embedding `p_t`.
    pub fn property_dim(&self) -> usize {
        self.behavior_type_dim + self.time_dim
    }

    /// Build the layer for the given `modalities` (a subset of [`Modality::available`]).
    pub fn init(&self, inputs: &ModelInputs, modalities: &[Modality], device: &Device) -> ModalityEmbedding {
        let e = self.modality_dim;
        let opt = |vocab: usize, dim: usize| (vocab > 0).then(|| embedding(vocab, dim, device));
        let shop = opt(inputs.n_shops, self.shop_dim);
        let brand = opt(inputs.n_brands, self.brand_dim);
        let category = opt(inputs.n_categories, self.category_dim);
        let ids_width = self.item_dim
            + shop.as_ref().map_or(0, |_| self.shop_dim)
            + brand.as_ref().map_or(0, |_| self.brand_dim)
            + category.as_ref().map_or(0, |_| self.category_dim);
        let uses = |m: Modality| modalities.contains(&m);
        let image = uses(Modality::Image).then(|| LinearConfig::new(inputs.image_dim, e).init(device));
        let title = uses(Modality::Title).then(|| {
            TitleCnnConfig {
                vocab: inputs.title_vocab,
                word_dim: inputs.word_dim,
                filters: self.title_filters,
                windows: self.title_windows.clone(),
                fine_tune: self.fine_tune_word_vectors,
                output_dim: e,
            }
            .init(device)
        });
        let (stat, stat_projection) = if uses(Modality::Statistic) {
            let rows = inputs.n_stats * (inputs.stat_coarse_buckets + inputs.stat_fine_buckets);
            (
                Some(embedding(rows, self.stat_dim, device)),
                Some(LinearConfig::new(2 * inputs.n_stats * self.stat_dim, e).init(device)),
            )
        } else {
            (None, None)
        };
        ModalityEmbedding {
            item: embedding(inputs.n_items, self.item_dim, device),
            shop,
            brand,
            category,
            ids_projection: LinearConfig::new(ids_width, e).init(device),
            image,
            title,
            stat,
            stat_projection,
            behavior_type: embedding(inputs.n_behavior_types, self.behavior_type_dim, device),
            time: embedding(inputs.n_time_buckets, self.time_dim, device),
            modalities: modalities.to_vec(),
            n_stats: inputs.n_stats,
        }
    }
}

/// The modality embedding layer `E`. Build with [`ModalityEmbeddingConfig::init`].
#[derive(Module, Debug)]
pub struct ModalityEmbedding {
    /// Item id table.
    pub item: Embedding,
    /// Shop id table, when the data has shops.
    pub shop: Option<Embedding>,
    /// Brand id table, when the data has brands.
    pub brand: Option<Embedding>,
    /// Category id table, when the data has categories.
    pub category: Option<Embedding>,
    /// Projection of the concatenated ids to the common width.
    pub ids_projection: Linear,
    /// Projection of the standardised image embedding, when images are used.
    pub image: Option<Linear>,
    /// Title TextCNN, when titles are used.
    pub title: Option<TitleCnn>,
    /// Flat statistic bucket table (coarse then fine buckets of every statistic).
    pub stat: Option<Embedding>,
    /// Projection of the `2 * n_stats` statistic embeddings to the common width.
    pub stat_projection: Option<Linear>,
    /// Behavior type table.
    pub behavior_type: Embedding,
    /// Time-before-exposure bucket table.
    pub time: Embedding,
    /// The modalities produced by [`ModalityEmbedding::forward`], in order.
    #[module(skip)]
    pub modalities: Vec<Modality>,
    #[module(skip)]
    n_stats: usize,
}

impl ModalityEmbedding {
    /// The parameter id of every embedding table this layer has, with the [`Table`] whose
    /// batch rows ([`BatchTensors::rows`]) are the only ones it reads.
    pub fn tables(&self) -> Vec<(Table, ParamId)> {
        let words = self.title.as_ref().map(|t| &t.words);
        [
            (Table::Item, Some(&self.item)),
            (Table::Shop, self.shop.as_ref()),
            (Table::Brand, self.brand.as_ref()),
            (Table::Category, self.category.as_ref()),
            (Table::Statistic, self.stat.as_ref()),
            (Table::Word, words),
            (Table::BehaviorType, Some(&self.behavior_type)),
            (Table::Time, Some(&self.time)),
        ]
        .into_iter()
        .filter_map(|(table, e)| e.map(|e| (table, e.weight.id)))
        .collect()
    }

    /// Concatenated (unprojected) id embeddings of the distinct items.
    ///
    /// # Shapes
    /// - output: `[n, item_dim + shop_dim + brand_dim + category_dim]` (absent ids omitted)
    pub fn raw_ids(&self, x: &BatchTensors) -> Tensor<2> {
        let mut parts = vec![lookup(&self.item, x.item.clone())];
        for (table, ids) in [(&self.shop, &x.shop), (&self.brand, &x.brand), (&self.category, &x.category)] {
            if let (Some(table), Some(ids)) = (table, ids) {
                parts.push(lookup(table, ids.clone()));
            }
        }
        Tensor::cat(parts, 1)
    }

    /// The category embedding of the distinct items (the IDs modality's table), `None` when the
    /// model has no category table.
    ///
    /// # Shapes
    /// - output: `[n, category_dim]`
    pub fn category_context(&self, x: &BatchTensors) -> Option<Tensor<2>> {
        match (&self.category, &x.category) {
            (Some(table), Some(ids)) => Some(lookup(table, ids.clone())),
            _ => None,
        }
    }

    /// `e_m` of every modality of [`ModalityEmbedding::modalities`], for the distinct items.
    ///
    /// # Shapes
    /// - output: one `[n, modality_dim]` tensor per modality
    pub fn forward(&self, x: &BatchTensors) -> Result<Vec<Tensor<2>>> {
        let n = x.n_items;
        let missing = |what: &str| Error::Batch(format!("the batch has no {what} but the model uses them"));
        self.modalities
            .iter()
            .map(|m| {
                Ok(match m {
                    Modality::Ids => linear(&self.ids_projection, self.raw_ids(x)),
                    Modality::Image => {
                        let layer = self.image.as_ref().ok_or_else(|| missing("image layer"))?;
                        let images = x.images.clone().ok_or_else(|| missing("images"))?;
                        linear(layer, standardize(images))
                    }
                    Modality::Title => {
                        let cnn = self.title.as_ref().ok_or_else(|| missing("title layer"))?;
                        match &x.title_words {
                            Some((words, rows)) if cnn.fused_here() => cnn.forward_fused(words.clone(), rows.clone()),
                            _ => {
                                let tokens = x.title_tokens.clone().ok_or_else(|| missing("titles"))?;
                                let mask = x.title_word_mask.clone().ok_or_else(|| missing("titles"))?;
                                cnn.forward(tokens, mask)
                            }
                        }
                    }
                    Modality::Statistic => {
                        let (table, proj) = match (&self.stat, &self.stat_projection) {
                            (Some(t), Some(p)) => (t, p),
                            _ => return Err(missing("statistic layer")),
                        };
                        let rows = x.stat_rows.clone().ok_or_else(|| missing("statistics"))?;
                        let flat = lookup(table, rows);
                        let width = 2 * self.n_stats * table.weight.val().dims()[1];
                        linear(proj, flat.reshape([n, width]))
                    }
                })
            })
            .collect()
    }

    /// Per-item presence of every modality of [`ModalityEmbedding::modalities`]: `[n, 1]`, 1.0
    /// where the item has the modality and 0.0 where it lacks it; `None` where every item has it
    /// (IDs and statistics always exist; images and titles may be missing).
    pub fn presence(&self, x: &BatchTensors) -> Vec<Option<Tensor<2>>> {
        self.modalities
            .iter()
            .map(|m| match m {
                Modality::Image => x.image_present.clone(),
                Modality::Title => x.title_present.clone(),
                Modality::Ids | Modality::Statistic => None,
            })
            .collect()
    }

    /// Behavior property embeddings `p_t` of every sequence slot.
    ///
    /// # Shapes
    /// - output: `[B, T, behavior_type_dim + time_dim]`
    pub fn property(&self, x: &BatchTensors) -> Tensor<3> {
        let (b, t) = (x.batch_size, x.seq_len);
        let kind = lookup(&self.behavior_type, x.behavior_type.clone());
        let time = lookup(&self.time, x.time_bucket.clone());
        let p = Tensor::cat(vec![kind, time], 1);
        let d = p.dims()[1];
        p.reshape([b, t, d])
    }
}

/// Config of the title TextCNN (Kim, 2014).
#[derive(Debug, Clone, PartialEq)]
pub struct TitleCnnConfig {
    /// Word vocabulary size.
    pub vocab: usize,
    /// Word vector width.
    pub word_dim: usize,
    /// Filters per window.
    pub filters: usize,
    /// Window widths.
    pub windows: Vec<usize>,
    /// Whether word vectors are trained.
    pub fine_tune: bool,
    /// Output width.
    pub output_dim: usize,
}

impl TitleCnnConfig {
    /// Build the TextCNN with randomly initialised word vectors.
    pub fn init(&self, device: &Device) -> TitleCnn {
        TitleCnn {
            words: embedding(self.vocab, self.word_dim, device),
            convs: self
                .windows
                .iter()
                .map(|&w| Conv1dConfig::new(self.word_dim, self.filters, w).init(device))
                .collect(),
            projection: LinearConfig::new(self.filters * self.windows.len(), self.output_dim).init(device),
            windows: self.windows.clone(),
            fine_tune: self.fine_tune,
        }
    }
}

/// Title TextCNN: word vectors, one convolution per window, ReLU, max over the real windows,
/// concatenation, projection.
#[derive(Module, Debug)]
pub struct TitleCnn {
    /// Word vectors `[vocab, word_dim]`.
    pub words: Embedding,
    /// One convolution per window.
    pub convs: Vec<Conv1d>,
    /// Projection to the common modality width.
    pub projection: Linear,
    #[module(skip)]
    windows: Vec<usize>,
    #[module(skip)]
    fine_tune: bool,
}

impl TitleCnn {
    /// Replace the word vectors with a supplied row-major `[vocab, word_dim]` table.
    pub fn with_word_vectors(mut self, table: Vec<f32>) -> Result<Self> {
        let [vocab, dim] = self.words.weight.val().dims();
        if table.len() != vocab * dim {
            return Err(Error::Config(format!(
                "word vector table has {} values, expected {vocab} x {dim}",
                table.len()
            )));
        }
        let device = self.words.weight.val().device();
        let tensor = Tensor::<2>::from_data(TensorData::new(table, [vocab, dim]), &device);
        self.words.weight = Param::from_tensor(tensor);
        Ok(self)
    }

    /// Title embeddings.
    ///
    /// # Shapes
    /// - `tokens`: `[n * len]` word indices, `len >= max(windows)`
    /// - `word_mask`: `[n, len, 1]`, 1.0 at real words and 0.0 at padding
    /// - output: `[n, output_dim]`
    pub fn forward(&self, tokens: Tensor<1, Int>, word_mask: Tensor<3>) -> Tensor<2> {
        let [n, len, _] = word_mask.dims();
        let mut words = self.words.weight.val();
        if !self.fine_tune {
            words = words.detach();
        }
        let d = words.dims()[1];
        // Padding words are zero vectors, so a window overlapping them sees only real words.
        let x = (words.select(0, tokens).reshape([n, len, d]) * word_mask.clone()).swap_dims(1, 2);
        let pooled: Vec<Tensor<2>> = self
            .convs
            .iter()
            .zip(&self.windows)
            .map(|(conv, &w)| {
                let positions = len + 1 - w;
                // A window is real when it ends within the title (its last word is real); window
                // 0 always counts, so a title shorter than the window still yields one
                // (zero-padded) window. Built on the device from the batch's word mask.
                let ends = word_mask.clone().narrow(1, w - 1, positions).swap_dims(1, 2);
                let real = ends.slice_fill([0..n, 0..1, 0..1], 1.0f32);
                let additive = real.sub_scalar(1.0).mul_scalar(1e9);
                let features = relu(conv.forward(x.clone())) + additive;
                let filters = features.dims()[1];
                features.max_dim(2).reshape([n, filters])
            })
            .collect();
        linear(&self.projection, Tensor::cat(pooled, 1))
    }
}

impl TitleCnn {
    /// Whether [`TitleCnn::forward_fused`] runs on this layer's device (burn's CPU backend).
    pub fn fused_here(&self) -> bool {
        super::fused::on_host(&self.words.weight.device())
    }

    /// [`TitleCnn::forward`] as products of the batch's distinct words with the filters and one
    /// pooling operation ([`super::fused::title_pool`], burn's CPU backend only: check
    /// [`TitleCnn::fused_here`]). The same function of the words and the parameters, summed in
    /// another order.
    ///
    /// # Shapes
    /// - `words`: `[V]` the batch's distinct words; `rows`: `[n, L]` each title position's row
    ///   of `words` (`V` for padding)
    /// - output: `[n, output_dim]`
    pub fn forward_fused(&self, words: Tensor<1, Int>, rows: Tensor<2, Int>) -> Tensor<2> {
        let mut table = self.words.weight.val();
        if !self.fine_tune {
            table = table.detach();
        }
        let device = table.device();
        let d = table.dims()[1];
        let vectors = Tensor::cat(vec![table.select(0, words), Tensor::zeros([1, d], &device)], 0);
        // One block of filters per (window, offset), side by side: `W[:, :, o]ᵀ`, `[d, F]`; the
        // bias in each window's first.
        let (mut blocks, mut biases) = (Vec::new(), Vec::new());
        for conv in &self.convs {
            let weight = conv.weight.val();
            let [f, _, w] = weight.dims();
            for o in 0..w {
                blocks.push(weight.clone().narrow(2, o, 1).reshape([f, d]).transpose());
                biases.push(match (o, &conv.bias) {
                    (0, Some(b)) => b.val().reshape([1, f]),
                    _ => Tensor::zeros([1, f], &device),
                });
            }
        }
        let (n_blocks, v, f) = (blocks.len(), vectors.dims()[0], self.convs.first().map_or(0, |c| c.weight.dims()[0]));
        let q = (vectors.matmul(Tensor::cat(blocks, 1)) + Tensor::cat(biases, 1)).reshape([v, n_blocks, f]);
        linear(&self.projection, super::fused::title_pool(q, rows, &self.windows))
    }
}

/// Config of the specific and invariant projections.
#[derive(Debug, Clone, PartialEq)]
pub struct ModalityProjectionConfig {
    /// Input width (the common modality width).
    pub input_dim: usize,
    /// Output width (paper: 256).
    pub output_dim: usize,
    /// Number of modalities `M`.
    pub n_modalities: usize,
    /// Whether the shared invariant projection `I` is built.
    pub invariant: bool,
}

impl ModalityProjectionConfig {
    /// Build `S_1..S_M` and, when asked, `I`.
    pub fn init(&self, device: &Device) -> ModalityProjection {
        ModalityProjection {
            specific: (0..self.n_modalities)
                .map(|_| LinearConfig::new(self.input_dim, self.output_dim).init(device))
                .collect(),
            invariant: self.invariant.then(|| LinearConfig::new(self.input_dim, self.output_dim).init(device)),
        }
    }
}

/// `s_m = tanh(S_m e_m)` per modality and `c_m = tanh(I e_m)` with one shared `I`.
#[derive(Module, Debug)]
pub struct ModalityProjection {
    /// `S_m`, one per modality.
    pub specific: Vec<Linear>,
    /// `I`, shared by all modalities.
    pub invariant: Option<Linear>,
}

impl ModalityProjection {
    /// Modality-specific features.
    ///
    /// # Shapes
    /// - `e`: M tensors `[n, input_dim]`; output: M tensors `[n, output_dim]`
    pub fn specific(&self, e: &[Tensor<2>]) -> Vec<Tensor<2>> {
        e.iter().zip(&self.specific).map(|(e, s)| tanh(linear(s, e.clone()))).collect()
    }

    /// [`ModalityProjection::specific`] of the modalities stacked along the first axis: one
    /// batched product for the M matrices `S_m`.
    ///
    /// # Shapes
    /// - `e`: `[M, n, input_dim]`; output: `[M, n, output_dim]`
    pub fn specific_stacked(&self, e: Tensor<3>) -> Tensor<3> {
        tanh(per_modality_linear(&self.specific, e))
    }

    /// [`ModalityProjection::specific_stacked`] of `e.detach()`, given `specific`, its values
    /// for `e` (the same layers on the same input): the values are not computed again, only the
    /// layers' gradients are taken ([`super::fused::tanh_layer_again`]).
    ///
    /// # Shapes
    /// - `specific`: `[M, n, output_dim]`; `e`: `[M, n, input_dim]`; output as `specific`
    pub fn specific_stacked_again(&self, specific: Tensor<3>, e: Tensor<3>) -> Tensor<3> {
        let biases: Option<Vec<Tensor<1>>> = self.specific.iter().map(|l| l.bias.as_ref().map(|b| b.val())).collect();
        if let (Some(biases), true) = (biases, super::PRODUCTS.with(std::cell::Cell::get) == super::Precision::F32) {
            let w = Tensor::stack::<3>(self.specific.iter().map(|l| l.weight.val()).collect(), 0);
            let b = Tensor::stack::<2>(biases, 0).unsqueeze_dim::<3>(1);
            if let Some(again) = super::fused::tanh_layer_again(specific, e.clone(), w, b) {
                return again;
            }
        }
        self.specific_stacked(e.detach())
    }

    /// [`ModalityProjection::invariant_stacked`] of `e.detach()`, given `invariant`, its values
    /// for `e`: as [`ModalityProjection::specific_stacked_again`]. `None` when `I` was not built.
    pub fn invariant_stacked_again(&self, invariant: Tensor<3>, e: Tensor<3>) -> Option<Tensor<3>> {
        let layer = self.invariant.as_ref()?;
        if let (Some(b), true) = (&layer.bias, super::PRODUCTS.with(std::cell::Cell::get) == super::Precision::F32) {
            if let Some(again) = super::fused::tanh_layer_again(invariant, e.clone(), layer.weight.val(), b.val()) {
                return Some(again);
            }
        }
        self.invariant_stacked(e.detach())
    }

    /// Modality-invariant features of the stacked modalities: one product with `I` for all of
    /// them (`None` when `I` was not built).
    ///
    /// # Shapes
    /// - `e`: `[M, n, input_dim]`; output: `[M, n, output_dim]`
    pub fn invariant_stacked(&self, e: Tensor<3>) -> Option<Tensor<3>> {
        self.invariant.as_ref().map(|i| tanh(linear(i, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tolerance;

    #[test]
    fn standardize_gives_zero_mean_unit_variance_and_keeps_zero_rows() {
        let device = Device::flex();
        let x = Tensor::<2>::from_data(TensorData::from([[1.0f32, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0]]), &device);
        // Row 1: mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5.
        let sd = (3.5f32 + 1e-5).sqrt();
        standardize(x).into_data().assert_approx_eq::<f32>(
            &TensorData::from([[-2.0 / sd, -1.0 / sd, 0.0, 3.0 / sd], [0.0, 0.0, 0.0, 0.0]]),
            Tolerance::absolute(1e-5),
        );
    }

    /// The title TextCNN through the words' products and the fused pooling equals the
    /// convolutions, in value and in every parameter's gradient: titles of every length (full,
    /// shorter than a window, one word, none), padding, and a word used twice.
    #[test]
    fn the_fused_title_cnn_equals_the_convolutions() {
        for device in crate::modules::fused::tests::host_devices() {
            let (vocab, dim, len) = (30, 8, 6);
            let cnn = TitleCnnConfig {
                vocab,
                word_dim: dim,
                filters: 4,
                windows: vec![2, 3, 4],
                fine_tune: true,
                output_dim: 5,
            }
            .init(&device);
            let titles: [&[u32]; 5] = [&[3, 7, 7, 29, 1, 12], &[5, 3, 8], &[11], &[], &[2, 2, 9, 4]];
            let n = titles.len();
            let (mut tokens, mut mask) = (vec![0i64; n * len], vec![0f32; n * len]);
            let mut words: Vec<u32> = titles.iter().flat_map(|t| t.iter().copied()).collect();
            words.sort_unstable();
            words.dedup();
            let mut rows = vec![words.len() as i64; n * len];
            for (i, t) in titles.iter().enumerate() {
                for (p, &w) in t.iter().enumerate() {
                    tokens[i * len + p] = w as i64;
                    mask[i * len + p] = 1.0;
                    rows[i * len + p] = words.binary_search(&w).unwrap() as i64;
                }
            }
            let weights = Tensor::<2>::random([n, 5], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
            let run = |fused: bool| {
                let out = if fused {
                    let words = Tensor::<1, Int>::from_data(
                        TensorData::new(words.iter().map(|&w| w as i64).collect(), [words.len()]),
                        &device,
                    );
                    cnn.forward_fused(words, Tensor::from_data(TensorData::new(rows.clone(), [n, len]), &device))
                } else {
                    let tokens = Tensor::<1, Int>::from_data(TensorData::new(tokens.clone(), [n * len]), &device);
                    cnn.forward(tokens, Tensor::from_data(TensorData::new(mask.clone(), [n, len, 1]), &device))
                };
                let grads = (out.clone() * weights.clone()).sum().backward();
                let mut all = vec![out.into_data(), cnn.words.weight.grad(&grads).unwrap().into_data()];
                for conv in &cnn.convs {
                    all.push(conv.weight.grad(&grads).unwrap().into_data());
                    all.push(conv.bias.as_ref().unwrap().grad(&grads).unwrap().into_data());
                }
                all.push(cnn.projection.weight.grad(&grads).unwrap().into_data());
                all
            };
            assert!(cnn.fused_here());
            for (got, want) in run(true).iter().zip(run(false)) {
                assert_eq!(got.shape(), want.shape());
                got.assert_approx_eq::<f32>(&want, Tolerance::absolute(1e-5));
            }
        }
    }

    /// The projections "again" on a detached input give the values of the projections of the
    /// detached input, the same gradients to their weights and biases, and none to the input.
    #[test]
    fn the_layers_again_equal_the_layers_on_the_detached_input() {
        for device in crate::modules::fused::tests::host_devices() {
            let projection = ModalityProjectionConfig { input_dim: 6, output_dim: 5, n_modalities: 3, invariant: true }
                .init(&device);
            let e =
                Tensor::<3>::random([3, 11, 6], burn::tensor::Distribution::Normal(0.0, 1.0), &device).require_grad();
            let g = Tensor::<3>::random([3, 11, 5], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
            let run = |again: bool| {
                let (specific, invariant) = if again {
                    let (s, c) =
                        (projection.specific_stacked(e.clone()), projection.invariant_stacked(e.clone()).unwrap());
                    (
                        projection.specific_stacked_again(s, e.clone()),
                        projection.invariant_stacked_again(c, e.clone()).unwrap(),
                    )
                } else {
                    (
                        projection.specific_stacked(e.clone().detach()),
                        projection.invariant_stacked(e.clone().detach()).unwrap(),
                    )
                };
                let grads = ((specific.clone() + invariant.clone()) * g.clone()).sum().backward();
                assert!(e.grad(&grads).is_none(), "the input got a gradient");
                let mut out = vec![specific.into_data(), invariant.into_data()];
                for layer in projection.specific.iter().chain(projection.invariant.as_ref()) {
                    out.push(layer.weight.grad(&grads).unwrap().into_data());
                    out.push(layer.bias.as_ref().unwrap().grad(&grads).unwrap().into_data());
                }
                out
            };
            for (got, want) in run(true).iter().zip(run(false)) {
                assert_eq!(got.shape(), want.shape());
                got.assert_approx_eq::<f32>(&want, Tolerance::absolute(1e-5));
            }
        }
    }
}
