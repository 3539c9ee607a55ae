//! OpenAPI documents (3.0 and 3.1, JSON or YAML) and `lb openapi diff OLD NEW`: the breaking
//! changes between two versions of an API, by the rules API teams follow.
//!
//! Breaking:
//! - an endpoint (path and method) removed (a renamed one is a removal and an addition);
//! - a response field removed;
//! - a field's, parameter's or body's type changed;
//! - an optional request field or parameter made required, or a required one added;
//! - enum values removed;
//! - a stricter validation: a lower `maxLength`/`maximum`/`maxItems`, a higher
//!   `minLength`/`minimum`/`minItems`, a new or changed `pattern`, `additionalProperties`
//!   turned off.
//! - `null` no longer accepted in a request, or possible now in a response;
//! - a `oneOf`/`anyOf` alternative removed from a request or added to a response.
//!
//! `allOf` members are compared as the one schema they make.
//!
//! Compatible (listed): endpoints, methods, optional fields, parameters, response fields and
//! enum values added.

use serde_json::Value;

/// The operations of a path item.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Reads an OpenAPI document: JSON, or YAML (by its extension, or when it is not JSON).
pub fn load(path: &std::path::Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the file: {e}", path.display()))?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || text.trim_start().starts_with('{');
    let doc = if json {
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?
    } else {
        // The YAML loader expands aliases by copying: a small file could grow without bound.
        if yaml_alias(&text) {
            return Err(format!(
                "{}: YAML aliases (*name) are not supported; write the document out",
                path.display()
            ));
        }
        let docs = yaml_rust2::YamlLoader::load_from_str(&text)
            .map_err(|e| format!("{}: not YAML: {e}", path.display()))?;
        let first = docs
            .into_iter()
            .next()
            .ok_or_else(|| format!("{}: an empty document", path.display()))?;
        yaml_to_json(first).map_err(|e| format!("{}: {e}", path.display()))?
    };
    match doc.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.") => {}
        Some(v) => return Err(format!("{}: OpenAPI {v} is not 3.0 or 3.1", path.display())),
        None => {
            return Err(format!(
                "{}: no `openapi` version field: not an OpenAPI 3 document",
                path.display()
            ))
        }
    }
    if !doc.get("paths").is_some_and(Value::is_object) {
        return Err(format!("{}: `paths` must be a mapping", path.display()));
    }
    Ok(doc)
}

/// Whether YAML `text` uses an alias (`*name` where a value starts).
fn yaml_alias(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.split(" #").next().unwrap_or("");
        line.match_indices('*').any(|(i, _)| {
            let before = line[..i].trim_end();
            let next = line[i + 1..].chars().next();
            (before.is_empty() || before.ends_with([':', '-', '[', ',', '{']))
                && next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

fn yaml_to_json(y: yaml_rust2::Yaml) -> Result<Value, String> {
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::from(i),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::String(r), Value::Number),
        Yaml::String(s) => Value::String(s),
        Yaml::Array(a) => Value::Array(a.into_iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => {
            let mut m = serde_json::Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s,
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    Yaml::Real(r) => r,
                    other => return Err(format!("a mapping key that is not a scalar: {other:?}")),
                };
                m.insert(key, yaml_to_json(v)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not supported".into()),
        Yaml::BadValue => return Err("a value YAML could not read".into()),
    })
}

/// `lb openapi import`: route TOML for every path of `doc`, to `cluster`, under `prefix`.
/// A path without parameters becomes an exact `path`; one whose parameters fill whole
/// segments a `path_pattern` (`/users/:id`); one with a parameter inside a segment
/// (`/files/{name}.{ext}`) a `path_regex`. Each route matches the path's methods.
/// Each route validates its requests against the spec (`validate = { openapi = SPEC }`, with
/// the prefix).
pub fn import(doc: &Value, spec: &str, cluster: &str, prefix: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    // One line of comment, whatever the spec holds.
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let title = clean(doc["info"]["title"].as_str().unwrap_or("API"));
    let version = clean(doc["info"]["version"].as_str().unwrap_or(""));
    let mut out = format!(
        "# Routes for {title} {version}, made by `lb openapi import`: one per path, matching its methods.\n"
    );
    let mut names: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let full = format!("{prefix}{path}");
        let ms: Vec<String> = methods(item).iter().map(|m| m.to_uppercase()).collect();
        if ms.is_empty() {
            continue;
        }
        let base = format!("{cluster}-{}", slug(path));
        let mut name = base.clone();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        names.push(name.clone());
        let matcher = match path_matcher(&full) {
            PathKind::Exact(p) => format!("path = {}", toml_string(&p)),
            PathKind::Pattern(p) => format!("path_pattern = {}", toml_string(&p)),
            PathKind::Regex(r) => format!("path_regex = {}", toml_string(&r)),
        };
        let methods = ms
            .iter()
            .map(|m| toml_string(m))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "\n[[routes]]\nname = {}\n{matcher}\nmethods = [{methods}]\ncluster = {}\nvalidate = {{ openapi = {}, prefix = {} }}\n",
            toml_string(&name),
            toml_string(cluster),
            toml_string(spec),
            toml_string(prefix),
        ));
    }
    out
}

enum PathKind {
    Exact(String),
    Pattern(String),
    Regex(String),
}

fn path_matcher(path: &str) -> PathKind {
    if !path.contains('{') {
        return PathKind::Exact(path.to_string());
    }
    // Parameters that fill whole segments: a pattern, if lb reads it back as one (distinct
    // names, no `:` or `*` in literal segments); anything else a regex.
    let segs: Vec<&str> = path.split('/').collect();
    let whole = |s: &str| s.starts_with('{') && s.ends_with('}') && s.matches('{').count() == 1;
    if segs.iter().all(|s| !s.contains('{') || whole(s)) {
        let pattern = segs
            .iter()
            .map(|s| {
                if whole(s) {
                    let name: String = s[1..s.len() - 1]
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    format!(":{name}")
                } else {
                    s.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        if crate::routing::matchers::Pattern::parse(&pattern).is_ok() {
            return PathKind::Pattern(pattern);
        }
    }
    let mut re = String::from("^");
    let mut literal = String::new();
    let mut inside = false;
    for c in path.chars() {
        match c {
            '{' => {
                re.push_str(&regex::escape(&literal));
                literal.clear();
                inside = true;
                re.push_str("[^/]+");
            }
            '}' => inside = false,
            _ if inside => {}
            c => literal.push(c),
        }
    }
    re.push_str(&regex::escape(&literal));
    re.push('$');
    PathKind::Regex(re)
}

fn slug(path: &str) -> String {
    let s: String = path
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let parts: Vec<&str> = s.split('-').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        "root".into()
    } else {
        parts.join("-")
    }
}

fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// One difference, breaking or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub breaking: bool,
    pub text: String,
}

/// Every difference from `old` to `new`, breaking ones first.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut d = Diff {
        old,
        new,
        out: Vec::new(),
        refs: Vec::new(),
    };
    let paths = |doc: &Value| -> Vec<(String, String)> {
        doc["paths"]
            .as_object()
            .map(|m| {
                m.keys()
                    .map(|k| (normal_path(k), k.clone()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let (old_paths, new_paths) = (paths(old), paths(new));
    for (norm, o) in &old_paths {
        let Some((_, n)) = new_paths.iter().find(|(x, _)| x == norm) else {
            for m in methods(&old["paths"][o]) {
                d.breaking(format!("{} {o}: endpoint removed", m.to_uppercase()));
            }
            continue;
        };
        let (oi, ni) = (&old["paths"][o], &new["paths"][n]);
        for m in methods(oi) {
            if ni.get(m).is_none() {
                d.breaking(format!("{} {o}: endpoint removed", m.to_uppercase()));
                continue;
            }
            let at = format!("{} {n}", m.to_uppercase());
            d.operation(&at, (o, oi, &oi[m]), (n, ni, &ni[m]));
        }
        for m in methods(ni) {
            if oi.get(m).is_none() {
                d.compatible(format!("{} {n}: endpoint added", m.to_uppercase()));
            }
        }
    }
    for (norm, n) in &new_paths {
        if !old_paths.iter().any(|(x, _)| x == norm) {
            for m in methods(&new["paths"][n]) {
                d.compatible(format!("{} {n}: endpoint added", m.to_uppercase()));
            }
        }
    }
    let mut out = d.out;
    out.sort_by_key(|c| !c.breaking);
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| seen.insert(c.text.clone()));
    out
}

/// A path template with its parameter names left out: `/users/{id}` and `/users/{userId}`
/// are one endpoint.
fn normal_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut inside = false;
    for c in p.chars() {
        match c {
            '{' => {
                inside = true;
                out.push_str("{}");
            }
            '}' => inside = false,
            c if !inside => out.push(c),
            _ => {}
        }
    }
    out
}

/// The parameter names of a path template, in order.
fn placeholders(p: &str) -> Vec<String> {
    p.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string()))
        .collect()
}

fn methods(item: &Value) -> Vec<&'static str> {
    METHODS
        .iter()
        .copied()
        .filter(|m| item.get(m).is_some())
        .collect()
}

/// Which way data flows through a schema: what the client sends, or what it receives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

struct Diff<'a> {
    old: &'a Value,
    new: &'a Value,
    out: Vec<Change>,
    /// The `$ref` pairs being compared on the way here: a schema that refers to itself is
    /// compared once.
    refs: Vec<(String, String)>,
}

/// How deep schemas are followed (through `$ref`s, properties and items).
const MAX_DEPTH: usize = 32;

impl Diff<'_> {
    fn breaking(&mut self, text: String) {
        self.out.push(Change {
            breaking: true,
            text,
        });
    }

    fn compatible(&mut self, text: String) {
        self.out.push(Change {
            breaking: false,
            text,
        });
    }

    /// Compares one operation: `(path template, path item, operation)` of each side.
    fn operation(&mut self, at: &str, old: (&str, &Value, &Value), new: (&str, &Value, &Value)) {
        let ((opath, oi, o), (npath, ni, n)) = (old, new);
        // Parameters: path-item ones and the operation's, each with its key: (in, name), and
        // for a path parameter its place in the template (a renamed one is the same).
        let params = |path: &str, item: &Value, op: &Value, doc: &Value| -> Vec<(String, Value)> {
            let mut list: Vec<(String, Value)> = Vec::new();
            for p in [&item["parameters"], &op["parameters"]] {
                for v in p.as_array().into_iter().flatten() {
                    let v = resolve(doc, v, 0).clone();
                    let name = v["name"].as_str().unwrap_or("");
                    let key = match v["in"].as_str() {
                        Some("path") => format!(
                            "path#{}",
                            placeholders(path)
                                .iter()
                                .position(|p| p == name)
                                .map_or(name.to_string(), |i| i.to_string())
                        ),
                        other => format!("{}:{name}", other.unwrap_or("?")),
                    };
                    list.retain(|(k, _)| *k != key);
                    list.push((key, v));
                }
            }
            list
        };
        let op_params = params(opath, oi, o, self.old);
        let np_params = params(npath, ni, n, self.new);
        for (key, p) in &op_params {
            let what = format!(
                "{at}: {} parameter {}",
                p["in"].as_str().unwrap_or("?"),
                p["name"].as_str().unwrap_or("?")
            );
            match np_params.iter().find(|(k, _)| k == key).map(|(_, q)| q) {
                None => self.compatible(format!("{what} removed")),
                Some(q) => {
                    if q["required"] == true && p["required"] != true {
                        self.breaking(format!("{what} is required now"));
                    }
                    self.schema(&what, Side::Request, &p["schema"], &q["schema"], 0);
                }
            }
        }
        for (key, q) in &np_params {
            if !op_params.iter().any(|(k, _)| k == key) {
                let what = format!(
                    "{at}: {} parameter {}",
                    q["in"].as_str().unwrap_or("?"),
                    q["name"].as_str().unwrap_or("?")
                );
                if q["required"] == true {
                    self.breaking(format!("{what} added as required"));
                } else {
                    self.compatible(format!("{what} added"));
                }
            }
        }
        // The request body's JSON schema.
        let (ob, nb) = (
            resolve(self.old, &o["requestBody"], 0),
            resolve(self.new, &n["requestBody"], 0),
        );
        if nb["required"] == true && ob["required"] != true {
            self.breaking(format!("{at}: the request body is required now"));
        }
        if let (Some(os), Some(ns)) = (json_schema(ob), json_schema(nb)) {
            self.schema(&format!("{at}: request body"), Side::Request, os, ns, 0);
        }
        // Responses: each status both have, by its JSON schema.
        let (or, nr) = (&o["responses"], &n["responses"]);
        for (status, orv) in or.as_object().into_iter().flatten() {
            let Some(nrv) = nr.get(status) else {
                if status.starts_with('2') {
                    self.breaking(format!("{at}: response {status} removed"));
                }
                continue;
            };
            let (orv, nrv) = (resolve(self.old, orv, 0), resolve(self.new, nrv, 0));
            if let (Some(os), Some(ns)) = (json_schema(orv), json_schema(nrv)) {
                self.schema(
                    &format!("{at}: response {status}"),
                    Side::Response,
                    os,
                    ns,
                    0,
                );
            }
        }
    }

    /// Compares two schemas of one place (`at`), on `side`.
    fn schema(&mut self, at: &str, side: Side, o: &Value, n: &Value, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let pair = (
            o.get("$ref")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            n.get("$ref")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        );
        let referenced = !pair.0.is_empty() || !pair.1.is_empty();
        if referenced {
            if self.refs.contains(&pair) {
                return;
            }
            self.refs.push(pair);
        }
        self.schema_inner(at, side, o, n, depth);
        if referenced {
            self.refs.pop();
        }
    }

    fn schema_inner(&mut self, at: &str, side: Side, o: &Value, n: &Value, depth: usize) {
        let (old, new) = (self.old, self.new);
        let (o, n) = (resolve(old, o, 0), resolve(new, n, 0));
        if o.is_null() || n.is_null() {
            return;
        }
        // `allOf` members are compared as the one schema they make.
        let (o, n) = (flatten(old, o, 0), flatten(new, n, 0));
        let (o, n) = (o.as_ref(), n.as_ref());
        let (ot, nt) = (type_of(o), type_of(n));
        if ot.is_some() && nt.is_some() && ot != nt {
            self.breaking(format!(
                "{at}: type changed from {} to {}",
                ot.unwrap_or_default(),
                nt.unwrap_or_default()
            ));
            return;
        }
        // Enum values.
        // Enum values: a client may send only the old ones (a removal breaks it) and must
        // understand every one it may receive (an addition breaks it).
        self.nullability(at, side, o, n);
        self.alternatives(at, side, o, n, depth);
        if let (Some(oe), Some(ne)) = (o["enum"].as_array(), n["enum"].as_array()) {
            for v in oe.iter().filter(|v| !ne.contains(v)) {
                let text = format!("{at}: enum value {v} removed");
                match side {
                    Side::Request => self.breaking(text),
                    Side::Response => self.compatible(text),
                }
            }
            for v in ne.iter().filter(|v| !oe.contains(v)) {
                let text = format!("{at}: enum value {v} added");
                match side {
                    Side::Request => self.compatible(text),
                    Side::Response => self.breaking(text),
                }
            }
        }
        if side == Side::Request {
            self.stricter(at, o, n);
        }
        // Object properties.
        let (op, np) = (o["properties"].as_object(), n["properties"].as_object());
        let required = |s: &Value, name: &str| {
            s["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == name))
        };
        if let (Some(op), Some(np)) = (op, np) {
            for (name, os) in op {
                let field = format!("{at}: field {name}");
                match np.get(name) {
                    None if side == Side::Response => self.breaking(format!("{field} removed")),
                    None => self.compatible(format!("{field} removed")),
                    Some(ns) => {
                        if side == Side::Request && required(n, name) && !required(o, name) {
                            self.breaking(format!("{field} is required now"));
                        }
                        self.schema(&field, side, os, ns, depth + 1);
                    }
                }
            }
            for name in np.keys().filter(|k| !op.contains_key(*k)) {
                let field = format!("{at}: field {name}");
                // A read-only field is never sent by clients.
                let read_only = np[name]["readOnly"] == true;
                if side == Side::Request && required(n, name) && !read_only {
                    self.breaking(format!("{field} added as required"));
                } else {
                    self.compatible(format!("{field} added"));
                }
            }
        }
        // Array items.
        if o.get("items").is_some() && n.get("items").is_some() {
            self.schema(
                &format!("{at}[]"),
                side,
                &o["items"],
                &n["items"],
                depth + 1,
            );
        }
    }

    /// `null` accepted or sent (3.0's `nullable`, 3.1's `"null"` type): a request that no
    /// longer takes it, or a response that may now hold it, breaks clients.
    fn nullability(&mut self, at: &str, side: Side, o: &Value, n: &Value) {
        let nullable = |s: &Value| {
            s["nullable"] == true
                || s["type"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == "null"))
        };
        match (side, nullable(o), nullable(n)) {
            (Side::Request, true, false) => self.breaking(format!("{at}: null no longer accepted")),
            (Side::Request, false, true) => self.compatible(format!("{at}: null accepted now")),
            (Side::Response, false, true) => self.breaking(format!("{at}: may be null now")),
            (Side::Response, true, false) => self.compatible(format!("{at}: never null now")),
            _ => {}
        }
    }

    /// `oneOf` and `anyOf`: an alternative removed from what clients send, or added to what
    /// they receive, breaks them; alternatives in the same place are compared one to one.
    fn alternatives(&mut self, at: &str, side: Side, o: &Value, n: &Value, depth: usize) {
        for key in ["oneOf", "anyOf"] {
            match (o[key].as_array(), n[key].as_array()) {
                (Some(oa), Some(na)) => {
                    if na.len() < oa.len() {
                        let text = format!("{at}: {key} alternative removed");
                        match side {
                            Side::Request => self.breaking(text),
                            Side::Response => self.compatible(text),
                        }
                    }
                    if na.len() > oa.len() {
                        let text = format!("{at}: {key} alternative added");
                        match side {
                            Side::Request => self.compatible(text),
                            Side::Response => self.breaking(text),
                        }
                    }
                    for (i, (a, b)) in oa.iter().zip(na).enumerate() {
                        self.schema(&format!("{at} ({key}[{i}])"), side, a, b, depth + 1);
                    }
                }
                (None, Some(_)) if side == Side::Request => {
                    self.breaking(format!("{at}: stricter validation: {key} added"));
                }
                _ => {}
            }
        }
    }

    /// A request schema that accepts less than before.
    fn stricter(&mut self, at: &str, o: &Value, n: &Value) {
        let num = |s: &Value, k: &str| s[k].as_f64();
        for (k, lower_is_stricter) in [
            ("maxLength", true),
            ("maximum", true),
            ("maxItems", true),
            ("maxProperties", true),
            ("minLength", false),
            ("minimum", false),
            ("minItems", false),
            ("minProperties", false),
        ] {
            let stricter = match (num(o, k), num(n, k)) {
                (None, Some(_)) => true,
                (Some(a), Some(b)) => {
                    if lower_is_stricter {
                        b < a
                    } else {
                        b > a
                    }
                }
                _ => false,
            };
            if stricter {
                self.breaking(format!(
                    "{at}: stricter validation: {k} {} -> {}",
                    o[k], n[k]
                ));
            }
        }
        if n.get("pattern").is_some() && o.get("pattern") != n.get("pattern") {
            self.breaking(format!(
                "{at}: stricter validation: pattern {} -> {}",
                o["pattern"], n["pattern"]
            ));
        }
        if n["additionalProperties"] == false && o["additionalProperties"] != false {
            self.breaking(format!(
                "{at}: stricter validation: additionalProperties turned off"
            ));
        }
    }
}

/// The JSON media type's schema of a request body or response.
fn json_schema(v: &Value) -> Option<&Value> {
    let content = v["content"].as_object()?;
    content
        .iter()
        .find(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.starts_with("application/json") || k.ends_with("+json")
        })
        .map(|(_, m)| &m["schema"])
        .filter(|s| !s.is_null())
}

/// `s` with its `allOf` members merged in (after their `$ref`s): properties, required
/// fields and the first type, enum and bounds each member gives. Nested `allOf`s merge too,
/// at most [`MAX_DEPTH`] deep.
fn flatten<'a>(doc: &'a Value, s: &'a Value, depth: usize) -> std::borrow::Cow<'a, Value> {
    use std::borrow::Cow;
    let Some(members) = s.get("allOf").and_then(Value::as_array) else {
        return Cow::Borrowed(s);
    };
    if depth >= MAX_DEPTH {
        return Cow::Borrowed(s);
    }
    let mut out = s.as_object().cloned().unwrap_or_default();
    out.remove("allOf");
    for m in members {
        let m = flatten(doc, resolve(doc, m, 0), depth + 1);
        let Some(m) = m.as_object() else { continue };
        for (k, v) in m {
            match (k.as_str(), out.get_mut(k)) {
                ("properties", Some(Value::Object(props))) => {
                    if let Value::Object(more) = v {
                        for (name, p) in more {
                            props.entry(name.clone()).or_insert_with(|| p.clone());
                        }
                    }
                }
                ("required", Some(Value::Array(req))) => {
                    for r in v.as_array().into_iter().flatten() {
                        if !req.contains(r) {
                            req.push(r.clone());
                        }
                    }
                }
                (_, Some(_)) => {}
                (_, None) => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Cow::Owned(Value::Object(out))
}

/// `v` with local `$ref`s followed (`#/components/...`), at most [`MAX_DEPTH`] of them.
fn resolve<'a>(doc: &'a Value, v: &'a Value, depth: usize) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) if depth < MAX_DEPTH => match r.strip_prefix('#') {
            Some(pointer) => match doc.pointer(pointer) {
                Some(target) => resolve(doc, target, depth + 1),
                None => &Value::Null,
            },
            None => &Value::Null,
        },
        _ => v,
    }
}

/// A schema's type: `type` (3.1 may list several, with "null"), or `object`/`array` from
/// `properties`/`items`.
fn type_of(s: &Value) -> Option<String> {
    match &s["type"] {
        Value::String(t) => Some(t.clone()),
        Value::Array(list) => {
            let mut names: Vec<&str> = list
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            names.sort_unstable();
            (!names.is_empty()).then(|| names.join("|"))
        }
        _ if s.get("properties").is_some() => Some("object".into()),
        _ if s.get("items").is_some() => Some("array".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_are_one_endpoint_whatever_their_names() {
        assert_eq!(
            normal_path("/users/{id}/x"),
            normal_path("/users/{userId}/x")
        );
        assert_ne!(normal_path("/users/{id}"), normal_path("/users"));
    }

    #[test]
    fn yaml_converts_to_json() {
        let y = yaml_rust2::YamlLoader::load_from_str("a: 1\nb: [x, 2.5, true, ~]\n200: ok\n")
            .expect("yaml")
            .remove(0);
        let v = yaml_to_json(y).expect("json");
        assert_eq!(
            v,
            serde_json::json!({ "a": 1, "b": ["x", 2.5, true, null], "200": "ok" })
        );
    }
}
