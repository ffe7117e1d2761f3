//! Image splits: parquet rows of an HF `Image` column (`{bytes, path}`) and an integer label
//! column, decoded in parallel to one compact `N×H×W×3` u8 buffer.

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::error::DataError;
use crate::hub::HubCache;
use crate::table::read_columns;

/// Where an image split comes from; column names come from the recipe, never hard-coded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    pub repo: String,
    pub revision: String,
    pub config: Option<String>,
    pub image_column: String,
    pub label_column: String,
    /// Explicit files per split (overrides the card's `data_files`).
    pub data_files: Option<BTreeMap<String, Vec<String>>>,
}

/// A decoded split.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    /// `N×H×W×3` RGB, row-major (HWC per image).
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub height: usize,
    pub width: usize,
    /// `max label + 1`.
    pub num_classes: usize,
    pub repo: String,
    /// The commit the split was read from.
    pub revision: String,
    pub split: String,
}

impl ImageDataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The HWC pixels of example `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.height * self.width * 3;
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// Resolves, reads and decodes `split` of `src`. Every image must have the size of the first
/// (an odd one is an error naming its file and row); grayscale and RGBA become RGB.
pub fn load_image_split(cache: &HubCache, src: &ImageSource, split: &str) -> Result<ImageDataset, DataError> {
    let explicit = src.data_files.as_ref().and_then(|m| m.get(split)).map(Vec::as_slice);
    let resolved = cache.resolve_split(&src.repo, &src.revision, src.config.as_deref(), split, explicit)?;
    let mut encoded: Vec<(usize, usize, Vec<u8>)> = Vec::new(); // (file index, row, bytes)
    let mut labels = Vec::new();
    for (fi, path) in resolved.paths.iter().enumerate() {
        let cols = read_columns(path, &[&src.image_column, &src.label_column])?;
        let [images, labs]: [Vec<_>; 2] = cols.try_into().expect("two columns asked");
        for (row, (img, lab)) in images.into_iter().zip(labs).enumerate() {
            let bytes = img.encoded_bytes().ok_or_else(|| DataError::BadColumn {
                file: path.clone(),
                column: src.image_column.clone(),
                message: format!(
                    "row {row} holds no image bytes (expected an Image struct {{bytes, path}} or binary)"
                ),
            })?;
            let label = lab.as_i64().filter(|l| *l >= 0).ok_or_else(|| DataError::BadColumn {
                file: path.clone(),
                column: src.label_column.clone(),
                message: format!("row {row}: label {lab:?} is not a non-negative integer"),
            })?;
            encoded.push((fi, row, bytes.to_vec()));
            labels.push(label as u32);
        }
    }
    if encoded.is_empty() {
        return Err(DataError::Invalid(format!(
            "{} @ {}: split `{split}` has no rows",
            src.repo, resolved.commit
        )));
    }
    let decoded: Vec<(usize, usize, Vec<u8>)> = encoded
        .par_iter()
        .map(|(fi, row, bytes)| {
            let img = image::load_from_memory(bytes).map_err(|e| DataError::BadRow {
                file: resolved.paths[*fi].clone(),
                row: *row,
                message: format!("cannot decode image: {e}"),
            })?;
            let rgb = img.to_rgb8();
            Ok((rgb.width() as usize, rgb.height() as usize, rgb.into_raw()))
        })
        .collect::<Result<_, DataError>>()?;
    let (width, height) = (decoded[0].0, decoded[0].1);
    let mut pixels = Vec::with_capacity(decoded.len() * width * height * 3);
    for (k, (w, h, px)) in decoded.into_iter().enumerate() {
        if (w, h) != (width, height) {
            let (fi, row, _) = &encoded[k];
            return Err(DataError::BadRow {
                file: resolved.paths[*fi].clone(),
                row: *row,
                message: format!("image is {w}×{h}, the split's first image is {width}×{height}"),
            });
        }
        pixels.extend_from_slice(&px);
    }
    let num_classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    Ok(ImageDataset {
        pixels,
        labels,
        height,
        width,
        num_classes,
        repo: src.repo.clone(),
        revision: resolved.commit,
        split: split.to_string(),
    })
}
