//! Multi-exit networks for self-distillation ("Be Your Own Teacher", Zhang et al., ICCV 2019):
//! a backbone that reports its feature map after every stage (any [`Classifier`] whose
//! [`ModelOutput::stage_features`] has one entry per stage) gets an auxiliary classifier after
//! each stage but the last; the backbone's own head is the deepest exit.
//!
//! Each branch follows the published BYOT re-implementation (`branchBottleNeck` in
//! luanyunteng/pytorch-be-your-own-teacher): it brings the stage's features to the final
//! stage's channels `C` and resolution with
//! `1×1 conv → C/4, BN, ReLU; s×s conv stride s (s = the stage's resolution ÷ the final one),
//! BN, ReLU; 1×1 conv → C, BN, ReLU`, then global average pooling (the exit's *feature*, which
//! the feature term compares with the deepest exit's pooled features) and a linear head.
//! The re-implementation's branch convolutions carry a bias before batch norm; a bias followed
//! by batch norm changes nothing (the mean subtraction removes it), so ours have none.
//!
//! Stage shapes are found by one evaluation-mode forward pass of the backbone on a zero image
//! when the network is built, so the design works for any stage count and any backbone whose
//! stages shrink the resolution by integer factors.
//!
//! Variable names: the backbone's names unchanged (so a multi-exit network starts from exactly
//! the weights of the plain backbone with the same seed), branch `i` (1-based) under
//! `branch{i}.` (`conv1`, `bn1`, `conv2`, `bn2`, `conv3`, `bn3`, `fc`).

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, Linear, VarBuilder, VarMap};
use kd_core::{Classifier, Mode, ModelOutput};

use crate::error::ModelError;
use crate::layers::{self, BatchNorm2d, Conv2d};
use crate::{build_classifier_with, is_trainable, resnet18_cifar, resnet_cifar, BuildOptions};

/// Architecture names `<backbone><ARCH_SUFFIX>` (e.g. `resnet20-byot`) build a [`MultiExitNet`].
pub const ARCH_SUFFIX: &str = "-byot";

/// Number of stages of a backbone architecture, i.e. the number of exits its multi-exit
/// network has (one after each stage), without building it.
pub fn stage_count(backbone: &str) -> std::result::Result<usize, ModelError> {
    if resnet_cifar::ARCH_NAMES.contains(&backbone) {
        return Ok(resnet_cifar::Config::from_arch_name(backbone, 1)?.widths.len());
    }
    if resnet18_cifar::ARCH_NAMES.contains(&backbone) {
        return Ok(resnet18_cifar::Config::from_arch_name(backbone, 1)?.widths.len());
    }
    let mut known: Vec<String> = resnet_cifar::ARCH_NAMES.iter().map(|s| s.to_string()).collect();
    known.extend(resnet18_cifar::ARCH_NAMES.iter().map(|s| s.to_string()));
    Err(ModelError::UnknownArch { name: backbone.to_string(), known })
}

fn conv_init() -> Init {
    Init::Kaiming { dist: NormalOrUniform::Normal, fan: FanInOut::FanOut, non_linearity: NonLinearity::ReLU }
}

/// The auxiliary classifier after one stage.
#[derive(Debug, Clone)]
struct Branch {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    fc: Linear,
}

impl Branch {
    fn new(in_c: usize, out_c: usize, scale: usize, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        let mid = (out_c / 4).max(1);
        Ok(Self {
            conv1: Conv2d::new(in_c, mid, 1, 1, 0, conv_init(), vb.pp("conv1"))?,
            bn1: BatchNorm2d::new(mid, vb.pp("bn1"))?,
            conv2: Conv2d::new(mid, mid, scale, scale, 0, conv_init(), vb.pp("conv2"))?,
            bn2: BatchNorm2d::new(mid, vb.pp("bn2"))?,
            conv3: Conv2d::new(mid, out_c, 1, 1, 0, conv_init(), vb.pp("conv3"))?,
            bn3: BatchNorm2d::new(out_c, vb.pp("bn3"))?,
            fc: layers::torch_default_linear(out_c, num_classes, vb.pp("fc"))?,
        })
    }

    /// `(logits, pooled feature)`.
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<(Tensor, Tensor)> {
        let x = layers::conv_bn(&self.conv1, &self.bn1, x, mode, true)?;
        let x = layers::conv_bn(&self.conv2, &self.bn2, &x, mode, true)?;
        let x = layers::conv_bn(&self.conv3, &self.bn3, &x, mode, true)?;
        let feature = layers::global_avg_pool(&x)?;
        let logits = layers::apply_linear(&self.fc, &feature)?;
        Ok((logits, feature))
    }

    fn num_params(&self) -> usize {
        self.conv1.num_params()
            + self.bn1.num_params()
            + self.conv2.num_params()
            + self.bn2.num_params()
            + self.conv3.num_params()
            + self.bn3.num_params()
            + layers::linear_num_params(&self.fc)
    }
}

/// What a multi-exit forward pass returns, shallowest exit first; the last entry is the
/// backbone's own head (the deepest exit).
#[derive(Debug, Clone)]
pub struct MultiExitOutput {
    /// `(batch, classes)` logits per exit.
    pub logits: Vec<Tensor>,
    /// `(batch, C)` pooled features per exit (`C` = the final stage's channels): the branch
    /// output for shallow exits, the backbone's pooled embedding for the deepest.
    pub features: Vec<Tensor>,
}

/// A backbone with an auxiliary classifier after every stage but the last; see the module docs.
pub struct MultiExitNet {
    arch: String,
    backbone: Arc<dyn Classifier>,
    branches: Vec<Branch>,
    num_params: usize,
    exit_params: Vec<usize>,
}

impl std::fmt::Debug for MultiExitNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiExitNet")
            .field("arch", &self.arch)
            .field("exits", &self.num_exits())
            .field("num_params", &self.num_params)
            .finish()
    }
}

impl MultiExitNet {
    /// Builds `backbone` (any architecture [`build_classifier_with`] knows) and one branch per
    /// stage but the last, all from `vb`.
    pub fn new(
        backbone: &str,
        num_classes: usize,
        options: BuildOptions,
        vb: VarBuilder,
    ) -> std::result::Result<Self, ModelError> {
        let arch = format!("{backbone}{ARCH_SUFFIX}");
        if backbone.ends_with(ARCH_SUFFIX) {
            return Err(ModelError::Config {
                arch,
                message: "a multi-exit backbone cannot itself be multi-exit".into(),
            });
        }
        let net: Arc<dyn Classifier> =
            Arc::from(build_classifier_with(backbone, num_classes, options, vb.clone())?);
        let fail = |message: String| ModelError::Config { arch: arch.clone(), message };
        // One evaluation-mode pass on a zero image reveals every stage's shape.
        let probe = Tensor::zeros((1, 3, options.input_size, options.input_size), DType::F32, vb.device())?;
        let shapes: Vec<(usize, usize, usize)> = net
            .forward(&probe, Mode::Eval)?
            .stage_features
            .iter()
            .map(|f| f.dims4().map(|(_, c, h, w)| (c, h, w)))
            .collect::<Result<_>>()?;
        let Some(&(c_last, h_last, w_last)) = shapes.last() else {
            return Err(fail(format!("backbone `{backbone}` reports no stage features")));
        };
        let mut branches = Vec::with_capacity(shapes.len() - 1);
        for (i, &(c, h, w)) in shapes[..shapes.len() - 1].iter().enumerate() {
            let scale = h / h_last.max(1);
            if h_last == 0 || !h.is_multiple_of(h_last) || w != w_last * scale {
                return Err(fail(format!(
                    "stage {} has resolution {h}×{w}, not an integer multiple of the final stage's {h_last}×{w_last}",
                    i + 1
                )));
            }
            branches.push(Branch::new(c, c_last, scale, num_classes, vb.pp(format!("branch{}", i + 1)))?);
        }
        let num_params = net.num_params() + branches.iter().map(Branch::num_params).sum::<usize>();
        // Without the variable names (see `with_exit_params_from`) every shallow exit is
        // credited with the whole network.
        let mut exit_params = vec![num_params; branches.len()];
        exit_params.push(net.num_params());
        Ok(Self { arch, backbone: net, branches, num_params, exit_params })
    }

    /// Per-exit parameter counts from the variable names in `varmap`: exit `i` < k needs the
    /// stem, stages `1..=i` (`layer{s}.`) and branch `i` (`branch{i}.`); the deepest exit needs
    /// the whole backbone. Variables named `conv1.`/`bn1.` are the stem; any other name outside
    /// `layer*`/`branch*` is the backbone's head.
    pub fn with_exit_params_from(mut self, varmap: &VarMap) -> Self {
        let k = self.num_exits();
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut stem = 0;
        let mut stages = vec![0usize; k];
        let mut branches = vec![0usize; k];
        for (name, var) in data.iter().filter(|(n, _)| is_trainable(n)) {
            let n = var.elem_count();
            let top = name.split('.').next().unwrap_or("");
            let index = |prefix: &str| top.strip_prefix(prefix).and_then(|s| s.parse::<usize>().ok());
            if let Some(s) = index("layer").filter(|s| (1..=k).contains(s)) {
                stages[s - 1] += n;
            } else if let Some(b) = index("branch").filter(|b| (1..k).contains(b)) {
                branches[b - 1] += n;
            } else if top == "conv1" || top == "bn1" {
                stem += n;
            }
        }
        if stages.iter().all(|&s| s > 0) {
            for i in 0..k - 1 {
                self.exit_params[i] = stem + stages[..=i].iter().sum::<usize>() + branches[i];
            }
        }
        self
    }

    /// Exits: one per backbone stage.
    pub fn num_exits(&self) -> usize {
        self.branches.len() + 1
    }

    /// Trainable parameters needed to compute each exit's logits, shallowest first.
    pub fn exit_params(&self) -> &[usize] {
        &self.exit_params
    }

    pub fn backbone(&self) -> &Arc<dyn Classifier> {
        &self.backbone
    }

    /// Logits and pooled features of every exit, shallowest first.
    pub fn forward_exits(&self, input: &Tensor, mode: Mode) -> Result<MultiExitOutput> {
        let out = self.backbone.forward(input, mode)?;
        if out.stage_features.len() != self.num_exits() {
            candle_core::bail!(
                "{}: backbone returned {} stage features, expected {}",
                self.arch,
                out.stage_features.len(),
                self.num_exits()
            );
        }
        let mut logits = Vec::with_capacity(self.num_exits());
        let mut features = Vec::with_capacity(self.num_exits());
        for (branch, stage) in self.branches.iter().zip(&out.stage_features) {
            let (l, f) = branch.forward(stage, mode)?;
            logits.push(l);
            features.push(f);
        }
        logits.push(out.logits);
        features.push(out.embedding);
        Ok(MultiExitOutput { logits, features })
    }
}

/// As a plain classifier the network is its deepest exit (the branches are not run).
impl Classifier for MultiExitNet {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput> {
        self.backbone.forward(input, mode)
    }

    fn num_classes(&self) -> usize {
        self.backbone.num_classes()
    }

    fn arch(&self) -> &str {
        &self.arch
    }

    fn num_params(&self) -> usize {
        self.num_params
    }
}

/// A freshly initialised multi-exit network over `backbone` and the `VarMap` holding all its
/// variables; the backbone's initial weights equal those of `new_model(backbone, .., seed)`.
pub fn new_multi_exit_model(
    backbone: &str,
    num_classes: usize,
    seed: u64,
    options: BuildOptions,
    device: &Device,
) -> std::result::Result<(VarMap, MultiExitNet), ModelError> {
    let varmap = VarMap::new();
    let vb = crate::seeded_var_builder(&varmap, seed, DType::F32, device);
    let net = MultiExitNet::new(backbone, num_classes, options, vb)?.with_exit_params_from(&varmap);
    Ok((varmap, net))
}
