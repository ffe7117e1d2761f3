//! Hub resolution, cache first.
//!
//! The cache layout is hf-hub's: `$HF_HOME/hub/datasets--owner--name/` with `refs/<revision>`
//! holding a commit sha and the repo's files under `snapshots/<commit>/` (plain files or
//! symlinks into `blobs/`, both work). Resolution:
//!
//! 1. the revision's commit from `refs/<revision>` (or the revision itself when it is a cached
//!    commit sha), and the split's files listed from that snapshot;
//! 2. with `HF_HUB_OFFLINE=1` ([`HubCache::offline`]) that is all: nothing missing is fetched
//!    and no connection is ever opened;
//! 3. otherwise, what the cache lacks (the revision, the card, a split's files) comes through
//!    hf-hub's sync API into the same cache, and `refs/<revision>` is written so the next
//!    offline run finds it.
//!
//! Every request (listing, file) goes through [`HttpPolicy`]: connect and read timeouts
//! (`KD_HTTP_CONNECT_TIMEOUT_SECS`, `KD_HTTP_TIMEOUT_SECS`), a bounded number of retries with
//! back-off (`KD_HTTP_RETRIES`, `KD_HTTP_BACKOFF_SECS`), and files written to a temporary file
//! beside their cache path that is renamed into place only when complete. hf-hub 0.4's sync
//! `ApiBuilder` sets no timeout on its ureq agents and takes no agent, so kd-bench builds the
//! same hub requests (`/api/datasets/<repo>/revision/<rev>`, `/<repo>/resolve/<commit>/<file>`)
//! itself and uses hf-hub only for the cache layout.
//!
//! A split maps to files through the dataset card's `configs[].data_files` patterns (globbed
//! against the snapshot's files offline, the repo's sibling list online), as the `datasets`
//! library does; without a card, through `{config}/{split}-*`, `data/{split}-*`, `{split}-*`,
//! `{split}/*`; or through an explicit list from the recipe.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::{Cache, Repo, RepoType};

use crate::card::{glob_match, DatasetCard};
use crate::error::DataError;

/// Where datasets come from: the hub cache, and whether the network may be used.
#[derive(Debug, Clone)]
pub struct HubCache {
    /// `$HF_HOME` (the cache itself is `$HF_HOME/hub`).
    pub hf_home: PathBuf,
    /// No network at all (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Hub endpoint (`HF_ENDPOINT`); `None` is `https://huggingface.co`.
    endpoint: Option<String>,
    /// Access token (`HF_TOKEN`); `None` reads the cache's token file (`$HF_HOME/token`).
    token: Option<String>,
    /// Timeouts and retries; `None` reads them from the environment at each request.
    http: Option<HttpPolicy>,
}

/// A split resolved to files of one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSplit {
    /// The commit sha the files belong to (goes into results rows as `revision`).
    pub commit: String,
    /// The card's config the split was taken from (`None`: no card configs, fallback patterns).
    pub config: Option<String>,
    /// Repo-relative names, sorted.
    pub names: Vec<String>,
    /// Local paths of `names`, in the same order.
    pub paths: Vec<PathBuf>,
    /// The dataset card, when the repo has one.
    pub card: Option<DatasetCard>,
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?'])
}

fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Ok("1") | Ok("true") | Ok("yes") | Ok("on")
    )
}

impl HubCache {
    /// `$HF_HOME` (default `~/.cache/huggingface`), `HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_TOKEN`.
    ///
    /// A relative `HF_HOME` is taken from the process's working directory, as hf-hub and the
    /// Python `huggingface_hub` do (`HF_HOME=../shared/data/hf-cache` means "beside the folder
    /// `kd` runs in"); it is made absolute here, so errors name the folder that was searched.
    pub fn from_env() -> Self {
        let hf_home = std::env::var_os("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache").join("huggingface")
        });
        let hf_home = std::path::absolute(&hf_home).unwrap_or(hf_home);
        let non_empty = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            hf_home,
            offline: env_flag("HF_HUB_OFFLINE"),
            endpoint: non_empty("HF_ENDPOINT"),
            token: non_empty("HF_TOKEN"),
            http: None,
        }
    }

    /// A cache at `hf_home` (the hub cache is `hf_home/hub`); `offline` forbids the network.
    pub fn new(hf_home: PathBuf, offline: bool) -> Self {
        Self { hf_home, offline, endpoint: None, token: None, http: None }
    }

    /// Uses these timeouts and retries instead of the environment's.
    pub fn with_http(mut self, policy: HttpPolicy) -> Self {
        self.http = Some(policy);
        self
    }

    /// Uses another hub endpoint (a mirror, or a test server).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The hub cache folder, `$HF_HOME/hub`.
    pub fn hub_dir(&self) -> PathBuf {
        self.hf_home.join("hub")
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.hub_dir().join(Repo::new(repo.to_string(), RepoType::Dataset).folder_name())
    }

    fn not_cached(&self, repo: &str, revision: &str, what: String) -> DataError {
        DataError::NotCached { repo: repo.into(), revision: revision.into(), what, cache: self.hub_dir() }
    }

    fn hub_error(&self, repo: &str, revision: &str, message: String) -> DataError {
        DataError::Hub { repo: repo.into(), revision: revision.into(), message }
    }

    /// The commit a revision points to in the cache, if any.
    pub fn cached_commit(&self, repo: &str, revision: &str) -> Option<String> {
        if !is_safe_revision(revision) {
            return None;
        }
        commit_in(&self.repo_dir(repo), revision)
    }

    fn policy(&self, repo: &str, revision: &str) -> Result<HttpPolicy, DataError> {
        self.http_policy().map_err(|m| self.hub_error(repo, revision, m))
    }

    /// The policy of every request: the one given, else the environment's.
    fn http_policy(&self) -> Result<HttpPolicy, String> {
        debug_assert!(!self.offline, "offline resolution must never open a connection");
        match &self.http {
            Some(p) => Ok(p.clone()),
            None => HttpPolicy::from_env(),
        }
    }

    fn endpoint(&self) -> String {
        self.endpoint.as_deref().unwrap_or("https://huggingface.co").trim_end_matches('/').to_string()
    }

    /// `Authorization` (from `HF_TOKEN` or the cache's token file) for hub requests.
    fn headers(&self) -> Vec<(&'static str, String)> {
        let token = self.token.clone().or_else(|| Cache::new(self.hub_dir()).token());
        token.map(|t| vec![("Authorization", format!("Bearer {t}"))]).unwrap_or_default()
    }

    /// Asks the hub for `query`'s commit and file list (hf-hub's `ApiRepo::info` request).
    fn remote_listing(
        &self,
        repo: &str,
        revision: &str,
        query: &str,
    ) -> Result<(String, Vec<String>), DataError> {
        let policy = self.policy(repo, revision)?;
        let api = Repo::with_revision(repo.to_string(), RepoType::Dataset, query.to_string());
        let url = format!("{}/api/{}", self.endpoint(), api.api_url());
        let info: hf_hub::api::RepoInfo = policy
            .get(&url, &self.headers(), |resp| {
                resp.into_json().map_err(|e| Attempt::Retry(format!("reading the listing: {e}")))
            })
            .map_err(|e| {
                self.hub_error(
                    repo,
                    revision,
                    format!(
                        "cannot list the repo on the hub ({e}); check the repo id and revision, or work \
                         offline with HF_HUB_OFFLINE=1 and HF_HOME pointing at a cache that has it"
                    ),
                )
            })?;
        // The commit names a cache folder: only a sha is accepted from the server.
        if !is_commit(&info.sha) {
            return Err(self.hub_error(
                repo,
                revision,
                format!("{url} answered commit `{}`, not a sha", info.sha),
            ));
        }
        let mut files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        files.sort();
        Ok((info.sha, files))
    }

    /// Resolves `split` to parquet files of one commit: `explicit` names (or `*` patterns)
    /// when given, else the card's `data_files` for `config` (`None`: the card's default or
    /// only config), else the fallback patterns. Cache first; the hub only when online.
    pub fn resolve_split(
        &self,
        repo: &str,
        revision: &str,
        config: Option<&str>,
        split: &str,
        explicit: Option<&[String]>,
    ) -> Result<ResolvedSplit, DataError> {
        if !is_safe_revision(revision) {
            return Err(self.hub_error(
                repo,
                revision,
                "not a hub revision (it is stored as refs/<revision>: no absolute or `..` parts)".into(),
            ));
        }
        let cached = self.cached_commit(repo, revision);
        if let Some(commit) = &cached {
            let snap = self.repo_dir(repo).join("snapshots").join(commit);
            if snap.is_dir() {
                let files = list_files(&snap);
                match self.resolve_in(repo, revision, commit, &files, config, split, explicit) {
                    Ok(r) => return Ok(r),
                    // The cache may hold only part of the repo: ask the hub about this commit.
                    Err(e)
                        if self.offline
                            || !matches!(e, DataError::NoSplit { .. } | DataError::NotCached { .. }) =>
                    {
                        return Err(e)
                    }
                    Err(_) => {}
                }
            } else if self.offline {
                return Err(self.not_cached(
                    repo,
                    revision,
                    format!("snapshot {commit} (refs/{revision} points to it)"),
                ));
            }
        } else if self.offline {
            let what = if self.repo_dir(repo).is_dir() {
                "this revision (the repo is cached, but not this revision)"
            } else {
                "the repo"
            };
            return Err(self.not_cached(repo, revision, what.into()));
        }
        // A cached commit stays the commit (the hub's branch may have moved on since).
        let (commit, files) = self.remote_listing(repo, revision, cached.as_deref().unwrap_or(revision))?;
        let resolved = self.resolve_in(repo, revision, &commit, &files, config, split, explicit)?;
        if revision != commit {
            // So that the next (possibly offline) run finds this revision in the cache.
            Cache::new(self.hub_dir())
                .repo(Repo::with_revision(repo.to_string(), RepoType::Dataset, revision.to_string()))
                .create_ref(&commit)
                .map_err(|e| DataError::Io {
                    path: self.repo_dir(repo).join("refs").join(revision),
                    source: e,
                })?;
        }
        Ok(resolved)
    }

    /// Resolution against one commit's file list (`files`: repo-relative names).
    #[allow(clippy::too_many_arguments)]
    fn resolve_in(
        &self,
        repo: &str,
        revision: &str,
        commit: &str,
        files: &[String],
        config: Option<&str>,
        split: &str,
        explicit: Option<&[String]>,
    ) -> Result<ResolvedSplit, DataError> {
        let card = self.card(repo, revision, commit, files)?;
        let chosen = match &card {
            Some(c) if !c.configs.is_empty() => {
                Some(c.config(config).map_err(|m| self.hub_error(repo, revision, m))?)
            }
            _ => None,
        };
        let mut names: Vec<String> = match explicit {
            Some(list) => {
                let mut names = Vec::new();
                for entry in list {
                    if is_pattern(entry) {
                        let hits: Vec<String> =
                            files.iter().filter(|f| glob_match(entry, f)).cloned().collect();
                        if hits.is_empty() {
                            return Err(self.missing_files(repo, revision, commit, split, entry));
                        }
                        names.extend(hits);
                    } else {
                        names.push(entry.clone());
                    }
                }
                names
            }
            None => {
                let patterns: Vec<String> = match chosen {
                    Some(c) => c.data_files.get(split).cloned().unwrap_or_default(),
                    None => {
                        let mut p =
                            vec![format!("data/{split}-*"), format!("{split}-*"), format!("{split}/*")];
                        if let Some(c) = config {
                            p.insert(0, format!("{c}/{split}-*"));
                        }
                        p
                    }
                };
                let mut names: Vec<String> = files
                    .iter()
                    .filter(|f| f.ends_with(".parquet") && patterns.iter().any(|p| glob_match(p, f)))
                    .cloned()
                    .collect();
                names.sort();
                if names.is_empty() {
                    let available = match chosen {
                        Some(c) => c.data_files.keys().cloned().collect::<Vec<_>>().join(", "),
                        None => files
                            .iter()
                            .filter(|f| f.ends_with(".parquet"))
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", "),
                    };
                    return Err(DataError::NoSplit {
                        repo: repo.into(),
                        revision: format!("{revision} (commit {commit})"),
                        split: split.into(),
                        available: if available.is_empty() { "nothing".into() } else { available },
                    });
                }
                names
            }
        };
        // A file named twice (two overlapping patterns) is read once.
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        let paths =
            names.iter().map(|n| self.file(repo, revision, commit, n)).collect::<Result<Vec<_>, _>>()?;
        Ok(ResolvedSplit {
            commit: commit.to_string(),
            config: chosen.map(|c| c.name.clone()),
            names,
            paths,
            card,
        })
    }

    fn missing_files(
        &self,
        repo: &str,
        revision: &str,
        commit: &str,
        split: &str,
        pattern: &str,
    ) -> DataError {
        let what = format!("split `{split}`: no file matches `{pattern}` (commit {commit})");
        if self.offline {
            self.not_cached(repo, revision, what)
        } else {
            self.hub_error(repo, revision, what)
        }
    }

    /// One file of the repo at `commit`: from the cache, else downloaded (unless offline) into
    /// `snapshots/<commit>/<name>` through a temporary file renamed into place when complete.
    pub fn file(&self, repo: &str, revision: &str, commit: &str, name: &str) -> Result<PathBuf, DataError> {
        if !is_safe_relative(name) || !is_safe_revision(commit) {
            return Err(self.hub_error(
                repo,
                revision,
                format!("file `{name}` (commit {commit}) would lie outside the repo's cache folder"),
            ));
        }
        let p = self.repo_dir(repo).join("snapshots").join(commit).join(name);
        if p.is_file() {
            return Ok(p);
        }
        if self.offline {
            return Err(self.not_cached(repo, revision, format!("file `{name}` (commit {commit})")));
        }
        let policy = self.policy(repo, revision)?;
        let at = Repo::with_revision(repo.to_string(), RepoType::Dataset, commit.to_string());
        let url = format!("{}/{}/resolve/{}/{name}", self.endpoint(), at.url(), at.url_revision());
        eprintln!("downloading {url}");
        download_to(&policy, &url, &self.headers(), &p, |_| Ok(())).map_err(|e| {
            self.hub_error(
                repo,
                revision,
                format!(
                    "downloading `{name}` (commit {commit}): {e}; or work offline (HF_HUB_OFFLINE=1) after \
                     fetching it with `huggingface-cli download --repo-type dataset {repo} {name} --revision \
                     {commit}` into HF_HOME={}",
                    self.hf_home.display()
                ),
            )
        })
    }

    /// A model repo's file (`tokenizer.json`, `config.json`, `model.safetensors`) and the commit
    /// it belongs to: from the cache (`models--owner--name/snapshots/<commit>/`), else, unless
    /// offline, the revision's commit from `/api/models/<repo>/revision/<rev>` and the file from
    /// `/<repo>/resolve/<commit>/<file>`, both under [`HttpPolicy`] (as datasets), the file
    /// renamed into place when complete and `refs/<revision>` written for the next offline run.
    pub fn model_file(&self, repo: &str, revision: &str, name: &str) -> Result<(PathBuf, String), DataError> {
        let dir = self.hub_dir().join(Repo::new(repo.to_string(), RepoType::Model).folder_name());
        let fail = |m: String| DataError::Invalid(format!("model {repo} @ {revision}: {m}"));
        if !is_safe_relative(name) || !is_safe_revision(revision) {
            return Err(fail(format!("file `{name}` would lie outside the repo's cache folder")));
        }
        let cached = commit_in(&dir, revision);
        if let Some(commit) = &cached {
            let p = dir.join("snapshots").join(commit).join(name);
            if p.is_file() {
                return Ok((p, commit.clone()));
            }
        }
        let how = || {
            format!(
                "get it with `huggingface-cli download {repo} {name} --revision {revision}` into HF_HOME={},                  or point HF_HOME at a cache that has it",
                self.hf_home.display()
            )
        };
        if self.offline {
            let what = if dir.is_dir() {
                "the repo is cached, not this file or revision"
            } else {
                "the repo is not cached"
            };
            return Err(fail(format!(
                "file `{name}` is not in the hub cache {} ({what}) and HF_HUB_OFFLINE=1 forbids the network; {}",
                self.hub_dir().display(),
                how()
            )));
        }
        let policy = self.http_policy().map_err(fail)?;
        let commit = match cached {
            Some(c) => c,
            None => {
                let api = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
                let url = format!("{}/api/{}", self.endpoint(), api.api_url());
                let info: hf_hub::api::RepoInfo = policy
                    .get(&url, &self.headers(), |resp| {
                        resp.into_json().map_err(|e| Attempt::Retry(format!("reading the model info: {e}")))
                    })
                    .map_err(|e| fail(format!("cannot resolve the revision ({e}); {}", how())))?;
                if !is_commit(&info.sha) {
                    return Err(fail(format!("{url} answered commit `{}`, not a sha", info.sha)));
                }
                info.sha
            }
        };
        let dest = dir.join("snapshots").join(&commit).join(name);
        let at = Repo::with_revision(repo.to_string(), RepoType::Model, commit.clone());
        let url = format!("{}/{}/resolve/{}/{name}", self.endpoint(), at.url(), at.url_revision());
        eprintln!("downloading {url}");
        download_to(&policy, &url, &self.headers(), &dest, |_| Ok(())).map_err(|e| {
            fail(format!("downloading `{name}`: {e}; or work offline (HF_HUB_OFFLINE=1): {}", how()))
        })?;
        if revision != commit {
            // So that the next (possibly offline) run finds this revision in the cache.
            Cache::new(self.hub_dir())
                .repo(Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string()))
                .create_ref(&commit)
                .map_err(|e| DataError::Io { path: dir.join("refs").join(revision), source: e })?;
        }
        Ok((dest, commit))
    }

    /// The repo's card (`README.md`), parsed, when `files` lists one.
    fn card(
        &self,
        repo: &str,
        revision: &str,
        commit: &str,
        files: &[String],
    ) -> Result<Option<DatasetCard>, DataError> {
        if !files.iter().any(|f| f == "README.md") {
            return Ok(None);
        }
        let path = self.file(repo, revision, commit, "README.md")?;
        let text =
            std::fs::read_to_string(&path).map_err(|e| DataError::Io { path: path.clone(), source: e })?;
        DatasetCard::parse(&text)
            .map(Some)
            .map_err(|m| self.hub_error(repo, revision, format!("{}: {m}", path.display())))
    }
}

/// Repo-relative names of every file under a snapshot folder, sorted.
fn list_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// A revision (branch, tag, `refs/pr/1`, sha) the cache can store as `refs/<revision>`:
/// relative, without empty, `.` or `..` parts.
fn is_safe_revision(rev: &str) -> bool {
    is_safe_relative(rev)
}

/// A relative path of plain parts: not absolute, no empty, `.` or `..` part, no backslash.
fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path.split('/').all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('\\'))
        && !path.chars().any(char::is_control)
}

/// Environment variables of [`HttpPolicy::from_env`].
pub const TIMEOUT_ENV: &str = "KD_HTTP_TIMEOUT_SECS";
pub const CONNECT_TIMEOUT_ENV: &str = "KD_HTTP_CONNECT_TIMEOUT_SECS";
pub const RETRIES_ENV: &str = "KD_HTTP_RETRIES";
pub const BACKOFF_ENV: &str = "KD_HTTP_BACKOFF_SECS";

/// Timeouts and retries of every HTTP request kd-bench makes (hub listings and files, teacher
/// checkpoints). ureq's defaults have no read timeout: a server that accepts the connection and
/// never answers would hang a run forever.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpPolicy {
    /// Opening the connection (DNS, TCP, TLS).
    pub connect: Duration,
    /// Any one read or write on the socket (not the whole transfer, which may be large).
    pub read: Duration,
    /// Tries in all (first try included), at least 1.
    pub attempts: usize,
    /// Wait before the second try; doubled for each later one (capped at 30 s).
    pub backoff: Duration,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            read: Duration::from_secs(60),
            attempts: 3,
            backoff: Duration::from_secs(1),
        }
    }
}

/// What a failed attempt means for the next one.
#[derive(Debug)]
pub enum Attempt {
    /// Transient (a broken or timed-out transfer): try again.
    Retry(String),
    /// Final (a wrong hash, a local error): do not try again.
    Fail(String),
}

/// A request that did not succeed: what was tried and how.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    pub url: String,
    pub attempts: usize,
    /// The last HTTP status, when the server answered.
    pub status: Option<u16>,
    pub message: String,
    pub policy: HttpPolicy,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let p = &self.policy;
        write!(
            f,
            "GET {} failed after {} attempt{} (connect timeout {} s, read timeout {} s; set {TIMEOUT_ENV}, \
             {CONNECT_TIMEOUT_ENV}, {RETRIES_ENV}): {}",
            self.url,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            p.connect.as_secs_f64(),
            p.read.as_secs_f64(),
            self.message
        )
    }
}

impl std::error::Error for HttpError {}

fn secs(name: &str, value: Option<String>) -> Result<Option<Duration>, String> {
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
            _ => Err(format!("{name}=`{v}`: expected a number of seconds > 0")),
        },
    }
}

impl HttpPolicy {
    /// The defaults (connect 30 s, read 60 s, 2 retries, back-off 1 s) with the environment's
    /// overrides: `KD_HTTP_TIMEOUT_SECS` (read; also caps connect unless
    /// `KD_HTTP_CONNECT_TIMEOUT_SECS` is set), `KD_HTTP_CONNECT_TIMEOUT_SECS`, `KD_HTTP_RETRIES`
    /// (retries after the first try), `KD_HTTP_BACKOFF_SECS`. A malformed value is an error
    /// naming the variable.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`HttpPolicy::from_env`] with the variables looked up by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut p = Self::default();
        if let Some(read) = secs(TIMEOUT_ENV, var(TIMEOUT_ENV))? {
            p.read = read;
            p.connect = p.connect.min(read);
        }
        if let Some(connect) = secs(CONNECT_TIMEOUT_ENV, var(CONNECT_TIMEOUT_ENV))? {
            p.connect = connect;
        }
        if let Some(b) = secs(BACKOFF_ENV, var(BACKOFF_ENV))? {
            p.backoff = b;
        }
        if let Some(v) = var(RETRIES_ENV).filter(|v| !v.trim().is_empty()) {
            let n: usize = v.trim().parse().ok().filter(|n| *n <= 100).ok_or_else(|| {
                format!("{RETRIES_ENV}=`{v}`: expected a whole number of retries, 0 to 100")
            })?;
            p.attempts = n + 1;
        }
        Ok(p)
    }

    /// A ureq agent with these timeouts (proxies from the environment, as hf-hub's).
    pub fn agent(&self) -> ureq::Agent {
        ureq::AgentBuilder::new()
            .try_proxy_from_env(true)
            .timeout_connect(self.connect)
            .timeout_read(self.read)
            .timeout_write(self.read)
            .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
            .user_agent(concat!("kd-bench/", env!("CARGO_PKG_VERSION")))
            .build()
    }

    /// GET `url` and hand the response to `read`, trying up to `attempts` times with back-off
    /// (GET is idempotent). Connection errors, timeouts, HTTP 408, 429 and 5xx, and
    /// [`Attempt::Retry`] from `read` are retried; other statuses and [`Attempt::Fail`] are not.
    pub fn get<T>(
        &self,
        url: &str,
        headers: &[(&str, String)],
        mut read: impl FnMut(ureq::Response) -> Result<T, Attempt>,
    ) -> Result<T, HttpError> {
        let agent = self.agent();
        let attempts = self.attempts.max(1);
        let error = |n: usize, status: Option<u16>, message: String| HttpError {
            url: url.to_string(),
            attempts: n,
            status,
            message,
            policy: self.clone(),
        };
        let mut last = None;
        for n in 1..=attempts {
            if n > 1 {
                let wait = self.backoff.saturating_mul(1 << (n - 2).min(16)).min(Duration::from_secs(30));
                std::thread::sleep(wait);
            }
            let mut request = agent.get(url);
            for (k, v) in headers {
                request = request.set(k, v);
            }
            let (status, message) = match request.call() {
                Ok(resp) => match read(resp) {
                    Ok(v) => return Ok(v),
                    Err(Attempt::Fail(m)) => return Err(error(n, None, m)),
                    Err(Attempt::Retry(m)) => (None, m),
                },
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.status_text().to_string();
                    let retry = code == 408 || code == 429 || code >= 500;
                    let message = format!("HTTP {code} {text}");
                    if !retry {
                        return Err(error(n, Some(code), message));
                    }
                    (Some(code), message)
                }
                Err(ureq::Error::Transport(t)) => (None, t.to_string()),
            };
            last = Some((status, message));
        }
        let (status, message) = last.unwrap_or((None, "no attempt".into()));
        Err(error(attempts, status, message))
    }
}

/// A temporary file beside a destination, removed unless [`Part::persist`] renamed it into place.
struct Part {
    path: PathBuf,
    keep: bool,
}

impl Part {
    fn create(dest: &Path) -> std::io::Result<(Self, std::fs::File)> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let name = dest.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        loop {
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{name}.{}-{n}.part", std::process::id()));
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => return Ok((Self { path, keep: false }, f)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn persist(mut self, dest: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, dest)?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Downloads `url` to `dest` with `policy`: each attempt streams into a fresh temporary file in
/// `dest`'s folder, checks the length the server announced, then `check(temp path)` (a hash;
/// its error is final), then renames the file into place. A failed attempt leaves nothing
/// behind, and `dest` never holds a partial file. Returns `dest`.
pub fn download_to(
    policy: &HttpPolicy,
    url: &str,
    headers: &[(&str, String)],
    dest: &Path,
    mut check: impl FnMut(&Path) -> Result<(), String>,
) -> Result<PathBuf, HttpError> {
    policy.get(url, headers, |resp| {
        let announced = resp.header("Content-Length").and_then(|v| v.trim().parse::<u64>().ok());
        let (part, mut file) = Part::create(dest)
            .map_err(|e| Attempt::Fail(format!("creating a file beside {}: {e}", dest.display())))?;
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Attempt::Retry(format!("reading the body after {got} bytes: {e}"))),
            };
            file.write_all(&buf[..n])
                .map_err(|e| Attempt::Fail(format!("writing {}: {e}", part.path.display())))?;
            got += n as u64;
        }
        if let Some(len) = announced {
            if got != len {
                return Err(Attempt::Retry(format!("the body ended after {got} of {len} bytes")));
            }
        }
        file.sync_all().map_err(|e| Attempt::Fail(format!("writing {}: {e}", part.path.display())))?;
        drop(file);
        check(&part.path).map_err(Attempt::Fail)?;
        part.persist(dest)
            .map_err(|e| Attempt::Fail(format!("moving the download to {}: {e}", dest.display())))?;
        Ok(dest.to_path_buf())
    })
}

/// The commit `revision` names in the repo cache folder `dir`: `refs/<revision>`'s content, or
/// the revision itself when it is a commit sha with a snapshot.
fn commit_in(dir: &Path, revision: &str) -> Option<String> {
    if let Ok(c) = std::fs::read_to_string(dir.join("refs").join(revision)) {
        let c = c.trim();
        if !c.is_empty() {
            return Some(c.to_string());
        }
    }
    (is_commit(revision) && dir.join("snapshots").join(revision).is_dir()).then(|| revision.to_string())
}
