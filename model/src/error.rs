//! The crate's one error type, with variants named after the phase that failed.

/// Everything that can go wrong in `marnflow-model`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A batch is inconsistent with itself or with the model's [`crate::ModelInputs`].
    #[error("invalid batch: {0}")]
    Batch(String),
    /// A configuration is invalid (every problem is listed, separated by `; `).
    #[error("invalid model config: {0}")]
    Config(String),
    /// The requested device is unknown or not compiled in.
    #[error("device: {0}")]
    Device(String),
    /// Saving or loading a checkpoint failed.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// File or directory involved.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Metric inputs are inconsistent (lengths differ, labels not 0/1, ...).
    #[error("metrics: {0}")]
    Metrics(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
