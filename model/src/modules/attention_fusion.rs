//! Multimodal attention fusion, MAF (paper §3.2, Eq. 2–3).
//!
//! Every modality gets a vector attention computed from its own specific features,
//! `atten_m = tanh(W_m s_m + b_m)` (Eq. 3, `W_m` is `d x d`), and the fused specific
//! representation is `s = Σ_m atten_m ⊙ s_m` (Eq. 2).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

/// Config of [`AttentionFusion`].
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionFusionConfig {
    /// Width `d` of the specific features (paper: 256).
    pub dim: usize,
    /// Number of modalities `M`.
    pub n_modalities: usize,
}

impl AttentionFusionConfig {
    /// Build one `d x d` attention per modality.
    pub fn init(&self, device: &Device) -> AttentionFusion {
        AttentionFusion {
            modality_attention: (0..self.n_modalities)
                .map(|_| LinearConfig::new(self.dim, self.dim).init(device))
                .collect(),
        }
    }
}

/// MAF: vector attention per modality, weighted sum of the specific features.
#[derive(Module, Debug)]
pub struct AttentionFusion {
    /// `W_m, b_m`, one per modality.
    pub modality_attention: Vec<Linear>,
}

impl AttentionFusion {
    /// The attention weights `atten_m` of every modality (for inspection, Figure 4).
    ///
    /// # Shapes
    /// - `specific`: M tensors `[n, d]`; output: M tensors `[n, d]`
    pub fn attention(&self, specific: &[Tensor<2>]) -> Vec<Tensor<2>> {
        specific
            .iter()
            .zip(&self.modality_attention)
            .map(|(s, w)| w.forward(s.clone()).tanh()) // Eq. 3
            .collect()
    }

    /// Fused specific representation `s = Σ_m present_m · atten_m ⊙ s_m`: a modality an item
    /// lacks is left out of its sum.
    ///
    /// # Shapes
    /// - `specific`: M tensors `[n, d]`; `presence`: M entries, `[n, 1]` or `None` (all present)
    /// - output: `[n, d]`
    pub fn forward(&self, specific: &[Tensor<2>], presence: &[Option<Tensor<2>>]) -> Tensor<2> {
        let attention = self.attention(specific);
        let terms: Vec<Tensor<2>> = specific.iter().zip(attention).map(|(s, a)| a * s.clone()).collect(); // Eq. 2
        masked_sum(terms, presence)
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
        let maf = AttentionFusionConfig { dim: 4, n_modalities: 2 }.init(&device);
        let s1 = Tensor::<2>::random([3, 4], burn::tensor::Distribution::Default, &device);
        let s2 = Tensor::<2>::random([3, 4], burn::tensor::Distribution::Default, &device);
        let fused = maf.forward(&[s1.clone(), s2.clone()], &[None, None]);
        let a = maf.attention(&[s1.clone(), s2.clone()]);
        let expected = a[0].clone() * s1.clone() + a[1].clone() * s2.clone();
        assert_eq!(fused.dims(), [3, 4]);
        fused.into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6));
        // Item 1 lacks modality 2: its fused row is modality 1's term alone.
        let present = Tensor::<2>::from_data(burn::tensor::TensorData::from([[1.0f32], [0.0], [1.0]]), &device);
        let masked = maf.forward(&[s1.clone(), s2.clone()], &[None, Some(present.clone())]);
        let expected = a[0].clone() * s1 + a[1].clone() * s2 * present;
        masked.into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6));
    }
}
