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

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

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
    /// Anything the caller records: code version, data partitions and digests, metrics, config.
    pub metadata: serde_json::Value,
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
        Err(Error::Registry(format!(
            "invalid {kind} name {name:?}: use 1 to 64 of letters, digits, '_', '-', '.', not starting with '.'"
        )))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn store_err(op: &str, path: &Path, e: object_store::Error) -> Error {
    Error::Registry(format!("{op} {path}: {e}"))
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
        metadata: serde_json::Value,
    ) -> Result<Manifest> {
        validate_name("model", model)?;
        for (name, _) in files {
            validate_name("file", name)?;
            if name == "manifest.json" {
                return Err(Error::Registry("a version's files may not be called manifest.json".into()));
            }
        }
        let digests: Vec<FileDigest> = files
            .iter()
            .map(|(name, bytes)| FileDigest {
                name: name.clone(),
                sha256: hex(&Sha256::digest(bytes)),
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
                metadata: metadata.clone(),
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
            let text = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Registry(e.to_string()))?;
            if self.create(&self.path(&[model, "versions", &v, "manifest.json"]), text).await? {
                return Ok(manifest);
            }
        }
        Err(Error::Registry(format!("could not allocate a version number for {model}")))
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
                let m: Manifest = serde_json::from_slice(&self.read(&p).await?)
                    .map_err(|e| Error::Registry(format!("{p}: not a manifest: {e}")))?;
                out.push(m);
            }
        }
        out.sort_by_key(|m| m.version);
        Ok(out)
    }

    /// The manifest of `model` version `version` alone (no file is read).
    pub async fn manifest(&self, model: &str, version: u32) -> Result<Manifest> {
        validate_name("model", model)?;
        let path = self.path(&[model, "versions", &format!("v{version}"), "manifest.json"]);
        serde_json::from_slice(&self.read(&path).await?)
            .map_err(|e| Error::Registry(format!("{path}: not a manifest: {e}")))
    }

    /// The manifest and files of `model` version `version`, every file checked against its sha256.
    pub async fn load(&self, model: &str, version: u32) -> Result<(Manifest, BTreeMap<String, Vec<u8>>)> {
        let manifest = self.manifest(model, version).await?;
        let v = format!("v{version}");
        let mut files = BTreeMap::new();
        for f in &manifest.files {
            let p = self.path(&[model, "versions", &v, &f.name]);
            let bytes = self.read(&p).await?;
            let got = hex(&Sha256::digest(&bytes));
            if got != f.sha256 {
                return Err(Error::Registry(format!(
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
            let e: AliasEvent = serde_json::from_slice(&self.read(&p).await?)
                .map_err(|e| Error::Registry(format!("{p}: not an alias event: {e}")))?;
            out.push(e);
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
            return Err(Error::Registry(format!(
                "{model}@{alias} is at {} now, not {}: someone changed it; look at its history",
                current.map_or("nothing".into(), |v| format!("v{v}")),
                expected.map_or("nothing".into(), |v| format!("v{v}"))
            )));
        }
        if !self.versions(model).await?.iter().any(|m| m.version == version) {
            return Err(Error::Registry(format!("{model} has no version v{version}")));
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
        let text = serde_json::to_vec_pretty(&event).map_err(|e| Error::Registry(e.to_string()))?;
        // Zero-padded so listing order is event order.
        let path = self.path(&[model, "aliases", alias, &format!("{seq:012}.json")]);
        if self.create(&path, text).await? {
            Ok(event)
        } else {
            Err(Error::Registry(format!(
                "{model}@{alias} was changed by someone else at the same moment; look at its history and retry"
            )))
        }
    }

    /// Returns `alias` to the version it pointed at before its latest change.
    pub async fn rollback(&self, model: &str, alias: &str, reason: &str) -> Result<AliasEvent> {
        let history = self.alias_history(model, alias).await?;
        let last = history.last().ok_or_else(|| Error::Registry(format!("{model}@{alias} was never set")))?;
        let previous = last
            .previous
            .ok_or_else(|| Error::Registry(format!("{model}@{alias} has no earlier version to return to")))?;
        self.set_alias(model, alias, previous, Some(last.version), reason).await
    }

    /// Resolves `model@alias` or `model@vN` to (model, version).
    pub async fn resolve(&self, spec: &str) -> Result<(String, u32)> {
        let (model, at) =
            spec.split_once('@').ok_or_else(|| Error::Registry(format!("{spec:?}: use NAME@ALIAS or NAME@vN")))?;
        validate_name("model", model)?;
        if let Some(n) = at.strip_prefix('v').and_then(|n| n.parse::<u32>().ok()) {
            return Ok((model.to_string(), n));
        }
        let v = self.alias(model, at).await?.ok_or_else(|| Error::Registry(format!("{model}@{at} is not set")))?;
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

    fn local() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        (dir, Registry::new(store, Path::from("models")))
    }

    #[tokio::test]
    async fn versions_round_trip_and_are_numbered_in_order() {
        for reg in [Registry::new(Arc::new(InMemory::new()), Path::from("models")), local().1] {
            let m1 = reg.register("ctr", &files("a"), None, serde_json::json!({"auc": 0.7})).await.unwrap();
            let m2 = reg.register("ctr", &files("b"), Some(1), serde_json::json!({"auc": 0.8})).await.unwrap();
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
        reg.register("ctr", &files("a"), None, serde_json::Value::Null).await.unwrap();
        // A writer crashed after writing v2's weights but before its manifest.
        std::fs::create_dir_all(dir.path().join("models/ctr/versions/v2")).unwrap();
        std::fs::write(dir.path().join("models/ctr/versions/v2/weights.bpk"), b"half").unwrap();
        let m = reg.register("ctr", &files("b"), Some(1), serde_json::Value::Null).await.unwrap();
        assert_eq!(m.version, 3);
        let (_, got) = reg.load("ctr", 3).await.unwrap();
        assert_eq!(got["weights.bpk"], b"weights b");
        assert_eq!(reg.versions("ctr").await.unwrap().iter().map(|m| m.version).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[tokio::test]
    async fn a_corrupted_file_is_refused() {
        let (dir, reg) = local();
        reg.register("ctr", &files("a"), None, serde_json::Value::Null).await.unwrap();
        std::fs::write(dir.path().join("models/ctr/versions/v1/weights.bpk"), b"tampered").unwrap();
        let err = reg.load("ctr", 1).await.unwrap_err().to_string();
        assert!(err.contains("fails its checksum"), "{err}");
    }

    #[tokio::test]
    async fn racing_promotes_one_wins_and_history_shows_it() {
        let (_dir, reg) = local();
        for t in ["a", "b", "c"] {
            reg.register("ctr", &files(t), None, serde_json::Value::Null).await.unwrap();
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
    async fn names_cannot_escape_the_registry() {
        let (_dir, reg) = local();
        for bad in ["..", "../x", "a/b", "", ".hidden", "a\\\\b", &"x".repeat(65)] {
            assert!(reg.register(bad, &files("a"), None, serde_json::Value::Null).await.is_err(), "{bad:?}");
            assert!(reg.resolve(&format!("{bad}@production")).await.is_err(), "{bad:?}");
        }
        let bad_file = vec![("../weights".to_string(), b"x".to_vec())];
        assert!(reg.register("ctr", &bad_file, None, serde_json::Value::Null).await.is_err());
        reg.register("ctr", &files("a"), None, serde_json::Value::Null).await.unwrap();
        assert!(reg.set_alias("ctr", "../prod", 1, None, "x").await.is_err());
        assert!(reg.set_alias("ctr", "production", 9, None, "no such version").await.is_err());
    }
}
