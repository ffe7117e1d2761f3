//! Two-modality inputs packed into one row, and the late-fusion model that reads them
//! (MultiBench's "LF": both unimodal encoders, their embeddings concatenated, one linear head),
//! the upper reference of cross-modal distillation. A packed row keeps kd-core's `Batch` one
//! tensor and lets evaluation (which gets only `inputs`) reach both modalities.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use kd_core::{Classifier, Mode, ModelOutput};

use crate::layers::{linear_num_params, torch_default_linear};

/// Where each modality lives in a packed input row: `a` (the teacher's) first, then `b` (the
/// student's); each a `(channels, height, width)` block, row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedLayout {
    pub a: [usize; 3],
    pub b: [usize; 3],
}

impl PackedLayout {
    pub fn a_len(&self) -> usize {
        self.a.iter().product()
    }

    pub fn b_len(&self) -> usize {
        self.b.iter().product()
    }

    pub fn row_len(&self) -> usize {
        self.a_len() + self.b_len()
    }

    /// Appends one packed row.
    pub fn pack(&self, a: &[f32], b: &[f32], out: &mut Vec<f32>) {
        assert_eq!((a.len(), b.len()), (self.a_len(), self.b_len()), "packed row sizes");
        out.extend_from_slice(a);
        out.extend_from_slice(b);
    }

    fn check(&self, inputs: &Tensor) -> Result<usize> {
        let (n, w) = inputs.dims2()?;
        if w != self.row_len() {
            candle_core::bail!(
                "packed cross-modal input has {w} values per row, the layout {:?} + {:?} needs {}",
                self.a,
                self.b,
                self.row_len()
            );
        }
        Ok(n)
    }

    /// Modality A of `(batch, row_len)` inputs, as `(batch, c, h, w)`.
    pub fn modality_a(&self, inputs: &Tensor) -> Result<Tensor> {
        let n = self.check(inputs)?;
        let [c, h, w] = self.a;
        inputs.narrow(1, 0, self.a_len())?.contiguous()?.reshape((n, c, h, w))
    }

    /// Modality B of `(batch, row_len)` inputs, as `(batch, c, h, w)`.
    pub fn modality_b(&self, inputs: &Tensor) -> Result<Tensor> {
        let n = self.check(inputs)?;
        let [c, h, w] = self.b;
        inputs.narrow(1, self.a_len(), self.b_len())?.contiguous()?.reshape((n, c, h, w))
    }
}

/// The two-modality late-fusion model (the upper reference): an image encoder on modality A, an
/// audio encoder on modality B, their embeddings concatenated and classified by one linear head.
/// Its input is the packed row.
pub struct LateFusion {
    image: Arc<dyn Classifier>,
    audio: Arc<dyn Classifier>,
    head: Linear,
    layout: PackedLayout,
    arch: String,
}

impl LateFusion {
    /// `image_dim`/`audio_dim`: the encoders' embedding widths; the head's variables come from
    /// `vb` (`weight`, `bias`).
    pub fn new(
        image: Arc<dyn Classifier>,
        image_dim: usize,
        audio: Arc<dyn Classifier>,
        audio_dim: usize,
        layout: PackedLayout,
        vb: VarBuilder,
    ) -> Result<Self> {
        let classes = audio.num_classes();
        let head = torch_default_linear(image_dim + audio_dim, classes, vb)?;
        let arch = format!("{}+{}", image.arch(), audio.arch());
        Ok(Self { image, audio, head, layout, arch })
    }
}

impl Classifier for LateFusion {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput> {
        let a = self.image.forward(&self.layout.modality_a(input)?, mode)?;
        let b = self.audio.forward(&self.layout.modality_b(input)?, mode)?;
        let embedding = Tensor::cat(&[&a.embedding, &b.embedding], 1)?;
        let logits = candle_core::Module::forward(&self.head, &embedding)?;
        let mut stage_features = a.stage_features;
        stage_features.extend(b.stage_features);
        Ok(ModelOutput { logits, stage_features, embedding })
    }

    fn num_classes(&self) -> usize {
        self.audio.num_classes()
    }

    fn arch(&self) -> &str {
        &self.arch
    }

    fn num_params(&self) -> usize {
        self.image.num_params() + self.audio.num_params() + linear_num_params(&self.head)
    }
}
