//! The dataset card's YAML header, read only for what split resolution needs:
//! `configs: [{config_name, data_files: [{split, path}]}]`, as the hub's datasets library
//! reads it. A tiny line-based reader: the card header has this one fixed shape.

use std::collections::BTreeMap;

/// `config_name → split → path patterns`.
pub type DataFiles = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// Parses the `configs:` block of a card's YAML front matter (between the first two `---`).
pub fn parse_configs(card: &str) -> DataFiles {
    let mut out = DataFiles::new();
    let mut lines = card.lines();
    if lines.next().map(str::trim) != Some("---") {
        return out;
    }
    let header: Vec<&str> = lines.take_while(|l| l.trim() != "---").collect();
    let Some(start) = header.iter().position(|l| l.trim_end() == "configs:") else { return out };
    let mut config: Option<String> = None;
    let mut split: Option<String> = None;
    let mut in_paths = false;
    for raw in &header[start + 1..] {
        if !raw.starts_with(' ') && !raw.starts_with('-') {
            break; // next top-level key
        }
        let line = raw.trim();
        let unquote = |s: &str| s.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        if let Some(rest) = line.strip_prefix("- config_name:") {
            config = Some(unquote(rest));
            split = None;
            in_paths = false;
        } else if let Some(rest) = line.strip_prefix("- split:") {
            split = Some(unquote(rest));
            in_paths = false;
        } else if let Some(rest) = line.strip_prefix("path:") {
            let (Some(c), Some(s)) = (&config, &split) else { continue };
            let entry = out.entry(c.clone()).or_default().entry(s.clone()).or_default();
            let rest = rest.trim();
            if rest.is_empty() {
                in_paths = true;
            } else if let Some(list) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                entry.extend(list.split(',').map(unquote).filter(|p| !p.is_empty()));
            } else {
                entry.push(unquote(rest));
            }
        } else if in_paths && line.starts_with("- ") && !line.contains(':') {
            if let (Some(c), Some(s)) = (&config, &split) {
                out.entry(c.clone()).or_default().entry(s.clone()).or_default().push(unquote(&line[2..]));
            }
        } else {
            in_paths = false;
        }
    }
    out
}

/// Shell-style match of `*` (within a path) against a repo-relative file name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn rec(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => rec(&p[1..], n) || (!n.is_empty() && n[0] != b'/' && rec(p, &n[1..])),
            (Some(&a), Some(&b)) if a == b => rec(&p[1..], &n[1..]),
            _ => false,
        }
    }
    rec(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_card_configs() {
        let card = "---\ndataset_info:\n  config_name: plain_text\nconfigs:\n- config_name: plain_text\n  data_files:\n  - split: train\n    path: plain_text/train-*\n  - split: test\n    path:\n    - plain_text/test-*\n    - extra/test-*\n  default: true\n- config_name: other\n  data_files:\n  - split: train\n    path: \"o/train-*\"\n---\n# text";
        let c = parse_configs(card);
        assert_eq!(c["plain_text"]["train"], vec!["plain_text/train-*"]);
        assert_eq!(c["plain_text"]["test"], vec!["plain_text/test-*", "extra/test-*"]);
        assert_eq!(c["other"]["train"], vec!["o/train-*"]);
    }

    #[test]
    fn glob_stays_within_a_folder() {
        assert!(glob_match("plain_text/train-*", "plain_text/train-00000-of-00001.parquet"));
        assert!(!glob_match("plain_text/train-*", "plain_text/test-00000-of-00001.parquet"));
        assert!(!glob_match("data/*", "data/sub/x.parquet"));
    }
}
