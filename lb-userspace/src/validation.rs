//! Request validation against an API's description, compiled when the config is validated
//! (never per request):
//! - an OpenAPI 3.0 or 3.1 document: the operation by path and method, required query and
//!   header parameters, path, query and header parameters' types, the content type, and a
//!   JSON body's schema (with `$ref`s anywhere in the document);
//! - or plain JSON Schemas per method: the body of a JSON request.
//!
//! The request path reads the head's answer first ([`Spec::check_head`]); only when the
//! operation has a JSON body schema is the body buffered, up to a cap, and checked
//! ([`BodyCheck::check`]).

use std::sync::{Arc, OnceLock};

use serde_json::Value;

mod doc;

use doc::{Body, Doc};

/// The operations of a path item, as OpenAPI names them.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// At most this many failures are reported for one request.
const MAX_FAILURES: usize = 20;

/// What happens to a request that fails validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refused with a problem (`400`, or `404`/`405`/`415`) naming each failure.
    Enforce,
    /// Passed on, counted and logged: try a schema on real traffic before enforcing it.
    Report,
}

/// What happens to a body over the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// `413 Content Too Large`.
    Reject,
    /// Passed on without its body checked.
    Pass,
}

/// How a request's validation ended (a metric label and an access-log field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Valid = 0,
    Invalid = 1,
    /// The body was over the cap (refused with 413, or passed unchecked).
    TooLarge = 2,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::Invalid => "invalid",
            Outcome::TooLarge => "too_large",
        }
    }
}

/// Where in the request a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The path itself: no operation of the spec has it.
    Path,
    /// A path parameter's value.
    PathParam,
    Method,
    Query,
    Header,
    ContentType,
    Body,
}

impl Place {
    pub fn name(self) -> &'static str {
        match self {
            Place::Path | Place::PathParam => "path",
            Place::Method => "method",
            Place::Query => "query",
            Place::Header => "header",
            Place::ContentType => "content-type",
            Place::Body => "body",
        }
    }

    /// The status a failure here answers with: an unknown path `404`, an unknown method
    /// `405`, a content type the operation does not take `415`, anything else `400`.
    fn status(self) -> u16 {
        match self {
            Place::Path => 404,
            Place::Method => 405,
            Place::ContentType => 415,
            _ => 400,
        }
    }
}

/// One way a request does not match its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub place: Place,
    /// A JSON pointer into the body (`/address/city`), or the parameter's name.
    pub name: String,
    pub detail: String,
}

/// Why an encoded body is refused.
const ENCODED: &str = "an encoded body (Content-Encoding) cannot be validated; send it as is";

/// At most this many characters of a failure's text (the validator quotes the value).
const MAX_DETAIL: usize = 200;

/// The failures of one request.
#[derive(Debug, Default)]
pub struct Failures(pub Vec<Failure>, pub FailuresExtra);

/// What else a refusal says.
#[derive(Debug, Default)]
pub struct FailuresExtra {
    /// For a method the path does not have: the ones it has (`Allow`).
    pub allow: Option<String>,
}

impl Failures {
    pub fn push(&mut self, place: Place, name: impl Into<String>, detail: impl Into<String>) {
        if self.0.len() < MAX_FAILURES {
            self.0.push(Failure {
                place,
                name: clip(name.into()),
                detail: clip(detail.into()),
            });
        }
    }

    /// The methods the path has, for a method it does not (`Allow`).
    pub fn allow(&self) -> Option<&str> {
        self.1.allow.as_deref()
    }

    /// Whether there is room for another failure.
    pub fn full(&self) -> bool {
        self.0.len() >= MAX_FAILURES
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The answer's status: the most specific failure's (404, then 405, 415, 400).
    pub fn status(&self) -> u16 {
        let order = [404, 405, 415, 400];
        order
            .into_iter()
            .find(|s| self.0.iter().any(|f| f.place.status() == *s))
            .unwrap_or(400)
    }

    /// The RFC 9457 problem's extension members: each failure with where it is and why.
    pub fn json(&self) -> Value {
        let list: Vec<Value> = self
            .0
            .iter()
            .map(|f| {
                let key = if f.place == Place::Body {
                    "pointer"
                } else {
                    "name"
                };
                serde_json::json!({ "in": f.place.name(), key: f.name, "detail": f.detail })
            })
            .collect();
        Value::Array(list)
    }

    /// One line for a log: the first failure.
    pub fn summary(&self) -> String {
        match self.0.first() {
            None => String::new(),
            Some(f) if f.name.is_empty() => format!("{}: {}", f.place.name(), f.detail),
            Some(f) => format!("{} {}: {}", f.place.name(), f.name, f.detail),
        }
    }
}

/// `s`, cut to [`MAX_DETAIL`] characters (a validator's message quotes the value: a large
/// body must not come back whole, or fill a log).
fn clip(mut s: String) -> String {
    if let Some((at, _)) = s.char_indices().nth(MAX_DETAIL) {
        s.truncate(at);
        s.push('…');
    }
    s
}

/// A parameter's type, for reading its text as the schema expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Integer,
    Number,
    Boolean,
    /// Several values: repeated (`?id=1&id=2`) or comma-separated, each of the item type.
    Array(Scalar),
    /// Not checked against its schema (objects, `content`-described parameters).
    Opaque,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Text,
    Integer,
    Number,
    Boolean,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum In {
    Query,
    Header,
    Path,
}

#[derive(Debug)]
struct Param {
    name: String,
    at: In,
    required: bool,
    kind: Kind,
    /// Repeated query parameters (`form` style, the default) rather than one list.
    explode: bool,
    /// What separates a list's items in one value: `,`, or ` ` and `|` for the
    /// `spaceDelimited` and `pipeDelimited` styles.
    delimiter: char,
    /// Its schema's key in the compiled map.
    schema: Option<String>,
}

/// A media range an operation takes, and the schema of a JSON body of it.
#[derive(Debug)]
struct Media {
    /// `type/subtype`, lower-cased; either may be `*`.
    range: (String, String),
    schema: Option<String>,
}

#[derive(Debug)]
struct RequestBody {
    required: bool,
    media: Vec<Media>,
}

#[derive(Debug)]
struct Operation {
    params: Vec<Param>,
    body: Option<RequestBody>,
}

#[derive(Debug)]
struct PathItem {
    template: String,
    regex: regex::Regex,
    /// The path parameters' names, in the order of the regex's groups.
    names: Vec<String>,
    /// Upper-case methods and their operations.
    ops: Vec<(String, Operation)>,
}

enum Described {
    OpenApi {
        validators: jsonschema::ValidatorMap<Body>,
        /// Concrete paths first, then by fewer parameters: `/users/me` wins over
        /// `/users/{id}`.
        paths: Vec<PathItem>,
    },
    /// A JSON Schema for the body, per upper-case method.
    Schemas(Vec<(String, jsonschema::Validator<Body>)>),
}

/// A compiled API description.
pub struct Spec {
    described: Described,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.described {
            Described::OpenApi { paths, .. } => f
                .debug_struct("Spec")
                .field(
                    "paths",
                    &paths.iter().map(|p| &p.template).collect::<Vec<_>>(),
                )
                .finish(),
            Described::Schemas(s) => f
                .debug_struct("Spec")
                .field("methods", &s.iter().map(|(m, _)| m).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// The request as validation reads it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a [u8],
    /// The path as sent (no query), with the spec's prefix removed.
    pub path: &'a [u8],
    pub query: Option<&'a [u8]>,
    pub headers: &'a [httparse::Header<'a>],
    /// A body follows the head (not a zero length).
    pub has_body: bool,
}

/// What is left to check once the head passed: a JSON body against its schema.
pub struct BodyCheck<'s> {
    validator: &'s jsonschema::Validator<Body>,
}

impl Spec {
    /// Compiles an OpenAPI 3.0 or 3.1 document (as `lb openapi` reads it: JSON or YAML, as a JSON value).
    pub fn openapi(doc: &Value) -> Result<Spec, String> {
        let v31 = doc
            .get("openapi")
            .and_then(Value::as_str)
            .is_some_and(|v| v.starts_with("3.1"));
        let mut keys = Keys {
            defs: if v31 { "$defs" } else { "definitions" },
            list: Vec::new(),
        };
        let mut paths = Vec::new();
        let Some(items) = doc.get("paths").and_then(Value::as_object) else {
            return Err("`paths` must be a mapping".into());
        };
        for (template, item) in items {
            let item_ptr = format!("/paths/{}", escape(template));
            let (item, _) = follow(doc, item, &item_ptr)?;
            if !template.starts_with('/') {
                return Err(format!("path {template:?} does not start with '/'"));
            }
            let (regex, names) = template_regex(template)?;
            let shared = item.get("parameters");
            let mut ops = Vec::new();
            for m in METHODS {
                let Some(op) = item.get(m).filter(|o| o.is_object()) else {
                    continue;
                };
                let at = format!("{item_ptr}/{m}");
                let mut params = Vec::new();
                let lists = [
                    (shared, format!("{item_ptr}/parameters")),
                    (op.get("parameters"), format!("{at}/parameters")),
                ];
                for (list, ptr) in lists {
                    for (i, p) in list
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        let Some(p) = param(doc, p, &format!("{ptr}/{i}"), &mut keys)? else {
                            continue;
                        };
                        // An operation's parameter replaces the path's of the same name and
                        // place.
                        params.retain(|q: &Param| !(q.name == p.name && q.at == p.at));
                        params.push(p);
                    }
                }
                for n in &names {
                    if !params.iter().any(|p| p.at == In::Path && &p.name == n) {
                        // Undescribed, still a parameter: any text.
                        params.push(Param {
                            name: n.clone(),
                            at: In::Path,
                            required: true,
                            kind: Kind::Opaque,
                            explode: false,
                            delimiter: ',',
                            schema: None,
                        });
                    }
                }
                let body = match op.get("requestBody") {
                    None => None,
                    Some(b) => Some(request_body(
                        doc,
                        b,
                        &format!("{at}/requestBody"),
                        &mut keys,
                    )?),
                };
                ops.push((m.to_ascii_uppercase(), Operation { params, body }));
            }
            paths.push(PathItem {
                template: template.clone(),
                regex,
                names,
                ops,
            });
        }
        paths.sort_by_key(|p| p.names.len());
        dangling(doc, doc, "", 0)?;
        let validators = compile(doc, v31, &keys)?;
        Ok(Spec {
            described: Described::OpenApi { validators, paths },
        })
    }

    /// Compiles plain JSON Schemas for request bodies, per method (the draft from each
    /// schema's `$schema`, 2020-12 without one).
    pub fn schemas(list: &[(String, Value)]) -> Result<Spec, String> {
        let mut out = Vec::new();
        for (method, schema) in list {
            let v = jsonschema::options_for::<Body>()
                .should_validate_formats(true)
                .build(schema)
                .map_err(|e| format!("the {method} schema is not valid JSON Schema: {e}"))?;
            out.push((method.to_ascii_uppercase(), v));
        }
        Ok(Spec {
            described: Described::Schemas(out),
        })
    }

    /// Whether `path` (prefix removed) and `method` are an operation of the spec; `None`
    /// for plain schemas (they describe bodies, not paths).
    pub fn has(&self, path: &str, method: Option<&str>) -> Option<bool> {
        let Described::OpenApi { paths, .. } = &self.described else {
            return None;
        };
        Some(paths.iter().any(|p| {
            p.regex.is_match(path)
                && method.is_none_or(|m| p.ops.iter().any(|(om, _)| om.eq_ignore_ascii_case(m)))
        }))
    }

    /// The spec's paths (templates), for `lb check`.
    pub fn templates(&self) -> Vec<&str> {
        match &self.described {
            Described::OpenApi { paths, .. } => paths.iter().map(|p| p.template.as_str()).collect(),
            Described::Schemas(_) => Vec::new(),
        }
    }

    /// Checks what the head says: the operation, its parameters, the content type. Returns
    /// the body's check when the operation has a JSON schema for it and the body is JSON.
    pub fn check_head<'s>(
        &'s self,
        req: &Request<'_>,
        fails: &mut Failures,
    ) -> Option<BodyCheck<'s>> {
        let content_types = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-type"))
            .count();
        if content_types > 1 {
            // Which one counts is the reader's guess: the backend's may not be the one
            // checked.
            fails.push(Place::ContentType, "", "several Content-Type fields");
            return None;
        }
        let content_type = header(req.headers, "content-type");
        // A body lb cannot read as sent is not passed as checked.
        let encoded = req.has_body
            && header(req.headers, "content-encoding")
                .is_some_and(|e| !e.trim_ascii().eq_ignore_ascii_case(b"identity"));
        match &self.described {
            Described::Schemas(list) => {
                let m = std::str::from_utf8(req.method).unwrap_or("");
                let (_, v) = list.iter().find(|(lm, _)| lm == m)?;
                if !req.has_body {
                    fails.push(Place::Body, "", "a request body is required");
                    return None;
                }
                match content_type.map(media_type) {
                    Some(_) if encoded => {
                        fails.push(Place::ContentType, "", ENCODED);
                        None
                    }
                    Some(t) if is_json(&t) => Some(BodyCheck { validator: v }),
                    Some(t) => {
                        fails.push(
                            Place::ContentType,
                            "",
                            format!(
                                "{}/{} is not JSON; this API takes application/json",
                                t.0, t.1
                            ),
                        );
                        None
                    }
                    None => {
                        fails.push(
                            Place::ContentType,
                            "",
                            "Content-Type is missing; this API takes application/json",
                        );
                        None
                    }
                }
            }
            Described::OpenApi { validators, paths } => {
                let path = String::from_utf8_lossy(req.path);
                let Some((item, caps)) = paths
                    .iter()
                    .find_map(|p| p.regex.captures(&path).map(|c| (p, c)))
                else {
                    fails.push(
                        Place::Path,
                        path.as_ref(),
                        "no path of the API's spec matches",
                    );
                    return None;
                };
                let find = |m: &[u8]| item.ops.iter().find(|(om, _)| om.as_bytes() == m);
                // HEAD is GET without the body; OPTIONS (a CORS preflight, say) is not the
                // API's to describe: checked only where the spec has it.
                let found = match req.method {
                    b"HEAD" => find(b"HEAD").or_else(|| find(b"GET")),
                    b"OPTIONS" if find(b"OPTIONS").is_none() => return None,
                    m => find(m),
                };
                let Some((_, op)) = found else {
                    let allowed: Vec<&str> = item.ops.iter().map(|(m, _)| m.as_str()).collect();
                    fails.1.allow = Some(allowed.join(", "));
                    fails.push(
                        Place::Method,
                        String::from_utf8_lossy(req.method),
                        format!(
                            "{} does not take it; it takes {}",
                            item.template,
                            allowed.join(", ")
                        ),
                    );
                    return None;
                };
                let query = query_pairs(req.query.unwrap_or(b""));
                for p in &op.params {
                    let values: Vec<String> = match p.at {
                        In::Query => query
                            .iter()
                            .filter(|(k, _)| *k == p.name)
                            .map(|(_, v)| v.clone())
                            .collect(),
                        In::Header => req
                            .headers
                            .iter()
                            .filter(|h| h.name.eq_ignore_ascii_case(&p.name))
                            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                            .collect(),
                        In::Path => item
                            .names
                            .iter()
                            .position(|n| *n == p.name)
                            .and_then(|i| caps.get(i + 1))
                            .map(|m| percent_decode(m.as_str().as_bytes(), false))
                            .into_iter()
                            .collect(),
                    };
                    check_param(validators, p, &values, fails);
                }
                let body = op.body.as_ref()?;
                if !req.has_body {
                    if body.required {
                        fails.push(Place::Body, "", "a request body is required");
                    }
                    return None;
                }
                let Some(ct) = content_type else {
                    fails.push(
                        Place::ContentType,
                        "",
                        format!("Content-Type is missing; {}", accepted(body)),
                    );
                    return None;
                };
                if encoded {
                    fails.push(Place::ContentType, "", ENCODED);
                    return None;
                }
                let t = media_type(ct);
                let Some(m) = body.media.iter().find(|m| range_matches(&m.range, &t)) else {
                    fails.push(
                        Place::ContentType,
                        String::from_utf8_lossy(ct),
                        format!(
                            "not a content type this operation takes; {}",
                            accepted(body)
                        ),
                    );
                    return None;
                };
                if !is_json(&t) {
                    return None;
                }
                let key = m.schema.as_deref()?;
                validators.get(key).map(|v| BodyCheck { validator: v })
            }
        }
    }
}

impl BodyCheck<'_> {
    /// Checks a JSON body against its schema.
    pub fn check(&self, body: &[u8], fails: &mut Failures) {
        let doc = match Doc::parse(body) {
            Ok(d) => d,
            Err(e) => {
                fails.push(Place::Body, "", format!("the body is not JSON: {e}"));
                return;
            }
        };
        // The valid case first: it stops at nothing and builds no error.
        if self.validator.is_valid(doc.root()) {
            return;
        }
        for e in self.validator.iter_errors(doc.root()).take(MAX_FAILURES) {
            // A missing member is named by where it should be.
            let mut at = e.instance_path().to_string();
            if let jsonschema::error::ValidationErrorKind::Required {
                property: Value::String(name),
            } = e.kind()
            {
                at = format!("{at}/{}", escape(name));
            }
            fails.push(Place::Body, at, e.to_string());
        }
    }
}

/// What the operation takes, for a content-type failure.
fn accepted(body: &RequestBody) -> String {
    let list: Vec<String> = body
        .media
        .iter()
        .map(|m| format!("{}/{}", m.range.0, m.range.1))
        .collect();
    format!("it takes {}", list.join(", "))
}

/// Checks one parameter's values (none if absent) against its schema.
fn check_param(
    validators: &jsonschema::ValidatorMap<Body>,
    p: &Param,
    values: &[String],
    fails: &mut Failures,
) {
    let place = match p.at {
        In::Query => Place::Query,
        In::Header => Place::Header,
        In::Path => Place::PathParam,
    };
    // An object in the query is spread over keys of its own (`?a=1&b=2`, `filter[a]=1`):
    // not checked.
    if p.kind == Kind::Opaque && p.at == In::Query {
        return;
    }
    if values.is_empty() {
        if p.required {
            fails.push(
                place,
                &p.name,
                format!("the required {} parameter is missing", place.name()),
            );
        }
        return;
    }
    let Some(v) = p.schema.as_deref().and_then(|k| validators.get(k)) else {
        return;
    };
    let value = match p.kind {
        Kind::Opaque => return,
        Kind::Text => Value::String(values[0].clone()),
        Kind::Integer => scalar(Scalar::Integer, &values[0]),
        Kind::Number => scalar(Scalar::Number, &values[0]),
        Kind::Boolean => scalar(Scalar::Boolean, &values[0]),
        Kind::Array(item) => {
            let items: Vec<&str> = if p.explode && p.at == In::Query {
                values.iter().map(String::as_str).collect()
            } else {
                values.iter().flat_map(|s| s.split(p.delimiter)).collect()
            };
            Value::Array(items.into_iter().map(|s| scalar(item, s)).collect())
        }
    };
    let doc = Doc::of(&value);
    if v.is_valid(doc.root()) {
        return;
    }
    for e in v.iter_errors(doc.root()).take(MAX_FAILURES) {
        if fails.full() {
            break;
        }
        fails.push(place, &p.name, e.to_string());
    }
}

/// A parameter's text read as its type; left as text when it does not read (the schema's
/// type check then says why).
fn scalar(kind: Scalar, s: &str) -> Value {
    match kind {
        Scalar::Text => Value::String(s.to_string()),
        Scalar::Integer => s
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| s.parse::<u64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(s.to_string())),
        Scalar::Number => s
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.to_string()), Value::Number),
        Scalar::Boolean => match s {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(s.to_string()),
        },
    }
}

/// The first value of header `name`.
fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// `type/subtype` of a media type, lower-cased, without parameters.
fn media_type(v: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(v);
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some((t, s)) => (t.trim().to_string(), s.trim().to_string()),
        None => (essence, String::new()),
    }
}

fn is_json(t: &(String, String)) -> bool {
    t.0 == "application" && (t.1 == "json" || t.1.ends_with("+json"))
}

fn range_matches(range: &(String, String), t: &(String, String)) -> bool {
    (range.0 == "*" || range.0 == t.0) && (range.1 == "*" || range.1 == t.1)
}

/// A query string's pairs, percent-decoded (`+` is a space).
fn query_pairs(q: &[u8]) -> Vec<(String, String)> {
    q.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = match p.iter().position(|&b| b == b'=') {
                Some(i) => (&p[..i], &p[i + 1..]),
                None => (p, &b""[..]),
            };
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// Percent-decodes `s` (and `+` as a space in a query); a bad escape stays as it is.
fn percent_decode(s: &[u8], plus: bool) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match s[i] {
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON pointer token: `~` as `~0`, `/` as `~1`.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// `v`, with a local `$ref` followed (a chain of them, at most 32), and the pointer of where
/// it is.
fn follow<'a>(doc: &'a Value, v: &'a Value, ptr: &str) -> Result<(&'a Value, String), String> {
    let mut v = v;
    let mut ptr = ptr.to_string();
    for _ in 0..32 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return Ok((v, ptr));
        };
        let Some(p) = r.strip_prefix('#') else {
            return Err(format!(
                "{r:?} at {ptr}: only local $refs (#/...) are supported"
            ));
        };
        v = doc
            .pointer(p)
            .ok_or_else(|| format!("{r:?} at {ptr}: nothing is there"))?;
        ptr = p.to_string();
    }
    Err(format!("{ptr}: a $ref chain longer than 32"))
}

/// The schemas to compile: each one's definition name and where it is in the document.
struct Keys {
    /// `definitions` (draft 4, OpenAPI 3.0) or `$defs` (2020-12, OpenAPI 3.1).
    defs: &'static str,
    list: Vec<(String, String)>,
}

/// The first local `$ref` under `v` (at `at`) that points at nothing.
fn dangling(doc: &Value, v: &Value, at: &str, depth: usize) -> Result<(), String> {
    if depth > 256 {
        return Err(format!("{at}: nested too deep"));
    }
    match v {
        Value::Object(o) => {
            if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                match r.strip_prefix('#') {
                    Some(p) if doc.pointer(p).is_some() => {}
                    Some(_) => return Err(format!("$ref {r:?} at {at}: nothing is there")),
                    None => {
                        return Err(format!(
                            "$ref {r:?} at {at}: only local $refs (#/...) are supported"
                        ))
                    }
                }
            }
            for (k, child) in o {
                dangling(doc, child, &format!("{at}/{}", escape(k)), depth + 1)?;
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                dangling(doc, child, &format!("{at}/{i}"), depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Notes a schema at `ptr` for compiling; its key in the compiled map.
fn schema_key(keys: &mut Keys, ptr: &str) -> String {
    let name = format!("lb-{}", keys.list.len());
    let key = format!("#/{}/{name}", keys.defs);
    keys.list.push((name, ptr.to_string()));
    key
}

/// A parameter object; `None` for cookie parameters (not checked).
fn param(doc: &Value, p: &Value, ptr: &str, keys: &mut Keys) -> Result<Option<Param>, String> {
    let (p, ptr) = follow(doc, p, ptr)?;
    let name = p
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{ptr}: a parameter without a name"))?;
    let at = match p.get("in").and_then(Value::as_str) {
        Some("query") => In::Query,
        Some("header") => In::Header,
        Some("path") => In::Path,
        Some("cookie") => return Ok(None),
        other => {
            return Err(format!(
                "{ptr}: `in` must be query, header, path or cookie, got {other:?}"
            ))
        }
    };
    let required = at == In::Path || p.get("required").and_then(Value::as_bool).unwrap_or(false);
    let style = p.get("style").and_then(Value::as_str);
    let delimiter = match style {
        Some("spaceDelimited") => ' ',
        Some("pipeDelimited") => '|',
        _ => ',',
    };
    let explode = p
        .get("explode")
        .and_then(Value::as_bool)
        .unwrap_or(style.is_none_or(|s| s == "form") && at == In::Query);
    let (kind, schema) = match p.get("schema") {
        None => (Kind::Opaque, None),
        Some(s) => {
            let (resolved, _) = follow(doc, s, &format!("{ptr}/schema"))?;
            let kind = match type_name(doc, resolved, 0) {
                Some("integer") => Kind::Integer,
                Some("number") => Kind::Number,
                Some("boolean") => Kind::Boolean,
                Some("string") | None => Kind::Text,
                Some("array") => {
                    let items = resolved
                        .get("items")
                        .map(|i| follow(doc, i, &ptr))
                        .transpose()?;
                    Kind::Array(match items.and_then(|(i, _)| type_name(doc, i, 0)) {
                        Some("integer") => Scalar::Integer,
                        Some("number") => Scalar::Number,
                        Some("boolean") => Scalar::Boolean,
                        _ => Scalar::Text,
                    })
                }
                Some(_) => Kind::Opaque,
            };
            (kind, Some(schema_key(keys, &format!("{ptr}/schema"))))
        }
    };
    Ok(Some(Param {
        name: name.to_string(),
        at,
        required,
        kind,
        explode,
        delimiter,
        schema,
    }))
}

/// A schema's type (3.1 may list several: the first that is not "null"), or the first its
/// `allOf`, `anyOf` or `oneOf` members give.
fn type_name<'a>(doc: &'a Value, s: &'a Value, depth: usize) -> Option<&'a str> {
    match s.get("type") {
        Some(Value::String(t)) => return Some(t),
        Some(Value::Array(list)) => {
            return list.iter().filter_map(Value::as_str).find(|t| *t != "null")
        }
        _ => {}
    }
    if depth > 8 {
        return None;
    }
    ["allOf", "anyOf", "oneOf"]
        .iter()
        .filter_map(|k| s.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(|m| follow(doc, m, "").ok())
        .find_map(|(m, _)| type_name(doc, m, depth + 1))
}

fn request_body(doc: &Value, b: &Value, ptr: &str, keys: &mut Keys) -> Result<RequestBody, String> {
    let (b, ptr) = follow(doc, b, ptr)?;
    let mut media = Vec::new();
    for (name, m) in b
        .get("content")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let range = media_type(name.as_bytes());
        if range.1.is_empty() {
            return Err(format!("{ptr}/content: {name:?} is not a media type"));
        }
        let schema = m
            .get("schema")
            .map(|_| schema_key(keys, &format!("{ptr}/content/{}/schema", escape(name))));
        media.push(Media { range, schema });
    }
    // The most specific range first: `application/json` before `application/*`.
    media.sort_by_key(|m| usize::from(m.range.0 == "*") + usize::from(m.range.1 == "*"));
    Ok(RequestBody {
        required: b.get("required").and_then(Value::as_bool).unwrap_or(false),
        media,
    })
}

/// A path template as a regex over the request's path, and its parameters' names.
fn template_regex(template: &str) -> Result<(regex::Regex, Vec<String>), String> {
    let mut re = String::from("^");
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        re.push_str(&regex::escape(&rest[..open]));
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("path {template:?}: an unclosed '{{'"))?;
        let name = &rest[open + 1..open + close];
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "path {template:?}: {name:?} is not a parameter name"
            ));
        }
        names.push(name.to_string());
        re.push_str("([^/]+)");
        rest = &rest[open + close + 1..];
    }
    re.push_str(&regex::escape(rest));
    re.push('$');
    let regex = regex::Regex::new(&re).map_err(|e| format!("path {template:?}: {e}"))?;
    Ok((regex, names))
}

/// A JSON pointer as a URI fragment: what a fragment may not hold (`{`, `}`, spaces, ...)
/// percent-encoded.
fn fragment(ptr: &str) -> String {
    let mut out = String::with_capacity(ptr.len());
    for b in ptr.bytes() {
        if b.is_ascii_alphanumeric() || b"/~-._!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Compiles the document's schemas that `keys` name. OpenAPI 3.0 schemas are draft 4 with
/// `nullable`, which becomes a `"null"` type; 3.1's are JSON Schema 2020-12.
fn compile(doc: &Value, v31: bool, keys: &Keys) -> Result<jsonschema::ValidatorMap<Body>, String> {
    let mut doc = doc.clone();
    if !v31 {
        nullable(&mut doc, 0);
    }
    let defs = keys.defs;
    let Some(root) = doc.as_object_mut() else {
        return Err("the document is not a mapping".into());
    };
    let table = root
        .entry(defs)
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(table) = table.as_object_mut() else {
        return Err(format!(
            "`{defs}` at the top of the document is not a mapping"
        ));
    };
    for (name, ptr) in &keys.list {
        table.insert(
            name.clone(),
            serde_json::json!({ "$ref": format!("#{}", fragment(ptr)) }),
        );
    }
    let draft = if v31 {
        jsonschema::Draft::Draft202012
    } else {
        jsonschema::Draft::Draft4
    };
    let map = jsonschema::options_for::<Body>()
        .with_draft(draft)
        .should_validate_formats(true)
        .build_map(&doc)
        .map_err(|e| format!("a schema is not valid: {e} (at {})", e.schema_path()))?;
    for (name, ptr) in &keys.list {
        if map.get(&format!("#/{defs}/{name}")).is_none() {
            return Err(format!("the schema at {ptr} could not be compiled"));
        }
    }
    Ok(map)
}

/// OpenAPI 3.0's `nullable: true` as JSON Schema: `"null"` added to the type (and to an
/// `enum`).
fn nullable(v: &mut Value, depth: usize) {
    if depth > 256 {
        return;
    }
    match v {
        Value::Object(o) => {
            if o.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = o.get("type").cloned() {
                    o.insert("type".into(), serde_json::json!([t, "null"]));
                }
                if let Some(Value::Array(e)) = o.get_mut("enum") {
                    if !e.contains(&Value::Null) {
                        e.push(Value::Null);
                    }
                }
            }
            for child in o.values_mut() {
                nullable(child, depth + 1);
            }
        }
        Value::Array(a) => {
            for child in a {
                nullable(child, depth + 1);
            }
        }
        _ => {}
    }
}

/// A validation's settings, as the config gives them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub spec: Arc<Spec>,
    /// The spec file, as the config named it.
    pub source: String,
    pub mode: Mode,
    /// Bodies are buffered for validation up to this many bytes.
    pub max_body: u64,
    pub oversize: Oversize,
    /// Removed from the request's path before it is looked up in the spec (`/api/v2`).
    pub prefix: String,
}

/// A route's (or version's) validation: its settings (through `Deref`), and its counters.
pub struct Validation {
    settings: Settings,
    route: String,
    version: String,
    /// `lb_api_validations_total` by outcome, made at first use.
    counters: [OnceLock<metrics::Counter>; 3],
}

impl std::ops::Deref for Validation {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
}

impl std::fmt::Debug for Validation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validation")
            .field("settings", &self.settings)
            .field("route", &self.route)
            .field("version", &self.version)
            .finish()
    }
}

impl Validation {
    /// The validation of `route` (and `version`, on a versioned route: "" otherwise).
    pub fn new(s: &Settings, route: &str, version: &str) -> Validation {
        Validation {
            settings: s.clone(),
            route: route.to_string(),
            version: version.to_string(),
            counters: Default::default(),
        }
    }

    /// The API version it validates ("" on a route without versions).
    pub fn version(&self) -> Option<&str> {
        Some(self.version.as_str()).filter(|v| !v.is_empty())
    }

    /// Counts one request's outcome.
    pub fn count(&self, o: Outcome) {
        self.counters[o as usize]
            .get_or_init(|| {
                metrics::counter!(
                    crate::metrics::names::API_VALIDATIONS,
                    "route" => self.route.clone(),
                    "version" => self.version.clone(),
                    "result" => o.label(),
                )
            })
            .increment(1);
    }

    /// The request's path as the spec sees it: without the prefix; `None` when the path is
    /// not under it.
    pub fn spec_path<'p>(&self, path: &'p [u8]) -> Option<&'p [u8]> {
        let rest = path.strip_prefix(self.prefix.as_bytes())?;
        if rest.is_empty() {
            return Some(b"/");
        }
        if rest[0] == b'/' || self.prefix.ends_with('/') {
            return Some(if rest[0] == b'/' {
                rest
            } else {
                &path[self.prefix.len() - 1..]
            });
        }
        None
    }
}

/// The path part of an OpenAPI document's first server URL (`https://api.example.com/v2`
/// or `/v2`), the prefix of its paths; "" without one.
pub fn server_prefix(doc: &Value) -> String {
    let url = doc
        .get("servers")
        .and_then(Value::as_array)
        .and_then(|s| s.first())
        .and_then(|s| s.get("url"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let path = match url.find("://") {
        Some(i) => url[i + 3..].find('/').map_or("", |j| &url[i + 3 + j..]),
        None => url,
    };
    // A variable in the host is fine; one in the path leaves no fixed prefix.
    if path.contains('{') {
        return String::new();
    }
    path.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests;
