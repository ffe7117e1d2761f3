//! CRD: contrastive representation distillation (Tian, Krishnan & Isola, "Contrastive
//! Representation Distillation", ICLR 2020), as RepDistiller implements it
//! (`crd/criterion.py` `CRDLoss`, `Embed`, `ContrastLoss`; `crd/memory.py` `ContrastMemory`;
//! `train_student.py` defaults).
//!
//! Inputs: the pooled pre-logit embeddings of student and teacher,
//! [`kd_core::model::ModelOutput::embedding`] (`(B, D)`; RepDistiller's `feat[-1]`, mdistiller's
//! `pooled_feat`), and the batch's example ids ([`kd_core::batch::Batch::example_ids`], the
//! reference's `index`). Each is projected by a linear [`Embed`] head to `feat_dim` and
//! L2-normalised; the NCE-style loss of Eq. 18 contrasts each anchor's positive with `nce_k`
//! negatives drawn from a momentum memory bank of the *other* network's embeddings, in both
//! directions. The heads are trainable; the bank is state ([`crate::memory_bank`]).
//!
//! Where paper and code differ, this follows the code: the loss uses a fixed noise
//! distribution `Pn = 1 / n_data` and normalisation constants `Z` frozen on the first batch
//! (`ContrastMemory`), not a learned partition function; negatives in training come from the
//! data loader (`CIFAR100InstanceSample`, other classes), not from `ContrastMemory`'s uniform
//! `AliasMethod` fallback (both available: [`NegativeSampling`]).

use std::collections::HashMap;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

pub use crate::memory_bank::NegativeSampling;
use crate::memory_bank::{ContrastMemory, NegativeSampler};

/// `eps` of `ContrastLoss`.
const EPS: f64 = 1e-7;

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("[distill] crd: {0}")]
    Config(String),
    #[error("crd state: {0}")]
    State(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// CRD hyper-parameters; defaults are RepDistiller `train_student.py`'s and its README's
/// CRD command (`--distill crd -a 0 -b 0.8`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrdConfig {
    /// Dimension of the contrastive embedding (`--feat_dim`).
    pub feat_dim: usize,
    /// Negatives per positive (`--nce_k`); must be below the train-set size.
    pub nce_k: usize,
    /// Temperature of the scores (`--nce_t`).
    pub nce_t: f64,
    /// Momentum of the memory-bank update (`--nce_m`).
    pub nce_m: f64,
    /// Weight β of the CRD term in the student's loss (`-b`).
    pub weight: f64,
    /// Where negatives come from.
    pub negatives: NegativeSampling,
}

impl Default for CrdConfig {
    fn default() -> Self {
        Self {
            feat_dim: 128,
            nce_k: 16384,
            nce_t: 0.07,
            nce_m: 0.5,
            weight: 0.8,
            negatives: NegativeSampling::OtherClass,
        }
    }
}

impl CrdConfig {
    /// Parses a recipe's `[distill]` table: unknown keys are refused by name, values checked.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, CrdError> {
        let cfg: CrdConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| CrdError::Config(e.message().to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values: `feat_dim`, `nce_k` > 0, `nce_t` > 0, `nce_m` in `[0, 1)`, weight ≥ 0.
    pub fn validate(&self) -> std::result::Result<(), CrdError> {
        let bad = |m: String| Err(CrdError::Config(m));
        if self.feat_dim == 0 {
            return bad("feat_dim must be > 0".into());
        }
        if self.nce_k == 0 {
            return bad("nce_k must be > 0".into());
        }
        if !(self.nce_t.is_finite() && self.nce_t > 0.0) {
            return bad(format!("nce_t must be > 0, got {}", self.nce_t));
        }
        if !(0.0..1.0).contains(&self.nce_m) {
            return bad(format!("nce_m must be in [0, 1), got {}", self.nce_m));
        }
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return bad(format!("weight must be >= 0, got {}", self.weight));
        }
        Ok(())
    }

    /// Refuses a memory bank that cannot supply `nce_k` negatives: `nce_k >= n_data`.
    /// (RepDistiller would silently sample with replacement; here it is almost always a
    /// recipe mistake, e.g. a smoke profile that kept the 16384 default.)
    pub fn check_train_set(&self, n_data: usize) -> std::result::Result<(), CrdError> {
        if self.nce_k >= n_data {
            return Err(CrdError::Config(format!(
                "nce_k = {} negatives per example need a larger train set: the memory bank holds one \
                 row per training example, {n_data} here, and each step draws nce_k of them. Set \
                 nce_k below {n_data} in [distill] (RepDistiller's 16384 is for the 50,000 CIFAR-100 \
                 training images; a data.train_limit subset needs a smaller one)",
                self.nce_k
            )));
        }
        Ok(())
    }
}

/// `Embed`: linear projection to the contrastive space, then L2 normalisation (no epsilon,
/// as the reference's `Normalize`). Initialised like `nn.Linear`: `U(±1/sqrt(dim_in))`.
#[derive(Debug, Clone)]
pub struct Embed {
    linear: Linear,
}

impl Embed {
    /// Parameters `linear.weight` `(dim_out, dim_in)` and `linear.bias` under `vb`.
    pub fn new(dim_in: usize, dim_out: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("linear");
        let bound = 1.0 / (dim_in as f64).sqrt();
        let init = Init::Uniform { lo: -bound, up: bound };
        let weight = vb.get_with_hints((dim_out, dim_in), "weight", init)?;
        let bias = vb.get_with_hints(dim_out, "bias", init)?;
        Ok(Self { linear: Linear::new(weight, Some(bias)) })
    }
}

impl Module for Embed {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.linear.forward(&x.flatten_from(1)?)?;
        let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
        x.broadcast_div(&norm)
    }
}

/// `ContrastLoss` (Eq. 18): `x` is `(B, 1 + m)` scores, column 0 the positive; with
/// `c = m / n_data`, `−(Σ log(x₀ / (x₀ + c + ε)) + Σ log(c / (xⱼ + c + ε))) / B`.
pub fn contrast_loss(x: &Tensor, n_data: usize) -> Result<Tensor> {
    let (batch, cols) = x.dims2()?;
    let m = cols - 1;
    let c = m as f64 / n_data as f64;
    let pos = x.narrow(1, 0, 1)?;
    let log_d1 = (&pos / pos.affine(1.0, c + EPS)?)?.log()?;
    let neg = x.narrow(1, 1, m)?;
    let log_d0 = (neg.ones_like()?.affine(c, 0.0)? / neg.affine(1.0, c + EPS)?)?.log()?;
    (log_d1.sum_all()? + log_d0.sum_all()?)? / -(batch as f64)
}

/// CRD: both embedding heads, the memory bank and the negative sampler.
#[derive(Debug)]
pub struct Crd {
    config: CrdConfig,
    embed_s: Embed,
    embed_t: Embed,
    memory: ContrastMemory,
    sampler: NegativeSampler,
}

impl Crd {
    /// `s_dim`/`t_dim`: the student's and teacher's embedding widths; `n_data` the train-set
    /// size (`train_labels`, needed for [`NegativeSampling::OtherClass`], has that length).
    /// Trainable parameters `embed_s.linear.*`, `embed_t.linear.*` come from `vb` (names as
    /// the reference's state dict); the bank is drawn from `seed` in `vb`'s dtype and device.
    pub fn new(
        config: &CrdConfig,
        s_dim: usize,
        t_dim: usize,
        n_data: usize,
        train_labels: Option<&[u32]>,
        seed: u64,
        vb: VarBuilder,
    ) -> std::result::Result<Self, CrdError> {
        config.check_train_set(n_data)?;
        let sampler = match (config.negatives, train_labels) {
            (NegativeSampling::Uniform, _) => {
                NegativeSampler::uniform(n_data, kd_core::seed::derive_seed(seed, "crd/negatives"))
            }
            (NegativeSampling::OtherClass, Some(labels)) if labels.len() == n_data => {
                NegativeSampler::other_class(labels, kd_core::seed::derive_seed(seed, "crd/negatives"))
            }
            (NegativeSampling::OtherClass, Some(labels)) => {
                return Err(CrdError::Config(format!(
                    "{} train labels for a train set of {n_data} examples",
                    labels.len()
                )))
            }
            (NegativeSampling::OtherClass, None) => {
                return Err(CrdError::Config(
                    "negatives = \"other_class\" needs the train set's labels; \
                     set negatives = \"uniform\" to sample without them"
                        .into(),
                ))
            }
        };
        let embed_s = Embed::new(s_dim, config.feat_dim, vb.pp("embed_s"))?;
        let embed_t = Embed::new(t_dim, config.feat_dim, vb.pp("embed_t"))?;
        let memory = ContrastMemory::new(
            n_data,
            config.feat_dim,
            config.nce_k,
            config.nce_t,
            config.nce_m,
            kd_core::seed::derive_seed(seed, "crd/memory-init"),
            vb.dtype(),
            vb.device(),
        )?;
        Ok(Self { config: config.clone(), embed_s, embed_t, memory, sampler })
    }

    pub fn config(&self) -> &CrdConfig {
        &self.config
    }

    pub fn memory(&self) -> &ContrastMemory {
        &self.memory
    }

    /// `CRDLoss.forward`: the unweighted CRD loss (student-anchor plus teacher-anchor terms)
    /// for embeddings `f_s` `(B, s_dim)`, `f_t` `(B, t_dim)` of train examples `idx`; then the
    /// momentum update of those examples' bank rows. `contrast_idx` `(B, nce_k + 1)` (column 0
    /// the positive, u32 or i64) fixes the negatives as the reference's argument does;
    /// `None` draws them from the seeded sampler. The student loss is
    /// `config().weight × loss` (`-b`). `f_t` should carry no gradient (teacher in eval).
    pub fn loss(
        &mut self,
        f_s: &Tensor,
        f_t: &Tensor,
        idx: &[u32],
        contrast_idx: Option<&Tensor>,
    ) -> Result<Tensor> {
        let device = f_s.device();
        if idx.len() != f_s.dims()[0] {
            candle_core::bail!("CRD: {} example ids for a batch of {}", idx.len(), f_s.dims()[0]);
        }
        if let Some(&bad) = idx.iter().find(|&&i| i as usize >= self.memory.n_data()) {
            candle_core::bail!(
                "CRD: example id {bad} is outside the train set of {} examples",
                self.memory.n_data()
            );
        }
        let drawn;
        let contrast_idx = match contrast_idx {
            Some(c) => c,
            None => {
                let k = self.memory.nce_k();
                let v = self.sampler.draw(idx, k).map_err(candle_core::Error::Msg)?;
                drawn = Tensor::from_vec(v, (idx.len(), k + 1), device)?;
                &drawn
            }
        };
        let v1 = self.embed_s.forward(f_s)?;
        let v2 = self.embed_t.forward(f_t)?;
        let y = Tensor::new(idx, device)?;
        let (out_s, out_t) = self.memory.forward(&v1, &v2, &y, contrast_idx)?;
        let n = self.memory.n_data();
        contrast_loss(&out_s, n)? + contrast_loss(&out_t, n)?
    }

    /// The non-trainable state as variables, named as [`Crd::state`] names it: both banks,
    /// `contrast.params` and `sampler.state`. Each [`Crd::loss`] reads and updates them in
    /// place; a pipeline checkpoints and restores them (never optimises them).
    pub fn buffers(&self) -> Vec<(String, candle_core::Var)> {
        let mut b = self.memory.buffers();
        b.extend(self.sampler.buffers());
        b
    }

    /// Non-trainable state (banks, `contrast.params`, sampler) as named tensors, for checkpoints.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut s = self.memory.state()?;
        s.extend(self.sampler.state(&candle_core::Device::Cpu)?);
        Ok(s)
    }

    /// Restores what [`Crd::state`] exported.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> std::result::Result<(), CrdError> {
        self.memory.load_state(state).map_err(CrdError::State)?;
        self.sampler.load_state(state).map_err(CrdError::State)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn defaults_are_repdistillers() {
        let cfg = CrdConfig::from_table(&table("")).unwrap();
        assert_eq!(cfg, CrdConfig::default());
        assert_eq!((cfg.feat_dim, cfg.nce_k, cfg.nce_t, cfg.nce_m, cfg.weight), (128, 16384, 0.07, 0.5, 0.8));
        assert_eq!(cfg.negatives, NegativeSampling::OtherClass);
        let cfg = CrdConfig::from_table(&table("nce_k = 4096\nnegatives = \"uniform\"")).unwrap();
        assert_eq!((cfg.nce_k, cfg.negatives), (4096, NegativeSampling::Uniform));
    }

    #[test]
    fn bad_tables_are_refused_by_key() {
        let e = CrdConfig::from_table(&table("nce_kk = 5")).unwrap_err().to_string();
        assert!(e.contains("nce_kk"), "{e}");
        let e = CrdConfig::from_table(&table("weight = -0.8")).unwrap_err().to_string();
        assert!(e.contains("weight"), "{e}");
        let e = CrdConfig::from_table(&table("nce_m = 1.0")).unwrap_err().to_string();
        assert!(e.contains("nce_m"), "{e}");
        let e = CrdConfig::from_table(&table("negatives = \"hard\"")).unwrap_err().to_string();
        assert!(e.contains("hard"), "{e}");
    }

    #[test]
    fn a_bank_that_cannot_supply_nce_k_negatives_is_refused() {
        let cfg = CrdConfig::default();
        let e = cfg.check_train_set(500).unwrap_err().to_string();
        assert!(e.contains("nce_k") && e.contains("500"), "{e}");
        assert!(cfg.check_train_set(16384).is_err());
        assert!(cfg.check_train_set(50_000).is_ok());
        let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
        let e = Crd::new(&cfg, 64, 64, 50_000, None, 0, vb).unwrap_err().to_string();
        assert!(e.contains("other_class") && e.contains("uniform"), "{e}");
    }

    #[test]
    fn contrast_loss_is_eq_18() {
        // One row: positive 0.5, two negatives 0.1 and 0.2, n_data 4 → c = 0.5.
        let x = Tensor::new(&[[0.5f64, 0.1, 0.2]], &Device::Cpu).unwrap();
        let c = 0.5;
        let expected =
            -((0.5 / (0.5 + c + EPS)).ln() + (c / (0.1 + c + EPS)).ln() + (c / (0.2 + c + EPS)).ln());
        let got = contrast_loss(&x, 4).unwrap().to_scalar::<f64>().unwrap();
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    }

    #[test]
    fn embed_output_is_unit_norm() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let embed = Embed::new(10, 4, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 10), &Device::Cpu).unwrap();
        let norms: Vec<f32> = embed.forward(&x).unwrap().sqr().unwrap().sum(1).unwrap().to_vec1().unwrap();
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
        assert_eq!(varmap.all_vars().len(), 2);
    }
}
