//! The export of everything held about one person: a ZIP of JSON files, written from
//! one read snapshot on a blocking thread and handed on as it is made (to an HTTP
//! response through a bounded channel, or to a file), never built in memory.

use crate::http::ApiError;
use crate::library::Library;
use crate::store::{JsonPage, ReadTx, Store, StoreError};
use std::io::Write;
use std::path::Path;
use zip::write::SimpleFileOptions;

/// Reads one page of a person's records of one kind.
type PageFn = fn(&ReadTx, &str, Option<&[u8]>, usize) -> Result<JsonPage, StoreError>;

/// Every file of records in an export, with what it holds. A capability that stores
/// records of a person adds its file here.
const FILES: [(&str, PageFn, &str); 12] = [
    (
        "sessions.jsonl",
        crate::accounts::export_sessions_page,
        "web sessions (credentials): when each began, was last used and ends; never the token",
    ),
    (
        "api_keys.jsonl",
        crate::keys::export_page,
        "API keys (credentials): name, scopes, limits, dates; never the secret",
    ),
    (
        "provider_keys.jsonl",
        crate::providers::export_page,
        "your own provider connections (provider_keys): the key's last four characters only",
    ),
    (
        "usage.jsonl",
        crate::usage::export_page,
        "one line per metered request (usage): model, provider, tokens, credits, status; never a prompt or output",
    ),
    (
        "alt_text.jsonl",
        crate::alt_text::export_page,
        "stored alt texts (alt_text), with the image URL when one was given",
    ),
    (
        "assets.jsonl",
        crate::library::export_page,
        "your asset library (assets): name, type, size, tags, alt text, source; each file is in assets/",
    ),
    (
        "skills.jsonl",
        crate::skills::export_page,
        "every saved version of your skills (skills): graph, note, date",
    ),
    (
        "skill_runs.jsonl",
        crate::skills::export_runs_page,
        "your skill runs (skills): version, status, time and credits per node; never an input or output",
    ),
    (
        "ledger.jsonl",
        crate::ledger::export_page,
        "credit entries (billing): grants, usage charges, refunds, adjustments",
    ),
    (
        "consent.jsonl",
        crate::analytics::export_page,
        "every change of your analytics consent",
    ),
    (
        "access_log.jsonl",
        crate::audit::export_access_page,
        "sign-in attempts with client address and user agent (access_log)",
    ),
    (
        "audit.jsonl",
        crate::audit::export_audit_page,
        "security and admin actions you made or that concern your account (audit)",
    ),
];

/// Records read per page.
const PAGE: usize = 500;

/// What an export wrote.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    /// Records per file.
    pub files: Vec<(String, u64)>,
}

fn zip_error(e: zip::result::ZipError) -> StoreError {
    match e {
        zip::result::ZipError::Io(io) => StoreError::Db(format!("cannot write the export: {io}")),
        other => StoreError::Db(format!("cannot write the export: {other}")),
    }
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Db(format!("cannot write the export: {e}"))
}

/// Writes the export of `account` from the snapshot `r` into `out`; `now_ms` dates it.
/// Fails with [`ApiError::not_found`] when there is no such account.
pub fn write_zip<W: Write>(
    r: &ReadTx,
    library: &Library,
    account: &str,
    now_ms: u64,
    out: W,
) -> Result<Summary, ApiError> {
    let Some(profile) = crate::accounts::export_account(r, account)? else {
        return Err(ApiError::not_found("no such account"));
    };
    let mut zip = zip::ZipWriter::new_stream(out);
    let opts = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip_time(now_ms))
        .unix_permissions(0o600)
        .large_file(true);
    let mut summary = Summary::default();

    zip.start_file("README.txt", opts).map_err(zip_error)?;
    zip.write_all(readme(now_ms).as_bytes()).map_err(io_error)?;
    zip.start_file("account.json", opts).map_err(zip_error)?;
    serde_json::to_writer_pretty(&mut zip, &profile)
        .map_err(|e| StoreError::Db(format!("cannot write the export: {e}")))?;
    summary.files.push(("account.json".into(), 1));

    for (name, page, _) in FILES {
        zip.start_file(name, opts).map_err(zip_error)?;
        let mut after: Option<Vec<u8>> = None;
        let mut records = 0;
        loop {
            let p = page(r, account, after.as_deref(), PAGE)?;
            zip.write_all(&p.lines).map_err(io_error)?;
            records += p.records;
            match p.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        summary.files.push((name.to_string(), records));
    }
    // The assets themselves, opened with the person's data key.
    let files = library.export_files(r, account, &mut |path, reader| {
        zip.start_file(
            path,
            opts.compression_method(zip::CompressionMethod::Stored),
        )
        .map_err(zip_error)?;
        std::io::copy(reader, &mut zip).map_err(io_error)?;
        Ok(())
    })?;
    summary.files.push(("assets/".into(), files));
    let mut out = zip.finish().map_err(zip_error)?;
    out.flush().map_err(io_error)?;
    Ok(summary)
}

fn readme(now_ms: u64) -> String {
    let mut s = format!(
        "Everything Easel holds about you, exported {}.\n\n\
         account.json        your account (never the password or its hash) and any pending deletion request\n",
        crate::http::rfc3339(now_ms)
    );
    for (name, _, what) in FILES {
        s.push_str(&format!("{name:<19} {what}\n"));
    }
    s.push_str(
        "\nEach .jsonl file holds one JSON object per line, oldest first. Times are UTC \
         (RFC 3339); amounts are credits.\nassets/ holds the original of each asset in your library, \
         named by its id and name.\nEasel never stores prompts or request images, nor \
         generated outputs you did not save to your library, so none are here.\n",
    );
    s
}

fn zip_time(now_ms: u64) -> zip::DateTime {
    let t = time::OffsetDateTime::from_unix_timestamp((now_ms / 1000) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    zip::DateTime::from_date_and_time(
        t.year().clamp(1980, 2107) as u16,
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    )
    .unwrap_or_default()
}

/// Records in the audit log that `actor` (`None`: the command line) exported
/// everything held about `account`; `how` says where it went.
pub async fn record(
    store: &Store,
    actor: Option<&str>,
    account: &str,
    now_ms: u64,
    how: &'static str,
) -> Result<(), ApiError> {
    let (actor, account) = (actor.map(str::to_string), account.to_string());
    store
        .write(move |tx| {
            crate::audit::record(
                tx,
                now_ms,
                actor.as_deref(),
                "data_exported",
                Some(&account),
                &format!("an export of everything held about the account was {how}"),
            )
        })
        .await?;
    Ok(())
}

/// The file name offered for a download.
pub fn file_name(now_ms: u64) -> String {
    let day = crate::http::rfc3339(now_ms);
    format!("easel-export-{}.zip", day.get(..10).unwrap_or("now"))
}

/// Starts the export of `account` and returns its bytes as a stream. A failure part
/// way ends the stream with an error, so the download is cut off rather than ending
/// as a ZIP that looks whole.
pub fn stream(
    store: &Store,
    library: &Library,
    account: String,
    now_ms: u64,
) -> impl futures_core::Stream<Item = crate::http::body::Item> + 'static {
    let (writer, body) = crate::http::body::ChannelWriter::new(4);
    let failer = writer.failer();
    let (store, library) = (store.clone(), library.clone());
    tokio::spawn(async move {
        let done = store
            .read(move |r| write_zip(r, &library, &account, now_ms, writer))
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "an export failed part way");
            failer.fail(format!("the export failed: {e}")).await;
        }
    });
    body
}

/// Writes the export of `account` to a new file at `path` (readable by its owner
/// only); a partial file is removed when the export fails.
pub async fn to_file(
    store: &Store,
    library: &Library,
    account: String,
    now_ms: u64,
    path: &Path,
) -> Result<Summary, ApiError> {
    let file = open_new(path)?;
    let writer = std::io::BufWriter::new(file);
    let library = library.clone();
    let done = store
        .read(move |r| write_zip(r, &library, &account, now_ms, writer))
        .await;
    if done.is_err() {
        let _ = std::fs::remove_file(path);
    }
    done
}

fn open_new(path: &Path) -> Result<std::fs::File, ApiError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path).map_err(|e| {
        ApiError::bad_request(
            "cannot_write",
            format!(
                "cannot create {}: {e}; name a new file in a directory that exists",
                path.display()
            ),
        )
    })
}
