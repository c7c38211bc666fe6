//! `marnflow-model`: MARN (Li et al., WWW 2020) and its ablations and baselines in burn.
//!
//! The crate takes the [batch contract](batch) — plain Rust vectors of ids, masks and dense
//! arrays, items deduplicated per batch — and knows nothing of Parquet. It owns the model
//! ([`modules`], one file per paper block), one training step ([`train`]), metrics
//! ([`metrics`]), checkpoints ([`checkpoint`]) and device selection ([`device`]). No backend is
//! named in model code: the device chosen at run time decides it.
//!
//! ```
//! use burn::tensor::Device;
//! use marnflow_model::{synthetic::SyntheticSpec, MarnConfig, TrainConfig, Trainer, Variant};
//!
//! let spec = SyntheticSpec::default();
//! let batch = spec.batch().unwrap();
//! let config = MarnConfig {
//!     variant: Variant::Marn,
//!     representation_dim: 16,
//!     gru_dim: 8,
//!     head_layers: vec![8],
//!     ..MarnConfig::default()
//! };
//! let model = config.init(&spec.inputs(), &Device::flex().autodiff()).unwrap();
//! let mut trainer = Trainer::new(model, TrainConfig::default()).unwrap();
//! let losses = trainer.step(&batch, 0.5).unwrap();
//! assert!(losses.ctr.is_finite());
//! let p = trainer.model().unwrap().predict(&batch).unwrap();
//! assert_eq!(p.len(), batch.len());
//! ```

pub mod batch;
pub mod batch_tensors;
pub mod checkpoint;
pub mod device;
pub mod distributed;
pub mod error;
pub mod metrics;
pub mod modules;
pub mod synthetic;
pub mod train;

pub use batch::{Batch, ItemTable, ModelInputs, Samples, Titles};
pub use batch_tensors::{BatchTensors, ResidentImages, Table, TableRows};
pub use distributed::Collective;
pub use error::{Error, Result};
pub use modules::attention_fusion::AttentionContext;
pub use modules::marn::{
    aux_loss_weight, Diagnostics, Marn, MarnConfig, MarnLoss, MarnOutput, ModalityFeatures, Pass, Variant,
};
pub use modules::modality_embedding::{Modality, ModalityEmbeddingConfig};
pub use modules::Precision;
pub use train::{evaluate_loss, StepDiagnostics, StepLosses, TrainConfig, Trainer};
