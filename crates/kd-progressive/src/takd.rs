//! Teacher-assistant knowledge distillation (TAKD; Mirzadeh et al., AAAI 2020).
//!
//! `chain = ["resnet20"]` lists the assistants between the recipe's pretrained `[teacher]` and
//! its `[student]`, teacher side first. Every link is a vanilla-KD stage (kd-vanilla's
//! Hinton loss with this recipe's `temperature`, `alpha`, `label_smoothing`) whose trained
//! student becomes the next link's teacher. An assistant's weights are determined by its
//! [`AssistantKey`]: the teacher's SHA-256, the chain prefix up to and including it, the data,
//! the train section, the distillation settings and the seed; kd-cli caches assistants by
//! the key's hash, so a longer chain or another variant reuses a shared prefix.
//!
//! Loss convention: `T²·KL` summed over classes and averaged over the batch (RepDistiller's
//! `DistillKL`), not the element-wise mean of the reference TAKD code (which divides the KL by
//! the number of classes as well and so weakens the soft term by that factor).

use std::sync::Arc;

use candle_core::{Result, Tensor};
use kd_core::hash::config_hash;
use kd_core::losses::SoftTargetConfig as VanillaConfig;
use kd_core::recipe::{DataSection, TrainSection};
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, StepContext};
use serde::{Deserialize, Serialize};

use crate::{config_err, ProgressiveError};

const METHOD: &str = "takd";

/// The variants of method `takd` (besides `plain`): `direct` distils the student from the
/// teacher (vanilla KD), `chain` through the assistants.
pub const VARIANTS: [&str; 2] = ["direct", "chain"];

/// `[distill]` for `method = "takd"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakdConfig {
    /// Softmax temperature of every link.
    pub temperature: f64,
    /// Weight of the soft-target term of every link (`1-α` weighs the hard-label CE).
    pub alpha: f64,
    #[serde(default)]
    pub label_smoothing: f64,
    /// Assistant architectures between teacher and student, teacher side first. Empty: the
    /// `chain` variant is vanilla KD from the teacher.
    #[serde(default)]
    pub chain: Vec<String>,
}

impl TakdConfig {
    /// Parses and validates the recipe's `[distill]` table.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, ProgressiveError> {
        let cfg: TakdConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| config_err(METHOD, e.message().to_string()))?;
        if cfg.temperature.is_nan() || cfg.temperature <= 0.0 {
            return Err(config_err(METHOD, format!("temperature must be > 0, got {}", cfg.temperature)));
        }
        if !(0.0..=1.0).contains(&cfg.alpha) {
            return Err(config_err(METHOD, format!("alpha must be in [0, 1], got {}", cfg.alpha)));
        }
        if !(0.0..1.0).contains(&cfg.label_smoothing) {
            return Err(config_err(
                METHOD,
                format!("label_smoothing must be in [0, 1), got {}", cfg.label_smoothing),
            ));
        }
        if let Some(i) = cfg.chain.iter().position(|a| a.trim().is_empty()) {
            return Err(config_err(METHOD, format!("chain[{i}] is an empty architecture name")));
        }
        Ok(cfg)
    }

    /// The loss of every link, as kd-vanilla's configuration.
    pub fn vanilla(&self) -> VanillaConfig {
        VanillaConfig {
            temperature: self.temperature,
            alpha: self.alpha,
            label_smoothing: self.label_smoothing,
        }
    }
}

/// Everything that determines an assistant's weights; its [`AssistantKey::hash`] names the
/// cached file. Two chains that share a prefix share the prefix's keys.
#[derive(Debug, Clone, Serialize)]
pub struct AssistantKey<'a> {
    /// What the key is for (so no other cached object can collide with it).
    pub kind: &'static str,
    pub teacher_arch: &'a str,
    /// SHA-256 of the pretrained teacher's weights file.
    pub teacher_sha256: &'a str,
    /// Whether the first link read the teacher through the soft-label cache (its logits agree
    /// with the live teacher's to ~1e-6, not bit for bit).
    pub teacher_soft_label_cache: bool,
    /// The chain up to and including this assistant.
    pub chain: &'a [String],
    pub data: &'a DataSection,
    pub train: &'a TrainSection,
    pub distill: VanillaConfig,
    /// The run seed (initialisation and data order of every link derive from it).
    pub seed: u64,
}

impl<'a> AssistantKey<'a> {
    /// The key of assistant `index` (0-based) of `cfg.chain`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        teacher_arch: &'a str,
        teacher_sha256: &'a str,
        teacher_soft_label_cache: bool,
        cfg: &'a TakdConfig,
        index: usize,
        data: &'a DataSection,
        train: &'a TrainSection,
        seed: u64,
    ) -> Self {
        AssistantKey {
            kind: "takd-assistant/v1",
            teacher_arch,
            teacher_sha256,
            teacher_soft_label_cache,
            chain: &cfg.chain[..=index],
            data,
            train,
            distill: cfg.vanilla(),
            seed,
        }
    }

    /// Hex SHA-256 of the key's canonical JSON.
    pub fn hash(&self) -> kd_core::Result<String> {
        config_hash(self)
    }
}

/// A method plus frozen models it reports beside its own (e.g. a chain's assistants, as
/// `assistant-1`, `assistant-2`, ...). Training is the inner method's alone.
pub struct WithFrozen {
    inner: Box<dyn Method>,
    frozen: Vec<(EvalEntry, Arc<dyn Classifier>)>,
}

impl WithFrozen {
    /// `frozen` models are reported as `{role_prefix}-1`, `{role_prefix}-2`, ... in order.
    pub fn new(inner: Box<dyn Method>, role_prefix: &str, frozen: Vec<Arc<dyn Classifier>>) -> Self {
        let frozen = frozen
            .into_iter()
            .enumerate()
            .map(|(i, m)| (EvalEntry::of(&format!("{role_prefix}-{}", i + 1), m.as_ref()), m))
            .collect();
        Self { inner, frozen }
    }
}

impl Method for WithFrozen {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn variant(&self) -> &str {
        self.inner.variant()
    }

    fn losses(&mut self, batch: &Batch, ctx: &StepContext) -> Result<Losses> {
        self.inner.losses(batch, ctx)
    }

    fn eval_entries(&self) -> Vec<EvalEntry> {
        let mut e = self.inner.eval_entries();
        e.extend(self.frozen.iter().map(|(entry, _)| entry.clone()));
        e
    }

    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
        let mut out = self.inner.eval_logits(inputs)?;
        for (_, m) in &self.frozen {
            out.push(m.forward(inputs, Mode::Eval)?.logits);
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;
    use kd_core::ModelOutput;

    /// A "model" whose logits are fixed (for loss tests); the input only sets nothing.
    pub(crate) struct Fixed {
        logits: Tensor,
        arch: String,
    }

    impl Fixed {
        pub(crate) fn new(l: &[[f32; 4]; 3], arch: &str) -> Self {
            Fixed { logits: Tensor::new(l, &Device::Cpu).unwrap(), arch: arch.into() }
        }
    }

    impl Classifier for Fixed {
        fn forward(&self, _input: &Tensor, _mode: Mode) -> Result<ModelOutput> {
            Ok(ModelOutput {
                logits: self.logits.clone(),
                stage_features: vec![],
                embedding: self.logits.clone(),
            })
        }
        fn num_classes(&self) -> usize {
            4
        }
        fn arch(&self) -> &str {
            &self.arch
        }
        fn num_params(&self) -> usize {
            7
        }
    }

    pub(crate) fn batch(labels: &[u32]) -> Batch {
        let dev = Device::Cpu;
        Batch {
            inputs: Tensor::zeros((labels.len(), 1), candle_core::DType::F32, &dev).unwrap(),
            labels: Tensor::new(labels, &dev).unwrap(),
            example_ids: (0..labels.len() as u32).collect(),
            views: vec![0; labels.len()],
            strong: None,
        }
    }

    // Parsed from recipe text, so fields other crates add with defaults need no change here.
    fn data() -> DataSection {
        toml::from_str(
            "hub = \"uoft-cs/cifar10\"\ntrain_split = \"train\"\neval_split = \"test\"\n\
             image_column = \"img\"\nlabel_column = \"label\"\nnum_classes = 10\n\
             train_limit = 5000\nnormalize = { mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }",
        )
        .unwrap()
    }

    fn train() -> TrainSection {
        toml::from_str(
            "epochs = 3\nbatch_size = 64\n\
             optimizer = { kind = \"sgd\", lr = 0.1, momentum = 0.9, weight_decay = 5e-4 }\n\
             lr_schedule = { kind = \"constant\" }",
        )
        .unwrap()
    }

    fn cfg(chain: &[&str]) -> TakdConfig {
        TakdConfig {
            temperature: 4.0,
            alpha: 0.9,
            label_smoothing: 0.0,
            chain: chain.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn assistant_keys_are_shared_by_chain_prefixes_and_change_with_what_determines_them() {
        let (d, t) = (data(), train());
        let long = cfg(&["resnet32", "resnet20"]);
        let short = cfg(&["resnet32"]);
        let key = |c: &TakdConfig, i: usize, sha: &str, seed: u64| {
            AssistantKey::new("resnet56", sha, false, c, i, &d, &t, seed).hash().unwrap()
        };
        let base = key(&long, 0, "aa", 0);
        assert_eq!(base.len(), 64);
        // The first assistant of the longer chain is the shorter chain's assistant.
        assert_eq!(base, key(&short, 0, "aa", 0));
        assert_ne!(base, key(&long, 1, "aa", 0), "the second link is another model");
        assert_ne!(base, key(&long, 0, "bb", 0), "another teacher");
        assert_ne!(base, key(&long, 0, "aa", 1), "another seed");
        let mut t2 = t.clone();
        t2.epochs = 4;
        assert_ne!(base, AssistantKey::new("resnet56", "aa", false, &long, 0, &d, &t2, 0).hash().unwrap());
        let mut hot = long.clone();
        hot.temperature = 2.0;
        assert_ne!(base, key(&hot, 0, "aa", 0), "another temperature");
        assert_ne!(base, AssistantKey::new("resnet56", "aa", true, &long, 0, &d, &t, 0).hash().unwrap());
    }

    #[test]
    fn with_frozen_reports_assistants_after_the_student_and_trains_only_the_inner_method() {
        let s: Arc<dyn Classifier> = Arc::new(Fixed::new(&[[1.0, 0.0, 0.0, 0.0]; 3], "resnet8"));
        let a: Arc<dyn Classifier> = Arc::new(Fixed::new(&[[0.0, 2.0, 0.0, 0.0]; 3], "resnet20"));
        let inner = Box::new(kd_core::plain::PlainTraining::new("takd", s, 0.0));
        let mut m = WithFrozen::new(inner, "assistant", vec![a]);
        let e = m.eval_entries();
        assert_eq!(e.iter().map(|e| e.role.as_str()).collect::<Vec<_>>(), ["student", "assistant-1"]);
        assert_eq!(e[1].model, "resnet20");
        let x = Tensor::zeros((3, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
        let l = m.eval_logits(&x).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].argmax(1).unwrap().to_vec1::<u32>().unwrap(), [1, 1, 1]);
        let ctx = StepContext { epoch: 0, epochs: 1, step_in_epoch: 0, steps_per_epoch: 1 };
        let losses = m.losses(&batch(&[0, 0, 0]), &ctx).unwrap();
        // Plain CE of logits [1,0,0,0] with label 0: -ln(e/(e+3)).
        let want = -(1f64.exp() / (1f64.exp() + 3.0)).ln();
        assert!((losses.total.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
    }

    #[test]
    fn config_parses_chain_and_rejects_bad_values() {
        let t: toml::Table =
            toml::from_str("temperature = 4.0\nalpha = 0.9\nchain = [\"resnet20\"]").unwrap();
        let c = TakdConfig::from_table(&t).unwrap();
        assert_eq!(c.chain, ["resnet20"]);
        assert_eq!(c.vanilla().temperature, 4.0);
        let t: toml::Table = toml::from_str("temperature = 4.0\nalpha = 0.9\nchian = []").unwrap();
        assert!(TakdConfig::from_table(&t).unwrap_err().to_string().contains("chian"));
        let t: toml::Table = toml::from_str("temperature = 0.0\nalpha = 0.9").unwrap();
        assert!(TakdConfig::from_table(&t).unwrap_err().to_string().contains("temperature"));
        let t: toml::Table = toml::from_str("temperature = 4.0\nalpha = 0.9\nchain = [\"\"]").unwrap();
        assert!(TakdConfig::from_table(&t).unwrap_err().to_string().contains("chain[0]"));
    }
}
