//! Object storage (S3, Azure Blob) behind the pack-store seam: `Remote` (one bucket or container
//! and a prefix, reached through the `object_store` crate) and `RemotePacks`, the `PackStore`
//! whose packs are objects `PREFIX/packs/NAME.pack`.
//!
//! `object_store` is async; `Remote` owns a small tokio runtime and every method blocks on it,
//! so callers (replicate, FUSE threads, verify workers) stay plain threads and may call
//! concurrently. Credentials and endpoints come from each service's usual environment variables
//! (`AWS_*`, `AZURE_*`, see README: Replicas in object storage); coffre refuses to start
//! without explicit credentials rather than wait on a cloud metadata service. Every error is
//! one line (an `io::Error`; `NotFound` and `AlreadyExists` keep their kinds).
//! Reads of a replica go through `BlockCache`: aligned 1 MiB blocks of packs kept on local disk,
//! least recently used evicted past a size limit, so a mount fetches what it reads and no more.
//! Crash story: an object is written whole by one PUT or not at all; a block of the cache is
//! written to a temporary name and renamed, so a killed reader leaves no torn block.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::store::{PackInfo, PackStore, PackUpload};
use super::{VaultError, VaultResult};

/// True if `target` is a URL (`SCHEME://...`) rather than a directory: object storage, or a
/// scheme `Target::parse` refuses by name.
pub fn is_remote(target: &str) -> bool {
    target.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// `target` as a URL if it is one (see `is_remote`): a path given where a URL may stand.
pub fn remote_url(target: &std::path::Path) -> Option<&str> {
    target.to_str().filter(|t| is_remote(t))
}

/// A bucket (S3) or container (Azure) and the prefix the replica lives under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    azure: bool,
    /// `file:///DIR`: the object layout in a local directory (`bucket` unused).
    local: Option<std::path::PathBuf>,
    bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl Target {
    /// Reads `s3://BUCKET[/PREFIX]`, `azure://CONTAINER[/PREFIX]` or `file:///DIR`.
    pub fn parse(url: &str) -> VaultResult<Target> {
        let bad = |why: &str| VaultError::BadRemote {
            url: url.to_string(),
            detail: why.to_string(),
        };
        if let Some(dir) = url.strip_prefix("file://") {
            let dir = std::path::Path::new(dir);
            if !dir.is_absolute() || dir.components().any(|c| c.as_os_str() == "..") {
                return Err(bad("use file:///ABSOLUTE/DIR"));
            }
            return Ok(Target {
                url: url.to_string(),
                azure: false,
                local: Some(dir.to_path_buf()),
                bucket: String::new(),
                prefix: String::new(),
            });
        }
        let (azure, rest) = if let Some(r) = url.strip_prefix("s3://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("azure://") {
            (true, r)
        } else {
            return Err(bad(
                "use s3://BUCKET/PREFIX, azure://CONTAINER/PREFIX or file:///DIR",
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let ok_bucket = !bucket.is_empty()
            && bucket.len() <= 63
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
        if !ok_bucket {
            return Err(bad(
                "the bucket or container name must be 1-63 lowercase letters, digits, '-' or '.'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..")
            || prefix.contains("//")
            || prefix.chars().any(|c| c.is_control())
        {
            return Err(bad("the prefix must be plain path segments"));
        }
        Ok(Target {
            url: url.to_string(),
            azure,
            local: None,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

/// One object-storage location, with the runtime its client runs on.
pub struct Remote {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    target: Target,
    /// Bytes of every object this process put (the transfer, for reports).
    sent: AtomicU64,
    /// The key everything of this replica is sealed with, if it is encrypted.
    key: Option<super::seal::ReplicaKey>,
}

/// Variables any of which is a way to authenticate to S3 without a metadata service.
const AWS_CREDENTIALS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_SKIP_SIGNATURE",
];
/// Variables any of which is a way to authenticate to Azure without a metadata service.
const AZURE_CREDENTIALS: &[&str] = &[
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_TOKEN",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_STORAGE_USE_EMULATOR",
];

fn env_set(names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| std::env::var_os(n).is_some_and(|v| !v.is_empty()))
}

impl Remote {
    /// Builds the client for `target` from the environment (no request is made yet).
    pub fn connect(target: &Target) -> VaultResult<Remote> {
        let bad = |detail: String| VaultError::BadRemote {
            url: target.url.clone(),
            detail,
        };
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        // Set key by key: `with_client_options` would drop what `from_env` read (allow_http).
        use object_store::ClientConfigKey::{ConnectTimeout, Timeout};
        let client = [(ConnectTimeout, "10s"), (Timeout, "300s")];
        let store: Arc<dyn ObjectStore> = if let Some(dir) = &target.local {
            std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad(one_line(&e.to_string())))?,
            )
        } else if target.azure {
            if !env_set(AZURE_CREDENTIALS) {
                return Err(bad(
                    "no Azure credentials: set AZURE_STORAGE_ACCOUNT_NAME and \
                     AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_KEY, or \
                     AZURE_STORAGE_USE_EMULATOR=true for Azurite)"
                        .into(),
                ));
            }
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(&target.bucket)
                .with_retry(retry);
            for (k, v) in client {
                b = b.with_config(object_store::azure::AzureConfigKey::Client(k), v);
            }
            Arc::new(b.build().map_err(|e| bad(one_line(&e.to_string())))?)
        } else {
            if !env_set(AWS_CREDENTIALS) {
                return Err(bad("no S3 credentials: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY (and AWS_REGION; AWS_ENDPOINT_URL for a server \
                     other than AWS)"
                    .into()));
            }
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(&target.bucket)
                .with_retry(retry);
            for (k, v) in client {
                b = b.with_config(object_store::aws::AmazonS3ConfigKey::Client(k), v);
            }
            Arc::new(b.build().map_err(|e| bad(one_line(&e.to_string())))?)
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("coffre-objstore")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the I/O runtime: {e}")))?;
        Ok(Remote {
            rt,
            store,
            target: target.clone(),
            sent: AtomicU64::new(0),
            key: None,
        })
    }

    /// Seals (or opens) everything with `key` from now on.
    pub fn with_key(mut self, key: Option<super::seal::ReplicaKey>) -> Remote {
        self.key = key;
        self
    }

    /// The key this replica is sealed with, if any.
    pub fn key(&self) -> Option<&super::seal::ReplicaKey> {
        self.key.as_ref()
    }

    pub fn url(&self) -> &str {
        &self.target.url
    }

    /// Bytes put so far by this process.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn path(&self, key: &str) -> ObjPath {
        match self.target.prefix.as_str() {
            "" => ObjPath::from(key),
            p => ObjPath::from(format!("{p}/{key}")),
        }
    }

    /// The whole object `key`, or `None` if there is none.
    pub fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(key);
        let r = self.rt.block_on(async {
            let got = self.store.get(&path).await?;
            got.bytes().await
        });
        match r {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Bytes `start..end` of object `key`.
    pub fn get_range(&self, key: &str, start: u64, end: u64) -> io::Result<Vec<u8>> {
        let path = self.path(key);
        let r = self
            .rt
            .block_on(self.store.get_range(&path, start..end))
            .map_err(|e| self.err(e))?;
        if r.len() as u64 != end - start {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(r.to_vec())
    }

    /// The size of object `key`, or `None` if there is none.
    pub fn head(&self, key: &str) -> io::Result<Option<u64>> {
        match self.rt.block_on(self.store.head(&self.path(key))) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Writes object `key` whole. With `create`, only if it does not exist: `Ok(false)` then.
    pub fn put(&self, key: &str, data: Vec<u8>, create: bool) -> io::Result<bool> {
        let len = data.len() as u64;
        let opts = PutOptions {
            mode: if create {
                PutMode::Create
            } else {
                PutMode::Overwrite
            },
            ..PutOptions::default()
        };
        let path = self.path(key);
        let r = self
            .rt
            .block_on(self.store.put_opts(&path, PutPayload::from(data), opts));
        match r {
            Ok(_) => {
                self.sent.fetch_add(len, Ordering::Relaxed);
                Ok(true)
            }
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. })
                if create =>
            {
                Ok(false)
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Objects directly under `dir` (a key prefix without trailing `/`): (name, size, modified
    /// in seconds since the epoch).
    pub fn list(&self, dir: &str) -> io::Result<Vec<(String, u64, i64)>> {
        let path = self.path(dir);
        let listed = self
            .rt
            .block_on(self.store.list_with_delimiter(Some(&path)))
            .map_err(|e| self.err(e))?;
        let mut out: Vec<_> = listed
            .objects
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                Some((name, m.size, m.last_modified.timestamp()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Removes object `key` (none there is not an error).
    pub fn delete(&self, key: &str) -> io::Result<()> {
        match self.rt.block_on(self.store.delete(&self.path(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    fn err(&self, e: object_store::Error) -> io::Error {
        let kind = match &e {
            object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, one_line(&chain(&e)))
    }
}

/// An error and its causes, as `a: b: c` (each cause only if it adds something).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// An error message on one line, bounded (object_store's carry bodies and retry chains).
fn one_line(s: &str) -> String {
    let mut line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 400 {
        let mut cut = 400;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

/// The key of pack `name`.
pub fn pack_key(name: &str) -> String {
    format!("packs/{name}.pack")
}

/// The packs of a replica in object storage.
pub struct RemotePacks {
    remote: Arc<Remote>,
    cache: Option<BlockCache>,
    sizes: Mutex<HashMap<String, u64>>,
    /// Held for the store's life: keeps the cached catalog it serves from being cleaned.
    pin: Option<std::fs::File>,
}

impl RemotePacks {
    /// Reads go straight to the service (`cache` None) or through a block cache.
    pub fn new(remote: Arc<Remote>, cache: Option<BlockCache>) -> RemotePacks {
        RemotePacks {
            remote,
            cache,
            sizes: Mutex::new(HashMap::new()),
            pin: None,
        }
    }

    /// Keeps `pin` (a lock on the catalog snapshot this store serves) open as long as it lives.
    pub fn pinned(mut self, pin: std::fs::File) -> RemotePacks {
        self.pin = Some(pin);
        self
    }

    fn size(&self, name: &str) -> io::Result<u64> {
        if let Some(&s) = self.sizes.lock().expect("sizes lock").get(name) {
            return Ok(s);
        }
        let s = self
            .remote
            .head(&pack_key(name))?
            .ok_or(io::ErrorKind::NotFound)?;
        self.sizes
            .lock()
            .expect("sizes lock")
            .insert(name.to_string(), s);
        Ok(s)
    }
}

/// A pack gathered in memory and put whole by `finish` (packs are tens of MiB).
struct RemoteUpload {
    remote: Arc<Remote>,
    name: String,
    data: Vec<u8>,
}

impl PackUpload for RemoteUpload {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        let RemoteUpload { remote, name, data } = *self;
        remote.put(&pack_key(&name), data, false).map(|_| ())
    }

    fn abort(self: Box<Self>) {}
}

impl PackStore for RemotePacks {
    fn describe(&self) -> String {
        self.remote.url().to_string()
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn PackUpload>> {
        Ok(Box::new(RemoteUpload {
            remote: self.remote.clone(),
            name: name.to_string(),
            data: Vec::new(),
        }))
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let size = self.size(name)?;
        let end = offset + buf.len() as u64;
        if end > size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let Some(cache) = &self.cache else {
            let data = self.remote.get_range(&pack_key(name), offset, end)?;
            buf.copy_from_slice(&data);
            return Ok(());
        };
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let start = block * BLOCK;
            let data = cache.block(name, block, || {
                self.remote
                    .get_range(&pack_key(name), start, (start + BLOCK).min(size))
            })?;
            let from = (at - start) as usize;
            let upto = ((end - start) as usize).min(data.len());
            let dst = (at - offset) as usize;
            buf[dst..dst + upto - from].copy_from_slice(&data[from..upto]);
            at = start + upto as u64;
        }
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<PackInfo>> {
        let mut out = Vec::new();
        for (name, size, _) in self.remote.list("packs")? {
            if let Some(stem) = name.strip_suffix(".pack") {
                out.push(PackInfo {
                    name: stem.to_string(),
                    size,
                });
            }
        }
        Ok(out)
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        self.remote.delete(&pack_key(name))
    }

    fn quarantine(&self, _name: &str) -> io::Result<()> {
        // A pack no catalog names is an interrupted replicate's; its next run takes it.
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The unit of the block cache: ranged reads fetch whole aligned blocks.
pub const BLOCK: u64 = 1 << 20;
/// The block cache's default size limit (`COFFRE_REMOTE_CACHE_MB` changes it).
pub const DEFAULT_CACHE_MB: u64 = 1024;

/// Aligned blocks of remote packs on local disk, `DIR/PACK-BLOCK`, least recently used
/// evicted once they pass `limit` bytes. Shared by the threads of one process; several
/// processes may share the directory (a block another one evicted is fetched again).
pub struct BlockCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    /// file name -> (bytes, last use)
    blocks: HashMap<String, (u64, u64)>,
    bytes: u64,
    tick: u64,
}

impl BlockCache {
    /// Opens (creating) the cache in `dir`, taking stock of the blocks already there (oldest
    /// modified first, so they are evicted first).
    pub fn open(dir: &Path, limit: u64) -> io::Result<BlockCache> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let m = e.metadata()?;
            found.push((m.modified().ok(), name, m.len()));
        }
        found.sort();
        let mut state = CacheState::default();
        for (_, name, len) in found {
            state.tick += 1;
            state.bytes += len;
            state.blocks.insert(name, (len, state.tick));
        }
        let cache = BlockCache {
            dir: dir.to_path_buf(),
            limit,
            state: Mutex::new(state),
        };
        // Another process (or a larger limit) may have left more than this limit allows.
        cache.trim(&mut cache.state.lock().expect("cache lock"));
        Ok(cache)
    }

    /// Block `block` of pack `pack`, from disk or fetched by `fetch` (then kept).
    fn block(
        &self,
        pack: &str,
        block: u64,
        fetch: impl FnOnce() -> io::Result<Vec<u8>>,
    ) -> io::Result<Vec<u8>> {
        let name = format!("{pack}-{block}");
        let path = self.dir.join(&name);
        let known = {
            let mut st = self.state.lock().expect("cache lock");
            st.tick += 1;
            let tick = st.tick;
            st.blocks.get_mut(&name).map(|b| b.1 = tick).is_some()
        };
        if known && let Ok(data) = std::fs::read(&path) {
            return Ok(data);
        }
        let data = fetch()?;
        let tmp = self.dir.join(format!("{name}.{}.tmp", std::process::id()));
        // Renamed into place: a block file is always whole.
        if std::fs::write(&tmp, &data)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .is_ok()
        {
            self.admit(name, data.len() as u64);
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(data)
    }

    /// Counts a new block in, then trims.
    fn admit(&self, name: String, len: u64) {
        let mut st = self.state.lock().expect("cache lock");
        st.tick += 1;
        let tick = st.tick;
        if let Some((old, _)) = st.blocks.insert(name, (len, tick)) {
            st.bytes -= old;
        }
        st.bytes += len;
        self.trim(&mut st);
    }

    /// Past the limit, evicts the least recently used blocks down to three quarters of it.
    fn trim(&self, st: &mut CacheState) {
        if st.bytes <= self.limit {
            return;
        }
        let mut by_age: Vec<(u64, String, u64)> = st
            .blocks
            .iter()
            .map(|(n, (l, t))| (*t, n.clone(), *l))
            .collect();
        by_age.sort();
        for (_, n, l) in by_age {
            if st.bytes <= self.limit * 3 / 4 {
                break;
            }
            let _ = std::fs::remove_file(self.dir.join(&n));
            st.blocks.remove(&n);
            st.bytes -= l;
        }
    }

    /// Bytes the cache holds now.
    pub fn bytes(&self) -> u64 {
        self.state.lock().expect("cache lock").bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_why() {
        let t = Target::parse("s3://my-bucket/backups/host1/").unwrap();
        assert_eq!(
            (t.bucket.as_str(), t.prefix.as_str()),
            ("my-bucket", "backups/host1")
        );
        assert!(!t.azure);
        let a = Target::parse("azure://cont").unwrap();
        assert!(a.azure && a.prefix.is_empty());
        for bad in [
            "s3://",
            "s3://Upper/x",
            "azure://c/../x",
            "gs://b/x",
            "s3://b/a//c",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_block_cache_keeps_what_it_fetched_and_evicts_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 3 * 100).unwrap();
        let fetched = std::cell::Cell::new(0);
        let get = |b: u64| {
            cache
                .block("p", b, || {
                    fetched.set(fetched.get() + 1);
                    Ok(vec![b as u8; 100])
                })
                .unwrap()
        };
        assert_eq!(get(0), vec![0u8; 100]);
        assert_eq!(get(0), vec![0u8; 100]);
        assert_eq!(fetched.get(), 1, "a cached block is not fetched again");
        for b in 1..6 {
            get(b);
        }
        assert!(cache.bytes() <= 300, "{}", cache.bytes());
        assert!(
            !dir.path().join("p-0").exists(),
            "the oldest block went first"
        );
        assert!(dir.path().join("p-5").exists());
    }
}
