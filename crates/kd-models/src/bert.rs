//! BERT text classifiers: a BERT encoder, a pooled sentence vector
//! (`[CLS]` or the attention-masked mean of the last layer) and a linear head, as Hugging Face's
//! `BertForSequenceClassification` minus its pooler and dropout.
//!
//! Inputs are one `(batch, 3, seq)` u32 tensor (rows `input_ids`, `token_type_ids`,
//! `attention_mask`; kd-data's `glue::pad_inputs`), so the model fits the modality-agnostic
//! [`Classifier`] contract and any method distils it unchanged.
//!
//! Architectures by name: `bert-L<layers>` (the pretrained model's widths), optionally
//! `-H<hidden>-A<heads>` for a narrower student (intermediate size 4·hidden). A model whose
//! widths match a pretrained checkpoint takes its embeddings and a chosen subset of its layers
//! ([`load_pretrained_encoder`]; DistilBERT initialises its student from the teacher's layers
//! the same way).
//!
//! The encoder is Hugging Face's `BertModel` (post-LN, absolute positions, erf GELU), written
//! here on candle-nn's differentiable primitives with Hugging Face's `config.json` keys and
//! variable names. It does not use candle-transformers' `BertModel`: that model normalises with
//! candle-nn's fused `ops::layer_norm`, which is applied with `apply_op3_no_bwd` and so silently
//! cuts the autograd graph: fine-tuning it trained the classifier head alone (the encoder got no
//! gradient at all). [`layer_norm`] here is the same arithmetic in tracked tensor ops.
//!
//! Not modelled: dropout (none in the encoder or the head), so fine-tuning here is deterministic
//! but less regularised than in PyTorch.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::{Embedding, Init, Linear, Module, VarBuilder, VarMap};

use kd_core::{Classifier, Mode, ModelOutput};

use crate::error::{ModelError, Result};
use crate::Kernels;

/// The encoder's part of a Hugging Face BERT `config.json` (other keys are ignored; missing
/// ones take BERT-base's values).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: HiddenAct,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: HiddenAct::Gelu,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }
}

/// The feed-forward activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum HiddenAct {
    /// The exact (erf) GELU, BERT's.
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation.
    #[serde(
        alias = "gelu_new",
        alias = "gelu_pytorch_tanh",
        alias = "gelu_fast",
        rename = "geluapproximate"
    )]
    GeluApproximate,
    #[serde(rename = "relu")]
    Relu,
}

type BertConfig = Config;

/// Prefix of the encoder's variables (the head's is `classifier`).
pub const ENCODER_PREFIX: &str = "bert";

/// How a sequence becomes one vector for the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// The first token's (`[CLS]`) last hidden state.
    Cls,
    /// Mean of the last hidden states over real tokens (sentence-transformers' pooling).
    #[default]
    Mean,
}

impl Pooling {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            other => Err(ModelError::Config {
                arch: "bert".into(),
                message: format!("unknown pooling `{other}`; known: cls, mean"),
            }),
        }
    }
}

/// A BERT architecture name: `bert-L<layers>[-H<hidden>-A<heads>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BertArch {
    pub layers: usize,
    /// `None`: the pretrained model's hidden size and heads.
    pub hidden: Option<(usize, usize)>,
}

impl BertArch {
    pub fn parse(name: &str) -> Result<Self> {
        let bad = |m: &str| {
            ModelError::Config {
            arch: name.into(),
            message: format!("{m}; BERT architectures are `bert-L<layers>` or `bert-L<layers>-H<hidden>-A<heads>`, e.g. bert-L2, bert-L4-H256-A4"),
        }
        };
        let rest = name.strip_prefix("bert-").ok_or_else(|| bad("not a BERT name"))?;
        let mut layers = None;
        let (mut hidden, mut heads) = (None, None);
        for part in rest.split('-') {
            let (k, v) = part.split_at(1.min(part.len()));
            let n: usize = v.parse().map_err(|_| bad(&format!("`{part}` is not <letter><number>")))?;
            match k {
                "L" => layers = Some(n),
                "H" => hidden = Some(n),
                "A" => heads = Some(n),
                _ => return Err(bad(&format!("unknown part `{part}`"))),
            }
        }
        let layers = layers.filter(|&l| l > 0).ok_or_else(|| bad("needs L<layers> ≥ 1"))?;
        let hidden = match (hidden, heads) {
            (None, None) => None,
            (Some(h), Some(a)) if a > 0 && h % a == 0 => Some((h, a)),
            (Some(h), Some(a)) => return Err(bad(&format!("hidden {h} is not a multiple of heads {a}"))),
            _ => return Err(bad("H and A go together")),
        };
        Ok(BertArch { layers, hidden })
    }

    /// The encoder config: `base` (a pretrained model's `config.json`) with this depth and width.
    pub fn config(&self, base: &BertConfig) -> BertConfig {
        let mut c = base.clone();
        c.num_hidden_layers = self.layers;
        if let Some((h, a)) = self.hidden {
            if h != base.hidden_size || a != base.num_attention_heads {
                c.hidden_size = h;
                c.num_attention_heads = a;
                c.intermediate_size = 4 * h;
            }
        }
        c
    }
}

/// Reads a model repo's `config.json` as a BERT config.
pub fn read_config(path: &Path) -> Result<BertConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::checkpoint(path, format!("not a BERT config.json: {e}")))
}

/// Trainable parameters of a BERT encoder with `config` and a `classes`-way head.
pub fn num_params(c: &BertConfig, classes: usize) -> usize {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h + 2 * h;
    let layer = 4 * (h * h + h) + 2 * (2 * h) + (h * i + i) + (i * h + h);
    embeddings + c.num_hidden_layers * layer + h * classes + classes
}

/// `(x − mean) / sqrt(var + eps) · weight + bias` over the last dimension, in tracked tensor
/// ops (gradients reach `x`, `weight` and `bias`; candle-nn's fused layer norm has no backward).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let h = x.dim(D::Minus1)? as f64;
    let centred = x.broadcast_sub(&(x.sum_keepdim(D::Minus1)? / h)?)?;
    let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / h)?;
    centred.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(weight)?.broadcast_add(bias)
}

/// A LayerNorm's parameters (`weight` initialised to 1, `bias` to 0).
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// One post-LN transformer layer (names as Hugging Face's `BertLayer`).
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    inter: Linear,
    out: Linear,
    out_norm: Norm,
    heads: usize,
    act: HiddenAct,
    /// Runs the activation (kd-kernels' one-pass GELU on the CPU, candle's op elsewhere).
    kernels: Kernels,
}

impl Layer {
    fn new(c: &BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let a = vb.pp("attention");
        Ok(Self {
            query: candle_nn::linear(h, h, a.pp("self").pp("query"))?,
            key: candle_nn::linear(h, h, a.pp("self").pp("key"))?,
            value: candle_nn::linear(h, h, a.pp("self").pp("value"))?,
            attn_out: candle_nn::linear(h, h, a.pp("output").pp("dense"))?,
            attn_norm: Norm::new(h, c.layer_norm_eps, a.pp("output").pp("LayerNorm"))?,
            inter: candle_nn::linear(h, i, vb.pp("intermediate").pp("dense"))?,
            out: candle_nn::linear(i, h, vb.pp("output").pp("dense"))?,
            out_norm: Norm::new(h, c.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: c.num_attention_heads,
            act: c.hidden_act,
            kernels: crate::layers::layer_kernels(vb.device()),
        })
    }

    /// `x`: `(batch, seq, hidden)`; `bias`: `(batch, 1, 1, seq)`, 0 on tokens and a large
    /// negative number on padding.
    fn forward(&self, x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let d = h / self.heads;
        let split = |t: Tensor| t.reshape((b, s, self.heads, d))?.transpose(1, 2)?.contiguous();
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b, s, h))?;
        let x = self.attn_norm.forward(&(self.attn_out.forward(&ctx)? + x)?)?;
        let inter = self.inter.forward(&x)?;
        let inter = match self.act {
            HiddenAct::Gelu => self.kernels.gelu_erf(&inter)?,
            HiddenAct::GeluApproximate => inter.gelu()?,
            HiddenAct::Relu => inter.relu()?,
        };
        self.out_norm.forward(&(self.out.forward(&inter)? + x)?)
    }
}

/// Hugging Face's `BertModel` without its pooler: embeddings (word + position + token type,
/// LayerNorm) and the layers; variables `embeddings.*`, `encoder.layer.<i>.*`.
pub struct BertEncoder {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: Norm,
    layers: Vec<Layer>,
}

impl BertEncoder {
    pub fn new(c: &BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let e = vb.pp("embeddings");
        let h = c.hidden_size;
        Ok(Self {
            word: candle_nn::embedding(c.vocab_size, h, e.pp("word_embeddings"))?,
            position: candle_nn::embedding(c.max_position_embeddings, h, e.pp("position_embeddings"))?,
            token_type: candle_nn::embedding(c.type_vocab_size, h, e.pp("token_type_embeddings"))?,
            norm: Norm::new(h, c.layer_norm_eps, e.pp("LayerNorm"))?,
            layers: (0..c.num_hidden_layers)
                .map(|i| Layer::new(c, vb.pp(format!("encoder.layer.{i}"))))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    /// Last hidden states `(batch, seq, hidden)` of `(batch, seq)` ids, segment ids and
    /// attention mask (1 = token, 0 = padding).
    pub fn forward(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (_, s) = ids.dims2()?;
        let pos = Tensor::arange(0u32, s as u32, ids.device())?;
        let x = (self.word.forward(ids)? + self.token_type.forward(types)?)?
            .broadcast_add(&self.position.forward(&pos)?)?;
        let mut x = self.norm.forward(&x)?;
        // Hugging Face: (1 − mask) · finfo(f32).min added to the attention scores.
        let bias = ((1.0 - mask.to_dtype(x.dtype())?)? * f64::from(f32::MIN))?.unsqueeze(1)?.unsqueeze(1)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias)?;
        }
        Ok(x)
    }
}

/// BERT encoder + pooling + linear head.
pub struct BertClassifier {
    bert: BertEncoder,
    head: Linear,
    pooling: Pooling,
    arch: String,
    num_classes: usize,
    params: usize,
}

impl BertClassifier {
    /// Builds the model on `vb` (encoder under `bert.`, head under `classifier.`). New head
    /// weights are drawn from N(0, 0.02) with zero bias, as Hugging Face initialises them.
    pub fn new(
        arch: &str,
        config: &BertConfig,
        num_classes: usize,
        pooling: Pooling,
        vb: VarBuilder,
    ) -> Result<Self> {
        if num_classes == 0 {
            return Err(ModelError::Config {
                arch: arch.into(),
                message: "needs at least one output".into(),
            });
        }
        if !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(ModelError::Config {
                arch: arch.into(),
                message: format!(
                    "hidden size {} is not a multiple of {} heads",
                    config.hidden_size, config.num_attention_heads
                ),
            });
        }
        let bert = BertEncoder::new(config, vb.pp(ENCODER_PREFIX))?;
        let hv = vb.pp("classifier");
        let w = hv.get_with_hints(
            (num_classes, config.hidden_size),
            "weight",
            Init::Randn { mean: 0.0, stdev: 0.02 },
        )?;
        let b = hv.get_with_hints(num_classes, "bias", Init::Const(0.0))?;
        Ok(Self {
            bert,
            head: Linear::new(w, Some(b)),
            pooling,
            arch: arch.to_string(),
            num_classes,
            params: num_params(config, num_classes),
        })
    }

    /// The pooled sentence vectors `(batch, hidden)` of a `(batch, 3, seq)` input.
    pub fn pooled(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        let (_, rows, _) = input.dims3()?;
        if rows != 3 {
            candle_core::bail!(
                "BERT input must be (batch, 3, seq): input_ids, token_type_ids, attention_mask; got {:?}",
                input.dims()
            );
        }
        let ids = input.i((.., 0, ..))?.contiguous()?;
        let types = input.i((.., 1, ..))?.contiguous()?;
        let mask = input.i((.., 2, ..))?.contiguous()?;
        let seq = self.bert.forward(&ids, &types, &mask)?;
        match self.pooling {
            Pooling::Cls => seq.i((.., 0, ..))?.contiguous(),
            Pooling::Mean => {
                let m = mask.to_dtype(seq.dtype())?.unsqueeze(D::Minus1)?;
                let sum = seq.broadcast_mul(&m)?.sum(1)?;
                let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
                sum.broadcast_div(&count)
            }
        }
    }
}

impl Classifier for BertClassifier {
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

/// A trainable model whose initial weights depend only on `seed` (and the config).
pub fn new_bert_model(
    arch: &str,
    config: &BertConfig,
    num_classes: usize,
    pooling: Pooling,
    seed: u64,
    device: &Device,
) -> Result<(VarMap, BertClassifier)> {
    let varmap = VarMap::new();
    let vb = crate::init::seeded_var_builder(&varmap, seed, DType::F32, device);
    let model = BertClassifier::new(arch, config, num_classes, pooling, vb)?;
    Ok((varmap, model))
}

/// A frozen model (plain tensors, no gradient graph) with weights from `tensors` (names as in
/// [`new_bert_model`]'s `VarMap`), checked: a missing or misshapen tensor is an error.
pub fn frozen_bert_model(
    arch: &str,
    config: &BertConfig,
    num_classes: usize,
    pooling: Pooling,
    tensors: std::collections::HashMap<String, Tensor>,
    source: &Path,
    device: &Device,
) -> Result<BertClassifier> {
    let (varmap, _) = new_bert_model(arch, config, num_classes, pooling, 0, device)?;
    let mut want: Vec<(String, Vec<usize>)> = {
        let vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        vars.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect()
    };
    want.sort();
    let mut problems = Vec::new();
    for (name, dims) in &want {
        match tensors.get(name) {
            None => problems.push(format!("missing tensor `{name}`")),
            Some(t) if t.dims() != dims.as_slice() => {
                problems.push(format!("tensor `{name}` has shape {:?}, the model needs {dims:?}", t.dims()))
            }
            _ => {}
        }
    }
    if !problems.is_empty() {
        return Err(ModelError::checkpoint(source, problems.join("; ")));
    }
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    BertClassifier::new(arch, config, num_classes, pooling, vb)
}

/// Copies a pretrained encoder (a model repo's `model.safetensors`, names with or without a
/// `bert.` prefix) into the `bert.*` variables of `varmap`: embeddings as they are, student
/// layer `i` from pretrained layer `layer_map[i]`. Every encoder variable must be found with its
/// shape (a narrower student cannot take a wider model's weights: the error names the tensor).
/// Returns how many tensors were copied.
pub fn load_pretrained_encoder(varmap: &VarMap, path: &Path, layer_map: &[usize]) -> Result<usize> {
    let tensors = candle_core::safetensors::load(path, &crate::host_device())
        .map_err(|e| ModelError::checkpoint(path, format!("not a safetensors file: {e}")))?;
    let vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<&String> = vars.keys().filter(|k| k.starts_with("bert.")).collect();
    names.sort();
    let mut plan = Vec::new();
    let mut problems = Vec::new();
    for name in names {
        let local = &name["bert.".len()..];
        // encoder.layer.<i>.rest → encoder.layer.<layer_map[i]>.rest
        let source = match local.strip_prefix("encoder.layer.") {
            Some(rest) => {
                let (i, tail) = rest.split_once('.').unwrap_or((rest, ""));
                let i: usize = i.parse().unwrap_or(usize::MAX);
                match layer_map.get(i) {
                    Some(j) => format!("encoder.layer.{j}.{tail}"),
                    None => {
                        problems.push(format!(
                            "no pretrained layer chosen for layer {i} (layer map {layer_map:?})"
                        ));
                        continue;
                    }
                }
            }
            None => local.to_string(),
        };
        let t = tensors.get(&source).or_else(|| tensors.get(&format!("bert.{source}")));
        let var = &vars[name];
        match t {
            None => problems.push(format!("no tensor `{source}` for `{name}`")),
            Some(t) if t.dims() != var.dims() => problems.push(format!(
                "tensor `{source}` has shape {:?}, `{name}` needs {:?}",
                t.dims(),
                var.dims()
            )),
            Some(t) => plan.push((var.clone(), t.clone())),
        }
    }
    if !problems.is_empty() {
        return Err(ModelError::checkpoint(path, problems.join("; ")));
    }
    for (var, t) in &plan {
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(plan.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> BertConfig {
        BertConfig {
            vocab_size: 20,
            hidden_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 16,
            max_position_embeddings: 16,
            ..BertConfig::default()
        }
    }

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

    #[test]
    fn arch_names() {
        assert_eq!(BertArch::parse("bert-L2").unwrap(), BertArch { layers: 2, hidden: None });
        assert_eq!(BertArch::parse("bert-L4-H256-A4").unwrap().hidden, Some((256, 4)));
        for bad in ["bert", "bert-L0", "bert-L2-H100-A3", "bert-L2-H64", "resnet20", "bert-X2"] {
            assert!(BertArch::parse(bad).is_err(), "{bad}");
        }
        let c = BertArch::parse("bert-L1-H4-A2").unwrap().config(&tiny());
        assert_eq!((c.num_hidden_layers, c.hidden_size, c.intermediate_size), (1, 4, 16));
    }

    #[test]
    fn padding_does_not_change_the_logits_and_params_are_counted() {
        for pooling in [Pooling::Mean, Pooling::Cls] {
            let (varmap, m) = new_bert_model("bert-L2", &tiny(), 3, pooling, 7, &Device::Cpu).unwrap();
            let alone = m.forward(&input(&[&[1, 5, 6, 2]]), Mode::Eval).unwrap().logits;
            let padded =
                m.forward(&input(&[&[1, 5, 6, 2], &[1, 3, 4, 7, 8, 9, 2]]), Mode::Eval).unwrap().logits;
            let a: Vec<f32> = alone.flatten_all().unwrap().to_vec1().unwrap();
            let p: Vec<Vec<f32>> = padded.to_vec2().unwrap();
            for (x, y) in a.iter().zip(&p[0]) {
                assert!((x - y).abs() < 1e-5, "{pooling:?}: {a:?} vs {:?}", p[0]);
            }
            let counted: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
            assert_eq!(m.num_params(), counted);
        }
    }

    /// Regression test for the frozen-encoder bug: a loss on the logits must reach every
    /// variable (embeddings, every layer's LayerNorms, the head), not only the head.
    #[test]
    fn every_variable_gets_a_gradient() {
        let (varmap, m) = new_bert_model("bert-L2", &tiny(), 3, Pooling::Mean, 7, &Device::Cpu).unwrap();
        let x = input(&[&[1, 5, 6, 2], &[1, 3, 4, 7, 8, 9, 2]]);
        let loss = m.forward(&x, Mode::Train).unwrap().logits.sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        assert_eq!(vars.len(), 5 + 2 * 16 + 2);
        for (name, v) in vars.iter() {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for `{name}`"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(
                norm > 0.0 || name.contains("position") || name.contains("token_type"),
                "`{name}`: zero gradient"
            );
        }
    }

    /// `layer_norm` against hand arithmetic: x = [1, 2, 3, 6], mean 3, var (4+1+0+9)/4 = 3.5,
    /// (x − 3)/sqrt(3.5) = [−1.069045, −0.534522, 0, 1.603567]; times w = 2, plus b = 1.
    #[test]
    fn layer_norm_matches_hand_arithmetic() {
        let x = Tensor::new(&[[1f32, 2., 3., 6.]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[2f32; 4], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1f32; 4], &Device::Cpu).unwrap();
        let y: Vec<Vec<f32>> = layer_norm(&x, &w, &b, 0.0).unwrap().to_vec2().unwrap();
        for (got, want) in y[0].iter().zip([-1.13809f32, -0.069045, 1.0, 4.207135]) {
            assert!((got - want).abs() < 1e-5, "{y:?}");
        }
    }

    /// The real all-MiniLM-L6-v2 (from the shared hub cache: `$HF_HOME`, a relative value taken
    /// from the workspace root, unset `<workspace>/../shared/data/hf-cache`; the test FAILS, never
    /// skips, when the model is missing) loaded into a
    /// `bert-L6` gives the same mean-pooled last hidden state for "[CLS] a great movie [SEP]"
    /// (ids 101, 1037, 2307, 3185, 102) as an independent pure-Python forward pass (Hugging
    /// Face BertModel semantics: embeddings + LayerNorm, 6 post-LN layers, 12 heads, erf GELU,
    /// eps 1e-12; float64 arithmetic on the file's float32 weights), written by hand from the
    /// safetensors bytes with no ML library. Reference values: pooled[0..8] and the norm.
    #[test]
    fn pretrained_minilm_matches_an_independent_forward_pass() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let home = match std::env::var_os("HF_HOME").map(std::path::PathBuf::from) {
            Some(home) if home.is_absolute() => home,
            Some(home) => root.join(home),
            None => root.join("../shared/data/hf-cache"),
        };
        let snap = home.join(
            "hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
        );
        assert!(
            snap.join("model.safetensors").is_file(),
            "real-data test, data missing: no {} (HF_HOME={}). Set HF_HOME to the shared hub cache, \
             e.g. HF_HOME=../shared/data/hf-cache from the repository root (a relative HF_HOME is taken \
             from there; unset, it is <repo>/../shared/data/hf-cache)",
            snap.join("model.safetensors").display(),
            std::env::var("HF_HOME").unwrap_or_else(|_| "<unset>".into()),
        );
        let base = read_config(&snap.join("config.json")).unwrap();
        let (varmap, m) = new_bert_model("bert-L6", &base, 2, Pooling::Mean, 0, &Device::Cpu).unwrap();
        let n =
            load_pretrained_encoder(&varmap, &snap.join("model.safetensors"), &[0, 1, 2, 3, 4, 5]).unwrap();
        assert_eq!(n, 5 + 6 * 16);
        // A second, longer sentence in the batch pads the first: the mask must hide the padding.
        let x = input(&[&[101, 1037, 2307, 3185, 102], &[101, 1037, 6659, 3185, 1037, 6659, 3185, 102]]);
        let pooled: Vec<Vec<f32>> = m.pooled(&x).unwrap().to_vec2().unwrap();
        let want = [-0.735823f32, 0.353273, -0.166131, 0.102669, -0.450909, 0.365104, 0.41652, 0.060592];
        for (k, w) in want.iter().enumerate() {
            assert!((pooled[0][k] - w).abs() < 1e-4, "pooled[{k}] = {} vs reference {w}", pooled[0][k]);
        }
        let norm: f32 = pooled[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 6.427646).abs() < 1e-3, "norm {norm}");
    }

    #[test]
    fn lower_layers_come_from_the_pretrained_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        // A "pretrained" 2-layer encoder saved without the `bert.` prefix (as MiniLM's file).
        let (teacher_vars, _) =
            new_bert_model("bert-L2", &tiny(), 3, Pooling::Mean, 1, &Device::Cpu).unwrap();
        let tensors: std::collections::HashMap<String, Tensor> = teacher_vars
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("bert.")?.to_string(), v.as_tensor().clone())))
            .collect();
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let cfg = BertArch::parse("bert-L1").unwrap().config(&tiny());
        let (student, _) = new_bert_model("bert-L1", &cfg, 3, Pooling::Mean, 2, &Device::Cpu).unwrap();
        let n = load_pretrained_encoder(&student, &path, &[1]).unwrap();
        assert_eq!(n, 5 + 16, "5 embedding tensors + 16 per layer");
        let get = |vm: &VarMap, k: &str| -> Vec<f32> {
            vm.data().lock().unwrap()[k].as_tensor().flatten_all().unwrap().to_vec1().unwrap()
        };
        assert_eq!(
            get(&student, "bert.encoder.layer.0.attention.self.query.weight"),
            get(&teacher_vars, "bert.encoder.layer.1.attention.self.query.weight")
        );
        assert_eq!(
            get(&student, "bert.embeddings.word_embeddings.weight"),
            get(&teacher_vars, "bert.embeddings.word_embeddings.weight")
        );
        // A narrower student cannot take them: the error names a tensor.
        let narrow = BertArch::parse("bert-L1-H4-A2").unwrap().config(&tiny());
        let (small, _) = new_bert_model("bert-L1-H4-A2", &narrow, 3, Pooling::Mean, 2, &Device::Cpu).unwrap();
        let e = load_pretrained_encoder(&small, &path, &[0]).unwrap_err().to_string();
        assert!(e.contains("has shape"), "{e}");
    }
}
