//! Multimodal attention fusion, MAF (paper §3.2, Eq. 2–3).
//!
//! Every modality gets a vector attention computed from its own specific features,
//! `atten_m = tanh(W_m s_m + b_m)` (Eq. 3, `W_m` is `d x d`), and the fused specific
//! representation is `s = Σ_m atten_m ⊙ s_m` (Eq. 2).
//!
//! An experiment, not the paper: with [`AttentionContext::Category`] the attention also sees the
//! item's category embedding, `atten_m = tanh(W_m s_m + V_m e_category + b_m)`. It isolates how
//! far Eq. 3 is held back by `s_m` alone not revealing the category (README, Figure 4).

use super::{linear, per_modality_linear, stack, stack_presence, tanh, unstack};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// What MAF's attention is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionContext {
    /// Eq. 3: each modality's own specific features `s_m` (the paper).
    #[default]
    Own,
    /// `s_m` and the item's category embedding (an experiment; needs the IDs modality).
    Category,
}

/// Config of [`AttentionFusion`].
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionFusionConfig {
    /// Width `d` of the specific features (paper: 256).
    pub dim: usize,
    /// Number of modalities `M`.
    pub n_modalities: usize,
    /// Width of the context the attention also sees (the category embedding), if any.
    pub context_dim: Option<usize>,
}

impl AttentionFusionConfig {
    /// Build one `d x d` attention per modality.
    pub fn init(&self, device: &Device) -> AttentionFusion {
        AttentionFusion {
            modality_attention: (0..self.n_modalities)
                .map(|_| LinearConfig::new(self.dim, self.dim).init(device))
                .collect(),
            context: match self.context_dim {
                Some(c) => (0..self.n_modalities)
                    .map(|_| LinearConfig::new(c, self.dim).with_bias(false).init(device))
                    .collect(),
                None => Vec::new(),
            },
        }
    }
}

/// MAF: vector attention per modality, weighted sum of the specific features.
#[derive(Module, Debug)]
pub struct AttentionFusion {
    /// `W_m, b_m`, one per modality.
    pub modality_attention: Vec<Linear>,
    /// `V_m`, one per modality, when the attention sees a context; empty for Eq. 3.
    pub context: Vec<Linear>,
}

impl AttentionFusion {
    /// Whether the attention expects a context (built with `context_dim`).
    pub fn needs_context(&self) -> bool {
        !self.context.is_empty()
    }

    /// The attention weights `atten_m` of every modality (for inspection, Figure 4). `context`
    /// is used only when the fusion was built with one.
    ///
    /// # Shapes
    /// - `specific`: M tensors `[n, d]`; `context`: `[n, context_dim]`; output: M tensors `[n, d]`
    pub fn attention(&self, specific: &[Tensor<2>], context: Option<&Tensor<2>>) -> Vec<Tensor<2>> {
        unstack(self.attention_stacked(stack(specific), context))
    }

    /// Eq. 3 for the stacked modalities, `atten_m = tanh(W_m s_m + b_m)` (plus `V_m` of the
    /// context when the fusion was built with one): the M products as one batched product.
    ///
    /// # Shapes
    /// - `specific`: `[M, n, d]`; `context`: `[n, context_dim]`; output: `[M, n, d]`
    fn attention_stacked(&self, specific: Tensor<3>, context: Option<&Tensor<2>>) -> Tensor<3> {
        let z = per_modality_linear(&self.modality_attention, specific);
        match context {
            Some(c) if self.needs_context() => {
                let contexts: Vec<Tensor<2>> = self.context.iter().map(|v| linear(v, c.clone())).collect();
                tanh(z + Tensor::stack::<3>(contexts, 0))
            }
            _ => tanh(z),
        }
    }

    /// Fused specific representation `s = Σ_m present_m · atten_m ⊙ s_m`: a modality an item
    /// lacks is left out of its sum.
    ///
    /// # Shapes
    /// - `specific`: M tensors `[n, d]`; `presence`: M entries, `[n, 1]` or `None` (all present);
    ///   `context`: `[n, context_dim]`
    /// - output: `[n, d]`
    pub fn forward(
        &self,
        specific: &[Tensor<2>],
        presence: &[Option<Tensor<2>>],
        context: Option<&Tensor<2>>,
    ) -> Tensor<2> {
        let stacked = stack(specific);
        let present = stack_presence(presence, stacked.dims()[1], &stacked.device());
        self.forward_stacked(stacked, present.as_ref(), context)
    }

    /// [`AttentionFusion::forward`] on the modalities stacked along the first axis: the M
    /// attentions as one batched product, the sum over modalities as one reduction.
    ///
    /// # Shapes
    /// - `specific`: `[M, n, d]`; `presence`: `[M, n, 1]` (`None`: every item has every
    ///   modality); `context`: `[n, context_dim]`
    /// - output: `[n, d]`
    pub fn forward_stacked(
        &self,
        specific: Tensor<3>,
        presence: Option<&Tensor<3>>,
        context: Option<&Tensor<2>>,
    ) -> Tensor<2> {
        let [_, n, d] = specific.dims();
        let terms = self.attention_stacked(specific.clone(), context) * specific; // Eq. 2
        let terms = match presence {
            Some(p) => terms * p.clone(),
            None => terms,
        };
        terms.sum_dim(0).reshape([n, d])
    }
}

/// `Σ_m present_m · x_m`: the element-wise sum over the modalities an item has.
///
/// # Shapes
/// - `terms`: M ≥ 1 tensors `[n, d]`; `presence`: M entries, `[n, 1]` or `None` (all present)
/// - output: `[n, d]`
pub fn masked_sum(terms: Vec<Tensor<2>>, presence: &[Option<Tensor<2>>]) -> Tensor<2> {
    present(terms, presence).into_iter().reduce(|a, b| a + b).expect("at least one modality")
    // guaranteed by MarnConfig::init
}

/// Each modality's features with the rows of items that lack it set to zero.
///
/// # Shapes
/// - `features`: M tensors `[n, d]`; `presence`: M entries, `[n, 1]` or `None` (all present)
/// - output: M tensors `[n, d]`
pub fn present(features: Vec<Tensor<2>>, presence: &[Option<Tensor<2>>]) -> Vec<Tensor<2>> {
    features
        .into_iter()
        .enumerate()
        .map(|(k, f)| match presence.get(k).cloned().flatten() {
            Some(p) => f * p,
            None => f,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tolerance;

    #[test]
    fn fusion_is_the_attention_weighted_sum() {
        let device = Device::flex();
        let maf = AttentionFusionConfig { dim: 4, n_modalities: 2, context_dim: None }.init(&device);
        let s1 = Tensor::<2>::random([3, 4], burn::tensor::Distribution::Default, &device);
        let s2 = Tensor::<2>::random([3, 4], burn::tensor::Distribution::Default, &device);
        let fused = maf.forward(&[s1.clone(), s2.clone()], &[None, None], None);
        let a = maf.attention(&[s1.clone(), s2.clone()], None);
        let expected = a[0].clone() * s1.clone() + a[1].clone() * s2.clone();
        assert_eq!(fused.dims(), [3, 4]);
        fused.into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6));
        // Item 1 lacks modality 2: its fused row is modality 1's term alone.
        let present = Tensor::<2>::from_data(burn::tensor::TensorData::from([[1.0f32], [0.0], [1.0]]), &device);
        let masked = maf.forward(&[s1.clone(), s2.clone()], &[None, Some(present.clone())], None);
        let expected = a[0].clone() * s1 + a[1].clone() * s2 * present;
        masked.into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6));
    }

    #[test]
    fn the_stacked_fusion_equals_the_per_modality_fusion() {
        let device = Device::flex();
        let (m, n, d) = (3, 4, 5);
        let specific: Vec<Tensor<2>> =
            (0..m).map(|_| Tensor::<2>::random([n, d], burn::tensor::Distribution::Default, &device)).collect();
        let present = Tensor::<2>::from_data(burn::tensor::TensorData::from([[1.0f32], [0.0], [1.0], [0.0]]), &device);
        let presence = vec![None, Some(present.clone()), None];
        let context = Tensor::<2>::random([n, 2], burn::tensor::Distribution::Default, &device);
        for context_dim in [None, Some(2)] {
            let maf = AttentionFusionConfig { dim: d, n_modalities: m, context_dim }.init(&device);
            let c = context_dim.map(|_| &context);
            // Eq. 2–3 modality by modality, from the layers themselves.
            let term = |k: usize| {
                let mut z = maf.modality_attention[k].forward(specific[k].clone());
                if let (Some(v), Some(c)) = (maf.context.get(k), c) {
                    z = z + v.forward(c.clone());
                }
                tanh(z) * specific[k].clone()
            };
            let all = term(0) + term(1) + term(2);
            let masked = term(0) + term(1) * present.clone() + term(2);
            maf.forward(&specific, &presence, c)
                .into_data()
                .assert_approx_eq::<f32>(&masked.into_data(), Tolerance::absolute(1e-6));
            maf.forward_stacked(stack(&specific), None, c)
                .into_data()
                .assert_approx_eq::<f32>(&all.into_data(), Tolerance::absolute(1e-6));
        }
    }

    #[test]
    fn category_context_changes_the_attention_only_when_built_with_it() {
        let device = Device::flex();
        let s = Tensor::<2>::random([3, 4], burn::tensor::Distribution::Default, &device);
        let c1 = Tensor::<2>::random([3, 2], burn::tensor::Distribution::Default, &device);
        let c2 = c1.clone().add_scalar(1.0);
        let plain = AttentionFusionConfig { dim: 4, n_modalities: 1, context_dim: None }.init(&device);
        let a = plain.attention(std::slice::from_ref(&s), Some(&c1))[0].clone();
        let b = plain.attention(std::slice::from_ref(&s), Some(&c2))[0].clone();
        a.into_data().assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-7));
        let aware = AttentionFusionConfig { dim: 4, n_modalities: 1, context_dim: Some(2) }.init(&device);
        assert!(aware.needs_context() && !plain.needs_context());
        let a = aware.attention(std::slice::from_ref(&s), Some(&c1))[0].clone();
        let b = aware.attention(std::slice::from_ref(&s), Some(&c2))[0].clone();
        let diff: f32 = (a - b).abs().sum().into_scalar();
        assert!(diff > 1e-4, "the category context must move the attention ({diff})");
    }
}
