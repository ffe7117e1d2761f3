//! Teacher checkpoint downloads against local servers on 127.0.0.1: a server that accepts and
//! never answers times out (bounded, with an error that says what was tried and how to go
//! offline), a wrong-SHA body is refused and nothing is left in the cache, a transient error is
//! retried, a good body lands at its cache path and nowhere else.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::time::{Duration, Instant};

use kd_core::hash::sha256_hex;
use kd_core::recipe::CheckpointSource;
use kd_run::fetch::resolve_checkpoint;

fn short_timeouts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("KD_HTTP_TIMEOUT_SECS", "0.5");
        std::env::set_var("KD_HTTP_RETRIES", "1");
        std::env::set_var("KD_HTTP_BACKOFF_SECS", "0.1");
        std::env::remove_var("KD_HTTP_CONNECT_TIMEOUT_SECS");
    });
}

fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let v = rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still waiting after {limit:?}: the download hangs"));
    (v, start.elapsed())
}

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

/// Answers the n-th connection (0-based) with `answer(n)`.
fn scripted_server(answer: impl Fn(usize) -> Vec<u8> + Send + 'static) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(s.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let _ = s.write_all(&answer(n));
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

const WEIGHTS: &[u8] = b"pretend teacher weights";

fn source(url: String) -> CheckpointSource {
    CheckpointSource { path: None, url: Some(url), sha256: sha256_hex(WEIGHTS) }
}

fn fetch(src: CheckpointSource, dir: &Path) -> (anyhow::Result<PathBuf>, Duration) {
    let (root, cache) = (dir.join("proj"), dir.join("cache"));
    bounded(Duration::from_secs(30), move || resolve_checkpoint(&src, &root, &cache, false))
}

#[test]
fn a_silent_server_times_out_with_what_was_tried_and_how_to_go_offline() {
    short_timeouts();
    let (endpoint, connections) = silent_server();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{endpoint}/w/resnet56.th");
    let (result, took) = fetch(source(url.clone()), dir.path());
    let e = format!("{:#}", result.unwrap_err());
    assert!(e.contains(&url), "names the URL: {e}");
    assert!(e.contains("after 2 attempts"), "says how often: {e}");
    assert!(e.contains("read timeout 0.5 s") && e.contains("KD_HTTP_TIMEOUT_SECS"), "names the timeout: {e}");
    assert!(e.contains("HF_HUB_OFFLINE=1"), "says how to go offline: {e}");
    let dest = dir.path().join("cache/weights").join(sha256_hex(WEIGHTS)).join("resnet56.th");
    assert!(e.contains(&dest.display().to_string()), "says where to put the file: {e}");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(files_under(dir.path()), Vec::<String>::new(), "nothing written");
}

#[test]
fn a_wrong_sha_body_is_refused_and_nothing_is_left() {
    short_timeouts();
    let (endpoint, requests) = scripted_server(|_| response("200 OK", b"some other file"));
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = fetch(source(format!("{endpoint}/w/resnet56.th")), dir.path());
    let e = format!("{:#}", result.unwrap_err());
    assert!(e.contains("SHA-256 is") && e.contains(&sha256_hex(WEIGHTS)), "{e}");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "a wrong hash is not retried");
    assert_eq!(files_under(dir.path()), Vec::<String>::new(), "no file at the destination, no temporary");
}

#[test]
fn a_transient_error_is_retried_and_the_file_lands_at_its_cache_path() {
    short_timeouts();
    let (endpoint, requests) = scripted_server(|n| {
        if n == 0 {
            response("503 Service Unavailable", b"busy")
        } else {
            response("200 OK", WEIGHTS)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = fetch(source(format!("{endpoint}/w/resnet56.th?download=1")), dir.path());
    let path = result.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), WEIGHTS);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    let rel = format!("cache/weights/{}/resnet56.th", sha256_hex(WEIGHTS));
    assert_eq!(path, dir.path().join(&rel));
    assert_eq!(files_under(dir.path()), vec![rel], "only the checkpoint, no temporary");
    // Cached now: a second resolution makes no request.
    let src = source(format!("{endpoint}/w/resnet56.th?download=1"));
    let (root, cache) = (dir.path().join("proj"), dir.path().join("cache"));
    assert_eq!(resolve_checkpoint(&src, &root, &cache, false).unwrap(), path);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[test]
fn a_cut_body_is_retried_and_never_left_behind() {
    short_timeouts();
    let (endpoint, requests) = scripted_server(|_| {
        let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n".to_vec();
        r.extend_from_slice(&WEIGHTS[..5]);
        r
    });
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = fetch(source(format!("{endpoint}/w/resnet56.th")), dir.path());
    let e = format!("{:#}", result.unwrap_err());
    assert!(e.contains("after 2 attempts"), "{e}");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(files_under(dir.path()), Vec::<String>::new());
}
