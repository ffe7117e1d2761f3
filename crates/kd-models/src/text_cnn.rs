//! A Kim-style (2014) convolutional text classifier, the kind of small non-transformer student
//! Tang et al. (2019) distil BERT into: word embeddings, 1-D convolutions of several widths
//! (3, 4, 5) with ReLU, max-over-time pooling, a linear head. No dropout (deterministic).
//!
//! Inputs are the BERT models' `(batch, 3, seq)` u32 tensor (rows `input_ids`,
//! `token_type_ids`, `attention_mask`; segment ids are not used), so the model fits the same
//! loaders and any method distils it unchanged. Padding cannot change an example's output:
//! padded positions are zeroed after the embedding, every convolution pads `width − 1` zeros on
//! both sides, and max-over-time only sees windows that cover at least one real token (the
//! same windows a batch without padding has).
//!
//! The embedding can start from a pretrained BERT's word embeddings
//! ([`load_pretrained_embeddings`]; same WordPiece vocabulary as the teacher).

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::{Conv1dConfig, Embedding, Init, Linear, Module, VarBuilder, VarMap};
use kd_core::{Classifier, Mode, ModelOutput};

use crate::error::{ModelError, Result};

/// Architecture of a [`TextCnn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub vocab_size: usize,
    pub embed_dim: usize,
    /// Convolution widths (tokens per window).
    pub widths: Vec<usize>,
    /// Filters per width.
    pub filters: usize,
}

impl Config {
    /// Kim (2014)'s CNN-static/non-static shape: widths 3, 4, 5 with 100 filters each.
    pub fn kim(vocab_size: usize, embed_dim: usize) -> Self {
        Self { vocab_size, embed_dim, widths: vec![3, 4, 5], filters: 100 }
    }

    /// Parses `textcnn` or `textcnn-F<filters>` into [`Config::kim`] with that many filters.
    pub fn parse(arch: &str, vocab_size: usize, embed_dim: usize) -> Result<Self> {
        let bad = |m: String| ModelError::Config {
            arch: arch.into(),
            message: format!("{m}; text CNN architectures are `textcnn` or `textcnn-F<filters>`"),
        };
        let mut c = Self::kim(vocab_size, embed_dim);
        match arch.strip_prefix("textcnn") {
            Some("") => {}
            Some(rest) => {
                let n = rest
                    .strip_prefix("-F")
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad(format!("cannot read `{rest}`")))?;
                c.filters = n;
            }
            None => return Err(bad("not a text CNN name".into())),
        }
        Ok(c)
    }

    /// Trainable parameters with a `classes`-way head.
    pub fn num_params(&self, classes: usize) -> usize {
        let convs: usize = self.widths.iter().map(|w| self.filters * self.embed_dim * w + self.filters).sum();
        let pooled = self.filters * self.widths.len();
        self.vocab_size * self.embed_dim + convs + pooled * classes + classes
    }
}

/// Embedding → convolutions (ReLU, masked max over time) → linear head.
pub struct TextCnn {
    embedding: Embedding,
    /// `(weight (filters, embed, width), bias (filters))` per width.
    convs: Vec<(Tensor, Tensor, usize)>,
    head: Linear,
    arch: String,
    num_classes: usize,
    params: usize,
}

impl TextCnn {
    /// Variables: `embedding.weight`, `conv<w>.{weight,bias}`, `classifier.{weight,bias}`.
    pub fn new(arch: &str, c: &Config, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        if num_classes == 0 || c.widths.is_empty() || c.filters == 0 || c.embed_dim == 0 {
            return Err(ModelError::Config {
                arch: arch.into(),
                message: format!(
                    "needs ≥ 1 output, width, filter and embedding dimension (got {num_classes} outputs, {c:?})"
                ),
            });
        }
        let embedding = candle_nn::embedding(c.vocab_size, c.embed_dim, vb.pp("embedding"))?;
        let mut convs = Vec::new();
        for &w in &c.widths {
            let v = vb.pp(format!("conv{w}"));
            // PyTorch's Conv1d default: U(−1/√fan_in, 1/√fan_in) for weight and bias.
            let bound = 1.0 / ((c.embed_dim * w) as f64).sqrt();
            let init = Init::Uniform { lo: -bound, up: bound };
            let weight = v.get_with_hints((c.filters, c.embed_dim, w), "weight", init)?;
            let bias = v.get_with_hints(c.filters, "bias", init)?;
            convs.push((weight, bias, w));
        }
        let pooled = c.filters * c.widths.len();
        let head = candle_nn::linear(pooled, num_classes, vb.pp("classifier"))?;
        Ok(Self {
            embedding,
            convs,
            head,
            arch: arch.to_string(),
            num_classes,
            params: c.num_params(num_classes),
        })
    }

    /// The pooled features `(batch, filters · widths)` of a `(batch, 3, seq)` input.
    pub fn pooled(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        let (b, rows, s) = input.dims3()?;
        if rows != 3 {
            candle_core::bail!(
                "text CNN input must be (batch, 3, seq): input_ids, token_type_ids, attention_mask; got {:?}",
                input.dims()
            );
        }
        let ids = input.i((.., 0, ..))?.contiguous()?;
        let mask = input.i((.., 2, ..))?.to_dtype(DType::F32)?;
        // (batch, seq, embed) with padded positions zeroed, as (batch, embed, seq) for conv1d.
        let x = self.embedding.forward(&ids)?.broadcast_mul(&mask.unsqueeze(D::Minus1)?)?;
        let x = x.transpose(1, 2)?.contiguous()?;
        let lengths = mask.sum_keepdim(1)?; // (batch, 1)
        let mut pooled = Vec::with_capacity(self.convs.len());
        for (weight, bias, w) in &self.convs {
            let cfg = Conv1dConfig { padding: w - 1, ..Default::default() };
            let y = x.conv1d(weight, cfg.padding, cfg.stride, cfg.dilation, cfg.groups)?;
            let y = y.broadcast_add(&bias.reshape((1, (), 1))?)?.relu()?; // (batch, filters, s + w − 1)
                                                                          // Window j covers tokens j−w+1..=j: it sees a real token iff j < length + w − 1.
            let windows = s + w - 1;
            let j = Tensor::arange(0f32, windows as f32, input.device())?.reshape((1, windows))?;
            let valid = j.broadcast_lt(&(&lengths + (*w as f64 - 1.0))?)?.to_dtype(DType::F32)?;
            // ReLU outputs are ≥ 0, so zeroing invalid windows leaves the max of the valid ones.
            let y = y.broadcast_mul(&valid.reshape((b, 1, windows))?)?;
            pooled.push(y.max(D::Minus1)?);
        }
        Tensor::cat(&pooled, 1)
    }
}

impl Classifier for TextCnn {
    fn forward(&self, input: &Tensor, _mode: Mode) -> candle_core::Result<ModelOutput> {
        let pooled = self.pooled(input)?;
        let logits = self.head.forward(&pooled)?;
        Ok(ModelOutput { logits, stage_features: Vec::new(), embedding: pooled })
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn arch(&self) -> &str {
        &self.arch
    }

    fn num_params(&self) -> usize {
        self.params
    }
}

/// A trainable text CNN whose initial weights depend only on `seed` (and the config).
pub fn new_text_cnn(
    arch: &str,
    config: &Config,
    num_classes: usize,
    seed: u64,
    device: &Device,
) -> Result<(VarMap, TextCnn)> {
    let varmap = VarMap::new();
    let vb = crate::init::seeded_var_builder(&varmap, seed, DType::F32, device);
    let model = TextCnn::new(arch, config, num_classes, vb)?;
    Ok((varmap, model))
}

/// Copies a pretrained BERT's word embeddings (`embeddings.word_embeddings.weight`, with or
/// without a `bert.` prefix) into `embedding.weight`; the shapes must agree.
pub fn load_pretrained_embeddings(varmap: &VarMap, path: &Path) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, &crate::host_device())
        .map_err(|e| ModelError::checkpoint(path, format!("not a safetensors file: {e}")))?;
    let name = "embeddings.word_embeddings.weight";
    let t = tensors
        .get(name)
        .or_else(|| tensors.get(&format!("bert.{name}")))
        .ok_or_else(|| ModelError::checkpoint(path, format!("no tensor `{name}`")))?;
    let vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let var = vars
        .get("embedding.weight")
        .ok_or_else(|| ModelError::checkpoint(path, "the model has no `embedding.weight`".to_string()))?;
    if t.dims() != var.dims() {
        return Err(ModelError::checkpoint(
            path,
            format!("tensor `{name}` has shape {:?}, `embedding.weight` needs {:?}", t.dims(), var.dims()),
        ));
    }
    var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(ids: &[&[u32]]) -> Tensor {
        let len = ids.iter().map(|s| s.len()).max().unwrap();
        let mut data = Vec::new();
        for s in ids {
            data.extend((0..len).map(|t| s.get(t).copied().unwrap_or(0)));
            data.extend(std::iter::repeat_n(0u32, len));
            data.extend((0..len).map(|t| u32::from(t < s.len())));
        }
        Tensor::from_vec(data, (ids.len(), 3, len), &Device::Cpu).unwrap()
    }

    fn small() -> Config {
        Config { vocab_size: 20, embed_dim: 6, widths: vec![3, 4, 5], filters: 4 }
    }

    #[test]
    fn shapes_names_and_params() {
        let (varmap, m) = new_text_cnn("textcnn", &small(), 3, 1, &Device::Cpu).unwrap();
        let out = m.forward(&input(&[&[1, 5, 6, 2], &[1, 3, 2]]), Mode::Eval).unwrap();
        assert_eq!(out.logits.dims(), &[2, 3]);
        assert_eq!(out.embedding.dims(), &[2, 12]);
        let counted: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(m.num_params(), counted);
        // 20·6 + Σ_w (4·6·w + 4) + 12·3 + 3
        assert_eq!(counted, 120 + (72 + 4) + (96 + 4) + (120 + 4) + 36 + 3);
        assert_eq!(Config::parse("textcnn-F64", 20, 6).unwrap().filters, 64);
        for bad in ["textcnn-64", "textcnn-F0", "cnn", "textcnnF3"] {
            assert!(Config::parse(bad, 20, 6).is_err(), "{bad}");
        }
    }

    #[test]
    fn padding_does_not_change_the_output() {
        let (_, m) = new_text_cnn("textcnn", &small(), 2, 3, &Device::Cpu).unwrap();
        // Sentences shorter than the widest window (2 < 5) and longer; padded by a 9-token one.
        for s in [&[1u32, 7][..], &[1, 5, 6, 8, 9, 2][..]] {
            let alone: Vec<Vec<f32>> = m.forward(&input(&[s]), Mode::Eval).unwrap().logits.to_vec2().unwrap();
            let padded: Vec<Vec<f32>> = m
                .forward(&input(&[s, &[1, 3, 4, 7, 8, 9, 10, 11, 2]]), Mode::Eval)
                .unwrap()
                .logits
                .to_vec2()
                .unwrap();
            for (a, p) in alone[0].iter().zip(&padded[0]) {
                assert!((a - p).abs() < 1e-6, "{s:?}: {alone:?} vs {padded:?}");
            }
        }
        // The pad id's embedding plays no part: changing it does not change the output either.
        let x = input(&[&[1, 7], &[1, 3, 4, 7, 8]]);
        let y = m.forward(&x, Mode::Eval).unwrap().logits;
        let mut v: Vec<Vec<Vec<u32>>> = x.to_vec3().unwrap();
        v[0][0][2..].iter_mut().for_each(|t| *t = 13);
        let flat: Vec<u32> = v.into_iter().flatten().flatten().collect();
        let x2 = Tensor::from_vec(flat, (2, 3, 5), &Device::Cpu).unwrap();
        let y2 = m.forward(&x2, Mode::Eval).unwrap().logits;
        let d = (y - y2).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "{d}");
    }

    /// Max-over-time by hand: one filter of width 3 (ones, bias 0) over 1-d embeddings
    /// [1, −2, 3] (sentence of 3 tokens): zero-padded windows sum to 1, −1, 2, 1, 3 → max 3.
    #[test]
    fn max_over_time_matches_hand_arithmetic() {
        let c = Config { vocab_size: 4, embed_dim: 1, widths: vec![3], filters: 1 };
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let m = TextCnn::new("textcnn", &c, 1, vb).unwrap();
        let set = |k: &str, t: Tensor| vm.data().lock().unwrap()[k].set(&t).unwrap();
        set("embedding.weight", Tensor::new(&[[0f32], [1.], [-2.], [3.]], &Device::Cpu).unwrap());
        set("conv3.weight", Tensor::ones((1, 1, 3), DType::F32, &Device::Cpu).unwrap());
        set("conv3.bias", Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
        let p: Vec<Vec<f32>> =
            m.pooled(&input(&[&[1, 2, 3], &[1, 2, 3, 1, 1, 1]])).unwrap().to_vec2().unwrap();
        assert_eq!(p[0], vec![3.0]);
        // [1, −2, 3, 1, 1, 1]: windows 1, −1, 2, 2, 5, 3, 2, 1 → 5.
        assert_eq!(p[1], vec![5.0]);
    }

    #[test]
    fn embeddings_come_from_a_bert_file_and_gradients_reach_every_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let emb = Tensor::arange(0f32, 120., &Device::Cpu).unwrap().reshape((20, 6)).unwrap();
        let tensors =
            std::collections::HashMap::from([("embeddings.word_embeddings.weight".to_string(), emb.clone())]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let (vm, m) = new_text_cnn("textcnn", &small(), 2, 0, &Device::Cpu).unwrap();
        load_pretrained_embeddings(&vm, &path).unwrap();
        let got: Vec<f32> = vm.data().lock().unwrap()["embedding.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, emb.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let loss = m
            .forward(&input(&[&[1, 5, 6, 2]]), Mode::Train)
            .unwrap()
            .logits
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for (name, v) in vm.data().lock().unwrap().iter() {
            assert!(grads.get(v.as_tensor()).is_some(), "no gradient for `{name}`");
        }
        let (wide, _) =
            new_text_cnn("textcnn", &Config { embed_dim: 8, ..small() }, 2, 0, &Device::Cpu).unwrap();
        let e = load_pretrained_embeddings(&wide, &path).unwrap_err().to_string();
        assert!(e.contains("has shape"), "{e}");
    }
}
