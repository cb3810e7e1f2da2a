//! The embedded store's write-ahead log.
//!
//! A redb commit that is durable at once (`Durability::Immediate`) rewrites a dozen pages
//! across the file and syncs them: ≈ 0.3–0.4 ms here, for every batch, on the path of every
//! API write. Instead each batch is committed to redb without a sync (`Durability::None`:
//! visible to readers, lost by a crash) after its changes — the exact table mutations — were
//! appended to this log and the log synced: one small sequential write of already-allocated
//! blocks. Every so often (when the writer is idle, or the log is half full) a durable redb
//! commit makes everything before it safe and the log starts over.
//!
//! Layout: a file of fixed size, zero-filled when created so appends never change its
//! metadata. Records follow each other from offset 0: length of the payload (u32), CRC-32 of
//! everything after the CRC (u32), epoch (u64), sequence number (u64), payload. Each
//! checkpoint starts a new epoch (recorded in the same durable redb commit) and writes from
//! offset 0 again; on open, the records of the epoch redb has, from sequence 0 on, are applied
//! again, stopping at the first that is torn, stale (another epoch) or out of sequence. Applying
//! them is idempotent: each mutation sets or removes a value outright, so replaying a
//! prefix of them that redb already had changes nothing.
//!
//! Appends go through a second descriptor opened `O_DIRECT | O_DSYNC` where the file system
//! allows it: the write itself is durable when it returns (one device write with FUA or a
//! flush, no page cache and no separate `fdatasync`: 55–70 µs less per record on the VMs
//! measured). Direct writes cover whole blocks, so the log keeps the current partial block
//! in memory and writes it again, with the new record, zero-padded to the block's end; the
//! bytes before the record are the ones already there. Where direct I/O is refused (tmpfs,
//! some overlay file systems), records are written through the page cache and synced.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// One change to one of the store's tables, as logged and replayed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Mutation<'a> {
    KvPut(&'a str, &'a [u8]),
    KvDel(&'a str),
    LogPut(i64, &'a [u8]),
    /// Remove every log entry below this revision (compaction).
    LogRetainFrom(i64),
    LeasePut(i64, i64),
    LeaseDel(i64),
    MetaPut(&'a str, i64),
}

const HEADER: usize = 4 + 4 + 8 + 8;

/// The unit of a direct write: offsets, lengths and the memory written from are multiples of
/// it (4 KiB covers devices with 512-byte and 4 KiB logical blocks).
const BLOCK: usize = 4096;

/// The mutations of one batch, encoded.
#[derive(Default)]
pub(crate) struct Payload(Vec<u8>);

impl Payload {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn push(&mut self, m: &Mutation<'_>) {
        let out = &mut self.0;
        let bytes = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(b);
        };
        match *m {
            Mutation::KvPut(k, v) => {
                out.push(1);
                bytes(out, k.as_bytes());
                bytes(out, v);
            }
            Mutation::KvDel(k) => {
                out.push(2);
                bytes(out, k.as_bytes());
            }
            Mutation::LogPut(rev, v) => {
                out.push(3);
                out.extend_from_slice(&rev.to_le_bytes());
                bytes(out, v);
            }
            Mutation::LogRetainFrom(rev) => {
                out.push(4);
                out.extend_from_slice(&rev.to_le_bytes());
            }
            Mutation::LeasePut(id, ttl) => {
                out.push(5);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&ttl.to_le_bytes());
            }
            Mutation::LeaseDel(id) => {
                out.push(6);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Mutation::MetaPut(k, v) => {
                out.push(7);
                bytes(out, k.as_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// The mutations of a payload, in order; `None` when it is malformed.
pub(crate) fn decode(mut raw: &[u8]) -> Option<Vec<Mutation<'_>>> {
    fn take<'a>(raw: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (raw.get(..n)?, raw.get(n..)?);
        *raw = rest;
        Some(head)
    }
    fn int(raw: &mut &[u8]) -> Option<i64> {
        Some(i64::from_le_bytes(take(raw, 8)?.try_into().ok()?))
    }
    fn bytes<'a>(raw: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(take(raw, 4)?.try_into().ok()?);
        take(raw, usize::try_from(len).ok()?)
    }
    fn text<'a>(raw: &mut &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(bytes(raw)?).ok()
    }
    let mut out = Vec::new();
    while let Some(&tag) = raw.first() {
        raw = &raw[1..];
        out.push(match tag {
            1 => Mutation::KvPut(text(&mut raw)?, bytes(&mut raw)?),
            2 => Mutation::KvDel(text(&mut raw)?),
            3 => Mutation::LogPut(int(&mut raw)?, bytes(&mut raw)?),
            4 => Mutation::LogRetainFrom(int(&mut raw)?),
            5 => Mutation::LeasePut(int(&mut raw)?, int(&mut raw)?),
            6 => Mutation::LeaseDel(int(&mut raw)?),
            7 => Mutation::MetaPut(text(&mut raw)?, int(&mut raw)?),
            _ => return None,
        });
    }
    Some(out)
}

/// The log file, positioned after the last record of the current epoch.
pub(crate) struct Wal {
    file: File,
    /// The same file opened `O_DIRECT | O_DSYNC`, when the file system allows it.
    direct: Option<File>,
    /// The current epoch's bytes in the block `offset` is in, before `offset` (direct mode).
    tail: Vec<u8>,
    /// Reused for each direct write; written from a block-aligned slice of it.
    buf: Vec<u8>,
    size: u64,
    offset: u64,
    epoch: u64,
    seq: u64,
}

impl Wal {
    /// Opens (or creates, zero-filled to `size` bytes) the log at `path`.
    pub(crate) fn open(path: &Path, size: u64) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < size {
            // Real zeroed blocks, not a sparse file: appending then changes no metadata, so
            // syncing a record is one data write.
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            while at < size {
                let n = usize::try_from((size - at).min(zeros.len() as u64)).unwrap_or(zeros.len());
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let size = len.max(size);
        let direct = if size.is_multiple_of(BLOCK as u64) {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                .open(path)
                .inspect_err(|e| tracing::debug!(error = %e, "write-ahead log: no direct I/O here"))
                .ok()
        } else {
            None
        };
        Ok(Self {
            file,
            direct,
            tail: Vec::with_capacity(BLOCK),
            buf: Vec::new(),
            size,
            offset: 0,
            epoch: 0,
            seq: 0,
        })
    }

    /// The payloads of `epoch`'s records, in order, up to the first torn, stale or
    /// out-of-sequence one.
    pub(crate) fn read_epoch(&self, epoch: u64) -> io::Result<Vec<Vec<u8>>> {
        let mut all = vec![0u8; usize::try_from(self.size).unwrap_or(0)];
        self.file.read_exact_at(&mut all, 0)?;
        let mut out = Vec::new();
        let mut at = 0usize;
        while let Some(head) = all.get(at..at + HEADER) {
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            let Some(body) = all.get(at + 8..at + HEADER + len) else {
                break;
            };
            if crc32fast::hash(body) != crc {
                break;
            }
            let rec_epoch = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
            let rec_seq = u64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
            if rec_epoch != epoch || rec_seq != out.len() as u64 {
                break;
            }
            out.push(body[16..].to_vec());
            at += HEADER + len;
        }
        Ok(out)
    }

    /// Starts `epoch`: the next record goes to offset 0. Call only once everything logged
    /// so far is durable elsewhere.
    pub(crate) fn restart(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.offset = 0;
        self.seq = 0;
        self.tail.clear();
    }

    /// Whether appends are written with direct I/O.
    #[cfg(test)]
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Bytes of records since the epoch started.
    pub(crate) fn used(&self) -> u64 {
        self.offset
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.size
    }

    /// Whether a record of this payload fits.
    pub(crate) fn fits(&self, payload: &Payload) -> bool {
        self.offset + (HEADER + payload.0.len()) as u64 <= self.size
    }

    /// Appends a record and syncs it: once this returns, the payload survives a crash.
    pub(crate) fn append(&mut self, payload: &Payload) -> io::Result<()> {
        let len = u32::try_from(payload.0.len())
            .map_err(|_| io::Error::other("write-ahead log record too large"))?;
        let mut rec = Vec::with_capacity(HEADER + payload.0.len());
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(&[0; 4]);
        rec.extend_from_slice(&self.epoch.to_le_bytes());
        rec.extend_from_slice(&self.seq.to_le_bytes());
        rec.extend_from_slice(&payload.0);
        let crc = crc32fast::hash(&rec[8..]);
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
        if self.direct.is_some() {
            match self.append_direct(&rec) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // The device wants another alignment: the page cache from now on.
                    tracing::warn!(error = %e, "write-ahead log: direct write refused; using buffered writes");
                    self.direct = None;
                }
                other => other?,
            }
        }
        if self.direct.is_none() {
            self.file.write_all_at(&rec, self.offset)?;
            self.file.sync_data()?;
        }
        self.offset += rec.len() as u64;
        self.seq += 1;
        Ok(())
    }

    /// Writes `rec` at `offset` as whole blocks: the block's earlier bytes again, the record,
    /// zeros to the end of its last block. Durable on return (`O_DSYNC`).
    fn append_direct(&mut self, rec: &[u8]) -> io::Result<()> {
        let Some(file) = &self.direct else {
            return Err(io::Error::other("write-ahead log: no direct descriptor"));
        };
        let start = self.offset - self.tail.len() as u64;
        let used = self.tail.len() + rec.len();
        let padded = used.next_multiple_of(BLOCK);
        self.buf.clear();
        self.buf.resize(padded + BLOCK, 0);
        let skip = self.buf.as_ptr().align_offset(BLOCK);
        let Some(block) = self.buf.get_mut(skip..skip + padded) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        block[..self.tail.len()].copy_from_slice(&self.tail);
        block[self.tail.len()..used].copy_from_slice(rec);
        file.write_all_at(block, start)?;
        let keep = used % BLOCK;
        self.tail.clear();
        self.tail.extend_from_slice(&block[used - keep..used]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Mutation, Payload, Wal, decode};

    fn payload(ms: &[Mutation<'_>]) -> Payload {
        let mut p = Payload::default();
        for m in ms {
            p.push(m);
        }
        p
    }

    #[test]
    fn mutations_round_trip() {
        let ms = [
            Mutation::KvPut("/a/b", b"value"),
            Mutation::KvDel("/a/c"),
            Mutation::LogPut(7, b"\x00\x01"),
            Mutation::LogRetainFrom(5),
            Mutation::LeasePut(3, 10_000),
            Mutation::LeaseDel(2),
            Mutation::MetaPut("revision", 7),
        ];
        let p = payload(&ms);
        assert_eq!(decode(&p.0).expect("decodes"), ms);
        assert!(decode(&p.0[..p.0.len() - 1]).is_none(), "truncated");
        assert!(decode(&[9]).is_none(), "unknown tag");
    }

    #[test]
    fn replay_stops_at_a_torn_or_stale_record_and_a_new_epoch_hides_the_old_one() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("wal");
        let mut wal = Wal::open(&path, 64 << 10)?;
        wal.restart(1);
        for i in 0..5 {
            wal.append(&payload(&[Mutation::MetaPut("revision", i)]))?;
        }
        let reopened = Wal::open(&path, 64 << 10)?;
        let got = reopened.read_epoch(1)?;
        assert_eq!(got.len(), 5);
        assert_eq!(
            decode(&got[4]).expect("decodes"),
            [Mutation::MetaPut("revision", 4)]
        );
        assert!(reopened.read_epoch(2)?.is_empty(), "no record of epoch 2 yet");

        // A new epoch overwrites from the start: only its records count.
        wal.restart(2);
        wal.append(&payload(&[Mutation::KvDel("/x")]))?;
        let got = Wal::open(&path, 64 << 10)?.read_epoch(2)?;
        assert_eq!(got.len(), 1, "old epoch's records after it are not replayed");
        assert!(Wal::open(&path, 64 << 10)?.read_epoch(1)?.is_empty());

        // A torn record (a crash mid-write) ends the replay before it.
        wal.append(&payload(&[Mutation::KvDel("/y")]))?;
        let used = wal.used();
        let f = std::fs::OpenOptions::new().write(true).open(&path)?;
        std::os::unix::fs::FileExt::write_all_at(&f, b"\xff", used - 1)?;
        let got = Wal::open(&path, 64 << 10)?.read_epoch(2)?;
        assert_eq!(got.len(), 1);
        Ok(())
    }

    /// Whether `dir` is on ext4 or xfs, by the longest mount point above it in
    /// `/proc/self/mountinfo` (mount point: 5th field; file system type: first after `-`).
    fn on_ext4_or_xfs(dir: &std::path::Path) -> bool {
        let Ok(dir) = dir.canonicalize() else {
            return false;
        };
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return false;
        };
        info.lines()
            .filter_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let mount = left.split(' ').nth(4)?;
                let fstype = right.split(' ').next()?;
                dir.starts_with(mount).then_some((mount.len(), fstype))
            })
            .max_by_key(|(len, _)| *len)
            .is_some_and(|(_, fstype)| matches!(fstype, "ext4" | "xfs"))
    }

    #[test]
    fn records_across_block_boundaries_replay_whole() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("wal");
        let mut wal = Wal::open(&path, 256 << 10)?;
        // Direct I/O wherever the file system allows it: ext4 and xfs do (tmpfs does not).
        if on_ext4_or_xfs(dir.path()) {
            assert!(wal.is_direct(), "ext4 and xfs take direct writes");
        }
        wal.restart(3);
        // Sizes that start and end records at every offset within a block, some longer
        // than a block.
        let values: Vec<Vec<u8>> = (0..60u8).map(|i| vec![i; 37 * usize::from(i) + 1]).collect();
        for (i, v) in values.iter().enumerate() {
            wal.append(&payload(&[Mutation::KvPut(&format!("/k/{i}"), v)]))?;
        }
        let got = Wal::open(&path, 256 << 10)?.read_epoch(3)?;
        assert_eq!(got.len(), values.len());
        for (i, (raw, v)) in got.iter().zip(&values).enumerate() {
            assert_eq!(
                decode(raw).expect("decodes"),
                [Mutation::KvPut(&format!("/k/{i}"), v)]
            );
        }
        // A new epoch from offset 0 overwrites what was there.
        wal.restart(4);
        wal.append(&payload(&[Mutation::KvDel("/k/0")]))?;
        let reopened = Wal::open(&path, 256 << 10)?;
        assert_eq!(reopened.read_epoch(4)?.len(), 1);
        assert!(reopened.read_epoch(3)?.is_empty());
        Ok(())
    }

    #[test]
    fn a_record_that_does_not_fit_is_refused_up_front() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut wal = Wal::open(&dir.path().join("wal"), 4096)?;
        wal.restart(1);
        let big = vec![0u8; 5000];
        let p = payload(&[Mutation::KvPut("/big", &big)]);
        assert!(!wal.fits(&p));
        let small = payload(&[Mutation::KvDel("/s")]);
        assert!(wal.fits(&small));
        wal.append(&small)?;
        assert!(wal.used() > 0 && wal.used() < wal.capacity());
        Ok(())
    }
}
