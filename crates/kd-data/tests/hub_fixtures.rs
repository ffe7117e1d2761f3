//! kd-data against generated parquet fixtures in the hub cache layout (CIFAR-100's schema:
//! `img` {bytes, path}, `fine_label`, `coarse_label`), and against the shared real cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};

use kd_data::{
    balanced_subset, epoch_plan, image_loader, load_image_split, load_image_split_with, render_view, Augment,
    DataError, HubCache, ImageSource, LoadOptions, LoaderConfig, Normalize, RandAugment, ViewCode,
};

const REPO: &str = "uoft-cs/cifar100";
const COMMIT: &str = "aadb3af77e9048adbea6b47c21a81e47dd092ae5";

fn encode(img: image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A 32×32 RGB PNG whose pixel (x, y) is `[seed, 8x, 8y]`.
fn png(seed: u8) -> Vec<u8> {
    encode(image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([seed, x as u8 * 8, y as u8 * 8])).into())
}

/// Writes `{img {bytes, path}, fine_label, coarse_label}` rows like the hub's CIFAR-100
/// (kd-fixtures' writer: nullable columns as pyarrow writes them, `path` null on odd rows).
fn write_image_parquet(path: &Path, rows: &[(Vec<u8>, i64, i64)]) {
    kd_fixtures::write_cifar100_parquet(path, rows).unwrap();
}

fn cifar100_rows(n: u8) -> Vec<(Vec<u8>, i64, i64)> {
    (0..n).map(|i| (png(i), (i % 4) as i64 * 10 + 3, (i % 2) as i64)).collect()
}

/// The card of the fixture: kd-fixtures' CIFAR-100 card (configs as the hub writes them, class
/// names for both label columns).
fn cifar100_card() -> String {
    kd_fixtures::cifar100_card()
}

/// A hub cache with `uoft-cs/cifar100` at `COMMIT` (refs/main), card and two splits.
fn fixture() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/datasets--uoft-cs--cifar100");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(snap.join("README.md"), cifar100_card()).unwrap();
    let train = cifar100_rows(40);
    // Two shards for train: a split may span several files, read in name order.
    write_image_parquet(&snap.join("cifar100/train-00000-of-00002.parquet"), &train[..24]);
    write_image_parquet(&snap.join("cifar100/train-00001-of-00002.parquet"), &train[24..]);
    write_image_parquet(&snap.join("cifar100/test-00000-of-00001.parquet"), &train[..8]);
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
    assert_eq!(fine.num_classes, 100, "from the card's class names, not the largest label");
    assert_eq!(coarse.num_classes, 20);
    assert_eq!(fine.class_names.as_ref().unwrap()[23], "fine23");
    assert_eq!(coarse.class_names.as_ref().unwrap()[1], "coarse1");
    assert_eq!(&fine.labels[24..28], &[3, 13, 23, 33], "the second shard follows the first");
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
        e.contains("`label`") && e.contains("fine_label") && e.contains("train-00000-of-00002.parquet"),
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
    assert!(
        e.contains("@ v2") && e.contains("not this revision") && e.contains("huggingface-cli download"),
        "{e}"
    );
    let mut config = source("fine_label");
    config.config = Some("cifar10".into());
    let e = load_image_split(&cache, &config, "train").unwrap_err().to_string();
    assert!(e.contains("no config `cifar10`") && e.contains("cifar100"), "{e}");
}

#[test]
fn missing_file_in_a_cached_snapshot_names_it_offline() {
    let home = fixture();
    let cache = HubCache::new(home.path().to_path_buf(), true);
    let mut s = source("fine_label");
    s.data_files =
        Some([("train".to_string(), vec!["cifar100/train-00002-of-00003.parquet".to_string()])].into());
    let e = load_image_split(&cache, &s, "train").unwrap_err().to_string();
    assert!(e.contains("train-00002-of-00003.parquet") && e.contains(COMMIT) && e.contains(REPO), "{e}");
}

fn loader_cfg(seed: u64, epoch: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 16,
        shuffle: true,
        drop_last: false,
        augment: Some(Augment { pad: 4, hflip: true, bank: None }),
        normalize: Normalize { mean: [0.5; 3], std: [0.25; 3] },
        strong: None,
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

/// `(ids, views, inputs, strong)` of every batch of one epoch.
type Epoch = Vec<(Vec<u32>, Vec<u32>, Vec<f32>, Option<Vec<f32>>)>;

fn epoch_of(ds: &Arc<kd_data::ImageDataset>, idx: &Arc<Vec<usize>>, cfg: LoaderConfig) -> Epoch {
    let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    image_loader(ds.clone(), idx.clone(), cfg, candle_core::Device::Cpu)
        .map(|b| {
            let b = b.unwrap();
            if let Some(s) = &b.strong {
                assert_eq!(s.dims(), b.inputs.dims(), "a strong view is shaped as the inputs");
            }
            (b.example_ids.clone(), b.views.clone(), values(&b.inputs), b.strong.as_ref().map(values))
        })
        .collect()
}

/// Example id → its strong view's floats, over one epoch.
fn strong_by_example(epoch: &Epoch) -> std::collections::BTreeMap<u32, Vec<f32>> {
    let n = 3 * 32 * 32;
    epoch
        .iter()
        .flat_map(|(ids, _, _, strong)| {
            let strong = strong.as_ref().expect("strong views asked for");
            ids.iter().enumerate().map(move |(k, &id)| (id, strong[k * n..(k + 1) * n].to_vec()))
        })
        .collect()
}

#[test]
fn strong_views_depend_on_seed_epoch_and_example_only_and_leave_the_weak_views_alone() {
    let home = fixture();
    let cache = HubCache::new(home.path().to_path_buf(), true);
    let ds = Arc::new(load_image_split(&cache, &source("fine_label"), "train").unwrap());
    let idx = Arc::new(balanced_subset(&ds.labels, 30, 0));
    let strong = |cfg: LoaderConfig| LoaderConfig { strong: Some(RandAugment::MLKD), ..cfg };

    let weak = epoch_of(&ds, &idx, loader_cfg(1, 0));
    let both = epoch_of(&ds, &idx, strong(loader_cfg(1, 0)));
    assert_eq!(weak.len(), both.len());
    for (w, b) in weak.iter().zip(&both) {
        assert_eq!((&w.0, &w.1, &w.2), (&b.0, &b.1, &b.2), "asking for strong views moved a weak one");
        assert!(w.3.is_none(), "no strong view unless asked for");
    }
    assert_eq!(both, epoch_of(&ds, &idx, strong(loader_cfg(1, 0))), "the same seed, the same strong views");

    let by_example = strong_by_example(&both);
    assert_eq!(by_example.len(), 30);
    // Another order and batch size: each example's strong view is unchanged.
    let reordered = LoaderConfig { shuffle: false, batch_size: 7, ..strong(loader_cfg(1, 0)) };
    assert_eq!(strong_by_example(&epoch_of(&ds, &idx, reordered)), by_example);
    // Another epoch or seed draws other strong views, and a strong view is not the weak one.
    for other in [strong(loader_cfg(1, 1)), strong(loader_cfg(2, 0))] {
        let moved = strong_by_example(&epoch_of(&ds, &idx, other));
        let same = moved.iter().filter(|(id, v)| by_example[*id] == **v).count();
        assert!(same <= 3, "{same} of 30 strong views did not change with the epoch or seed");
    }
    let n = 3 * 32 * 32;
    let weak_rows: Vec<&[f32]> = both.iter().flat_map(|b| b.2.chunks(n)).collect();
    let strong_rows: Vec<&[f32]> = both.iter().flat_map(|b| b.3.as_ref().unwrap().chunks(n)).collect();
    let equal = weak_rows.iter().zip(&strong_rows).filter(|(w, s)| w == s).count();
    assert!(equal <= 1, "{equal} of 30 strong views equal their weak view");
}

#[test]
fn explicit_files_grayscale_and_resize() {
    let home = fixture();
    let snap = home.path().join("hub/datasets--uoft-cs--cifar100/snapshots").join(COMMIT);
    // A grayscale 32×32 PNG and a 16×16 RGBA one among RGB rows.
    let gray = encode(image::GrayImage::from_fn(32, 32, |x, _| image::Luma([x as u8])).into());
    let small = encode(image::RgbaImage::from_pixel(16, 16, image::Rgba([9, 99, 199, 7])).into());
    write_image_parquet(
        &snap.join("extra/mixed.parquet"),
        &[(png(1), 0, 0), (gray.clone(), 1, 0), (small, 2, 1)],
    );
    write_image_parquet(&snap.join("extra/gray.parquet"), &[(png(1), 0, 0), (gray, 1, 0)]);
    let cache = HubCache::new(home.path().to_path_buf(), true);
    let mut src = source("fine_label");
    src.data_files = Some([("odd".to_string(), vec!["extra/gray.parquet".to_string()])].into());
    let ds = load_image_split(&cache, &src, "odd").unwrap();
    assert_eq!((ds.len(), ds.height, ds.width), (2, 32, 32));
    assert_eq!(&ds.image(1)[(5 * 32 + 7) * 3..(5 * 32 + 7) * 3 + 3], &[7, 7, 7], "gray becomes RGB");

    src.data_files = Some([("odd".to_string(), vec!["extra/mix*".to_string()])].into());
    let e = load_image_split(&cache, &src, "odd").unwrap_err().to_string();
    assert!(e.contains("mixed.parquet") && e.contains("row 2") && e.contains("16×16"), "{e}");
    let calls = AtomicUsize::new(0);
    let progress = |done: usize, total: usize| {
        assert!(done <= total && total == 3);
        calls.fetch_add(1, Ordering::Relaxed);
    };
    let opts = LoadOptions { resize: Some((32, 32)), progress: Some(&progress) };
    let ds = load_image_split_with(&cache, &src, "odd", opts).unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    assert_eq!(&ds.image(2)[..3], &[9, 99, 199], "RGBA upscaled, alpha dropped");
    assert_eq!(ds.image(0), load_image_split(&cache, &source("fine_label"), "train").unwrap().image(1));

    src.data_files = Some([("odd".to_string(), vec!["extra/nothing-*".to_string()])].into());
    let e = load_image_split(&cache, &src, "odd").unwrap_err().to_string();
    assert!(e.contains("extra/nothing-*") && e.contains(REPO), "{e}");
}

#[test]
fn offline_never_opens_a_connection() {
    let home = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let cache = HubCache::new(home.path().to_path_buf(), true).with_endpoint(endpoint);
    // Everything the cache lacks: a repo, a revision, a file, a split.
    let mut missing = source("fine_label");
    missing.repo = "nobody/nothing".into();
    assert!(matches!(load_image_split(&cache, &missing, "train"), Err(DataError::NotCached { .. })));
    let mut rev = source("fine_label");
    rev.revision = "0123456789012345678901234567890123456789".into();
    assert!(matches!(load_image_split(&cache, &rev, "train"), Err(DataError::NotCached { .. })));
    let mut file = source("fine_label");
    file.data_files = Some([("train".to_string(), vec!["cifar100/none.parquet".to_string()])].into());
    assert!(matches!(load_image_split(&cache, &file, "train"), Err(DataError::NotCached { .. })));
    assert!(matches!(
        load_image_split(&cache, &source("fine_label"), "nope"),
        Err(DataError::NoSplit { .. })
    ));
    listener.set_nonblocking(true).unwrap();
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "a connection was made"
    );
}

/// A stand-in for the hub's HTTP API (repo info and `resolve/` downloads with ranges), serving
/// `files` of `repo` at `commit`; counts requests.
fn mock_hub(
    repo: &'static str,
    commit: &'static str,
    files: Vec<(String, Vec<u8>)>,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            let target = head.first().and_then(|l| l.split(' ').nth(1)).unwrap_or("").to_string();
            let range = head.iter().find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.eq_ignore_ascii_case("range").then(|| v.trim().trim_start_matches("bytes=").to_string())
            });
            let info = format!("/api/datasets/{repo}/revision/main");
            let by_commit = format!("/api/datasets/{repo}/revision/{commit}");
            let (status, headers, body): (&str, String, Vec<u8>) = if target == info || target == by_commit {
                let siblings: Vec<String> =
                    files.iter().map(|(n, _)| format!("{{\"rfilename\":\"{n}\"}}")).collect();
                let json = format!("{{\"sha\":\"{commit}\",\"siblings\":[{}]}}", siblings.join(","));
                ("200 OK", "Content-Type: application/json\r\n".into(), json.into_bytes())
            } else if let Some((_, data)) =
                files.iter().find(|(n, _)| target == format!("/datasets/{repo}/resolve/{commit}/{n}"))
            {
                let (a, b) = range
                    .as_deref()
                    .and_then(|r| r.split_once('-'))
                    .map(|(a, b)| (a.parse().unwrap_or(0), b.parse().unwrap_or(data.len() - 1)))
                    .unwrap_or((0, data.len() - 1));
                let etag = format!("etag-{}-{}", data.len(), data.iter().map(|&x| x as usize).sum::<usize>());
                let headers = format!(
                    "ETag: \"{etag}\"\r\nX-Repo-Commit: {commit}\r\nContent-Range: bytes {a}-{b}/{}\r\n",
                    data.len()
                );
                ("206 Partial Content", headers, data[a..=b].to_vec())
            } else {
                ("404 Not Found", String::new(), b"not found".to_vec())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    (endpoint, requests)
}

#[test]
fn online_downloads_into_the_cache_then_works_offline() {
    const MOCK: &str = "kd-bench/mock-cifar100";
    const MOCK_COMMIT: &str = "1111111111222222222233333333334444444444";
    let parquet_dir = tempfile::tempdir().unwrap();
    let train = parquet_dir.path().join("train.parquet");
    write_image_parquet(&train, &cifar100_rows(12));
    let files = vec![
        ("README.md".to_string(), cifar100_card().into_bytes()),
        ("cifar100/train-00000-of-00001.parquet".to_string(), std::fs::read(&train).unwrap()),
        ("cifar100/test-00000-of-00001.parquet".to_string(), std::fs::read(&train).unwrap()),
    ];
    let (endpoint, requests) = mock_hub(MOCK, MOCK_COMMIT, files);
    let home = tempfile::tempdir().unwrap();
    let mut src = source("fine_label");
    src.repo = MOCK.into();
    let online = HubCache::new(home.path().to_path_buf(), false).with_endpoint(endpoint.clone());
    let ds = load_image_split(&online, &src, "train").unwrap();
    assert_eq!((ds.len(), ds.num_classes, ds.revision.as_str()), (12, 100, MOCK_COMMIT));
    assert!(requests.load(Ordering::SeqCst) >= 3, "info, card and parquet came from the hub");
    let repo_dir = home.path().join("hub/datasets--kd-bench--mock-cifar100");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), MOCK_COMMIT);
    assert!(repo_dir
        .join("snapshots")
        .join(MOCK_COMMIT)
        .join("cifar100/train-00000-of-00001.parquet")
        .exists());

    // Offline from the same cache: same data, no request.
    let before = requests.load(Ordering::SeqCst);
    let offline = HubCache::new(home.path().to_path_buf(), true).with_endpoint(endpoint.clone());
    let again = load_image_split(&offline, &src, "train").unwrap();
    assert_eq!(again, ds);
    // Online with everything cached: cache first, still no request.
    assert_eq!(load_image_split(&online, &src, "train").unwrap(), ds);
    assert_eq!(requests.load(Ordering::SeqCst), before);
    // A split the cache lacks: offline says so; online fetches it for the cached commit.
    assert!(matches!(load_image_split(&offline, &src, "test"), Err(DataError::NoSplit { .. })));
    assert_eq!(load_image_split(&online, &src, "test").unwrap().len(), 12);
    // A repo the hub does not have: the error names it.
    src.repo = "kd-bench/absent".into();
    let e = load_image_split(&online, &src, "train").unwrap_err().to_string();
    assert!(e.contains("kd-bench/absent") && e.contains("main") && e.contains("HF_HUB_OFFLINE"), "{e}");
}

#[test]
fn render_view_matches_the_loader_and_bad_inputs_are_errors() {
    let home = fixture();
    let cache = HubCache::new(home.path().to_path_buf(), true);
    let ds = Arc::new(load_image_split(&cache, &source("fine_label"), "train").unwrap());
    let idx = Arc::new((0..ds.len()).collect::<Vec<_>>());
    let cfg = loader_cfg(3, 2);
    let batch =
        image_loader(ds.clone(), idx.clone(), cfg.clone(), candle_core::Device::Cpu).next().unwrap().unwrap();
    let inputs = batch.inputs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let n = 3 * 32 * 32;
    assert!(batch.views.iter().all(|&v| v != ViewCode::IDENTITY && ViewCode::decode(v, 4).is_some()));
    for (k, (&i, &v)) in batch.example_ids.iter().zip(&batch.views).enumerate() {
        let x = render_view(&ds, i as usize, v, cfg.augment.as_ref(), &cfg.normalize).unwrap();
        assert_eq!(&inputs[k * n..(k + 1) * n], &x[..], "example {i} view {v}");
    }
    let labels = batch.labels.to_vec1::<u32>().unwrap();
    assert_eq!(labels, batch.example_ids.iter().map(|&i| ds.labels[i as usize]).collect::<Vec<_>>());
    // Code 0 is the image as is.
    let plain = render_view(&ds, 5, 0, None, &cfg.normalize).unwrap();
    assert_eq!(plain[2 * 32 + 1], (5.0 / 255.0 - 0.5) / 0.25, "channel 0 at (x=1, y=2)");
    assert!(render_view(&ds, 5, 1, None, &cfg.normalize).is_err(), "augmented code without augmentation");
    assert!(render_view(&ds, 5, 163, cfg.augment.as_ref(), &cfg.normalize).is_err(), "81·2 codes for pad 4");
    assert!(render_view(&ds, 40, 0, None, &cfg.normalize).is_err(), "example out of range");
    // The loader reports bad configuration instead of panicking.
    let bad = Arc::new(vec![0, 40]);
    let errs: Vec<_> = image_loader(ds.clone(), bad, cfg.clone(), candle_core::Device::Cpu).collect();
    assert!(errs.len() == 1 && errs[0].as_ref().unwrap_err().to_string().contains("index 40"));
    let zero = LoaderConfig { batch_size: 0, ..cfg.clone() };
    assert!(image_loader(ds.clone(), idx.clone(), zero, candle_core::Device::Cpu).next().unwrap().is_err());
    // drop_last and the size hint.
    let last = LoaderConfig { drop_last: true, batch_size: 16, ..cfg };
    let it = image_loader(ds, idx, last, candle_core::Device::Cpu);
    assert_eq!(it.size_hint(), (2, Some(2)));
    assert_eq!(it.map(|b| b.unwrap().len()).collect::<Vec<_>>(), vec![16, 16]);
}

#[test]
fn epoch_plans_differ_in_views_across_epochs() {
    let idx: Vec<usize> = (0..64).collect();
    let a = epoch_plan(&idx, &loader_cfg(1, 0));
    let b = epoch_plan(&idx, &loader_cfg(1, 1));
    let views = |p: &[(usize, u32)]| {
        let mut v = p.to_vec();
        v.sort();
        v.into_iter().map(|x| x.1).collect::<Vec<_>>()
    };
    assert_ne!(views(&a), views(&b), "per-example views change with the epoch");
    let flips = a.iter().filter(|&&(_, c)| ViewCode::decode(c, 4).unwrap().flip).count();
    assert!((16..=48).contains(&flips), "about half flipped: {flips}/64");
    let no_shuffle = LoaderConfig { shuffle: false, augment: None, ..loader_cfg(1, 0) };
    assert_eq!(epoch_plan(&idx, &no_shuffle), idx.iter().map(|&i| (i, 0)).collect::<Vec<_>>());
}

/// The shared real-data cache (read-only, offline) with `repo`: `$HF_HOME`, a relative value taken
/// from the workspace root (tests run in the crate's folder), unset the documented
/// `<workspace>/../shared/data/hf-cache`. A missing repo fails the test, naming what to set.
fn shared(repo: &str) -> HubCache {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let home = match std::env::var_os("HF_HOME").map(PathBuf::from) {
        Some(home) if home.is_absolute() => home,
        Some(home) => root.join(home),
        None => root.join("../shared/data/hf-cache"),
    };
    let dir = home.join("hub").join(format!("datasets--{}", repo.replace('/', "--")));
    assert!(
        dir.is_dir(),
        "real-data test, data missing: no {} (HF_HOME={}). Set HF_HOME to the shared hub cache, e.g. \
         HF_HOME=../shared/data/hf-cache from the repository root (a relative HF_HOME is taken from \
         there; unset, it is <repo>/../shared/data/hf-cache)",
        dir.display(),
        std::env::var("HF_HOME").unwrap_or_else(|_| "<unset>".into()),
    );
    HubCache::new(home, true)
}

#[test]
fn real_cifar10_test_split_from_the_shared_cache() {
    let cache = shared("uoft-cs/cifar10");
    let src = ImageSource {
        repo: "uoft-cs/cifar10".into(),
        revision: "main".into(),
        config: None,
        image_column: "img".into(),
        label_column: "label".into(),
        data_files: None,
    };
    let cifar = load_image_split(&cache, &src, "test").unwrap();
    assert_eq!((cifar.len(), cifar.num_classes, cifar.height, cifar.width), (2000, 10, 32, 32));
    assert_eq!(cifar.revision, "0b2714987fa478483af9968de7c934580d0bb9a2", "main resolved to its commit");
    assert_eq!(cifar.class_names.as_ref().unwrap()[0], "airplane");
    assert_eq!(cifar.class_names.as_ref().unwrap()[9], "truck");
    let mut counts = [0; 10];
    cifar.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [200; 10]);
    let sub = balanced_subset(&cifar.labels, 500, 1);
    let mut counts = [0; 10];
    sub.iter().for_each(|&i| counts[cifar.labels[i] as usize] += 1);
    assert_eq!(counts, [50; 10]);
    // Natural images: not all one value, mean brightness in a sane range.
    let mean = cifar.pixels.iter().map(|&p| p as f64).sum::<f64>() / cifar.pixels.len() as f64;
    assert!((80.0..180.0).contains(&mean), "mean pixel {mean}");
}

#[test]
fn real_tiny_imagenet_valid_split_from_the_shared_cache() {
    let cache = shared("zh-plus/tiny-imagenet");
    let src = ImageSource {
        repo: "zh-plus/tiny-imagenet".into(),
        revision: "main".into(),
        config: None,
        image_column: "image".into(),
        label_column: "label".into(),
        data_files: None,
    };
    let tiny = load_image_split(&cache, &src, "valid").unwrap();
    assert_eq!((tiny.len(), tiny.num_classes, tiny.height, tiny.width), (2000, 200, 64, 64));
    assert_eq!(tiny.pixels.len(), 2000 * 64 * 64 * 3, "grayscale JPEGs decoded to RGB");
    assert_eq!(tiny.class_names.as_ref().unwrap()[0], "n01443537");
    let gray =
        (0..tiny.len()).filter(|&i| tiny.image(i).chunks(3).all(|p| p[0] == p[1] && p[1] == p[2])).count();
    assert!(gray > 0 && gray < 200, "a few grayscale images, replicated to 3 channels: {gray}");
    let mut counts = vec![0; 200];
    tiny.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert!(counts.iter().all(|&c| c == 10));
}

#[test]
fn real_glue_sst2_columns_from_the_shared_cache() {
    let cache = shared("nyu-mll/glue");
    let cols = |columns: &[&str]| {
        kd_data::read_split_columns(&cache, "nyu-mll/glue", "main", Some("sst2"), "validation", None, columns)
    };
    let t = cols(&["sentence", "label", "idx"]).unwrap();
    assert_eq!(t.len(), 872);
    assert_eq!(t.resolved.commit, "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c");
    let labels: Vec<i64> = t.column("label").unwrap().iter().map(|c| c.as_i64().unwrap()).collect();
    assert_eq!(labels.iter().filter(|&&l| l == 1).count(), 444);
    assert_eq!(t.column("idx").unwrap()[5].as_i64(), Some(5));
    assert!(t.column("sentence").unwrap()[0].as_str().is_some_and(|s| !s.is_empty()));
    let card = t.resolved.card.as_ref().unwrap();
    assert_eq!(card.class_names(Some("sst2"), "label").unwrap(), ["negative", "positive"]);
    let e = cols(&["text"]).unwrap_err().to_string();
    assert!(
        e.contains("validation-00000-of-00001.parquet") && e.contains("`text`") && e.contains("sentence"),
        "{e}"
    );
    // Several configs and none default: the config must be named.
    let e = kd_data::read_split_columns(&cache, "nyu-mll/glue", "main", None, "validation", None, &["label"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("sst2") && e.contains("cola"), "{e}");
}
