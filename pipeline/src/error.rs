//! The one error type of the pipeline crate, with variants named after the phase that failed.

use std::fmt;

/// Result alias used throughout the pipeline crate.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// Everything that can go wrong in the pipeline, by phase.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A configuration value is out of range or inconsistent; every problem is listed.
    #[error("invalid configuration:\n{}", Problems(.0))]
    Config(Vec<String>),

    /// The lake URI could not be understood or opened.
    #[error("cannot open lake {uri}: {reason}")]
    LakeOpen { uri: String, reason: String },

    /// Reading from or writing to object storage failed.
    #[error("object store {op} failed at {path}: {source}")]
    Store {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// Encoding or decoding Parquet failed.
    #[error("parquet {op} failed at {path}: {source}")]
    Parquet {
        op: &'static str,
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// Building Arrow arrays failed.
    #[error("arrow error while {context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    /// A SQL statement failed to plan or execute (the message is DataFusion's own).
    #[error("{0}")]
    Sql(#[from] datafusion::error::DataFusionError),

    /// An input file of an importer cannot be used: what is wrong, and where.
    #[error("cannot import {path}: {reason}")]
    Input { path: String, reason: String },

    /// The window dataflow failed while it ran (a worker returned an error or panicked): a
    /// runtime failure, not a configuration problem.
    #[error("the window dataflow failed: {0}")]
    Dataflow(String),

    /// Writing results to a local file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

struct Problems<'a>(&'a [String]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl PipelineError {
    /// Wraps an object_store error with the operation and path that failed.
    pub fn store(op: &'static str, path: impl fmt::Display, source: object_store::Error) -> Self {
        Self::Store { op, path: path.to_string(), source }
    }

    /// Wraps a Parquet error with the operation and path that failed.
    pub fn parquet(op: &'static str, path: impl fmt::Display, source: parquet::errors::ParquetError) -> Self {
        Self::Parquet { op, path: path.to_string(), source }
    }

    /// Wraps an Arrow error with what was being done.
    pub fn arrow(context: impl Into<String>, source: arrow::error::ArrowError) -> Self {
        Self::Arrow { context: context.into(), source }
    }

    /// True for errors caused by the user's configuration or arguments (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Config(_) | Self::LakeOpen { .. } | Self::Input { .. })
    }
}
