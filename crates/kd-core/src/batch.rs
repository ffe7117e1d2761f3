//! A mini-batch as methods see it: an opaque input tensor, labels, the identity of each
//! example and of its augmentation (so teacher outputs can be cached per view), and, for the
//! methods that ask for it, a second, strongly augmented view of the same examples.

use candle_core::Tensor;

/// One mini-batch. `inputs` is whatever the models take (normalised `NCHW` images, token ids);
/// methods pass it through without looking inside.
#[derive(Debug, Clone)]
pub struct Batch {
    pub inputs: Tensor,
    /// `(batch,)` u32 class ids (or `(batch,)` f32 targets for regression tasks).
    pub labels: Tensor,
    /// Position of each example in its split (stable across epochs and seeds).
    pub example_ids: Vec<u32>,
    /// Code of the augmentation applied to each example; `0` is the un-augmented view.
    /// See `kd_data::augment::ViewCode` for the encoding.
    pub views: Vec<u32>,
    /// The same examples, in the same order, under a strong augmentation (MLKD's RandAugment
    /// and Cutout after its own crop and flip), shaped as `inputs`. Rendered only for a variant
    /// whose method asks for it ([`crate::registry::MethodSetup::strong_view`]); `None`
    /// otherwise. Each strong view is drawn afresh (never cached), from its own seed stream, so
    /// asking for it leaves `inputs` and `views` exactly as they were.
    pub strong: Option<Tensor>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.example_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.example_ids.is_empty()
    }
}
