//! marnflow's jobs over a lake, as a library: what the `marnflow` binary's commands call.
//!
//! - [`config`]: the layered configuration (defaults, TOML, `MARNFLOW_*`, flags), validated at once;
//! - [`data`]: the lake → batch reader (vocabularies, item store, batch builder, prefetching stream);
//! - [`training`]: the training loop, its run key, checkpoints and resume, and registration;
//! - [`evaluate`]: metrics (AUC, deciles, unseen items, Figures 4 and 5) and the report;
//! - [`serving`]: `export-item-embeddings` and `score`;
//! - [`daily`]: `run --date D`, the day's job end to end;
//! - [`demo`]: the demo on a generated world or MovieLens;
//! - [`plot`]: the report's charts (PNG and SVG).

pub mod config;
pub mod daily;
pub mod data;
pub mod demo;
pub mod evaluate;
pub mod online;
pub mod plot;
#[cfg(feature = "mpi")]
pub mod replicas;
pub mod serving;
pub mod training;
