//! The lake: one root URI on object storage under which every table lives.
//!
//! A local path (the default `./lake`), `file://…`, `s3://bucket/prefix` (AWS or any
//! S3-compatible server) or `memory://` (tests). Tables are Parquet files in Hive partitions
//! (`dt=YYYY-MM-DD`).
//!
//! Writes are published atomically, so a reader never sees a half-written file, even if the
//! writer is killed, and re-publishing a partition replaces that partition's file and nothing
//! else. On a local disk (and in memory) a file is written under `_staging/` (which no reader
//! lists) and then renamed into place. S3 has no rename (object_store would copy and delete, and
//! a single copy stops at 5 GiB), but a PUT, or a completed multipart upload, appears whole or
//! not at all: there a file is written in place, and an unfinished one is never visible.
//!
//! S3 settings come from the standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, … as [`AmazonS3Builder::from_env`] reads them), then from the shared
//! profile files (`AWS_PROFILE`, `~/.aws/credentials`, `~/.aws/config`) for what the variables
//! leave out, then from the platform (web identity, container or instance credentials).
//! Credentials are never part of the lake URI, messages or logs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::async_writer::AsyncArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tracing::debug;
use url::Url;

use crate::error::{PipelineError, Result};

/// Folder under the root that holds files being written; never read as a table.
pub const STAGING: &str = "_staging";

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

/// A handle on the lake root.
#[derive(Clone)]
pub struct Lake {
    uri: String,
    store: Arc<dyn ObjectStore>,
    root: Path,
    base_url: Url,
}

impl fmt::Debug for Lake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lake").field("uri", &self.uri).field("root", &self.root).finish()
    }
}

impl Lake {
    /// Opens the lake at `uri` without touching storage.
    pub fn open(uri: &str) -> Result<Self> {
        Self::open_inner(uri, process_env)
    }

    /// [`Lake::open`] with `env` in place of the process environment (for the `AWS_*` settings).
    pub fn open_with_env(uri: &str, env: &BTreeMap<String, String>) -> Result<Self> {
        Self::open_inner(uri, || env.clone())
    }

    /// Opens `uri`; `env` is read only for an S3 lake.
    fn open_inner(uri: &str, env: impl FnOnce() -> BTreeMap<String, String>) -> Result<Self> {
        let fail = |reason: String| PipelineError::LakeOpen { uri: uri.to_string(), reason };
        if uri.trim().is_empty() {
            return Err(fail("the lake URI is empty".into()));
        }
        match Url::parse(uri) {
            Ok(url) if url.scheme() == "file" => {
                let path =
                    url.to_file_path().map_err(|()| fail("a file:// URI must hold an absolute local path".into()))?;
                Self::local(uri, &path)
            }
            Ok(url) if url.scheme() == "memory" => {
                let root = Path::parse(url.path().trim_matches('/')).map_err(|e| fail(e.to_string()))?;
                let base_url = Url::parse("memory://").map_err(|e| fail(e.to_string()))?;
                Ok(Self { uri: uri.to_string(), store: Arc::new(InMemory::new()), root, base_url })
            }
            Ok(url) if url.scheme() == "s3" || url.scheme() == "s3a" => Self::s3(uri, &url, &env()),
            // A single letter before ':' is a Windows drive, not a scheme.
            Ok(url) if url.scheme().len() > 1 => Err(fail(format!(
                "unsupported scheme '{}': use a local path, file://, s3:// or memory://",
                url.scheme()
            ))),
            _ => Self::local(uri, std::path::Path::new(uri)),
        }
    }

    fn s3(uri: &str, url: &Url, env: &BTreeMap<String, String>) -> Result<Self> {
        if !url.username().is_empty() || url.password().is_some() {
            // Never echo the URI: it holds a secret.
            let mut shown = url.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            return Err(PipelineError::LakeOpen {
                uri: shown.to_string(),
                reason: "credentials do not belong in the lake URI: set AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
                    .into(),
            });
        }
        let fail = |reason: String| PipelineError::LakeOpen { uri: uri.to_string(), reason };
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| fail("an s3:// URI needs a bucket: s3://bucket/prefix".into()))?;
        let store =
            s3_settings(env).map_err(fail)?.with_bucket_name(bucket).build().map_err(|e| fail(e.to_string()))?;
        let root = Path::parse(url.path().trim_matches('/')).map_err(|e| fail(e.to_string()))?;
        let base_url = Url::parse(&format!("s3://{bucket}")).map_err(|e| fail(e.to_string()))?;
        Ok(Self { uri: uri.to_string(), store: Arc::new(store), root, base_url })
    }

    fn local(uri: &str, path: &std::path::Path) -> Result<Self> {
        let fail = |reason: String| PipelineError::LakeOpen { uri: uri.to_string(), reason };
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().map_err(|e| fail(format!("cannot resolve the current directory: {e}")))?.join(path)
        };
        let abs = normalize(&abs);
        if abs.exists() && !abs.is_dir() {
            return Err(fail(format!("{} exists and is not a directory", abs.display())));
        }
        let root = Path::from_absolute_path(&abs).map_err(|e| fail(e.to_string()))?;
        let base_url = Url::parse("file:///").map_err(|e| fail(e.to_string()))?;
        Ok(Self { uri: uri.to_string(), store: Arc::new(LocalFileSystem::new()), root, base_url })
    }

    /// The URI the lake was opened with, for messages.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The object store behind the lake.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// `scheme://authority` of the store, as DataFusion registers object stores.
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// The full store path of `rel` (a `/`-separated path relative to the lake root).
    pub fn path(&self, rel: &str) -> Path {
        let mut p = self.root.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// `rel` with the lake root removed, or `None` when `path` is outside the lake.
    pub fn relative(&self, path: &Path) -> Option<String> {
        let parts: Vec<_> = path.prefix_match(&self.root)?.map(|p| p.as_ref().to_string()).collect();
        Some(parts.join("/"))
    }

    /// The URL of a folder in the lake (ending in `/`), for DataFusion listing tables.
    pub fn folder_url(&self, rel: &str) -> String {
        let mut s = self.file_url(rel);
        if !s.ends_with('/') {
            s.push('/');
        }
        s
    }

    /// The URL of a file in the lake, for reading it alone with DataFusion.
    pub fn file_url(&self, rel: &str) -> String {
        let host = self.base_url.host_str().unwrap_or("");
        format!("{}://{host}/{}", self.base_url.scheme(), self.path(rel).as_ref())
    }

    /// Checks that the lake accepts writes by writing and deleting a probe object.
    pub async fn ensure_writable(&self) -> Result<()> {
        let probe = self.staging_path("write-probe");
        let fail = |e: object_store::Error| PipelineError::LakeOpen {
            uri: self.uri.clone(),
            reason: format!("the lake is not writable: {e}"),
        };
        self.store.put(&probe, PutPayload::from_static(b"probe")).await.map_err(fail)?;
        self.store.delete(&probe).await.map_err(fail)?;
        Ok(())
    }

    /// A fresh path under `_staging/` for a file being written.
    pub fn staging_path(&self, hint: &str) -> Path {
        let seq = STAGING_SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let name = format!("{}.{:08x}-{nanos}-{seq}-{}", std::process::id(), host_id(), hint.replace('/', "_"));
        self.path(STAGING).join(name.as_str())
    }

    /// Whether a file is written at its final place (S3: a PUT or a completed multipart upload
    /// is atomic) rather than staged and renamed.
    fn writes_in_place(&self) -> bool {
        self.base_url.scheme() == "s3"
    }

    /// Where a file bound for `rel` is written: a fresh path under `_staging/`, or `rel` itself
    /// on a store whose writes are atomic (S3).
    pub fn write_path(&self, rel: &str) -> Path {
        if self.writes_in_place() {
            self.path(rel)
        } else {
            self.staging_path(rel)
        }
    }

    /// Moves a finished file from its [`Lake::write_path`] to `rel`, replacing what was there
    /// (nothing to do where files are written in place).
    pub async fn publish(&self, written: &Path, rel: &str) -> Result<()> {
        if self.writes_in_place() {
            return Ok(());
        }
        let target = self.path(rel);
        self.store.rename(written, &target).await.map_err(|e| PipelineError::store("publish", &target, e))
    }

    /// Writes `bytes` to `rel` atomically (staged, then published; in place on S3).
    pub async fn put_atomic(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        let written = self.write_path(rel);
        self.store
            .put(&written, PutPayload::from(bytes))
            .await
            .map_err(|e| PipelineError::store("write", &written, e))?;
        self.publish(&written, rel).await
    }

    /// Removes the files under `_staging/` that a process stopped before it published them (a
    /// `kill -9` mid-write): those at least `min_age` old written on this host (their name starts
    /// with the writer's pid and [`host_id`]) by a process that no longer runs. Returns how many
    /// were removed. A file of another host (a shared volume, another container) or of an
    /// earlier build's naming is never touched; nor is anything on S3 (written in place, nothing
    /// is staged) or in memory.
    pub async fn remove_stale_staging(&self, min_age: std::time::Duration) -> Result<u64> {
        if self.base_url.scheme() != "file" {
            return Ok(0);
        }
        let now = chrono::Utc::now();
        let min_age = chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::MAX);
        let staged: Vec<ObjectMeta> = self
            .store
            .list(Some(&self.path(STAGING)))
            .try_collect()
            .await
            .map_err(|e| PipelineError::store("list", self.path(STAGING), e))?;
        let mut removed = 0;
        for meta in staged {
            let name = meta.location.filename().unwrap_or_default();
            let writer = name.split('-').next().and_then(|w| w.split_once('.'));
            let Some((pid, host)) =
                writer.and_then(|(p, h)| Some((p.parse::<u32>().ok()?, u32::from_str_radix(h, 16).ok()?)))
            else {
                continue;
            };
            if host == 0 || host != host_id() {
                continue;
            }
            let alive = pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !alive && now - meta.last_modified >= min_age {
                self.store
                    .delete(&meta.location)
                    .await
                    .map_err(|e| PipelineError::store("delete", &meta.location, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes a staged file after a failure; errors are ignored (nothing visible depends on it).
    /// A file written in place is left alone: what is there is the last published version.
    pub async fn discard(&self, staged: &Path) {
        if !self.writes_in_place() {
            let _ = self.store.delete(staged).await;
        }
    }

    /// Reads a whole object.
    pub async fn get(&self, rel: &str) -> Result<bytes::Bytes> {
        let p = self.path(rel);
        let got = self.store.get(&p).await.map_err(|e| PipelineError::store("read", &p, e))?;
        got.bytes().await.map_err(|e| PipelineError::store("read", &p, e))
    }

    /// Reads a whole object, `None` when it does not exist (any other failure is an error).
    pub async fn get_opt(&self, rel: &str) -> Result<Option<bytes::Bytes>> {
        match self.get(rel).await {
            Ok(b) => Ok(Some(b)),
            Err(PipelineError::Store { source: object_store::Error::NotFound { .. }, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes every object under `rel` (recursively), outside `_staging/`.
    pub async fn remove_all(&self, rel: &str) -> Result<()> {
        for meta in self.list(rel).await? {
            self.store.delete(&meta.location).await.map_err(|e| PipelineError::store("delete", &meta.location, e))?;
        }
        Ok(())
    }

    /// Every object under `rel` (recursively), outside `_staging/`.
    pub async fn list(&self, rel: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = self.path(rel);
        self.listed(&prefix, self.store.list(Some(&prefix))).await
    }

    /// [`Lake::list`] of the objects whose path comes after `after` (lake-relative, exclusive):
    /// `list_after("raw/clicks", "raw/clicks/dt=2026-01-05")` skips the partitions before that
    /// day, and an S3 store does not list them at all.
    pub async fn list_after(&self, rel: &str, after: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = self.path(rel);
        self.listed(&prefix, self.store.list_with_offset(Some(&prefix), &self.path(after))).await
    }

    /// A listing's objects outside `_staging/`, by path.
    async fn listed(
        &self,
        prefix: &Path,
        stream: futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> Result<Vec<ObjectMeta>> {
        let staging = self.path(STAGING);
        let mut all: Vec<ObjectMeta> =
            stream.try_collect().await.map_err(|e| PipelineError::store("list", prefix, e))?;
        all.retain(|m| m.location.prefix_match(&staging).is_none());
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(all)
    }
}

/// Writes one Parquet file under `_staging/`, then publishes it to its final place (or writes
/// it in place where the store's writes are atomic: see the module docs).
pub struct PartitionWriter {
    lake: Lake,
    target: String,
    staged: Path,
    writer: AsyncArrowWriter<BufWriter>,
    rows: u64,
    /// Rows not yet handed to the Parquet writer (fewer than [`WRITE_CHUNK_ROWS`]).
    pending: Vec<RecordBatch>,
    pending_rows: usize,
}

/// Rows per call into the Parquet writer. Its pages are cut at the boundaries of what it is given,
/// so rows reach it in chunks of this fixed size, whatever batches the query produced: the same
/// rows make the same bytes, on one process or a cluster (a multiple of the writer's 1024-row
/// mini-batches).
const WRITE_CHUNK_ROWS: usize = 8192;

impl std::fmt::Debug for PartitionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionWriter").field("target", &self.target).field("rows", &self.rows).finish()
    }
}

/// Writer settings shared by every table marnflow writes: zstd, bounded row groups, and
/// - no statistics for the elements of list columns (`schema`'s): no reader prunes on them
///   (DataFusion prunes on a column's own min/max, not on a list's elements), and they cost a
///   comparison per element: 50 M a day for the samples' history ids on the 10× lake (day 14
///   written in 6.4–6.8 s without them, 6.8–7.5 s with them);
/// - timestamps delta-encoded (`DELTA_BINARY_PACKED`) instead of through a dictionary: every table
///   keeps its times sorted or sorted within a user, so the differences are small. The user state
///   of day 14 on the 10× lake (7.7 M behaviors): 63.3 → 46.6 MB, written in 0.9–1.1 s instead of
///   1.3–1.4 s; the labels and samples within 2%.
pub fn writer_properties(schema: &Schema, row_group_rows: usize) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)));
    for field in schema.fields() {
        if let DataType::Timestamp(..) = field.data_type() {
            let path = ColumnPath::new(vec![field.name().clone()]);
            builder = builder
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
        if let DataType::List(element) = field.data_type() {
            let path = ColumnPath::new(vec![field.name().clone(), "list".into(), element.name().clone()]);
            builder = builder.set_column_statistics_enabled(path, EnabledStatistics::None);
        }
    }
    builder.build()
}

impl PartitionWriter {
    /// Starts a file that will be published at `target` (relative to the lake root).
    pub fn create(lake: &Lake, target: String, schema: SchemaRef, row_group_rows: usize) -> Result<Self> {
        let staged = lake.write_path(&target);
        let object = BufWriter::new(Arc::clone(lake.store()), staged.clone());
        let writer =
            AsyncArrowWriter::try_new(object, Arc::clone(&schema), Some(writer_properties(&schema, row_group_rows)))
                .map_err(|e| PipelineError::parquet("open", &target, e))?;
        Ok(Self { lake: lake.clone(), target, staged, writer, rows: 0, pending: Vec::new(), pending_rows: 0 })
    }

    /// Appends a batch.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (WRITE_CHUNK_ROWS - self.pending_rows).min(batch.num_rows() - offset);
            self.pending.push(batch.slice(offset, take));
            self.pending_rows += take;
            offset += take;
            if self.pending_rows == WRITE_CHUNK_ROWS {
                self.flush_pending().await?;
            }
        }
        Ok(())
    }

    /// Hands the pending rows to the Parquet writer as one batch.
    async fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = arrow::compute::concat_batches(&self.pending[0].schema(), &self.pending)
            .map_err(|e| PipelineError::arrow("write chunk", e))?;
        self.pending.clear();
        self.pending_rows = 0;
        self.writer.write(&chunk).await.map_err(|e| PipelineError::parquet("write", &self.target, e))
    }

    /// Finishes the file and publishes it; returns the rows written.
    pub async fn finish(mut self) -> Result<u64> {
        if let Err(e) = self.flush_pending().await {
            self.abort().await;
            return Err(e);
        }
        let Self { lake, target, staged, writer, rows, .. } = self;
        if let Err(e) = writer.close().await {
            lake.discard(&staged).await;
            return Err(PipelineError::parquet("close", &target, e));
        }
        lake.publish(&staged, &target).await?;
        Ok(rows)
    }

    /// Gives up on the file: nothing becomes visible, and an unfinished multipart upload is
    /// aborted rather than left behind.
    pub async fn abort(self) {
        let Self { lake, staged, writer, .. } = self;
        let _ = writer.into_inner().abort().await;
        lake.discard(&staged).await;
    }
}

/// The one data file of a table folder or partition: `<folder>/part-00000.parquet`.
pub fn data_file(folder: &str) -> String {
    format!("{folder}/part-00000.parquet")
}

/// Writes `batches` as one Parquet file published atomically at `target`; returns the rows.
pub async fn write_parquet(
    lake: &Lake,
    target: String,
    schema: SchemaRef,
    batches: &[RecordBatch],
    row_group_rows: usize,
) -> Result<u64> {
    let mut w = PartitionWriter::create(lake, target, schema, row_group_rows)?;
    for b in batches {
        if let Err(e) = w.write(b).await {
            w.abort().await;
            return Err(e);
        }
    }
    w.finish().await
}

/// Removes `.` and `..` components without touching the file system.
fn normalize(p: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The process environment, without the variables that are not valid Unicode (they cannot be
/// `AWS_*` settings, and must not stop marnflow).
fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
}

/// This host's id in staged files' names: a hash of its name (0 when it has none), so that a
/// process only ever judges its own host's writers ([`Lake::remove_stale_staging`]).
pub fn host_id() -> u32 {
    static ID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|n| n.trim().to_string())
            .unwrap_or_default();
        if name.is_empty() {
            return 0;
        }
        // FNV-1a: stable across builds and runs (std's hasher is not).
        let h = name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
        h.max(1)
    })
}

/// The relative path of partition `dt` of `table`, e.g. `raw/exposures/dt=2026-01-01`.
pub fn partition(table: &str, dt: &str) -> String {
    format!("{table}/dt={dt}")
}

/// The day of the `dt=YYYY-MM-DD` partition a relative path lies in, if any.
pub fn partition_day(rel: &str) -> Option<chrono::NaiveDate> {
    let dt = rel.split('/').find_map(|s| s.strip_prefix("dt="))?;
    chrono::NaiveDate::parse_from_str(dt, "%Y-%m-%d").ok()
}

/// The S3 store's settings: every `AWS_*` variable of `env` that object_store knows (as
/// [`AmazonS3Builder::from_env`] reads them), then the selected profile of the shared files for
/// the credentials, region and endpoint the variables leave out.
fn s3_settings(env: &BTreeMap<String, String>) -> std::result::Result<AmazonS3Builder, String> {
    let mut builder = AmazonS3Builder::new();
    for (key, value) in env {
        if key.starts_with("AWS_") {
            if let Ok(config_key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(config_key, value);
            }
        }
    }
    for (key, value) in aws_profile::settings(env)? {
        builder = builder.with_config(key, value);
    }
    Ok(builder)
}

/// The shared AWS profile files (`~/.aws/credentials`, `~/.aws/config`), as the AWS CLI reads
/// them, for the settings object_store does not read itself: static keys (with a session
/// token), `region` and `endpoint_url`. The standard variables win over the files.
mod aws_profile {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use object_store::aws::AmazonS3ConfigKey;

    use super::debug;

    /// `[section]` → key → value of an INI file; indented sub-settings (`s3 =` then
    /// `  addressing_style = path`) are skipped.
    pub(super) fn parse(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut section: Option<String> = None;
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                let name = name.trim().to_string();
                out.entry(name.clone()).or_default();
                section = Some(name);
                continue;
            }
            if line.starts_with(char::is_whitespace) {
                continue;
            }
            if let (Some(name), Some((key, value))) = (&section, trimmed.split_once('=')) {
                out.entry(name.clone()).or_default().insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        out
    }

    fn read(path: &PathBuf) -> Result<String, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(format!("cannot read the AWS profile file {}: {e}", path.display())),
        }
    }

    /// The settings the selected profile adds to `env`.
    pub(super) fn settings(env: &BTreeMap<String, String>) -> Result<Vec<(AmazonS3ConfigKey, String)>, String> {
        let var = |k: &str| env.get(k).filter(|v| !v.is_empty());
        let explicit = var("AWS_PROFILE").or_else(|| var("AWS_DEFAULT_PROFILE"));
        let name = explicit.map_or("default", String::as_str);
        let home = var("HOME").map(PathBuf::from);
        let file = |var_name: &str, default: &str| {
            var(var_name).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(default)))
        };
        let credentials_file = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
        let config_file = file("AWS_CONFIG_FILE", ".aws/config");
        let mut credentials = credentials_file.as_ref().map(read).transpose()?.map(|t| parse(&t)).unwrap_or_default();
        let mut config = config_file.as_ref().map(read).transpose()?.map(|t| parse(&t)).unwrap_or_default();
        let from_config = config
            .remove(&format!("profile {name}"))
            .or_else(|| (name == "default").then(|| config.remove("default")).flatten());
        let from_credentials = credentials.remove(name);
        if from_config.is_none() && from_credentials.is_none() {
            if explicit.is_some() {
                let shown = |p: &Option<PathBuf>| p.as_ref().map_or("-".to_string(), |p| p.display().to_string());
                return Err(format!(
                    "AWS profile '{name}' is in neither {} nor {}",
                    shown(&credentials_file),
                    shown(&config_file)
                ));
            }
            return Ok(Vec::new());
        }
        // The credentials file wins over the config file, as in the AWS CLI.
        let mut profile = from_config.unwrap_or_default();
        profile.extend(from_credentials.unwrap_or_default());
        let mut out = Vec::new();
        if var("AWS_ACCESS_KEY_ID").is_none() {
            match (profile.get("aws_access_key_id"), profile.get("aws_secret_access_key")) {
                (Some(id), Some(secret)) => {
                    out.push((AmazonS3ConfigKey::AccessKeyId, id.clone()));
                    out.push((AmazonS3ConfigKey::SecretAccessKey, secret.clone()));
                    if let Some(token) = profile.get("aws_session_token") {
                        out.push((AmazonS3ConfigKey::Token, token.clone()));
                    }
                    debug!(profile = name, "S3 credentials from the AWS profile");
                }
                _ if explicit.is_some() => {
                    let other = ["credential_process", "sso_session", "sso_start_url", "role_arn"]
                        .into_iter()
                        .find(|k| profile.contains_key(*k));
                    return Err(match other {
                        Some(k) => format!(
                            "AWS profile '{name}' gets its credentials through {k}, which marnflow does not run: \
                             export them first (`eval \"$(aws configure export-credentials --profile {name} --format env)\"`)"
                        ),
                        None => format!("AWS profile '{name}' has no aws_access_key_id and aws_secret_access_key"),
                    });
                }
                _ => {}
            }
        }
        if var("AWS_REGION").is_none() && var("AWS_DEFAULT_REGION").is_none() {
            if let Some(region) = profile.get("region") {
                out.push((AmazonS3ConfigKey::Region, region.clone()));
            }
        }
        if ["AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3"].iter().all(|k| var(k).is_none()) {
            if let Some(endpoint) = profile.get("endpoint_url") {
                out.push((AmazonS3ConfigKey::Endpoint, endpoint.clone()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_lake_round_trip_and_staging_is_hidden() {
        let lake = Lake::open("memory:///root").unwrap();
        lake.put_atomic("raw/a/dt=2026-01-01/part-0.parquet", b"x".to_vec()).await.unwrap();
        let staged = lake.staging_path("left-behind");
        lake.store().put(&staged, PutPayload::from_static(b"y")).await.unwrap();
        let listed = lake.list("").await.unwrap();
        let rels: Vec<_> = listed.iter().filter_map(|m| lake.relative(&m.location)).collect();
        assert_eq!(rels, vec!["raw/a/dt=2026-01-01/part-0.parquet".to_string()]);
        assert_eq!(&lake.get("raw/a/dt=2026-01-01/part-0.parquet").await.unwrap()[..], b"x");
    }

    #[tokio::test]
    async fn staged_files_of_a_stopped_writer_are_removed_and_a_live_writers_kept() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        // Above the largest pid Linux hands out: a writer that is gone.
        let gone =
            lake.path(STAGING).join(format!("4194305.{:08x}-1-0-features_samples_part-00000.parquet", host_id()));
        // The same name from another host, and a name of an earlier build: never touched.
        let other = lake.path(STAGING).join(format!("4194305.{:08x}-1-0-x.parquet", host_id() ^ 1));
        let old = lake.path(STAGING).join("4194305-1-0-x.parquet");
        for p in [&other, &old] {
            lake.store().put(p, PutPayload::from_static(b"half")).await.unwrap();
        }
        lake.store().put(&gone, PutPayload::from_static(b"half")).await.unwrap();
        let mine = lake.staging_path("features/x");
        lake.store().put(&mine, PutPayload::from_static(b"writing")).await.unwrap();
        // Too young: kept, whoever wrote it.
        assert_eq!(lake.remove_stale_staging(std::time::Duration::from_secs(3600)).await.unwrap(), 0);
        assert_eq!(lake.remove_stale_staging(std::time::Duration::ZERO).await.unwrap(), 1);
        assert!(lake.store().head(&gone).await.is_err());
        assert!(lake.store().head(&mine).await.is_ok(), "a live writer's file stays");
        assert!(lake.store().head(&other).await.is_ok() && lake.store().head(&old).await.is_ok());
        let memory = Lake::open("memory:///root").unwrap();
        assert_eq!(memory.remove_stale_staging(std::time::Duration::ZERO).await.unwrap(), 0);
    }

    #[test]
    fn local_paths_resolve_and_bad_uris_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        assert!(lake.folder_url("raw/exposures").starts_with("file:///"));
        assert!(lake.folder_url("raw/exposures").ends_with("/raw/exposures/"));
        let err = Lake::open("ftp://host/x").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme 'ftp'"), "{err}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let err = Lake::open(file.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        assert!(Lake::open("s3://").is_err());
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn s3_lakes_write_in_place_and_never_show_credentials() {
        let secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
        let vars = env(&[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ALLOW_HTTP", "true"),
            ("HOME", "/nonexistent"),
        ]);
        let lake = Lake::open_with_env("s3://bucket/some/prefix", &vars).unwrap();
        assert_eq!(lake.folder_url("raw/items"), "s3://bucket/some/prefix/raw/items/");
        assert_eq!(lake.write_path("raw/items/part-00000.parquet"), lake.path("raw/items/part-00000.parquet"));
        for shown in [format!("{lake:?}"), format!("{:?}", lake.store()), lake.store().to_string()] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let err = Lake::open_with_env(&format!("s3://AKIDEXAMPLE:{secret}@bucket/p"), &vars).unwrap_err().to_string();
        assert!(err.contains("credentials do not belong in the lake URI") && !err.contains(secret), "{err}");
        // Local lakes stage and rename.
        let dir = tempfile::tempdir().unwrap();
        let local = Lake::open(dir.path().to_str().unwrap()).unwrap();
        assert!(local.write_path("raw/items/x.parquet").prefix_match(&local.path(STAGING)).is_some());
    }

    #[test]
    fn aws_profiles_fill_in_what_the_variables_leave_out() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &credentials,
            "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = secret-default\n\n\
             # a comment\n[dev]\naws_access_key_id=AKIDDEV\naws_secret_access_key=secret-dev\naws_session_token = tok\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = eu-west-1\n[profile dev]\nregion = eu-central-1\nendpoint_url = http://127.0.0.1:9000\n\
             s3 =\n  addressing_style = path\n[profile sso]\nsso_session = corp\n",
        )
        .unwrap();
        let files = [
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut e = env(&files);
            e.extend(env(extra));
            aws_profile::settings(&e)
        };
        let got = |s: &[(AmazonS3ConfigKey, String)], k: AmazonS3ConfigKey| {
            s.iter().find(|(key, _)| *key == k).map(|(_, v)| v.clone())
        };
        let default = with(&[]).unwrap();
        assert_eq!(got(&default, AmazonS3ConfigKey::AccessKeyId).as_deref(), Some("AKIDDEFAULT"));
        assert_eq!(got(&default, AmazonS3ConfigKey::Region).as_deref(), Some("eu-west-1"));
        let dev = with(&[("AWS_PROFILE", "dev")]).unwrap();
        assert_eq!(got(&dev, AmazonS3ConfigKey::SecretAccessKey).as_deref(), Some("secret-dev"));
        assert_eq!(got(&dev, AmazonS3ConfigKey::Token).as_deref(), Some("tok"));
        assert_eq!(got(&dev, AmazonS3ConfigKey::Endpoint).as_deref(), Some("http://127.0.0.1:9000"));
        // The standard variables win.
        let vars =
            with(&[("AWS_PROFILE", "dev"), ("AWS_ACCESS_KEY_ID", "AKIDENV"), ("AWS_REGION", "us-west-2")]).unwrap();
        assert_eq!(got(&vars, AmazonS3ConfigKey::AccessKeyId), None);
        assert_eq!(got(&vars, AmazonS3ConfigKey::Region), None);
        assert_eq!(got(&vars, AmazonS3ConfigKey::Endpoint).as_deref(), Some("http://127.0.0.1:9000"));
        let err = with(&[("AWS_PROFILE", "nope")]).unwrap_err();
        assert!(err.contains("AWS profile 'nope' is in neither"), "{err}");
        let err = with(&[("AWS_PROFILE", "sso")]).unwrap_err();
        assert!(err.contains("sso_session") && err.contains("export-credentials"), "{err}");
        // No files, no profile: nothing added.
        assert!(aws_profile::settings(&env(&[("HOME", "/nonexistent")])).unwrap().is_empty());
    }
}
