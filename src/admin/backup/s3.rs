//! Backups in S3-compatible object storage: `s3://bucket/prefix`.
//!
//! A generation is the objects `prefix/<generation>/<path>` (each file at its path in
//! the data dir), then `prefix/<generation>/manifest.json`, then `prefix/LATEST` naming
//! it, written last: a reader that follows `LATEST` finds a complete generation. A user
//! unchanged since the previous generation is not uploaded again: its manifest entry's
//! `copied_in` names the generation that holds its bytes, and [`S3Destination::prune`]
//! keeps every object a kept generation's manifest still points at.
//!
//! Files are made in a private local staging directory (as the directory destination
//! makes them), uploaded (multipart when large, a few parts at a time) and removed
//! locally at once, so the staging directory holds only the files in flight.
//!
//! The [`Destination`] trait is synchronous: this destination owns a small Tokio
//! runtime of its own and blocks on it, so it must not be used from inside another
//! runtime's worker (the server runs backups on a thread of their own).
//!
//! [`download`] fetches a generation into a local directory laid out as the directory
//! destination's generations are, for `syncstore restore s3://…`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use tokio::io::AsyncWriteExt;

use super::{
    LATEST, MANIFEST, MANIFEST_FORMAT, Manifest, generation_order, invalid, is_generation_name,
};
use crate::admin::AdminError;
use crate::admin::backup::Destination;
use crate::config::Settings;

/// Files up to this size are uploaded in one request; larger ones in parts.
const SINGLE_PUT_MAX: u64 = 16 << 20;

/// How to reach the object storage: the settings, else the usual AWS variables.
#[derive(Clone)]
pub struct S3Options {
    /// Endpoint URL (empty: AWS, or `AWS_ENDPOINT_URL`/`AWS_ENDPOINT`).
    pub endpoint: String,
    /// Region (empty: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: String,
    /// Access key id (empty: `AWS_ACCESS_KEY_ID`).
    pub access_key_id: String,
    /// Secret access key (empty: `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: String,
    /// Allow plain HTTP.
    pub allow_http: bool,
}

impl S3Options {
    /// The `backup_s3_*` settings.
    pub fn from_settings(s: &Settings) -> S3Options {
        S3Options {
            endpoint: s.backup_s3_endpoint.clone(),
            region: s.backup_s3_region.clone(),
            access_key_id: s.backup_s3_access_key_id.clone(),
            secret_access_key: s.backup_s3_secret_access_key.clone(),
            allow_http: s.backup_s3_allow_http,
        }
    }
}

/// A client for `bucket`, with a runtime to drive it.
struct Client {
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
}

impl Client {
    fn new(bucket: &str, opts: &S3Options) -> Result<Client, AdminError> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if !opts.endpoint.is_empty() {
            b = b.with_endpoint(&opts.endpoint);
        }
        let env_region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_default();
        b = match (opts.region.as_str(), env_region.as_str()) {
            ("", "") => b.with_region("us-east-1"),
            ("", _) => b,
            (r, _) => b.with_region(r),
        };
        if !opts.access_key_id.is_empty() {
            b = b.with_access_key_id(&opts.access_key_id);
        }
        if !opts.secret_access_key.is_empty() {
            b = b.with_secret_access_key(&opts.secret_access_key);
        }
        if opts.allow_http {
            b = b.with_allow_http(true);
        }
        let retry = object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let store = b
            .with_retry(retry)
            .build()
            .map_err(|e| invalid(format!("s3://{bucket}: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backup-s3")
            .enable_all()
            .build()
            .map_err(|e| invalid(format!("cannot start the S3 client: {e}")))?;
        Ok(Client {
            store: Arc::new(store),
            rt,
        })
    }

    fn get(&self, key: &ObjectPath) -> Result<Option<Vec<u8>>, AdminError> {
        self.rt.block_on(async {
            match self.store.get(key).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map(|b| Some(b.to_vec()))
                    .map_err(|e| invalid(format!("cannot read {key}: {e}"))),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(invalid(format!("cannot read {key}: {e}"))),
            }
        })
    }

    fn put(&self, key: &ObjectPath, bytes: Vec<u8>) -> Result<(), AdminError> {
        self.rt
            .block_on(self.store.put(key, bytes.into()))
            .map(|_| ())
            .map_err(|e| invalid(format!("cannot write {key}: {e}")))
    }

    /// Uploads the local file `src` as `key`.
    fn upload(&self, src: &Path, key: &ObjectPath) -> Result<(), AdminError> {
        let size = std::fs::metadata(src)
            .map_err(|e| invalid(format!("{}: {e}", src.display())))?
            .len();
        if size <= SINGLE_PUT_MAX {
            let bytes =
                std::fs::read(src).map_err(|e| invalid(format!("{}: {e}", src.display())))?;
            return self.put(key, bytes);
        }
        self.rt.block_on(async {
            let mut file = tokio::fs::File::open(src)
                .await
                .map_err(|e| invalid(format!("{}: {e}", src.display())))?;
            let mut w = object_store::buffered::BufWriter::with_capacity(
                self.store.clone(),
                key.clone(),
                8 << 20,
            )
            .with_max_concurrency(2);
            let copied = tokio::io::copy(&mut file, &mut w).await;
            let done = match copied {
                Ok(_) => w.shutdown().await,
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                let _ = w.abort().await;
                return Err(invalid(format!("cannot write {key}: {e}")));
            }
            Ok(())
        })
    }

    /// Downloads `key` to the new local file `dst` (owner-only).
    fn download(&self, key: &ObjectPath, dst: &Path) -> Result<(), AdminError> {
        if let Some(parent) = dst.parent() {
            crate::private::create_dir(parent).map_err(invalid)?;
        }
        crate::private::create_file(dst).map_err(invalid)?;
        self.rt.block_on(async {
            let got = self
                .store
                .get(key)
                .await
                .map_err(|e| invalid(format!("cannot read {key}: {e}")))?;
            let mut out = tokio::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(dst)
                .await
                .map_err(|e| invalid(format!("{}: {e}", dst.display())))?;
            let mut chunks = got.into_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| invalid(format!("cannot read {key}: {e}")))?;
                out.write_all(&chunk)
                    .await
                    .map_err(|e| invalid(format!("{}: {e}", dst.display())))?;
            }
            out.sync_all()
                .await
                .map_err(|e| invalid(format!("{}: {e}", dst.display())))
        })
    }

    /// Every object under `prefix/`.
    fn list(&self, prefix: &ObjectPath) -> Result<Vec<ObjectPath>, AdminError> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut s = self.store.list(Some(prefix));
            while let Some(m) = s.next().await {
                out.push(
                    m.map_err(|e| invalid(format!("cannot list {prefix}: {e}")))?
                        .location,
                );
            }
            Ok(out)
        })
    }

    /// The names directly under `prefix/` that hold objects.
    fn dirs(&self, prefix: &ObjectPath) -> Result<Vec<String>, AdminError> {
        let listed = self
            .rt
            .block_on(self.store.list_with_delimiter(Some(prefix)))
            .map_err(|e| invalid(format!("cannot list {prefix}: {e}")))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    fn delete(&self, key: &ObjectPath) -> Result<(), AdminError> {
        match self.rt.block_on(self.store.delete(key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(invalid(format!("cannot delete {key}: {e}"))),
        }
    }
}

/// `s3://bucket/prefix` as a backup destination (see the module doc).
pub struct S3Destination {
    bucket: String,
    prefix: String,
    client: Client,
    /// The local staging root (removed on drop).
    local: PathBuf,
    staging: Option<(String, PathBuf)>,
}

/// `prefix/rest` as an object path (`rest` alone when there is no prefix).
fn key(prefix: &str, rest: &str) -> ObjectPath {
    if prefix.is_empty() {
        ObjectPath::from(rest)
    } else {
        ObjectPath::from(format!("{prefix}/{rest}"))
    }
}

fn parse_manifest(what: &str, bytes: &[u8]) -> Result<Manifest, AdminError> {
    let m: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("{what} is not a backup manifest: {e}")))?;
    if m.format != MANIFEST_FORMAT {
        return Err(invalid(format!(
            "{what}: unknown manifest format {:?} (this version reads {MANIFEST_FORMAT:?})",
            m.format
        )));
    }
    Ok(m)
}

impl S3Destination {
    /// Connects to `bucket` (no request is made yet) with a fresh local staging
    /// directory.
    pub fn open(bucket: &str, prefix: &str, opts: &S3Options) -> Result<S3Destination, AdminError> {
        let client = Client::new(bucket, opts)?;
        let local = std::env::temp_dir().join(format!(
            "syncstore-backup-{}-{}",
            std::process::id(),
            super::now_ms()
        ));
        crate::private::create_dir(&local)
            .map_err(|e| invalid(format!("cannot create {}: {e}", local.display())))?;
        Ok(S3Destination {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            client,
            local,
            staging: None,
        })
    }

    fn staging(&self) -> Result<&(String, PathBuf), AdminError> {
        self.staging
            .as_ref()
            .ok_or_else(|| invalid("no generation started"))
    }

    fn latest_name(&self) -> Result<Option<String>, AdminError> {
        let Some(bytes) = self.client.get(&key(&self.prefix, LATEST))? else {
            return Ok(None);
        };
        let name = String::from_utf8_lossy(&bytes).trim().to_string();
        Ok(is_generation_name(&name).then_some(name))
    }

    fn manifest(&self, name: &str) -> Result<Option<Manifest>, AdminError> {
        let k = key(&self.prefix, &format!("{name}/{MANIFEST}"));
        match self.client.get(&k)? {
            Some(bytes) => parse_manifest(k.as_ref(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The names under the prefix that look like generations (complete or not),
    /// oldest first.
    fn generation_dirs(&self) -> Result<Vec<String>, AdminError> {
        let root = if self.prefix.is_empty() {
            ObjectPath::default()
        } else {
            ObjectPath::from(self.prefix.as_str())
        };
        let mut names: Vec<String> = self
            .client
            .dirs(&root)?
            .into_iter()
            .filter(|n| is_generation_name(n))
            .collect();
        names.sort_by_key(|n| generation_order(n));
        Ok(names)
    }
}

impl Drop for S3Destination {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.local);
    }
}

impl Destination for S3Destination {
    fn latest(&self) -> Result<Option<Manifest>, AdminError> {
        match self.latest_name()? {
            Some(name) => self.manifest(&name),
            None => Ok(None),
        }
    }

    fn begin(&mut self, name: &str) -> Result<PathBuf, AdminError> {
        let dir = self.local.join(name);
        crate::private::create_dir(&dir)
            .map_err(|e| invalid(format!("cannot create {}: {e}", dir.display())))?;
        self.staging = Some((name.to_string(), dir.clone()));
        Ok(dir)
    }

    fn store(&self, rel: &str) -> Result<(), AdminError> {
        let (name, dir) = self.staging()?;
        let src = dir.join(rel);
        let done = self
            .client
            .upload(&src, &key(&self.prefix, &format!("{name}/{rel}")));
        let _ = std::fs::remove_file(&src);
        done
    }

    fn reuse(&self, _from: &str, _rel: &str) -> Result<(), AdminError> {
        // The bytes stay where they are: the manifest entry's `copied_in` names the
        // generation holding them, and pruning keeps them while it is referenced.
        self.staging().map(|_| ())
    }

    fn commit(&mut self, manifest: &Manifest) -> Result<(), AdminError> {
        let (name, dir) = self.staging()?.clone();
        let text = serde_json::to_vec_pretty(manifest).map_err(invalid)?;
        self.client
            .put(&key(&self.prefix, &format!("{name}/{MANIFEST}")), text)?;
        self.client
            .put(&key(&self.prefix, LATEST), format!("{name}\n").into_bytes())?;
        let _ = std::fs::remove_dir_all(dir);
        self.staging = None;
        Ok(())
    }

    fn abandon(&mut self) {
        if let Some((name, dir)) = self.staging.take() {
            let _ = std::fs::remove_dir_all(dir);
            if let Ok(keys) = self.client.list(&key(&self.prefix, &name)) {
                for k in keys {
                    let _ = self.client.delete(&k);
                }
            }
        }
    }

    fn prune(&self, keep: usize) -> Result<Vec<String>, AdminError> {
        let Some(latest) = self.latest_name()? else {
            return Ok(Vec::new());
        };
        let dirs = self.generation_dirs()?;
        // Complete generations, oldest first; the newest `keep` (and LATEST) stay.
        let mut complete = Vec::new();
        let mut manifests = Vec::new();
        for name in &dirs {
            if generation_order(name) > generation_order(&latest) {
                continue; // another run's, still being written
            }
            if let Some(m) = self.manifest(name)? {
                complete.push(name.clone());
                manifests.push(m);
            }
        }
        let drop_n = complete.len().saturating_sub(keep.max(1));
        let kept: BTreeSet<&str> = complete
            .iter()
            .skip(drop_n)
            .map(String::as_str)
            .chain([latest.as_str()])
            .collect();
        // Every object a kept generation points at: (generation, path).
        let mut referenced = BTreeSet::new();
        for m in &manifests {
            if kept.contains(m.generation.as_str()) {
                for f in &m.files {
                    referenced.insert(format!("{}/{}", f.copied_in, f.path));
                }
            }
        }
        let root = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        // The oldest kept generation: an unfinished one older than it is a run that
        // died (a run in progress elsewhere is newer), and goes.
        let oldest_kept = kept
            .iter()
            .map(|n| generation_order(n))
            .min()
            .unwrap_or_else(|| generation_order(&latest));
        let mut dropped = Vec::new();
        for name in &dirs {
            let was_complete = complete.contains(name);
            if kept.contains(name.as_str())
                || generation_order(name) > generation_order(&latest)
                || (!was_complete && generation_order(name) >= oldest_kept)
            {
                continue;
            }
            // The manifest first: from then on it is no generation, even if removing
            // its other objects stops part-way (the next prune finishes it).
            let manifest_key = key(&self.prefix, &format!("{name}/{MANIFEST}"));
            self.client.delete(&manifest_key)?;
            for k in self.client.list(&key(&self.prefix, name))? {
                let rel = k.as_ref().strip_prefix(&root).unwrap_or(k.as_ref());
                if !referenced.contains(rel) {
                    self.client.delete(&k)?;
                }
            }
            if was_complete {
                dropped.push(name.clone());
            }
        }
        Ok(dropped)
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Downloads generation `generation` (else the one `LATEST` names) of
/// `s3://bucket/prefix` into the new directory `dir`, laid out as a directory
/// destination's generation (each file at its path, `manifest.json` beside them);
/// with `only_user`, that user's file alone (and the whole manifest), for a one-user
/// restore. Returns the generation's name.
pub fn download(
    bucket: &str,
    prefix: &str,
    generation: Option<&str>,
    only_user: Option<u64>,
    opts: &S3Options,
    dir: &Path,
) -> Result<String, AdminError> {
    let dest = S3Destination::open(bucket, prefix, opts)?;
    let name = match generation {
        Some(g) => g.to_string(),
        None => dest
            .latest_name()?
            .ok_or_else(|| invalid(format!("{} holds no backup (no {LATEST})", dest.describe())))?,
    };
    let manifest = dest.manifest(&name)?.ok_or_else(|| {
        invalid(format!(
            "{} has no complete generation {name}",
            dest.describe()
        ))
    })?;
    crate::private::create_dir(dir)
        .map_err(|e| invalid(format!("cannot create {}: {e}", dir.display())))?;
    for f in &manifest.files {
        if only_user.is_some() && f.uid != only_user {
            continue;
        }
        if f.path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
            || !is_generation_name(&f.copied_in)
        {
            return Err(invalid(format!(
                "the manifest names a bad path {:?}",
                f.path
            )));
        }
        let k = key(&dest.prefix, &format!("{}/{}", f.copied_in, f.path));
        dest.client.download(&k, &dir.join(&f.path))?;
    }
    let text = serde_json::to_vec_pretty(&manifest).map_err(invalid)?;
    super::write_private(&dir.join(MANIFEST), &text)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The S3 server scripts/test started, as a client of a fresh prefix.
    fn test_server() -> Option<(S3Destination, S3Options, String, String)> {
        let Ok(endpoint) = std::env::var("SYNCSTORE_TEST_S3_URL") else {
            eprintln!("skipped: SYNCSTORE_TEST_S3_URL is not set (scripts/test sets it)");
            return None;
        };
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
        let opts = S3Options {
            endpoint,
            region: String::new(),
            access_key_id: var("SYNCSTORE_TEST_S3_ACCESS_KEY_ID"),
            secret_access_key: var("SYNCSTORE_TEST_S3_SECRET_ACCESS_KEY"),
            allow_http: true,
        };
        let bucket = var("SYNCSTORE_TEST_S3_BUCKET");
        let prefix = format!("unit-{}-{}", std::process::id(), super::super::now_ms());
        let dest = S3Destination::open(&bucket, &prefix, &opts).unwrap();
        Some((dest, opts, bucket, prefix))
    }

    #[test]
    fn a_large_file_goes_up_in_parts_and_comes_back_whole() {
        let Some((mut dest, opts, bucket, prefix)) = test_server() else {
            return;
        };
        let name = "20261207T170000Z";
        let staging = dest.begin(name).unwrap();
        // Over the single-request limit, not a multiple of the part size.
        let size = SINGLE_PUT_MAX as usize + (8 << 20) + 12_345;
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let rel = "users/001/1.sqlite";
        std::fs::create_dir_all(staging.join("users/001")).unwrap();
        std::fs::write(staging.join(rel), &bytes).unwrap();
        let (sha256, _) = crate::admin::backup::digest_file(&staging.join(rel)).unwrap();
        dest.store(rel).unwrap();
        assert!(
            !staging.join(rel).exists(),
            "the staged copy goes once stored"
        );
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            generation: name.into(),
            syncstore_version: "test".into(),
            user_schema_version: 1,
            consistent_to_ms: 0,
            consistent_to: String::new(),
            finished_ms: 0,
            secret_in_settings: true,
            skipped: vec![],
            failed: vec![],
            files: vec![crate::admin::backup::FileEntry {
                path: rel.into(),
                kind: crate::admin::backup::Kind::User,
                uid: Some(1),
                size: size as u64,
                sha256,
                schema_version: None,
                records: None,
                last_modified: None,
                usage_bytes: None,
                copied_ms: 0,
                copied_in: name.into(),
                stamp: None,
            }],
        };
        dest.commit(&manifest).unwrap();
        assert_eq!(dest.latest().unwrap().unwrap().generation, name);
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("g");
        assert_eq!(
            download(&bucket, &prefix, None, None, &opts, &dir).unwrap(),
            name
        );
        assert!(std::fs::read(dir.join(rel)).unwrap() == bytes);
        assert!(dir.join(MANIFEST).is_file());
        // Pruning to one generation keeps the only (latest) one.
        assert!(dest.prune(1).unwrap().is_empty());
    }
}
