//! Model weights from safetensors (f32, f16 or bf16; computed in f32) or GGUF (any
//! of candle's quantised types), behind one lookup by Hugging Face tensor name.
//! Linear layers keep GGUF's quantised blocks and multiply with them directly;
//! everything else (norms, embeddings, biases) is dequantised once, at load.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, Module, Result, Shape, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

enum Source {
    Float(HashMap<String, Tensor>),
    Quant(HashMap<String, Arc<QTensor>>),
}

/// Named weights, seen from a prefix (`text_decoder.bert`).
#[derive(Clone)]
pub struct Weights {
    src: Arc<Source>,
    prefix: String,
    device: Device,
}

/// A linear layer, float or quantised.
pub enum Lin {
    Float(candle_nn::Linear),
    Quant { w: QMatMul, b: Option<Tensor> },
}

impl Module for Lin {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Lin::Float(l) => l.forward(xs),
            Lin::Quant { w, b } => {
                let y = w.forward(xs)?;
                match b {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

impl Weights {
    /// Float weights already in memory (fixtures, conversions).
    pub fn from_tensors(map: HashMap<String, Tensor>, device: &Device) -> Result<Weights> {
        let map = map
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(device)?)))
            .collect::<Result<_>>()?;
        Ok(Weights {
            src: Arc::new(Source::Float(map)),
            prefix: String::new(),
            device: device.clone(),
        })
    }

    /// A safetensors file, converted to f32.
    pub fn from_safetensors(path: &Path, device: &Device) -> Result<Weights> {
        let map = candle_core::safetensors::load(path, &Device::Cpu)?;
        Self::from_tensors(map, device)
    }

    /// A GGUF file.
    pub fn from_gguf(path: &Path, device: &Device) -> Result<Weights> {
        let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
        let content = gguf_file::Content::read(&mut file)?;
        let mut map = HashMap::with_capacity(content.tensor_infos.len());
        for name in content.tensor_infos.keys() {
            let t = content.tensor(&mut file, name, device)?;
            map.insert(name.clone(), Arc::new(t));
        }
        Ok(Weights {
            src: Arc::new(Source::Quant(map)),
            prefix: String::new(),
            device: device.clone(),
        })
    }

    /// The same weights, one level down.
    pub fn pp(&self, s: &str) -> Weights {
        Weights {
            src: self.src.clone(),
            prefix: self.full(s),
            device: self.device.clone(),
        }
    }

    /// Where tensors are made.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn has(&self, name: &str) -> bool {
        let full = self.full(name);
        match &*self.src {
            Source::Float(m) => m.contains_key(&full),
            Source::Quant(m) => m.contains_key(&full),
        }
    }

    fn check(&self, name: &str, got: &Shape, want: &Shape) -> Result<()> {
        if got != want {
            candle_core::bail!(
                "tensor `{}` is {got:?} but config.json implies {want:?}; the config does not match these weights",
                self.full(name)
            );
        }
        Ok(())
    }

    fn missing(&self, name: &str) -> candle_core::Error {
        candle_core::Error::Msg(format!(
            "the weights have no tensor `{}`; they are not a BLIP captioning model",
            self.full(name)
        ))
    }

    /// A float tensor of `shape`.
    pub fn tensor<S: Into<Shape>>(&self, name: &str, shape: S) -> Result<Tensor> {
        let want = shape.into();
        let full = self.full(name);
        let t = match &*self.src {
            Source::Float(m) => m.get(&full).cloned().ok_or_else(|| self.missing(name))?,
            Source::Quant(m) => m
                .get(&full)
                .ok_or_else(|| self.missing(name))?
                .dequantize(&self.device)?,
        };
        self.check(name, t.shape(), &want)?;
        Ok(t)
    }

    /// The linear layer `name` (`name.weight` of `(out, in)`, `name.bias`).
    pub fn linear(&self, name: &str, d_in: usize, d_out: usize) -> Result<Lin> {
        self.linear_with_bias(
            &format!("{name}.weight"),
            &format!("{name}.bias"),
            d_in,
            d_out,
        )
    }

    /// A linear layer whose weight and bias have names of their own.
    pub fn linear_with_bias(
        &self,
        weight: &str,
        bias: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<Lin> {
        let b = if self.has(bias) {
            Some(self.tensor(bias, d_out)?)
        } else {
            None
        };
        let want = Shape::from((d_out, d_in));
        match &*self.src {
            Source::Float(_) => {
                let w = self.tensor(weight, want)?;
                Ok(Lin::Float(candle_nn::Linear::new(w, b)))
            }
            Source::Quant(m) => {
                let q = m
                    .get(&self.full(weight))
                    .ok_or_else(|| self.missing(weight))?;
                self.check(weight, q.shape(), &want)?;
                Ok(Lin::Quant {
                    w: QMatMul::from_arc(q.clone())?,
                    b,
                })
            }
        }
    }
}

/// Whether a tensor is stored quantised in GGUF: two-dimensional weights whose rows
/// split into whole blocks of `dtype`.
fn quantisable(name: &str, t: &Tensor, dtype: GgmlDType) -> bool {
    let dims = t.dims();
    dims.len() == 2 && name.ends_with(".weight") && dims[1].is_multiple_of(dtype.block_size())
}

/// Writes `tensors` as a GGUF file: matrices in `dtype`, the rest in f32.
pub fn write_gguf(path: &Path, tensors: &[(String, Tensor)], dtype: GgmlDType) -> Result<()> {
    let mut q = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let d = if quantisable(name, &t, dtype) {
            dtype
        } else {
            GgmlDType::F32
        };
        q.push((name.as_str(), QTensor::quantize(&t, d)?));
    }
    let refs: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (*n, t)).collect();
    let arch = gguf_file::Value::String("blip".into());
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    gguf_file::write(&mut file, &[("general.architecture", &arch)], &refs)?;
    use std::io::Write;
    file.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(rows: usize, cols: usize, scale: f32) -> Tensor {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * scale)
            .collect();
        Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn gguf_keeps_whole_block_matrices_quantised_and_the_rest_float() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.gguf");
        let tensors = vec![
            ("big.weight".to_string(), ramp(16, 256, 0.2)),
            (
                "big.bias".to_string(),
                ramp(1, 16, 1.0).flatten_all().unwrap(),
            ),
            // 64 columns do not fill a q4k block (256): stored as f32.
            ("small.weight".to_string(), ramp(8, 64, 0.2)),
        ];
        write_gguf(&path, &tensors, GgmlDType::Q4K).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        assert_eq!(
            content.tensor_infos["big.weight"].ggml_dtype,
            GgmlDType::Q4K
        );
        assert_eq!(content.tensor_infos["big.bias"].ggml_dtype, GgmlDType::F32);
        assert_eq!(
            content.tensor_infos["small.weight"].ggml_dtype,
            GgmlDType::F32
        );

        // The quantised layer multiplies with its blocks and stays close to float.
        let w = Weights::from_gguf(&path, &Device::Cpu).unwrap();
        let quant = w.linear("big", 256, 16).unwrap();
        assert!(matches!(quant, Lin::Quant { .. }));
        let float = candle_nn::Linear::new(tensors[0].1.clone(), Some(tensors[1].1.clone()));
        let x = ramp(3, 256, 1.0).unsqueeze(0).unwrap();
        let got = quant.forward(&x).unwrap();
        let want = float.forward(&x).unwrap();
        let err = crate::local_model::max_abs(&(got - &want).unwrap());
        let size = crate::local_model::max_abs(&want);
        assert!(
            err < 0.05 * size,
            "q4k error {err} against outputs up to {size}"
        );
        // A shape config.json does not match is named.
        let e = w.linear("big", 128, 16).err().unwrap().to_string();
        assert!(e.contains("big.weight") && e.contains("config.json"), "{e}");
    }
}
