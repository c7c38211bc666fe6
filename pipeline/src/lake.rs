//! The lake: one root URI on object storage under which every table lives.
//!
//! A local path (the default `./lake`), `file://…`, `s3://bucket/prefix` (AWS or any
//! S3-compatible server, configured by the standard `AWS_*` environment variables) or
//! `memory://` (tests). Tables are Parquet files in Hive partitions (`dt=YYYY-MM-DD`).
//!
//! Writes are published atomically: a file is written under `_staging/` (which no reader lists)
//! and then renamed into place, so a reader never sees a half-written file, even if the writer is
//! killed. Re-publishing a partition replaces that partition's file and nothing else.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::async_writer::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
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
            Ok(url) if url.scheme() == "s3" || url.scheme() == "s3a" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| fail("an s3:// URI needs a bucket: s3://bucket/prefix".into()))?;
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| fail(e.to_string()))?;
                let root = Path::parse(url.path().trim_matches('/')).map_err(|e| fail(e.to_string()))?;
                let base_url = Url::parse(&format!("s3://{bucket}")).map_err(|e| fail(e.to_string()))?;
                Ok(Self { uri: uri.to_string(), store: Arc::new(store), root, base_url })
            }
            // A single letter before ':' is a Windows drive, not a scheme.
            Ok(url) if url.scheme().len() > 1 => Err(fail(format!(
                "unsupported scheme '{}': use a local path, file://, s3:// or memory://",
                url.scheme()
            ))),
            _ => Self::local(uri, std::path::Path::new(uri)),
        }
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
        let host = self.base_url.host_str().unwrap_or("");
        let path = self.path(rel);
        let mut s = format!("{}://{host}/{}", self.base_url.scheme(), path.as_ref());
        if !s.ends_with('/') {
            s.push('/');
        }
        s
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
        let name = format!("{}-{nanos}-{seq}-{}", std::process::id(), hint.replace('/', "_"));
        self.path(STAGING).join(name.as_str())
    }

    /// Moves a finished staged file to `rel`, replacing what was there.
    pub async fn publish(&self, staged: &Path, rel: &str) -> Result<()> {
        let target = self.path(rel);
        self.store.rename(staged, &target).await.map_err(|e| PipelineError::store("publish", &target, e))
    }

    /// Writes `bytes` to `rel` atomically (staged, then published).
    pub async fn put_atomic(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        let staged = self.staging_path(rel);
        self.store
            .put(&staged, PutPayload::from(bytes))
            .await
            .map_err(|e| PipelineError::store("write", &staged, e))?;
        self.publish(&staged, rel).await
    }

    /// Deletes a staged file after a failure; errors are ignored (nothing visible depends on it).
    pub async fn discard(&self, staged: &Path) {
        let _ = self.store.delete(staged).await;
    }

    /// Reads a whole object.
    pub async fn get(&self, rel: &str) -> Result<bytes::Bytes> {
        let p = self.path(rel);
        let got = self.store.get(&p).await.map_err(|e| PipelineError::store("read", &p, e))?;
        got.bytes().await.map_err(|e| PipelineError::store("read", &p, e))
    }

    /// Every object under `rel` (recursively), outside `_staging/`.
    pub async fn list(&self, rel: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = self.path(rel);
        let staging = self.path(STAGING);
        let mut all: Vec<ObjectMeta> =
            self.store.list(Some(&prefix)).try_collect().await.map_err(|e| PipelineError::store("list", &prefix, e))?;
        all.retain(|m| m.location.prefix_match(&staging).is_none());
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(all)
    }
}

/// Writes one Parquet file under `_staging/`, then publishes it to its final place.
pub struct PartitionWriter {
    lake: Lake,
    target: String,
    staged: Path,
    writer: AsyncArrowWriter<BufWriter>,
    rows: u64,
}

impl std::fmt::Debug for PartitionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionWriter").field("target", &self.target).field("rows", &self.rows).finish()
    }
}

/// Writer settings shared by every table marnflow writes: zstd, bounded row groups.
pub fn writer_properties(row_group_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .build()
}

impl PartitionWriter {
    /// Starts a file that will be published at `target` (relative to the lake root).
    pub fn create(lake: &Lake, target: String, schema: SchemaRef, row_group_rows: usize) -> Result<Self> {
        let staged = lake.staging_path(&target);
        let object = BufWriter::new(Arc::clone(lake.store()), staged.clone());
        let writer = AsyncArrowWriter::try_new(object, schema, Some(writer_properties(row_group_rows)))
            .map_err(|e| PipelineError::parquet("open", &target, e))?;
        Ok(Self { lake: lake.clone(), target, staged, writer, rows: 0 })
    }

    /// Appends a batch.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).await.map_err(|e| PipelineError::parquet("write", &self.target, e))
    }

    /// Finishes the file and publishes it; returns the rows written.
    pub async fn finish(self) -> Result<u64> {
        let Self { lake, target, staged, writer, rows } = self;
        if let Err(e) = writer.close().await {
            lake.discard(&staged).await;
            return Err(PipelineError::parquet("close", &target, e));
        }
        lake.publish(&staged, &target).await?;
        Ok(rows)
    }

    /// Gives up on the file: nothing becomes visible.
    pub async fn abort(self) {
        let Self { lake, staged, writer, .. } = self;
        drop(writer);
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

/// The relative path of partition `dt` of `table`, e.g. `raw/exposures/dt=2026-01-01`.
pub fn partition(table: &str, dt: &str) -> String {
    format!("{table}/dt={dt}")
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
}
