//! Multimodal adversarial network (paper §3.3): the gradient reversal layer, the
//! double-discriminator multimodal adversarial network (DDMA) and the modality-specific
//! discriminator `D_s`.
//!
//! - `D0` (importance discriminator) is an M-class classifier on the invariant features
//!   `c_m = I(e_m)`, trained on `c_m.detach()`, so its loss puts **no gradient into `I`**.
//! - `w_m = 1 − D0_m(c_m)`, the probability `D0` gives to any modality but the true one, is a
//!   constant (detached): the degree to which `c_m` lies in the common subspace.
//! - `D1` (modality discriminator) is an M-class classifier applied to `I(e)` itself, behind a
//!   gradient reversal layer: `D1(GRL(c_m))` with `c_m` **unscaled**. Eq. 7 puts `w_m` on the
//!   log-likelihood, not on the input: scaling the input would leak the modality through the
//!   input's magnitude (a modality `D0` recognises would arrive near zero), and the optimum of
//!   Eq. 8–9 would no longer hold.
//! - `L_ADV = Σ_{i,m} w_{i,m} · (−log D1_m(c_{i,m})) / Σ_{i,m} w_{i,m}`, summed over the (item,
//!   modality) pairs the items have. **Normalisation**: by the total weight, so `L_ADV` is a
//!   weighted mean log loss (`ln M` at chance). Eq. 8's optimum `D1* = w_i p_i / Σ_m w_m p_m` is
//!   unchanged by any common scale of the weights, so this keeps exactly the paper's game while
//!   its gradient into `I` does not shrink with the overall level of the `w`s: dividing by the
//!   number of pairs instead would let a confident `D0` (every `w_m` near 0) switch the
//!   adversary off, which is how DDMA collapsed before.
//! - `c = max_m(w_m ⊙ c_m)` (element-wise max over the modalities an item has; a missing
//!   modality enters as −∞, not 0) is the invariant representation.
//! - `D_s` classifies the specific features `s_m` with `D1`'s matrix; the caller feeds it
//!   `S_m(e_m.detach())` so its loss reaches `S_m` and the shared matrix but **not the
//!   embedding layer**.
//!
//! The single-discriminator ablation (`maf_adv`, the cross-modal adversary of Wang et al. [30])
//! is the same network without `D0` and `D_s`: every `w_m = 1`, `c = max_m c_m`.
//!
//! Every loss and diagnostic counts only the (item, modality) pairs that exist.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor};

use super::{linear, stack, stack_presence, unstack};

/// Gradient reversal layer: the identity forward, `−weight ×` the upstream gradient backward.
///
/// Built as `x.detach() + (x − x.detach()) × (−weight)`: the second term is exactly zero
/// forward (so the output equals `x` bit for bit) and has derivative `−weight`.
pub fn gradient_reversal<const D: usize>(x: Tensor<D>, weight: f64) -> Tensor<D> {
    if let Some(reversed) = super::fused::reverse_gradient(x.clone(), weight) {
        return reversed;
    }
    let constant = x.clone().detach();
    constant.clone() + (x - constant).mul_scalar(-weight)
}

/// `presence`, or ones `[M, n, 1]` where it is `None`.
fn present_or_ones(presence: Option<&Tensor<3>>, like: &Tensor<3>) -> Tensor<3> {
    let [m, n, _] = like.dims();
    match presence {
        Some(p) => p.clone(),
        None => Tensor::ones([m, n, 1], &like.device()),
    }
}

/// The one-hot of each row's own modality, `[M, 1, M]`: row block `m` is class `m`.
fn own_modality(m: usize, device: &Device) -> Tensor<3> {
    Tensor::<2>::eye(m, device).reshape([m, 1, m])
}

/// The probability (or log-probability) each row gives its own modality, `[M, n, 1]`.
fn own_class(values: Tensor<3>) -> Tensor<3> {
    let m = values.dims()[0];
    let device = values.device();
    (values * own_modality(m, &device)).sum_dim(2)
}

/// Weighted mean cross-entropy of M-class logits: `Σ w · (−log p_true) / Σ w` over every row,
/// where the rows of block `m` have true class `m` and `w` is 0 for a row that does not exist.
/// Returns 0 when every weight is 0.
///
/// # Shapes
/// - `logits`: `[M, n, M]`; `weights`: `[M, n, 1]`; output: `[1]`
pub fn weighted_modality_nll(logits: Tensor<3>, weights: &Tensor<3>) -> Tensor<1> {
    let nll = own_class(log_softmax(logits, 2)).neg();
    (nll * weights.clone()).sum() / weights.clone().sum().add_scalar(1e-6)
}

/// Share of the existing rows that a classifier assigns to their true modality, `[1]`.
fn accuracy(logits: &Tensor<3>, present: &Tensor<3>) -> Tensor<1> {
    let logits = logits.clone().detach();
    let best = logits.clone().max_dim(2);
    let right = own_class(logits).greater_equal(best).float() * present.clone();
    right.sum() / present.clone().sum().clamp_min(1.0)
}

/// Config of [`Adversarial`].
#[derive(Debug, Clone, PartialEq)]
pub struct AdversarialConfig {
    /// Width of `c_m` and `s_m` (paper: 256).
    pub dim: usize,
    /// Number of modalities `M` (at least 2).
    pub n_modalities: usize,
    /// DDMA (`D0` weights, `D_s`) when true; a single GRL discriminator when false.
    pub double: bool,
    /// Weight of the gradient reversal layer.
    pub grl_weight: f64,
}

impl AdversarialConfig {
    /// Build the discriminators.
    pub fn init(&self, device: &Device) -> Adversarial {
        Adversarial {
            importance: self.double.then(|| LinearConfig::new(self.dim, self.n_modalities).init(device)),
            modality: LinearConfig::new(self.dim, self.n_modalities).init(device),
            grl_weight: self.grl_weight,
        }
    }
}

/// Discriminators of the multimodal adversarial network.
#[derive(Module, Debug)]
pub struct Adversarial {
    /// `D0`, the importance discriminator (DDMA only).
    pub importance: Option<Linear>,
    /// `D1`'s discriminating matrix, shared with `D_s`.
    pub modality: Linear,
    /// Weight of the gradient reversal layer.
    #[module(skip)]
    pub grl_weight: f64,
}

/// How the adversarial game stands on one batch (all detached, for the training record).
#[derive(Debug, Clone)]
pub struct AdversarialDiagnostics {
    /// Share of existing (item, modality) pairs `D0` classifies right, `[1]` (DDMA only).
    pub importance_accuracy: Option<Tensor<1>>,
    /// Share `D1` classifies right, `[1]`.
    pub modality_accuracy: Tensor<1>,
    /// Mean `w_m` over the items that have modality `m`, `[M]`.
    pub mean_weights: Tensor<1>,
}

/// What [`Adversarial::forward`] produces.
#[derive(Debug, Clone)]
pub struct AdversarialOutput {
    /// `c = max_m(w_m ⊙ c_m)` over the modalities an item has, `[n, d]`.
    pub invariant: Tensor<2>,
    /// `L_D0`, `[1]` (DDMA only).
    pub importance_loss: Option<Tensor<1>>,
    /// `L_ADV`, `D1`'s `w`-weighted cross-entropy behind the GRL (Eq. 7), `[1]`.
    pub adversarial_loss: Tensor<1>,
    /// `w_m`, M tensors `[n, 1]` (constants; 1 without `D0`; 0 where the item lacks `m`).
    pub weights: Vec<Tensor<2>>,
    /// Accuracies and mean weights.
    pub diagnostics: AdversarialDiagnostics,
}

/// `w_m = 1 − D0_m(c_m)` from `D0`'s logits, a constant (detached), zero where the item lacks
/// the modality.
///
/// # Shapes
/// - `logits`: `[M, n, M]`; `present`: `[M, n, 1]`; output: `[M, n, 1]`
fn importance_weights(logits: &Tensor<3>, present: &Tensor<3>) -> Tensor<3> {
    own_class(softmax(logits.clone().detach(), 2)).neg().add_scalar(1.0) * present.clone()
}

/// `c = max_m(w_m ⊙ c_m)`; a modality the item lacks enters as −∞ (−1e9).
///
/// # Shapes
/// - `invariant`: `[M, n, d]`; `weights`, `present`: `[M, n, 1]`; output: `[n, d]`
fn pool(invariant: Tensor<3>, weights: Tensor<3>, present: &Tensor<3>) -> Tensor<2> {
    // The weights are constants (D0 reads its input detached) and the fused operation treats
    // them so.
    if let Some(pooled) = super::fused::weighted_max(invariant.clone(), weights.clone(), present.clone()) {
        return pooled;
    }
    let [_, n, d] = invariant.dims();
    (invariant * weights + present.clone().sub_scalar(1.0).mul_scalar(1e9)).max_dim(0).reshape([n, d])
}

impl Adversarial {
    /// The pooled invariant representation `c = max_m(w_m ⊙ c_m)` alone, what scoring needs:
    /// `D0` gives the weights; `D1`, the losses and the diagnostics are not computed.
    ///
    /// # Shapes
    /// - `invariant`: `[M, n, d]`; `presence`: `[M, n, 1]` or `None` (all present); output: `[n, d]`
    pub fn pooled_stacked(&self, invariant: Tensor<3>, presence: Option<&Tensor<3>>) -> Tensor<2> {
        let present = present_or_ones(presence, &invariant);
        let weights = match &self.importance {
            Some(d0) => importance_weights(&linear(d0, invariant.clone().detach()), &present),
            None => present.clone(),
        };
        pool(invariant, weights, &present)
    }

    /// Weights, `D0` and `D1` losses and the pooled invariant representation.
    ///
    /// # Shapes
    /// - `invariant`: M tensors `[n, d]` (`c_m`, modality `m` at index `m`)
    /// - `presence`: M entries, `[n, 1]` (1.0 where the item has modality `m`) or `None`
    /// - output: see [`AdversarialOutput`]
    pub fn forward(&self, invariant: &[Tensor<2>], presence: &[Option<Tensor<2>>]) -> AdversarialOutput {
        let c = stack(invariant);
        let present = stack_presence(presence, c.dims()[1], &c.device());
        self.forward_stacked(c.clone(), c, present.as_ref())
    }

    /// [`Adversarial::forward`] of the modalities stacked along the first axis, with `D1`
    /// (behind the GRL) fed `adversary_input` instead of `invariant`: the model passes
    /// `I(e_m.detach())`, so the reversed gradient updates `I` alone (§3.4.2: "`D1` plays the
    /// minimax game with the modality-invariant feature for updating `I`") and never reaches the
    /// embedding layer that `S_m` shares. Each discriminator runs once on all the modalities.
    ///
    /// # Shapes
    /// - `invariant`, `adversary_input`: `[M, n, d]`; `presence`: `[M, n, 1]` or `None` (all
    ///   present)
    pub fn forward_stacked(
        &self,
        invariant: Tensor<3>,
        adversary_input: Tensor<3>,
        presence: Option<&Tensor<3>>,
    ) -> AdversarialOutput {
        let present = present_or_ones(presence, &invariant);
        let m = invariant.dims()[0];
        let (importance_loss, importance_accuracy, weights) = match &self.importance {
            Some(d0) => {
                // D0 sees c_m without its history: no gradient into I.
                let logits = linear(d0, invariant.clone().detach());
                let weights = importance_weights(&logits, &present);
                let accuracy = accuracy(&logits, &present);
                (Some(weighted_modality_nll(logits, &present)), Some(accuracy), weights)
            }
            None => (None, None, present.clone()),
        };
        // Eq. 7: D1 on I(e) itself, behind the GRL; w_m weights the log-likelihood.
        let d1_logits = linear(&self.modality, gradient_reversal(adversary_input, self.grl_weight));
        let modality_accuracy = accuracy(&d1_logits, &present);
        let adversarial_loss = weighted_modality_nll(d1_logits, &weights);
        let mean_weights = (weights.clone().sum_dim(1) / present.clone().sum_dim(1).clamp_min(1.0)).reshape([m]);
        AdversarialOutput {
            invariant: pool(invariant, weights.clone(), &present),
            importance_loss,
            adversarial_loss,
            weights: unstack(weights),
            diagnostics: AdversarialDiagnostics { importance_accuracy, modality_accuracy, mean_weights },
        }
    }

    /// `L_Ds`: `D1`'s matrix classifying the specific features, over the (item, modality) pairs
    /// that exist. Pass `S_m(e_m.detach())` so nothing reaches the embedding layer.
    ///
    /// # Shapes
    /// - `specific`: `[M, n, d]`; `presence`: `[M, n, 1]` or `None` (all present); output: `[1]`
    pub fn specific_loss(&self, specific: Tensor<3>, presence: Option<&Tensor<3>>) -> Tensor<1> {
        let present = present_or_ones(presence, &specific);
        weighted_modality_nll(linear(&self.modality, specific), &present)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    #[test]
    fn gradient_reversal_is_identity_forward_and_negated_scaled_backward() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::from_data(TensorData::from([[1.0f32, -2.0], [0.5, 3.0]]), &device).require_grad();
        let y = gradient_reversal(x.clone(), 0.7);
        // Bit-exact identity forward.
        assert_eq!(
            y.clone().into_data().try_to_vec::<f32>().unwrap(),
            x.clone().into_data().try_to_vec::<f32>().unwrap()
        );
        // Upstream gradient g = d(sum(y * k))/dy = k.
        let k = Tensor::<2>::from_data(TensorData::from([[1.0f32, 2.0], [-3.0, 4.0]]), &device);
        let grads = (y * k).sum().backward();
        let g = x.grad(&grads).expect("x has a gradient");
        g.into_data()
            .assert_approx_eq::<f32>(&TensorData::from([[-0.7f32, -1.4], [2.1, -2.8]]), Tolerance::absolute(1e-6));
    }

    #[test]
    fn importance_loss_puts_no_gradient_into_the_invariant_features() {
        let device = Device::flex().autodiff();
        let adv = AdversarialConfig { dim: 4, n_modalities: 2, double: true, grl_weight: 1.0 }.init(&device);
        let c: Vec<Tensor<2>> =
            (0..2).map(|_| Tensor::<2>::random([3, 4], Distribution::Default, &device).require_grad()).collect();
        let out = adv.forward(&c, &[None, None]);
        let grads = out.importance_loss.expect("DDMA has D0").backward();
        for c in &c {
            assert!(c.grad(&grads).is_none(), "D0's loss reached c_m");
        }
        let d0 = adv.importance.as_ref().expect("D0");
        assert!(d0.weight.val().grad(&grads).is_some(), "D0 is not trained by its loss");
    }

    #[test]
    fn weights_are_one_minus_the_true_class_probability() {
        let device = Device::flex();
        let adv = AdversarialConfig { dim: 4, n_modalities: 3, double: true, grl_weight: 1.0 }.init(&device);
        let c: Vec<Tensor<2>> = (0..3).map(|_| Tensor::<2>::random([5, 4], Distribution::Default, &device)).collect();
        let out = adv.forward(&c, &[None, None, None]);
        let d0 = adv.importance.as_ref().expect("D0");
        for (m, (c, w)) in c.iter().zip(&out.weights).enumerate() {
            let p = softmax(d0.forward(c.clone()), 1).narrow(1, m, 1);
            w.clone()
                .into_data()
                .assert_approx_eq::<f32>(&p.neg().add_scalar(1.0).into_data(), Tolerance::absolute(1e-6));
        }
        assert_eq!(out.invariant.dims(), [5, 4]);
    }

    fn invariant_features(n: usize, m: usize, d: usize, device: &Device) -> Vec<Tensor<2>> {
        (0..m).map(|_| Tensor::<2>::random([n, d], Distribution::Normal(0.0, 1.0), device).require_grad()).collect()
    }

    #[test]
    fn adversarial_loss_leaves_the_importance_discriminator_untouched() {
        let device = Device::flex().autodiff();
        let adv = AdversarialConfig { dim: 4, n_modalities: 3, double: true, grl_weight: 1.0 }.init(&device);
        let c = invariant_features(6, 3, 4, &device);
        let out = adv.forward(&c, &[None, None, None]);
        let grads = out.adversarial_loss.backward();
        let d0 = adv.importance.as_ref().expect("D0");
        assert!(d0.weight.val().grad(&grads).is_none(), "L_ADV reached D0's matrix");
        assert!(adv.modality.weight.val().grad(&grads).is_some(), "L_ADV does not train D1");
        assert!(c[0].grad(&grads).is_some(), "L_ADV does not reach c_m");
    }

    #[test]
    fn adversarial_gradient_into_the_invariant_features_scales_with_w() {
        // Eq. 7 with our normalisation: row r of modality m gets w_{r,m} / Σw times the gradient
        // it gets from the unweighted game (every w = 1, normalised by the number of rows).
        let device = Device::flex().autodiff();
        let (n, m, d) = (5, 3, 4);
        let ddma = AdversarialConfig { dim: d, n_modalities: m, double: true, grl_weight: 1.0 }.init(&device);
        let plain = Adversarial { importance: None, modality: ddma.modality.clone(), grl_weight: 1.0 };
        let c = invariant_features(n, m, d, &device);
        let weighted = ddma.forward(&c, &[None, None, None]);
        let weights: Vec<Vec<f32>> =
            weighted.weights.iter().map(|w| w.clone().into_data().try_to_vec::<f32>().unwrap()).collect();
        let total: f32 = weights.iter().flatten().sum();
        let g_weighted = weighted.adversarial_loss.backward();
        let c2: Vec<Tensor<2>> = c.iter().map(|t| t.clone().detach().require_grad()).collect();
        let g_plain = plain.forward(&c2, &[None, None, None]).adversarial_loss.backward();
        let mut spread = Vec::new();
        for k in 0..m {
            let gw = c[k].grad(&g_weighted).unwrap().into_data().try_to_vec::<f32>().unwrap();
            let gp = c2[k].grad(&g_plain).unwrap().into_data().try_to_vec::<f32>().unwrap();
            for r in 0..n {
                let expected = weights[k][r] / total * (n * m) as f32;
                for j in 0..d {
                    let (a, b) = (gw[r * d + j], gp[r * d + j] * expected);
                    assert!((a - b).abs() <= 1e-5 + 1e-3 * b.abs(), "modality {k} row {r}: {a} vs {b}");
                }
                spread.push(weights[k][r]);
            }
        }
        // The test means something only if the weights differ.
        let (lo, hi) = spread.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &w| (lo.min(w), hi.max(w)));
        assert!(hi - lo > 0.01, "weights {lo}..{hi} are too alike to test the scaling");
    }

    #[test]
    fn a_missing_modality_is_out_of_the_losses_and_the_max_pool() {
        let device = Device::flex().autodiff();
        let adv = AdversarialConfig { dim: 3, n_modalities: 2, double: true, grl_weight: 1.0 }.init(&device);
        // Modality 1 has large invariant features that would win the max-pool for item 0.
        let c0 = Tensor::<2>::from_data(TensorData::from([[-0.5f32, -0.5, -0.5], [0.1, 0.2, 0.3]]), &device);
        let c1 =
            Tensor::<2>::from_data(TensorData::from([[0.9f32, 0.9, 0.9], [0.9, 0.9, 0.9]]), &device).require_grad();
        let present = Tensor::<2>::from_data(TensorData::from([[0.0f32], [1.0]]), &device);
        let out = adv.forward(&[c0.clone(), c1.clone()], &[None, Some(present)]);
        let pooled = out.invariant.clone().into_data().try_to_vec::<f32>().unwrap();
        let w0 = out.weights[0].clone().into_data().try_to_vec::<f32>().unwrap();
        for j in 0..3 {
            // Item 0 pools over modality 0 alone, negative values included (−∞, not 0).
            assert!((pooled[j] - (-0.5 * w0[0])).abs() < 1e-6, "{pooled:?}");
        }
        assert_eq!(out.weights[1].clone().into_data().try_to_vec::<f32>().unwrap()[0], 0.0);
        // Item 0's modality-1 features get no gradient from any loss.
        let loss = out.adversarial_loss + out.importance_loss.unwrap() + out.invariant.sum();
        let g = c1.grad(&loss.backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert!(g[..3].iter().all(|v| *v == 0.0), "{g:?}");
        assert!(g[3..].iter().any(|v| *v != 0.0), "{g:?}");
    }
}
