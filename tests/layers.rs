//! The module layers of `lb-userspace` stay acyclic: a stage never imports a module that
//! imports it back (see `docs/architecture.md`, "Layers"). Checked on the source text: every
//! `crate::MODULE` path outside test code is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn collect(dir: &Path, root: &Path, graph: &mut BTreeMap<String, BTreeSet<String>>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect(&path, root, graph);
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".rs") || name == "tests.rs" {
            continue;
        }
        let rel = path.strip_prefix(root).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read file");
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let deps = graph.entry(top.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let module: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !module.is_empty() && module != top {
                deps.insert(module);
            }
        }
    }
}

/// A cycle through `node`, if there is one reachable from it.
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|p| p == node) {
        let mut c = path[at..].to_vec();
        c.push(node.to_string());
        return Some(c);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for dep in graph.get(node).into_iter().flatten() {
        if graph.contains_key(dep) {
            if let Some(c) = cycle(graph, dep, path, done) {
                return Some(c);
            }
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn module_imports_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    collect(&src, &src, &mut graph);
    assert!(graph.len() > 15, "found only {:?}", graph.keys());
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = cycle(&graph, node, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
    // The bottom stays at the bottom.
    for leaf in ["http", "hash", "metrics", "steering", "clock"] {
        assert!(
            graph[leaf]
                .iter()
                .all(|d| !graph.contains_key(d) || d == "clock"),
            "{leaf} imports {:?}",
            graph[leaf]
        );
    }
}

/// The line with string and character literals blanked, so that braces in them do not
/// count (a raw string's text is rare in `proxy/` and has no unbalanced braces).
fn code_of(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        match (in_str, c) {
            (true, '\\') => {
                chars.next();
            }
            (true, '"') => in_str = false,
            (true, _) => {}
            (false, '"') => in_str = true,
            (false, '/') if chars.peek() == Some(&'/') => break,
            (false, '\'') => {
                // A character literal ('{', '\'') or a lifetime ('a).
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with('\\') {
                    chars.nth(2);
                } else if rest.chars().nth(1) == Some('\'') {
                    chars.nth(1);
                }
            }
            (false, c) => out.push(c),
        }
    }
    out
}

/// Functions in `path` (before its test module) longer than `max` lines: (name, lines).
fn long_functions(path: &Path, max: usize) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(path).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let mut long = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let name = ["fn ", "async fn "]
            .iter()
            .find_map(|k| {
                line.split_once(k)
                    .filter(|(before, _)| !before.contains("//"))
            })
            .map(|(_, after)| after.split(['(', '<']).next().unwrap_or("").to_string());
        let Some(name) = name.filter(|n| !n.is_empty() && !line.starts_with("//")) else {
            i += 1;
            continue;
        };
        let (mut depth, mut opened, start) = (0i64, false, i);
        while i < lines.len() {
            let code = code_of(lines[i]);
            depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            opened |= code.contains('{');
            if (opened && depth <= 0) || (!opened && code.trim_end().ends_with(';')) {
                break;
            }
            i += 1;
        }
        if i + 1 - start > max {
            long.push((name, i + 1 - start));
        }
        i += 1;
    }
    long
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The request pipeline stays readable: no function in `proxy/` over 80 lines, and no
/// argument bundle big enough to need `too_many_arguments` (the phases take a context).
#[test]
fn proxy_functions_stay_short_and_take_a_context() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proxy");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    let mut problems = Vec::new();
    for f in &files {
        for (name, n) in long_functions(f, 80) {
            problems.push(format!("{}: fn {name} is {n} lines", f.display()));
        }
        let text = std::fs::read_to_string(f).expect("read");
        if text.contains("too_many_arguments") {
            problems.push(format!("{}: allows too_many_arguments", f.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_function_length_check_sees_long_functions() {
    let dir = std::env::temp_dir().join(format!("lb-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("long.rs");
    let body: String = (0..90)
        .map(|i| format!("    let _x{i} = '{{';\n"))
        .collect();
    std::fs::write(
        &f,
        format!("fn short() {{\n    let s = \"}}}}\";\n}}\n\nasync fn long(a: u8) {{\n{body}}}\n"),
    )
    .expect("write");
    let long = long_functions(&f, 80);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(long, vec![("long".to_string(), 92)]);
}
