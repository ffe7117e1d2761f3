//! Deterministic mini-batches built on a background thread while the model trains.
//!
//! Epoch `e`'s order and augmentations depend only on `(seed, e)`: one ChaCha8 stream, seeded
//! from `derive_seed(seed, "epoch/e")`, first shuffles the index list and then draws every
//! example's view in that order ([`epoch_plan`]). The producer thread only renders the plan, so
//! thread timing never changes a batch.
//!
//! A strong view ([`LoaderConfig::strong`], MLKD's) is drawn from a stream of its own per
//! example and epoch, `derive_seed(seed, "epoch/e/strong/<example>")`: asking for it leaves the
//! plan, and so every weak view, as it was, and an example's strong view does not depend on
//! the order or the batch it comes in.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use kd_core::Batch;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::augment::{crop, normalize_into, render, view_of, Augment, Normalize, ViewCode};
use crate::error::DataError;
use crate::images::ImageDataset;
use crate::randaugment::RandAugment;

/// Batches prepared ahead of the consumer.
const PREFETCH: usize = 3;

/// How one epoch of one split is batched.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Examples per batch (positive).
    pub batch_size: usize,
    /// Shuffle the index list each epoch (else the list's order).
    pub shuffle: bool,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Random crop/flip per example; `None`: every view is [`ViewCode::IDENTITY`].
    pub augment: Option<Augment>,
    pub normalize: Normalize,
    /// Render [`Batch::strong`] too: `augment`'s crop and flip drawn afresh, then this
    /// RandAugment (with Cutout), then `normalize`. `None`: no strong view.
    pub strong: Option<RandAugment>,
    /// Run seed; with `epoch` the only source of randomness.
    pub seed: u64,
    pub epoch: usize,
}

/// The order and view codes of one epoch, `(example index, view code)` (what the producer
/// thread renders): a pure function of `indices` and `(cfg.seed, cfg.epoch)`.
pub fn epoch_plan(indices: &[usize], cfg: &LoaderConfig) -> Vec<(usize, u32)> {
    let mut rng =
        ChaCha8Rng::seed_from_u64(kd_core::seed::derive_seed(cfg.seed, &format!("epoch/{}", cfg.epoch)));
    let mut order: Vec<usize> = indices.to_vec();
    if cfg.shuffle {
        order.shuffle(&mut rng);
    }
    order
        .into_iter()
        .map(|i| {
            let code = match cfg.augment {
                Some(a @ Augment { bank: Some((k, bank_seed)), .. }) => {
                    a.bank_view(bank_seed, i, rng.random_range(0..k.max(1))).encode(a.pad)
                }
                Some(a) => a.random_view(&mut rng).encode(a.pad),
                None => ViewCode::IDENTITY,
            };
            (i, code)
        })
        .collect()
}

/// Renders one batch of `(example index, view code)` pairs: inputs `(N, 3, H, W)` f32,
/// labels `(N,)` u32. An index out of range or a code `cfg.augment` cannot produce is an error.
pub fn render_batch(
    ds: &ImageDataset,
    items: &[(usize, u32)],
    cfg: &LoaderConfig,
    device: &Device,
) -> Result<Batch, DataError> {
    let (h, w) = (ds.height, ds.width);
    let n = 3 * h * w;
    let mut data = vec![0f32; items.len() * n];
    let mut labels = Vec::with_capacity(items.len());
    let mut example_ids = Vec::with_capacity(items.len());
    let mut strong = cfg.strong.map(|ra| (ra, vec![0f32; items.len() * n]));
    for (k, &(i, code)) in items.iter().enumerate() {
        let (Some(image), Some(&label), Ok(id)) = (ds.get(i), ds.labels.get(i), u32::try_from(i)) else {
            return Err(DataError::Invalid(format!(
                "example {i} is out of range: {} split `{}` has {} examples",
                ds.repo,
                ds.split,
                ds.len()
            )));
        };
        let view = view_of(code, cfg.augment.as_ref())?;
        render(image, h, w, view, &cfg.normalize, &mut data[k * n..(k + 1) * n]);
        if let Some((ra, out)) = strong.as_mut() {
            let pixels = strong_view(image, h, w, *ra, i, cfg);
            normalize_into(&pixels, h, w, &cfg.normalize, &mut out[k * n..(k + 1) * n]);
        }
        labels.push(label);
        example_ids.push(id);
    }
    let strong = match strong {
        Some((_, values)) => Some(Tensor::from_vec(values, (items.len(), 3, h, w), device)?),
        None => None,
    };
    Ok(Batch {
        inputs: Tensor::from_vec(data, (items.len(), 3, h, w), device)?,
        labels: Tensor::from_vec(labels, items.len(), device)?,
        example_ids,
        views: items.iter().map(|&(_, c)| c).collect(),
        strong,
    })
}

/// The u8 pixels of example `index`'s strong view in `cfg`'s epoch: its own crop and flip
/// (from `cfg.augment`; none without it), then `ra`; a pure function of `(cfg.seed,
/// cfg.epoch, index)`. A view bank does not apply: strong views are never cached.
pub fn strong_view(
    image: &[u8],
    h: usize,
    w: usize,
    ra: RandAugment,
    index: usize,
    cfg: &LoaderConfig,
) -> Vec<u8> {
    let purpose = format!("epoch/{}/strong/{index}", cfg.epoch);
    let mut rng = ChaCha8Rng::seed_from_u64(kd_core::seed::derive_seed(cfg.seed, &purpose));
    let cropped = match cfg.augment {
        Some(a) => crop(image, h, w, (a.random_view(&mut rng), a.pad)),
        None => image.to_vec(),
    };
    ra.apply(&cropped, h, w, &mut rng)
}

/// An epoch of batches (`Iterator<Item = Result<Batch, DataError>>`), rendered on a background
/// thread up to a few batches ahead. Dropping it early stops and joins the thread.
pub struct ImageLoader {
    rx: Option<Receiver<Result<Batch, DataError>>>,
    handle: Option<JoinHandle<()>>,
    /// Batches still to come (for `size_hint`).
    remaining: usize,
}

/// Starts the producer for one epoch of `indices` (positions in `ds`) under `cfg`; batches are
/// built on `device`. A bad configuration (batch size 0, an index out of range) comes out as
/// the first item, an error.
pub fn image_loader(
    ds: Arc<ImageDataset>,
    indices: Arc<Vec<usize>>,
    cfg: LoaderConfig,
    device: Device,
) -> ImageLoader {
    let b = cfg.batch_size;
    let problem = if b == 0 {
        Some("batch size 0: it must be positive".to_string())
    } else {
        indices.iter().find(|&&i| i >= ds.len()).map(|i| {
            format!("index {i} is out of range: {} split `{}` has {} examples", ds.repo, ds.split, ds.len())
        })
    };
    if let Some(msg) = problem {
        let (tx, rx) = sync_channel(1);
        let _ = tx.send(Err(DataError::Invalid(msg)));
        return ImageLoader { rx: Some(rx), handle: None, remaining: 1 };
    }
    let remaining = if cfg.drop_last { indices.len() / b } else { indices.len().div_ceil(b) };
    let (tx, rx) = sync_channel(PREFETCH);
    let handle = std::thread::Builder::new().name("kd-data-loader".into()).spawn(move || {
        let plan = epoch_plan(&indices, &cfg);
        for chunk in plan.chunks(b) {
            if cfg.drop_last && chunk.len() < b {
                break;
            }
            let batch = render_batch(&ds, chunk, &cfg, &device);
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                break; // consumer gone, or the error was the epoch's last word
            }
        }
    });
    match handle {
        Ok(h) => ImageLoader { rx: Some(rx), handle: Some(h), remaining },
        Err(e) => {
            let (tx, rx) = sync_channel(1);
            let _ = tx.send(Err(DataError::Invalid(format!("cannot start the data loader thread: {e}"))));
            ImageLoader { rx: Some(rx), handle: None, remaining: 1 }
        }
    }
}

impl Iterator for ImageLoader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.as_ref()?.recv() {
            Ok(item) => {
                // An error ends the epoch: the producer sends nothing after it.
                self.remaining = if item.is_err() { 0 } else { self.remaining.saturating_sub(1) };
                Some(item)
            }
            Err(_) => {
                // The producer finished, or died: a panic must not pass for a short epoch.
                self.rx = None;
                let panicked = self.handle.take().map(|h| h.join().is_err()).unwrap_or(false);
                let short = std::mem::take(&mut self.remaining) > 0;
                (panicked || short).then(|| {
                    Err(DataError::Invalid(
                        "the data loader thread stopped before the epoch's last batch".to_string(),
                    ))
                })
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for ImageLoader {
    fn drop(&mut self) {
        self.rx.take(); // unblocks a producer waiting on a full channel
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
