//! The model registry on object storage: immutable, checksummed versions and aliases whose every
//! change is kept.
//!
//! ```text
//! models/<name>/versions/v<N>/<file>…            the version's files (weights, config, dictionaries)
//! models/<name>/versions/v<N>/manifest.json      written last: version, parent, created, metadata,
//!                                                and the sha256 of every file
//! models/<name>/aliases/<alias>/<seq>.json       one event per change: version, previous, reason
//! ```
//!
//! Every object is written with a conditional create (`PutMode::Create`: `If-None-Match` on S3,
//! a hard link on local disks), so versions are immutable, and two writers racing for the same
//! version number or the same alias change cannot both win: the loser gets a clear error, and the
//! alias history shows exactly what happened. The current value of an alias is its latest event;
//! rolling back appends an event that returns to the previous version. Loading a version checks
//! every file against the manifest and refuses a mismatch.
//!
//! Names of models, aliases and files are validated: nothing escapes `models/`. A writer that
//! crashes mid-version leaves files without a manifest: that number is skipped, never adopted.
//!
//! A version's metadata is typed ([`VersionMetadata`]) and carries its format: manifests of
//! earlier builds (format 0, untyped) hold the same keys and stay readable. The trainer's
//! settings are kept as written (JSON): renaming a config key never makes an old version
//! unreadable. Evaluations of a version live beside it, `models/<name>/evaluations/v<N>/`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Everything the registry refuses or fails to do, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model, alias or file name that could escape the registry or is not allowed.
    #[error("invalid {kind} name {name:?}: use 1 to 64 of letters, digits, '_', '-', '.', not starting with '.'")]
    Name {
        /// `model`, `alias` or `file`.
        kind: String,
        /// The name given.
        name: String,
    },
    /// Reading, writing or listing the object store failed.
    #[error("registry: {op} {path}: {source}")]
    Store {
        /// `read`, `write` or `list`.
        op: &'static str,
        /// The object or prefix.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// An object of the registry is not what it should be.
    #[error("registry: {path} is not a valid {what}: {source}")]
    Decode {
        /// The object.
        path: String,
        /// What it should be (`manifest`, `alias event`, `evaluation`).
        what: &'static str,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The operation is refused: a checksum mismatch, a lost race, a version or alias that does
    /// not exist.
    #[error("registry: {0}")]
    Refused(String),
}

/// `Result` with the registry's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The metadata format written now; see [`VersionMetadata::format`].
pub const METADATA_FORMAT: u32 = 1;

/// What a version records about how it was made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionMetadata {
    /// 1: typed (this struct); 0 (absent): the untyped record of earlier builds, which held the
    /// same keys.
    #[serde(default)]
    pub format: u32,
    /// The digest of everything that determines the run; an identical run reuses the version.
    pub run_key: String,
    /// The code that trained it (`marnflow 0.1.0`).
    pub code_version: String,
    /// The model variant (`marn`, `conc`, ...).
    pub variant: String,
    /// The training settings as the trainer wrote them. Kept as JSON so that renaming a setting
    /// never makes an old version unreadable.
    #[serde(default)]
    pub config: serde_json::Value,
    /// The data description the model was built for, as JSON.
    #[serde(default)]
    pub inputs: serde_json::Value,
    /// The version it was warm-started from (`NAME@vN`).
    #[serde(default)]
    pub warm_start: Option<String>,
    /// The training data.
    pub data: DataLineage,
    /// How training went.
    pub training: TrainingSummary,
}

/// The training data of a version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataLineage {
    /// First training day (`YYYY-MM-DD`).
    pub from: String,
    /// Last training day.
    pub to: String,
    /// Every file read, with its digest.
    pub partitions: Vec<PartitionDigest>,
    /// Per day, the slice of rows trained on (`All`, `HeldOut(..)`, ...).
    #[serde(default)]
    pub slices: Vec<(String, String)>,
}

/// One data file a version was trained on: its lake path, sha256 (hex) and rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDigest {
    /// Path under the lake.
    pub path: String,
    /// sha256 of the file, hex.
    pub sha256: String,
    /// Rows in the file.
    pub rows: u64,
}

/// How a version's training went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// Samples seen (all epochs).
    pub samples: u64,
    /// Optimizer steps.
    pub steps: u64,
    /// Training wall time.
    pub seconds: f64,
    /// Samples per second.
    pub samples_per_second: f64,
    /// Mean CTR loss of the last curve point.
    pub final_ctr_loss: Option<f64>,
}

/// sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// One file of a version: its name and sha256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json` of a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub model: String,
    pub version: u32,
    pub parent: Option<u32>,
    pub created: String,
    /// How the version was made.
    pub metadata: VersionMetadata,
    pub files: Vec<FileDigest>,
}

/// One change of an alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasEvent {
    pub seq: u64,
    pub alias: String,
    pub version: u32,
    pub previous: Option<u32>,
    pub reason: String,
    pub at: String,
}

/// Checks a model, alias or file name: 1 to 64 of `A-Z a-z 0-9 _ - .`, not starting with `.`.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Name { kind: kind.to_string(), name: name.to_string() })
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn store_err(op: &'static str, path: &Path, source: object_store::Error) -> Error {
    Error::Store { op, path: path.to_string(), source }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path, what: &'static str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Decode { path: path.to_string(), what, source })
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(|source| Error::Decode { path: "(being written)".into(), what, source })
}

/// A registry rooted at `root` (usually `<lake>/models`) in an object store.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    root: Path,
}

impl Registry {
    /// The registry under `root` of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, root: Path) -> Self {
        Self { store, root }
    }

    fn path(&self, parts: &[&str]) -> Path {
        parts.iter().fold(self.root.clone(), |p, part| p.join(*part))
    }

    async fn create(&self, path: &Path, bytes: Vec<u8>) -> Result<bool> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(path, PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(store_err("write", path, e)),
        }
    }

    async fn read(&self, path: &Path) -> Result<Vec<u8>> {
        let got = self.store.get(path).await.map_err(|e| store_err("read", path, e))?;
        Ok(got.bytes().await.map_err(|e| store_err("read", path, e))?.to_vec())
    }

    async fn list(&self, prefix: &Path) -> Result<Vec<Path>> {
        let metas: Vec<_> =
            self.store.list(Some(prefix)).try_collect().await.map_err(|e| store_err("list", prefix, e))?;
        let mut paths: Vec<Path> = metas.into_iter().map(|m| m.location).collect();
        paths.sort();
        Ok(paths)
    }

    /// Registers a new version of `model` holding `files`, with `metadata` in its manifest.
    /// Version numbers are taken in order; a writer that loses a race retries with the next one.
    pub async fn register(
        &self,
        model: &str,
        files: &[(String, Vec<u8>)],
        parent: Option<u32>,
        metadata: VersionMetadata,
    ) -> Result<Manifest> {
        validate_name("model", model)?;
        for (name, _) in files {
            validate_name("file", name)?;
            if name == "manifest.json" {
                return Err(Error::Refused("a version's files may not be called manifest.json".into()));
            }
        }
        let digests: Vec<FileDigest> = files
            .iter()
            .map(|(name, bytes)| FileDigest {
                name: name.clone(),
                sha256: sha256_hex(bytes),
                bytes: bytes.len() as u64,
            })
            .collect();
        let mut next = self.versions(model).await?.last().map_or(1, |m| m.version + 1);
        for _ in 0..1000 {
            let version = next;
            next += 1;
            let v = format!("v{version}");
            let manifest = Manifest {
                model: model.to_string(),
                version,
                parent,
                created: now(),
                metadata: VersionMetadata { format: METADATA_FORMAT, ..metadata.clone() },
                files: digests.clone(),
            };
            // Files first, the manifest last: a version exists once its manifest does. A number
            // whose files already exist (another writer, or one that crashed) is skipped whole, so
            // a manifest only ever describes files this writer wrote.
            let mut all_ours = true;
            for (name, bytes) in files {
                if !self.create(&self.path(&[model, "versions", &v, name]), bytes.clone()).await? {
                    all_ours = false;
                    break;
                }
            }
            if !all_ours {
                continue;
            }
            let text = encode(&manifest, "manifest")?;
            if self.create(&self.path(&[model, "versions", &v, "manifest.json"]), text).await? {
                return Ok(manifest);
            }
        }
        Err(Error::Refused(format!("could not allocate a version number for {model}")))
    }

    /// Every model with at least one version, sorted.
    pub async fn models(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .list(&self.root)
            .await?
            .iter()
            .filter(|p| p.filename() == Some("manifest.json"))
            .filter_map(|p| {
                p.prefix_match(&self.root).and_then(|mut parts| parts.next()).map(|s| s.as_ref().to_string())
            })
            .collect();
        out.dedup();
        Ok(out)
    }

    /// The manifests of every version of `model`, oldest first.
    pub async fn versions(&self, model: &str) -> Result<Vec<Manifest>> {
        validate_name("model", model)?;
        let mut out = Vec::new();
        for p in self.list(&self.path(&[model, "versions"])).await? {
            if p.filename() == Some("manifest.json") {
                out.push(decode::<Manifest>(&self.read(&p).await?, &p, "manifest")?);
            }
        }
        out.sort_by_key(|m| m.version);
        Ok(out)
    }

    /// The manifest of `model` version `version` alone (no file is read).
    pub async fn manifest(&self, model: &str, version: u32) -> Result<Manifest> {
        validate_name("model", model)?;
        let path = self.path(&[model, "versions", &format!("v{version}"), "manifest.json"]);
        decode(&self.read(&path).await?, &path, "manifest")
    }

    /// The manifest and files of `model` version `version`, every file checked against its sha256.
    pub async fn load(&self, model: &str, version: u32) -> Result<(Manifest, BTreeMap<String, Vec<u8>>)> {
        let manifest = self.manifest(model, version).await?;
        let v = format!("v{version}");
        let mut files = BTreeMap::new();
        for f in &manifest.files {
            let p = self.path(&[model, "versions", &v, &f.name]);
            let bytes = self.read(&p).await?;
            let got = sha256_hex(&bytes);
            if got != f.sha256 {
                return Err(Error::Refused(format!(
                    "{model}@v{version}: {} fails its checksum (manifest {}, file {got}); refusing to load it",
                    f.name, f.sha256
                )));
            }
            files.insert(f.name.clone(), bytes);
        }
        Ok((manifest, files))
    }

    /// Every change of `alias` of `model`, oldest first.
    pub async fn alias_history(&self, model: &str, alias: &str) -> Result<Vec<AliasEvent>> {
        validate_name("model", model)?;
        validate_name("alias", alias)?;
        let mut out = Vec::new();
        for p in self.list(&self.path(&[model, "aliases", alias])).await? {
            out.push(decode::<AliasEvent>(&self.read(&p).await?, &p, "alias event")?);
        }
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    /// Every alias of `model` that was ever set, with the version it points to now, sorted.
    pub async fn aliases(&self, model: &str) -> Result<Vec<(String, u32)>> {
        validate_name("model", model)?;
        let prefix = self.path(&[model, "aliases"]);
        let mut names: Vec<String> = self
            .list(&prefix)
            .await?
            .iter()
            .filter_map(|p| p.prefix_match(&prefix).and_then(|mut parts| parts.next()).map(|s| s.as_ref().to_string()))
            .collect();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            if let Some(v) = self.alias(model, &name).await? {
                out.push((name, v));
            }
        }
        Ok(out)
    }

    /// The version `alias` points to, if it was ever set.
    pub async fn alias(&self, model: &str, alias: &str) -> Result<Option<u32>> {
        Ok(self.alias_history(model, alias).await?.last().map(|e| e.version))
    }

    /// Points `alias` at `version`, given that it currently points at `expected` (`None`: unset).
    /// Of two racing changes from the same state exactly one succeeds; the other gets an error.
    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: u32,
        expected: Option<u32>,
        reason: &str,
    ) -> Result<AliasEvent> {
        let history = self.alias_history(model, alias).await?;
        let current = history.last().map(|e| e.version);
        if current != expected {
            return Err(Error::Refused(format!(
                "{model}@{alias} is at {} now, not {}: someone changed it; look at its history",
                current.map_or("nothing".into(), |v| format!("v{v}")),
                expected.map_or("nothing".into(), |v| format!("v{v}"))
            )));
        }
        if !self.versions(model).await?.iter().any(|m| m.version == version) {
            return Err(Error::Refused(format!("{model} has no version v{version}")));
        }
        let seq = history.last().map_or(1, |e| e.seq + 1);
        let event = AliasEvent {
            seq,
            alias: alias.to_string(),
            version,
            previous: current,
            reason: reason.to_string(),
            at: now(),
        };
        let text = encode(&event, "alias event")?;
        // Zero-padded so listing order is event order.
        let path = self.path(&[model, "aliases", alias, &format!("{seq:012}.json")]);
        if self.create(&path, text).await? {
            Ok(event)
        } else {
            Err(Error::Refused(format!(
                "{model}@{alias} was changed by someone else at the same moment; look at its history and retry"
            )))
        }
    }

    /// Returns `alias` to the version it pointed at before its latest change.
    pub async fn rollback(&self, model: &str, alias: &str, reason: &str) -> Result<AliasEvent> {
        let history = self.alias_history(model, alias).await?;
        let last = history.last().ok_or_else(|| Error::Refused(format!("{model}@{alias} was never set")))?;
        let previous = last
            .previous
            .ok_or_else(|| Error::Refused(format!("{model}@{alias} has no earlier version to return to")))?;
        self.set_alias(model, alias, previous, Some(last.version), reason).await
    }

    fn evaluation_path(&self, model: &str, version: u32, key: &str) -> Result<Path> {
        validate_name("model", model)?;
        validate_name("evaluation", key)?;
        Ok(self.path(&[model, "evaluations", &format!("v{version}"), &format!("{key}.json")]))
    }

    /// Saves an evaluation of `model` version `version` under `key`
    /// (`models/<name>/evaluations/v<N>/<key>.json`), replacing an earlier one of the same key:
    /// an evaluation is a measurement of the version, not part of it.
    pub async fn save_evaluation<T: Serialize>(
        &self,
        model: &str,
        version: u32,
        key: &str,
        evaluation: &T,
    ) -> Result<()> {
        let path = self.evaluation_path(model, version, key)?;
        let bytes = encode(evaluation, "evaluation")?;
        self.store
            .put_opts(&path, PutPayload::from(bytes), PutOptions::default())
            .await
            .map_err(|e| store_err("write", &path, e))?;
        Ok(())
    }

    /// The evaluation saved under `key`, if there is one. One that cannot be read is an error.
    pub async fn evaluation<T: serde::de::DeserializeOwned>(
        &self,
        model: &str,
        version: u32,
        key: &str,
    ) -> Result<Option<T>> {
        let path = self.evaluation_path(model, version, key)?;
        match self.store.get(&path).await {
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err("read", &path, e)),
            Ok(got) => {
                Ok(Some(decode(&got.bytes().await.map_err(|e| store_err("read", &path, e))?, &path, "evaluation")?))
            }
        }
    }

    /// Every evaluation saved for `model` version `version`, with its key, in key order. One that
    /// cannot be read is an error.
    pub async fn evaluations<T: serde::de::DeserializeOwned>(
        &self,
        model: &str,
        version: u32,
    ) -> Result<Vec<(String, T)>> {
        validate_name("model", model)?;
        let mut out = Vec::new();
        for p in self.list(&self.path(&[model, "evaluations", &format!("v{version}")])).await? {
            let Some(key) = p.filename().and_then(|f| f.strip_suffix(".json")).map(str::to_string) else { continue };
            out.push((key, decode(&self.read(&p).await?, &p, "evaluation")?));
        }
        Ok(out)
    }

    /// Resolves `model@alias` or `model@vN` to (model, version).
    pub async fn resolve(&self, spec: &str) -> Result<(String, u32)> {
        let (model, at) =
            spec.split_once('@').ok_or_else(|| Error::Refused(format!("{spec:?}: use NAME@ALIAS or NAME@vN")))?;
        validate_name("model", model)?;
        if let Some(n) = at.strip_prefix('v').and_then(|n| n.parse::<u32>().ok()) {
            return Ok((model.to_string(), n));
        }
        let v = self.alias(model, at).await?.ok_or_else(|| Error::Refused(format!("{model}@{at} is not set")))?;
        Ok((model.to_string(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    fn files(tag: &str) -> Vec<(String, Vec<u8>)> {
        vec![("weights.bpk".into(), format!("weights {tag}").into_bytes()), ("config.json".into(), b"{}".to_vec())]
    }

    fn meta(run_key: &str) -> VersionMetadata {
        VersionMetadata { run_key: run_key.into(), variant: "marn".into(), ..VersionMetadata::default() }
    }

    fn local() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        (dir, Registry::new(store, Path::from("models")))
    }

    #[tokio::test]
    async fn versions_round_trip_and_are_numbered_in_order() {
        for reg in [Registry::new(Arc::new(InMemory::new()), Path::from("models")), local().1] {
            let m1 = reg.register("ctr", &files("a"), None, meta("a")).await.unwrap();
            let m2 = reg.register("ctr", &files("b"), Some(1), meta("b")).await.unwrap();
            assert_eq!((m1.version, m2.version, m2.parent), (1, 2, Some(1)));
            let (manifest, got) = reg.load("ctr", 2).await.unwrap();
            assert_eq!(manifest, m2);
            assert_eq!(got["weights.bpk"], b"weights b");
            assert_eq!(reg.models().await.unwrap(), vec!["ctr".to_string()]);
            assert_eq!(reg.resolve("ctr@v1").await.unwrap(), ("ctr".into(), 1));
        }
    }

    #[tokio::test]
    async fn a_crashed_writer_s_leftovers_are_skipped_not_adopted() {
        let (dir, reg) = local();
        reg.register("ctr", &files("a"), None, meta("x")).await.unwrap();
        // A writer crashed after writing v2's weights but before its manifest.
        std::fs::create_dir_all(dir.path().join("models/ctr/versions/v2")).unwrap();
        std::fs::write(dir.path().join("models/ctr/versions/v2/weights.bpk"), b"half").unwrap();
        let m = reg.register("ctr", &files("b"), Some(1), meta("x")).await.unwrap();
        assert_eq!(m.version, 3);
        let (_, got) = reg.load("ctr", 3).await.unwrap();
        assert_eq!(got["weights.bpk"], b"weights b");
        assert_eq!(reg.versions("ctr").await.unwrap().iter().map(|m| m.version).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[tokio::test]
    async fn a_corrupted_file_is_refused() {
        let (dir, reg) = local();
        reg.register("ctr", &files("a"), None, meta("x")).await.unwrap();
        std::fs::write(dir.path().join("models/ctr/versions/v1/weights.bpk"), b"tampered").unwrap();
        let err = reg.load("ctr", 1).await.unwrap_err().to_string();
        assert!(err.contains("fails its checksum"), "{err}");
    }

    #[tokio::test]
    async fn racing_promotes_one_wins_and_history_shows_it() {
        let (_dir, reg) = local();
        for t in ["a", "b", "c"] {
            reg.register("ctr", &files(t), None, meta("x")).await.unwrap();
        }
        reg.set_alias("ctr", "production", 1, None, "first").await.unwrap();
        // Two owners promote different versions from the same state at once.
        let (a, b) = tokio::join!(
            reg.set_alias("ctr", "production", 2, Some(1), "owner a"),
            reg.set_alias("ctr", "production", 3, Some(1), "owner b"),
        );
        assert!(a.is_ok() != b.is_ok(), "exactly one promote must win: {a:?} {b:?}");
        let loser = a.err().or(b.err()).unwrap().to_string();
        assert!(loser.contains("someone") || loser.contains("same moment"), "{loser}");
        let history = reg.alias_history("ctr", "production").await.unwrap();
        assert_eq!(history.len(), 2);
        let winner = history[1].version;
        assert_eq!(reg.alias("ctr", "production").await.unwrap(), Some(winner));
        // A promote from a stale state fails cleanly.
        assert!(reg.set_alias("ctr", "production", 1, Some(1), "stale").await.is_err());
        // Rollback returns to v1 and is itself an event.
        let back = reg.rollback("ctr", "production", "bad model").await.unwrap();
        assert_eq!((back.version, back.previous), (1, Some(winner)));
        assert_eq!(reg.resolve("ctr@production").await.unwrap(), ("ctr".into(), 1));
        assert_eq!(reg.alias_history("ctr", "production").await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn evaluations_are_kept_beside_a_version_and_an_unreadable_one_is_an_error() {
        let (dir, reg) = local();
        reg.register("ctr", &files("a"), None, meta("a")).await.unwrap();
        assert_eq!(reg.evaluation::<serde_json::Value>("ctr", 1, "2026-01-07").await.unwrap(), None);
        reg.save_evaluation("ctr", 1, "2026-01-07", &serde_json::json!({"auc": 0.7})).await.unwrap();
        reg.save_evaluation("ctr", 1, "2026-01-07", &serde_json::json!({"auc": 0.8})).await.unwrap();
        reg.save_evaluation("ctr", 1, "2026-01-06", &serde_json::json!({"auc": 0.6})).await.unwrap();
        let all: Vec<(String, serde_json::Value)> = reg.evaluations("ctr", 1).await.unwrap();
        let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["2026-01-06", "2026-01-07"]);
        assert_eq!(all[1].1["auc"], 0.8, "a new evaluation under a key replaces the old one");
        std::fs::write(dir.path().join("models/ctr/evaluations/v1/2026-01-06.json"), b"{trunc").unwrap();
        let err = reg.evaluations::<serde_json::Value>("ctr", 1).await.unwrap_err().to_string();
        assert!(err.contains("2026-01-06.json") && err.contains("evaluation"), "{err}");
        assert!(reg.save_evaluation("ctr", 1, "../x", &1).await.is_err());
    }

    #[tokio::test]
    async fn metadata_of_earlier_builds_stays_readable() {
        // An untyped manifest as builds before the typed metadata wrote it (no format key, extra keys).
        let old = r#"{"model": "ctr", "version": 1, "parent": null, "created": "2026-11-20T00:00:00Z",
            "metadata": {"run_key": "k", "code_version": "marnflow 0.1.0", "variant": "ids",
              "config": {"renamed_setting": 1}, "inputs": {}, "warm_start": null,
              "data": {"from": "2026-01-01", "to": "2026-01-06", "partitions": [{"path": "p", "sha256": "s", "rows": 3}], "slices": []},
              "training": {"samples": 10, "steps": 1, "seconds": 0.5, "samples_per_second": 20.0, "final_ctr_loss": 0.6},
              "something_new": true},
            "files": []}"#;
        let m: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!(m.metadata.format, 0);
        assert_eq!(m.metadata.data.partitions[0].rows, 3);
        assert_eq!(m.metadata.training.final_ctr_loss, Some(0.6));
        assert_eq!(m.metadata.config["renamed_setting"], 1);
        // New versions say which format they are.
        let (_dir, reg) = local();
        assert_eq!(reg.register("ctr", &files("a"), None, meta("a")).await.unwrap().metadata.format, METADATA_FORMAT);
    }

    #[tokio::test]
    async fn names_cannot_escape_the_registry() {
        let (_dir, reg) = local();
        for bad in ["..", "../x", "a/b", "", ".hidden", "a\\\\b", &"x".repeat(65)] {
            assert!(reg.register(bad, &files("a"), None, meta("x")).await.is_err(), "{bad:?}");
            assert!(reg.resolve(&format!("{bad}@production")).await.is_err(), "{bad:?}");
        }
        let bad_file = vec![("../weights".to_string(), b"x".to_vec())];
        assert!(reg.register("ctr", &bad_file, None, meta("x")).await.is_err());
        reg.register("ctr", &files("a"), None, meta("x")).await.unwrap();
        assert!(reg.set_alias("ctr", "../prod", 1, None, "x").await.is_err());
        assert!(reg.set_alias("ctr", "production", 9, None, "no such version").await.is_err());
    }
}
