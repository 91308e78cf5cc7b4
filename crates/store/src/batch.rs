//! Write batches: many new objects made durable and visible together as one sealed *batch pack*.
//!
//! A batch writes its records into one private file in `sandbox/` (locked by its writer, so
//! `clean` leaves live work alone), hashing as it goes. [`WriteBatch::commit`] then makes the
//! whole batch durable with one `fdatasync`, and publishes it under the index's write lock:
//!
//! 1. transaction 1 reserves a fresh pack id (a pack row that is sealed with `end_bytes` equal
//!    to the header size: "reserved", invisible to readers and to maintenance);
//! 2. transaction 2 leaves out keys the index already has, writes the header (with the id) and
//!    the sealed table of the rest, `fdatasync`s, renames the file to `packs/<id>.pack`, `fsync`s
//!    the folder, and commits the object rows and the pack row.
//!
//! A crash before the rename leaves a sandbox file; one between the rename and the commit
//! leaves a reserved row and a pack file nothing points at. `clean` removes both. Because the
//! id is taken when the batch commits, a batch pack is always newer than any tombstone written
//! before it, and the object rows are inserted only where the key is new, so a key has one
//! live record.
//!
//! Versus loose files, a batch creates one file instead of one per object, needs two syncs in
//! all, and its objects are read like any packed object. The next `pack` merges batch packs
//! into a maintenance pack, so many small batches do not leave many small files.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::{Error, IoContext, Result};
use crate::format::{
    self, Footer, PackHeader, RecordChecksum, RecordHeader, RecordKind, PACK_FLAG_BATCH,
    PACK_FORMAT_VERSION, PACK_HEADER_BYTES, RECORD_HEADER_BYTES, RECORD_TRAILER_BYTES,
};
use crate::fsutil;
use crate::index::{IndexRow, PackRow, RowWrite};
use crate::key::Key;
use crate::loose::{SANDBOX_DIR, STREAM_CHUNK_BYTES};
use crate::pack::{self, PACKS_DIR};
use crate::store::Store;

/// Bytes buffered before a write to the batch file.
const WRITE_BUFFER_BYTES: usize = 4 << 20;
/// Content read into memory before a `put_reader` switches to streaming.
const IN_MEMORY_PUT_BYTES_MAX: usize = 1 << 20;

/// One record written by the batch.
struct Entry {
    key: Key,
    offset: u64,
    raw_len: u64,
}

/// New objects made durable and visible together by [`WriteBatch::commit`].
///
/// Nothing is visible or durable before the commit; dropping the batch discards it. Content is
/// stored uncompressed; the next `pack` applies the store's compression policy when it merges
/// the batch pack.
pub struct WriteBatch<'s> {
    store: &'s Store,
    path: PathBuf,
    /// Locked (flock) while the batch lives.
    file: File,
    /// End of everything written, buffered bytes included.
    len: u64,
    /// Start of the write buffer in the file.
    buf_at: u64,
    buf: Vec<u8>,
    entries: Vec<Entry>,
    written: HashSet<Key>,
    /// Keys in put order, repeats included.
    keys: Vec<Key>,
}

impl Store {
    /// Starts a batch of writes made durable and visible together by [`WriteBatch::commit`].
    pub fn batch(&self) -> Result<WriteBatch<'_>> {
        self.check_writable()?;
        let path = self
            .path()
            .join(SANDBOX_DIR)
            .join(format!("batch-{}.pack", uuid::Uuid::new_v4().simple()));
        let file = fsutil::create_locked(&path)?;
        Ok(WriteBatch {
            store: self,
            path,
            file,
            len: PACK_HEADER_BYTES as u64,
            buf_at: PACK_HEADER_BYTES as u64,
            buf: Vec::new(),
            entries: Vec::new(),
            written: HashSet::new(),
            keys: Vec::new(),
        })
    }
}

impl WriteBatch<'_> {
    pub fn put(&mut self, content: &[u8]) -> Result<Key> {
        let key = self.store.config().hash.hash(content);
        self.keys.push(key);
        if !self.written.insert(key) {
            return Ok(key);
        }
        let header = object_header(self.store, key, content.len() as u64);
        let hb = header.encode();
        let mut sum = RecordChecksum::new(&hb);
        sum.update(content);
        if self.buf.len() + content.len() > WRITE_BUFFER_BYTES {
            self.flush()?;
        }
        self.entries.push(Entry {
            key,
            offset: self.len,
            raw_len: content.len() as u64,
        });
        if content.len() > WRITE_BUFFER_BYTES {
            let at = self.len;
            self.write_at(&hb, at)?;
            self.write_at(content, at + hb.len() as u64)?;
            self.write_at(&sum.finish(), at + hb.len() as u64 + content.len() as u64)?;
            self.buf_at = at + header.record_len();
        } else {
            self.buf.extend_from_slice(&hb);
            self.buf.extend_from_slice(content);
            self.buf.extend_from_slice(&sum.finish());
        }
        self.len += header.record_len();
        Ok(key)
    }

    /// Adds the content of `r`, in constant memory whatever its size. On an error nothing of
    /// it stays in the batch, and the batch can go on.
    pub fn put_reader(&mut self, r: &mut dyn Read) -> Result<Key> {
        let mut head = Vec::new();
        (&mut *r)
            .take(IN_MEMORY_PUT_BYTES_MAX as u64 + 1)
            .read_to_end(&mut head)
            .map_err(|e| Error::io("read source for", &self.path, e))?;
        if head.len() <= IN_MEMORY_PUT_BYTES_MAX {
            return self.put(&head);
        }
        self.flush()?;
        let start = self.len;
        match self.stream(&head, r, start) {
            Ok(key) => Ok(key),
            Err(e) => {
                // Give the bytes back: the batch stays usable.
                self.file.set_len(start).at("truncate", &self.path)?;
                self.len = start;
                self.buf_at = start;
                Err(e)
            }
        }
    }

    /// Streams `head` then the rest of `r` as one record at `start` (the buffer is empty).
    fn stream(&mut self, head: &[u8], r: &mut dyn Read, start: u64) -> Result<Key> {
        let payload_at = start + RECORD_HEADER_BYTES as u64;
        let mut hasher = self.store.config().hash.hasher();
        let mut crc = crc32fast::Hasher::new();
        let mut written = 0u64;
        let mut chunk = head.to_vec();
        chunk.resize(chunk.len().max(STREAM_CHUNK_BYTES), 0);
        let mut filled = head.len();
        loop {
            if filled > 0 {
                hasher.update(&chunk[..filled]);
                crc.update(&chunk[..filled]);
                self.file
                    .write_all_at(&chunk[..filled], payload_at + written)
                    .at("write", &self.path)?;
                written += filled as u64;
            }
            filled = match r.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(Error::io("read source for", &self.path, e)),
            };
        }
        let key = hasher.finish();
        self.keys.push(key);
        if !self.written.insert(key) {
            self.file.set_len(start).at("truncate", &self.path)?;
            return Ok(key);
        }
        let header = object_header(self.store, key, written);
        let hb = header.encode();
        let mut full = crc32fast::Hasher::new();
        full.update(&hb);
        full.combine(&crc);
        self.write_at(&hb, start)?;
        self.write_at(&full.finalize().to_le_bytes(), payload_at + written)?;
        self.entries.push(Entry {
            key,
            offset: start,
            raw_len: written,
        });
        self.len = payload_at + written + RECORD_TRAILER_BYTES as u64;
        self.buf_at = self.len;
        Ok(key)
    }

    /// Number of objects put (repeats included).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Makes every object put durable and visible; returns their keys in the order put.
    pub fn commit(mut self) -> Result<Vec<Key>> {
        let store = self.store;
        let r = self.commit_inner();
        r.map_err(|e| store.note_failure(e))
    }

    fn commit_inner(&mut self) -> Result<Vec<Key>> {
        let keys = std::mem::take(&mut self.keys);
        if self.entries.is_empty() {
            return Ok(keys);
        }
        self.flush()?;
        // The bulk of the bytes is made durable before the index lock is taken.
        fsutil::datasync(&self.file, &self.path)?;
        let root = self.store.path().to_path_buf();
        let mut index = self.store.index();
        // Transaction 1: reserve an id no pack file has ever had.
        let id = {
            let on_disk = pack::pack_ids_on_disk(&root)?
                .into_iter()
                .max()
                .unwrap_or(0);
            let tx = index.begin()?;
            let id = tx.pack_id_high_water()?.max(on_disk) + 1;
            tx.put_pack(&PackRow::reserved(id))?;
            tx.set_pack_id_high_water(id)?;
            tx.commit()?;
            id
        };
        // Transaction 2: publish. Holding the write lock from here to the commit keeps `clean`
        // from mistaking the renamed file for a crash leftover.
        let tx = index.begin()?;
        let mut table: Vec<(Key, u64)> = Vec::with_capacity(self.entries.len());
        let entry_keys: Vec<Key> = self.entries.iter().map(|e| e.key).collect();
        for (e, known) in self.entries.iter().zip(tx.known(&entry_keys)?) {
            if !known {
                table.push((e.key, e.offset));
            }
        }
        if table.is_empty() {
            // Everything was stored already: nothing to publish.
            tx.remove_pack(id)?;
            return tx.commit().map(|()| keys);
        }
        table.sort_unstable();
        let encoded = format::encode_table(&table);
        let footer = Footer {
            table_offset: self.len,
            entry_count: table.len() as u64,
            table_crc: crc32fast::hash(&encoded),
        };
        let header = PackHeader {
            version: PACK_FORMAT_VERSION,
            hash: self.store.config().hash,
            flags: PACK_FLAG_BATCH,
            pack_id: id,
            container_id: self.store.config().container_id_bytes(),
        };
        self.write_at(&encoded, self.len)?;
        self.write_at(&footer.encode(), self.len + encoded.len() as u64)?;
        self.write_at(&header.encode(), 0)?;
        fsutil::datasync(&self.file, &self.path)?;
        let end_bytes = self.len + encoded.len() as u64 + format::FOOTER_BYTES as u64;
        let dest = pack::pack_path(&root, id);
        fs::rename(&self.path, &dest).at("rename into", &dest)?;
        let published = (|| {
            fsutil::fsync_dir(&root.join(PACKS_DIR))?;
            let by_key: std::collections::HashMap<Key, &Entry> =
                self.entries.iter().map(|e| (e.key, e)).collect();
            let rows: Vec<(Key, IndexRow)> = table
                .iter()
                .filter_map(|(key, _)| {
                    let e = by_key.get(key)?;
                    let row = IndexRow {
                        pack: id,
                        offset: e.offset,
                        raw_len: e.raw_len,
                        stored_len: e.raw_len,
                        flags: 0,
                    };
                    Some((*key, row))
                })
                .collect();
            tx.write_rows(RowWrite::New, &rows)?;
            tx.put_pack(&PackRow {
                id,
                sealed: true,
                end_bytes,
            })?;
            tx.commit()
        })();
        if published.is_err() {
            // Not published: take the file back out (the reserved row goes with `clean`).
            let _ = fs::remove_file(&dest);
        }
        published.map(|()| keys)
    }

    fn flush(&mut self) -> Result<()> {
        fsutil::flush_write_buffer(&self.file, &self.path, &mut self.buf, &mut self.buf_at)
    }

    fn write_at(&self, bytes: &[u8], at: u64) -> Result<()> {
        self.file.write_all_at(bytes, at).at("write", &self.path)
    }
}

impl Drop for WriteBatch<'_> {
    fn drop(&mut self) {
        // After a commit the file has moved (or was never needed): removing is a no-op then.
        let _ = fs::remove_file(&self.path);
    }
}

fn object_header(store: &Store, key: Key, raw_len: u64) -> RecordHeader {
    RecordHeader {
        kind: RecordKind::Object,
        flags: 0,
        hash: store.config().hash,
        raw_len,
        stored_len: raw_len,
        key,
    }
}
