//! RandAugment as MLKD trains it, bit-exact with Pillow's ops.
//!
//! MLKD (Jin et al., CVPR 2023, "Multi-Level Logit Distillation") feeds the student a weak
//! view (random crop, pad 4, horizontal flip: [`crate::augment`]) and a strong view: the same
//! crop/flip, then `RandAugment(2, 10)`, then Cutout. Reference:
//! `Jin-Ying/Multi-Level-Logit-Distillation`, `mdistiller/dataset/cifar100.py` at commit
//! `5ee473fcf193dfb00a0598b64d0acfe6ad58a482` (`augment_list`, `RandAugment`, `CutoutAbs`,
//! `get_cifar100_train_transform_strong`). Its `m` is unused there, so [`RandAugment`] has only
//! `n`; each magnitude is uniform in its op's `[min, max)`.
//!
//! Every op works on an `H×W×3` interleaved `u8` RGB image and reproduces what Pillow
//! (checked against 13.0.0; `tests/fixtures/randaugment.json`) computes for the same
//! parameter, following its C code where the arithmetic matters:
//!
//! - `ImageEnhance.*.enhance(f)` is `Image.blend(degenerate, image, f)`: `ImagingBlend` works in
//!   `f32` and truncates (it does not round); outside `[0, 1]` it clips to `0..=255` first.
//! - "L" is `(19595·R + 38470·G + 7471·B + 0x8000) >> 16` (`Convert.c`, `rgb2l`); `Contrast`'s
//!   grey is `int(mean(L) + 0.5)`; `Sharpness` blends with `ImageFilter.SMOOTH` (`Filter.c`, 3×3,
//!   `f32` kernel `k/13`, `+0.5`, truncated; border rows and columns are copied unchanged).
//! - `autocontrast`, `equalize`, `posterize`, `solarize` are `ImageOps`' lookup tables, clipped
//!   to `0..=255` as `Image.point` does.
//! - `rotate`, shears and translations are `Image.transform(AFFINE, NEAREST)` with black fill
//!   (`Geometry.c`): translations take `ImagingScaleAffine` (float steps, `COORD` truncation);
//!   the rest take the 16.16 fixed-point `affine_fixed`, with pixel centres at `+0.5`. `rotate`
//!   builds Pillow's matrix (angle mod 360, `-radians`, `round(·, 15)`, about `(w/2, h/2)`) and
//!   keeps its transpose fast paths for 0°, 90°, 180° and 270°.
//! - Cutout is `ImageDraw.rectangle` with the reference's float corners: C truncates them to
//!   `int` and fills both end rows and columns inclusive.
//!
//! The random draws come from the caller's generator (a seeded `ChaCha8Rng` gives one image per
//! seed); they do not replay Python's `random`, only the op outputs match. One quirk is kept on
//! purpose: the reference draws the Cutout centre with `np.random.uniform(w)`, i.e.
//! `low = w, high = 1.0`, which numpy evaluates as `w + (1 − w)·u`: a centre in `(1, w]`, not
//! `[0, w)`.

/// Cutout's fill colour in the reference (`(125, 123, 114)`, about CIFAR's mean).
pub const CUTOUT_FILL: [u8; 3] = [125, 123, 114];

fn check(img: &[u8], h: usize, w: usize) {
    assert_eq!(img.len(), h * w * 3, "randaugment: an image of {} bytes is not {h}×{w}×3 RGB", img.len());
}

// ------------------------------------------------------------------------------------- LUTs

type Lut = [[u8; 256]; 3];

const IDENTITY: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

fn apply_lut(img: &[u8], lut: &Lut) -> Vec<u8> {
    img.chunks_exact(3)
        .flat_map(|p| [lut[0][p[0] as usize], lut[1][p[1] as usize], lut[2][p[2] as usize]])
        .collect()
}

fn same_lut(f: impl Fn(usize) -> u8) -> Lut {
    let t: [u8; 256] = std::array::from_fn(f);
    [t; 3]
}

/// Per-channel 256-bin histograms (`Image.histogram()` of an RGB image).
fn histograms(img: &[u8]) -> [[u64; 256]; 3] {
    let mut hist = [[0u64; 256]; 3];
    for p in img.chunks_exact(3) {
        for c in 0..3 {
            hist[c][p[c] as usize] += 1;
        }
    }
    hist
}

/// `Image.point` stores each table entry with `CLIP8`.
fn clip_entry(v: i64) -> u8 {
    v.clamp(0, 255) as u8
}

/// `ImageOps.autocontrast(img)` (no cutoff, nothing ignored): each channel's darkest value
/// maps to 0 and its lightest to 255, `int(i·scale + offset)` truncated; a channel of one
/// value is left as is.
pub fn autocontrast(img: &[u8], h: usize, w: usize) -> Vec<u8> {
    check(img, h, w);
    let hist = histograms(img);
    let mut lut: Lut = [IDENTITY; 3];
    for (c, hc) in hist.iter().enumerate() {
        // Python's loops leave lo = 255, hi = 0 when the channel is empty.
        let lo = hc.iter().position(|&n| n != 0).unwrap_or(255);
        let hi = hc.iter().rposition(|&n| n != 0).unwrap_or(0);
        if hi <= lo {
            continue;
        }
        let scale = 255.0 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        for (i, e) in lut[c].iter_mut().enumerate() {
            *e = clip_entry((i as f64 * scale + offset) as i64);
        }
    }
    apply_lut(img, &lut)
}

/// `ImageOps.equalize(img)`: per channel, `step = (N − count of the last used value) // 255`
/// and `lut[i] = (step // 2 + Σ_{j<i} h[j]) // step`; identity when `step` is 0 or the channel
/// has one value.
pub fn equalize(img: &[u8], h: usize, w: usize) -> Vec<u8> {
    check(img, h, w);
    let hist = histograms(img);
    let mut lut: Lut = [IDENTITY; 3];
    for (c, hc) in hist.iter().enumerate() {
        let used: Vec<u64> = hc.iter().copied().filter(|&n| n != 0).collect();
        let (Some(&last), true) = (used.last(), used.len() > 1) else { continue };
        let step = (used.iter().sum::<u64>() - last) / 255;
        if step == 0 {
            continue;
        }
        let mut n = step / 2;
        for (i, e) in lut[c].iter_mut().enumerate() {
            *e = clip_entry((n / step) as i64);
            n += hc[i];
        }
    }
    apply_lut(img, &lut)
}

/// `ImageOps.posterize(img, bits)`: keep the top `bits` bits of each channel (`bits` clamped
/// to `1..=8`; Pillow raises outside that).
pub fn posterize(img: &[u8], h: usize, w: usize, bits: u32) -> Vec<u8> {
    check(img, h, w);
    let mask = !((1u32 << (8 - bits.clamp(1, 8))) - 1) as u8;
    apply_lut(img, &same_lut(|i| i as u8 & mask))
}

/// `ImageOps.solarize(img, threshold)`: values `>= threshold` become `255 − v`.
pub fn solarize(img: &[u8], h: usize, w: usize, threshold: f64) -> Vec<u8> {
    check(img, h, w);
    apply_lut(img, &same_lut(|i| if (i as f64) < threshold { i as u8 } else { 255 - i as u8 }))
}

// ------------------------------------------------------------------------------ enhancers

/// `Image.blend(degenerate, image, factor)` as `ImagingBlend` computes it: `f32` arithmetic,
/// truncation toward zero, clipping only when extrapolating.
fn blend(degenerate: &[u8], img: &[u8], factor: f64) -> Vec<u8> {
    let a = factor as f32; // the C function takes a float
    if a == 0.0 {
        return degenerate.to_vec();
    }
    if a == 1.0 {
        return img.to_vec();
    }
    let interpolate = (0.0..=1.0).contains(&a);
    degenerate
        .iter()
        .zip(img)
        .map(|(&d, &i)| {
            let t = d as f32 + a * (i as i32 - d as i32) as f32;
            if interpolate {
                t as u8
            } else if t <= 0.0 {
                0
            } else if t >= 255.0 {
                255
            } else {
                t as u8
            }
        })
        .collect()
}

/// Pillow's RGB → "L" (`rgb2l`): ITU-R 601-2 luma in 16.16 fixed point.
fn luma(p: &[u8]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `ImageEnhance.Brightness(img).enhance(factor)`: blend with black.
pub fn brightness(img: &[u8], h: usize, w: usize, factor: f64) -> Vec<u8> {
    check(img, h, w);
    blend(&vec![0; img.len()], img, factor)
}

/// `ImageEnhance.Color(img).enhance(factor)`: blend with the image's "L" grey.
pub fn color(img: &[u8], h: usize, w: usize, factor: f64) -> Vec<u8> {
    check(img, h, w);
    let grey: Vec<u8> = img.chunks_exact(3).flat_map(|p| [luma(p); 3]).collect();
    blend(&grey, img, factor)
}

/// `ImageEnhance.Contrast(img).enhance(factor)`: blend with a flat grey of
/// `int(mean(L) + 0.5)`.
pub fn contrast(img: &[u8], h: usize, w: usize, factor: f64) -> Vec<u8> {
    check(img, h, w);
    let count = (h * w) as u64;
    let sum: u64 = img.chunks_exact(3).map(|p| luma(p) as u64).sum();
    // ImageStat: an int sum over an int count (true division), 0 for an empty image.
    let mean = if count == 0 { 0.0 } else { sum as f64 / count as f64 };
    let grey = (mean + 0.5) as u8;
    blend(&vec![grey; img.len()], img, factor)
}

/// `ImageFilter.SMOOTH` (`ImagingFilter3x3`): kernel `[1 1 1; 1 5 1; 1 1 1] / 13` in `f32`,
/// summed row by row (row below first) onto `0.5`, clamped and truncated. The first and last
/// rows and columns are copied unchanged, and an image under 3×3 is returned as is.
fn smooth(img: &[u8], h: usize, w: usize) -> Vec<u8> {
    let mut out = img.to_vec();
    if h < 3 || w < 3 {
        return out;
    }
    let k1 = 1.0f32 / 13.0;
    let k5 = 5.0f32 / 13.0;
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for c in 0..3 {
                let px = |yy: usize, xx: usize| img[(yy * w + xx) * 3 + c] as f32;
                let row = |yy: usize, mid: f32| px(yy, x - 1) * k1 + px(yy, x) * mid + px(yy, x + 1) * k1;
                let mut ss = 0.5f32;
                ss += row(y + 1, k1);
                ss += row(y, k5);
                ss += row(y - 1, k1);
                out[(y * w + x) * 3 + c] = ss.clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// `ImageEnhance.Sharpness(img).enhance(factor)`: blend with the SMOOTH-filtered image.
pub fn sharpness(img: &[u8], h: usize, w: usize, factor: f64) -> Vec<u8> {
    check(img, h, w);
    blend(&smooth(img, h, w), img, factor)
}

// ------------------------------------------------------------------------------- geometry

/// `Geometry.c`'s `COORD`: −1 for a negative coordinate, else truncation.
fn coord(v: f64) -> i64 {
    if v < 0.0 {
        -1
    } else {
        v as i64
    }
}

fn copy_px(out: &mut [u8], o: usize, img: &[u8], i: usize) {
    out[o * 3..o * 3 + 3].copy_from_slice(&img[i * 3..i * 3 + 3]);
}

/// `img.transform(img.size, Image.AFFINE, a)` with nearest resampling and black fill: output
/// pixel `(x, y)` samples the input at `(a0·(x+½) + a1·(y+½) + a2, a3·(x+½) + a4·(y+½) + a5)`,
/// computed the way `ImagingTransformAffine` does (which decides the last bit of each
/// coordinate, so the same path is taken: scale/translate, 16.16 fixed point, or float).
pub fn affine(img: &[u8], h: usize, w: usize, a: [f64; 6]) -> Vec<u8> {
    check(img, h, w);
    let mut out = vec![0u8; img.len()];
    let (wi, hi) = (w as i64, h as i64);
    if a[1] == 0.0 && a[3] == 0.0 {
        // ImagingScaleAffine: one table of source columns, source rows stepped in f64.
        let mut xo = a[2] + a[0] * 0.5;
        let mut yo = a[5] + a[4] * 0.5;
        let mut xintab = vec![0usize; w];
        let (mut xmin, mut xmax) = (w, 0);
        for (x, e) in xintab.iter_mut().enumerate() {
            let xin = coord(xo);
            if (0..wi).contains(&xin) {
                xmax = x + 1;
                xmin = xmin.min(x);
                *e = xin as usize;
            }
            xo += a[0];
        }
        for y in 0..h {
            let yi = coord(yo);
            if (0..hi).contains(&yi) {
                // Only the columns between the first and last valid source column are copied.
                for (x, &xi) in xintab.iter().enumerate().take(xmax).skip(xmin) {
                    copy_px(&mut out, y * w + x, img, yi as usize * w + xi);
                }
            }
            yo += a[4];
        }
        return out;
    }
    let fits = |x: f64, y: f64| {
        (x * a[0] + y * a[1] + a[2]).abs() < 32768.0 && (x * a[3] + y * a[4] + a[5]).abs() < 32768.0
    };
    let (wf, hf) = (w as f64, h as f64);
    if fits(0.0, 0.0) && fits(wf, hf) && fits(0.0, hf) && fits(wf, 0.0) {
        // affine_fixed: 16.16 fixed point, the +½ pixel centre folded into the offsets.
        let fix = |v: f64| {
            let v = v * 65536.0 + 0.5;
            if v < 0.0 {
                v.floor() as i32
            } else {
                v as i32
            }
        };
        let (a0, a1, a3, a4) = (fix(a[0]), fix(a[1]), fix(a[3]), fix(a[4]));
        let mut a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5);
        let mut a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5);
        for y in 0..h {
            let (mut xx, mut yy) = (a2, a5);
            for x in 0..w {
                let (xin, yin) = ((xx >> 16) as i64, (yy >> 16) as i64);
                if (0..wi).contains(&xin) && (0..hi).contains(&yin) {
                    copy_px(&mut out, y * w + x, img, yin as usize * w + xin as usize);
                }
                xx = xx.wrapping_add(a0);
                yy = yy.wrapping_add(a3);
            }
            a2 = a2.wrapping_add(a1);
            a5 = a5.wrapping_add(a4);
        }
        return out;
    }
    // Far outside the image: Pillow's float stepping (every sample lands outside or not).
    let mut xo = a[2] + a[1] * 0.5 + a[0] * 0.5;
    let mut yo = a[5] + a[4] * 0.5 + a[3] * 0.5;
    for y in 0..h {
        let (mut xx, mut yy) = (xo, yo);
        for x in 0..w {
            let (xin, yin) = (coord(xx), coord(yy));
            if (0..wi).contains(&xin) && (0..hi).contains(&yin) {
                copy_px(&mut out, y * w + x, img, yin as usize * w + xin as usize);
            }
            xx += a[0];
            yy += a[3];
        }
        xo += a[1];
        yo += a[4];
    }
    out
}

/// Python's `round(x, 15)`: correctly rounded to 15 decimals (Rust's exact formatting then a
/// correctly rounded parse give the same double).
fn round15(x: f64) -> f64 {
    format!("{x:.15}").parse().unwrap_or(x)
}

/// `img.rotate(angle)`: counter-clockwise by `angle` degrees about the centre, nearest
/// resampling, black fill, same size.
pub fn rotate(img: &[u8], h: usize, w: usize, angle: f64) -> Vec<u8> {
    check(img, h, w);
    // Python's float `%`: the result takes the divisor's sign.
    let mut angle = angle % 360.0;
    if angle < 0.0 {
        angle += 360.0;
    }
    if angle == 0.0 {
        return img.to_vec();
    }
    if angle == 180.0 {
        // Transpose.ROTATE_180
        return img.chunks_exact(3).rev().flatten().copied().collect();
    }
    if (angle == 90.0 || angle == 270.0) && w == h {
        // Transpose.ROTATE_90 (out[w−1−x][y] = in[y][x]) or ROTATE_270 (out[x][h−1−y] = in[y][x]).
        let mut out = vec![0u8; img.len()];
        for y in 0..h {
            for x in 0..w {
                let o = if angle == 90.0 { (w - 1 - x) * h + y } else { x * h + (h - 1 - y) };
                copy_px(&mut out, o, img, y * w + x);
            }
        }
        return out;
    }
    let rad = -angle.to_radians(); // `math.radians`: the same `x · (π/180)`
    let (cos, sin) = (round15(rad.cos()), round15(rad.sin()));
    let mut m = [cos, sin, 0.0, round15(-rad.sin()), cos, 0.0];
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    m[2] = m[0] * -cx + m[1] * -cy + 0.0 + cx;
    m[5] = m[3] * -cx + m[4] * -cy + 0.0 + cy;
    affine(img, h, w, m)
}

/// `img.transform(size, AFFINE, (1, v, 0, 0, 1, 0))`.
pub fn shear_x(img: &[u8], h: usize, w: usize, v: f64) -> Vec<u8> {
    affine(img, h, w, [1.0, v, 0.0, 0.0, 1.0, 0.0])
}

/// `img.transform(size, AFFINE, (1, 0, 0, v, 1, 0))`.
pub fn shear_y(img: &[u8], h: usize, w: usize, v: f64) -> Vec<u8> {
    affine(img, h, w, [1.0, 0.0, 0.0, v, 1.0, 0.0])
}

/// The reference's `TranslateX`: shift by `v · width` pixels (the source is sampled at
/// `x + v·w`, so a positive `v` moves the content left).
pub fn translate_x(img: &[u8], h: usize, w: usize, v: f64) -> Vec<u8> {
    affine(img, h, w, [1.0, 0.0, v * w as f64, 0.0, 1.0, 0.0])
}

/// The reference's `TranslateY`: shift by `v · height` pixels.
pub fn translate_y(img: &[u8], h: usize, w: usize, v: f64) -> Vec<u8> {
    affine(img, h, w, [1.0, 0.0, 0.0, 0.0, 1.0, v * h as f64])
}

/// The reference's `CutoutAbs` with its centre `(cx, cy)` given: a square of side `v` pixels
/// filled with [`CUTOUT_FILL`]. Corners as the reference computes them
/// (`x0 = int(max(0, cx − v/2))`, `x1 = min(w, x0 + v)`, same for y), then as PIL draws them:
/// truncated to int, both ends included, clipped to the image. A negative `v` draws nothing
/// (as the reference); so does a centre past the image, where PIL would raise.
pub fn cutout(img: &mut [u8], h: usize, w: usize, cx: f64, cy: f64, v: f64) {
    check(img, h, w);
    if v < 0.0 || h == 0 || w == 0 {
        return;
    }
    let x0 = (cx - v / 2.0).max(0.0).trunc();
    let y0 = (cy - v / 2.0).max(0.0).trunc();
    let x1 = (w as f64).min(x0 + v);
    let y1 = (h as f64).min(y0 + v);
    if x1 < x0 || y1 < y0 || x1.is_nan() || y1.is_nan() {
        return;
    }
    let (x0, y0) = (x0 as usize, y0 as usize);
    let (x1, y1) = ((x1 as usize).min(w - 1), (y1 as usize).min(h - 1));
    for y in y0..=y1 {
        for x in x0..=x1 {
            img[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&CUTOUT_FILL);
        }
    }
}

// ---------------------------------------------------------------------------- RandAugment

/// One op with its parameter, as the reference's functions take it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    AutoContrast,
    Brightness(f64),
    Color(f64),
    Contrast(f64),
    Equalize,
    Identity,
    /// Bits kept: `max(1, int(v))`.
    Posterize(f64),
    /// Degrees, counter-clockwise.
    Rotate(f64),
    Sharpness(f64),
    ShearX(f64),
    ShearY(f64),
    Solarize(f64),
    /// Fraction of the width.
    TranslateX(f64),
    /// Fraction of the height.
    TranslateY(f64),
    /// `CutoutAbs`: centre `(cx, cy)` and side `v`, in pixels.
    Cutout {
        cx: f64,
        cy: f64,
        v: f64,
    },
}

impl Op {
    /// This op applied to an `h×w` RGB image.
    pub fn apply(&self, img: &[u8], h: usize, w: usize) -> Vec<u8> {
        match *self {
            Op::AutoContrast => autocontrast(img, h, w),
            Op::Brightness(v) => brightness(img, h, w, v),
            Op::Color(v) => color(img, h, w, v),
            Op::Contrast(v) => contrast(img, h, w, v),
            Op::Equalize => equalize(img, h, w),
            Op::Identity => {
                check(img, h, w);
                img.to_vec()
            }
            // Python's int() truncates toward zero; posterize clamps what Pillow would reject.
            Op::Posterize(v) => posterize(img, h, w, v.trunc().clamp(1.0, 8.0) as u32),
            Op::Rotate(v) => rotate(img, h, w, v),
            Op::Sharpness(v) => sharpness(img, h, w, v),
            Op::ShearX(v) => shear_x(img, h, w, v),
            Op::ShearY(v) => shear_y(img, h, w, v),
            Op::Solarize(v) => solarize(img, h, w, v),
            Op::TranslateX(v) => translate_x(img, h, w, v),
            Op::TranslateY(v) => translate_y(img, h, w, v),
            Op::Cutout { cx, cy, v } => {
                let mut out = img.to_vec();
                cutout(&mut out, h, w, cx, cy, v);
                out
            }
        }
    }
}

/// The reference's 14 RandAugment ops (`augment_list()`), in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    AutoContrast,
    Brightness,
    Color,
    Contrast,
    Equalize,
    Identity,
    Posterize,
    Rotate,
    Sharpness,
    ShearX,
    ShearY,
    Solarize,
    TranslateX,
    TranslateY,
}

impl OpKind {
    /// `augment_list()` (Invert and Cutout are defined there but not listed).
    pub const ALL: [OpKind; 14] = [
        OpKind::AutoContrast,
        OpKind::Brightness,
        OpKind::Color,
        OpKind::Contrast,
        OpKind::Equalize,
        OpKind::Identity,
        OpKind::Posterize,
        OpKind::Rotate,
        OpKind::Sharpness,
        OpKind::ShearX,
        OpKind::ShearY,
        OpKind::Solarize,
        OpKind::TranslateX,
        OpKind::TranslateY,
    ];

    /// The magnitude range `(min, max)` of `augment_list()` (ignored by the ops without one).
    pub fn range(self) -> (f64, f64) {
        match self {
            OpKind::AutoContrast | OpKind::Equalize | OpKind::Identity => (0.0, 1.0),
            OpKind::Brightness | OpKind::Color | OpKind::Contrast | OpKind::Sharpness => (0.05, 0.95),
            OpKind::Posterize => (4.0, 8.0),
            OpKind::Rotate => (-30.0, 30.0),
            OpKind::ShearX | OpKind::ShearY | OpKind::TranslateX | OpKind::TranslateY => (-0.3, 0.3),
            OpKind::Solarize => (0.0, 256.0),
        }
    }

    /// The op with magnitude `v`.
    pub fn with(self, v: f64) -> Op {
        match self {
            OpKind::AutoContrast => Op::AutoContrast,
            OpKind::Brightness => Op::Brightness(v),
            OpKind::Color => Op::Color(v),
            OpKind::Contrast => Op::Contrast(v),
            OpKind::Equalize => Op::Equalize,
            OpKind::Identity => Op::Identity,
            OpKind::Posterize => Op::Posterize(v),
            OpKind::Rotate => Op::Rotate(v),
            OpKind::Sharpness => Op::Sharpness(v),
            OpKind::ShearX => Op::ShearX(v),
            OpKind::ShearY => Op::ShearY(v),
            OpKind::Solarize => Op::Solarize(v),
            OpKind::TranslateX => Op::TranslateX(v),
            OpKind::TranslateY => Op::TranslateY(v),
        }
    }
}

/// Applies `ops` in order.
pub fn apply_ops(img: &[u8], h: usize, w: usize, ops: &[Op]) -> Vec<u8> {
    check(img, h, w);
    ops.iter().fold(img.to_vec(), |cur, op| op.apply(&cur, h, w))
}

/// The reference's `RandAugment(n, m)` followed by its Cutout (`m` is unused there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandAugment {
    /// Ops per image, drawn uniformly with replacement.
    pub n: usize,
}

impl RandAugment {
    /// MLKD's strong view: `RandAugment(2, 10)`.
    pub const MLKD: RandAugment = RandAugment { n: 2 };

    /// The ops one image gets: `n` kinds uniformly with replacement, each magnitude
    /// `min + (max − min)·u`, then Cutout of side `u/2 · w` (none when that is 0) centred at
    /// the reference's `(np.random.uniform(w), np.random.uniform(h))` = `(w + (1−w)·u, …)`.
    /// Always `n + 4` draws from `rng`.
    pub fn sample(&self, h: usize, w: usize, rng: &mut impl rand::Rng) -> Vec<Op> {
        let kinds: Vec<OpKind> =
            (0..self.n).map(|_| OpKind::ALL[rng.random_range(0..OpKind::ALL.len())]).collect();
        let mut ops: Vec<Op> = kinds
            .into_iter()
            .map(|k| {
                let (lo, hi) = k.range();
                k.with(lo + (hi - lo) * rng.random::<f64>())
            })
            .collect();
        let frac = rng.random::<f64>() * 0.5;
        let (wf, hf) = (w as f64, h as f64);
        let cx = wf + (1.0 - wf) * rng.random::<f64>();
        let cy = hf + (1.0 - hf) * rng.random::<f64>();
        if frac > 0.0 {
            ops.push(Op::Cutout { cx, cy, v: frac * wf });
        }
        ops
    }

    /// One strong view of an `h×w` RGB image (interleaved `u8`, `h·w·3` bytes).
    ///
    /// Panics when `image.len() != h·w·3` (as every op here does): a caller's bug, not data.
    pub fn apply(&self, image: &[u8], h: usize, w: usize, rng: &mut impl rand::Rng) -> Vec<u8> {
        apply_ops(image, h, w, &self.sample(h, w, rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn image(h: usize, w: usize) -> Vec<u8> {
        (0..h * w * 3).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8).collect()
    }

    #[test]
    fn apply_is_a_function_of_the_seed() {
        let img = image(32, 32);
        let ra = RandAugment::MLKD;
        let a = ra.apply(&img, 32, 32, &mut ChaCha8Rng::seed_from_u64(7));
        let b = ra.apply(&img, 32, 32, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(a, b);
        assert_eq!(a.len(), img.len());
        let distinct: std::collections::HashSet<Vec<u8>> =
            (0..8).map(|s| ra.apply(&img, 32, 32, &mut ChaCha8Rng::seed_from_u64(s))).collect();
        assert!(distinct.len() >= 7, "8 seeds gave only {} distinct images", distinct.len());
    }

    #[test]
    fn sample_follows_the_reference_ranges() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let ops = RandAugment::MLKD.sample(32, 32, &mut rng);
            assert!(ops.len() == 2 || ops.len() == 3);
            for op in &ops {
                seen.insert(std::mem::discriminant(op));
                match *op {
                    Op::Rotate(v) => assert!((-30.0..30.0).contains(&v)),
                    Op::Posterize(v) => assert!((4.0..8.0).contains(&v)),
                    Op::Solarize(v) => assert!((0.0..256.0).contains(&v)),
                    Op::Brightness(v) | Op::Color(v) | Op::Contrast(v) | Op::Sharpness(v) => {
                        assert!((0.05..0.95).contains(&v))
                    }
                    Op::ShearX(v) | Op::ShearY(v) | Op::TranslateX(v) | Op::TranslateY(v) => {
                        assert!((-0.3..0.3).contains(&v))
                    }
                    Op::Cutout { cx, cy, v } => {
                        assert!(cx > 1.0 && cx <= 32.0 && cy > 1.0 && cy <= 32.0);
                        assert!(v > 0.0 && v < 16.0);
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(seen.len(), 15, "every op kind and Cutout drawn");
    }

    #[test]
    fn rotate_quarter_turns_compose() {
        let img = image(32, 32);
        let r = rotate(&rotate(&img, 32, 32, 90.0), 32, 32, -90.0);
        assert_eq!(r, img);
        assert_eq!(rotate(&rotate(&img, 32, 32, 180.0), 32, 32, 180.0), img);
    }

    #[test]
    fn cutout_is_inclusive_and_clipped() {
        let mut img = vec![0u8; 4 * 5 * 3];
        // x0 = int(max(0, 4.9 − 1)) = 3, x1 = min(5, 5) = 5 → columns 3..=4 after clipping.
        cutout(&mut img, 4, 5, 4.9, 0.5, 2.0);
        let filled: Vec<(usize, usize)> = (0..4)
            .flat_map(|y| (0..5).map(move |x| (y, x)))
            .filter(|&(y, x)| img[(y * 5 + x) * 3] == 125)
            .collect();
        assert_eq!(filled, vec![(0, 3), (0, 4), (1, 3), (1, 4), (2, 3), (2, 4)]);
    }
}
