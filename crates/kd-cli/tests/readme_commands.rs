//! Every `kd …` and `just …` command the README and docs/ write parses as the CLI and the
//! justfile define it, so the documentation cannot drift from the tool: each command is taken
//! from code blocks (lines starting `kd ` or `just `) and inline code spans, its placeholders
//! (`<experiment>`, `C`, `…`) filled in, optional `[…]` groups kept with their first alternative,
//! and parsed with clap (`kd_cli::cli::Cli`); a `just` command must name a recipe of the
//! justfile, and one that forwards to `kd` is parsed as that `kd` command. A literal experiment
//! name must have its recipe in benchmarks/.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Parser;
use kd_cli::cli::Cli;

/// The documents checked: the README and every Markdown page under docs/.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    let mut stack = vec![root.join("docs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `(line number, command)` for each `kd`/`just` command in a Markdown text.
fn commands(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    let mut pending = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            let cmd = trimmed.split(" # ").next().unwrap_or_default().trim();
            if let Some(head) = cmd.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            let cmd = format!("{pending}{cmd}");
            pending.clear();
            let cmd = cmd.as_str();
            if cmd.starts_with("kd ") || cmd.starts_with("just ") || cmd == "kd" {
                out.push((i + 1, cmd.to_string()));
            }
            continue;
        }
        // Inline code spans.
        let mut rest = line;
        while let Some(start) = rest.find('`') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('`') else { break };
            let span = &after[..end];
            if span.starts_with("kd ") || span.starts_with("just ") {
                out.push((i + 1, span.to_string()));
            }
            rest = &after[end + 1..];
        }
    }
    out
}

/// The words of a documented command with its notation resolved: quotes as a shell reads them,
/// `[…]` groups (outside quotes) opened, `a|b` alternatives (also `\|` in tables) reduced to the
/// first, a shell redirection, pipe or list (` > `, ` | `, ` && `) ends them; `<…>` is an experiment-like value `x`, a capital placeholder (`N`, `DIR`, `CSV`) the
/// value `1`, and `…` stands for the experiment right after a subcommand, for a value after a
/// flag, and for nothing elsewhere.
fn words(cmd: &str) -> Vec<String> {
    let cmd = cmd.replace("\\|", "|");
    let (mut raw, mut cur, mut quote, mut quoted) = (Vec::new(), String::new(), None, false);
    for c in cmd.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                quoted = true;
            }
            (None, c) if c.is_whitespace() || c == '[' || c == ']' => {
                if !cur.is_empty() || quoted {
                    raw.push((std::mem::take(&mut cur), quoted));
                }
                quoted = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if !cur.is_empty() || quoted {
        raw.push((cur, quoted));
    }
    let mut out: Vec<String> = Vec::new();
    for (w, quoted) in raw {
        if quoted {
            out.push(w);
            continue;
        }
        // The shell's: a redirection, pipe or list ends kd's arguments.
        if matches!(w.as_str(), ">" | ">>" | "2>" | "|" | "&&" | ";") {
            break;
        }
        let w = w.split('|').next().unwrap_or_default().trim_end_matches(',');
        let placeholder =
            |w: &str| w.len() <= 3 && !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase());
        if w == "…" || w == "..." {
            match out.last().map(String::as_str) {
                Some("kd") | Some("just") => {}
                Some(prev) if prev.starts_with("--") && !prev.contains('=') => out.push("1".into()),
                Some(_) if out.len() == 2 => out.push("x".into()),
                _ => {}
            }
        } else if w.contains('<') {
            out.push("x".into());
        } else if placeholder(w.trim_end_matches('…')) {
            out.push("1".into());
        } else if !w.is_empty() {
            out.push(w.trim_end_matches('…').to_string());
        }
    }
    out
}

/// The justfile's recipes: `name` → the `kd` subcommand it forwards to (`Some("")` for `just
/// kd`, which forwards everything), `None` for recipes that are not `kd` commands.
fn just_recipes(root: &Path) -> Vec<(String, Option<String>)> {
    let text = std::fs::read_to_string(root.join("justfile")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with(|c: char| c.is_ascii_lowercase())
            && line.trim_end().ends_with(':')
            && !line.contains(":=")
        {
            let name = line.split_whitespace().next().unwrap().trim_end_matches(':').to_string();
            let body = lines.get(i + 1).copied().unwrap_or_default();
            let forwards = body.split(" --bin kd -- ").nth(1).map(|rest| {
                let sub = rest.split_whitespace().next().unwrap_or_default();
                if sub.starts_with("{{") {
                    String::new()
                } else {
                    sub.to_string()
                }
            });
            out.push((name, forwards));
        }
    }
    out
}

fn experiments(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root.join("benchmarks"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".toml").map(str::to_string))
        .collect()
}

/// Checks one `kd` command line (its words after `kd`), returning the problem if any.
fn check_kd(args: &[String], known: &BTreeSet<String>) -> Option<String> {
    // A bare `kd` or `kd <subcommand>` (prose naming a command) must name one: its --help parses.
    let mut argv: Vec<String> = std::iter::once("kd".to_string()).chain(args.iter().cloned()).collect();
    if args.len() <= 1 {
        argv.push("--help".into());
    }
    match Cli::try_parse_from(&argv) {
        Err(e) if e.kind() != clap::error::ErrorKind::DisplayHelp => {
            return Some(e.to_string().lines().next().unwrap_or_default().to_string());
        }
        _ => {}
    }
    let takes_experiment = ["reproduce", "report", "cite", "sweep"];
    if let (Some(sub), Some(exp)) = (args.first(), args.get(1)) {
        if takes_experiment.contains(&sub.as_str())
            && exp != "x"
            && !exp.starts_with('-')
            && !known.contains(exp)
        {
            return Some(format!("no recipe benchmarks/{exp}.toml"));
        }
    }
    None
}

#[test]
fn every_documented_command_parses() {
    let root = common::repo_root();
    let known = experiments(&root);
    let recipes = just_recipes(&root);
    assert!(recipes.iter().any(|(n, _)| n == "reproduce"), "justfile recipes not found: {recipes:?}");
    let (mut checked, mut problems) = (0, Vec::new());
    for doc in documents(&root) {
        let text = std::fs::read_to_string(&doc).unwrap();
        for (line, cmd) in commands(&text) {
            let w = words(&cmd);
            let problem = match w.first().map(String::as_str) {
                Some("kd") => check_kd(&w[1..], &known),
                Some("just") if w.get(1).is_none_or(|n| n == "x") => None,
                Some("just") => match w.get(1).and_then(|name| recipes.iter().find(|(n, _)| n == name)) {
                    None => {
                        Some(format!("no justfile recipe `{}`", w.get(1).map(String::as_str).unwrap_or("")))
                    }
                    Some((_, None)) => None,
                    Some((_, Some(sub))) if sub.is_empty() => check_kd(&w[2..], &known),
                    Some((_, Some(sub))) => {
                        let args: Vec<String> =
                            std::iter::once(sub.clone()).chain(w[2..].iter().cloned()).collect();
                        check_kd(&args, &known)
                    }
                },
                _ => None,
            };
            checked += 1;
            if let Some(p) = problem {
                let rel = doc.strip_prefix(&root).unwrap_or(&doc).display().to_string();
                problems.push(format!("{rel}:{line}: `{cmd}`: {p}"));
            }
        }
    }
    assert!(checked >= 20, "only {checked} commands found: is the extraction broken?");
    assert!(
        problems.is_empty(),
        "{} of {checked} documented commands do not parse:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn a_command_with_an_unknown_flag_is_caught() {
    let known = BTreeSet::from(["vanilla-kd-cifar10".to_string()]);
    let ok = words("kd reproduce vanilla-kd-cifar10 [--profile smoke\\|cpu] [--seeds 0,1,2]");
    assert_eq!(check_kd(&ok[1..], &known), None, "{ok:?}");
    let bad = words("kd reproduce vanilla-kd-cifar10 --profiles cpu");
    assert!(check_kd(&bad[1..], &known).is_some());
    let missing = words("kd report no-such-experiment");
    assert_eq!(
        check_kd(&missing[1..], &known).as_deref(),
        Some("no recipe benchmarks/no-such-experiment.toml")
    );
}
