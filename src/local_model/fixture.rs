//! Model files made on the spot, for tests and benchmarks, where no real model can be
//! downloaded. They go through exactly the loading path of real weights.
//!
//! - [`write_tiny`]: a tiny BLIP whose weights are random noise plus a designed
//!   path: word embeddings are one-hot, and the language-model head maps each word to
//!   the next word of [`TINY_CAPTION`]. The noise (every other weight) is too small
//!   to move the argmax, so greedy decoding writes exactly that caption, through every
//!   layer, cache and cross-attention of the real code.
//! - [`random_tensors`]: random weights of any shape (the real BLIP-base and
//!   BLIP-large sizes for timing).

use super::blip::{BlipConfig, TextConfig, VisionConfig};
use super::weights::write_gguf;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Result, Tensor};
use std::path::Path;

/// What the tiny model says about any image.
pub const TINY_CAPTION: &str = "a red bicycle leans against the brick wall";

const SPECIALS: [&str; 6] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"];
const WORDS: [&str; 16] = [
    "a", "red", "bicycle", "leans", "against", "the", "brick", "wall", "dog", "cat", "sits", "on",
    "grass", "blue", "car", "photo",
];

/// The tiny model's shape.
pub fn tiny_config() -> BlipConfig {
    BlipConfig {
        text_config: TextConfig {
            vocab_size: SPECIALS.len() + WORDS.len(),
            hidden_size: 64,
            encoder_hidden_size: 32,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            max_position_embeddings: 40,
            layer_norm_eps: 1e-12,
            bos_token_id: 5,
            sep_token_id: 3,
        },
        vision_config: VisionConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            image_size: 32,
            patch_size: 8,
            layer_norm_eps: 1e-5,
        },
    }
}

/// A deterministic generator (splitmix64), so fixtures are the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform noise with standard deviation `std`.
    fn noise(&mut self, n: usize, std: f32) -> Vec<f32> {
        let a = std * 3f32.sqrt();
        (0..n)
            .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a)
            .collect()
    }
}

enum Init {
    Noise,
    Ones,
    Zeros,
}

/// Every tensor of a BLIP captioning checkpoint, by Hugging Face name.
fn layout(c: &BlipConfig) -> Vec<(String, Vec<usize>, Init)> {
    let (t, v) = (&c.text_config, &c.vision_config);
    let mut out = Vec::new();
    let norm = |out: &mut Vec<_>, name: String, n: usize| {
        out.push((format!("{name}.weight"), vec![n], Init::Ones));
        out.push((format!("{name}.bias"), vec![n], Init::Zeros));
    };
    let lin = |out: &mut Vec<(String, Vec<usize>, Init)>, name: String, i: usize, o: usize| {
        out.push((format!("{name}.weight"), vec![o, i], Init::Noise));
        out.push((format!("{name}.bias"), vec![o], Init::Zeros));
    };
    let (h, p) = (v.hidden_size, v.patch_size);
    let e = "vision_model.embeddings";
    out.push((format!("{e}.class_embedding"), vec![1, 1, h], Init::Noise));
    out.push((
        format!("{e}.patch_embedding.weight"),
        vec![h, 3, p, p],
        Init::Noise,
    ));
    out.push((format!("{e}.patch_embedding.bias"), vec![h], Init::Zeros));
    let positions = (v.image_size / p).pow(2) + 1;
    out.push((
        format!("{e}.position_embedding"),
        vec![1, positions, h],
        Init::Noise,
    ));
    for i in 0..v.num_hidden_layers {
        let l = format!("vision_model.encoder.layers.{i}");
        norm(&mut out, format!("{l}.layer_norm1"), h);
        lin(&mut out, format!("{l}.self_attn.qkv"), h, 3 * h);
        lin(&mut out, format!("{l}.self_attn.projection"), h, h);
        norm(&mut out, format!("{l}.layer_norm2"), h);
        lin(&mut out, format!("{l}.mlp.fc1"), h, v.intermediate_size);
        lin(&mut out, format!("{l}.mlp.fc2"), v.intermediate_size, h);
    }
    norm(&mut out, "vision_model.post_layernorm".into(), h);
    let th = t.hidden_size;
    let b = "text_decoder.bert";
    out.push((
        format!("{b}.embeddings.word_embeddings.weight"),
        vec![t.vocab_size, th],
        Init::Noise,
    ));
    out.push((
        format!("{b}.embeddings.position_embeddings.weight"),
        vec![t.max_position_embeddings, th],
        Init::Noise,
    ));
    norm(&mut out, format!("{b}.embeddings.LayerNorm"), th);
    for i in 0..t.num_hidden_layers {
        let l = format!("{b}.encoder.layer.{i}");
        for (a, kv) in [("attention", th), ("crossattention", t.encoder_hidden_size)] {
            lin(&mut out, format!("{l}.{a}.self.query"), th, th);
            lin(&mut out, format!("{l}.{a}.self.key"), kv, th);
            lin(&mut out, format!("{l}.{a}.self.value"), kv, th);
            lin(&mut out, format!("{l}.{a}.output.dense"), th, th);
            norm(&mut out, format!("{l}.{a}.output.LayerNorm"), th);
        }
        lin(
            &mut out,
            format!("{l}.intermediate.dense"),
            th,
            t.intermediate_size,
        );
        lin(
            &mut out,
            format!("{l}.output.dense"),
            t.intermediate_size,
            th,
        );
        norm(&mut out, format!("{l}.output.LayerNorm"), th);
    }
    let c = "text_decoder.cls.predictions";
    lin(&mut out, format!("{c}.transform.dense"), th, th);
    norm(&mut out, format!("{c}.transform.LayerNorm"), th);
    out.push((
        format!("{c}.decoder.weight"),
        vec![t.vocab_size, th],
        Init::Noise,
    ));
    out.push((format!("{c}.bias"), vec![t.vocab_size], Init::Zeros));
    out
}

/// Random weights for `config` (noise of standard deviation 0.02, norms at one).
pub fn random_tensors(config: &BlipConfig, seed: u64) -> Result<Vec<(String, Tensor)>> {
    let mut rng = Rng(seed);
    layout(config)
        .into_iter()
        .map(|(name, shape, init)| {
            let n: usize = shape.iter().product();
            let data = match init {
                Init::Noise => rng.noise(n, 0.02),
                Init::Ones => vec![1.0; n],
                Init::Zeros => vec![0.0; n],
            };
            Ok((name, Tensor::from_vec(data, shape, &Device::Cpu)?))
        })
        .collect()
}

/// The tiny model's weights: noise, plus the designed path to [`TINY_CAPTION`].
pub fn tiny_tensors() -> Result<Vec<(String, Tensor)>> {
    let config = tiny_config();
    let t = &config.text_config;
    let (vocab, h) = (t.vocab_size, t.hidden_size);
    let id = |w: &str| SPECIALS.len() + WORDS.iter().position(|x| *x == w).unwrap_or(0);
    // The token before each token of the caption: [DEC] a red ... wall [SEP].
    let mut chain = vec![t.bos_token_id as usize];
    chain.extend(TINY_CAPTION.split(' ').map(id));
    chain.push(t.sep_token_id as usize);
    let mut tensors = random_tensors(&config, 7)?;
    for (name, tensor) in tensors.iter_mut() {
        let designed: Option<Vec<f32>> = match name.as_str() {
            // Each word is one direction of the hidden state.
            "text_decoder.bert.embeddings.word_embeddings.weight" => Some(
                (0..vocab * h)
                    .map(|i| if i / h == i % h { 8.0 } else { 0.0 })
                    .collect(),
            ),
            // The head's transform passes the state through (shifted into GELU's
            // linear range; the layer norm after it removes the shift).
            "text_decoder.cls.predictions.transform.dense.weight" => Some(
                (0..h * h)
                    .map(|i| if i / h == i % h { 1.0 } else { 0.0 })
                    .collect(),
            ),
            "text_decoder.cls.predictions.transform.dense.bias" => Some(vec![3.0; h]),
            // Each word's logit reads the direction of the word before it.
            "text_decoder.cls.predictions.decoder.weight" => {
                let mut w = vec![0.0; vocab * h];
                for pair in chain.windows(2) {
                    w[pair[1] * h + pair[0]] = 1.0;
                }
                Some(w)
            }
            _ => None,
        };
        if let Some(data) = designed {
            *tensor = Tensor::from_vec(data, tensor.shape(), &Device::Cpu)?;
        }
    }
    Ok(tensors)
}

/// A WordPiece `tokenizer.json` over `vocab` (ids in order), as BERT's is.
pub fn tokenizer_json(vocab: &[&str]) -> String {
    let entries: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i.into()))
        .collect();
    let added: Vec<serde_json::Value> = vocab
        .iter()
        .enumerate()
        .filter(|(_, w)| w.starts_with('['))
        .map(|(i, w)| {
            serde_json::json!({"id": i, "content": w, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
            "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]",
            "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
            "vocab": entries}
    })
    .to_string()
}

/// How the weights are stored.
#[derive(Clone, Copy, Debug)]
pub enum Store {
    /// f32 safetensors.
    Safetensors,
    /// f16 safetensors, as many published checkpoints are.
    SafetensorsF16,
    Gguf(GgmlDType),
}

/// `config.json` in Hugging Face's layout.
pub fn config_json(c: &BlipConfig) -> String {
    let (t, v) = (&c.text_config, &c.vision_config);
    serde_json::json!({
        "architectures": ["BlipForConditionalGeneration"],
        "text_config": {
            "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "encoder_hidden_size": t.encoder_hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "max_position_embeddings": t.max_position_embeddings,
            "layer_norm_eps": t.layer_norm_eps, "bos_token_id": t.bos_token_id,
            "sep_token_id": t.sep_token_id, "hidden_act": "gelu"
        },
        "vision_config": {
            "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads, "image_size": v.image_size,
            "patch_size": v.patch_size, "layer_norm_eps": v.layer_norm_eps,
            "hidden_act": "gelu"
        }
    })
    .to_string()
}

/// Writes a model directory: `config.json`, `tokenizer.json` and the weights.
pub fn write_model(
    dir: &Path,
    config: &BlipConfig,
    tensors: &[(String, Tensor)],
    tokenizer: &str,
    store: Store,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), config_json(config))?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer)?;
    match store {
        Store::Safetensors | Store::SafetensorsF16 => {
            let dtype = match store {
                Store::SafetensorsF16 => candle_core::DType::F16,
                _ => candle_core::DType::F32,
            };
            let map = tensors
                .iter()
                .map(|(name, t)| Ok((name.clone(), t.to_dtype(dtype)?)))
                .collect::<Result<std::collections::HashMap<String, Tensor>>>()?;
            candle_core::safetensors::save(&map, dir.join("model.safetensors"))
        }
        Store::Gguf(dtype) => write_gguf(&dir.join("model.gguf"), tensors, dtype),
    }
}

/// Writes the tiny model into `dir`.
pub fn write_tiny(dir: &Path, store: Store) -> Result<()> {
    let vocab: Vec<&str> = SPECIALS.iter().chain(WORDS.iter()).copied().collect();
    write_model(
        dir,
        &tiny_config(),
        &tiny_tensors()?,
        &tokenizer_json(&vocab),
        store,
    )
}
