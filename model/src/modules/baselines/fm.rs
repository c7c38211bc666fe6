//! Factorization machine (Rendle, ICDM 2010), the second of the paper's group-1 baselines
//! (Table 2).
//!
//! Kept: logistic regression plus the pairwise interactions of k-dimensional field factors,
//! `½ Σ_k ((Σ_f v_fk)² − Σ_f v_fk²)`, over the same id fields as [`super::lr`]. Simplified as
//! there: the behavior items form one normalised multi-hot field.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::lr::{IdFields, LogisticRegression};
use crate::batch::ModelInputs;
use crate::batch_tensors::BatchTensors;

/// Factorization machine: logistic regression plus pairwise interactions of k-d field vectors,
/// `½ Σ_k ((Σ_f v_fk)² − Σ_f v_fk²)`.
#[derive(Module, Debug)]
pub struct FactorizationMachine {
    /// First-order part.
    pub linear: LogisticRegression,
    /// Field factors.
    pub factors: IdFields,
}

impl FactorizationMachine {
    /// Build with `k`-dimensional factors.
    pub fn new(inputs: &ModelInputs, k: usize, device: &Device) -> Self {
        Self { linear: LogisticRegression::new(inputs, device), factors: IdFields::new(inputs, k, device) }
    }

    /// Logits.
    ///
    /// # Shapes
    /// - output: `[B]`
    pub fn forward(&self, x: &BatchTensors) -> Tensor<1> {
        let b = x.batch_size;
        let fields = self.factors.forward(x);
        let squares = fields.iter().map(|f| f.clone().powi_scalar(2)).reduce(|a, f| a + f);
        let sum = fields.into_iter().reduce(|a, f| a + f);
        let pairwise = match (sum, squares) {
            (Some(sum), Some(squares)) => (sum.powi_scalar(2) - squares).sum_dim(1).reshape([b]).mul_scalar(0.5),
            _ => Tensor::zeros([b], &x.labels.device()),
        };
        self.linear.forward(x) + pairwise
    }
}
