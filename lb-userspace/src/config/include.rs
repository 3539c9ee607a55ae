//! `include = ["conf.d/*.toml"]`: routes, clusters and consumers split across files.
//!
//! The main file names the files; each holds `[[routes]]`, `[[clusters]]` and `[[consumers]]`
//! entries only. They are appended in order: the main file's first, then each pattern's files
//! sorted by name. A name defined twice (a cluster, a consumer, a named route) is refused with
//! both places. Errors in an included entry name that file and the entry's index in it.

use std::path::{Path, PathBuf};

use super::{ConfigError, ConfigErrors};

/// The sections an included file may hold.
pub const SECTIONS: [&str; 3] = ["routes", "clusters", "consumers"];

/// Where each entry of the merged sections came from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Origins {
    /// The included files, in the order they were merged.
    pub files: Vec<PathBuf>,
    /// Per section (as in [`SECTIONS`]), per merged index: the file (an index into `files`)
    /// and the entry's index in it. Entries of the main file are not listed: they come first.
    entries: [Vec<(usize, usize)>; 3],
    /// Entries of the main file, per section.
    main: [usize; 3],
}

impl Origins {
    /// Points `e` at the included file its key path is in, if it is in one.
    pub fn locate(&self, e: &mut ConfigError) {
        if e.file.is_some() {
            return;
        }
        for (s, section) in SECTIONS.iter().enumerate() {
            let Some(rest) = e
                .path
                .strip_prefix(section)
                .and_then(|r| r.strip_prefix('['))
            else {
                continue;
            };
            let Some((index, tail)) = rest.split_once(']') else {
                return;
            };
            let Ok(index) = index.parse::<usize>() else {
                return;
            };
            let Some(&(file, k)) = index
                .checked_sub(self.main[s])
                .and_then(|i| self.entries[s].get(i))
            else {
                return;
            };
            e.path = format!("{section}[{k}]{tail}");
            e.file = Some(self.files[file].clone());
            return;
        }
    }
}

/// The main file's table with every included file merged in, where each came from, and the
/// text of all files (what the config's version is a hash of).
pub struct Merged {
    pub table: toml::Table,
    pub origins: Origins,
    pub text: String,
}

fn error(file: Option<&Path>, path: &str, message: String) -> ConfigError {
    ConfigError {
        path: path.into(),
        message,
        file: file.map(Path::to_path_buf),
    }
}

/// Merges the files `text` (the main file, at `file`) includes. `Ok(None)` if it includes
/// none: the caller reads it as usual.
pub fn merge(text: &str, file: &Path) -> Result<Option<Merged>, ConfigErrors> {
    let wrap = |errors| ConfigErrors {
        file: file.to_path_buf(),
        errors,
    };
    let mut table: toml::Table = match text.parse() {
        Ok(t) => t,
        // Not TOML: the usual parse says where.
        Err(_) => return Ok(None),
    };
    let Some(include) = table.remove("include") else {
        return Ok(None);
    };
    let patterns: Vec<String> = match include {
        toml::Value::Array(list) => {
            let mut out = Vec::new();
            for (i, v) in list.into_iter().enumerate() {
                match v {
                    toml::Value::String(s) => out.push(s),
                    _ => {
                        return Err(wrap(vec![error(
                            None,
                            &format!("include[{i}]"),
                            "expected a file name or pattern such as \"conf.d/*.toml\"".into(),
                        )]))
                    }
                }
            }
            out
        }
        _ => {
            return Err(wrap(vec![error(
                None,
                "include",
                "expected a list of files or patterns, such as [\"conf.d/*.toml\"]".into(),
            )]))
        }
    };
    // `lb check --config lb.toml`: the parent of a bare name is "", which means ".".
    let base = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut files = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        match expand(base, p) {
            Ok(found) => {
                for f in found {
                    if !files.contains(&f) {
                        files.push(f);
                    }
                }
            }
            Err(message) => return Err(wrap(vec![error(None, &format!("include[{i}]"), message)])),
        }
    }
    // A pattern that matches the main file itself (`*.toml` beside it) does not include it.
    let main = std::fs::canonicalize(file).ok();
    files.retain(|f| std::fs::canonicalize(f).ok() != main || main.is_none());
    // A section that is not a list: the usual parse says so.
    let Some(main) = main_entries(&table) else {
        return Ok(None);
    };
    let mut origins = Origins {
        main,
        ..Origins::default()
    };
    let mut all_text = text.to_string();
    let mut errors = Vec::new();
    for path in &files {
        let shown = path.strip_prefix(base).unwrap_or(path).to_path_buf();
        let t = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(error(
                    Some(&shown),
                    ".",
                    format!("cannot read the file: {e}"),
                ));
                continue;
            }
        };
        all_text.push_str(&format!("\n# include {}\n", shown.display()));
        all_text.push_str(&t);
        let part: toml::Table = match t.parse() {
            Ok(p) => p,
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| t[..s.start.min(t.len())].matches('\n').count() + 1);
                let message = e.message().to_string();
                let message = match line {
                    Some(l) => format!("{message} (line {l})"),
                    None => message,
                };
                errors.push(error(Some(&shown), ".", message));
                continue;
            }
        };
        let index = origins.files.len();
        origins.files.push(shown.clone());
        for (key, value) in part {
            let Some(s) = SECTIONS.iter().position(|x| *x == key) else {
                errors.push(error(
                    Some(&shown),
                    &key,
                    "an included file holds only [[routes]], [[clusters]] and [[consumers]]; put the rest in the main file".into(),
                ));
                continue;
            };
            append(
                &mut table,
                &mut origins,
                (s, key, value),
                (index, &shown),
                &mut errors,
            );
        }
    }
    duplicates(&table, &origins, &mut errors);
    if !errors.is_empty() {
        return Err(wrap(errors));
    }
    Ok(Some(Merged {
        table,
        origins,
        text: all_text,
    }))
}

/// The text of the config file at `path` with its included files merged in (as one TOML
/// document; comments are lost only when it includes files). A document for etcd must not
/// hold `[source]`: that is each host's own.
pub fn flatten(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the file: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{}: {}", path.display(), e.message()))?;
    if table.contains_key("source") {
        return Err(format!(
            "{}: [source] belongs in each host's local file, not in the fleet's config",
            path.display()
        ));
    }
    if !table.contains_key("include") {
        return Ok(text);
    }
    match merge(&text, path).map_err(|e| e.to_string())? {
        Some(m) => toml::to_string(&m.table).map_err(|e| e.to_string()),
        None => Ok(text),
    }
}

/// A config document from elsewhere (etcd) merged into the local file: `name` says where it
/// is in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub name: String,
    pub text: String,
}

/// The local file `text` (at `file`) with its included files and then `doc` merged in. The
/// document may hold any section but `source` and `include`; its routes, clusters and
/// consumers come after the local file's, and any other section must be in one of the two.
/// `Ok(None)` when the local file is not TOML (the usual parse says where).
pub fn with_document(
    text: &str,
    file: &Path,
    doc: &Document,
) -> Result<Option<Merged>, ConfigErrors> {
    let mut merged = match merge(text, file)? {
        Some(m) => m,
        None => {
            let Ok(table) = text.parse::<toml::Table>() else {
                return Ok(None);
            };
            let Some(main) = main_entries(&table) else {
                return Ok(None);
            };
            let origins = Origins {
                main,
                ..Origins::default()
            };
            Merged {
                table,
                origins,
                text: text.to_string(),
            }
        }
    };
    let shown = PathBuf::from(&doc.name);
    let wrap = |errors| ConfigErrors {
        file: file.to_path_buf(),
        errors,
    };
    let part: toml::Table = doc.text.parse().map_err(|e: toml::de::Error| {
        let t = &doc.text;
        let line = e
            .span()
            .map(|s| t[..s.start.min(t.len())].matches('\n').count() + 1);
        let message = e.message().to_string();
        wrap(vec![error(
            Some(&shown),
            ".",
            match line {
                Some(l) => format!("{message} (line {l})"),
                None => message,
            },
        )])
    })?;
    let mut errors = Vec::new();
    let index = merged.origins.files.len();
    merged.origins.files.push(shown.clone());
    for (key, value) in part {
        if key == "source" || key == "include" {
            errors.push(error(
                Some(&shown),
                &key,
                format!("[{key}] belongs in each host's local file, not in the fleet's config"),
            ));
            continue;
        }
        if let Some(s) = SECTIONS.iter().position(|x| *x == key) {
            append(
                &mut merged.table,
                &mut merged.origins,
                (s, key, value),
                (index, &shown),
                &mut errors,
            );
            continue;
        }
        if merged.table.contains_key(&key) {
            errors.push(error(
                Some(&shown),
                &key,
                format!(
                    "{key} is also set in the local file {}: a section other than routes, clusters and consumers lives in one of the two",
                    file.display()
                ),
            ));
            continue;
        }
        merged.table.insert(key, value);
    }
    duplicates(&merged.table, &merged.origins, &mut errors);
    if !errors.is_empty() {
        return Err(wrap(errors));
    }
    merged.text.push_str(&format!("\n# {}\n", doc.name));
    merged.text.push_str(&doc.text);
    Ok(Some(merged))
}

/// Appends the entries of section `s` (`key`, `value`) from file `index` (`shown`) to the
/// merged table, noting where each came from. The merged section is a list or absent (its
/// caller checked).
fn append(
    table: &mut toml::Table,
    origins: &mut Origins,
    (s, key, value): (usize, String, toml::Value),
    (index, shown): (usize, &Path),
    errors: &mut Vec<ConfigError>,
) {
    let toml::Value::Array(entries) = value else {
        errors.push(error(
            Some(shown),
            &key,
            format!("expected [[{key}]] entries"),
        ));
        return;
    };
    origins.entries[s].extend((0..entries.len()).map(|k| (index, k)));
    if let toml::Value::Array(merged) = table
        .entry(key)
        .or_insert_with(|| toml::Value::Array(Vec::new()))
    {
        merged.extend(entries);
    }
}

/// How many entries of each section the main file has; `None` if one is not a list.
fn main_entries(table: &toml::Table) -> Option<[usize; 3]> {
    let mut out = [0; 3];
    for (s, section) in SECTIONS.iter().enumerate() {
        out[s] = match table.get(*section) {
            None => 0,
            Some(toml::Value::Array(a)) => a.len(),
            Some(_) => return None,
        };
    }
    Some(out)
}

/// A name defined twice across the files: both places.
fn duplicates(table: &toml::Table, origins: &Origins, errors: &mut Vec<ConfigError>) {
    for section in SECTIONS {
        let Some(toml::Value::Array(entries)) = table.get(section) else {
            continue;
        };
        let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let Some(name) = e.get("name").and_then(toml::Value::as_str) else {
                continue;
            };
            if let Some(&first) = seen.get(name) {
                let place = |i: usize| {
                    let mut e = error(None, &format!("{section}[{i}]"), String::new());
                    origins.locate(&mut e);
                    match &e.file {
                        Some(f) => format!("{} in {}", e.path, f.display()),
                        None => format!("{} in the main file", e.path),
                    }
                };
                let mut e = error(
                    None,
                    &format!("{section}[{i}].name"),
                    format!("{name:?} is defined twice: first at {}", place(first)),
                );
                origins.locate(&mut e);
                errors.push(e);
            } else {
                seen.insert(name, i);
            }
        }
    }
}

/// The files `pattern` names, relative to `base`: a path, or a path whose last part has `*`
/// and `?` wildcards (matching in that directory, sorted by name). A plain path must exist;
/// a pattern may match nothing (an empty `conf.d` is fine).
fn expand(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let full = base.join(pattern);
    let name = full
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{pattern:?} names no file"))?
        .to_string();
    let dir = full.parent().unwrap_or(base).to_path_buf();
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err(format!(
            "{pattern:?}: wildcards work in the file name only, not in directories"
        ));
    }
    if !name.contains(['*', '?']) {
        if !full.is_file() {
            return Err(format!("{} does not exist", full.display()));
        }
        return Ok(vec![full]);
    }
    let read = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mut out: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .filter(|e| {
            e.file_name()
                .to_str()
                // Editors' and package managers' leftovers are not config.
                .is_some_and(|n| !n.starts_with('.') && wildcard(&name, n))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Whether `text` matches `pattern`, where `*` is any run of characters and `?` any one.
fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The included files of the config at `path`, as they are now: what a file watch also
/// watches. Empty if it includes none or cannot be read.
pub fn included_files(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    if !text.contains("include") {
        return Vec::new();
    }
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    table
        .get("include")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_str)
        .flat_map(|p| expand(base, p).unwrap_or_default())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn wildcards_match_as_a_shell_does() {
        assert!(wildcard("*.toml", "api.toml"));
        assert!(wildcard("*.toml", ".toml"));
        assert!(!wildcard("*.toml", "api.toml.bak"));
        assert!(wildcard("api-?.toml", "api-1.toml"));
        assert!(!wildcard("api-?.toml", "api-10.toml"));
        assert!(wildcard("*", "anything"));
        assert!(wildcard("a*b*c", "aXXbYYc"));
        assert!(!wildcard("a*b*c", "aXXbYY"));
    }
}
