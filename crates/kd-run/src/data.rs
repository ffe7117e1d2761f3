//! Wiring kd-data's loaders into the trainer's `BatchSource`.

use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;
use kd_core::recipe::DataSection;
use kd_core::trainer::BatchSource;
use kd_core::Batch;
use kd_data::{Augment, HubCache, ImageDataset, ImageSource, LoaderConfig, Normalize};

/// A split with the subset of examples a run uses.
#[derive(Clone)]
pub struct Split {
    pub dataset: Arc<ImageDataset>,
    pub indices: Arc<Vec<usize>>,
}

pub fn image_source(d: &DataSection) -> ImageSource {
    ImageSource {
        repo: d.hub.clone(),
        revision: d.revision.clone(),
        config: d.config.clone(),
        image_column: d.image_column.clone(),
        label_column: d.label_column.clone(),
        data_files: None,
    }
}

/// Loads a split and takes its class-balanced subset of `limit` examples (all when `None`).
pub fn load_split(cache: &HubCache, d: &DataSection, split: &str, limit: Option<usize>) -> Result<Split> {
    let opts = kd_data::LoadOptions { resize: d.resize.map(|[h, w]| (h, w)), ..Default::default() };
    let ds = kd_data::load_image_split_with(cache, &image_source(d), split, opts)
        .with_context(|| format!("loading {} split `{split}`", d.hub))?;
    if ds.num_classes > d.num_classes {
        anyhow::bail!(
            "{} split `{split}` has labels up to {} but the recipe says data.num_classes = {}",
            d.hub,
            ds.num_classes - 1,
            d.num_classes
        );
    }
    let indices = match limit {
        Some(n) if n < ds.labels.len() => kd_data::balanced_subset(&ds.labels, n, d.subset_seed),
        _ => (0..ds.labels.len()).collect(),
    };
    Ok(Split { dataset: Arc::new(ds), indices: Arc::new(indices) })
}

/// The recipe's augmentation; a view bank is seeded from `data.subset_seed`, so every run seed
/// and variant draws from the same views (and a soft-label cache serves them all).
pub fn augment(d: &DataSection) -> Option<Augment> {
    d.augment.as_ref().map(|a| Augment {
        pad: a.pad,
        hflip: a.hflip,
        bank: a.bank.map(|k| (k, kd_core::seed::derive_seed(d.subset_seed, "view-bank"))),
    })
}

pub fn normalize(d: &DataSection) -> Normalize {
    Normalize { mean: d.normalize.mean, std: d.normalize.std }
}

/// Batches of one split for the trainer.
pub struct Loader {
    pub split: Split,
    pub cfg: LoaderConfig,
    pub device: Device,
}

impl Loader {
    pub fn train(
        split: &Split,
        d: &DataSection,
        batch_size: usize,
        drop_last: bool,
        seed: u64,
        device: &Device,
    ) -> Self {
        let cfg = LoaderConfig {
            batch_size,
            shuffle: true,
            drop_last,
            augment: augment(d),
            normalize: normalize(d),
            strong: None,
            seed,
            epoch: 0,
        };
        Loader { split: split.clone(), cfg, device: device.clone() }
    }

    pub fn eval(split: &Split, d: &DataSection, batch_size: usize, device: &Device) -> Self {
        let cfg = LoaderConfig {
            batch_size,
            shuffle: false,
            drop_last: false,
            augment: None,
            normalize: normalize(d),
            strong: None,
            seed: 0,
            epoch: 0,
        };
        Loader { split: split.clone(), cfg, device: device.clone() }
    }
}

impl BatchSource for Loader {
    fn steps(&self) -> usize {
        let n = self.split.indices.len();
        let b = self.cfg.batch_size;
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    fn examples(&self) -> usize {
        if self.cfg.drop_last {
            self.steps() * self.cfg.batch_size
        } else {
            self.split.indices.len()
        }
    }

    fn epoch(&self, epoch: usize) -> Box<dyn Iterator<Item = kd_core::Result<Batch>> + '_> {
        let cfg = LoaderConfig { epoch, ..self.cfg.clone() };
        let it = kd_data::image_loader(
            self.split.dataset.clone(),
            self.split.indices.clone(),
            cfg,
            self.device.clone(),
        );
        Box::new(it.map(|r| r.map_err(|e| kd_core::Error::Msg(e.to_string()))))
    }
}
