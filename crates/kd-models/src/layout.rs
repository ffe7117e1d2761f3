//! What a set of state-dict names and shapes says about the BasicBlock ResNet it belongs to, so
//! a checkpoint that does not fit its recipe's architecture is refused with a useful guess
//! ("the file looks like an option-B ResNet-56 with a stem bias for 100 classes, kd-bench arch
//! `resnet56b-stem-bias`") instead of only a list of tensor names.
//!
//! The guess reads PyTorch names only: `conv1.weight` (and `conv1.bias`) for the stem,
//! `layer{s}.{b}.conv1.weight` for the blocks of stage `s`, `layer{s}.{b}.downsample.*` for
//! option-B shortcuts (their absence means option A's parameter-free ones), `linear.*` or
//! `fc.*` for the head.

use std::collections::BTreeMap;
use std::fmt;

use crate::resnet_cifar::{OPTION_B_DEPTHS, STEM_BIAS_SUFFIX};

/// How the blocks' shortcuts match a change of shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortcutKind {
    /// No shortcut parameters: akamaster's subsample-and-zero-pad (or no shape change at all).
    ParameterFree,
    /// `downsample.0` (1×1 conv) + `downsample.1` (BN), as torchvision and RepDistiller.
    Projection,
}

/// The shape of a BasicBlock ResNet read from its tensor names and shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutGuess {
    /// `2 + 2 · blocks` (stem and head plus two convolutions per block).
    pub depth: usize,
    pub stem_width: usize,
    pub stem_bias: bool,
    /// Output channels of each stage `layer1`, `layer2`, ...
    pub widths: Vec<usize>,
    pub blocks_per_stage: Vec<usize>,
    pub shortcut: ShortcutKind,
    /// `linear` (akamaster) or `fc` (torchvision, RepDistiller).
    pub head: String,
    pub num_classes: usize,
}

impl LayoutGuess {
    /// The guess for the named tensors, or `None` when they are not a BasicBlock ResNet with
    /// an RGB 3×3 stem, `layer*` stages and a `linear`/`fc` head.
    pub fn from_shapes<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>) -> Option<Self> {
        let shapes: BTreeMap<&str, &[usize]> = tensors.into_iter().collect();
        let stem = shapes.get("conv1.weight")?;
        if stem.len() != 4 || stem[1] != 3 {
            return None;
        }
        let (head, head_shape) = ["linear", "fc"]
            .iter()
            .find_map(|h| shapes.get(format!("{h}.weight").as_str()).map(|s| (*h, *s)))?;
        if head_shape.len() != 2 {
            return None;
        }
        let mut widths = Vec::new();
        let mut blocks_per_stage = Vec::new();
        for s in 1.. {
            let mut blocks = 0;
            while let Some(w) = shapes.get(format!("layer{s}.{blocks}.conv1.weight").as_str()) {
                if blocks == 0 {
                    widths.push(*w.first()?);
                }
                blocks += 1;
            }
            if blocks == 0 {
                break;
            }
            blocks_per_stage.push(blocks);
        }
        // Bottleneck blocks have a third convolution; not a layout this guess knows.
        if widths.is_empty() || shapes.keys().any(|k| k.starts_with("layer") && k.contains(".conv3.")) {
            return None;
        }
        let shortcut = if shapes.keys().any(|k| k.contains(".downsample.")) {
            ShortcutKind::Projection
        } else {
            ShortcutKind::ParameterFree
        };
        Some(Self {
            depth: 2 + 2 * blocks_per_stage.iter().sum::<usize>(),
            stem_width: stem[0],
            stem_bias: shapes.contains_key("conv1.bias"),
            widths,
            blocks_per_stage,
            shortcut,
            head: head.to_string(),
            num_classes: head_shape[0],
        })
    }

    /// The kd-bench architecture with this layout, if there is one.
    pub fn arch(&self) -> Option<String> {
        let even = self.blocks_per_stage.windows(2).all(|w| w[0] == w[1]);
        if !even {
            return None;
        }
        let cifar = self.stem_width == 16 && self.widths == [16, 32, 64];
        let x4 = self.stem_width == 32 && self.widths == [64, 128, 256];
        let resnet18 = self.stem_width == 64 && self.widths == [64, 128, 256, 512] && self.depth == 18;
        let d = self.depth;
        match (self.shortcut, self.head.as_str(), self.stem_bias) {
            (ShortcutKind::ParameterFree, "linear", false) if cifar => Some(format!("resnet{d}")),
            (ShortcutKind::Projection, "fc", bias) if cifar && OPTION_B_DEPTHS.contains(&d) => {
                Some(format!("resnet{d}b{}", if bias { STEM_BIAS_SUFFIX } else { "" }))
            }
            (ShortcutKind::Projection, "fc", false) if x4 && (d == 8 || d == 32) => {
                Some(format!("resnet{d}x4"))
            }
            (ShortcutKind::Projection, "fc", false) if resnet18 => Some("resnet18".into()),
            _ => None,
        }
    }

    /// The family in words with its article: "an akamaster option-A", ...
    fn family(&self) -> String {
        let cifar = self.stem_width == 16 && self.widths == [16, 32, 64];
        match self.shortcut {
            ShortcutKind::ParameterFree if cifar && self.head == "linear" => "an akamaster option-A".into(),
            ShortcutKind::ParameterFree => "a parameter-free-shortcut".into(),
            ShortcutKind::Projection if self.stem_width == 32 && self.widths == [64, 128, 256] => {
                "a RepDistiller x4 option-B".into()
            }
            ShortcutKind::Projection => "an option-B torchvision-style".into(),
        }
    }
}

impl fmt::Display for LayoutGuess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stem = if self.stem_bias { "with" } else { "without" };
        write!(
            f,
            "{} ResNet-{} (stem {} channels {stem} bias, stages {:?} x {:?} blocks, head `{}`) for {} classes",
            self.family(),
            self.depth,
            self.stem_width,
            self.widths,
            self.blocks_per_stage,
            self.head,
            self.num_classes
        )?;
        match self.arch() {
            Some(arch) => write!(f, ", kd-bench arch `{arch}`"),
            None => write!(f, ", no kd-bench arch has this layout"),
        }
    }
}
