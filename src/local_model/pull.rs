//! `easel models pull NAME [--quantized]` and `easel models list`.
//!
//! Pulling downloads a published BLIP captioning model from the model hub
//! (`[local_model] hub_url`, Hugging Face by default, or a mirror): the hub's file
//! list gives each file's size and checksum (SHA-256 for large files, the git blob
//! SHA-1 for small ones); every file is downloaded beside its final name, checked,
//! and only then moved into place, so an interrupted or corrupted download never
//! looks like a model. `--quantized` then converts the weights to GGUF (q4k), which
//! is smaller and faster on a CPU, and removes the float file.

use super::ModelFiles;
use super::weights::{Weights, write_gguf};
use anyhow::{Context, bail};
use candle_core::Device;
use candle_core::quantized::GgmlDType;
use sha2::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The models `pull` knows, and their repositories on the hub.
pub const KNOWN: [(&str, &str); 2] = [
    ("blip-base", "Salesforce/blip-image-captioning-base"),
    ("blip-large", "Salesforce/blip-image-captioning-large"),
];

/// The files a model needs.
const FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// The quantised type `--quantized` writes.
pub const QUANTIZED: GgmlDType = GgmlDType::Q4K;

/// One file as the hub lists it.
#[derive(Debug, serde::Deserialize)]
struct Entry {
    path: String,
    #[serde(default)]
    size: u64,
    /// The git blob SHA-1.
    #[serde(default)]
    oid: String,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Debug, serde::Deserialize)]
struct Lfs {
    /// SHA-256 of the content.
    oid: String,
    size: u64,
}

/// What a downloaded file must hash to.
enum Check {
    Sha256(String),
    GitSha1(String),
}

fn client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(20))
        .read_timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("easel/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build an HTTP client")
}

/// Downloads model `name` into `dir`; returns the model's files.
pub async fn pull(
    hub: &str,
    name: &str,
    dir: &Path,
    quantized: bool,
) -> anyhow::Result<ModelFiles> {
    let Some((_, repo)) = KNOWN.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = KNOWN.iter().map(|(n, _)| *n).collect();
        bail!("unknown model `{name}`; known: {}", names.join(", "));
    };
    let hub = hub.trim_end_matches('/');
    let http = client()?;
    let list_url = format!("{hub}/api/models/{repo}/tree/main");
    let entries: Vec<Entry> = http
        .get(&list_url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("cannot reach the model hub at {hub} (is this machine online? see the README, \"Offline\")"))?
        .json()
        .await
        .with_context(|| format!("the model hub's file list for {repo} cannot be read"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for file in FILES {
        let entry = entries
            .iter()
            .find(|e| e.path == file)
            .with_context(|| format!("{repo} on the hub has no {file}"))?;
        let (size, check) = match &entry.lfs {
            Some(l) => (l.size, Check::Sha256(l.oid.to_ascii_lowercase())),
            None => (entry.size, Check::GitSha1(entry.oid.to_ascii_lowercase())),
        };
        let target = dir.join(file);
        if quantized && file == "model.safetensors" && has_gguf(dir) {
            println!("{file}: already converted to GGUF, skipped");
            continue;
        }
        if target.is_file() && verify(&target, &check).unwrap_or(false) {
            println!("{file}: already present and verified");
            continue;
        }
        let url = format!("{hub}/{repo}/resolve/main/{file}");
        download(&http, &url, &target, size, &check)
            .await
            .with_context(|| format!("cannot download {file}"))?;
    }
    if quantized && !has_gguf(dir) {
        let from = dir.join("model.safetensors");
        let to = dir.join(format!("model-{}.gguf", dtype_name(QUANTIZED)));
        println!(
            "converting the weights to GGUF ({})…",
            dtype_name(QUANTIZED)
        );
        quantize(&from, &to, QUANTIZED)?;
        std::fs::remove_file(&from).with_context(|| format!("cannot remove {}", from.display()))?;
    }
    Ok(ModelFiles::find(dir)?)
}

fn dtype_name(d: GgmlDType) -> &'static str {
    match d {
        GgmlDType::Q4K => "q4k",
        GgmlDType::Q8_0 => "q8_0",
        _ => "quantized",
    }
}

fn has_gguf(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut it| {
        it.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "gguf")))
    })
}

/// Converts a safetensors file to GGUF (written beside, then moved into place).
pub fn quantize(from: &Path, to: &Path, dtype: GgmlDType) -> anyhow::Result<()> {
    let map = candle_core::safetensors::load(from, &Device::Cpu)
        .with_context(|| format!("cannot read {}", from.display()))?;
    let mut tensors: Vec<(String, candle_core::Tensor)> = map.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let part = part_path(to);
    write_gguf(&part, &tensors, dtype).context("cannot write the GGUF file")?;
    // Prove the result loads before it replaces anything.
    Weights::from_gguf(&part, &Device::Cpu).context("the GGUF file just written does not load")?;
    std::fs::rename(&part, to).with_context(|| format!("cannot move into {}", to.display()))?;
    Ok(())
}

fn part_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    target.with_file_name(name)
}

/// Streams `url` into `target.part` with a progress bar, checks it, then renames.
async fn download(
    http: &reqwest::Client,
    url: &str,
    target: &Path,
    size: u64,
    check: &Check,
) -> anyhow::Result<()> {
    let mut resp = http
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)?;
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let bar = indicatif::ProgressBar::new(size.max(resp.content_length().unwrap_or(0)));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    let part = part_path(target);
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&part)
            .with_context(|| format!("cannot create {}", part.display()))?,
    );
    let mut sha256 = sha2::Sha256::new();
    let mut sha1 = sha1::Sha1::new();
    sha1.update(format!("blob {size}\0").as_bytes());
    let mut got = 0u64;
    let result = async {
        while let Some(chunk) = resp.chunk().await? {
            got += chunk.len() as u64;
            if got > size {
                bail!("the hub sent more than the {size} bytes it listed");
            }
            sha256.update(&chunk);
            sha1.update(&chunk);
            out.write_all(&chunk)?;
            bar.inc(chunk.len() as u64);
        }
        out.flush()?;
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    let outcome = result.and_then(|()| {
        if got != size {
            bail!("the download stopped at {got} of {size} bytes");
        }
        let ok = match check {
            Check::Sha256(want) => &crate::crypto::hex(&sha256.finalize()) == want,
            Check::GitSha1(want) => &crate::crypto::hex(&sha1.finalize()) == want,
        };
        if !ok {
            bail!("its checksum does not match the hub's; nothing was kept");
        }
        Ok(())
    });
    if let Err(e) = outcome {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, target)
        .with_context(|| format!("cannot move into {}", target.display()))?;
    println!("{name}: {size} bytes, checksum verified");
    Ok(())
}

/// Feeds the rest of `file` to `h`; returns its hex digest.
fn digest<D: Digest>(mut h: D, file: &mut std::fs::File) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(crate::crypto::hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Whether the file at `path` hashes as `check` says.
fn verify(path: &Path, check: &Check) -> std::io::Result<bool> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    Ok(match check {
        Check::Sha256(want) => &digest(sha2::Sha256::new(), &mut file)? == want,
        Check::GitSha1(want) => {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {len}\0").as_bytes());
            &digest(h, &mut file)? == want
        }
    })
}

/// One line of `easel models list`.
pub struct Listed {
    pub name: String,
    pub dir: PathBuf,
    pub weights: String,
    pub bytes: u64,
    pub in_use: bool,
}

/// The models in `models_dir` (each a folder with its files), marking `configured`.
pub fn list(models_dir: &Path, configured: &Path) -> Vec<Listed> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(models_dir)
        .map(|it| it.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    if !dirs.iter().any(|d| d == configured) && configured.is_dir() {
        dirs.push(configured.to_path_buf());
    }
    dirs.sort();
    dirs.into_iter()
        .filter_map(|d| {
            let files = ModelFiles::find(&d).ok()?;
            let bytes = std::fs::metadata(&files.weights)
                .map(|m| m.len())
                .unwrap_or(0);
            Some(Listed {
                name: d.file_name()?.to_string_lossy().into_owned(),
                weights: files
                    .weights
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bytes,
                in_use: d == configured,
                dir: d,
            })
        })
        .collect()
}
