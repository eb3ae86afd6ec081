//! The asset library (data class `assets`): uploaded images and saved outputs, sealed
//! at rest with the owner's data key.
//!
//! An upload streams through [`blobs`]: each piece is hashed and sealed into a
//! temporary file as it arrives, so a large file is never held in memory. The sealed
//! file is then opened again to read the image's header and decode it for a 256 px
//! thumbnail (sealed too). Only then does one write transaction move both files into
//! place and record the asset, its blob reference and the account's storage use, with
//! the quota checked inside it. Files are placed inside that write, so a reference
//! never names a missing file; a crash before the commit leaves at most a file no
//! asset refers to, which the upkeep job ([`Library::collect_garbage`]) removes.
//!
//! Blobs are shared by reference count within one account (the same file uploaded
//! twice is stored once); a blob's files are removed when its last asset goes.

pub mod blobs;
mod routes;

pub use routes::routes;

use crate::config::Live;
use crate::crypto::{DataKey, Keyring};
use crate::http::ApiError;
use crate::imaging::{self, Format, IntakeError, JpegEnd, Limits};
use crate::store::{Class, Decl, ReadTx, Reader, Store, StoreError, Table, TimedKey, now_ms};
use actix_web::http::StatusCode;
use blobs::{BlobError, BlobReader, Blobs, Kind, Written};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// Assets, keyed `account / time / random` (the id is what follows `account/`).
const ASSETS: Table<Vec<u8>, Asset> = Table::new("assets", Class::Assets);
/// Blobs, keyed `account / address`, with how many assets refer to each.
const BLOB_REFS: Table<Vec<u8>, BlobRef> = Table::new("asset_blobs", Class::Assets);
/// Bytes each account's blobs take (originals and thumbnails).
const USED: Table<String, u64> = Table::new("asset_usage", Class::Assets);

/// The tables of this capability and their classes.
pub const TABLES: [Decl; 3] = [ASSETS.decl(), BLOB_REFS.decl(), USED.decl()];

/// The longest asset name, in characters.
const MAX_NAME: usize = 200;
/// The most tags on one asset, and the longest tag.
const MAX_TAGS: usize = 20;
const MAX_TAG: usize = 40;
/// The longest alt text stored on an asset.
const MAX_ALT: usize = 1000;
/// The most assets one bulk request names.
pub const MAX_BULK: usize = 500;
/// Quality of thumbnails (JPEG).
const THUMB_QUALITY: u8 = 80;

/// Where an asset came from. (Stored in the store's compact form; the API shows it
/// as [`routes::SourceView`].)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AssetSource {
    /// Uploaded by a person.
    Upload,
    /// Made by `/v1/images/generations` with this model, and saved.
    Generated { model: String },
    /// Saved by a skill run.
    Skill { skill: String, run: String },
    /// Imported (from an export or a migration).
    Imported,
}

/// One asset's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Asset {
    pub id: String,
    pub account: String,
    pub name: String,
    pub media_type: String,
    /// Bytes of the original.
    pub bytes: u64,
    pub width: u32,
    pub height: u32,
    pub tags: Vec<String>,
    pub alt_text: Option<String>,
    /// The language of the alt text (BCP-47).
    pub alt_language: Option<String>,
    pub source: AssetSource,
    /// The blob's address (a keyed hash; see [`blobs`]).
    pub address: String,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// A blob and the assets that refer to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct BlobRef {
    refs: u32,
    /// Bytes of the original and of the thumbnail (plaintext).
    bytes: u64,
    thumb_bytes: u64,
}

impl BlobRef {
    fn total(&self) -> u64 {
        self.bytes + self.thumb_bytes
    }
}

fn blob_key(account: &str, address: &str) -> Vec<u8> {
    let mut k = TimedKey::prefix(account);
    k.extend_from_slice(address.as_bytes());
    k
}

/// Why a library request failed.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("no asset `{0}` in your library")]
    NotFound(String),
    #[error(
        "this needs {need} more bytes, and your library holds {used} of its {quota} bytes; delete assets you no longer need, or ask an admin to raise [library] quota_mib"
    )]
    Quota { need: u64, used: u64, quota: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Image(#[from] IntakeError),
    #[error("this account's data key is gone; its assets cannot be opened")]
    NoDataKey,
    #[error("{0}")]
    Blob(#[from] BlobError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<crate::crypto::CryptoError> for LibraryError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        LibraryError::Blob(BlobError::Crypto(e))
    }
}

impl From<LibraryError> for ApiError {
    fn from(e: LibraryError) -> ApiError {
        match e {
            LibraryError::NotFound(_) => ApiError::not_found(e.to_string()),
            LibraryError::Quota { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "quota_exceeded",
                e.to_string(),
            ),
            LibraryError::Invalid(m) => ApiError::bad_request("invalid_field", m),
            LibraryError::Image(i) => i.into(),
            LibraryError::NoDataKey => ApiError::forbidden("account_erased", e.to_string()),
            LibraryError::Blob(b) => ApiError::internal(format!("asset storage: {b}")),
            LibraryError::Store(s) => s.into(),
        }
    }
}

/// Changes to an asset's metadata; what is left out stays.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    pub name: Option<String>,
    pub tags: Option<Vec<String>>,
    /// The alt text (empty: the image is decorative).
    pub alt_text: Option<String>,
    /// Its language (BCP-47), with `alt_text`.
    pub alt_language: Option<String>,
}

/// How to sort a listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    #[default]
    Created,
    Name,
    Bytes,
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Only assets with every one of these tags.
    pub tags: Vec<String>,
    /// Only assets whose name contains this (any case).
    pub name: Option<String>,
    pub sort: Sort,
    pub ascending: bool,
    pub offset: usize,
    pub limit: usize,
}

/// One page of a listing.
#[derive(Clone, Debug)]
pub struct Listing {
    pub items: Vec<Asset>,
    /// Assets that match, over every page.
    pub total: usize,
    pub used_bytes: u64,
    pub quota_bytes: Option<u64>,
}

/// What [`Library::verify`] found.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Blobs read whole.
    pub checked: u64,
    /// Bytes read.
    pub bytes: u64,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
    /// Files no asset refers to (the upkeep job removes them).
    pub orphans: u64,
}

/// What [`Library::collect_garbage`] removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub orphan_files: u64,
    pub abandoned_uploads: u64,
    pub bytes: u64,
}

/// A piece of an upload, from the request to the thread that seals it. The upload
/// counts only once `End` arrives: a stream that stops without it was cut off.
pub enum Piece {
    Data(bytes::Bytes),
    End,
}

/// Sends an upload's pieces.
pub type PieceSender = tokio::sync::mpsc::Sender<Piece>;

/// An upload sealed in temporary files, ready to be recorded.
struct Prepared {
    original: Written,
    thumbnail: Written,
    format: Format,
    width: u32,
    height: u32,
}

/// The asset library; cheap to clone.
#[derive(Clone)]
pub struct Library {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    keyring: Keyring,
    live: Arc<Live>,
    blobs: Blobs,
}

/// A file name a person can keep: no folders, no control characters, not too long;
/// `image.EXT` (from the media type) when nothing is left.
pub fn clean_name(name: &str, media_type: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| {
            !c.is_control() && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .take(MAX_NAME)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim().to_string();
    if cleaned.is_empty() {
        let ext = media_type.rsplit('/').next().unwrap_or("img");
        format!("image.{ext}")
    } else {
        cleaned
    }
}

fn clean_tags(tags: &[String]) -> Result<Vec<String>, LibraryError> {
    let mut out: Vec<String> = Vec::new();
    for t in tags {
        let t: String = t.chars().filter(|c| !c.is_control()).collect();
        let t = t.trim().to_lowercase();
        if t.is_empty() {
            continue;
        }
        if t.chars().count() > MAX_TAG {
            return Err(LibraryError::Invalid(format!(
                "a tag may have at most {MAX_TAG} characters"
            )));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.len() > MAX_TAGS {
        return Err(LibraryError::Invalid(format!(
            "an asset may have at most {MAX_TAGS} tags"
        )));
    }
    Ok(out)
}

/// A blocking task that panicked or was cancelled: an internal failure, never the
/// caller's.
fn task_ended(e: tokio::task::JoinError) -> LibraryError {
    LibraryError::Blob(BlobError::Invalid(format!("a storage task ended: {e}")))
}

fn asset_key(account: &str, id: &str) -> Result<Vec<u8>, LibraryError> {
    TimedKey::of_id(account, id)
        .filter(|_| id.len() == 24)
        .ok_or_else(|| LibraryError::NotFound(id.chars().take(40).collect()))
}

impl Library {
    /// The library over an open store; blobs live in the store's data dir.
    pub fn new(store: Store, keyring: Keyring, live: Arc<Live>) -> Library {
        let blobs = Blobs::new(store.dir());
        Library {
            inner: Arc::new(Inner {
                store,
                keyring,
                live,
                blobs,
            }),
        }
    }

    /// The blob store.
    pub fn blobs(&self) -> &Blobs {
        &self.inner.blobs
    }

    fn config(&self) -> crate::config::LibraryConfig {
        self.inner.live.get().library.clone()
    }

    fn limits(&self) -> (Limits, u32) {
        let c = self.config();
        (
            Limits {
                max_bytes: c.max_file_bytes,
                max_pixels: c.max_pixels,
            },
            c.thumbnail_size,
        )
    }

    fn quota(&self) -> Option<u64> {
        let mib = self.config().quota_mib;
        (mib > 0).then(|| mib.saturating_mul(1 << 20))
    }

    async fn data_key(&self, account: &str) -> Result<DataKey, LibraryError> {
        let ring = self.inner.keyring.clone();
        let a = account.to_string();
        self.inner
            .store
            .read(move |r| ring.data_key(r, &a).map_err(LibraryError::from))
            .await?
            .ok_or(LibraryError::NoDataKey)
    }

    /// Starts an upload for `account`: send its pieces (then [`Piece::End`]) to the
    /// returned sender, then await the handle for the new asset.
    pub async fn upload(
        &self,
        account: &str,
        name: String,
        tags: Vec<String>,
        source: AssetSource,
    ) -> Result<(PieceSender, Upload), LibraryError> {
        let tags = clean_tags(&tags)?;
        let key = self.data_key(account).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let (limits, thumb) = self.limits();
        let blobs = self.inner.blobs.clone();
        let a = account.to_string();
        let sealing =
            tokio::task::spawn_blocking(move || prepare(&blobs, &key, &a, rx, limits, thumb));
        Ok((
            tx,
            Upload {
                library: self.clone(),
                account: account.to_string(),
                name,
                tags,
                source,
                sealing,
            },
        ))
    }

    /// Saves bytes already in memory (a generated image) as an asset.
    pub async fn save_bytes(
        &self,
        account: &str,
        name: String,
        tags: Vec<String>,
        source: AssetSource,
        bytes: Vec<u8>,
    ) -> Result<Asset, LibraryError> {
        let (tx, upload) = self.upload(account, name, tags, source).await?;
        // The sealing thread may stop early (bad input); its answer says why.
        if tx.send(Piece::Data(bytes.into())).await.is_ok() {
            let _ = tx.send(Piece::End).await;
        }
        drop(tx);
        upload.finish().await
    }

    /// Records a prepared upload: places its files and writes the asset, inside one
    /// write that checks the quota.
    async fn record(
        &self,
        account: String,
        name: String,
        tags: Vec<String>,
        source: AssetSource,
        p: Prepared,
    ) -> Result<Asset, LibraryError> {
        let now = now_ms();
        let key = TimedKey::new(&account, now)?;
        let asset = Asset {
            id: key.id.clone(),
            account: account.clone(),
            name: clean_name(&name, p.format.media_type()),
            media_type: p.format.media_type().to_string(),
            bytes: p.original.bytes,
            width: p.width,
            height: p.height,
            tags,
            alt_text: None,
            alt_language: None,
            source,
            address: p.original.address.clone(),
            created_ms: now,
            updated_ms: now,
        };
        let quota = self.quota();
        let blobs = self.inner.blobs.clone();
        let original = p.original.staged.path().to_path_buf();
        let thumbnail = p.thumbnail.staged.path().to_path_buf();
        let thumb_bytes = p.thumbnail.bytes;
        let stored = asset.clone();
        let done = self
            .inner
            .store
            .write(move |tx| {
                let a = &stored.account;
                let bk = blob_key(a, &stored.address);
                match tx.get(&BLOB_REFS, &bk)? {
                    Some(mut b) => {
                        b.refs += 1;
                        tx.insert(&BLOB_REFS, &bk, &b)?;
                    }
                    None => {
                        let b = BlobRef {
                            refs: 1,
                            bytes: stored.bytes,
                            thumb_bytes,
                        };
                        let used = tx.get(&USED, a)?.unwrap_or(0);
                        if let Some(quota) = quota
                            && used + b.total() > quota
                        {
                            return Err(LibraryError::Quota {
                                need: b.total(),
                                used,
                                quota,
                            });
                        }
                        blobs.place(&original, a, &stored.address, Kind::Original)?;
                        blobs.place(&thumbnail, a, &stored.address, Kind::Thumbnail)?;
                        tx.insert(&BLOB_REFS, &bk, &b)?;
                        tx.insert(&USED, a, &(used + b.total()))?;
                    }
                }
                tx.insert(&ASSETS, &key.key, &stored)?;
                Ok(())
            })
            .await;
        // The staged files go now: placed (renamed away) or not needed (same content).
        drop(p);
        done.map(|()| asset)
    }

    /// One page of `account`'s assets.
    pub async fn list(&self, account: &str, q: Query) -> Result<Listing, LibraryError> {
        let prefix = TimedKey::prefix(account);
        let a = account.to_string();
        let (all, used) = self
            .inner
            .store
            .read(move |r| -> Result<_, StoreError> {
                let rows = r.scan_prefix(&ASSETS, &prefix, usize::MAX)?;
                Ok((rows, r.get(&USED, &a)?.unwrap_or(0)))
            })
            .await?;
        let needle = q.name.as_deref().map(str::to_lowercase);
        let mut items: Vec<Asset> = all
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| q.tags.iter().all(|t| a.tags.contains(t)))
            .filter(|a| {
                needle
                    .as_deref()
                    .is_none_or(|n| a.name.to_lowercase().contains(n))
            })
            .collect();
        // Keys are in time order already; the other sorts keep it as the tie-break.
        match q.sort {
            Sort::Created => {}
            Sort::Name => items.sort_by_key(|a| a.name.to_lowercase()),
            Sort::Bytes => items.sort_by_key(|a| a.bytes),
        }
        if !q.ascending {
            items.reverse();
        }
        let total = items.len();
        let items = items.into_iter().skip(q.offset).take(q.limit).collect();
        Ok(Listing {
            items,
            total,
            used_bytes: used,
            quota_bytes: self.quota(),
        })
    }

    /// One asset of `account`.
    pub async fn get(&self, account: &str, id: &str) -> Result<Asset, LibraryError> {
        let k = asset_key(account, id)?;
        let id = id.to_string();
        self.inner
            .store
            .read(move |r| r.get(&ASSETS, &k))
            .await?
            .ok_or(LibraryError::NotFound(id))
    }

    /// Opens the original or the thumbnail of an asset for reading.
    pub async fn open(
        &self,
        account: &str,
        id: &str,
        kind: Kind,
    ) -> Result<(Asset, BlobReader), LibraryError> {
        // One snapshot on the blocking pool: the record, the key, and the file's header.
        let k = asset_key(account, id)?;
        let (ring, blobs) = (self.inner.keyring.clone(), self.inner.blobs.clone());
        let (a, id) = (account.to_string(), id.to_string());
        self.inner
            .store
            .read(move |r| {
                let asset = r.get(&ASSETS, &k)?.ok_or(LibraryError::NotFound(id))?;
                let key = ring.data_key(r, &a)?.ok_or(LibraryError::NoDataKey)?;
                let reader = blobs.open(&key, &a, &asset.address, kind)?;
                Ok((asset, reader))
            })
            .await
    }

    /// The original of an asset, whole, in memory (for alt text, which reads it whole
    /// anyway); refused when it is over `max_bytes`.
    pub async fn read_original(
        &self,
        account: &str,
        id: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, LibraryError> {
        let (asset, mut reader) = self.open(account, id, Kind::Original).await?;
        if asset.bytes > max_bytes {
            return Err(IntakeError::TooLarge {
                size: asset.bytes,
                limit: max_bytes,
            }
            .into());
        }
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(asset.bytes as usize);
            std::io::Read::read_to_end(&mut reader, &mut out)
                .map_err(|e| BlobError::Invalid(format!("the asset cannot be read: {e}")))?;
            Ok(out)
        })
        .await
        .map_err(task_ended)?
    }

    /// Changes an asset's name, tags or alt text.
    pub async fn update(
        &self,
        account: &str,
        id: &str,
        patch: Patch,
    ) -> Result<Asset, LibraryError> {
        let k = asset_key(account, id)?;
        let tags = patch.tags.as_deref().map(clean_tags).transpose()?;
        if let Some(name) = &patch.name
            && name.trim().is_empty()
        {
            return Err(LibraryError::Invalid("`name` may not be empty".into()));
        }
        let alt = patch
            .alt_text
            .map(|t| t.trim().chars().take(MAX_ALT).collect::<String>());
        if let Some(l) = &patch.alt_language
            && !crate::alt_text::prompt::valid_language(l)
        {
            return Err(LibraryError::Invalid(format!(
                "`alt_language` must be a BCP-47 tag such as `en`, not `{}`",
                l.chars().take(40).collect::<String>()
            )));
        }
        let id = id.to_string();
        self.inner
            .store
            .write(move |tx| {
                let mut a = tx
                    .get(&ASSETS, &k)?
                    .ok_or_else(|| LibraryError::NotFound(id.clone()))?;
                if let Some(name) = &patch.name {
                    a.name = clean_name(name, &a.media_type);
                }
                if let Some(tags) = &tags {
                    a.tags = tags.clone();
                }
                if let Some(alt) = &alt {
                    a.alt_text = Some(alt.clone());
                    a.alt_language = patch.alt_language.clone().or(a.alt_language);
                }
                a.updated_ms = now_ms();
                tx.insert(&ASSETS, &k, &a)?;
                Ok(a)
            })
            .await
    }

    /// Deletes assets of `account` (all or none: an unknown id deletes nothing) and
    /// removes blobs no asset refers to any more; returns the bytes freed on disk.
    pub async fn delete(&self, account: &str, ids: &[String]) -> Result<u64, LibraryError> {
        if ids.len() > MAX_BULK {
            return Err(LibraryError::Invalid(format!(
                "name at most {MAX_BULK} assets at once"
            )));
        }
        let keys = ids
            .iter()
            .map(|id| asset_key(account, id).map(|k| (id.clone(), k)))
            .collect::<Result<Vec<_>, _>>()?;
        let a = account.to_string();
        let unreferenced = self
            .inner
            .store
            .write(move |tx| {
                let mut gone = Vec::new();
                for (id, k) in &keys {
                    let Some(asset) = tx.get(&ASSETS, k)? else {
                        return Err(LibraryError::NotFound(id.clone()));
                    };
                    tx.remove(&ASSETS, k)?;
                    let bk = blob_key(&a, &asset.address);
                    let Some(mut b) = tx.get(&BLOB_REFS, &bk)? else {
                        continue;
                    };
                    b.refs = b.refs.saturating_sub(1);
                    if b.refs == 0 {
                        tx.remove(&BLOB_REFS, &bk)?;
                        let used = tx.get(&USED, &a)?.unwrap_or(0);
                        tx.insert(&USED, &a, &used.saturating_sub(b.total()))?;
                        gone.push(asset.address);
                    } else {
                        tx.insert(&BLOB_REFS, &bk, &b)?;
                    }
                }
                Ok::<_, LibraryError>(gone)
            })
            .await?;
        self.unlink_unreferenced(account, unreferenced).await
    }

    /// Removes the files of blobs that no asset refers to. Run as a write, after the
    /// write that dropped the references, so it cannot race an upload of the same
    /// content: uploads place files inside their own write.
    async fn unlink_unreferenced(
        &self,
        account: &str,
        addresses: Vec<String>,
    ) -> Result<u64, LibraryError> {
        if addresses.is_empty() {
            return Ok(0);
        }
        let blobs = self.inner.blobs.clone();
        let a = account.to_string();
        self.inner
            .store
            .write(move |tx| {
                let mut freed = 0;
                for address in &addresses {
                    if tx.get(&BLOB_REFS, &blob_key(&a, address))?.is_none() {
                        freed += blobs.remove(&a, address)?;
                    }
                }
                Ok(freed)
            })
            .await
    }

    /// Bytes `account`'s assets take, and the quota.
    pub async fn usage(&self, account: &str) -> Result<(u64, Option<u64>), LibraryError> {
        let a = account.to_string();
        let used = self
            .inner
            .store
            .read(move |r| r.get(&USED, &a))
            .await?
            .unwrap_or(0);
        Ok((used, self.quota()))
    }

    /// Reads every blob whole: each must open (authentic, uncut) and hash to its
    /// address; each file must belong to a blob.
    pub async fn verify(&self) -> Result<VerifyReport, LibraryError> {
        let ring = self.inner.keyring.clone();
        let blobs = self.inner.blobs.clone();
        self.inner
            .store
            .read(move |r| verify_in(r, &ring, &blobs))
            .await
    }

    /// Removes blob files no asset refers to, and temporary files of uploads that
    /// were cut off (by a crash: a live upload's file is never touched), when older
    /// than `[library] gc_grace`.
    pub async fn collect_garbage(&self) -> Result<GcReport, LibraryError> {
        let grace = self.config().gc_grace.get();
        let blobs = self.inner.blobs.clone();
        // On the blocking pool: the walk, and abandoned uploads (no record names those).
        let (mut report, candidates) = tokio::task::spawn_blocking(move || {
            let mut report = GcReport::default();
            let mut candidates = Vec::new();
            for f in blobs.walk()?.into_iter().filter(|f| f.age >= grace) {
                if f.account != ".tmp" {
                    let address = f.file.trim_end_matches(".thumb").to_string();
                    candidates.push((f.account, address, f.path));
                } else if !blobs.in_flight(&f.path)
                    && let Some(len) = blobs::remove_file(&f.path)?
                {
                    report.abandoned_uploads += 1;
                    report.bytes += len;
                }
            }
            Ok::<_, LibraryError>((report, candidates))
        })
        .await
        .map_err(task_ended)??;
        for batch in candidates.chunks(200) {
            let batch = batch.to_vec();
            let (files, bytes) = self
                .inner
                .store
                .write(move |tx| {
                    let (mut files, mut bytes) = (0u64, 0u64);
                    for (account, address, path) in &batch {
                        if tx.get(&BLOB_REFS, &blob_key(account, address))?.is_some() {
                            continue;
                        }
                        if let Some(len) = blobs::remove_file(path)? {
                            files += 1;
                            bytes += len;
                        }
                    }
                    Ok::<_, LibraryError>((files, bytes))
                })
                .await?;
            report.orphan_files += files;
            report.bytes += bytes;
        }
        let root = self.inner.blobs.root().to_path_buf();
        tokio::task::spawn_blocking(move || remove_empty_dirs(&root))
            .await
            .map_err(task_ended)?;
        Ok(report)
    }

    /// Removes an erased account's blob folder (its data key is already destroyed, so
    /// the files could not be opened anyway).
    pub async fn remove_account_files(&self, account: &str) -> Result<(), LibraryError> {
        let blobs = self.inner.blobs.clone();
        let a = account.to_string();
        tokio::task::spawn_blocking(move || blobs.remove_account(&a))
            .await
            .map_err(task_ended)??;
        Ok(())
    }

    /// Writes each original of `account` from the snapshot `r` through `add`
    /// (`assets/<id>-<name>` and a reader of its plaintext); returns how many.
    pub fn export_files(
        &self,
        r: &ReadTx,
        account: &str,
        add: &mut dyn FnMut(&str, &mut dyn std::io::Read) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let prefix = TimedKey::prefix(account);
        let Some(key) = self
            .inner
            .keyring
            .data_key(r, account)
            .map_err(|e| StoreError::Db(e.to_string()))?
        else {
            return Ok(0);
        };
        let mut after: Option<Vec<u8>> = None;
        let mut n = 0;
        loop {
            let start = after.clone().unwrap_or_else(|| prefix.clone());
            let rows = r.scan_prefix(&ASSETS, &start, 200)?;
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|(k, _)| Some(k) != after.as_ref())
                .collect();
            let Some((last, _)) = rows.last() else {
                break;
            };
            after = Some(last.clone());
            for (_, asset) in rows {
                let mut reader = self
                    .inner
                    .blobs
                    .open(&key, account, &asset.address, Kind::Original)
                    .map_err(|e| StoreError::Db(format!("asset {}: {e}", asset.id)))?;
                add(&format!("assets/{}-{}", asset.id, asset.name), &mut reader)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The handle of an upload in progress.
pub struct Upload {
    library: Library,
    account: String,
    name: String,
    tags: Vec<String>,
    source: AssetSource,
    sealing: tokio::task::JoinHandle<Result<Prepared, LibraryError>>,
}

impl Upload {
    /// Waits for the sealing to end and records the asset.
    pub async fn finish(self) -> Result<Asset, LibraryError> {
        let prepared = self.sealing.await.map_err(task_ended)??;
        self.library
            .record(self.account, self.name, self.tags, self.source, prepared)
            .await
    }
}

/// Seals the pieces of an upload into a temporary file, checks that it is a whole
/// image within the limits, and makes its thumbnail. Runs on a blocking thread.
fn prepare(
    blobs: &Blobs,
    key: &DataKey,
    account: &str,
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
    limits: Limits,
    thumb_size: u32,
) -> Result<Prepared, LibraryError> {
    let mut w = blobs.writer(key, account, Kind::Original)?;
    let mut head: Vec<u8> = Vec::with_capacity(64);
    let mut end = JpegEnd::default();
    let mut ended = false;
    while let Some(piece) = rx.blocking_recv() {
        let data = match piece {
            Piece::Data(d) => d,
            Piece::End => {
                ended = true;
                break;
            }
        };
        let size = w.bytes() + data.len() as u64;
        if size > limits.max_bytes {
            return Err(IntakeError::TooLarge {
                size,
                limit: limits.max_bytes,
            }
            .into());
        }
        if head.len() < 64 {
            let take = (64 - head.len()).min(data.len());
            head.extend_from_slice(&data[..take]);
            // Refuse what is not an image as soon as its first bytes say so.
            if head.len() == 64 {
                imaging::sniff(&head)?;
            }
        }
        end.feed(&data);
        w.write(&data)?;
    }
    if !ended {
        return Err(LibraryError::Invalid(
            "the upload was cut off before its end".into(),
        ));
    }
    if w.bytes() == 0 {
        return Err(IntakeError::Empty.into());
    }
    let format = imaging::sniff(&head)?;
    if format == Format::Jpeg && !end.complete() {
        return Err(IntakeError::Broken(
            "the JPEG is truncated (its data ends before the end-of-image marker)".into(),
        )
        .into());
    }
    let original = w.finish()?;
    let reader = blobs.open_staged(key, account, original.staged.path(), Kind::Original)?;
    let reader = std::io::BufReader::with_capacity(crate::crypto::stream::CHUNK, reader);
    let intake = imaging::decode_reader(reader, format, limits)?;
    let (width, height) = (intake.image.width(), intake.image.height());
    let small = imaging::downscale(intake.image, thumb_size);
    let jpeg = imaging::to_jpeg(&small, THUMB_QUALITY)?;
    let thumbnail = blobs.write_all(key, account, Kind::Thumbnail, &jpeg)?;
    Ok(Prepared {
        original,
        thumbnail,
        format,
        width,
        height,
    })
}

fn verify_in(r: &ReadTx, ring: &Keyring, blobs: &Blobs) -> Result<VerifyReport, LibraryError> {
    let mut report = VerifyReport::default();
    let rows = r.scan_all(&BLOB_REFS)?;
    let mut known = std::collections::HashSet::new();
    let mut keys: std::collections::HashMap<String, Option<DataKey>> = Default::default();
    let mut buf = Vec::new();
    for (k, b) in rows {
        let text = String::from_utf8_lossy(&k).into_owned();
        let Some((account, address)) = text.split_once('/') else {
            report
                .problems
                .push(format!("a blob record with a bad key `{text}`"));
            continue;
        };
        known.insert((account.to_string(), address.to_string()));
        if !keys.contains_key(account) {
            keys.insert(account.to_string(), ring.data_key(r, account)?);
        }
        let Some(key) = keys.get(account).and_then(Option::as_ref) else {
            report.problems.push(format!(
                "{account}/{address}: the account's data key is gone"
            ));
            continue;
        };
        for (kind, expect) in [(Kind::Original, b.bytes), (Kind::Thumbnail, b.thumb_bytes)] {
            let checked = (|| -> Result<(u64, String), BlobError> {
                let mut reader = blobs.open(key, account, address, kind)?;
                let mut hash = blobs::address_hasher(key);
                for i in 0..reader.chunks() {
                    reader.read_chunk(i, &mut buf)?;
                    hash.update(&buf);
                }
                Ok((reader.len(), crate::crypto::hex(&hash.finish())))
            })();
            let what = match kind {
                Kind::Original => "original",
                Kind::Thumbnail => "thumbnail",
            };
            match checked {
                Ok((len, _)) if len != expect => report.problems.push(format!(
                    "{account}/{address} ({what}): {len} bytes, the record says {expect}"
                )),
                Ok((_, got)) if kind == Kind::Original && got != address => report.problems.push(
                    format!("{account}/{address} ({what}): its content does not match its address"),
                ),
                Ok((len, _)) => {
                    report.bytes += len;
                }
                Err(e) => report
                    .problems
                    .push(format!("{account}/{address} ({what}): {e}")),
            }
        }
        report.checked += 1;
    }
    for f in blobs.walk()? {
        if f.account == ".tmp" {
            continue;
        }
        let address = f.file.trim_end_matches(".thumb").to_string();
        if !known.contains(&(f.account, address)) {
            report.orphans += 1;
        }
    }
    Ok(report)
}

fn remove_empty_dirs(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            remove_empty_dirs(&p);
            // Fails (and is meant to) while the folder holds anything.
            let _ = std::fs::remove_dir(&p);
        }
    }
}

/// One page of `account`'s asset metadata for an export, oldest first.
pub fn export_page(
    r: &ReadTx,
    account: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<crate::store::JsonPage, StoreError> {
    crate::store::JsonPage::of_owner(r, &ASSETS, account, after, limit, routes::AssetView::from)
}

/// How many assets `account` has.
pub fn count_of(r: &impl Reader, account: &str) -> Result<u64, StoreError> {
    r.count_prefix(&ASSETS, &TimedKey::prefix(account))
}

/// Removes up to `limit` asset records of `account` (erasure, in batches).
pub fn erase_batch(
    tx: &crate::store::WriteTx<'_>,
    account: &str,
    limit: usize,
) -> Result<u64, StoreError> {
    let prefix = TimedKey::prefix(account);
    let n = tx.remove_prefix_across(&[ASSETS.decl(), BLOB_REFS.decl()], &prefix, limit)?;
    if n < limit as u64 {
        tx.remove(&USED, account)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_become_plain_file_names() {
        assert_eq!(clean_name("../../etc/passwd", "image/png"), "passwd");
        assert_eq!(
            clean_name("C:\\Users\\x\\shoe.jpg", "image/jpeg"),
            "shoe.jpg"
        );
        assert_eq!(
            clean_name("a\u{0}b\nc\u{202e}gpj.exe", "image/png"),
            "abcgpj.exe"
        );
        assert_eq!(clean_name("..", "image/png"), "image.png");
        assert_eq!(clean_name("   ", "image/jpeg"), "image.jpeg");
        assert_eq!(clean_name(&"x".repeat(500), "image/png").len(), MAX_NAME);
        assert_eq!(
            clean_name("<img src=x onerror=alert(1)>.png", "image/png"),
            "<img src=x onerror=alert(1)>.png",
            "names are kept as text; the UI never renders them as HTML"
        );
    }

    #[test]
    fn tags_are_trimmed_lowered_and_bounded() {
        let t = clean_tags(&[" Shoes ".into(), "shoes".into(), "".into(), "Red".into()]).unwrap();
        assert_eq!(t, ["shoes", "red"]);
        assert!(clean_tags(&["x".repeat(41)]).is_err());
        let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        assert!(clean_tags(&many).is_err());
    }
}
