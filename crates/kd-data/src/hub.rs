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
//! A split maps to files through the dataset card's `configs[].data_files` patterns (globbed
//! against the snapshot's files offline, the repo's sibling list online), as the `datasets`
//! library does; without a card, through `{config}/{split}-*`, `data/{split}-*`, `{split}-*`,
//! `{split}/*`; or through an explicit list from the recipe.

use std::path::{Path, PathBuf};

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
    /// Access token (`HF_TOKEN`); `None` lets hf-hub read the cache's token file.
    token: Option<String>,
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
    pub fn from_env() -> Self {
        let hf_home = std::env::var_os("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache").join("huggingface")
        });
        let non_empty = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            hf_home,
            offline: env_flag("HF_HUB_OFFLINE"),
            endpoint: non_empty("HF_ENDPOINT"),
            token: non_empty("HF_TOKEN"),
        }
    }

    /// A cache at `hf_home` (the hub cache is `hf_home/hub`); `offline` forbids the network.
    pub fn new(hf_home: PathBuf, offline: bool) -> Self {
        Self { hf_home, offline, endpoint: None, token: None }
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
        let dir = self.repo_dir(repo);
        if let Ok(c) = std::fs::read_to_string(dir.join("refs").join(revision)) {
            let c = c.trim();
            if !c.is_empty() {
                return Some(c.to_string());
            }
        }
        (is_commit(revision) && dir.join("snapshots").join(revision).is_dir()).then(|| revision.to_string())
    }

    fn api_repo(&self, repo: &str, revision: &str) -> Result<hf_hub::api::sync::ApiRepo, DataError> {
        debug_assert!(!self.offline, "offline resolution must never build a hub client");
        let mut builder =
            hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(self.hub_dir())).with_progress(true);
        if let Some(e) = &self.endpoint {
            builder = builder.with_endpoint(e.trim_end_matches('/').to_string());
        }
        if let Some(t) = &self.token {
            builder = builder.with_token(Some(t.clone()));
        }
        let api = builder.build().map_err(|e| self.hub_error(repo, revision, format!("hub client: {e}")))?;
        Ok(api.repo(Repo::with_revision(repo.to_string(), RepoType::Dataset, revision.to_string())))
    }

    /// Asks the hub for `revision`'s commit and file list.
    fn remote_listing(
        &self,
        repo: &str,
        revision: &str,
        query: &str,
    ) -> Result<(String, Vec<String>), DataError> {
        let info = self.api_repo(repo, query)?.info().map_err(|e| {
            self.hub_error(
                repo,
                revision,
                format!(
                    "cannot list the repo on the hub ({e}); check the repo id and revision, or work offline \
                     with HF_HUB_OFFLINE=1 and HF_HOME pointing at a cache that has it"
                ),
            )
        })?;
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

    /// One file of the repo at `commit`: from the cache, else downloaded (unless offline).
    pub fn file(&self, repo: &str, revision: &str, commit: &str, name: &str) -> Result<PathBuf, DataError> {
        let p = self.repo_dir(repo).join("snapshots").join(commit).join(name);
        if p.is_file() {
            return Ok(p);
        }
        if self.offline {
            return Err(self.not_cached(repo, revision, format!("file `{name}` (commit {commit})")));
        }
        self.api_repo(repo, commit)?.get(name).map_err(|e| {
            self.hub_error(
                repo,
                revision,
                format!(
                    "downloading `{name}` (commit {commit}): {e}; or fetch it with `huggingface-cli download \
                     --repo-type dataset {repo} {name} --revision {commit}`"
                ),
            )
        })
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
