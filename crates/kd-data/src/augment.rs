//! Normalisation and CIFAR-style augmentation, with view codes that identify an augmented
//! example exactly (so a teacher soft-label cache can key on `(example, view)`).

use crate::error::DataError;
use crate::images::ImageDataset;

/// torchvision `ToTensor` (/255) then `Normalize(mean, std)`, per RGB channel:
/// `x = (pixel / 255 − mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// ImageNet statistics (torchvision's usual `Normalize`).
    pub const IMAGENET: Normalize = Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
    /// `ToTensor` only: values in `[0, 1]`.
    pub const UNIT: Normalize = Normalize { mean: [0.0; 3], std: [1.0; 3] };
}

/// torchvision `RandomCrop(size, padding=pad)` with zero padding (applied to the u8 image, so
/// padded pixels normalise to `-mean/std`), then `RandomHorizontalFlip(p=0.5)` when `hflip`;
/// the crop keeps the image size. CIFAR's standard is `pad = 4, hflip = true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding on every side, in pixels.
    pub pad: usize,
    /// Random horizontal flip with probability 1/2.
    pub hflip: bool,
    /// `Some((k, seed))`: each example draws from its own fixed bank of `k` views.
    pub bank: Option<(usize, u64)>,
}

impl Augment {
    /// CIFAR's standard: 4-pixel zero padding, random crop, random horizontal flip.
    pub const CIFAR: Augment = Augment { pad: 4, hflip: true, bank: None };

    /// A uniformly random view (offsets uniform in `0..=2·pad`, flip with probability 1/2).
    pub fn random_view(&self, rng: &mut impl rand::Rng) -> ViewCode {
        let side = 2 * self.pad + 1;
        let dx = rng.random_range(0..side);
        let dy = rng.random_range(0..side);
        let flip = self.hflip && rng.random_bool(0.5);
        ViewCode { dx, dy, flip }
    }

    /// View `k` of example `example`'s bank (a pure function of the bank seed).
    pub fn bank_view(&self, bank_seed: u64, example: usize, k: usize) -> ViewCode {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(splitmix(
            bank_seed ^ splitmix((example as u64) << 20 | k as u64),
        ));
        self.random_view(&mut rng)
    }
}

/// SplitMix64 finaliser: decorrelates nearby integers before they seed a generator.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One augmented view of an `H×W` image: zero-pad by `pad` on every side, crop the `H×W`
/// window whose top-left corner is `(dx, dy)` in the padded image (`0..=2·pad` each), then
/// mirror left-right when `flip`.
///
/// Encoding (a `u32`, the key a soft-label cache stores with the example id):
///
/// ```text
/// code = 1 + ((dy · (2·pad + 1) + dx) · 2 + flip)      codes 1..=2·(2·pad+1)²
/// code = 0                                             no augmentation (the image as is)
/// ```
///
/// A code means a view only together with `pad` (a cache must key on `pad` too); it does not
/// depend on the image size. The centred unflipped view (`dx = dy = pad`) renders the same
/// pixels as code 0 but keeps its own code: it was drawn by the augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewCode {
    /// Column of the crop's left edge in the padded image, `0..=2·pad`.
    pub dx: usize,
    /// Row of the crop's top edge in the padded image, `0..=2·pad`.
    pub dy: usize,
    /// Mirrored left-right after the crop.
    pub flip: bool,
}

impl ViewCode {
    /// The code of the un-augmented image.
    pub const IDENTITY: u32 = 0;

    /// The code of this view under `pad` (`dx`, `dy` must be at most `2·pad`).
    pub fn encode(self, pad: usize) -> u32 {
        debug_assert!(self.dx <= 2 * pad && self.dy <= 2 * pad, "{self:?} is out of range for pad {pad}");
        let side = 2 * pad + 1;
        1 + ((self.dy * side + self.dx) * 2 + self.flip as usize) as u32
    }

    /// `None` for code 0 (no augmentation) or a code out of range for `pad`.
    pub fn decode(code: u32, pad: usize) -> Option<Self> {
        let side = 2 * pad + 1;
        let k = (code as usize).checked_sub(1)?;
        if k >= side * side * 2 {
            return None;
        }
        Some(ViewCode { dx: (k / 2) % side, dy: (k / 2) / side, flip: k % 2 == 1 })
    }

    /// Number of distinct views for `pad` (codes `1..=count`).
    pub fn count(pad: usize) -> usize {
        (2 * pad + 1) * (2 * pad + 1) * 2
    }
}

/// The view a code names under `augment`: `Ok(None)` for [`ViewCode::IDENTITY`], `Ok(Some)`
/// with the pad it was encoded for, or an error naming a code that `augment` cannot produce.
pub fn view_of(code: u32, augment: Option<&Augment>) -> Result<Option<(ViewCode, usize)>, DataError> {
    if code == ViewCode::IDENTITY {
        return Ok(None);
    }
    let Some(a) = augment else {
        return Err(DataError::Invalid(format!(
            "view code {code} given, but augmentation is off (only 0 is valid)"
        )));
    };
    ViewCode::decode(code, a.pad).map(|v| Some((v, a.pad))).ok_or_else(|| {
        DataError::Invalid(format!(
            "view code {code} is out of range for pad {} (codes 0..={})",
            a.pad,
            ViewCode::count(a.pad)
        ))
    })
}

/// The normalised CHW floats (`3·H·W`) of view `code` of example `index`, exactly as the
/// loader renders it: a soft-label cache can recompute any `(example, view)` it stored.
pub fn render_view(
    ds: &ImageDataset,
    index: usize,
    code: u32,
    augment: Option<&Augment>,
    norm: &Normalize,
) -> Result<Vec<f32>, DataError> {
    let view = view_of(code, augment)?;
    let image = ds.get(index).ok_or_else(|| {
        DataError::Invalid(format!(
            "example {index} is out of range: {} {} has {} examples",
            ds.repo,
            ds.split,
            ds.len()
        ))
    })?;
    let mut out = vec![0f32; 3 * ds.height * ds.width];
    render(image, ds.height, ds.width, view, norm, &mut out);
    Ok(out)
}

/// Writes the normalised CHW floats of `view` of an `h×w` HWC u8 image into `out`
/// (`3·h·w` values). `view = None` is the image as is; `Some((view, pad))` a view under `pad`.
///
/// Panics when `image` or `out` does not hold `3·h·w` values.
pub fn render(
    image: &[u8],
    h: usize,
    w: usize,
    view: Option<(ViewCode, usize)>,
    norm: &Normalize,
    out: &mut [f32],
) {
    match view {
        None => normalize_into(image, h, w, norm, out),
        Some(view) => normalize_into(&crop(image, h, w, view), h, w, norm, out),
    }
}

/// The `h×w` HWC u8 pixels of `view` of an `h×w` HWC u8 image: the zero-padded crop, then the
/// mirror (what [`render`] normalises; a strong view augments these bytes further first).
///
/// Panics when `image` does not hold `3·h·w` values.
pub fn crop(image: &[u8], h: usize, w: usize, (view, pad): (ViewCode, usize)) -> Vec<u8> {
    assert_eq!(image.len(), 3 * h * w, "image bytes for {h}×{w}×3");
    let (dx, dy, pad) = (view.dx as isize, view.dy as isize, pad as isize);
    let mut out = vec![0u8; 3 * h * w];
    for y in 0..h {
        let sy = y as isize + dy - pad;
        if sy < 0 || sy >= h as isize {
            continue;
        }
        for x in 0..w {
            let cx = if view.flip { w - 1 - x } else { x };
            let sx = cx as isize + dx - pad;
            if sx >= 0 && sx < w as isize {
                let src = (sy as usize * w + sx as usize) * 3;
                out[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&image[src..src + 3]);
            }
        }
    }
    out
}

/// `ToTensor` then `Normalize` of an `h×w` HWC u8 image into `3·h·w` CHW floats.
///
/// Panics when `image` or `out` does not hold `3·h·w` values.
pub fn normalize_into(image: &[u8], h: usize, w: usize, norm: &Normalize, out: &mut [f32]) {
    assert_eq!(image.len(), 3 * h * w, "image bytes for {h}×{w}×3");
    assert_eq!(out.len(), 3 * h * w, "output floats for 3×{h}×{w}");
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * norm.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| -norm.mean[c] / norm.std[c]);
    for (p, px) in image.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * h * w + p] = px[c] as f32 * scale[c] + shift[c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: Normalize = Normalize { mean: [0.0; 3], std: [1.0 / 255.0; 3] };

    #[test]
    fn bank_views_are_fixed_per_example_and_varied() {
        let a = Augment { pad: 4, hflip: true, bank: Some((8, 3)) };
        assert_eq!(a.bank_view(3, 17, 5), a.bank_view(3, 17, 5));
        let views: std::collections::HashSet<u32> = (0..8).map(|k| a.bank_view(3, 17, k).encode(4)).collect();
        assert!(views.len() >= 6, "8 draws from 162 views are mostly distinct: {views:?}");
        assert_ne!(a.bank_view(3, 17, 0), a.bank_view(4, 17, 0));
    }

    #[test]
    fn view_codes_round_trip() {
        for pad in [0, 1, 4] {
            for code in 1..=ViewCode::count(pad) as u32 {
                let v = ViewCode::decode(code, pad).unwrap();
                assert_eq!(v.encode(pad), code);
            }
            assert!(ViewCode::decode(0, pad).is_none());
            assert!(ViewCode::decode(ViewCode::count(pad) as u32 + 1, pad).is_none());
        }
    }

    #[test]
    fn crop_and_flip_on_a_known_image() {
        // 2×3 image, channel value = 10·y + x (+100 per channel).
        let (h, w) = (2, 3);
        let img: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| (0..3).map(move |c| (10 * y + x + 100 * c) as u8)))
            .collect();
        let mut out = vec![0f32; 3 * h * w];
        // Identity view: centred crop (dx = dy = pad), no flip.
        render(&img, h, w, Some((ViewCode { dx: 1, dy: 1, flip: false }, 1)), &ID, &mut out);
        assert_eq!(&out[..6], &[0., 1., 2., 10., 11., 12.]);
        // Shift right-down by one: top row and left column are zero padding.
        render(&img, h, w, Some((ViewCode { dx: 0, dy: 0, flip: false }, 1)), &ID, &mut out);
        assert_eq!(&out[..6], &[0., 0., 0., 0., 0., 1.]);
        // Flip only.
        render(&img, h, w, Some((ViewCode { dx: 1, dy: 1, flip: true }, 1)), &ID, &mut out);
        assert_eq!(&out[..6], &[2., 1., 0., 12., 11., 10.]);
        assert_eq!(&out[6..9], &[102., 101., 100.], "second channel");
    }

    #[test]
    fn normalisation_matches_to_tensor_then_normalize() {
        let img = [255u8, 0, 51];
        let norm = Normalize { mean: [0.5, 0.5, 0.2], std: [0.25, 0.5, 0.1] };
        let mut out = [0f32; 3];
        render(&img, 1, 1, None, &norm, &mut out);
        let want = [(1.0 - 0.5) / 0.25, (0.0 - 0.5) / 0.5, (0.2 - 0.2) / 0.1];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
