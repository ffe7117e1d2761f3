//! BERT text classifiers: candle-transformers' `BertModel`, a pooled sentence vector
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
//! Not modelled: dropout (candle-transformers' BERT has none, and this head adds none), so
//! fine-tuning here is deterministic but less regularised than in PyTorch.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::{Init, Linear, Module, VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use kd_core::{Classifier, Mode, ModelOutput};

use crate::error::{ModelError, Result};

pub use candle_transformers::models::bert::Config;

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

/// BERT encoder + pooling + linear head.
pub struct BertClassifier {
    bert: BertModel,
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
        let bert = BertModel::load(vb.pp(ENCODER_PREFIX), config)?;
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
        let seq = self.bert.forward(&ids, &types, Some(&mask))?;
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
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
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
