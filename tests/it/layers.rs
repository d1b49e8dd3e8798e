//! The layering rules, checked on the source: `unsafe` only in `os`, `os`
//! imports nothing of the rest of the crate, and no module imports a
//! module that imports it back (directly or through others).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`master::reload`) → source without comments.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("src dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(&root).expect("under src").with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&p).expect("source");
            let code: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(parts.join("::"), code);
        }
    }
    out
}

/// The crate modules `src` refers to through `crate::…` paths.
fn crate_deps(src: &str, mods: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    for (i, _) in src.match_indices("crate::") {
        if src[..i].ends_with('$') {
            continue; // `$crate::` in a macro body
        }
        let path: String = src[i + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        for n in (1..=segs.len()).rev() {
            let cand = segs[..n].join("::");
            if mods.contains_key(&cand) {
                deps.insert(cand);
                break;
            }
        }
    }
    deps
}

/// Sibling modules `src` (module `name`) refers to through `super::…`.
fn super_deps(name: &str, src: &str, mods: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    let parent = match name.rsplit_once("::") {
        Some((p, _)) => p.to_string(),
        None => return deps,
    };
    for (i, _) in src.match_indices("super::") {
        let word: String = src[i + "super::".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let cand = format!("{parent}::{word}");
        if mods.contains_key(&cand) {
            deps.insert(cand);
        }
    }
    deps
}

#[test]
fn unsafe_code_lives_in_os_only() {
    for (name, src) in modules() {
        if name == "os" || name.starts_with("os::") {
            continue;
        }
        let has_unsafe = src
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .any(|w| w == "unsafe");
        assert!(!has_unsafe, "`unsafe` in src/{}", name.replace("::", "/"));
    }
}

#[test]
fn os_imports_nothing_of_the_crate() {
    let mods = modules();
    let mut checked = 0;
    for (name, src) in &mods {
        if name != "os" && !name.starts_with("os::") {
            continue;
        }
        checked += 1;
        let deps: Vec<String> = crate_deps(src, &mods)
            .into_iter()
            .filter(|d| d != "os" && !d.starts_with("os::"))
            .collect();
        assert!(deps.is_empty(), "{name} depends on {deps:?}");
    }
    assert!(checked > 5, "the os modules were not found");
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mods = modules();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, src) in &mods {
        let mut deps = crate_deps(src, &mods);
        deps.extend(super_deps(name, src, &mods));
        // A module may use its own parent (which declares it) and children.
        deps.retain(|d| d != name && !name.starts_with(&format!("{d}::")));
        deps.retain(|d| !d.starts_with(&format!("{name}::")));
        edges.insert(name.clone(), deps);
    }
    // Depth-first search for a path back to the start.
    for start in edges.keys() {
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    panic!("module cycle: {} -> {start}", path.join(" -> "));
                }
                if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
}

/// Every source file the README, the guides in docs/ and bench/README.md
/// name exists:
/// a path (`src/master/fleet.rs`, `tests/it/`) at that place, a bare file
/// name (`oneline.rs`) somewhere in the tree.
#[test]
fn the_docs_name_only_files_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    stack.push(p);
                }
            } else {
                names.insert(name);
            }
        }
    }
    let token = regex::Regex::new(r"[A-Za-z0-9_./-]+\.(?:rs|py|toml|md)\b|\b(?:src|tests|bench|examples|deploy|docs|scripts)/[A-Za-z0-9_/.-]*").unwrap();
    let mut missing = Vec::new();
    let mut docs = vec!["README.md".to_string(), "bench/README.md".to_string()];
    for e in std::fs::read_dir(root.join("docs")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            docs.push(format!("docs/{name}"));
        }
    }
    for doc in &docs {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for m in token.find_iter(&text) {
            let t = m.as_str().trim_end_matches('.');
            let first = t.split('/').next().unwrap_or_default();
            let found = if t.starts_with('/') {
                true // a path on the user's machine (/etc/rsvisor/app.toml)
            } else if t.split('/').any(|c| c.starts_with('.') && c.len() > 1) {
                // Hidden paths (bench/.venv) are made by the scripts, not
                // kept in the tree; whether they exist here depends on
                // what ran before, so they are not checked.
                true
            } else if !t.contains('/') {
                names.contains(t)
            } else if root.join(first).is_dir() {
                root.join(t).exists()
            } else if root.join("src").join(first).is_dir() {
                root.join("src").join(t).exists()
            } else {
                true // not a path of this tree (a library's, in a backtrace)
            };
            if !found {
                missing.push(format!("{doc}: {t}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named but not in the tree:\n{}",
        missing.join("\n")
    );
}

/// The README is a front page: what rsvisor is, how to install it, a quick
/// start each for Python and Rust, the command line and links; the rest
/// lives in docs/.
#[test]
fn the_readme_stays_a_front_page() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 400, "README.md has {lines} lines (at most 400)");
    for guide in [
        "docs/configuration.md",
        "docs/operations.md",
        "docs/deployment.md",
        "docs/python.md",
        "docs/embedding.md",
        "docs/monitoring.md",
        "bench/README.md",
    ] {
        assert!(
            readme.contains(&format!("]({guide})")),
            "README links {guide}"
        );
        assert!(root.join(guide).is_file(), "{guide}");
    }
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every link between the Markdown files of the repository leads to a
/// file that exists and, with `#…`, to a heading it has.
#[test]
fn links_between_the_docs_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![root.join("README.md"), root.join("bench/README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "md") {
            docs.push(e.path());
        }
    }
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut broken = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for m in link.captures_iter(&text) {
            let target = &m[1];
            if target.starts_with("http") || target.starts_with("mailto:") {
                continue;
            }
            let (file, frag) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            if !path.exists() {
                broken.push(format!("{}: {target}", doc.display()));
                continue;
            }
            if frag.is_empty() {
                continue;
            }
            let body = std::fs::read_to_string(&path).unwrap_or_default();
            let mut fence = false;
            let found = body.lines().any(|l| {
                if l.starts_with("```") {
                    fence = !fence;
                }
                !fence && l.starts_with('#') && anchor(l.trim_start_matches('#')) == frag
            });
            if !found {
                broken.push(format!("{}: {target} (no such heading)", doc.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The architecture guide names every file under `src/` by its path, and
/// the crate root holds at most 12 modules besides `lib.rs` and `main.rs`.
#[test]
fn every_module_file_is_in_the_architecture_guide() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if !guide.contains(&format!("`{rel}`")) {
                    missing.push(rel);
                }
            }
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md does not name:\n{}",
        missing.join("\n")
    );
    let entries: Vec<String> = std::fs::read_dir(root.join("src"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lib.rs" && n != "main.rs")
        .collect();
    assert!(entries.len() <= 12, "src/ holds {entries:?}");
}
