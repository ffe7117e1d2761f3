//! Image splits: parquet rows of an HF `Image` column (`{bytes, path}`, or plain binary) and
//! an integer label column, decoded in parallel (rayon) to one compact `N×H×W×3` u8 buffer.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;

use crate::error::DataError;
use crate::hub::HubCache;
use crate::table::read_columns;

/// Where an image split comes from; column names come from the recipe, never hard-coded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// `owner/name` of a dataset repo on the hub.
    pub repo: String,
    /// Branch, tag or commit sha.
    pub revision: String,
    /// The card's config (`None`: its default or only one).
    pub config: Option<String>,
    /// An HF `Image` column (`{bytes, path}` struct) or a binary column of PNG/JPEG bytes.
    pub image_column: String,
    /// An integer column of class ids `0..num_classes`.
    pub label_column: String,
    /// Explicit files (or `*` patterns) per split; overrides the card's `data_files`.
    pub data_files: Option<BTreeMap<String, Vec<String>>>,
}

/// Called with `(images decoded, images in the split)` while a split decodes (from worker
/// threads, in no particular order; the last call has `done == total`).
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// How to load an image split beyond its source.
#[derive(Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    /// Resize every image whose size differs to `(height, width)` (triangle/bilinear filter,
    /// widened when shrinking, as PIL's bilinear resize that torchvision's `Resize` uses);
    /// `None` requires every image to have the first one's size.
    pub resize: Option<(usize, usize)>,
    /// Decode progress.
    pub progress: Option<Progress<'a>>,
}

impl std::fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("resize", &self.resize)
            .field("progress", &self.progress.map(|_| "callback"))
            .finish()
    }
}

/// A decoded split.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    /// `N×H×W×3` RGB, row-major (HWC per image), as `ToTensor` sees a PIL image before scaling.
    pub pixels: Vec<u8>,
    /// Class id of each image.
    pub labels: Vec<u32>,
    pub height: usize,
    pub width: usize,
    /// The card's class-name count for the label column when it has one (at least
    /// `max label + 1`), else `max label + 1`.
    pub num_classes: usize,
    /// The card's `class_label` names of the label column, index = class id.
    pub class_names: Option<Vec<String>>,
    /// `owner/name` of the repo.
    pub repo: String,
    /// The commit the split was read from (not the branch name asked for).
    pub revision: String,
    pub split: String,
}

impl ImageDataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image (`H·W·3`).
    pub fn image_len(&self) -> usize {
        self.height * self.width * 3
    }

    /// The HWC pixels of example `i`. Panics when `i >= len()`; see [`ImageDataset::get`].
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The HWC pixels of example `i`, or `None` when out of range.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let n = self.image_len();
        self.pixels.get(i * n..(i + 1) * n)
    }
}

/// Resolves, reads and decodes `split` of `src`; see [`load_image_split_with`].
pub fn load_image_split(cache: &HubCache, src: &ImageSource, split: &str) -> Result<ImageDataset, DataError> {
    load_image_split_with(cache, src, split, LoadOptions::default())
}

/// Resolves, reads and decodes `split` of `src`. Grayscale, palette and RGBA images become
/// RGB (alpha dropped, as PIL's `convert("RGB")`). Without `opts.resize` every image must have
/// the size of the first (an odd one is an error naming its file and row).
pub fn load_image_split_with(
    cache: &HubCache,
    src: &ImageSource,
    split: &str,
    opts: LoadOptions<'_>,
) -> Result<ImageDataset, DataError> {
    let explicit = src.data_files.as_ref().and_then(|m| m.get(split)).map(Vec::as_slice);
    let resolved = cache.resolve_split(&src.repo, &src.revision, src.config.as_deref(), split, explicit)?;
    // (file index, row in file, encoded bytes)
    let mut encoded: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let mut labels = Vec::new();
    for (fi, path) in resolved.paths.iter().enumerate() {
        let cols = read_columns(path, &[&src.image_column, &src.label_column])?;
        let mut cols = cols.into_iter();
        let (Some(images), Some(labs)) = (cols.next(), cols.next()) else {
            return Err(DataError::Invalid(format!("{}: reading two columns gave fewer", path.display())));
        };
        for (row, (img, lab)) in images.into_iter().zip(labs).enumerate() {
            let label = lab.as_i64().filter(|l| (0..=u32::MAX as i64).contains(l)).ok_or_else(|| {
                DataError::BadColumn {
                    file: path.clone(),
                    column: src.label_column.clone(),
                    message: format!("row {row}: label {lab:?} is not a class id (a non-negative integer)"),
                }
            })?;
            let bytes = img.into_encoded_bytes().ok_or_else(|| DataError::BadColumn {
                file: path.clone(),
                column: src.image_column.clone(),
                message: format!(
                    "row {row} holds no image bytes (expected an Image struct {{bytes, path}} or binary)"
                ),
            })?;
            encoded.push((fi, row, bytes));
            labels.push(label as u32);
        }
    }
    if encoded.is_empty() {
        return Err(DataError::Invalid(format!(
            "dataset {} @ {} (commit {}): split `{split}` has no rows",
            src.repo, src.revision, resolved.commit
        )));
    }
    let file_of = |k: usize| resolved.paths[encoded[k].0].clone();
    let (height, width) = match opts.resize {
        Some((h, w)) if h == 0 || w == 0 => {
            return Err(DataError::Invalid(format!("resize to {h}×{w}: sizes must be positive")))
        }
        Some(hw) => hw,
        None => {
            let (_, row, bytes) = &encoded[0];
            let (w, h) = image::ImageReader::new(std::io::Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| bad_image(file_of(0), *row, e.to_string()))?
                .into_dimensions()
                .map_err(|e| bad_image(file_of(0), *row, e.to_string()))?;
            (h as usize, w as usize)
        }
    };
    let n = height * width * 3;
    let mut pixels = vec![0u8; encoded.len() * n];
    let done = std::sync::atomic::AtomicUsize::new(0);
    let total = encoded.len();
    pixels.par_chunks_mut(n).zip(encoded.par_iter()).try_for_each(|(out, (fi, row, bytes))| {
        let file = || resolved.paths[*fi].clone();
        let img = image::load_from_memory(bytes).map_err(|e| bad_image(file(), *row, e.to_string()))?;
        let mut rgb = img.into_rgb8();
        if (rgb.height() as usize, rgb.width() as usize) != (height, width) {
            if opts.resize.is_none() {
                return Err(DataError::BadRow {
                    file: file(),
                    row: *row,
                    message: format!(
                        "image is {}×{} (H×W), the split's first image is {height}×{width}; ask for a resize \
                         in the recipe to mix sizes",
                        rgb.height(),
                        rgb.width()
                    ),
                });
            }
            rgb = image::imageops::resize(
                &rgb,
                width as u32,
                height as u32,
                image::imageops::FilterType::Triangle,
            );
        }
        out.copy_from_slice(rgb.as_raw());
        if let Some(p) = opts.progress {
            p(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, total);
        }
        Ok(())
    })?;
    let max_label = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let class_names = resolved
        .card
        .as_ref()
        .and_then(|c| c.class_names(resolved.config.as_deref().or(src.config.as_deref()), &src.label_column))
        .map(<[String]>::to_vec);
    if let Some(names) = &class_names {
        if max_label > names.len() {
            let k = labels.iter().position(|&l| l as usize >= names.len()).unwrap_or(0);
            return Err(DataError::BadColumn {
                file: file_of(k),
                column: src.label_column.clone(),
                message: format!(
                    "row {}: label {} but the dataset card names only {} classes",
                    encoded[k].1,
                    labels[k],
                    names.len()
                ),
            });
        }
    }
    Ok(ImageDataset {
        pixels,
        num_classes: class_names.as_ref().map_or(max_label, Vec::len),
        labels,
        height,
        width,
        class_names,
        repo: src.repo.clone(),
        revision: resolved.commit,
        split: split.to_string(),
    })
}

fn bad_image(file: PathBuf, row: usize, e: String) -> DataError {
    DataError::BadRow { file, row, message: format!("cannot decode image: {e}") }
}
