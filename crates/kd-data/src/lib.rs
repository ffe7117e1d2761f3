//! kd-data: datasets from the Hugging Face hub, as kd-bench's methods need them.
//!
//! - [`hub`]: cache-first resolution of `owner/name` @ revision and a split to parquet files
//!   (`HF_HUB_OFFLINE=1`: never the network; a missing file names repo, revision and file).
//! - [`table`]: parquet columns by name, with the repo's real schema.
//! - [`images`]: decoded image splits (`ImageDataset`), decoded in parallel.
//! - [`subset`]: class-balanced seeded subsets.
//! - [`augment`]: normalisation, crop/flip augmentation and the view codes that identify them.
//! - [`loader`]: deterministic batches built on a background thread.

pub mod augment;
pub mod card;
pub mod error;
pub mod hub;
pub mod images;
pub mod loader;
pub mod subset;
pub mod table;

pub use augment::{Augment, Normalize, ViewCode};
pub use error::DataError;
pub use hub::{HubCache, ResolvedSplit};
pub use images::{load_image_split, ImageDataset, ImageSource};
pub use loader::{image_loader, ImageLoader, LoaderConfig};
pub use subset::balanced_subset;
