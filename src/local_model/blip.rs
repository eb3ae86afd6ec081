//! BLIP image captioning (Salesforce's `BlipForConditionalGeneration`): a ViT image
//! encoder and a BERT text decoder with cross-attention to the image, one
//! implementation over float (safetensors) and quantised (GGUF) weights.
//!
//! Decoding is greedy, one token a step. Each step reuses the keys and values of
//! earlier tokens (self-attention cache) and, per layer, the keys and values of the
//! image (cross-attention memo): the image does not change during a caption, so they
//! are computed once instead of at every step.

use super::kernels::{attention, gelu_erf};
use super::weights::{Lin, Weights};
use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::LayerNorm;
use serde::Deserialize;

/// `config.json` as Hugging Face writes it; absent fields take HF's defaults.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct BlipConfig {
    #[serde(default)]
    pub text_config: TextConfig,
    #[serde(default)]
    pub vision_config: VisionConfig,
}

/// The text decoder's shape.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub encoder_hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub bos_token_id: u32,
    pub sep_token_id: u32,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            vocab_size: 30524,
            hidden_size: 768,
            encoder_hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            bos_token_id: 30522,
            sep_token_id: 102,
        }
    }
}

/// The image encoder's shape.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 384,
            patch_size: 16,
            layer_norm_eps: 1e-5,
        }
    }
}

impl BlipConfig {
    /// The published BLIP-base captioning model's shape.
    pub fn base() -> BlipConfig {
        BlipConfig {
            text_config: TextConfig {
                num_attention_heads: 12,
                ..TextConfig::default()
            },
            vision_config: VisionConfig::default(),
        }
    }

    /// The published BLIP-large captioning model's shape.
    pub fn large() -> BlipConfig {
        BlipConfig {
            text_config: TextConfig {
                encoder_hidden_size: 1024,
                num_attention_heads: 12,
                ..TextConfig::default()
            },
            vision_config: VisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                ..VisionConfig::default()
            },
        }
    }

    /// Refuses shapes the model cannot run with, before any weight is read.
    pub fn check(&self) -> std::result::Result<(), String> {
        let t = &self.text_config;
        let v = &self.vision_config;
        let ok = t.num_attention_heads > 0
            && t.hidden_size.is_multiple_of(t.num_attention_heads)
            && v.num_attention_heads > 0
            && v.hidden_size.is_multiple_of(v.num_attention_heads)
            && v.patch_size > 0
            && v.image_size.is_multiple_of(v.patch_size)
            && t.encoder_hidden_size == v.hidden_size
            && (t.bos_token_id as usize) < t.vocab_size
            && (t.sep_token_id as usize) < t.vocab_size
            && t.max_position_embeddings > 1;
        if ok {
            Ok(())
        } else {
            Err("config.json describes a BLIP model whose sizes do not fit together".into())
        }
    }
}

fn layer_norm(w: &Weights, size: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        w.tensor("weight", size)?,
        w.tensor("bias", size)?,
        eps,
    ))
}

/// Views `(b, n, heads*hd)` as `(b, heads, n, hd)`, without copying.
fn heads(xs: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (b, n, h) = xs.dims3()?;
    xs.reshape((b, n, n_heads, h / n_heads))?.transpose(1, 2)
}

struct VisionLayer {
    ln1: LayerNorm,
    qkv: Lin,
    proj: Lin,
    ln2: LayerNorm,
    fc1: Lin,
    fc2: Lin,
}

/// The ViT image encoder.
pub struct Vision {
    patch_w: Tensor,
    patch_b: Tensor,
    class: Tensor,
    pos: Tensor,
    layers: Vec<VisionLayer>,
    post_ln: LayerNorm,
    heads: usize,
    patch: usize,
    size: usize,
}

impl Vision {
    fn load(cfg: &VisionConfig, w: &Weights) -> Result<Vision> {
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        let e = w.pp("embeddings");
        let patches = (cfg.image_size / p).pow(2);
        let patch_w = e
            .tensor("patch_embedding.weight", (h, 3, p, p))?
            .reshape((h, 3 * p * p))?
            .t()?
            .contiguous()?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = w.pp(&format!("encoder.layers.{i}"));
            let eps = cfg.layer_norm_eps;
            layers.push(VisionLayer {
                ln1: layer_norm(&l.pp("layer_norm1"), h, eps)?,
                qkv: l.linear("self_attn.qkv", h, 3 * h)?,
                proj: l.linear("self_attn.projection", h, h)?,
                ln2: layer_norm(&l.pp("layer_norm2"), h, eps)?,
                fc1: l.linear("mlp.fc1", h, cfg.intermediate_size)?,
                fc2: l.linear("mlp.fc2", cfg.intermediate_size, h)?,
            });
        }
        Ok(Vision {
            patch_w,
            patch_b: e.tensor("patch_embedding.bias", h)?,
            class: e.tensor("class_embedding", (1, 1, h))?,
            pos: e.tensor("position_embedding", (1, patches + 1, h))?,
            layers,
            post_ln: layer_norm(&w.pp("post_layernorm"), h, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
            patch: p,
            size: cfg.image_size,
        })
    }

    /// `(1, 3, size, size)` normalised pixels to `(1, patches + 1, hidden)`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, _, _, _) = pixels.dims4()?;
        let (p, g) = (self.patch, self.size / self.patch);
        // A convolution whose stride is its kernel is a matmul over flattened patches.
        let patches = pixels
            .reshape((b, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, 3 * p * p))?;
        let embeds = patches
            .broadcast_matmul(&self.patch_w)?
            .broadcast_add(&self.patch_b)?;
        let class = self.class.broadcast_as((b, 1, self.class.dim(2)?))?;
        let mut xs = Tensor::cat(&[&class, &embeds], 1)?.broadcast_add(&self.pos)?;
        let hd = self.class.dim(2)? / self.heads;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.layers {
            let h = xs.apply(&l.ln1)?;
            let (b, n, c) = h.dims3()?;
            // Each head of q, k and v is a strided view into the one projection.
            let qkv = l
                .qkv
                .forward(&h)?
                .reshape((b, n, 3, self.heads, c / self.heads))?
                .permute((2, 0, 3, 1, 4))?;
            // (`get` would copy: it reshapes, and a reshape of a view copies.)
            let part = |i| qkv.narrow(0, i, 1)?.squeeze(0);
            let a = attention(&part(0)?, &part(1)?, &part(2)?, scale)?;
            xs = (xs + l.proj.forward(&a)?)?;
            let h = xs.apply(&l.ln2)?;
            let h = l.fc2.forward(&gelu_erf(&l.fc1.forward(&h)?)?)?;
            xs = (xs + h)?;
        }
        xs.apply(&self.post_ln)
    }
}

struct Attention {
    query: Lin,
    key: Lin,
    value: Lin,
    dense: Lin,
    ln: LayerNorm,
}

impl Attention {
    fn load(w: &Weights, hidden: usize, kv_in: usize, eps: f64) -> Result<Attention> {
        Ok(Attention {
            query: w.linear("self.query", hidden, hidden)?,
            key: w.linear("self.key", kv_in, hidden)?,
            value: w.linear("self.value", kv_in, hidden)?,
            dense: w.linear("output.dense", hidden, hidden)?,
            ln: layer_norm(&w.pp("output.LayerNorm"), hidden, eps)?,
        })
    }
}

struct TextLayer {
    self_attn: Attention,
    cross: Attention,
    inter: Lin,
    out: Lin,
    out_ln: LayerNorm,
}

/// The BERT text decoder with its language-model head.
pub struct TextDecoder {
    word: Tensor,
    pos: Tensor,
    emb_ln: LayerNorm,
    layers: Vec<TextLayer>,
    head_dense: Lin,
    head_ln: LayerNorm,
    head: Lin,
    heads: usize,
    scale: f64,
    max_pos: usize,
}

impl TextDecoder {
    fn load(cfg: &TextConfig, w: &Weights) -> Result<TextDecoder> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let e = w.pp("bert.embeddings");
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = w.pp(&format!("bert.encoder.layer.{i}"));
            layers.push(TextLayer {
                self_attn: Attention::load(&l.pp("attention"), h, h, eps)?,
                cross: Attention::load(&l.pp("crossattention"), h, cfg.encoder_hidden_size, eps)?,
                inter: l.linear("intermediate.dense", h, cfg.intermediate_size)?,
                out: l.linear("output.dense", cfg.intermediate_size, h)?,
                out_ln: layer_norm(&l.pp("output.LayerNorm"), h, eps)?,
            });
        }
        let p = w.pp("cls.predictions");
        let word = e.tensor("word_embeddings.weight", (cfg.vocab_size, h))?;
        let head = p.linear_with_bias("decoder.weight", "bias", h, cfg.vocab_size)?;
        Ok(TextDecoder {
            pos: e.tensor(
                "position_embeddings.weight",
                (cfg.max_position_embeddings, h),
            )?,
            word,
            emb_ln: layer_norm(&e.pp("LayerNorm"), h, eps)?,
            layers,
            head_dense: p.linear("transform.dense", h, h)?,
            head_ln: layer_norm(&p.pp("transform.LayerNorm"), h, eps)?,
            head,
            heads: cfg.num_attention_heads,
            scale: 1.0 / ((h / cfg.num_attention_heads) as f64).sqrt(),
            max_pos: cfg.max_position_embeddings,
        })
    }

    /// The image's keys and values for every layer's cross-attention, computed once
    /// per caption.
    pub fn memo(&self, image: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        self.layers
            .iter()
            .map(|l| {
                Ok((
                    heads(&l.cross.key.forward(image)?, self.heads)?,
                    heads(&l.cross.value.forward(image)?, self.heads)?,
                ))
            })
            .collect()
    }

    /// One decoding step: the logits for the token after `token`, at position
    /// `cache.len`, updating the self-attention cache.
    pub fn step(&self, token: u32, cache: &mut Cache, memo: &[(Tensor, Tensor)]) -> Result<Tensor> {
        let at = cache.len;
        if at >= self.max_pos {
            candle_core::bail!(
                "the caption is longer than the model's {} positions",
                self.max_pos
            );
        }
        let x = (self.word.narrow(0, token as usize, 1)? + self.pos.narrow(0, at, 1)?)?
            .unsqueeze(0)?
            .apply(&self.emb_ln)?;
        let mut x = x;
        for (i, l) in self.layers.iter().enumerate() {
            let a = &l.self_attn;
            let q = heads(&a.query.forward(&x)?, self.heads)?;
            let k = heads(&a.key.forward(&x)?, self.heads)?;
            let v = heads(&a.value.forward(&x)?, self.heads)?;
            let (k, v) = match cache.kv[i].take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            let out = attention(&q, &k, &v, self.scale)?;
            cache.kv[i] = Some((k, v));
            x = (a.dense.forward(&out)? + &x)?.apply(&a.ln)?;

            let c = &l.cross;
            let q = heads(&c.query.forward(&x)?, self.heads)?;
            let (mk, mv) = &memo[i];
            let out = attention(&q, mk, mv, self.scale)?;
            x = (c.dense.forward(&out)? + &x)?.apply(&c.ln)?;

            let h = l.out.forward(&gelu_erf(&l.inter.forward(&x)?)?)?;
            x = (h + &x)?.apply(&l.out_ln)?;
        }
        cache.len += 1;
        let h = gelu_erf(&self.head_dense.forward(&x)?)?.apply(&self.head_ln)?;
        self.head.forward(&h)?.flatten_all()
    }
}

/// The self-attention keys and values of the tokens so far.
pub struct Cache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

/// A loaded BLIP model.
pub struct Blip {
    pub config: BlipConfig,
    pub vision: Vision,
    pub text: TextDecoder,
    pub device: Device,
}

/// CLIP's normalisation, which BLIP was trained with.
const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

impl Blip {
    /// Builds the model from `weights` (names as in Hugging Face's checkpoints).
    pub fn load(config: BlipConfig, weights: &Weights) -> Result<Blip> {
        let vision = Vision::load(&config.vision_config, &weights.pp("vision_model"))?;
        let text = TextDecoder::load(&config.text_config, &weights.pp("text_decoder"))?;
        Ok(Blip {
            config,
            vision,
            text,
            device: weights.device().clone(),
        })
    }

    /// The side the image is resized to.
    pub fn image_size(&self) -> u32 {
        self.config.vision_config.image_size as u32
    }

    /// `rgb` (any size) resized to the model's square input, without cropping (as
    /// BLIP's own processor does), normalised, as `(1, 3, size, size)`.
    pub fn pixels(&self, rgb: &image::RgbImage) -> Result<Tensor> {
        let s = self.image_size();
        let resized = image::imageops::resize(rgb, s, s, image::imageops::FilterType::CatmullRom);
        let n = (s * s) as usize;
        let mut data = vec![0f32; 3 * n];
        for (i, p) in resized.pixels().enumerate() {
            for c in 0..3 {
                data[c * n + i] = (f32::from(p.0[c]) / 255.0 - MEAN[c]) / STD[c];
            }
        }
        Tensor::from_vec(data, (1, 3, s as usize, s as usize), &self.device)
    }

    /// Encodes the image: `(1, patches + 1, hidden)`.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.forward(pixels)
    }

    /// A fresh self-attention cache.
    pub fn cache(&self) -> Cache {
        Cache {
            kv: (0..self.text.layers.len()).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Greedy decoding from the BOS token until SEP or `max_tokens`; `each` is called
    /// after every step (for timing). Returns the tokens without BOS and SEP.
    pub fn generate(
        &self,
        image: &Tensor,
        max_tokens: usize,
        mut each: impl FnMut(usize),
    ) -> Result<Vec<u32>> {
        let memo = self.text.memo(image)?;
        let mut cache = self.cache();
        let t = &self.config.text_config;
        let mut token = t.bos_token_id;
        let mut out = Vec::new();
        for i in 0..max_tokens {
            let logits = self.text.step(token, &mut cache, &memo)?;
            token = logits
                .argmax(D::Minus1)?
                .to_dtype(DType::U32)?
                .to_scalar::<u32>()?;
            each(i);
            if token == t.sep_token_id {
                break;
            }
            out.push(token);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_model::fixture::{random_tensors, tiny_config};
    use crate::local_model::max_abs;
    use crate::local_model::weights::Weights;

    /// `(b, n, heads*hd)` as a contiguous `(b, heads, n, hd)`.
    fn split(xs: &Tensor, n_heads: usize) -> Result<Tensor> {
        heads(xs, n_heads)?.contiguous()
    }

    /// Joins `(b, heads, n, hd)` back into `(b, n, heads*hd)`.
    fn unheads(xs: &Tensor) -> Result<Tensor> {
        let (b, h, n, hd) = xs.dims4()?;
        xs.transpose(1, 2)?.reshape((b, n, h * hd))
    }

    impl TextDecoder {
        /// The reference: every position at once under a causal mask, the image's
        /// keys and values computed inline, candle's own softmax and GELU; no cache,
        /// no memo, no fused kernels.
        fn forward_full(&self, tokens: &[u32], image: &Tensor) -> Result<Tensor> {
            let n = tokens.len();
            let dev = image.device();
            let ids = Tensor::new(tokens, dev)?;
            let mut x = (self.word.index_select(&ids, 0)? + self.pos.narrow(0, 0, n)?)?
                .unsqueeze(0)?
                .apply(&self.emb_ln)?;
            let mask: Vec<f32> = (0..n * n)
                .map(|i| {
                    if i % n > i / n {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (n, n), dev)?;
            for l in &self.layers {
                let a = &l.self_attn;
                let q = split(&a.query.forward(&x)?, self.heads)?;
                let k = split(&a.key.forward(&x)?, self.heads)?;
                let v = split(&a.value.forward(&x)?, self.heads)?;
                let s = (q * self.scale)?.matmul(&k.t()?)?.broadcast_add(&mask)?;
                let out = unheads(&candle_nn::ops::softmax_last_dim(&s)?.matmul(&v)?)?;
                x = (a.dense.forward(&out)? + &x)?.apply(&a.ln)?;
                let c = &l.cross;
                let q = split(&c.query.forward(&x)?, self.heads)?;
                let k = split(&c.key.forward(image)?, self.heads)?;
                let v = split(&c.value.forward(image)?, self.heads)?;
                let s = (q * self.scale)?.matmul(&k.t()?)?;
                let out = unheads(&candle_nn::ops::softmax_last_dim(&s)?.matmul(&v)?)?;
                x = (c.dense.forward(&out)? + &x)?.apply(&c.ln)?;
                let h = l.out.forward(&l.inter.forward(&x)?.gelu_erf()?)?;
                x = (h + &x)?.apply(&l.out_ln)?;
            }
            let last = x.narrow(1, n - 1, 1)?;
            let h = self
                .head_dense
                .forward(&last)?
                .gelu_erf()?
                .apply(&self.head_ln)?;
            self.head.forward(&h)?.flatten_all()
        }
    }

    #[test]
    fn cached_and_memoised_steps_match_a_full_recomputation() {
        let config = tiny_config();
        let map = random_tensors(&config, 42).unwrap().into_iter().collect();
        let blip = Blip::load(config, &Weights::from_tensors(map, &Device::Cpu).unwrap()).unwrap();
        let rgb =
            image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 30]));
        let image = blip.encode(&blip.pixels(&rgb).unwrap()).unwrap();
        let memo = blip.text.memo(&image).unwrap();
        let mut cache = blip.cache();
        let tokens = [5u32, 9, 14, 7, 20, 11];
        for i in 0..tokens.len() {
            let fast = blip.text.step(tokens[i], &mut cache, &memo).unwrap();
            let full = blip.text.forward_full(&tokens[..=i], &image).unwrap();
            let diff = max_abs(&(fast - full).unwrap());
            assert!(diff < 1e-4, "step {i}: logits differ by {diff}");
        }
        // And the image matters: another picture gives other logits.
        let other = image::RgbImage::from_pixel(40, 30, image::Rgb([250, 250, 250]));
        let image2 = blip.encode(&blip.pixels(&other).unwrap()).unwrap();
        let a = blip.text.forward_full(&tokens[..1], &image).unwrap();
        let b = blip.text.forward_full(&tokens[..1], &image2).unwrap();
        let diff = max_abs(&(a - b).unwrap());
        assert!(diff > 1e-6, "the image does not reach the decoder");
    }
}
