//! kd-data: datasets from the Hugging Face hub, as kd-bench's methods need them.
//!
//! - [`hub`]: cache-first resolution of `owner/name` @ revision and a split to parquet files
//!   (`HF_HUB_OFFLINE=1`: never the network; a missing file names repo, revision and file).
//! - [`card`]: the dataset card's YAML header (`configs`, `data_files`, class names).
//! - [`table`]: parquet columns by name, with the repo's real schema.
//! - [`images`]: decoded image splits ([`ImageDataset`]), decoded in parallel.
//! - [`subset`]: class-balanced seeded subsets.
//! - [`augment`]: normalisation, crop/flip augmentation and the view codes that identify them.
//! - [`loader`]: deterministic batches built on a background thread.
//!
//! ```no_run
//! use std::sync::Arc;
//! use kd_data::*;
//! let cache = HubCache::from_env();
//! let src = ImageSource {
//!     repo: "uoft-cs/cifar10".into(),
//!     revision: "main".into(),
//!     config: None,
//!     image_column: "img".into(),
//!     label_column: "label".into(),
//!     data_files: None,
//! };
//! let train = Arc::new(load_image_split(&cache, &src, "train")?);
//! let subset = Arc::new(balanced_subset(&train.labels, 1000, 0));
//! let cfg = LoaderConfig {
//!     batch_size: 128,
//!     shuffle: true,
//!     drop_last: false,
//!     augment: Some(Augment::CIFAR),
//!     normalize: Normalize::IMAGENET,
//!     strong: None,
//!     seed: 0,
//!     epoch: 0,
//! };
//! for batch in image_loader(train.clone(), subset.clone(), cfg, candle_core::Device::Cpu) {
//!     let batch = batch?;
//!     assert_eq!(batch.inputs.dims()[1], 3);
//! }
//! # Ok::<(), DataError>(())
//! ```

pub mod audio;
pub mod augment;
pub mod card;
pub mod error;
pub mod glue;
pub mod hub;
pub mod images;
pub mod loader;
pub mod paired;
pub mod randaugment;
pub mod subset;
pub mod table;

pub use audio::{load_audio_split, AudioDataset, AudioError, AudioSource, LogMel, LogMelConfig};
pub use augment::{render_view, Augment, Normalize, ViewCode};
pub use card::DatasetCard;
pub use error::DataError;
pub use hub::{HubCache, ResolvedSplit};
pub use images::{load_image_split, load_image_split_with, ImageDataset, ImageSource, LoadOptions};
pub use loader::{epoch_plan, image_loader, render_batch, ImageLoader, LoaderConfig};
pub use paired::{pair_by_label, Pair, PairedSplits, PairingSpec, SplitLabels};
pub use randaugment::RandAugment;
pub use subset::balanced_subset;
pub use table::{read_columns, read_split_columns, Cell, SplitColumns};
