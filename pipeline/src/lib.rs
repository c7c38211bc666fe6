//! marnflow's data half: the lake on object storage, the raw-log contract, the synthetic
//! e-commerce world, and SQL over every table (DataFusion).
//!
//! The pipeline and the model crate meet only at the batch contract; this crate knows nothing
//! of burn.
//!
//! ```no_run
//! # async fn demo() -> marnflow_pipeline::Result<()> {
//! use marnflow_pipeline::{lake::Lake, query::LakeSession};
//! let lake = Lake::open("./lake")?;
//! let session = LakeSession::open(&lake).await?;
//! let batches = session.sql("SELECT count(*) FROM raw.exposures").await?;
//! # Ok(()) }
//! ```

pub mod catalogue;
pub mod cluster;
pub mod contract;
pub mod error;
pub mod features;
pub mod import;
pub mod intraday;
pub mod lake;
pub mod lake_write;
pub mod query;
pub mod raw_files;
pub mod raw_rows;
pub mod replay;
pub mod sql_functions;
pub mod stream;
pub mod windows;
pub mod world;

pub use error::{PipelineError, Result};
