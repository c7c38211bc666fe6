//! Attentional Property GRU, APGRU (paper §3.4.1), and the candidate attention it ends with.
//!
//! The GRU's update gate also sees the behavior property `p_t`:
//! `u_t = σ(W^u rep_t + P^u p_t + U^u h_{t−1} + b^u)`, reset gate `r_t = σ(W^r rep_t + U^r h_{t−1}
//! + b^r)`, candidate `n_t = tanh(W^n rep_t + b^n + r_t ⊙ U^n h_{t−1})` and
//! `h_t = (1 − u_t) ⊙ h_{t−1} + u_t ⊙ n_t`. Without a property projection it is a plain GRU
//!   (the BaseModel of the ablations).
//!
//! Speed: `W rep_t` depends on the item alone, so [`ApGru::input_projection`] runs on the
//! batch's distinct items and the result is gathered per slot; only the `U h_{t−1}` products run
//! per time step. Sequences are left-aligned, so padding after a sequence's end cannot change
//! its real hidden states, and the masked softmax gives padding exactly zero weight.
//!
//! [`CandidateAttention`] is an MLP over `[h_t, rep_X]` (computed as `A_h h_t + A_x rep_X`, the
//! same linear map split in two so the candidate half runs once per sample), a softmax masked to
//! the real sequence, and the attention-weighted sum of hidden states as the user vector.

use super::{linear, tanh};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::softmax;

use super::fused::sigmoid;
use burn::tensor::{Bool, Device, Tensor};

/// Config of [`ApGru`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApGruConfig {
    /// Width of the item representations `rep_t`.
    pub input_dim: usize,
    /// Width of the behavior property `p_t`; `None` builds a plain GRU.
    pub property_dim: Option<usize>,
    /// Hidden width.
    pub hidden_dim: usize,
}

impl ApGruConfig {
    /// Build the recurrent layer.
    pub fn init(&self, device: &Device) -> ApGru {
        let g = self.hidden_dim;
        ApGru {
            input: LinearConfig::new(self.input_dim, 3 * g).init(device),
            property: self.property_dim.map(|p| LinearConfig::new(p, g).with_bias(false).init(device)),
            recurrent: LinearConfig::new(g, 3 * g).with_bias(false).init(device),
            hidden_dim: g,
        }
    }
}

/// GRU with the behavior property in its update gate.
#[derive(Module, Debug)]
pub struct ApGru {
    /// `[W^u; W^r; W^n]` and `[b^u; b^r; b^n]`.
    pub input: Linear,
    /// `P^u`, when the property is used.
    pub property: Option<Linear>,
    /// `[U^u; U^r; U^n]`.
    pub recurrent: Linear,
    /// Hidden width.
    pub hidden_dim: usize,
}

/// The `T` steps of a `[B, T, k]` sequence as `[B, k]` tensors, split in halves recursively.
/// A slice's backward fills a zero tensor of its whole input (burn's autodiff), so `T` narrows
/// of the whole sequence would cost `T` passes over it, `O(T² B k)`: 150 passes of the
/// `[1024, 50, 128]` gate inputs per step of MARN's training at batch 1024. Halving costs one
/// pass per level, `⌈log₂ T⌉` in all.
fn steps(x: Tensor<3>) -> Vec<Tensor<2>> {
    let [b, t, k] = x.dims();
    if t <= 1 {
        return if t == 1 { vec![x.reshape([b, k])] } else { Vec::new() };
    }
    let half = t / 2;
    let mut out = steps(x.clone().narrow(1, 0, half));
    out.extend(steps(x.narrow(1, half, t - half)));
    out
}

impl ApGru {
    /// `W rep + b` for every distinct item (gather the rows per slot afterwards).
    ///
    /// # Shapes
    /// - `items`: `[n, input_dim]`; output: `[n, 3 * hidden_dim]`
    pub fn input_projection(&self, items: Tensor<2>) -> Tensor<2> {
        linear(&self.input, items)
    }

    /// Run the recurrence.
    ///
    /// # Shapes
    /// - `projected`: `[B, T, 3 * hidden_dim]` (rows of [`ApGru::input_projection`] per slot)
    /// - `property`: `[B, T, property_dim]` (ignored by a plain GRU)
    /// - output: `[B, T, hidden_dim]`, the hidden state after every step
    pub fn forward(&self, projected: Tensor<3>, property: Option<Tensor<3>>) -> Tensor<3> {
        self.forward_gated(projected, property, None)
    }

    /// Run the recurrence with every step's update gate scaled by a score `a_t`:
    /// `u'_t = a_t · u_t` (DIEN's AUGRU, attention-gated by the candidate); `None` is
    /// [`ApGru::forward`].
    ///
    /// # Shapes
    /// - as [`ApGru::forward`]; `gate`: `[B, T]`
    pub fn forward_gated(
        &self,
        projected: Tensor<3>,
        property: Option<Tensor<3>>,
        gate: Option<Tensor<2>>,
    ) -> Tensor<3> {
        let [b, t, _] = projected.dims();
        let g = self.hidden_dim;
        let device = projected.device();
        // The whole recurrence as one operation on burn's CPU backend (not for AUGRU's gate, a
        // recurrent bias, or bfloat16 products).
        let f32_products = super::PRODUCTS.with(std::cell::Cell::get) == super::Precision::F32;
        if gate.is_none()
            && self.recurrent.bias.is_none()
            && f32_products
            && super::fused::on_host(&device)
            && projected.dtype() == burn::tensor::DType::F32
        {
            let (x, extra) = match (&self.property, property) {
                (Some(p_layer), Some(p)) => (projected, linear(p_layer, p)),
                _ => (projected, Tensor::zeros([b, t, g], &device)),
            };
            return super::fused::gru_sequence(x, extra, self.recurrent.weight.val());
        }
        // [u; r; n] inputs of every step, the property added to the update gate's (P^u p_t).
        let inputs = match (&self.property, property) {
            (Some(p_layer), Some(p)) => {
                let update = projected.clone().narrow(2, 0, g) + linear(p_layer, p);
                Tensor::cat(vec![update, projected.narrow(2, g, 2 * g)], 2)
            }
            _ => projected,
        };
        let gates = gate.map(|a| steps(a.unsqueeze_dim::<3>(2)));
        let mut h = Tensor::<2>::zeros([b, g], &device);
        let mut states = Vec::with_capacity(t);
        for (step, x) in steps(inputs).into_iter().enumerate() {
            let rec = linear(&self.recurrent, h.clone());
            // u and r in one sigmoid over their 2g columns.
            let ur = sigmoid(x.clone().narrow(1, 0, 2 * g) + rec.clone().narrow(1, 0, 2 * g));
            let mut u = ur.clone().narrow(1, 0, g);
            if let Some(a) = gates.as_ref().and_then(|a| a.get(step)) {
                u = u * a.clone();
            }
            let r = ur.narrow(1, g, g);
            let n = tanh(x.narrow(1, 2 * g, g) + r * rec.narrow(1, 2 * g, g));
            h = h.clone() + u * (n - h); // (1 − u) h + u n
            states.push(h.clone());
        }
        Tensor::stack(states, 1)
    }
}

/// Config of [`CandidateAttention`].
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateAttentionConfig {
    /// Width of the attended states `h_t`.
    pub state_dim: usize,
    /// Width of the candidate representation `rep_X`.
    pub candidate_dim: usize,
    /// Hidden width of the attention MLP.
    pub hidden_dim: usize,
}

impl CandidateAttentionConfig {
    /// Build the attention MLP.
    pub fn init(&self, device: &Device) -> CandidateAttention {
        CandidateAttention {
            state: LinearConfig::new(self.state_dim, self.hidden_dim).init(device),
            candidate: LinearConfig::new(self.candidate_dim, self.hidden_dim).with_bias(false).init(device),
            score: LinearConfig::new(self.hidden_dim, 1).init(device),
        }
    }
}

/// Candidate attention over a sequence: `score_t = v^T tanh(A_h h_t + A_x rep_X + a)`.
#[derive(Module, Debug)]
pub struct CandidateAttention {
    /// `A_h`, `a`.
    pub state: Linear,
    /// `A_x`.
    pub candidate: Linear,
    /// `v`.
    pub score: Linear,
}

impl CandidateAttention {
    /// Attention weights, zero at padding; a row with no real position is all zeros.
    ///
    /// # Shapes
    /// - `states`: `[B, T, state_dim]`; `candidate`: `[B, candidate_dim]`
    /// - `padding`: `[B, T]`, true at padding; `mask`: `[B, T]`, 1.0 at real positions
    /// - output: `[B, T]`
    pub fn weights(
        &self,
        states: Tensor<3>,
        candidate: Tensor<2>,
        padding: Tensor<2, Bool>,
        mask: Tensor<2>,
    ) -> Tensor<2> {
        let [b, t, _] = states.dims();
        let hidden = tanh(linear(&self.state, states) + linear(&self.candidate, candidate).unsqueeze_dim::<3>(1));
        let scores = linear(&self.score, hidden).reshape([b, t]).mask_fill(padding, -1e9);
        // exp(-1e9 - max) is exactly 0: padding gets no weight. Rows without history are zeroed.
        let any = mask.sum_dim(1).clamp_max(1.0);
        softmax(scores, 1) * any
    }

    /// User vector: the attention-weighted sum of the states.
    ///
    /// # Shapes
    /// - as [`CandidateAttention::weights`]; output: `[B, state_dim]`
    pub fn forward(
        &self,
        states: Tensor<3>,
        candidate: Tensor<2>,
        padding: Tensor<2, Bool>,
        mask: Tensor<2>,
    ) -> Tensor<2> {
        let [b, _, d] = states.dims();
        let w = self.weights(states.clone(), candidate, padding, mask);
        (states * w.unsqueeze_dim::<3>(2)).sum_dim(1).reshape([b, d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    #[test]
    fn padding_after_the_end_changes_neither_states_nor_user_vector() {
        let device = Device::flex();
        let gru = ApGruConfig { input_dim: 6, property_dim: Some(3), hidden_dim: 5 }.init(&device);
        let att = CandidateAttentionConfig { state_dim: 5, candidate_dim: 6, hidden_dim: 4 }.init(&device);
        let x = Tensor::<3>::random([1, 3, 15], Distribution::Default, &device);
        let p = Tensor::<3>::random([1, 3, 3], Distribution::Default, &device);
        let cand = Tensor::<2>::random([1, 6], Distribution::Default, &device);
        let pad = |t: usize| {
            let extra = Tensor::<3>::random([1, t, 15], Distribution::Default, &device);
            let extra_p = Tensor::<3>::random([1, t, 3], Distribution::Default, &device);
            let xs = Tensor::cat(vec![x.clone(), extra], 1);
            let ps = Tensor::cat(vec![p.clone(), extra_p], 1);
            let total = 3 + t;
            let padding: Vec<bool> = (0..total).map(|i| i >= 3).collect();
            let mask: Vec<f32> = (0..total).map(|i| if i < 3 { 1.0 } else { 0.0 }).collect();
            let h = gru.forward(xs, Some(ps));
            att.forward(
                h,
                cand.clone(),
                Tensor::from_data(TensorData::new(padding, [1, total]), &device),
                Tensor::from_data(TensorData::new(mask, [1, total]), &device),
            )
        };
        let short = pad(0);
        let long = pad(7);
        assert_eq!(short.dims(), [1, 5]);
        long.into_data().assert_approx_eq::<f32>(&short.into_data(), Tolerance::absolute(1e-6));
    }
}
