//! ONE, the on-the-fly native ensemble (Lan, Zhu & Gong, NeurIPS 2018), on a CIFAR ResNet:
//! the stem and the first `shared_stages` stages are shared; each of the `branches` branches is
//! a copy of the remaining stages plus its own head; a gate (global average pool of the shared
//! features → FC → BN → ReLU → softmax over the branches, as in the paper and its code) weighs
//! the branch logits into the ensemble teacher `z_e = Σ_i g_i·z_i`.
//!
//! Names: shared layers keep the backbone's (`conv1`, `bn1`, `layer1`, `layer2`); branch `i`
//! (1-based) holds `branch{i}.layer3...` and `branch{i}.linear` (or `.fc`, the backbone's head
//! name); the gate is `gate.fc` and `gate.bn`. Each branch with the shared trunk is exactly the
//! backbone network, which is what a ONE model deploys.

use candle_core::{Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use kd_core::{Classifier, Mode, ModelOutput};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::layers::{self, BatchNorm2d, Conv2d};
use crate::resnet_cifar::{self, stage, BasicBlock, Config as ResNetConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The network every branch (with the shared trunk) reproduces, e.g. ResNet-32.
    pub backbone: ResNetConfig,
    /// Number of branches `m` (the paper uses 3 on CIFAR).
    pub branches: usize,
    /// Stages shared by all branches; the others are copied per branch. The paper shares all
    /// but the last.
    pub shared_stages: usize,
}

impl Config {
    /// `branches` branches sharing all but the last stage of `backbone`, as in the paper.
    pub fn new(backbone: ResNetConfig, branches: usize) -> Self {
        let shared_stages = backbone.widths.len().saturating_sub(1);
        Self { backbone, branches, shared_stages }
    }

    /// Name in CSV rows and saved models, e.g. `one-resnet32-m3`.
    pub fn arch(&self) -> String {
        format!("one-{}-m{}", self.backbone.arch, self.branches)
    }

    pub fn validate(&self) -> std::result::Result<(), ModelError> {
        self.backbone.validate()?;
        let fail = |message: String| Err(ModelError::Config { arch: self.arch(), message });
        if self.branches < 1 {
            return fail("ONE needs at least one branch".into());
        }
        if self.shared_stages >= self.backbone.widths.len() {
            return fail(format!(
                "shared_stages must leave at least one stage per branch: {} of {} stages",
                self.shared_stages,
                self.backbone.widths.len()
            ));
        }
        Ok(())
    }
}

/// Everything one forward pass of a ONE model produces.
#[derive(Debug, Clone)]
pub struct OneOutput {
    /// `(batch, classes)` logits of each branch, branch 1 first.
    pub branch_logits: Vec<Tensor>,
    /// `(batch, branches)` gate weights (rows sum to 1).
    pub gate: Tensor,
    /// `(batch, classes)` ensemble logits `Σ_i g_i·z_i`.
    pub ensemble_logits: Tensor,
    /// Output of the last shared stage (what the gate reads).
    pub shared_features: Tensor,
    /// Pooled embedding of each branch.
    pub branch_embeddings: Vec<Tensor>,
    /// Feature maps of each branch's own stages, per branch.
    pub branch_stage_features: Vec<Vec<Tensor>>,
    /// Feature maps after each shared stage.
    pub shared_stage_features: Vec<Tensor>,
}

#[derive(Debug, Clone)]
struct Branch {
    stages: Vec<Vec<BasicBlock>>,
    head: Linear,
}

/// A ONE model; see the module docs.
#[derive(Debug, Clone)]
pub struct OneResNet {
    config: Config,
    arch: String,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    shared: Vec<Vec<BasicBlock>>,
    branches: Vec<Branch>,
    gate_fc: Linear,
    gate_bn: BatchNorm2d,
    shared_params: usize,
    branch_params: usize,
    num_params: usize,
}

fn blocks_params(stages: &[Vec<BasicBlock>]) -> usize {
    stages.iter().flatten().map(BasicBlock::num_params).sum()
}

impl OneResNet {
    pub fn new(config: &Config, vb: VarBuilder) -> std::result::Result<Self, ModelError> {
        config.validate()?;
        let cfg = &config.backbone;
        let (conv1, bn1) = resnet_cifar::stem(cfg, vb.clone())?;
        let mut in_c = cfg.stem_width;
        let mut shared = Vec::new();
        for s in 0..config.shared_stages {
            shared.push(stage(cfg, s, in_c, vb.clone())?);
            in_c = cfg.widths[s];
        }
        let gate_in = in_c;
        let mut branches = Vec::with_capacity(config.branches);
        let out_c = *cfg.widths.last().expect("validated: at least one stage");
        for i in 1..=config.branches {
            let vb_b = vb.pp(format!("branch{i}"));
            let mut c = gate_in;
            let mut stages = Vec::new();
            for s in config.shared_stages..cfg.widths.len() {
                stages.push(stage(cfg, s, c, vb_b.clone())?);
                c = cfg.widths[s];
            }
            let head = cfg.style.head(out_c, cfg.num_classes, vb_b.clone())?;
            branches.push(Branch { stages, head });
        }
        let gate_fc = layers::torch_default_linear(gate_in, config.branches, vb.pp("gate").pp("fc"))?;
        let gate_bn = BatchNorm2d::new(config.branches, vb.pp("gate").pp("bn"))?;
        let shared_params = conv1.num_params() + bn1.num_params() + blocks_params(&shared);
        let branch_params = blocks_params(&branches[0].stages) + layers::linear_num_params(&branches[0].head);
        let num_params = shared_params
            + branches.len() * branch_params
            + layers::linear_num_params(&gate_fc)
            + gate_bn.num_params();
        Ok(Self {
            config: config.clone(),
            arch: config.arch(),
            conv1,
            bn1,
            shared,
            branches,
            gate_fc,
            gate_bn,
            shared_params,
            branch_params,
            num_params,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of branches `m`.
    pub fn num_branches(&self) -> usize {
        self.branches.len()
    }

    /// Backbone name, e.g. `resnet32`: what one branch with the shared trunk is.
    pub fn backbone_arch(&self) -> &str {
        &self.config.backbone.arch
    }

    /// Trainable parameters of one deployed branch: the shared trunk plus one branch (equal to
    /// the backbone's parameter count).
    pub fn branch_network_params(&self) -> usize {
        self.shared_params + self.branch_params
    }

    /// Every branch, the gate and the ensemble in one pass.
    pub fn forward_all(&self, input: &Tensor, mode: Mode) -> Result<OneOutput> {
        let (_, c, _, _) = input.dims4()?;
        if c != 3 {
            candle_core::bail!("{} expects (batch, 3, H, W) images, got shape {:?}", self.arch, input.dims());
        }
        let mut x = layers::conv_bn(&self.conv1, &self.bn1, input, mode, true)?;
        let mut shared_stage_features = Vec::with_capacity(self.shared.len());
        for stage in &self.shared {
            for block in stage {
                x = block.forward(&x, mode)?;
            }
            shared_stage_features.push(x.clone());
        }
        let mut branch_logits = Vec::with_capacity(self.branches.len());
        let mut branch_embeddings = Vec::with_capacity(self.branches.len());
        let mut branch_stage_features = Vec::with_capacity(self.branches.len());
        for branch in &self.branches {
            let mut h = x.clone();
            let mut feats = Vec::with_capacity(branch.stages.len());
            for stage in &branch.stages {
                for block in stage {
                    h = block.forward(&h, mode)?;
                }
                feats.push(h.clone());
            }
            let emb = layers::global_avg_pool(&h)?;
            branch_logits.push(layers::apply_linear(&branch.head, &emb)?);
            branch_embeddings.push(emb);
            branch_stage_features.push(feats);
        }
        // Gate: FC → BN → ReLU → softmax over branches (BN on (B, m, 1, 1)).
        let pooled = layers::global_avg_pool(&x)?;
        let g = layers::apply_linear(&self.gate_fc, &pooled)?;
        let (b, m) = g.dims2()?;
        let g = self.gate_bn.forward_relu(&g.reshape((b, m, 1, 1))?, mode)?.reshape((b, m))?;
        // `softmax` (not the fused `softmax_last_dim`, which has no backward pass): the gate trains.
        let gate = candle_nn::ops::softmax(&g, D::Minus1)?;
        let ensemble_logits = gated_sum(&branch_logits, &gate)?;
        Ok(OneOutput {
            branch_logits,
            gate,
            ensemble_logits,
            shared_features: x,
            branch_embeddings,
            branch_stage_features,
            shared_stage_features,
        })
    }
}

/// `Σ_i gate[:, i]·logits_i`: `(batch, classes)` from `m` logits and a `(batch, m)` gate.
pub fn gated_sum(logits: &[Tensor], gate: &Tensor) -> Result<Tensor> {
    let stacked = Tensor::stack(logits, 1)?; // (B, m, C)
    stacked.broadcast_mul(&gate.unsqueeze(D::Minus1)?)?.sum(1)
}

impl Classifier for OneResNet {
    /// `logits` are the gated ensemble's; `stage_features` the shared stages then branch 1's;
    /// `embedding` branch 1's. Use [`OneResNet::forward_all`] for every branch.
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput> {
        let out = self.forward_all(input, mode)?;
        let mut stage_features = out.shared_stage_features;
        stage_features.extend(out.branch_stage_features.into_iter().next().unwrap_or_default());
        let embedding = out.branch_embeddings.into_iter().next().expect("at least one branch");
        Ok(ModelOutput { logits: out.ensemble_logits, stage_features, embedding })
    }

    fn num_classes(&self) -> usize {
        self.config.backbone.num_classes
    }

    fn arch(&self) -> &str {
        &self.arch
    }

    fn num_params(&self) -> usize {
        self.num_params
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resnet_cifar::CifarResNet;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn build(depth: usize, m: usize) -> (VarMap, OneResNet) {
        let varmap = VarMap::new();
        let vb = crate::seeded_var_builder(&varmap, 7, DType::F32, &Device::Cpu);
        let cfg = Config::new(ResNetConfig::akamaster(depth, 10), m);
        (varmap.clone(), OneResNet::new(&cfg, vb).unwrap())
    }

    #[test]
    fn branches_share_the_trunk_and_each_is_the_backbone() {
        let (varmap, one) = build(8, 3);
        let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        assert!(names.contains(&"layer2.0.conv1.weight".to_string()));
        assert!(!names.iter().any(|n| n.starts_with("layer3")), "layer3 is per branch");
        for i in 1..=3 {
            assert!(names.contains(&format!("branch{i}.layer3.0.conv1.weight")));
            assert!(names.contains(&format!("branch{i}.linear.weight")));
        }
        assert!(
            names.contains(&"gate.fc.weight".to_string())
                && names.contains(&"gate.bn.running_var".to_string())
        );
        // One branch with the trunk has exactly the backbone's parameters (ResNet-8: 75,290).
        let plain = CifarResNet::new(
            &ResNetConfig::akamaster(8, 10),
            candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu),
        )
        .unwrap();
        assert_eq!(one.branch_network_params(), plain.num_params());
        assert_eq!(one.branch_network_params(), 75_290);
        // Total: trunk + 3 × branch + gate (FC 32→3 with bias, BN weight+bias).
        let branch = one.branch_params;
        assert_eq!(one.num_params(), one.shared_params + 3 * branch + (32 * 3 + 3) + 6);
        assert_eq!(one.arch(), "one-resnet8-m3");
    }

    #[test]
    fn ensemble_is_the_gated_sum_of_branch_logits() {
        let (_, one) = build(8, 3);
        let x = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &Device::Cpu).unwrap();
        for mode in [Mode::Train, Mode::Eval] {
            let out = one.forward_all(&x, mode).unwrap();
            assert_eq!(out.branch_logits.len(), 3);
            assert_eq!(out.gate.dims(), &[4, 3]);
            let sums = out.gate.sum(1).unwrap().to_vec1::<f32>().unwrap();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
            let g = out.gate.to_vec2::<f32>().unwrap();
            let z: Vec<Vec<Vec<f32>>> =
                out.branch_logits.iter().map(|t| t.to_vec2::<f32>().unwrap()).collect();
            let e = out.ensemble_logits.to_vec2::<f32>().unwrap();
            for b in 0..4 {
                for c in 0..10 {
                    let want: f32 = (0..3).map(|i| g[b][i] * z[i][b][c]).sum();
                    assert!((e[b][c] - want).abs() < 1e-4, "{} vs {want}", e[b][c]);
                }
            }
            // Branches start from different weights, so they disagree.
            assert_ne!(z[0], z[1]);
        }
    }

    #[test]
    fn shared_stages_must_leave_a_stage_per_branch() {
        let mut cfg = Config::new(ResNetConfig::akamaster(8, 10), 2);
        cfg.shared_stages = 3;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("one-resnet8-m2") && e.contains("shared_stages"), "{e}");
    }
}
