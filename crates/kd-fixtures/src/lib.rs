//! Generated datasets in the hub cache layout, for tests that must not touch the network nor
//! need the real data. A crate of its own, used only as a dev-dependency, so building tests
//! never changes how kd-data (and the `kd` binary above it) is compiled: switching between
//! `cargo test` and `cargo run` rebuilds nothing.
//!
//! [`write_cifar100_hub`] writes `uoft-cs/cifar100` as the hub serves it: `refs/main` → a commit,
//! `snapshots/<commit>/README.md` (card with config `cifar100` and its `data_files`, class names
//! for both label columns) and parquet shards `cifar100/train-*.parquet` /
//! `cifar100/test-*.parquet` with the real schema (`img` {bytes, path}, `fine_label`,
//! `coarse_label`; nullable columns as pyarrow writes them). The images are 32×32 PNGs a network
//! can learn: the top half has the colour of `fine_label / 10`, the bottom half the colour of
//! `fine_label % 10` (both survive crops and horizontal flips), plus seeded per-pixel noise.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use rand::{Rng, SeedableRng};

use kd_data::DataError;

/// The generated dataset's hub id.
pub const CIFAR100_REPO: &str = "uoft-cs/cifar100";
/// The commit `refs/main` points to in the generated cache.
pub const CIFAR100_COMMIT: &str = "aadb3af77e9048adbea6b47c21a81e47dd092ae5";
/// Fine classes of CIFAR-100.
pub const CIFAR100_CLASSES: usize = 100;

/// What [`write_cifar100_hub`] wrote.
#[derive(Debug, Clone)]
pub struct HubFixture {
    pub repo: String,
    pub commit: String,
    /// `$HF_HOME/hub/datasets--uoft-cs--cifar100/snapshots/<commit>`.
    pub snapshot: PathBuf,
    pub train_examples: usize,
    pub test_examples: usize,
}

/// Ten well separated colours; a class is the pair (top colour, bottom colour).
const PALETTE: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [128, 128, 128],
    [20, 20, 20],
];

/// The generated image of example `index` of class `class` in split `split` (deterministic).
pub fn cifar100_image(class: usize, index: usize, split: &str) -> image::RgbImage {
    let top = PALETTE[(class / 10) % 10];
    let bottom = PALETTE[class % 10];
    let seed = (class as u64) << 32 ^ (index as u64) << 1 ^ u64::from(split == "test");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    image::RgbImage::from_fn(32, 32, |_, y| {
        let base = if y < 16 { top } else { bottom };
        image::Rgb(base.map(|c| (c as i32 + rng.random_range(-24..=24)).clamp(0, 255) as u8))
    })
}

fn png(img: image::RgbImage) -> Result<Vec<u8>, DataError> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::from(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| DataError::Invalid(format!("encoding a fixture PNG: {e}")))?;
    Ok(out.into_inner())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

/// Writes rows `(png, fine_label, coarse_label)` with CIFAR-100's hub schema; `path` is null on
/// odd rows, as in the hub's CIFAR files.
pub fn write_cifar100_parquet(path: &Path, rows: &[(Vec<u8>, i64, i64)]) -> Result<(), DataError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let pq = |source| DataError::Parquet { file: path.to_path_buf(), source };
    let schema = Arc::new(
        parse_message_type(
            "message schema { OPTIONAL group img { OPTIONAL BYTE_ARRAY bytes; OPTIONAL BYTE_ARRAY path (UTF8); } \
             OPTIONAL INT64 fine_label; OPTIONAL INT64 coarse_label; }",
        )
        .map_err(pq)?,
    );
    let file = std::fs::File::create(path).map_err(io(path))?;
    let mut w =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build())).map_err(pq)?;
    let mut rg = w.next_row_group().map_err(pq)?;
    let bytes: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(r.0.clone())).collect();
    let paths: Vec<ByteArray> =
        (0..rows.len()).step_by(2).map(|i| ByteArray::from(format!("{i}.png").as_str())).collect();
    let path_defs: Vec<i16> = (0..rows.len()).map(|i| if i % 2 == 0 { 2 } else { 1 }).collect();
    let fine: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let coarse: Vec<i64> = rows.iter().map(|r| r.2).collect();
    let (defs2, defs1) = (vec![2i16; rows.len()], vec![1i16; rows.len()]);
    for col in 0..4 {
        let mut c = rg.next_column().map_err(pq)?.ok_or_else(|| {
            DataError::Invalid(format!("{}: schema has fewer than 4 columns", path.display()))
        })?;
        match col {
            0 => c.typed::<ByteArrayType>().write_batch(&bytes, Some(&defs2), None),
            1 => c.typed::<ByteArrayType>().write_batch(&paths, Some(&path_defs), None),
            2 => c.typed::<Int64Type>().write_batch(&fine, Some(&defs1), None),
            _ => c.typed::<Int64Type>().write_batch(&coarse, Some(&defs1), None),
        }
        .map_err(pq)?;
        c.close().map_err(pq)?;
    }
    rg.close().map_err(pq)?;
    w.close().map_err(pq)?;
    Ok(())
}

/// The card of the generated CIFAR-100: configs as the hub writes them, class names for both
/// label columns.
pub fn cifar100_card() -> String {
    let names = |prefix: &str, n: usize| {
        (0..n).map(|i| format!("          '{i}': {prefix}{i}\n")).collect::<String>()
    };
    format!(
        "---\ndataset_info:\n  config_name: cifar100\n  features:\n  - name: img\n    dtype: image\n  \
         - name: fine_label\n    dtype:\n      class_label:\n        names:\n{}  - name: coarse_label\n    \
         dtype:\n      class_label:\n        names:\n{}configs:\n- config_name: cifar100\n  data_files:\n  \
         - split: train\n    path: cifar100/train-*\n  - split: test\n    path: cifar100/test-*\n  \
         default: true\n---\n# CIFAR-100 fixture (generated by kd-fixtures)\n",
        names("fine", CIFAR100_CLASSES),
        names("coarse", 20)
    )
}

fn split_rows(per_class: usize, split: &str) -> Result<Vec<(Vec<u8>, i64, i64)>, DataError> {
    // Class-interleaved: example i of every class, then example i + 1, ...
    let mut rows = Vec::with_capacity(per_class * CIFAR100_CLASSES);
    for i in 0..per_class {
        for c in 0..CIFAR100_CLASSES {
            rows.push((png(cifar100_image(c, i, split))?, c as i64, (c / 5) as i64));
        }
    }
    Ok(rows)
}

/// Writes a generated `uoft-cs/cifar100` (`train_per_class` × 100 train and `test_per_class` ×
/// 100 test images) into the hub cache under `hf_home` (`$HF_HOME/hub/datasets--uoft-cs--cifar100`),
/// `refs/main` pointing at [`CIFAR100_COMMIT`]. The train split spans two shards.
pub fn write_cifar100_hub(
    hf_home: &Path,
    train_per_class: usize,
    test_per_class: usize,
) -> Result<HubFixture, DataError> {
    let repo = hf_home.join("hub/datasets--uoft-cs--cifar100");
    let refs = repo.join("refs");
    std::fs::create_dir_all(&refs).map_err(io(&refs))?;
    let main = refs.join("main");
    std::fs::write(&main, CIFAR100_COMMIT).map_err(io(&main))?;
    let snapshot = repo.join("snapshots").join(CIFAR100_COMMIT);
    std::fs::create_dir_all(&snapshot).map_err(io(&snapshot))?;
    let card = snapshot.join("README.md");
    std::fs::write(&card, cifar100_card()).map_err(io(&card))?;

    let train = split_rows(train_per_class, "train")?;
    let half = train.len().div_ceil(2);
    write_cifar100_parquet(&snapshot.join("cifar100/train-00000-of-00002.parquet"), &train[..half])?;
    write_cifar100_parquet(&snapshot.join("cifar100/train-00001-of-00002.parquet"), &train[half..])?;
    let test = split_rows(test_per_class, "test")?;
    write_cifar100_parquet(&snapshot.join("cifar100/test-00000-of-00001.parquet"), &test)?;
    Ok(HubFixture {
        repo: CIFAR100_REPO.to_string(),
        commit: CIFAR100_COMMIT.to_string(),
        snapshot,
        train_examples: train.len(),
        test_examples: test.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kd_data::{load_image_split, HubCache, ImageSource};

    #[test]
    fn generated_cifar100_loads_with_its_real_schema() {
        let home = tempfile::tempdir().unwrap();
        let fx = write_cifar100_hub(home.path(), 2, 1).unwrap();
        assert_eq!((fx.train_examples, fx.test_examples), (200, 100));
        let cache = HubCache::new(home.path().to_path_buf(), true);
        let src = ImageSource {
            repo: CIFAR100_REPO.into(),
            revision: "main".into(),
            config: Some("cifar100".into()),
            image_column: "img".into(),
            label_column: "fine_label".into(),
            data_files: None,
        };
        let train = load_image_split(&cache, &src, "train").unwrap();
        assert_eq!((train.len(), train.num_classes, train.height), (200, 100, 32));
        assert_eq!(train.revision, CIFAR100_COMMIT);
        assert_eq!(&train.labels[..3], &[0, 1, 2]);
        assert_eq!(train.labels[137], 37);
        // Class 37: top colour PALETTE[3], bottom PALETTE[7], within the noise (±24).
        let img = train.image(137);
        let px = |x: usize, y: usize| &img[(y * 32 + x) * 3..(y * 32 + x) * 3 + 3];
        for (c, want) in px(5, 2).iter().zip(PALETTE[3]) {
            assert!((*c as i32 - want as i32).abs() <= 24, "{:?}", px(5, 2));
        }
        for (c, want) in px(5, 30).iter().zip(PALETTE[7]) {
            assert!((*c as i32 - want as i32).abs() <= 24, "{:?}", px(5, 30));
        }
        let coarse = load_image_split(
            &cache,
            &ImageSource { label_column: "coarse_label".into(), ..src.clone() },
            "test",
        )
        .unwrap();
        assert_eq!((coarse.len(), coarse.num_classes, coarse.labels[37]), (100, 20, 7));
    }
}
