//! How long decoding a split takes (parallel PNG/JPEG decode with rayon).
//!
//! `HF_HOME=../shared/data/hf-cache HF_HUB_OFFLINE=1 cargo run --release -p kd-data --example decode_timing -- uoft-cs/cifar10 train img label`

use std::time::Instant;

use kd_data::{
    image_loader, load_image_split, Augment, HubCache, ImageSource, LoaderConfig, Normalize, RandAugment,
};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), kd_data::DataError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let src = ImageSource {
        repo: arg(0, "uoft-cs/cifar10"),
        revision: "main".into(),
        config: None,
        image_column: arg(2, "img"),
        label_column: arg(3, "label"),
        data_files: None,
    };
    let split = arg(1, "train");
    let cache = HubCache::from_env();
    let mut last = None;
    for round in 0..3 {
        let t0 = Instant::now();
        let ds = load_image_split(&cache, &src, &split)?;
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "round {round}: {} {split}: {} images {}×{} in {secs:.3}s ({:.0} images/s, {} rayon threads)",
            src.repo,
            ds.len(),
            ds.height,
            ds.width,
            ds.len() as f64 / secs,
            rayon::current_num_threads()
        );
        last = Some(ds);
    }
    // One augmented epoch through the background loader (batch 128, CIFAR crop + flip).
    let Some(ds) = last else { return Ok(()) };
    let ds = std::sync::Arc::new(ds);
    let indices = std::sync::Arc::new((0..ds.len()).collect::<Vec<_>>());
    let cfg = LoaderConfig {
        batch_size: 128,
        shuffle: true,
        drop_last: false,
        augment: Some(Augment::CIFAR),
        normalize: Normalize::IMAGENET,
        strong: None,
        seed: 0,
        epoch: 0,
    };
    // The same epoch with MLKD's strong view beside each weak one (its RandAugment cost).
    for (what, strong) in [("augmented", None), ("augmented + strong (MLKD)", Some(RandAugment::MLKD))] {
        let cfg = LoaderConfig { strong, ..cfg.clone() };
        let t0 = Instant::now();
        let mut n = 0;
        for batch in image_loader(ds.clone(), indices.clone(), cfg, candle_core::Device::Cpu) {
            n += batch?.len();
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "loader: one {what} epoch of {n} examples in {secs:.3}s ({:.0} examples/s)",
            n as f64 / secs
        );
    }
    Ok(())
}
