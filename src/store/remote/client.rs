//! The remote store's client: `object_store` for S3 and shared folders (see `mod.rs`).

use super::{Pulled, Pushed};
use crate::store::{ActionRecord, Hash, Store};
use anyhow::{Context, Result, anyhow, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as RemotePath;
use object_store::{
    ClientOptions, GetResultPayload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Transfers in flight at once.
const PARALLEL: usize = 8;
/// Objects at least this many MiB go up in parts (S3's multipart upload); `PIPE_REMOTE_MULTIPART_MB`
/// changes it.
const MULTIPART_FROM_MB: u64 = 64;
const PART_SIZE: usize = 16 << 20;

fn multipart_from() -> u64 {
    std::env::var("PIPE_REMOTE_MULTIPART_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MULTIPART_FROM_MB)
        << 20
}

/// Where the environment says what an S3 remote needs.
const S3_HELP: &str = "an s3:// remote reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
    (and AWS_SESSION_TOKEN), AWS_REGION, and AWS_ENDPOINT_URL for a store other than AWS \
    (MinIO, Ceph, moto); `pipe remote check` tests them";

/// A remote store.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    root: RemotePath,
    runtime: tokio::runtime::Runtime,
    /// Objects found corrupt by a pull: a push from here overwrites them.
    corrupt: Mutex<HashSet<Hash>>,
}

impl Remote {
    /// Opens `url`: `s3://bucket[/prefix]` or `file:///absolute/path`. Nothing is contacted yet.
    pub fn open(url: &str) -> Result<Remote> {
        // rustls's crypto (ring), for https endpoints; a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (store, root): (Arc<dyn ObjectStore>, RemotePath) = if let Some(rest) =
            url.strip_prefix("s3://")
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("remote {url:?}: no bucket name (expected s3://bucket/prefix)");
            }
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(RetryConfig {
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(30),
                    ..Default::default()
                })
                .with_client_options(
                    ClientOptions::new()
                        .with_connect_timeout(Duration::from_secs(10))
                        .with_allow_http(endpoint().is_some_and(|e| e.starts_with("http://"))),
                );
            if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none()
            {
                b = b.with_region("us-east-1");
            }
            let s3 = b
                .build()
                .map_err(|e| anyhow!("remote {url}: {e}\nhelp: {S3_HELP}"))?;
            (Arc::new(s3), RemotePath::from(prefix))
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                bail!("remote {url:?}: a file:// remote needs an absolute path (file:///path)");
            }
            std::fs::create_dir_all(path)
                .with_context(|| format!("remote {url}: creating {path}"))?;
            let fs =
                LocalFileSystem::new_with_prefix(path).with_context(|| format!("remote {url}"))?;
            (Arc::new(fs), RemotePath::default())
        } else {
            bail!(
                "remote {url:?}: expected s3://bucket/prefix or file:///path (set with --remote, \
                     PIPE_REMOTE, or `remote:` in the manifest's defaults)"
            );
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime for the remote store")?;
        Ok(Remote {
            url: url.trim_end_matches('/').to_string(),
            store,
            root,
            runtime,
            corrupt: Mutex::new(HashSet::new()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn object_path(&self, hash: &str) -> RemotePath {
        self.root
            .clone()
            .join("objects")
            .join(&hash[..2])
            .join(&hash[2..])
    }

    fn action_path(&self, key: &str) -> RemotePath {
        self.root
            .clone()
            .join("actions")
            .join(format!("{key}.json"))
    }

    /// A remote error as the user should see it: the URL, what failed, and what to set.
    fn loud(&self, what: &str, e: object_store::Error) -> anyhow::Error {
        let help = match &e {
            object_store::Error::PermissionDenied { .. } => {
                "the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY \
                 (or the file permissions of a file:// remote)"
                    .to_string()
            }
            _ if self.url.starts_with("s3://") => format!(
                "{S3_HELP}{}",
                endpoint()
                    .map(|e| format!(" (AWS_ENDPOINT_URL is {e})"))
                    .unwrap_or_default()
            ),
            _ => "check that the folder exists and is writable".into(),
        };
        anyhow!("remote {}: {what}: {e}\nhelp: {help}", self.url)
    }

    /// The remote's action record for `key` (not its outputs).
    pub fn action(&self, key: &str) -> Result<Option<ActionRecord>> {
        self.runtime.block_on(async {
            let path = self.action_path(key);
            let bytes = match self.store.get(&path).await {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            };
            match bytes {
                Ok(b) => {
                    let rec: ActionRecord = match serde_json::from_slice(&b) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(%path, "unreadable remote record: {e}");
                            return Ok(None);
                        }
                    };
                    Ok((rec.key == key).then_some(rec))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.loud(&format!("reading {path}"), e)),
            }
        })
    }

    /// Looks `key` up and downloads the outputs its record names that `local` lacks, each
    /// re-hashed before it enters `local`. The record itself is not written locally.
    pub fn pull(&self, local: &Store, key: &str) -> Result<Pulled> {
        let Some(rec) = self.action(key)? else {
            return Ok(Pulled::Absent);
        };
        let missing: Vec<Hash> = unique(rec.outputs.values())
            .into_iter()
            .filter(|h| !local.has(h))
            .collect();
        let problems: Vec<Problem> = self.runtime.block_on(async {
            stream::iter(missing)
                .map(|h| async move { self.download(local, &h).await.err() })
                .buffer_unordered(PARALLEL)
                .filter_map(|p| async move { p })
                .collect()
                .await
        });
        // Network and credential errors are loud; missing or corrupt objects are misses.
        let mut misses = Vec::new();
        for p in problems {
            match p {
                Problem::Miss(why) => misses.push(why),
                Problem::Fatal(e) => return Err(e),
            }
        }
        if misses.is_empty() {
            Ok(Pulled::Complete(rec))
        } else {
            Ok(Pulled::Incomplete(misses.join("; ")))
        }
    }

    /// One object into the local store, or why not.
    async fn download(&self, local: &Store, hash: &Hash) -> Result<(), Problem> {
        let path = self.object_path(hash);
        let got = match self.store.get(&path).await {
            Ok(r) => r.payload,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Problem::Miss(format!(
                    "object {} named by the remote record is missing",
                    &hash[..16]
                )));
            }
            Err(e) => return Err(Problem::Fatal(self.loud(&format!("reading {path}"), e))),
        };
        let mut w = local.writer().map_err(Problem::Fatal)?;
        match got {
            // A shared folder: read the file directly (object_store's stream reads it in 8 KiB
            // pieces, each a round trip to a blocking thread: 4x slower for a 1 GB object).
            GetResultPayload::File(mut f, file) => {
                std::io::copy(&mut f, &mut w).map_err(|e| {
                    Problem::Fatal(anyhow!(
                        "remote {}: reading {}: {e}",
                        self.url,
                        file.display()
                    ))
                })?;
            }
            GetResultPayload::Stream(mut body) => {
                while let Some(chunk) = body.next().await {
                    let chunk = chunk
                        .map_err(|e| Problem::Fatal(self.loud(&format!("reading {path}"), e)))?;
                    w.write_all(&chunk)
                        .map_err(|e| Problem::Fatal(anyhow!(e)))?;
                }
            }
        }
        match w.commit_expecting(hash) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.corrupt.lock().unwrap().insert(hash.clone());
                Err(Problem::Miss(format!(
                    "object {} from the remote was rejected: {e}",
                    &hash[..16]
                )))
            }
        }
    }

    /// Uploads `rec`'s outputs that the remote lacks (or that a pull found corrupt), then `rec`
    /// with a create-if-absent put.
    pub fn push(&self, local: &Store, rec: &ActionRecord) -> Result<Pushed> {
        let hashes = unique(rec.outputs.values());
        let sent: Vec<u64> = self.runtime.block_on(async {
            stream::iter(hashes)
                .map(|h| async move { self.upload(local, &h).await })
                .buffer_unordered(PARALLEL)
                .try_collect()
                .await
        })?;
        let record = serde_json::to_vec_pretty(rec)?;
        let path = self.action_path(&rec.key);
        let record_existed = self.runtime.block_on(async {
            match self.put_if_absent(&path, record.into()).await {
                Ok(()) => Ok(false),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(true),
                Err(e) => Err(self.loud(&format!("writing {path}"), e)),
            }
        })?;
        Ok(Pushed {
            objects: sent.iter().filter(|&&b| b > 0).count(),
            bytes: sent.iter().sum(),
            record_existed,
        })
    }

    async fn put_if_absent(
        &self,
        path: &RemotePath,
        payload: PutPayload,
    ) -> object_store::Result<()> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store.put_opts(path, payload, opts).await.map(|_| ())
    }

    /// One object to the remote unless it is there already; the bytes sent.
    async fn upload(&self, local: &Store, hash: &Hash) -> Result<u64> {
        let path = self.object_path(hash);
        let file = local.object_path(hash);
        let size = std::fs::metadata(&file)
            .with_context(|| format!("pushing: {} is not in the local store", file.display()))?
            .len();
        let overwrite = self.corrupt.lock().unwrap().contains(hash.as_str());
        if !overwrite {
            match self.store.head(&path).await {
                Ok(meta) if meta.size == size => return Ok(0),
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.loud(&format!("checking {path}"), e)),
            }
        }
        let mut f =
            std::fs::File::open(&file).with_context(|| format!("reading {}", file.display()))?;
        if size == 0 || size < multipart_from() {
            let mut bytes = Vec::with_capacity(size as usize);
            f.read_to_end(&mut bytes)
                .with_context(|| format!("reading {}", file.display()))?;
            // Content-addressed: a concurrent writer's object is the same bytes.
            let r = if overwrite {
                self.store.put(&path, bytes.into()).await.map(|_| ())
            } else {
                self.put_if_absent(&path, bytes.into()).await
            };
            match r {
                Ok(()) | Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(self.loud(&format!("writing {path}"), e)),
            }
        } else {
            let upload = self
                .store
                .put_multipart(&path)
                .await
                .map_err(|e| self.loud(&format!("starting an upload of {path}"), e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; PART_SIZE];
            loop {
                let n = f
                    .read(&mut buf)
                    .with_context(|| format!("reading {}", file.display()))?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(PARALLEL)
                    .await
                    .map_err(|e| self.loud(&format!("uploading {path}"), e))?;
                w.write(&buf[..n]);
            }
            w.finish()
                .await
                .map_err(|e| self.loud(&format!("finishing the upload of {path}"), e))?;
        }
        Ok(size)
    }

    /// `pipe remote check`: put (create-if-absent), a second put that must be refused, get, and
    /// delete of a probe object. Each step's outcome, in order; stops at the first failure.
    pub fn check(&self) -> Vec<(String, Result<()>)> {
        let path = self
            .root
            .clone()
            .join("pipe-check")
            .join(crate::store::temp_name("probe"));
        let body = format!("pipe remote check {}\n", crate::run::utc_now());
        let mut out = Vec::new();
        let steps: [(&str, u8); 4] = [
            ("put (create-if-absent)", 0),
            ("second put refused (conditional puts work)", 1),
            ("get (same bytes)", 2),
            ("delete", 3),
        ];
        for (name, step) in steps {
            let r: Result<()> = self.runtime.block_on(async {
                match step {
                    0 => self
                        .put_if_absent(&path, body.clone().into_bytes().into())
                        .await
                        .map_err(|e| self.loud(&format!("writing {path}"), e)),
                    1 => match self
                        .put_if_absent(&path, body.clone().into_bytes().into())
                        .await
                    {
                        Err(object_store::Error::AlreadyExists { .. })
                        | Err(object_store::Error::Precondition { .. }) => Ok(()),
                        Ok(()) => Err(anyhow!(
                            "remote {}: a create-if-absent put replaced an existing object; \
                             this store does not support conditional puts, so two writers of \
                             one key could overwrite each other",
                            self.url
                        )),
                        Err(e) => Err(self.loud(&format!("writing {path}"), e)),
                    },
                    2 => {
                        let got = match self.store.get(&path).await {
                            Ok(r) => r.bytes().await,
                            Err(e) => Err(e),
                        }
                        .map_err(|e| self.loud(&format!("reading {path}"), e))?;
                        if got.as_ref() == body.as_bytes() {
                            Ok(())
                        } else {
                            Err(anyhow!(
                                "remote {}: {path} read back different bytes",
                                self.url
                            ))
                        }
                    }
                    _ => self
                        .store
                        .delete(&path)
                        .await
                        .map_err(|e| self.loud(&format!("deleting {path}"), e)),
                }
            });
            let failed = r.is_err();
            out.push((name.to_string(), r));
            if failed {
                break;
            }
        }
        out
    }
}

enum Problem {
    Miss(String),
    Fatal(anyhow::Error),
}

fn endpoint() -> Option<String> {
    std::env::var("AWS_ENDPOINT_URL")
        .or_else(|_| std::env::var("AWS_ENDPOINT"))
        .ok()
}

/// Each hash once (an object can be several outputs).
fn unique<'a>(hashes: impl Iterator<Item = &'a Hash>) -> Vec<Hash> {
    let mut v: Vec<Hash> = hashes.cloned().collect();
    v.sort();
    v.dedup();
    v
}
