//! Hub requests against local servers on 127.0.0.1: one that accepts and never answers (the
//! request times out, is retried a bounded number of times and the error says what was tried
//! and how to go offline), one that fails transiently (retried), one that cuts the body short
//! (nothing half-written in the cache). Timeouts come from the environment, as in a real run.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::time::{Duration, Instant};

use kd_data::hub::HttpPolicy;
use kd_data::{DataError, HubCache};

const REPO: &str = "kd-bench/net";
const COMMIT: &str = "1111111111222222222233333333334444444444";

/// Short timeouts for every test of this file (all set the same values, so test order is moot).
fn short_timeouts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("KD_HTTP_TIMEOUT_SECS", "0.5");
        std::env::set_var("KD_HTTP_RETRIES", "1");
        std::env::set_var("KD_HTTP_BACKOFF_SECS", "0.1");
        std::env::remove_var("KD_HTTP_CONNECT_TIMEOUT_SECS");
        std::env::remove_var("HF_TOKEN");
    });
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit` (a hang).
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let v =
        rx.recv_timeout(limit).unwrap_or_else(|_| panic!("still waiting after {limit:?}: the request hangs"));
    (v, start.elapsed())
}

/// A server that accepts every connection and never writes a byte; counts connections.
fn silent_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for s in listener.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (endpoint, count)
}

/// A server that answers the n-th connection (0-based) with `answer(n, request target)`.
fn scripted_server(answer: impl Fn(usize, &str) -> Vec<u8> + Send + 'static) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let target = first.split(' ').nth(1).unwrap_or("").to_string();
            let _ = s.write_all(&answer(n, &target));
        }
    });
    (endpoint, count)
}

fn response(status: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
        .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Every file under `dir` (temporary files included), relative.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_silent_server_times_out_the_listing_with_a_useful_error() {
    short_timeouts();
    let (endpoint, connections) = silent_server();
    let home = tempfile::tempdir().unwrap();
    let cache = HubCache::new(home.path().to_path_buf(), false).with_endpoint(endpoint.clone());
    let (result, took) =
        bounded(Duration::from_secs(30), move || cache.resolve_split(REPO, "main", None, "train", None));
    let e = result.unwrap_err();
    assert!(matches!(e, DataError::Hub { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains(&format!("{endpoint}/api/datasets/{REPO}/revision/main")), "names the URL: {e}");
    assert!(e.contains("after 2 attempts"), "says how often it tried: {e}");
    assert!(e.contains("read timeout 0.5 s") && e.contains("KD_HTTP_TIMEOUT_SECS"), "names the timeout: {e}");
    assert!(e.contains("HF_HUB_OFFLINE=1"), "says how to go offline: {e}");
    assert_eq!(connections.load(Ordering::SeqCst), 2, "one retry");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_silent_server_times_out_a_file_download_and_leaves_nothing() {
    short_timeouts();
    let (endpoint, _) = silent_server();
    let home = tempfile::tempdir().unwrap();
    let cache = HubCache::new(home.path().to_path_buf(), false).with_endpoint(endpoint.clone());
    let (result, _) = bounded(Duration::from_secs(30), move || {
        cache.file(REPO, "main", COMMIT, "data/train-00000.parquet")
    });
    let e = result.unwrap_err().to_string();
    assert!(
        e.contains(&format!("{endpoint}/datasets/{REPO}/resolve/{COMMIT}/data/train-00000.parquet")),
        "{e}"
    );
    assert!(e.contains("after 2 attempts") && e.contains("timeout"), "{e}");
    assert!(e.contains("HF_HUB_OFFLINE=1") && e.contains("huggingface-cli download"), "{e}");
    assert_eq!(files_under(home.path()), Vec::<String>::new(), "nothing written");
}

#[test]
fn a_transient_server_error_is_retried() {
    short_timeouts();
    let body = b"PAR1 pretend parquet".to_vec();
    let served = body.clone();
    let (endpoint, requests) = scripted_server(move |n, _| {
        if n == 0 {
            response("503 Service Unavailable", b"busy")
        } else {
            response("200 OK", &served)
        }
    });
    let home = tempfile::tempdir().unwrap();
    let cache = HubCache::new(home.path().to_path_buf(), false).with_endpoint(endpoint);
    let (path, _) = bounded(Duration::from_secs(30), move || cache.file(REPO, "main", COMMIT, "a/b.parquet"));
    let path = path.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    let snap = format!("hub/datasets--kd-bench--net/snapshots/{COMMIT}/a/b.parquet");
    assert_eq!(files_under(home.path()), vec![snap], "only the file, no temporary left");
}

#[test]
fn a_cut_body_is_retried_and_never_left_at_the_cache_path() {
    short_timeouts();
    // Announces 100 bytes, sends 10 and closes, every time.
    let (endpoint, requests) = scripted_server(|_, _| {
        let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n".to_vec();
        r.extend_from_slice(b"0123456789");
        r
    });
    let home = tempfile::tempdir().unwrap();
    let cache = HubCache::new(home.path().to_path_buf(), false).with_endpoint(endpoint);
    let (result, _) = bounded(Duration::from_secs(30), move || cache.file(REPO, "main", COMMIT, "x.parquet"));
    let e = result.unwrap_err().to_string();
    assert!(e.contains("after 2 attempts"), "{e}");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(files_under(home.path()), Vec::<String>::new(), "no partial file, no temporary");
}

#[test]
fn a_missing_file_is_not_retried() {
    short_timeouts();
    let (endpoint, requests) = scripted_server(|_, _| response("404 Not Found", b"nope"));
    let home = tempfile::tempdir().unwrap();
    let cache = HubCache::new(home.path().to_path_buf(), false).with_endpoint(endpoint);
    let (result, _) = bounded(Duration::from_secs(30), move || cache.file(REPO, "main", COMMIT, "x.parquet"));
    let e = result.unwrap_err().to_string();
    assert!(e.contains("HTTP 404") && e.contains("after 1 attempt"), "{e}");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[test]
fn paths_from_the_caller_or_the_server_stay_inside_the_cache() {
    short_timeouts();
    // The server claims a commit that is a path: refused before anything is written.
    let (endpoint, _) = scripted_server(|_, _| {
        response("200 OK", br#"{"sha":"../../../../evil","siblings":[{"rfilename":"train-0.parquet"}]}"#)
    });
    let home = tempfile::tempdir().unwrap();
    let cache = HubCache::new(home.path().to_path_buf(), false).with_endpoint(endpoint);
    let c = cache.clone();
    let (result, _) =
        bounded(Duration::from_secs(30), move || c.resolve_split(REPO, "main", None, "train", None));
    let e = result.unwrap_err().to_string();
    assert!(e.contains("not a sha"), "{e}");
    for (rev, name) in [("main", "../../../x"), ("main", "/tmp/x"), ("main", "a//b"), ("../../x", "a")] {
        let e =
            cache.file(REPO, rev, if rev == "main" { COMMIT } else { rev }, name).unwrap_err().to_string();
        assert!(e.contains("outside the repo's cache folder"), "{e}");
    }
    let e = cache.resolve_split(REPO, "../../../tmp/y", None, "train", None).unwrap_err().to_string();
    assert!(e.contains("not a hub revision"), "{e}");
    assert_eq!(files_under(home.path()), Vec::<String>::new());
}

#[test]
fn the_policy_comes_from_the_environment_and_malformed_values_are_named() {
    let p = HttpPolicy::default();
    assert_eq!((p.connect, p.read, p.attempts), (Duration::from_secs(30), Duration::from_secs(60), 3));
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    };
    let p = HttpPolicy::from_vars(vars(&[("KD_HTTP_TIMEOUT_SECS", "5")])).unwrap();
    assert_eq!((p.read, p.connect), (Duration::from_secs(5), Duration::from_secs(5)), "caps connect");
    let p = HttpPolicy::from_vars(vars(&[("KD_HTTP_CONNECT_TIMEOUT_SECS", "2"), ("KD_HTTP_RETRIES", "0")]))
        .unwrap();
    assert_eq!((p.read, p.connect, p.attempts), (Duration::from_secs(60), Duration::from_secs(2), 1));
    for (k, v) in [
        ("KD_HTTP_TIMEOUT_SECS", "soon"),
        ("KD_HTTP_TIMEOUT_SECS", "0"),
        ("KD_HTTP_TIMEOUT_SECS", "nan"),
        ("KD_HTTP_CONNECT_TIMEOUT_SECS", "-1"),
        ("KD_HTTP_RETRIES", "-1"),
        ("KD_HTTP_RETRIES", "1000"),
    ] {
        let e = HttpPolicy::from_vars(|n: &str| (n == k).then(|| v.to_string())).unwrap_err();
        assert!(e.contains(k) && e.contains(v), "{e}");
    }
    short_timeouts();
    let p = HttpPolicy::from_env().unwrap();
    assert_eq!((p.read, p.connect, p.attempts), (Duration::from_millis(500), Duration::from_millis(500), 2));
}

#[test]
fn a_silent_server_times_out_a_model_file_and_leaves_nothing() {
    short_timeouts();
    let (endpoint, connections) = silent_server();
    let home = tempfile::tempdir().unwrap();
    let cache = HubCache::new(home.path().to_path_buf(), false).with_endpoint(endpoint.clone());
    let (result, took) =
        bounded(Duration::from_secs(30), move || cache.model_file("kd-bench/bert", "main", "tokenizer.json"));
    let e = result.unwrap_err().to_string();
    assert!(e.contains(&format!("{endpoint}/api/models/kd-bench/bert/revision/main")), "names the URL: {e}");
    assert!(e.contains("after 2 attempts") && e.contains("KD_HTTP_TIMEOUT_SECS"), "{e}");
    assert!(e.contains("HF_HUB_OFFLINE=1") || e.contains("huggingface-cli download"), "{e}");
    assert_eq!(connections.load(Ordering::SeqCst), 2, "one retry");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(files_under(home.path()), Vec::<String>::new(), "nothing written");
}

#[test]
fn a_model_file_is_downloaded_into_the_cache_layout_with_its_ref() {
    short_timeouts();
    let (endpoint, requests) = scripted_server(|_, target| {
        if target.starts_with("/api/models/") {
            response("200 OK", format!(r#"{{"sha":"{COMMIT}","siblings":[]}}"#).as_bytes())
        } else if target == format!("/kd-bench/bert/resolve/{COMMIT}/config.json") {
            response("200 OK", b"{\"hidden_size\": 8}")
        } else {
            response("404 Not Found", b"")
        }
    });
    let home = tempfile::tempdir().unwrap();
    let cache = HubCache::new(home.path().to_path_buf(), false).with_endpoint(endpoint);
    let online = cache.clone();
    let ((path, commit), _) = bounded(Duration::from_secs(30), move || {
        online.model_file("kd-bench/bert", "main", "config.json").unwrap()
    });
    assert_eq!(commit, COMMIT);
    assert_eq!(std::fs::read(&path).unwrap(), b"{\"hidden_size\": 8}");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(
        files_under(home.path()),
        vec![
            "hub/models--kd-bench--bert/refs/main".to_string(),
            format!("hub/models--kd-bench--bert/snapshots/{COMMIT}/config.json")
        ]
    );
    // Offline, the next run finds it without a connection.
    let offline = HubCache::new(home.path().to_path_buf(), true);
    assert_eq!(
        offline.model_file("kd-bench/bert", "main", "config.json").unwrap(),
        (path, COMMIT.to_string())
    );
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}
