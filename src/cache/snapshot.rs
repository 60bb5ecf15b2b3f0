//! The snapshot file: the store written out at shutdown and read back at
//! start, so a restart or a deploy does not send every dashboard's queries
//! to the warehouse at once (`[cache] snapshot_file`).
//!
//! Layout: the 8-byte [`MAGIC`], one format byte ([`FORMAT`]), then one
//! record per entry — `length: u32 LE` (never 0), `crc32(payload): u32 LE`,
//! `payload` (an entry in the `cache::codec` encoding) — and an end record:
//! a zero length and the number of entries as `u64 LE`. Nothing may follow.
//!
//! Writing is atomic: a temporary file in the same directory, fsynced, then
//! renamed over the old snapshot (and the directory fsynced), so a crash
//! mid-write leaves the previous snapshot or none, never half of one.
//! Loading streams: one record in memory at a time, records heavier than
//! the store accepts are skipped unread, and entries go through
//! [`Store::insert`], so `maxsize` and `max_bytes` hold throughout. Loading
//! is all or nothing: a foreign, damaged or truncated file empties the
//! store again and the proxy starts cold.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{error, info, warn};

use super::codec::{self, Clock, DecodeError};
use super::store::{Refused, Store};
use super::vary::VaryIndex;
use crate::tls::error_chain;

/// First bytes of every snapshot file. The CR LF catches a file mangled by
/// a text-mode copy.
pub const MAGIC: &[u8; 8] = b"DCSNAP\r\n";

/// The record framing written by [`write`] (entries carry their own
/// codec version inside).
pub const FORMAT: u8 = 1;

/// How the configuration names the setting, for messages.
pub const FIELD: &str = "cache.snapshot_file (DASHCACHE_SNAPSHOT_FILE, --snapshot-file)";

/// Why the snapshot cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{FIELD}: {} is a directory, not a file", path.display())]
    IsDirectory { path: PathBuf },
    #[error("{FIELD}: cannot write in {}", dir.display())]
    NotWritable {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the snapshot {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why a snapshot file was not loaded (the proxy then starts cold).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the snapshot")]
    Io(#[from] io::Error),
    #[error("not a dashcache snapshot")]
    Foreign,
    #[error("unknown snapshot format {0}")]
    UnknownFormat(u8),
    #[error("the snapshot ends inside record {record}")]
    Truncated { record: u64 },
    #[error("record {record} fails its checksum")]
    Checksum { record: u64 },
    #[error("record {record} does not decode")]
    Decode {
        record: u64,
        #[source]
        source: DecodeError,
    },
    #[error("the snapshot announces {announced} records but holds {found}")]
    Count { announced: u64, found: u64 },
    #[error("bytes follow the snapshot's end record")]
    Trailing,
}

impl LoadError {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::Foreign => "foreign",
            Self::UnknownFormat(_) => "unknown-format",
            Self::Truncated { .. } => "truncated",
            Self::Checksum { .. } => "checksum",
            Self::Decode { .. } => "decode",
            Self::Count { .. } => "count",
            Self::Trailing => "trailing",
        }
    }
}

/// What [`write`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub entries: u64,
    pub bytes: u64,
}

/// What [`load`] did with a file's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Entries now in the store.
    pub entries: u64,
    /// Entries past their TTL and every stale window.
    pub expired: u64,
    /// Entries heavier than the store now accepts.
    pub too_large: u64,
}

/// Loads the snapshot at `path` at start, logging what happened; a file
/// that does not load leaves the store empty (the proxy starts cold).
pub fn restore(store: &Store, vary: &VaryIndex, path: &Path) {
    let started = Instant::now();
    match load(store, vary, path, &Clock::now()) {
        Ok(Some(loaded)) => info!(
            path = %path.display(),
            entries = loaded.entries,
            expired = loaded.expired,
            too_large = loaded.too_large,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot loaded"
        ),
        Ok(None) => info!(path = %path.display(), "no snapshot yet; starting with an empty cache"),
        Err(err) => warn!(
            path = %path.display(),
            reason = err.as_str(),
            error = %error_chain(&err),
            "snapshot not loaded; starting with an empty cache"
        ),
    }
}

/// Writes the snapshot at shutdown, logging what happened.
pub fn save(store: &Store, path: &Path) {
    let started = Instant::now();
    match write(store, path, &Clock::now()) {
        Ok(written) => info!(
            path = %path.display(),
            entries = written.entries,
            bytes = written.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        ),
        Err(err) => error!(
            path = %path.display(),
            error = %error_chain(&err),
            "snapshot not written; the next start is cold"
        ),
    }
}

/// Fails unless a snapshot can be written at `path`: its directory must
/// exist and take a new file (tried for real, since permission bits say
/// nothing for root or on read-only mounts), and `path` must not be a
/// directory. Run at start, so the mistake shows then and not at shutdown.
pub fn check_writable(path: &Path) -> Result<(), WriteError> {
    if path.is_dir() {
        return Err(WriteError::IsDirectory {
            path: path.to_owned(),
        });
    }
    let probe = sibling(path, "check");
    let not_writable = |source| WriteError::NotWritable {
        dir: directory(path).to_owned(),
        source,
    };
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(not_writable)?;
    fs::remove_file(&probe).map_err(not_writable)
}

/// Writes every entry still useful at `clock` (fresh, or inside a stale
/// window) to `path`, atomically. Entries go coldest first, so that a
/// smaller store loading the file keeps the hottest.
pub fn write(store: &Store, path: &Path, clock: &Clock) -> Result<Written, WriteError> {
    let temp = sibling(path, "tmp");
    let io_error = |source| WriteError::Io {
        path: path.to_owned(),
        source,
    };
    let result = write_records(store, &temp, clock).and_then(|written| {
        fs::rename(&temp, path)?;
        // The rename is durable once the directory is; a filesystem that
        // cannot sync directories still renamed atomically.
        if let Ok(dir) = File::open(directory(path)) {
            let _ = dir.sync_all();
        }
        Ok(written)
    });
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(io_error)
}

fn write_records(store: &Store, temp: &Path, clock: &Clock) -> io::Result<Written> {
    let file = File::create(temp)?;
    let mut out = BufWriter::new(file);
    out.write_all(MAGIC)?;
    out.write_all(&[FORMAT])?;
    let mut entries = store.entries();
    entries.retain(|e| clock.mono < e.keep_until());
    entries.sort_by_key(|e| e.hits.load(Ordering::Relaxed));
    let mut bytes = 0u64;
    for entry in &entries {
        let payload = codec::encode(entry, clock);
        let Ok(len) = u32::try_from(payload.len()) else {
            continue;
        };
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&crc32fast::hash(&payload).to_le_bytes())?;
        out.write_all(&payload)?;
        bytes += u64::from(len);
    }
    let count = entries.len() as u64;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&count.to_le_bytes())?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    Ok(Written {
        entries: count,
        bytes,
    })
}

/// Loads the snapshot at `path` into `store` (and the `Vary` names of its
/// entries into `vary`), placing its times against `clock`. `Ok(None)`
/// when there is no file. On any error the store is emptied again.
pub fn load(
    store: &Store,
    vary: &VaryIndex,
    path: &Path,
    clock: &Clock,
) -> Result<Option<Loaded>, LoadError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let result = read_records(store, vary, &mut BufReader::new(file), clock);
    if result.is_err() {
        store.clear();
        vary.clear();
    }
    result.map(Some)
}

fn read_records(
    store: &Store,
    vary: &VaryIndex,
    input: &mut impl Read,
    clock: &Clock,
) -> Result<Loaded, LoadError> {
    let mut magic = [0u8; 8];
    read_exact_or(input, &mut magic, LoadError::Foreign)?;
    if &magic != MAGIC {
        return Err(LoadError::Foreign);
    }
    let mut format = [0u8; 1];
    read_exact_or(input, &mut format, LoadError::Foreign)?;
    if format[0] != FORMAT {
        return Err(LoadError::UnknownFormat(format[0]));
    }
    let generation = store.generation();
    let mut loaded = Loaded::default();
    let mut record = 0u64;
    let mut payload = Vec::new();
    loop {
        let truncated = || LoadError::Truncated { record };
        let mut head = [0u8; 4];
        read_exact_or(input, &mut head, truncated())?;
        let len = u32::from_le_bytes(head);
        if len == 0 {
            let mut count = [0u8; 8];
            read_exact_or(input, &mut count, truncated())?;
            let announced = u64::from_le_bytes(count);
            if announced != record {
                return Err(LoadError::Count {
                    announced,
                    found: record,
                });
            }
            if input.read(&mut [0u8; 1])? != 0 {
                return Err(LoadError::Trailing);
            }
            return Ok(loaded);
        }
        read_exact_or(input, &mut head, truncated())?;
        let crc = u32::from_le_bytes(head);
        if u64::from(len) > store.max_entry_bytes() {
            // Cannot be stored (the limits shrank since it was written):
            // checked as it streams past, never held.
            let mut hasher = crc32fast::Hasher::new();
            let copied = io::copy(
                &mut input.take(u64::from(len)),
                &mut HashWriter(&mut hasher),
            )?;
            if copied != u64::from(len) {
                return Err(truncated());
            }
            if hasher.finalize() != crc {
                return Err(LoadError::Checksum { record });
            }
            loaded.too_large += 1;
            record += 1;
            continue;
        }
        payload.clear();
        // Grows as bytes arrive: a damaged length cannot reserve memory
        // the file does not back.
        input.take(u64::from(len)).read_to_end(&mut payload)?;
        if payload.len() != len as usize {
            return Err(truncated());
        }
        if crc32fast::hash(&payload) != crc {
            return Err(LoadError::Checksum { record });
        }
        let entry = codec::decode(&payload, clock)
            .map_err(|source| LoadError::Decode { record, source })?;
        record += 1;
        if clock.mono >= entry.keep_until() {
            loaded.expired += 1;
            continue;
        }
        let (key, base, names) = (entry.key, entry.base, entry.vary.clone());
        match store.insert(key, Arc::new(entry), generation) {
            Ok(()) => {
                if names.is_some() {
                    vary.record(base, names);
                }
                loaded.entries += 1;
            }
            Err(Refused::TooLarge) => loaded.too_large += 1,
            // Nothing clears the store while it loads at start.
            Err(Refused::Outdated) => {}
        }
    }
}

/// `read_exact`, with `missing` for an input that ends first.
fn read_exact_or(
    input: &mut impl Read,
    buf: &mut [u8],
    missing: LoadError,
) -> Result<(), LoadError> {
    match input.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Err(missing),
        Err(err) => Err(err.into()),
    }
}

struct HashWriter<'a>(&'a mut crc32fast::Hasher);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A hidden file next to `path`, unique to this process.
fn sibling(path: &Path, purpose: &str) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "snapshot".into(), |n| n.to_string_lossy());
    directory(path).join(format!(".{name}.{purpose}.{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::CacheKey;
    use crate::cache::stale::StaleWindows;
    use crate::cache::store::{Entry, Lookup};
    use crate::cache::StoredHeaders;
    use bytes::Bytes;
    use http::StatusCode;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    const HOUR: Duration = Duration::from_secs(3600);

    fn key(i: u8) -> CacheKey {
        CacheKey::from_bytes([i; 16])
    }

    fn entry(i: u8, body_len: usize, now: Instant, ttl: Duration) -> Arc<Entry> {
        Arc::new(Entry {
            key: key(i),
            base: key(i),
            vary: None,
            status: StatusCode::OK,
            headers: StoredHeaders::default(),
            body: Bytes::from(vec![i; body_len]),
            route: Arc::from("get_metrics"),
            description: format!("get_metrics POST /api/metrics {{\"n\":{i}}}"),
            stored_at: now,
            expires_at: now + ttl,
            stale: StaleWindows::default(),
            initial_age: 0,
            upstream_time: Duration::from_millis(10),
            hits: AtomicU64::new(u64::from(i)),
            replay: None,
        })
    }

    fn filled(now: Instant) -> Store {
        let store = Store::new(100, 1 << 20, 64 << 10);
        for i in 1..=5 {
            store.insert(key(i), entry(i, 100, now, HOUR), 0).unwrap();
        }
        store
    }

    fn clock() -> Clock {
        Clock::now()
    }

    #[test]
    fn a_written_store_loads_back_with_its_remaining_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.snap");
        let clock = clock();
        let store = filled(clock.mono);
        let written = write(&store, &path, &clock).unwrap();
        assert_eq!(written.entries, 5);

        let later = Clock {
            wall: clock.wall + Duration::from_secs(60),
            mono: Instant::now(),
        };
        let restored = Store::new(100, 1 << 20, 64 << 10);
        let vary = VaryIndex::new(64);
        let loaded = load(&restored, &vary, &path, &later).unwrap().unwrap();
        assert_eq!(loaded.entries, 5);
        let Lookup::Fresh(entry) = restored.get(&key(3), later.mono) else {
            panic!("entry 3 not fresh after load");
        };
        assert_eq!(entry.body, Bytes::from(vec![3; 100]));
        assert_eq!(entry.ttl_left(later.mono), HOUR - Duration::from_secs(60));
        assert_eq!(entry.age(later.mono), 60);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn expired_entries_are_neither_written_nor_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.snap");
        let clock = clock();
        let store = filled(clock.mono);
        let written = write(&store, &path, &clock).unwrap();
        assert_eq!(written.entries, 5);
        // Two hours later every entry (one hour, no stale window) is gone.
        let later = Clock {
            wall: clock.wall + 2 * HOUR,
            mono: clock.mono,
        };
        let restored = Store::new(100, 1 << 20, 64 << 10);
        let loaded = load(&restored, &VaryIndex::new(64), &path, &later)
            .unwrap()
            .unwrap();
        assert_eq!(loaded.expired, 5);
        assert!(restored.is_empty());
        let empty = write(&restored, &path, &later).unwrap();
        assert_eq!(empty.entries, 0);
    }

    #[test]
    fn a_missing_file_is_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(100, 1 << 20, 64 << 10);
        let path = dir.path().join("none.snap");
        assert_eq!(
            load(&store, &VaryIndex::new(64), &path, &clock()).unwrap(),
            None
        );
    }

    #[test]
    fn foreign_damaged_and_truncated_files_load_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.snap");
        let clock = clock();
        write(&filled(clock.mono), &path, &clock).unwrap();
        let good = fs::read(&path).unwrap();

        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        let mut trailing = good.clone();
        trailing.push(0);
        let cases: [(&str, Vec<u8>, &str); 5] = [
            ("foreign", b"{\"not\":\"a snapshot\"}".to_vec(), "foreign"),
            ("empty", Vec::new(), "foreign"),
            ("truncated", good[..good.len() - 20].to_vec(), "truncated"),
            ("flipped", flipped, "checksum"),
            ("trailing", trailing, "trailing"),
        ];
        for (name, bytes, kind) in cases {
            fs::write(&path, bytes).unwrap();
            let store = Store::new(100, 1 << 20, 64 << 10);
            let err = load(&store, &VaryIndex::new(64), &path, &clock).unwrap_err();
            assert_eq!(err.as_str(), kind, "{name}: {err}");
            assert!(store.is_empty(), "{name}: store emptied again");
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.snap");
        let clock = clock();
        write(&filled(clock.mono), &path, &clock).unwrap();
        let good = fs::read(&path).unwrap();
        for len in 0..good.len() {
            let store = Store::new(100, 1 << 20, 64 << 10);
            assert!(
                read_records(&store, &VaryIndex::new(64), &mut &good[..len], &clock).is_err(),
                "length {len}"
            );
        }
    }

    #[test]
    fn a_smaller_store_keeps_its_bounds_and_skips_heavy_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.snap");
        let clock = clock();
        let store = Store::new(1000, 64 << 20, 1 << 20);
        for i in 0..200u8 {
            let body = if i == 0 { 200_000 } else { 1000 };
            store
                .insert(key(i), entry(i, body, clock.mono, HOUR), 0)
                .unwrap();
        }
        write(&store, &path, &clock).unwrap();
        let small = Store::new(50, 1 << 20, 16 << 10);
        let loaded = load(&small, &VaryIndex::new(64), &path, &clock)
            .unwrap()
            .unwrap();
        assert_eq!(loaded.too_large, 1);
        assert!(small.len() <= 50);
        assert!(small.bytes() <= 1 << 20);
    }

    #[test]
    fn an_unwritable_directory_is_named() {
        let path = Path::new("/nonexistent-dashcache-dir/cache.snap");
        let err = check_writable(path).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("cache.snapshot_file"), "{message}");
        assert!(message.contains("/nonexistent-dashcache-dir"), "{message}");
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_writable(dir.path()),
            Err(WriteError::IsDirectory { .. })
        ));
        check_writable(&dir.path().join("cache.snap")).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
