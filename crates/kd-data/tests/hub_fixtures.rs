//! kd-data against generated parquet fixtures in the hub cache layout (CIFAR-100's schema:
//! `img` {bytes, path}, `fine_label`, `coarse_label`), and against the shared real cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kd_data::{
    balanced_subset, image_loader, load_image_split, Augment, DataError, HubCache, ImageSource, LoaderConfig,
    Normalize,
};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

const REPO: &str = "uoft-cs/cifar100";
const COMMIT: &str = "aadb3af77e9048adbea6b47c21a81e47dd092ae5";

fn png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([seed, x as u8 * 8, y as u8 * 8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Writes `{img {bytes, path}, fine_label, coarse_label}` rows like the hub's CIFAR-100.
fn write_cifar100_parquet(path: &Path, rows: &[(u8, i64, i64)]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let schema = Arc::new(
        parse_message_type(
            "message schema { REQUIRED group img { REQUIRED BYTE_ARRAY bytes; REQUIRED BYTE_ARRAY path (UTF8); } \
             REQUIRED INT64 fine_label; REQUIRED INT64 coarse_label; }",
        )
        .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut w =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build())).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let bytes: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(png(r.0))).collect();
    let paths: Vec<ByteArray> =
        rows.iter().map(|r| ByteArray::from(format!("{}.png", r.0).as_str())).collect();
    let fine: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let coarse: Vec<i64> = rows.iter().map(|r| r.2).collect();
    for col in 0..4 {
        let mut c = rg.next_column().unwrap().unwrap();
        match col {
            0 => c.typed::<ByteArrayType>().write_batch(&bytes, None, None).unwrap(),
            1 => c.typed::<ByteArrayType>().write_batch(&paths, None, None).unwrap(),
            2 => c.typed::<Int64Type>().write_batch(&fine, None, None).unwrap(),
            _ => c.typed::<Int64Type>().write_batch(&coarse, None, None).unwrap(),
        };
        c.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
}

/// A hub cache with `uoft-cs/cifar100` at `COMMIT` (refs/main), card and two splits.
fn fixture() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/datasets--uoft-cs--cifar100");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    let snap = repo.join("snapshots").join(COMMIT);
    let card = "---\nconfigs:\n- config_name: cifar100\n  data_files:\n  - split: train\n    path: cifar100/train-*\n  - split: test\n    path: cifar100/test-*\n  default: true\n---\n# CIFAR-100 fixture\n";
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(snap.join("README.md"), card).unwrap();
    let train: Vec<(u8, i64, i64)> =
        (0..40u8).map(|i| (i, (i % 4) as i64 * 10 + 3, (i % 2) as i64)).collect();
    write_cifar100_parquet(&snap.join("cifar100/train-00000-of-00001.parquet"), &train);
    write_cifar100_parquet(&snap.join("cifar100/test-00000-of-00001.parquet"), &train[..8]);
    home
}

fn source(label: &str) -> ImageSource {
    ImageSource {
        repo: REPO.into(),
        revision: "main".into(),
        config: Some("cifar100".into()),
        image_column: "img".into(),
        label_column: label.into(),
        data_files: None,
    }
}

#[test]
fn fine_and_coarse_labels_by_column_name() {
    let home = fixture();
    let cache = HubCache::new(home.path().to_path_buf(), true);
    let fine = load_image_split(&cache, &source("fine_label"), "train").unwrap();
    let coarse = load_image_split(&cache, &source("coarse_label"), "train").unwrap();
    assert_eq!(fine.len(), 40);
    assert_eq!((fine.height, fine.width), (32, 32));
    assert_eq!(&fine.labels[..4], &[3, 13, 23, 33]);
    assert_eq!(&coarse.labels[..4], &[0, 1, 0, 1]);
    assert_eq!(fine.num_classes, 34);
    assert_eq!(fine.revision, COMMIT, "the resolved commit is reported");
    // Pixel (x=1, y=2) of image 5: [5, 8, 16].
    assert_eq!(&fine.image(5)[(2 * 32 + 1) * 3..(2 * 32 + 1) * 3 + 3], &[5, 8, 16]);
    let test = load_image_split(&cache, &source("fine_label"), "test").unwrap();
    assert_eq!(test.len(), 8);
    // A commit sha works as the revision too.
    let mut by_commit = source("fine_label");
    by_commit.revision = COMMIT.into();
    assert_eq!(load_image_split(&cache, &by_commit, "test").unwrap().len(), 8);
}

#[test]
fn errors_name_repo_revision_split_and_column() {
    let home = fixture();
    let cache = HubCache::new(home.path().to_path_buf(), true);
    let e = load_image_split(&cache, &source("label"), "train").unwrap_err().to_string();
    assert!(
        e.contains("`label`") && e.contains("fine_label") && e.contains("train-00000-of-00001.parquet"),
        "{e}"
    );
    let e = load_image_split(&cache, &source("fine_label"), "validation").unwrap_err().to_string();
    assert!(e.contains("validation") && (e.contains("train, test") || e.contains("test, train")), "{e}");
    let mut missing = source("fine_label");
    missing.repo = "uoft-cs/cifar1000".into();
    let e = load_image_split(&cache, &missing, "train").unwrap_err();
    assert!(matches!(e, DataError::NotCached { .. }), "{e}");
    let e = e.to_string();
    assert!(e.contains("uoft-cs/cifar1000") && e.contains("main") && e.contains("HF_HUB_OFFLINE"), "{e}");
    let mut rev = source("fine_label");
    rev.revision = "v2".into();
    let e = load_image_split(&cache, &rev, "train").unwrap_err().to_string();
    assert!(e.contains("@ v2") && e.contains("no such revision"), "{e}");
}

#[test]
fn missing_file_in_a_cached_snapshot_names_it_offline() {
    let home = fixture();
    let cache = HubCache::new(home.path().to_path_buf(), true);
    let mut s = source("fine_label");
    s.data_files =
        Some([("train".to_string(), vec!["cifar100/train-00001-of-00002.parquet".to_string()])].into());
    let e = load_image_split(&cache, &s, "train").unwrap_err().to_string();
    assert!(e.contains("train-00001-of-00002.parquet") && e.contains(COMMIT), "{e}");
}

fn loader_cfg(seed: u64, epoch: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 16,
        shuffle: true,
        drop_last: false,
        augment: Some(Augment { pad: 4, hflip: true, bank: None }),
        normalize: Normalize { mean: [0.5; 3], std: [0.25; 3] },
        seed,
        epoch,
    }
}

#[test]
fn loader_is_deterministic_in_seed_and_epoch() {
    let home = fixture();
    let cache = HubCache::new(home.path().to_path_buf(), true);
    let ds = Arc::new(load_image_split(&cache, &source("fine_label"), "train").unwrap());
    let idx = Arc::new(balanced_subset(&ds.labels, 30, 0));
    let collect = |seed, epoch| {
        image_loader(ds.clone(), idx.clone(), loader_cfg(seed, epoch), candle_core::Device::Cpu)
            .map(|b| {
                let b = b.unwrap();
                (
                    b.example_ids.clone(),
                    b.views.clone(),
                    b.inputs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let a = collect(1, 0);
    assert_eq!(a.len(), 2, "30 examples in batches of 16");
    assert_eq!(a, collect(1, 0));
    assert_ne!(a[0].0, collect(1, 1)[0].0, "another epoch, another order");
    assert_ne!(a[0].0, collect(2, 0)[0].0, "another seed, another order");
    let mut seen: Vec<u32> = a.iter().flat_map(|b| b.0.clone()).collect();
    seen.sort();
    assert_eq!(seen, idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), "every example once");
    // Early drop stops the producer (this must not hang).
    let mut it = image_loader(ds.clone(), idx.clone(), loader_cfg(1, 0), candle_core::Device::Cpu);
    it.next();
    drop(it);
}

fn shared() -> Option<HubCache> {
    let home = std::env::var_os("HF_HOME").map(PathBuf::from)?;
    if !home.join("hub/datasets--uoft-cs--cifar10").is_dir() {
        eprintln!("skipped: {} has no shared datasets", home.display());
        return None;
    }
    Some(HubCache::new(home, true))
}

#[test]
fn real_cifar10_and_tiny_imagenet_from_the_shared_cache() {
    let Some(cache) = shared() else { return };
    let cifar = load_image_split(
        &cache,
        &ImageSource {
            repo: "uoft-cs/cifar10".into(),
            revision: "0b2714987fa478483af9968de7c934580d0bb9a2".into(),
            config: Some("plain_text".into()),
            image_column: "img".into(),
            label_column: "label".into(),
            data_files: None,
        },
        "test",
    )
    .unwrap();
    assert_eq!((cifar.len(), cifar.num_classes, cifar.height, cifar.width), (2000, 10, 32, 32));
    let mut counts = [0; 10];
    cifar.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [200; 10]);
    let tiny = load_image_split(
        &cache,
        &ImageSource {
            repo: "zh-plus/tiny-imagenet".into(),
            revision: "main".into(),
            config: None,
            image_column: "image".into(),
            label_column: "label".into(),
            data_files: None,
        },
        "valid",
    )
    .unwrap();
    assert_eq!((tiny.len(), tiny.num_classes, tiny.height, tiny.width), (2000, 200, 64, 64));
    assert_eq!(tiny.pixels.len(), 2000 * 64 * 64 * 3, "grayscale JPEGs decoded to RGB");
}
