//! Multimodal adversarial network (paper §3.3): the gradient reversal layer, the
//! double-discriminator multimodal adversarial network (DDMA) and the modality-specific
//! discriminator `D_s`.
//!
//! - `D0` (importance discriminator) is an M-class classifier on the invariant features `c_m`,
//!   trained on `c_m.detach()`, so its loss puts **no gradient into `I`**.
//! - `w_m = 1 − D0_m(c_m)`, the probability `D0` gives to any modality but the true one, is
//!   used as a constant (detached).
//! - `D1` (modality discriminator) is an M-class classifier on the weighted invariant features
//!   `w_m ⊙ c_m` behind a gradient reversal layer: minimising its cross-entropy trains `D1` to
//!   tell modalities apart and, through the reversed gradient, trains `I` to confuse it (Eq. 7).
//! - `c = max_m(w_m ⊙ c_m)` (element-wise max over modalities) is the invariant representation.
//! - `D_s` classifies the specific features `s_m` with `D1`'s matrix; the caller feeds it
//!   `S_m(e_m.detach())` so its loss reaches `S_m` and the shared matrix but **not the
//!   embedding layer**.
//!
//! Reading of Eq. 7: the issue specifies `D1` "on the weighted invariant features", which is what
//! is built (`D1(GRL(w_m ⊙ c_m))`, unweighted cross-entropy). Eq. 7 can also be read as weighting
//! each modality's log-likelihood by `w_m`; both make the low-`w` (modality-specific) features
//! matter less to `D1`, and the pooled `c = max_m(w_m ⊙ c_m)` uses the weighted features either way.
//!
//! The single-discriminator ablation (`maf_adv`) is the same network without `D0` and `D_s`:
//! `w_m = 1`.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor};

/// Gradient reversal layer: the identity forward, `−weight ×` the upstream gradient backward.
///
/// Built as `x.detach() + (x − x.detach()) × (−weight)`: the second term is exactly zero
/// forward (so the output equals `x` bit for bit) and has derivative `−weight`.
pub fn gradient_reversal<const D: usize>(x: Tensor<D>, weight: f64) -> Tensor<D> {
    let constant = x.clone().detach();
    constant.clone() + (x - constant).mul_scalar(-weight)
}

/// Mean cross-entropy of M classifiers' logits, where `logits[m]` holds rows of modality `m`.
///
/// # Shapes
/// - `logits`: M tensors `[n, M]`; output: `[1]`
pub fn modality_cross_entropy(logits: &[Tensor<2>]) -> Tensor<1> {
    let m = logits.len();
    let mut total: Option<Tensor<1>> = None;
    for (class, l) in logits.iter().enumerate() {
        let nll = log_softmax(l.clone(), 1).narrow(1, class, 1).mean().neg();
        total = Some(match total {
            Some(t) => t + nll,
            None => nll,
        });
    }
    match total {
        Some(t) => t.div_scalar(m as f64),
        None => Tensor::zeros([1], &Device::default()),
    }
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

/// What [`Adversarial::forward`] produces.
#[derive(Debug, Clone)]
pub struct AdversarialOutput {
    /// `c = max_m(w_m ⊙ c_m)`, `[n, d]`.
    pub invariant: Tensor<2>,
    /// `L_D0`, `[1]` (DDMA only).
    pub importance_loss: Option<Tensor<1>>,
    /// `L_ADV`, `D1`'s cross-entropy behind the GRL, `[1]`.
    pub adversarial_loss: Tensor<1>,
    /// `w_m`, M tensors `[n, 1]` (constants).
    pub weights: Vec<Tensor<2>>,
}

impl Adversarial {
    /// Weights, `D0` and `D1` losses and the pooled invariant representation.
    ///
    /// # Shapes
    /// - `invariant`: M tensors `[n, d]` (`c_m`, modality `m` at index `m`)
    /// - output: see [`AdversarialOutput`]
    pub fn forward(&self, invariant: &[Tensor<2>]) -> AdversarialOutput {
        let (importance_loss, weights) = match &self.importance {
            Some(d0) => {
                // D0 sees c_m without its history: no gradient into I.
                let logits: Vec<Tensor<2>> = invariant.iter().map(|c| d0.forward(c.clone().detach())).collect();
                let weights = logits
                    .iter()
                    .enumerate()
                    .map(|(m, l)| {
                        let p = softmax(l.clone().detach(), 1).narrow(1, m, 1);
                        p.neg().add_scalar(1.0) // w_m = 1 − D0_m(c_m), a constant
                    })
                    .collect::<Vec<_>>();
                (Some(modality_cross_entropy(&logits)), Some(weights))
            }
            None => (None, None),
        };
        let weighted: Vec<Tensor<2>> = match &weights {
            Some(w) => invariant.iter().zip(w).map(|(c, w)| c.clone() * w.clone()).collect(),
            None => invariant.to_vec(),
        };
        let d1_logits: Vec<Tensor<2>> =
            weighted.iter().map(|c| self.modality.forward(gradient_reversal(c.clone(), self.grl_weight))).collect();
        let adversarial_loss = modality_cross_entropy(&d1_logits);
        let [n, d] = weighted[0].dims();
        let pooled = Tensor::stack::<3>(weighted, 0).max_dim(0).reshape([n, d]);
        let weights = weights.unwrap_or_else(|| invariant.iter().map(|c| Tensor::ones([n, 1], &c.device())).collect());
        AdversarialOutput { invariant: pooled, importance_loss, adversarial_loss, weights }
    }

    /// `L_Ds`: `D1`'s matrix classifying the specific features. Pass `S_m(e_m.detach())` so
    /// nothing reaches the embedding layer.
    ///
    /// # Shapes
    /// - `specific`: M tensors `[n, d]`; output: `[1]`
    pub fn specific_loss(&self, specific: &[Tensor<2>]) -> Tensor<1> {
        let logits: Vec<Tensor<2>> = specific.iter().map(|s| self.modality.forward(s.clone())).collect();
        modality_cross_entropy(&logits)
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
        let out = adv.forward(&c);
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
        let out = adv.forward(&c);
        let d0 = adv.importance.as_ref().expect("D0");
        for (m, (c, w)) in c.iter().zip(&out.weights).enumerate() {
            let p = softmax(d0.forward(c.clone()), 1).narrow(1, m, 1);
            w.clone()
                .into_data()
                .assert_approx_eq::<f32>(&p.neg().add_scalar(1.0).into_data(), Tolerance::absolute(1e-6));
        }
        assert_eq!(out.invariant.dims(), [5, 4]);
    }
}
