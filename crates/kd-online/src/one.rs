//! ONE, the on-the-fly native ensemble (Lan, Zhu & Gong, NeurIPS 2018).
//!
//! The model ([`kd_models::one_resnet::OneResNet`]) shares the low-level stages of a CIFAR
//! ResNet, copies the last stage and head into `m` branches and gates the branch logits into the
//! ensemble teacher `z_e = Σ_i g_i·z_i`. The loss (the paper's eq. 6, with its code's KL):
//!
//! `Σ_i CE(y, z_i) + CE(y, z_e) + T²·Σ_i KL(softmax(z_e/T) ‖ softmax(z_i/T))`,
//!
//! `z_e` detached in the KL (the teacher is a target; it learns from the labels through
//! `CE(y, z_e)`, which also trains the gate), `T = 3` as in the paper.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;
use kd_core::losses::{cross_entropy, distill_kl};
use kd_core::{Batch, EvalEntry, Losses, Method, Mode, StepContext};
use kd_models::one_resnet::{Config as OneResNetConfig, OneResNet};
use kd_models::ResNetConfig;
use serde::{Deserialize, Serialize};

use crate::{parse_table, OnlineError};

fn default_branches() -> usize {
    3
}

fn default_temperature() -> f64 {
    3.0
}

/// `[distill]` of `method = "one"`. The backbone is the recipe's `[student] arch`, so the
/// `plain` variant trains the very network one branch deploys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneConfig {
    /// Number of branches `m` (the paper: 3 on CIFAR).
    #[serde(default = "default_branches")]
    pub branches: usize,
    /// Temperature of the ensemble's soft targets (the paper: 3); the KL is scaled by `T²`.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Stages shared by the branches (default: all but the last, as in the paper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_stages: Option<usize>,
    /// Sigmoid ramp-up of the KL weight, `exp(-5·(1 - min(epoch, R)/R)²)` over the first `R`
    /// epochs, as the authors' code does (`--consistency_rampup 80`); 0 (the default, as the
    /// paper's text) is a constant weight of 1.
    #[serde(default)]
    pub kl_rampup_epochs: f64,
}

impl OneConfig {
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, OnlineError> {
        let cfg: OneConfig = parse_table("one", table)?;
        let fail = |message: String| Err(OnlineError::Config { method: "one", message });
        if cfg.branches < 2 {
            return fail(format!("branches must be at least 2, got {}", cfg.branches));
        }
        if cfg.temperature.is_nan() || cfg.temperature <= 0.0 {
            return fail(format!("temperature must be > 0, got {}", cfg.temperature));
        }
        if !cfg.kl_rampup_epochs.is_finite() || cfg.kl_rampup_epochs < 0.0 {
            return fail(format!("kl_rampup_epochs must be >= 0, got {}", cfg.kl_rampup_epochs));
        }
        Ok(cfg)
    }

    /// Weight of the KL term in (0-based) `epoch`.
    pub fn kl_weight(&self, epoch: usize) -> f64 {
        if self.kl_rampup_epochs <= 0.0 {
            return 1.0;
        }
        let phase = 1.0 - (epoch as f64).clamp(0.0, self.kl_rampup_epochs) / self.kl_rampup_epochs;
        (-5.0 * phase * phase).exp()
    }

    /// The model configuration for a CIFAR ResNet backbone (`resnet32`, ...).
    pub fn model_config(
        &self,
        backbone: &str,
        num_classes: usize,
    ) -> std::result::Result<OneResNetConfig, OnlineError> {
        let mut cfg =
            OneResNetConfig::new(ResNetConfig::from_arch_name(backbone, num_classes)?, self.branches);
        if let Some(s) = self.shared_stages {
            cfg.shared_stages = s;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A freshly initialised ONE model on `backbone` and the `VarMap` holding its variables; the
/// initial weights depend only on the configuration and `seed`.
pub fn new_one_model(
    cfg: &OneConfig,
    backbone: &str,
    num_classes: usize,
    seed: u64,
    device: &Device,
) -> std::result::Result<(VarMap, Arc<OneResNet>), OnlineError> {
    let model_cfg = cfg.model_config(backbone, num_classes)?;
    let varmap = VarMap::new();
    let vb = kd_models::seeded_var_builder(&varmap, seed, DType::F32, device);
    let model = OneResNet::new(&model_cfg, vb)?;
    Ok((varmap, Arc::new(model)))
}

/// The terms of one ONE loss evaluation.
pub struct OneTerms {
    pub total: Tensor,
    /// `Σ_i CE(y, z_i)`.
    pub ce_branches: Tensor,
    /// `CE(y, z_e)`.
    pub ce_ensemble: Tensor,
    /// `T²·Σ_i KL(softmax(z_e/T) ‖ softmax(z_i/T))`.
    pub kl: Tensor,
}

/// The ONE loss of `m` branches' logits and the gated ensemble's logits.
pub fn one_loss(
    branch_logits: &[Tensor],
    ensemble_logits: &Tensor,
    labels: &Tensor,
    temperature: f64,
) -> Result<OneTerms> {
    if branch_logits.is_empty() {
        candle_core::bail!("ONE needs at least one branch");
    }
    let mut ce_branches: Option<Tensor> = None;
    let mut kl: Option<Tensor> = None;
    for z in branch_logits {
        let c = cross_entropy(z, labels, 0.0)?;
        // distill_kl detaches the teacher (the ensemble) and scales by T².
        let k = distill_kl(z, ensemble_logits, temperature)?;
        ce_branches = Some(match ce_branches {
            Some(s) => (s + c)?,
            None => c,
        });
        kl = Some(match kl {
            Some(s) => (s + k)?,
            None => k,
        });
    }
    let (ce_branches, kl) = (ce_branches.expect("non-empty"), kl.expect("non-empty"));
    let ce_ensemble = cross_entropy(ensemble_logits, labels, 0.0)?;
    let total = ((&ce_branches + &ce_ensemble)? + &kl)?;
    Ok(OneTerms { total, ce_branches, ce_ensemble, kl })
}

/// ONE as a [`Method`]: variant `one`; evaluates `branch-1` … `branch-m` (each the backbone
/// network: shared trunk plus one branch) and the gated `ensemble`.
pub struct OnTheFlyNativeEnsemble {
    model: Arc<OneResNet>,
    cfg: OneConfig,
}

impl OnTheFlyNativeEnsemble {
    pub fn new(model: Arc<OneResNet>, cfg: &OneConfig) -> Self {
        Self { model, cfg: cfg.clone() }
    }
}

impl Method for OnTheFlyNativeEnsemble {
    fn name(&self) -> &str {
        "one"
    }

    fn variant(&self) -> &str {
        "one"
    }

    fn losses(&mut self, batch: &Batch, ctx: &StepContext) -> Result<Losses> {
        let out = self.model.forward_all(&batch.inputs, Mode::Train)?;
        let t = one_loss(&out.branch_logits, &out.ensemble_logits, &batch.labels, self.cfg.temperature)?;
        let w = self.cfg.kl_weight(ctx.epoch);
        let total = if w == 1.0 { t.total } else { ((&t.ce_branches + &t.ce_ensemble)? + (&t.kl * w)?)? };
        Ok(Losses {
            total,
            parts: vec![
                ("ce-branches".into(), t.ce_branches.detach()),
                ("ce-ensemble".into(), t.ce_ensemble.detach()),
                ("kl".into(), t.kl.detach()),
            ],
        })
    }

    fn eval_entries(&self) -> Vec<EvalEntry> {
        let m = &self.model;
        let mut entries: Vec<EvalEntry> = (1..=m.num_branches())
            .map(|i| EvalEntry {
                role: format!("branch-{i}"),
                model: m.backbone_arch().to_string(),
                params: m.branch_network_params(),
            })
            .collect();
        entries.push(EvalEntry::of("ensemble", m.as_ref()));
        entries
    }

    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
        let out = self.model.forward_all(inputs, Mode::Eval)?;
        let mut logits = out.branch_logits;
        logits.push(out.ensemble_logits);
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    // Golden values from an independent pure-Python computation (same helpers as dml.rs:
    // softmax, logsoftmax, ce, kl(Zt, Zs, T) = T²·KL(softmax(t/T) ‖ softmax(s/T)) batch mean):
    //
    //   Z = [Z1, Z2, Z3] (below); G = [[0.2,0.5,0.3],[0.6,0.1,0.3]]; y = [2,3]; T = 3
    //   E = [[sum(G[b][i]*Z[i][b][c] for i in range(3)) for c in range(4)] for b in range(2)]
    //   ce_b = sum(ce(Z[i],y) for i in range(3)); ce_e = ce(E,y); kl_s = sum(kl(E,Z[i],T) for i in range(3))
    //   print(ce_b, ce_e, kl_s, ce_b+ce_e+kl_s)
    //   # z_e is detached in the KL, so d total / d z_e = (softmax(E) - onehot)/N only:
    //   print([[(softmax(E[b])[c]-(c==y[b]))/2 for c in range(4)] for b in range(2)])
    const Z: [[[f32; 4]; 2]; 3] = [
        [[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 3.0]],
        [[2.0, 0.0, 3.5, -1.0], [1.0, 0.5, -0.5, 2.0]],
        [[-1.0, 2.5, 0.5, 0.0], [0.3, -0.2, 0.8, 1.1]],
    ];
    const G: [[f32; 3]; 2] = [[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]];
    const CE_BRANCHES: f32 = 2.243_936_5;
    const CE_ENSEMBLE: f32 = 0.334_797_45;
    const KL: f32 = 1.230_030_1;
    const TOTAL: f32 = 3.808_764;
    const GRAD_E: [[f64; 4]; 2] = [
        [0.082023063849, 0.063879626356, -0.167380074198, 0.021477383993],
        [0.051040570358, 0.039354912715, 0.024844112767, -0.115239595841],
    ];

    fn labels() -> Tensor {
        Tensor::new(&[2u32, 3], &Device::Cpu).unwrap()
    }

    #[test]
    fn one_loss_matches_golden_values() {
        let z: Vec<Tensor> = Z.iter().map(|p| Tensor::new(p, &Device::Cpu).unwrap()).collect();
        let g = Tensor::new(&G, &Device::Cpu).unwrap();
        let e = kd_models::one_resnet::gated_sum(&z, &g).unwrap();
        let t = one_loss(&z, &e, &labels(), 3.0).unwrap();
        let get = |x: &Tensor| x.to_scalar::<f32>().unwrap();
        assert!((get(&t.ce_branches) - CE_BRANCHES).abs() < 1e-5, "{}", get(&t.ce_branches));
        assert!((get(&t.ce_ensemble) - CE_ENSEMBLE).abs() < 1e-5, "{}", get(&t.ce_ensemble));
        assert!((get(&t.kl) - KL).abs() < 1e-5, "{}", get(&t.kl));
        assert!((get(&t.total) - TOTAL).abs() < 1e-5, "{}", get(&t.total));
    }

    #[test]
    fn the_ensemble_learns_only_from_the_labels() {
        let z: Vec<Tensor> = Z.iter().map(|p| Tensor::new(p, &Device::Cpu).unwrap()).collect();
        let g = Tensor::new(&G, &Device::Cpu).unwrap();
        let e = Var::from_tensor(&kd_models::one_resnet::gated_sum(&z, &g).unwrap()).unwrap();
        let t = one_loss(&z, e.as_tensor(), &labels(), 3.0).unwrap();
        let grads = t.total.backward().unwrap();
        let ge = grads.get(e.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        for (row, want) in ge.iter().zip(GRAD_E.iter()) {
            for (a, b) in row.iter().zip(want) {
                assert!((*a as f64 - b).abs() < 1e-6, "grad {a} vs {b}");
            }
        }
    }

    #[test]
    fn method_trains_branches_and_gate_and_reports_every_branch() {
        let cfg = OneConfig::from_table(&toml::Table::new()).unwrap();
        assert_eq!((cfg.branches, cfg.temperature, cfg.shared_stages), (3, 3.0, None));
        let (varmap, model) = new_one_model(&cfg, "resnet8", 10, 1, &Device::Cpu).unwrap();
        let mut m = OnTheFlyNativeEnsemble::new(model.clone(), &cfg);
        let x = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &Device::Cpu).unwrap();
        let batch = Batch {
            inputs: x.clone(),
            labels: Tensor::new(&[0u32, 1, 2, 3], &Device::Cpu).unwrap(),
            example_ids: (0..4).collect(),
            views: vec![0; 4],
            strong: None,
        };
        let ctx = StepContext { epoch: 0, epochs: 1, step_in_epoch: 0, steps_per_epoch: 1 };
        let l = m.losses(&batch, &ctx).unwrap();
        let grads = l.total.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        for name in [
            "gate.fc.weight",
            "branch1.linear.weight",
            "branch3.layer3.0.conv1.weight",
            "layer1.0.conv1.weight",
        ] {
            let g = grads.get(vars[name].as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{name}");
        }
        let entries = m.eval_entries();
        let roles: Vec<&str> = entries.iter().map(|e| e.role.as_str()).collect();
        assert_eq!(roles, ["branch-1", "branch-2", "branch-3", "ensemble"]);
        assert_eq!((entries[0].model.as_str(), entries[0].params), ("resnet8", 75_290));
        assert_eq!(entries[3].model, "one-resnet8-m3");
        assert_eq!(m.eval_logits(&x).unwrap().len(), 4);
    }

    #[test]
    fn config_errors_name_the_key() {
        let typo: toml::Table = toml::from_str("branches = 3\nbranchs = 2").unwrap();
        let e = OneConfig::from_table(&typo).unwrap_err().to_string();
        assert!(e.contains("branchs") && e.contains("one"), "{e}");
        let one: toml::Table = toml::from_str("branches = 1").unwrap();
        assert!(OneConfig::from_table(&one).unwrap_err().to_string().contains("branches"));
        let cfg = OneConfig { branches: 2, temperature: 3.0, shared_stages: Some(3), kl_rampup_epochs: 0.0 };
        assert!(cfg.model_config("resnet32", 100).unwrap_err().to_string().contains("shared_stages"));
        let e = cfg.model_config("resnet33", 100).unwrap_err().to_string();
        assert!(e.contains("resnet33"), "{e}");
        // The authors' code's ramp-up: exp(-5·(1-t)²), t = epoch / R clipped to 1.
        let ramp = OneConfig { kl_rampup_epochs: 80.0, ..cfg };
        assert!((ramp.kl_weight(0) - (-5f64).exp()).abs() < 1e-12);
        assert!((ramp.kl_weight(40) - (-1.25f64).exp()).abs() < 1e-12);
        assert_eq!((ramp.kl_weight(80), ramp.kl_weight(200)), (1.0, 1.0));
        assert_eq!(OneConfig { kl_rampup_epochs: 0.0, ..ramp }.kl_weight(0), 1.0);
    }
}
