//! SQL over every table of the lake, run by DataFusion.
//!
//! Each folder that holds Parquet, CSV or newline-delimited JSON files becomes a table named
//! after its path: `raw/exposures` is `raw.exposures`, `features/item_stats` is
//! `features.item_stats`. Hive partition folders (`dt=2026-01-01`) become string columns (`dt`),
//! so `WHERE dt = '2026-01-01'` reads one partition. Files under `_staging/` are never listed.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::{SessionConfig, SessionContext};
use tracing::{debug, warn};

use crate::error::{PipelineError, Result};
use crate::lake::{Lake, STAGING};

/// A table found in the lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// SQL schema (the first path segment: `raw`, `truth`, `features`, …).
    pub schema: String,
    /// SQL table name (the rest of the path, `/` replaced by `_`).
    pub name: String,
    /// Folder relative to the lake root.
    pub rel: String,
    /// File kind: `parquet`, `csv` or `json`.
    pub format: String,
    /// Whether the format was given rather than read from file extensions (then every file
    /// of the folder is read).
    pub forced: bool,
    /// Hive partition columns, in path order.
    pub partition_cols: Vec<String>,
    /// Number of data files.
    pub files: usize,
}

impl TableInfo {
    /// `schema.name`, as written in SQL.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// The format a data file's extension names (`parquet`, `csv` or `json`), if any.
pub(crate) fn format_of(file: &str) -> Option<&'static str> {
    let ext = file.rsplit('.').next()?;
    match ext {
        "parquet" => Some("parquet"),
        "csv" => Some("csv"),
        "json" | "ndjson" | "jsonl" => Some("json"),
        _ => None,
    }
}

/// Top-level folders that hold documents, not tables: the model registry (`models/`) and the
/// daily job's plans (`runs/`). `marnflow models` reads them.
pub const NOT_TABLES: [&str; 2] = ["models", "runs"];

/// Finds every table under the lake: folders at least two levels deep holding data files.
pub async fn discover_tables(lake: &Lake) -> Result<Vec<TableInfo>> {
    discover_tables_with(lake, None).await
}

/// [`discover_tables`], reading every file of the raw log tables (`raw/exposures`, `raw/clicks`,
/// `raw/behaviors`) as `raw_format` (`parquet`, `csv` or `json`) whatever its extension, when given.
pub async fn discover_tables_with(lake: &Lake, raw_format: Option<&str>) -> Result<Vec<TableInfo>> {
    let mut found: BTreeMap<String, TableInfo> = BTreeMap::new();
    for meta in lake.list("").await? {
        let Some(rel) = lake.relative(&meta.location) else { continue };
        let segments: Vec<&str> = rel.split('/').collect();
        if segments.iter().any(|s| s.starts_with('_') || s.starts_with('.'))
            || segments[0] == STAGING
            || NOT_TABLES.contains(&segments[0])
        {
            continue;
        }
        let Some((file, dirs)) = segments.split_last() else { continue };
        let is_log =
            dirs.first() == Some(&"raw") && matches!(dirs.get(1), Some(&("exposures" | "clicks" | "behaviors")));
        let forced = raw_format.filter(|_| is_log);
        let Some(format) = forced.or_else(|| format_of(file)) else { continue };
        let table_len = dirs.iter().position(|s| s.contains('=')).unwrap_or(dirs.len());
        if table_len < 2 {
            continue;
        }
        let partition_cols: Vec<String> =
            dirs[table_len..].iter().filter_map(|s| s.split_once('=').map(|(k, _)| k.to_string())).collect();
        let table_rel = dirs[..table_len].join("/");
        let entry = found.entry(table_rel.clone()).or_insert_with(|| TableInfo {
            schema: sql_ident(dirs[0]),
            name: sql_ident(&dirs[1..table_len].join("_")),
            rel: table_rel,
            format: format.to_string(),
            forced: forced.is_some(),
            partition_cols,
            files: 0,
        });
        if entry.format == format {
            entry.files += 1;
        }
    }
    Ok(found.into_values().collect())
}

fn sql_ident(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// A DataFusion session with every lake table registered.
pub struct LakeSession {
    ctx: SessionContext,
    tables: Vec<TableInfo>,
}

impl std::fmt::Debug for LakeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeSession").field("tables", &self.tables).finish()
    }
}

/// The session every marnflow SQL runs in: one place for its settings.
/// Registers the Parquet file or folder at `url` as table `name` of `ctx`, replacing what was
/// registered under that name.
pub async fn replace_parquet(
    ctx: &SessionContext,
    name: &str,
    url: String,
    options: datafusion::prelude::ParquetReadOptions<'_>,
) -> Result<()> {
    let _ = ctx.deregister_table(name)?;
    ctx.register_parquet(name, url, options).await?;
    Ok(())
}

pub fn new_context(lake: &Lake) -> SessionContext {
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()));
    // Keep strings as Utf8, the type of the data contract, rather than Utf8View.
    config.options_mut().execution.parquet.schema_force_view_types = false;
    config.options_mut().sql_parser.map_string_types_to_utf8view = false;
    let ctx = SessionContext::new_with_config(config);
    ctx.register_object_store(lake.base_url(), Arc::clone(lake.store()));
    crate::sql_functions::register(&ctx);
    ctx
}

impl LakeSession {
    /// Opens a session over the lake and registers every table found.
    pub async fn open(lake: &Lake) -> Result<Self> {
        Self::open_with(lake, None).await
    }

    /// [`LakeSession::open`], reading raw tables as `raw_format` whatever their file extensions.
    pub async fn open_with(lake: &Lake, raw_format: Option<&str>) -> Result<Self> {
        Self::open_tables(new_context(lake), lake, raw_format, true).await
    }

    /// [`LakeSession::open_with`] without registering the raw log tables (`raw.exposures`,
    /// `raw.clicks`, `raw.behaviors`) and the catalogue (`raw.items`), which are still listed in
    /// [`LakeSession::tables`]: the feature job reads one day of the logs, and the catalogue, file
    /// by file ([`crate::raw_files`], [`crate::catalogue`]), so inferring their schema from every
    /// file would be work thrown away (and one bad file would fail it).
    pub async fn open_without_raw_logs(lake: &Lake, raw_format: Option<&str>) -> Result<Self> {
        Self::open_tables(new_context(lake), lake, raw_format, false).await
    }

    /// [`LakeSession::open_without_raw_logs`] in a session of the caller's (for example one on a
    /// Ballista cluster: [`crate::cluster::context`]).
    pub async fn open_without_raw_logs_in(ctx: SessionContext, lake: &Lake, raw_format: Option<&str>) -> Result<Self> {
        Self::open_tables(ctx, lake, raw_format, false).await
    }

    async fn open_tables(ctx: SessionContext, lake: &Lake, raw_format: Option<&str>, raw_logs: bool) -> Result<Self> {
        let tables = discover_tables_with(lake, raw_format).await?;
        let catalog = ctx.catalog("datafusion").ok_or_else(|| {
            PipelineError::Sql(datafusion::error::DataFusionError::Internal("default catalog missing".into()))
        })?;
        let state = ctx.state();
        let logs =
            [crate::contract::EXPOSURES, crate::contract::CLICKS, crate::contract::BEHAVIORS, crate::contract::ITEMS];
        for t in &tables {
            let schema = match catalog.schema(&t.schema) {
                Some(s) => s,
                None => {
                    let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                    catalog.register_schema(&t.schema, Arc::clone(&s))?;
                    s
                }
            };
            if !raw_logs && logs.contains(&t.rel.as_str()) {
                continue;
            }
            let url = ListingTableUrl::parse(lake.folder_url(&t.rel))?;
            let (format, ext): (Arc<dyn FileFormat>, &str) = match t.format.as_str() {
                // Every CSV column is read as text: typing is the clean jobs' work (`try_cast`), so one
                // file with a bad value does not change the table's types.
                "csv" => (Arc::new(CsvFormat::default().with_has_header(true).with_schema_infer_max_rec(0)), ".csv"),
                "json" => (Arc::new(JsonFormat::default()), ""),
                _ => {
                    (Arc::new(ParquetFormat::default().with_options(state.table_options().parquet.clone())), ".parquet")
                }
            };
            let options = ListingOptions::new(format)
                .with_file_extension(if t.forced { "" } else { ext })
                .with_table_partition_cols(
                    t.partition_cols.iter().map(|c| (c.clone(), arrow::datatypes::DataType::Utf8)).collect(),
                );
            // One unreadable file must not make the whole lake unqueryable: the table is left out
            // with a warning (the feature job reads raw log files one by one and names the file).
            let file_schema = match options.infer_schema(&state, &url).await {
                Ok(schema) => schema,
                Err(e) => {
                    warn!(table = %t.qualified(), error = %e, "table not registered: a file of it cannot be read");
                    continue;
                }
            };
            let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(file_schema);
            let table = ListingTable::try_new(config)?;
            schema.register_table(t.name.clone(), Arc::new(table))?;
            debug!(table = %t.qualified(), files = t.files, "registered");
        }
        Ok(Self { ctx, tables })
    }

    /// The DataFusion context (for registering more tables or functions).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The tables that were registered.
    pub fn tables(&self) -> &[TableInfo] {
        &self.tables
    }

    /// Runs one SQL statement and collects its result.
    pub async fn sql(&self, query: &str) -> Result<Vec<RecordBatch>> {
        let df = self.ctx.sql(query).await?;
        Ok(df.collect().await?)
    }
}

/// How `marnflow sql` prints a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
    Parquet,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            "parquet" => Ok(Self::Parquet),
            other => Err(format!("unknown format '{other}': use table, csv, json or parquet")),
        }
    }
}

/// Writes `batches` in `format` to `out` (`path` names it in errors).
pub fn write_batches(batches: &[RecordBatch], format: OutputFormat, out: &mut dyn Write, path: &str) -> Result<()> {
    let io = |source: std::io::Error| PipelineError::Io { path: path.to_string(), source };
    let arrow_err = |e: arrow::error::ArrowError| PipelineError::arrow(format!("writing {path}"), e);
    match format {
        OutputFormat::Table => {
            let shown = arrow::util::pretty::pretty_format_batches(batches).map_err(arrow_err)?;
            writeln!(out, "{shown}").map_err(io)?;
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            writeln!(out, "{rows} row{}", if rows == 1 { "" } else { "s" }).map_err(io)?;
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut *out);
            for b in batches {
                w.write(b).map_err(arrow_err)?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut *out);
            for b in batches {
                w.write(b).map_err(arrow_err)?;
            }
            w.finish().map_err(arrow_err)?;
        }
        OutputFormat::Parquet => {
            let schema = match batches.first() {
                Some(b) => b.schema(),
                None => Arc::new(arrow::datatypes::Schema::empty()),
            };
            // ArrowWriter needs a Send sink; stdout's lock is not one, so encode into memory.
            let mut buf = Vec::new();
            let mut w = parquet::arrow::ArrowWriter::try_new(
                &mut buf,
                Arc::clone(&schema),
                Some(crate::lake::writer_properties(&schema, 1 << 20)),
            )
            .map_err(|e| PipelineError::parquet("open", path, e))?;
            for b in batches {
                w.write(b).map_err(|e| PipelineError::parquet("write", path, e))?;
            }
            w.close().map_err(|e| PipelineError::parquet("close", path, e))?;
            out.write_all(&buf).map_err(io)?;
        }
    }
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{generate, WorldConfig};

    fn tiny() -> WorldConfig {
        WorldConfig {
            users: 40,
            items: 120,
            days: 3,
            image_dim: 8,
            exposures_per_day: 400,
            categories: 4,
            shops: 10,
            brands: 12,
            vocab_size: 200,
            word_dim: 6,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn every_table_is_registered_with_its_partitions() {
        let lake = Lake::open("memory:///t").unwrap();
        let summary = generate(&lake, &tiny(), &mut |_| {}).await.unwrap();
        let session = LakeSession::open(&lake).await.unwrap();
        let names: Vec<_> = session.tables().iter().map(TableInfo::qualified).collect();
        assert_eq!(
            names,
            [
                "raw.behaviors",
                "raw.clicks",
                "raw.exposures",
                "raw.items",
                "raw.word_vectors",
                "truth.categories",
                "truth.exposures",
                "truth.items"
            ]
        );
        let b = session.sql("SELECT dt, count(*) AS n FROM raw.exposures GROUP BY dt ORDER BY dt").await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&b).unwrap().to_string();
        assert!(text.contains("2026-01-01") && text.contains("2026-01-03"), "{text}");
        let total = session.sql("SELECT count(*) FROM raw.exposures").await.unwrap();
        let n = total[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
        assert_eq!(n as u64, summary.exposures);
        let err = session.sql("SELECT nope FROM raw.exposures").await.unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn output_formats_render() {
        let batch = RecordBatch::try_from_iter([(
            "x",
            Arc::new(arrow::array::Int32Array::from(vec![1, 2])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        let mut out = Vec::new();
        write_batches(std::slice::from_ref(&batch), OutputFormat::Csv, &mut out, "-").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "x\n1\n2\n");
        let mut out = Vec::new();
        write_batches(&[batch], OutputFormat::Json, &mut out, "-").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"x\":1}\n{\"x\":2}\n");
    }
}
