//! The remote store's client: `object_store` for S3 and shared folders (see `mod.rs`).
//!
//! One file (about 800 lines with its tests): every read and write here is one object_store call
//! with the same bounds and trust checks around it, and splitting them would separate a read from
//! the check that makes it safe. `check.rs` holds `pipe remote check`.

use super::{Pulled, Pushed};
use crate::store::{ActionRecord, Hash, Key, MAX_RECORD_BYTES, Store, open_regular, read_bounded};
use anyhow::{Context, Result, anyhow, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as RemotePath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion, WriteMultipart,
};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

#[path = "check.rs"]
mod check;

/// Transfers in flight at once.
const PARALLEL: usize = 8;
/// Objects at least this many MiB go up in parts (S3's multipart upload); `PIPE_REMOTE_MULTIPART_MB`
/// changes it.
const MULTIPART_FROM_MB: u64 = 64;
const PART_SIZE: usize = 16 << 20;
/// The file that `pipe remote init` writes at the remote's root: without it, a URL is not a
/// remote (a mistyped bucket or prefix, an unmounted share), which is an error, never a miss.
const MARKER: &str = "pipe-remote.json";
/// Seconds to connect, and seconds without a byte before a transfer is abandoned (retried, then
/// an error). There is no limit on a whole transfer while bytes flow: a 1.5 GB checkpoint on a
/// slow link takes what it takes. `PIPE_REMOTE_CONNECT_TIMEOUT` and `PIPE_REMOTE_STALL_TIMEOUT`
/// change them.
const CONNECT_TIMEOUT_S: f64 = 10.0;
const STALL_TIMEOUT_S: f64 = 60.0;
/// A file:// staging file (object_store writes `name#N`, then renames it) older than this is
/// left over from a killed push: `pipe remote check` removes it.
const STALE_UPLOAD: Duration = Duration::from_secs(24 * 3600);

fn multipart_from() -> u64 {
    std::env::var("PIPE_REMOTE_MULTIPART_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MULTIPART_FROM_MB)
        << 20
}

/// Seconds from the environment variable `var`, else `default`; a value that is not a positive
/// number of seconds is an error that names the variable.
fn seconds(var: &str, default: f64) -> Result<Duration> {
    match std::env::var(var) {
        Err(_) => Ok(Duration::from_secs_f64(default)),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s <= 86400.0 => Ok(Duration::from_secs_f64(s)),
            _ => bail!("{var}={v:?}: expected a number of seconds between 0 and 86400"),
        },
    }
}

/// Where the environment says what an S3 remote needs.
const S3_HELP: &str = "an s3:// remote reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
    (and AWS_SESSION_TOKEN), AWS_REGION, and AWS_ENDPOINT_URL for a store other than AWS \
    (MinIO, Ceph, moto); on EC2 without them, the instance role is used; `pipe remote check` \
    tests them";

/// Credentials the environment gives (keys, a web identity, or a container's credentials):
/// without any, object_store asks the EC2 instance metadata service for an instance role.
fn env_credentials() -> bool {
    [
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

fn metadata_disabled() -> bool {
    std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// A remote store.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    root: RemotePath,
    /// A file:// remote's folder. Its files are read directly, not through object_store: only
    /// regular files, opened without blocking and read no further than their size (a FIFO or a
    /// link to /dev/zero placed there would otherwise hang a reader or fill its disk).
    folder: Option<PathBuf>,
    runtime: tokio::runtime::Runtime,
    /// Objects found corrupt by a pull: a push from here overwrites them.
    corrupt: Mutex<HashSet<Hash>>,
    /// Objects known intact in the remote: hashed by this process as it pulled or pushed them.
    verified: Mutex<HashSet<Hash>>,
    /// Whether the remote is initialised (its marker read), found once.
    ready: OnceLock<Result<(), String>>,
}

/// A remote's action record as read, before anyone trusts it.
enum Fetched {
    Absent,
    /// It parses, and it is a true record of its key (`ActionRecord::problem`); the version read.
    Sound(ActionRecord, UpdateVersion),
    /// Unreadable, or not a true record of its key: why, and the version read (a push replaces
    /// it only if it is still that version).
    Damaged(String, UpdateVersion),
}

impl Remote {
    /// Opens `url`: `s3://bucket[/prefix]` or `file:///absolute/path`. Nothing is contacted yet;
    /// the first use checks that `pipe remote init` made it a remote.
    pub fn open(url: &str) -> Result<Remote> {
        // rustls's crypto (ring), for https endpoints; a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let connect = seconds("PIPE_REMOTE_CONNECT_TIMEOUT", CONNECT_TIMEOUT_S)?;
        let stall = seconds("PIPE_REMOTE_STALL_TIMEOUT", STALL_TIMEOUT_S)?;
        let (store, root, folder): (Arc<dyn ObjectStore>, RemotePath, Option<PathBuf>) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    bail!("remote {url:?}: no bucket name (expected s3://bucket/prefix)");
                }
                // The prefix exactly as typed: object_store's `Path::from` would percent-encode
                // what it finds odd, and other tools (and IAM policies) would not find the data.
                let root = RemotePath::parse(prefix).map_err(|e| {
                    anyhow!(
                        "remote {url:?}: the prefix {prefix:?} cannot be used as written ({e})\n\
                         help: give a prefix of non-empty segments (no `//`, `.` or `..`)"
                    )
                })?;
                if !env_credentials() && metadata_disabled() {
                    bail!(
                        "remote {url}: no credentials found: AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY are not set, and AWS_EC2_METADATA_DISABLED=true \
                         rules out an EC2 instance role\nhelp: {S3_HELP}"
                    );
                }
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(RetryConfig {
                        max_retries: 3,
                        // The budget for retrying, not for a transfer: a retry is still made after
                        // a long transfer failed.
                        retry_timeout: Duration::from_secs(300),
                        ..Default::default()
                    })
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(connect)
                            .with_read_timeout(stall)
                            .with_timeout_disabled()
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
                (Arc::new(s3), root, None)
            } else if let Some(path) = url.strip_prefix("file://") {
                let path = PathBuf::from(percent_decode(path).ok_or_else(|| {
                    anyhow!("remote {url:?}: the path has a malformed %-escape or is not UTF-8")
                })?);
                if !path.is_absolute() {
                    bail!("remote {url:?}: a file:// remote needs an absolute path (file:///path)");
                }
                if !path.is_dir() {
                    bail!(
                        "remote {url}: the folder {} does not exist (an unmounted share?)\n\
                         help: mount it, or create a new remote there with `pipe remote init`",
                        path.display()
                    );
                }
                let fs = LocalFileSystem::new_with_prefix(&path)
                    .with_context(|| format!("remote {url}"))?;
                (Arc::new(fs), RemotePath::default(), Some(path))
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
            folder,
            runtime,
            corrupt: Mutex::new(HashSet::new()),
            verified: Mutex::new(HashSet::new()),
            ready: OnceLock::new(),
        })
    }

    /// `pipe remote init`: makes `url` a remote (creating a file:// folder), or says it is one.
    pub fn init(url: &str) -> Result<String> {
        if let Some(path) = url.strip_prefix("file://")
            && let Some(path) = percent_decode(path)
            && Path::new(&path).is_absolute()
        {
            std::fs::create_dir_all(&path)
                .with_context(|| format!("remote {url}: creating {path}"))?;
        }
        let remote = Remote::open(url)?;
        let path = remote.root.clone().join(MARKER);
        let body = serde_json::to_vec_pretty(&serde_json::json!({
            "pipe_remote": 1,
            "created": crate::clock::utc_now(),
        }))?;
        remote.runtime.block_on(async {
            match remote.put_if_absent(&path, body.into()).await {
                Ok(()) => Ok(format!("remote {}: initialised", remote.url)),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    Ok(format!("remote {}: already initialised", remote.url))
                }
                Err(e) => Err(remote.loud(&format!("writing {path}"), e)),
            }
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fails unless `pipe remote init` made this a remote: a missing bucket, prefix or folder is
    /// an error like bad credentials, never an empty remote that misses every stage.
    fn ready(&self) -> Result<()> {
        let r = self.ready.get_or_init(|| {
            let path = self.root.clone().join(MARKER);
            let found = self.runtime.block_on(self.read_small(&path));
            match found {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(format!(
                    "remote {}: not a pipe remote ({MARKER} not found): the {} does not exist, \
                     or it was never initialised\nhelp: check the URL; for a new remote, run \
                     `pipe remote init` (with --remote {}); a remote pushed to by an older pipe \
                     needs it once too",
                    self.url,
                    if self.folder.is_some() {
                        "folder"
                    } else {
                        "bucket or prefix"
                    },
                    self.url
                )),
                Err(e) => Err(format!("{e:#}")),
            }
        });
        r.clone().map_err(|e| anyhow!(e))
    }

    fn object_path(&self, hash: &Hash) -> RemotePath {
        self.root
            .clone()
            .join("objects")
            .join(&hash.as_str()[..2])
            .join(&hash.as_str()[2..])
    }

    fn action_path(&self, key: &Key) -> RemotePath {
        self.root
            .clone()
            .join("actions")
            .join(format!("{key}.json"))
    }

    /// A file:// remote's file for `path`.
    fn file(&self, path: &RemotePath) -> Option<PathBuf> {
        self.folder.as_ref().map(|f| {
            path.parts()
                .fold(f.clone(), |p, part| p.join(part.as_ref()))
        })
    }

    /// A remote error as the user should see it: the URL, what failed, and what to set.
    fn loud(&self, what: &str, e: object_store::Error) -> anyhow::Error {
        let help = match &e {
            object_store::Error::PermissionDenied { .. } => {
                "the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY \
                 (or the file permissions of a file:// remote)"
                    .to_string()
            }
            _ if self.folder.is_none() => format!(
                "{S3_HELP}{}; PIPE_REMOTE_CONNECT_TIMEOUT and PIPE_REMOTE_STALL_TIMEOUT (seconds) \
                 bound a connection and a transfer that stops moving",
                endpoint()
                    .map(|e| format!(" (AWS_ENDPOINT_URL is {e})"))
                    .unwrap_or_default()
            ),
            _ => "check that the folder exists and is writable".into(),
        };
        let text = e.to_string();
        let cause = if text.contains("NoSuchBucket") {
            "the bucket does not exist: "
        } else if self.folder.is_none() && !env_credentials() {
            "no credentials found in the environment (AWS_ACCESS_KEY_ID is not set), so the EC2 \
             instance role was asked for (set AWS_EC2_METADATA_DISABLED=true off EC2): "
        } else {
            ""
        };
        anyhow!("remote {}: {what}: {cause}{text}\nhelp: {help}", self.url)
    }

    /// A small file (a record, the marker), refused unread past [`MAX_RECORD_BYTES`]; `None`
    /// when absent. A file:// entry that is not a regular file is refused without blocking.
    async fn read_small(&self, path: &RemotePath) -> Result<Option<(Vec<u8>, UpdateVersion)>> {
        if let Some(file) = self.file(path) {
            return match read_bounded(&file, MAX_RECORD_BYTES) {
                Ok(b) => Ok(Some((b, unversioned()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(anyhow!("remote {}: reading {path}: {e}", self.url)),
            };
        }
        let r = match self.store.get(path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.loud(&format!("reading {path}"), e)),
        };
        if r.meta.size > MAX_RECORD_BYTES {
            bail!(
                "remote {}: {path} has {} bytes, more than the {MAX_RECORD_BYTES} a record may \
                 have: refused unread",
                self.url,
                r.meta.size
            );
        }
        let version = UpdateVersion {
            e_tag: r.meta.e_tag.clone(),
            version: r.meta.version.clone(),
        };
        let bytes = r
            .bytes()
            .await
            .map_err(|e| self.loud(&format!("reading {path}"), e))?;
        Ok(Some((bytes.to_vec(), version)))
    }

    /// The remote's record for `key`, judged.
    async fn fetch(&self, key: &Key) -> Result<Fetched> {
        let path = self.action_path(key);
        let (bytes, version) = match self.read_small(&path).await {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Fetched::Absent),
            // A record that is too big or not a file is damage to repair, not an outage.
            Err(e) if self.folder.is_some() || e.to_string().contains("refused unread") => {
                return Ok(Fetched::Damaged(format!("{e:#}"), unversioned()));
            }
            Err(e) => return Err(e),
        };
        let rec: ActionRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                return Ok(Fetched::Damaged(
                    format!("not a valid record: {e}"),
                    version,
                ));
            }
        };
        match rec.problem(key) {
            None => Ok(Fetched::Sound(rec, version)),
            Some(why) => Ok(Fetched::Damaged(
                format!("not a true record of its key: {why}"),
                version,
            )),
        }
    }

    /// The remote's action record for `key` (not its outputs), if it has a true one; a damaged
    /// one is a miss, with a warning.
    pub fn action(&self, key: &Key) -> Result<Option<ActionRecord>> {
        self.ready()?;
        match self.runtime.block_on(self.fetch(key))? {
            Fetched::Absent => Ok(None),
            Fetched::Sound(rec, _) => Ok(Some(rec)),
            Fetched::Damaged(why, _) => {
                tracing::warn!(
                    "remote {}: the record of {} is ignored: {why}",
                    self.url,
                    key.short()
                );
                Ok(None)
            }
        }
    }

    /// Why `rec`'s outputs cannot all be pulled (one is missing, or not a readable file), if they
    /// cannot; for `pipe status`, which predicts a pull only where one would succeed.
    pub fn lacks(&self, rec: &ActionRecord) -> Result<Option<String>> {
        self.ready()?;
        self.runtime.block_on(self.lacks_async(rec))
    }

    /// Looks `key` up and downloads the outputs its record names that `local` lacks, each
    /// re-hashed before it enters `local`. The record itself is not written locally.
    pub fn pull(&self, local: &Store, key: &Key) -> Result<Pulled> {
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

    /// One object into the local store, or why not. No more bytes are read than the object's
    /// size (its file's, or the response's Content-Length).
    async fn download(&self, local: &Store, hash: &Hash) -> Result<(), Problem> {
        let path = self.object_path(hash);
        let mut w = local.writer().map_err(Problem::Fatal)?;
        if let Some(file) = self.file(&path) {
            let (f, len) = match open_regular(&file) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Problem::Miss(format!(
                        "object {} named by the remote record is missing",
                        hash.short()
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(Problem::Miss(format!(
                        "object {} in the remote was refused unread: {e}",
                        hash.short()
                    )));
                }
                Err(e) => {
                    return Err(Problem::Fatal(anyhow!(
                        "remote {}: reading {}: {e}",
                        self.url,
                        file.display()
                    )));
                }
            };
            std::io::copy(&mut f.take(len), &mut w).map_err(|e| {
                Problem::Fatal(anyhow!(
                    "remote {}: reading {}: {e}",
                    self.url,
                    file.display()
                ))
            })?;
        } else {
            let got = match self.store.get(&path).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(Problem::Miss(format!(
                        "object {} named by the remote record is missing",
                        hash.short()
                    )));
                }
                Err(e) => return Err(Problem::Fatal(self.loud(&format!("reading {path}"), e))),
            };
            let size = got.meta.size;
            let mut body = got.into_stream();
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| Problem::Fatal(self.loud(&format!("reading {path}"), e)))?;
                if w.len() + chunk.len() as u64 > size {
                    return Err(Problem::Miss(format!(
                        "object {} from the remote sent more than its {size} bytes",
                        hash.short()
                    )));
                }
                w.write_all(&chunk)
                    .map_err(|e| Problem::Fatal(anyhow!(e)))?;
            }
        }
        match w.commit_expecting(hash) {
            Ok(_) => {
                self.verified.lock().unwrap().insert(hash.clone());
                Ok(())
            }
            Err(e) => {
                self.corrupt.lock().unwrap().insert(hash.clone());
                Err(Problem::Miss(format!(
                    "object {} from the remote was rejected: {e}",
                    hash.short()
                )))
            }
        }
    }

    /// Uploads `rec`'s outputs that the remote lacks or holds damaged, then `rec` with a
    /// create-if-absent put. A record already there is kept if it is sound and its objects are
    /// there; otherwise (unreadable, not a true record, objects missing) it is replaced by `rec`,
    /// whose objects were just checked, with a put conditional on the version that was read.
    pub fn push(&self, local: &Store, rec: &ActionRecord) -> Result<Pushed> {
        self.ready()?;
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
        let (record_existed, record_repaired) = self.runtime.block_on(async {
            match self.put_if_absent(&path, record.clone().into()).await {
                Ok(()) => return Ok((false, None)),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {}
                Err(e) => return Err(self.loud(&format!("writing {path}"), e)),
            }
            let (why, version) = match self.fetch(&rec.key).await? {
                Fetched::Sound(theirs, version) => match self.lacks_async(&theirs).await? {
                    None => return Ok((true, None)),
                    Some(why) => (format!("it names {why}"), version),
                },
                Fetched::Damaged(why, version) => (why, version),
                // Deleted since: ours goes in as a new record.
                Fetched::Absent => (String::new(), unversioned()),
            };
            self.replace(&path, record.into(), version)
                .await
                .map(|replaced| match replaced {
                    true => (false, Some(why)),
                    false => (true, None),
                })
        })?;
        Ok(Pushed {
            objects: sent.iter().filter(|&&b| b > 0).count(),
            bytes: sent.iter().sum(),
            record_existed,
            record_repaired,
        })
    }

    async fn lacks_async(&self, rec: &ActionRecord) -> Result<Option<String>> {
        for h in unique(rec.outputs.values()) {
            if self.verified.lock().unwrap().contains(&h) {
                continue;
            }
            let path = self.object_path(&h);
            let why = match self.file(&path) {
                Some(file) => match open_regular(&file) {
                    Ok(_) => None,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("missing".into()),
                    Err(e) => Some(e.to_string()),
                },
                None => match self.store.head(&path).await {
                    Ok(_) => None,
                    Err(object_store::Error::NotFound { .. }) => Some("missing".to_string()),
                    Err(e) => return Err(self.loud(&format!("checking {path}"), e)),
                },
            };
            if let Some(why) = why {
                return Ok(Some(format!("object {} ({why})", h.short())));
            }
        }
        Ok(None)
    }

    /// Replaces a damaged record: on S3, only if it is still the version read (another pusher
    /// may have repaired it first: then `false`). A shared folder has no conditional
    /// replacement; its put is an atomic rename, so a reader sees one whole record or the other.
    async fn replace(
        &self,
        path: &RemotePath,
        payload: PutPayload,
        version: UpdateVersion,
    ) -> Result<bool> {
        let mode =
            if self.folder.is_none() && (version.e_tag.is_some() || version.version.is_some()) {
                PutMode::Update(version)
            } else {
                PutMode::Overwrite
            };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self.store.put_opts(path, payload, opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.loud(&format!("replacing {path}"), e)),
        }
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

    /// Whether the remote's copy of `hash` is intact: read back and hashed (a size that matches
    /// proves nothing; a writer to the bucket can put any bytes under any name).
    async fn intact(&self, hash: &Hash) -> Result<bool> {
        let path = self.object_path(hash);
        let mut hasher = blake3::Hasher::new();
        if let Some(file) = self.file(&path) {
            let Ok((f, len)) = open_regular(&file) else {
                return Ok(false);
            };
            if hasher.update_reader(f.take(len)).is_err() {
                return Ok(false);
            }
        } else {
            let got = match self.store.get(&path).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(self.loud(&format!("reading {path}"), e)),
            };
            let mut body = got.into_stream();
            while let Some(chunk) = body.next().await {
                hasher.update(&chunk.map_err(|e| self.loud(&format!("reading {path}"), e))?);
            }
        }
        Ok(Hash::from(hasher.finalize()) == *hash)
    }

    /// One object to the remote unless an intact copy is there already; the bytes sent.
    async fn upload(&self, local: &Store, hash: &Hash) -> Result<u64> {
        if self.verified.lock().unwrap().contains(hash) {
            return Ok(0);
        }
        let path = self.object_path(hash);
        let file = local.object_path(hash);
        let size = std::fs::metadata(&file)
            .with_context(|| format!("pushing: {} is not in the local store", file.display()))?
            .len();
        let known_bad = self.corrupt.lock().unwrap().contains(hash);
        let overwrite = known_bad
            || match self.store.head(&path).await {
                Ok(meta) if meta.size == size => {
                    if self.intact(hash).await? {
                        self.verified.lock().unwrap().insert(hash.clone());
                        return Ok(0);
                    }
                    true
                }
                Ok(_) => true,
                Err(object_store::Error::NotFound { .. }) => false,
                Err(e) => return Err(self.loud(&format!("checking {path}"), e)),
            };
        if overwrite {
            tracing::warn!(
                "remote {}: object {} is damaged there; replacing it",
                self.url,
                hash.short()
            );
        }
        let mut f =
            std::fs::File::open(&file).with_context(|| format!("reading {}", file.display()))?;
        if size == 0 || size < multipart_from() {
            let mut bytes = Vec::with_capacity(size as usize);
            f.read_to_end(&mut bytes)
                .with_context(|| format!("reading {}", file.display()))?;
            let r = if overwrite {
                self.store.put(&path, bytes.into()).await.map(|_| ())
            } else {
                self.put_if_absent(&path, bytes.into()).await
            };
            match r {
                Ok(()) => {}
                // Written meanwhile by another pusher: kept only if it is intact.
                Err(object_store::Error::AlreadyExists { .. }) if self.intact(hash).await? => {}
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let bytes = std::fs::read(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    self.store
                        .put(&path, bytes.into())
                        .await
                        .map_err(|e| self.loud(&format!("replacing {path}"), e))?;
                }
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
            let sent: Result<()> = async {
                loop {
                    let n = f
                        .read(&mut buf)
                        .with_context(|| format!("reading {}", file.display()))?;
                    if n == 0 {
                        return Ok(());
                    }
                    w.wait_for_capacity(PARALLEL)
                        .await
                        .map_err(|e| self.loud(&format!("uploading {path}"), e))?;
                    w.write(&buf[..n]);
                }
            }
            .await;
            if let Err(e) = sent {
                // No parts left behind in the bucket for an upload that cannot finish.
                let _ = w.abort().await;
                return Err(e);
            }
            w.finish()
                .await
                .map_err(|e| self.loud(&format!("finishing the upload of {path}"), e))?;
        }
        self.verified.lock().unwrap().insert(hash.clone());
        Ok(size)
    }
}

/// No version known: a replacement is unconditional.
fn unversioned() -> UpdateVersion {
    UpdateVersion {
        e_tag: None,
        version: None,
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

/// `%XX` escapes decoded (a file:// URL's `%20` is a space); `None` for a malformed escape or
/// bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Each hash once (an object can be several outputs).
fn unique<'a>(hashes: impl Iterator<Item = &'a Hash>) -> Vec<Hash> {
    let mut v: Vec<Hash> = hashes.cloned().collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_percent_decoded() {
        assert_eq!(
            percent_decode("/tmp/my%20dir").as_deref(),
            Some("/tmp/my dir")
        );
        assert_eq!(percent_decode("/t/%C3%BCn").as_deref(), Some("/t/ün"));
        assert_eq!(percent_decode("/plain").as_deref(), Some("/plain"));
        for bad in ["/x%2", "/x%zz", "/x%ff"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }
}
