//! Logistic regression, the first of the paper's group-1 baselines (Table 2).
//!
//! Kept: one weight per active feature and a bias, over the id features the paper gives its
//! group-1 models: the candidate's item, shop, brand and category ids, and the user's behavior
//! items as one multi-hot field. Simplified: the multi-hot field is normalised (the mean of the
//! behavior items' weights), so a long history does not outweigh the candidate. Tables are
//! looked up once per distinct item of the batch and gathered.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Device, Int, Tensor};

use super::{slots, youtube_net::mean_pool};
use crate::batch::ModelInputs;
use crate::batch_tensors::BatchTensors;

fn table(rows: usize, dim: usize, device: &Device) -> Embedding {
    EmbeddingConfig::new(rows.max(1), dim).with_initializer(Initializer::Normal { mean: 0.0, std: 0.01 }).init(device)
}

/// Fields shared by LR (width 1) and FM (width k): candidate item, shop, brand, category, and
/// the behavior items.
#[derive(Module, Debug)]
pub struct IdFields {
    /// Candidate item table.
    pub item: Embedding,
    /// Candidate shop table.
    pub shop: Option<Embedding>,
    /// Candidate brand table.
    pub brand: Option<Embedding>,
    /// Candidate category table.
    pub category: Option<Embedding>,
    /// Behavior item table (the multi-hot field).
    pub history: Embedding,
}

impl IdFields {
    /// Tables of width `dim` for the ids `inputs` provide.
    pub fn new(inputs: &ModelInputs, dim: usize, device: &Device) -> Self {
        let opt = |vocab: usize| (vocab > 0).then(|| table(vocab, dim, device));
        Self {
            item: table(inputs.n_items, dim, device),
            shop: opt(inputs.n_shops),
            brand: opt(inputs.n_brands),
            category: opt(inputs.n_categories),
            history: table(inputs.n_items, dim, device),
        }
    }

    /// One vector per field and sample.
    ///
    /// # Shapes
    /// - output: F tensors `[B, dim]`
    pub fn forward(&self, x: &BatchTensors) -> Vec<Tensor<2>> {
        let gather = |t: &Embedding, ids: &Tensor<1, Int>| {
            // Look up the distinct items once, then gather the candidates' rows.
            t.weight.val().select(0, ids.clone()).select(0, x.candidate.clone())
        };
        let mut fields = vec![gather(&self.item, &x.item)];
        for (t, ids) in [(&self.shop, &x.shop), (&self.brand, &x.brand), (&self.category, &x.category)] {
            if let (Some(t), Some(ids)) = (t, ids) {
                fields.push(gather(t, ids));
            }
        }
        let dim = self.history.weight.val().dims()[1];
        let history = if x.seq_len == 0 {
            Tensor::zeros([x.batch_size, dim], &x.labels.device())
        } else {
            mean_pool(slots(self.history.weight.val().select(0, x.item.clone()), x), x.mask.clone())
        };
        fields.push(history);
        fields
    }
}

/// Logistic regression: bias plus one weight per active feature.
#[derive(Module, Debug)]
pub struct LogisticRegression {
    /// First-order weights.
    pub weights: IdFields,
    /// Global bias.
    pub bias: Param<Tensor<1>>,
}

impl LogisticRegression {
    /// Build with zero bias.
    pub fn new(inputs: &ModelInputs, device: &Device) -> Self {
        Self { weights: IdFields::new(inputs, 1, device), bias: Param::from_tensor(Tensor::zeros([1], device)) }
    }

    /// Logits.
    ///
    /// # Shapes
    /// - output: `[B]`
    pub fn forward(&self, x: &BatchTensors) -> Tensor<1> {
        let b = x.batch_size;
        let fields = self.weights.forward(x);
        let sum = fields.into_iter().reduce(|a, f| a + f).unwrap_or_else(|| Tensor::zeros([b, 1], &x.labels.device()));
        sum.reshape([b]) + self.bias.val()
    }
}
