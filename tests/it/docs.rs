//! The repository stands alone: every relative link of every Markdown file resolves to a file
//! of the repository (and an anchor to a heading of that file), and no file of the repository
//! refers to a file outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use super::common::{require, root, skipped};

/// Names of files that live outside this repository: a reference to one is a dead end for
/// anyone reading a clone. Written in pieces so that this file does not name them itself.
const OUTSIDE: &[&str] = &[
    concat!("..", "/shared"),
    concat!("SPEC", ".md"),
    concat!("LAB", ".md"),
    concat!("multiregion", "-wireguard"),
];

/// The repository's files as a fresh clone would have them: tracked files, plus new files not
/// ignored (so that a file being added counts before its commit). None when git or the work
/// tree is missing (skipped visibly; under CI a missing git fails).
fn repository_files() -> Option<Vec<String>> {
    if !require("git") {
        return None;
    }
    let o = Command::new("git")
        .current_dir(root())
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .unwrap();
    if !o.status.success() {
        skipped(&format!(
            "not a git work tree: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
        return None;
    }
    let mut files: Vec<String> = o
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        // a file deleted in the work tree but still in the index is not there any more
        .filter(|p| root().join(p).is_file())
        .collect();
    files.sort();
    files.dedup();
    Some(files)
}

/// The text of a file, or None for a binary one (a NUL byte, or not UTF-8).
fn text_of(rel: &str) -> Option<String> {
    let bytes = std::fs::read(root().join(rel)).unwrap();
    if bytes.contains(&0) {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// True for a line that opens or closes a fenced code block.
fn is_fence(line: &str) -> bool {
    let t = line.trim_start_matches(' ');
    line.len() - t.len() <= 3 && (t.starts_with("```") || t.starts_with("~~~"))
}

/// The line with its code spans blanked out (`` `a](b)` `` is no link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let run = rest[start..].chars().take_while(|c| *c == '`').count();
        let fence = &rest[start..start + run];
        match rest[start + run..].find(fence) {
            Some(end) => rest = &rest[start + run + end + run..],
            None => {
                // an unmatched backtick is literal text
                out.push_str(fence);
                rest = &rest[start + run..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The Markdown lines outside fenced code blocks, with their line numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut in_fence = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if is_fence(line) {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            out.push((i + 1, line));
        }
    }
    out
}

/// The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped,
/// spaces as hyphens, `-1`, `-2`… on repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let title = line[hashes..].trim().trim_end_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// Every link target written in a Markdown text: inline links and images `[t](target)`, and
/// reference definitions `[id]: target`, outside code; with their line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let t = line.trim_start();
        if t.starts_with('[')
            && let Some(close) = t.find("]:")
            && !t[..close].contains('(')
        {
            if let Some(target) = t[close + 2..].split_whitespace().next() {
                out.push((n, target.to_string()));
            }
            continue;
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let mut target = after[..end].trim();
            if let Some(inner) = target.strip_prefix('<').and_then(|t| t.split('>').next()) {
                target = inner;
            } else if let Some(first) = target.split_whitespace().next() {
                target = first; // drop a "title"
            }
            out.push((n, target.to_string()));
            rest = &after[end.min(after.len())..];
        }
    }
    out
}

/// A path relative to the repository root, from `base_dir` (relative to the root) and a link;
/// None when it climbs out of the repository.
fn resolve(base_dir: &str, link: &str) -> Option<String> {
    let mut parts: Vec<&str> = if link.starts_with('/') {
        return None;
    } else {
        base_dir.split('/').filter(|p| !p.is_empty()).collect()
    };
    for p in link.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// What is wrong with the links of the Markdown file `rel`, given the repository's files and
/// the text of each Markdown file in it. Each problem as `FILE:LINE: link: why`.
fn link_problems(
    rel: &str,
    files: &BTreeSet<String>,
    md: &BTreeMap<String, String>,
) -> Vec<String> {
    let text = &md[rel];
    let base_dir = rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    let dirs: BTreeSet<String> = files
        .iter()
        .flat_map(|f| {
            let parts: Vec<&str> = f.split('/').collect();
            (1..parts.len()).map(move |i| parts[..i].join("/"))
        })
        .collect();
    let mut problems = Vec::new();
    for (n, target) in link_targets(text) {
        let lower = target.to_ascii_lowercase();
        if lower.contains("://") || lower.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target.as_str(), None),
        };
        let path = path.replace("%20", " ");
        let resolved = if path.is_empty() {
            Some(rel.to_string())
        } else {
            resolve(base_dir, &path)
        };
        let Some(resolved) = resolved else {
            problems.push(format!(
                "{rel}:{n}: {target}: points outside the repository"
            ));
            continue;
        };
        let resolved = resolved.trim_end_matches('/').to_string();
        if !files.contains(&resolved) && !dirs.contains(&resolved) && !resolved.is_empty() {
            problems.push(format!(
                "{rel}:{n}: {target}: no such file in the repository ({resolved})"
            ));
            continue;
        }
        if let Some(anchor) = anchor {
            match md.get(&resolved) {
                Some(t) if anchors(t).contains(anchor) => {}
                Some(_) => problems.push(format!(
                    "{rel}:{n}: {target}: {resolved} has no heading with the anchor #{anchor}"
                )),
                None if anchor.starts_with('L')
                    && anchor[1..].split("-L").all(|d| d.parse::<u32>().is_ok()) => {}
                None => problems.push(format!(
                    "{rel}:{n}: {target}: an anchor on {resolved}, which is no Markdown file"
                )),
            }
        }
    }
    problems
}

/// Every reference to a file outside the repository in the text of `rel`: `FILE:LINE: name`.
fn outside_references(rel: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        for name in OUTSIDE {
            if line.contains(name) {
                found.push(format!("{rel}:{}: {name}: {}", i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn every_markdown_link_resolves_to_a_file_and_heading_of_the_repository() {
    let Some(files) = repository_files() else {
        return;
    };
    let md: BTreeMap<String, String> = files
        .iter()
        .filter(|f| f.ends_with(".md"))
        .filter_map(|f| text_of(f).map(|t| (f.clone(), t)))
        .collect();
    for must in ["README.md", "docs/README.md"] {
        assert!(md.contains_key(must), "{must} is missing");
    }
    let files: BTreeSet<String> = files.into_iter().collect();
    let links: usize = md.values().map(|t| link_targets(t).len()).sum();
    assert!(links > 50, "only {links} links found: the parser is broken");
    let problems: Vec<String> = md
        .keys()
        .flat_map(|rel| link_problems(rel, &files, &md))
        .collect();
    assert!(
        problems.is_empty(),
        "{} dead links in the Markdown files:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_readme_is_short_and_every_manual_page_is_linked_from_the_index() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines: the manual is docs/"
    );
    // the set-up commands come first, and the test command is the one CI runs
    let first_block: Vec<&str> = readme
        .split("```")
        .nth(1)
        .expect("README.md has a code block")
        .lines()
        .collect();
    for command in ["scripts/demo ", "scripts/test "] {
        assert!(
            first_block.iter().any(|l| l.starts_with(command)),
            "README.md's first code block lacks {command}"
        );
    }
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == "exec scripts/test"),
        ".ci/run does not run scripts/test, README's test command"
    );
    let index = std::fs::read_to_string(root().join("docs/README.md")).unwrap();
    let linked: BTreeSet<String> = link_targets(&index)
        .into_iter()
        .map(|(_, t)| t.split('#').next().unwrap().to_string())
        .collect();
    let mut missing = Vec::new();
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") && name != "README.md" && !linked.contains(&name) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/README.md does not link {missing:?}"
    );
}

#[test]
fn no_file_of_the_repository_refers_to_a_file_outside_it() {
    let Some(files) = repository_files() else {
        return;
    };
    let texts: Vec<(String, String)> = files
        .iter()
        .filter_map(|f| text_of(f).map(|t| (f.clone(), t)))
        .collect();
    assert!(
        texts.iter().any(|(f, _)| f == "src/main.rs"),
        "the file list misses src/main.rs"
    );
    let found: Vec<String> = texts
        .iter()
        .flat_map(|(f, t)| outside_references(f, t))
        .collect();
    assert!(
        found.is_empty(),
        "{} references to files outside the repository (say it in the project's own words, \
         or link a file of the repository):\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn the_checks_catch_dead_links_bad_anchors_escaping_links_and_outside_names() {
    let md: BTreeMap<String, String> = [
        (
            "README.md".to_string(),
            "# Top\n\n[ok](docs/a.md#a-heading-with-code) [ok](src/) [ok](docs/a.md#top-1)\n\
             [dead](docs/missing.md) [anchor](docs/a.md#nope) [out](../elsewhere.md)\n\
             [web](https://example.org/x) `[code](nowhere.md)` [ok](#top)\n\
             ```\n[fenced](nowhere.md)\n```\n[ref]: docs/gone.md\n"
                .to_string(),
        ),
        (
            "docs/a.md".to_string(),
            "# Top\n## A heading with `code`!\n# Top\n[up](../README.md) [out](../../x.md)\n"
                .to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let files: BTreeSet<String> = ["README.md", "docs/a.md", "src/main.rs"]
        .into_iter()
        .map(String::from)
        .collect();
    let p = link_problems("README.md", &files, &md);
    let want = [
        "README.md:4: docs/missing.md: no such file",
        "README.md:4: docs/a.md#nope: docs/a.md has no heading",
        "README.md:4: ../elsewhere.md: points outside",
        "README.md:9: docs/gone.md: no such file",
    ];
    for w in want {
        assert!(
            p.iter().any(|x| x.starts_with(w)),
            "not caught: {w}\n{p:#?}"
        );
    }
    assert_eq!(p.len(), want.len(), "{p:#?}");
    let p = link_problems("docs/a.md", &files, &md);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].starts_with("docs/a.md:4: ../../x.md: points outside"));

    let text = format!("a\nsee {}/reference/x\n", OUTSIDE[0]);
    assert_eq!(
        outside_references("f.rs", &text),
        vec![format!(
            "f.rs:2: {}: see {}/reference/x",
            OUTSIDE[0], OUTSIDE[0]
        )]
    );
    assert!(outside_references("f.rs", "the spec, the lab notes\n").is_empty());
}
