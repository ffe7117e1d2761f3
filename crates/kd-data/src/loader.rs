//! Deterministic mini-batches built on a background thread while the model trains.
//!
//! Epoch `e`'s order and augmentations depend only on `(seed, e)`: a ChaCha stream drives the
//! shuffle and then every example's view, in order, on the producer thread.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use kd_core::Batch;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::augment::{render, Augment, Normalize, ViewCode};
use crate::error::DataError;
use crate::images::ImageDataset;

/// Batches prepared ahead of the consumer.
const PREFETCH: usize = 3;

#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub augment: Option<Augment>,
    pub normalize: Normalize,
    pub seed: u64,
    pub epoch: usize,
}

/// The order and view codes of one epoch (what the producer thread renders).
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

/// Renders one batch of `(example, view)` pairs.
pub fn render_batch(
    ds: &ImageDataset,
    items: &[(usize, u32)],
    cfg: &LoaderConfig,
    device: &Device,
) -> Result<Batch, DataError> {
    let (h, w) = (ds.height, ds.width);
    let n = 3 * h * w;
    let mut data = vec![0f32; items.len() * n];
    for (k, &(i, code)) in items.iter().enumerate() {
        let view = cfg.augment.and_then(|a| ViewCode::decode(code, a.pad).map(|v| (v, a.pad)));
        render(ds.image(i), h, w, view, &cfg.normalize, &mut data[k * n..(k + 1) * n]);
    }
    let labels: Vec<u32> = items.iter().map(|&(i, _)| ds.labels[i]).collect();
    Ok(Batch {
        inputs: Tensor::from_vec(data, (items.len(), 3, h, w), device)?,
        labels: Tensor::from_vec(labels, items.len(), device)?,
        example_ids: items.iter().map(|&(i, _)| i as u32).collect(),
        views: items.iter().map(|&(_, c)| c).collect(),
    })
}

/// An epoch of batches; dropping it early stops the producer thread.
pub struct ImageLoader {
    rx: Option<Receiver<Result<Batch, DataError>>>,
    handle: Option<JoinHandle<()>>,
}

pub fn image_loader(
    ds: Arc<ImageDataset>,
    indices: Arc<Vec<usize>>,
    cfg: LoaderConfig,
    device: Device,
) -> ImageLoader {
    let (tx, rx) = sync_channel(PREFETCH);
    let handle = std::thread::spawn(move || {
        let plan = epoch_plan(&indices, &cfg);
        let b = cfg.batch_size.max(1);
        for chunk in plan.chunks(b) {
            if cfg.drop_last && chunk.len() < b {
                break;
            }
            if tx.send(render_batch(&ds, chunk, &cfg, &device)).is_err() {
                break; // consumer gone
            }
        }
    });
    ImageLoader { rx: Some(rx), handle: Some(handle) }
}

impl Iterator for ImageLoader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
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
