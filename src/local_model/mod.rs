//! The local captioning model: BLIP run by candle, on the CPU (or a GPU in a build
//! with the `cuda` feature), with no network at all.
//!
//! The model directory (`[local_model] dir`) holds `config.json`, `tokenizer.json`
//! and weights: `*.gguf` (quantised; preferred when present) or `*.safetensors`
//! (f32/f16). The model is loaded once, on first use or at start, and shared by a
//! bounded pool of workers that run off the async runtime; requests beyond the
//! queue are refused with 503 rather than piling up.

pub mod blip;
pub mod fixture;
mod kernels;

/// The largest absolute value in `t`: how tests tell two tensors apart.
#[cfg(test)]
pub(crate) fn max_abs(t: &candle_core::Tensor) -> f32 {
    t.abs()
        .and_then(|a| a.flatten_all())
        .and_then(|a| a.max(0))
        .and_then(|a| a.to_scalar::<f32>())
        .expect("a float tensor")
}
pub mod pull;

pub mod weights;

use crate::config::{Live, LocalModelConfig};
use blip::{Blip, BlipConfig};
use candle_core::Device;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokenizers::Tokenizer;
use weights::Weights;

/// Why the local model could not caption.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// No usable model files.
    #[error("{0}")]
    Missing(String),
    /// The files are there but cannot be used.
    #[error("{0}")]
    Broken(String),
    /// Every worker is busy and the queue is full.
    #[error("the local model is busy ({0} requests waiting); try again shortly")]
    Busy(usize),
    /// Inference failed.
    #[error("the local model failed: {0}")]
    Failed(String),
}

/// The files of a model directory.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: PathBuf,
    pub quantised: bool,
}

impl ModelFiles {
    /// Finds the files in `dir`, or says which are missing and how to get them.
    pub fn find(dir: &Path) -> Result<ModelFiles, LocalError> {
        let hint = "run `easel models pull blip-large` on a machine that is online, or copy config.json, tokenizer.json and the weights into it (see the README, \"Offline\")";
        let entries = std::fs::read_dir(dir).map_err(|_| {
            LocalError::Missing(format!(
                "no local model: the directory {} does not exist; {hint}",
                dir.display()
            ))
        })?;
        let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        let with_ext = |ext: &str| {
            names
                .iter()
                .find(|p| p.extension().is_some_and(|e| e == ext))
                .cloned()
        };
        let (weights, quantised) = match (with_ext("gguf"), with_ext("safetensors")) {
            (Some(g), _) => (g, true),
            (None, Some(s)) => (s, false),
            (None, None) => {
                return Err(LocalError::Missing(format!(
                    "no local model weights (*.gguf or *.safetensors) in {}; {hint}",
                    dir.display()
                )));
            }
        };
        let need = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(LocalError::Missing(format!(
                    "the local model in {} has no {name}; {hint}",
                    dir.display()
                )))
            }
        };
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config: need("config.json")?,
            tokenizer: need("tokenizer.json")?,
            weights,
            quantised,
        })
    }

    /// The model's name in answers and usage records: `local/` and the directory's.
    pub fn name(&self) -> String {
        let dir = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "blip".into());
        format!("local/{dir}")
    }
}

/// The device named in the config.
pub fn device(name: &str) -> Result<Device, LocalError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| {
            LocalError::Broken(format!(
                "[local_model] device = \"cuda\" but no GPU can be used ({e}); Easel must be built with `--features cuda` on a machine with CUDA"
            ))
        }),
        other => Err(LocalError::Broken(format!(
            "[local_model] device = \"{other}\" is not known; use \"cpu\" or \"cuda\""
        ))),
    }
}

/// A loaded model and its tokenizer.
pub struct Captioner {
    pub blip: Blip,
    tokenizer: Tokenizer,
    pub name: String,
    files: ModelFiles,
    device_name: String,
}

impl Captioner {
    /// Loads the model in `dir` onto `device_name`.
    pub fn load(dir: &Path, device_name: &str) -> Result<Captioner, LocalError> {
        let files = ModelFiles::find(dir)?;
        let device = device(device_name)?;
        let broken = |what: &str, e: &dyn std::fmt::Display| {
            LocalError::Broken(format!(
                "the local model in {} cannot be used: {what}: {e}",
                dir.display()
            ))
        };
        let text = std::fs::read_to_string(&files.config).map_err(|e| broken("config.json", &e))?;
        let config: BlipConfig =
            serde_json::from_str(&text).map_err(|e| broken("config.json", &e))?;
        config.check().map_err(|e| broken("config.json", &e))?;
        let tokenizer =
            Tokenizer::from_file(&files.tokenizer).map_err(|e| broken("tokenizer.json", &e))?;
        if tokenizer.get_vocab_size(true) > config.text_config.vocab_size {
            return Err(broken(
                "tokenizer.json",
                &"it has more tokens than the model's vocabulary",
            ));
        }
        let weights = if files.quantised {
            Weights::from_gguf(&files.weights, &device)
        } else {
            Weights::from_safetensors(&files.weights, &device)
        }
        .map_err(|e| broken("weights", &e))?;
        let blip = Blip::load(config, &weights).map_err(|e| broken("weights", &e))?;
        Ok(Captioner {
            blip,
            tokenizer,
            name: files.name(),
            files,
            device_name: device_name.to_string(),
        })
    }

    /// A caption for `rgb`, at most `max_tokens` tokens (English, lower case).
    pub fn caption(&self, rgb: &image::RgbImage, max_tokens: usize) -> Result<String, LocalError> {
        let failed = |e: candle_core::Error| LocalError::Failed(e.to_string());
        let pixels = self.blip.pixels(rgb).map_err(failed)?;
        let image = self.blip.encode(&pixels).map_err(failed)?;
        let ids = self
            .blip
            .generate(&image, max_tokens, |_| {})
            .map_err(failed)?;
        self.tokenizer
            .decode(&ids, true)
            .map_err(|e| LocalError::Failed(format!("cannot decode the tokens: {e}")))
    }
}

/// The local model service: loads on demand, runs on a bounded pool.
#[derive(Clone)]
pub struct LocalModel {
    inner: Arc<Inner>,
}

struct Inner {
    live: Arc<Live>,
    loaded: tokio::sync::Mutex<Option<Arc<Captioner>>>,
    workers: tokio::sync::Semaphore,
    waiting: AtomicUsize,
}

/// A caption and the model that wrote it.
#[derive(Debug, Clone)]
pub struct Caption {
    pub text: String,
    pub model: String,
}

impl LocalModel {
    /// The service under the live config (worker count is fixed at start).
    pub fn new(live: Arc<Live>) -> LocalModel {
        let workers = live.get().local_model.workers.max(1);
        LocalModel {
            inner: Arc::new(Inner {
                live,
                loaded: tokio::sync::Mutex::new(None),
                workers: tokio::sync::Semaphore::new(workers),
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    fn config(&self) -> LocalModelConfig {
        self.inner.live.get().local_model.clone()
    }

    /// Whether model files are in place (nothing is loaded).
    pub fn installed(&self) -> Result<ModelFiles, LocalError> {
        ModelFiles::find(&self.config().dir)
    }

    /// The loaded model, loading it (again, if the config now names another
    /// directory or device) when needed.
    async fn captioner(&self) -> Result<Arc<Captioner>, LocalError> {
        let cfg = self.config();
        let mut slot = self.inner.loaded.lock().await;
        if let Some(c) = slot.as_ref()
            && c.files.dir == cfg.dir
            && c.device_name == cfg.device
        {
            return Ok(c.clone());
        }
        *slot = None;
        let started = std::time::Instant::now();
        let (dir, dev) = (cfg.dir.clone(), cfg.device.clone());
        let c = tokio::task::spawn_blocking(move || Captioner::load(&dir, &dev))
            .await
            .map_err(|e| LocalError::Failed(format!("the loading task ended: {e}")))??;
        tracing::info!(model = %c.name, weights = %c.files.weights.display(), ms = started.elapsed().as_millis() as u64, "local model loaded");
        let c = Arc::new(c);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Loads the model in the background, if its files are there, so the first
    /// caption does not wait for it.
    pub fn preload(&self) {
        if self.installed().is_err() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.captioner().await {
                tracing::warn!(error = %e, "cannot load the local model");
            }
        });
    }

    /// Captions `image` on a worker.
    pub async fn caption(&self, image: &image::DynamicImage) -> Result<Caption, LocalError> {
        let cfg = self.config();
        let queued = self.inner.waiting.fetch_add(1, Ordering::AcqRel);
        let _left = Leave(&self.inner.waiting);
        if queued >= cfg.queue {
            return Err(LocalError::Busy(queued));
        }
        let captioner = self.captioner().await?;
        let _permit = self
            .inner
            .workers
            .acquire()
            .await
            .map_err(|_| LocalError::Failed("the worker pool is closed".into()))?;
        let rgb = crate::imaging::flatten(image);
        let max_tokens = cfg.max_tokens;
        let c = captioner.clone();
        let text = tokio::task::spawn_blocking(move || c.caption(&rgb, max_tokens))
            .await
            .map_err(|e| LocalError::Failed(format!("the worker ended: {e}")))??;
        Ok(Caption {
            text,
            model: captioner.name.clone(),
        })
    }
}

/// Counts a request out of the queue however it ends.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{Store, TINY_CAPTION, write_tiny};
    use super::*;

    fn picture() -> image::RgbImage {
        image::RgbImage::from_fn(50, 40, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 6) as u8, 90])
        })
    }

    /// The tiny model in `store`'s format, in a folder kept while the guard lives.
    fn tiny_model(store: Store) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("blip-tiny");
        write_tiny(&model, store).unwrap();
        (dir, model)
    }

    #[test]
    fn the_tiny_model_captions_from_safetensors_and_gguf() {
        for store in [
            Store::Safetensors,
            Store::SafetensorsF16,
            Store::Gguf(candle_core::quantized::GgmlDType::Q8_0),
        ] {
            let (_dir, model) = tiny_model(store);
            let c = Captioner::load(&model, "cpu").unwrap();
            assert_eq!(c.name, "local/blip-tiny");
            assert_eq!(
                c.caption(&picture(), 30).unwrap(),
                TINY_CAPTION,
                "{store:?}"
            );
            // The step cap holds.
            assert_eq!(c.caption(&picture(), 3).unwrap(), "a red bicycle");
        }
    }

    /// Run where a GPU is: `cargo test --features cuda --lib local_model`. The tiny
    /// model must give the GPU the same caption as the CPU, in every weight format.
    #[cfg(feature = "cuda")]
    #[test]
    fn the_tiny_model_captions_the_same_on_the_gpu() {
        for store in [
            Store::Safetensors,
            Store::SafetensorsF16,
            Store::Gguf(candle_core::quantized::GgmlDType::Q8_0),
            Store::Gguf(candle_core::quantized::GgmlDType::Q4K),
        ] {
            let (_dir, model) = tiny_model(store);
            let cpu = Captioner::load(&model, "cpu").unwrap();
            let gpu = Captioner::load(&model, "cuda").unwrap();
            assert_eq!(
                gpu.caption(&picture(), 30).unwrap(),
                cpu.caption(&picture(), 30).unwrap(),
                "{store:?}"
            );
        }
    }

    #[test]
    fn missing_or_broken_files_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = Captioner::load(&dir.path().join("nothing"), "cpu")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("easel models pull"), "{err}");
        let model = dir.path().join("m");
        write_tiny(&model, Store::Safetensors).unwrap();
        std::fs::remove_file(model.join("tokenizer.json")).unwrap();
        let err = Captioner::load(&model, "cpu").err().unwrap().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        write_tiny(&model, Store::Safetensors).unwrap();
        std::fs::write(model.join("model.safetensors"), b"not weights").unwrap();
        let err = Captioner::load(&model, "cpu").err().unwrap();
        assert!(matches!(err, LocalError::Broken(_)), "{err}");
        let err = Captioner::load(&model, "tpu").err().unwrap().to_string();
        assert!(err.contains("tpu"), "{err}");
    }
}
