use super::*;
use serde_json::json;

fn users_spec(version: &str) -> Value {
    // 3.0 says a field may be null with `nullable`; 3.1 with a "null" type.
    let nickname = if version.starts_with("3.1") {
        json!({"type": ["string", "null"]})
    } else {
        json!({"type": "string", "nullable": true})
    };
    json!({
        "openapi": version,
        "servers": [{"url": "https://api.example.com/api/v2"}],
        "paths": {
            "/users": {
                "get": {"parameters": [
                    {"name": "limit", "in": "query", "required": true, "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                    {"name": "tag", "in": "query", "schema": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}},
                    {"$ref": "#/components/parameters/Tenant"}
                ]},
                "post": {"requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/NewUser"}},
                    "text/csv": {}
                }}}
            },
            "/users/me": {"get": {}},
            "/users/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "get": {},
                "put": {"requestBody": {"$ref": "#/components/requestBodies/User"}}
            }
        },
        "components": {
            "parameters": {"Tenant": {"name": "X-Tenant", "in": "header", "required": true, "schema": {"type": "string", "pattern": "^[a-z]+$"}}},
            "requestBodies": {"User": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewUser"}}}}},
            "schemas": {
                "NewUser": {"type": "object", "required": ["email"], "properties": {
                    "email": {"type": "string", "minLength": 3},
                    "nickname": nickname,
                    "address": {"$ref": "#/components/schemas/Address"}
                }},
                "Address": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
            }
        }
    })
}

fn head_check(
    spec: &Spec,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: bool,
) -> (Failures, bool) {
    let hs: Vec<httparse::Header<'_>> = headers
        .iter()
        .map(|(n, v)| httparse::Header {
            name: n,
            value: v.as_bytes(),
        })
        .collect();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.as_bytes())),
        None => (target, None),
    };
    let req = Request {
        method: method.as_bytes(),
        path: path.as_bytes(),
        query,
        headers: &hs,
        has_body: body,
    };
    let mut f = Failures::default();
    let check = spec.check_head(&req, &mut f);
    (f, check.is_some())
}

fn places(f: &Failures) -> Vec<(&'static str, String)> {
    f.0.iter()
        .map(|x| (x.place.name(), x.name.clone()))
        .collect()
}

#[test]
fn operations_and_parameters_are_checked_from_the_head() {
    for v in ["3.0.3", "3.1.0"] {
        let spec = Spec::openapi(&users_spec(v)).expect("compiles");
        let tenant = [("X-Tenant", "acme")];
        let (f, _) = head_check(&spec, "GET", "/users?limit=10&tag=a&tag=b", &tenant, false);
        assert!(f.is_empty(), "{v}: {:?}", f.0);
        // Missing required query and header parameters.
        let (f, _) = head_check(&spec, "GET", "/users", &[], false);
        assert_eq!(
            places(&f),
            [("query", "limit".into()), ("header", "X-Tenant".into())],
            "{v}"
        );
        assert_eq!(f.status(), 400);
        // Types and bounds, an enum item, a header pattern.
        let (f, _) = head_check(
            &spec,
            "GET",
            "/users?limit=abc&tag=c",
            &[("x-tenant", "ACME")],
            false,
        );
        assert_eq!(
            places(&f),
            [
                ("query", "limit".into()),
                ("query", "tag".into()),
                ("header", "X-Tenant".into())
            ],
            "{v}"
        );
        let (f, _) = head_check(&spec, "GET", "/users?limit=101", &tenant, false);
        assert!(f.0[0].detail.contains("maximum"), "{:?}", f.0);
        // Path parameters' types; a concrete path wins over a template.
        let (f, _) = head_check(&spec, "GET", "/users/42", &[], false);
        assert!(f.is_empty());
        let (f, _) = head_check(&spec, "GET", "/users/me", &[], false);
        assert!(f.is_empty());
        let (f, _) = head_check(&spec, "GET", "/users/x7", &[], false);
        assert_eq!(places(&f), [("path", "id".into())]);
        // Unknown paths and methods.
        let (f, _) = head_check(&spec, "GET", "/orders", &[], false);
        assert_eq!(f.status(), 404);
        let (f, _) = head_check(&spec, "DELETE", "/users/1", &[], false);
        assert_eq!(f.status(), 405);
        assert!(f.0[0].detail.contains("GET, PUT"), "{:?}", f.0);
    }
}

#[test]
fn content_types_and_bodies_are_checked() {
    for v in ["3.0.3", "3.1.0"] {
        let spec = Spec::openapi(&users_spec(v)).expect("compiles");
        let json_ct = [("Content-Type", "application/json; charset=utf-8")];
        let (f, body) = head_check(&spec, "POST", "/users", &json_ct, true);
        assert!(f.is_empty() && body);
        // A declared non-JSON type passes without a body check; others are 415.
        let (f, body) = head_check(
            &spec,
            "POST",
            "/users",
            &[("Content-Type", "text/csv")],
            true,
        );
        assert!(f.is_empty() && !body);
        let (f, _) = head_check(
            &spec,
            "POST",
            "/users",
            &[("Content-Type", "text/plain")],
            true,
        );
        assert_eq!(f.status(), 415);
        let (f, _) = head_check(&spec, "POST", "/users", &[], true);
        assert_eq!(f.status(), 415);
        // A required body that is absent.
        let (f, _) = head_check(&spec, "POST", "/users", &json_ct, false);
        assert_eq!(places(&f), [("body", String::new())]);

        let req = Request {
            method: b"PUT",
            path: b"/users/1",
            query: None,
            headers: &[],
            has_body: true,
        };
        let hs = [httparse::Header {
            name: "content-type",
            value: b"application/json",
        }];
        let req = Request {
            headers: &hs,
            ..req
        };
        let mut f = Failures::default();
        let check = spec
            .check_head(&req, &mut f)
            .expect("a body check through a $ref'd request body");
        let mut f = Failures::default();
        check.check(
            br#"{"email":"someone@example.com","nickname":null,"address":{"city":"Oslo"}}"#,
            &mut f,
        );
        assert!(f.is_empty(), "{v}: {:?}", f.0);
        let mut f = Failures::default();
        check.check(br#"{"email":"a","address":{}}"#, &mut f);
        let mut got = places(&f);
        got.sort();
        assert_eq!(
            got,
            [("body", "/address/city".into()), ("body", "/email".into())],
            "{v}"
        );
        let mut f = Failures::default();
        check.check(b"{not json", &mut f);
        assert!(
            f.0[0].detail.starts_with("the body is not JSON"),
            "{:?}",
            f.0
        );
    }
}

#[test]
fn plain_schemas_check_bodies_by_method() {
    let spec = Spec::schemas(&[(
        "post".into(),
        json!({"type": "object", "required": ["name"]}),
    )])
    .expect("compiles");
    let ct = [("Content-Type", "application/vnd.acme+json")];
    let (f, body) = head_check(&spec, "POST", "/anything", &ct, true);
    assert!(f.is_empty() && body);
    let (f, body) = head_check(&spec, "GET", "/anything", &[], false);
    assert!(
        f.is_empty() && !body,
        "a method without a schema is not checked"
    );
    let (f, _) = head_check(
        &spec,
        "POST",
        "/anything",
        &[("Content-Type", "text/plain")],
        true,
    );
    assert_eq!(f.status(), 415);
    assert!(Spec::schemas(&[("post".into(), json!({"type": 7}))]).is_err());
}

#[test]
fn bad_documents_are_refused_with_where() {
    let mut doc = users_spec("3.1.0");
    doc["paths"]["/users"]["get"]["parameters"][2] =
        json!({"$ref": "#/components/parameters/Nope"});
    let e = Spec::openapi(&doc).expect_err("a dangling $ref");
    assert!(e.contains("Nope"), "{e}");
    let mut doc = users_spec("3.1.0");
    doc["components"]["schemas"]["Address"]["type"] = json!(12);
    assert!(Spec::openapi(&doc).is_err());
    let mut doc = users_spec("3.1.0");
    doc["components"]["schemas"]["Address"] = json!({"$ref": "other.yaml#/Address"});
    assert!(Spec::openapi(&doc).is_err(), "remote $refs are not fetched");
}

#[test]
fn prefixes_come_from_servers_and_are_stripped() {
    assert_eq!(server_prefix(&users_spec("3.1.0")), "/api/v2");
    assert_eq!(server_prefix(&json!({"servers": [{"url": "/v1/"}]})), "/v1");
    assert_eq!(
        server_prefix(&json!({"servers": [{"url": "https://{env}.example.com/v1"}]})),
        "/v1",
        "a variable in the host"
    );
    assert_eq!(
        server_prefix(&json!({"servers": [{"url": "https://api.example.com/{version}"}]})),
        ""
    );
    assert_eq!(server_prefix(&json!({})), "");
    let s = Settings {
        spec: Arc::new(Spec::schemas(&[]).expect("empty")),
        source: String::new(),
        mode: Mode::Enforce,
        max_body: 1,
        oversize: Oversize::Reject,
        prefix: "/api/v2".into(),
    };
    let v = Validation::new(&s, "r", "");
    assert_eq!(v.spec_path(b"/api/v2/users"), Some(&b"/users"[..]));
    assert_eq!(v.spec_path(b"/api/v2"), Some(&b"/"[..]));
    assert_eq!(v.spec_path(b"/api/v20/users"), None);
    assert_eq!(v.spec_path(b"/other"), None);
    assert_eq!(percent_decode(b"a%20b+c%zz%4", true), "a b c%zz%4");
}

#[test]
fn head_options_and_the_allowed_methods() {
    let spec = Spec::openapi(&users_spec("3.1.0")).expect("compiles");
    let (f, _) = head_check(&spec, "HEAD", "/users/42", &[], false);
    assert!(f.is_empty(), "HEAD is checked as GET: {:?}", f.0);
    let (f, _) = head_check(&spec, "HEAD", "/users/x", &[], false);
    assert_eq!(places(&f), [("path", "id".into())]);
    let (f, _) = head_check(&spec, "OPTIONS", "/users/42", &[], false);
    assert!(
        f.is_empty(),
        "a preflight the spec does not describe passes"
    );
    let (f, _) = head_check(&spec, "PATCH", "/users/42", &[], false);
    assert_eq!((f.status(), f.allow()), (405, Some("GET, PUT")));
}

#[test]
fn content_type_and_encoding_must_be_unambiguous() {
    let spec = Spec::openapi(&users_spec("3.1.0")).expect("compiles");
    let two = [
        ("Content-Type", "text/csv"),
        ("Content-Type", "application/json"),
    ];
    let (f, body) = head_check(&spec, "POST", "/users", &two, true);
    assert!(!f.is_empty() && !body, "several Content-Type fields");
    let gz = [
        ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip"),
    ];
    let (f, body) = head_check(&spec, "POST", "/users", &gz, true);
    assert_eq!((f.status(), body), (415, false));
    let id = [
        ("Content-Type", "application/json"),
        ("Content-Encoding", "identity"),
    ];
    let (f, body) = head_check(&spec, "POST", "/users", &id, true);
    assert!(f.is_empty() && body);
}

#[test]
fn parameter_styles_and_types_through_composition() {
    let doc = json!({
        "openapi": "3.1.0",
        "paths": {"/search": {"get": {"parameters": [
            {"name": "ids", "in": "query", "style": "pipeDelimited", "explode": false,
             "schema": {"type": "array", "items": {"type": "integer"}}},
            {"name": "limit", "in": "query", "schema": {"allOf": [{"$ref": "#/components/schemas/Small"}]}},
            {"name": "filter", "in": "query", "required": true, "style": "deepObject",
             "schema": {"type": "object"}}
        ]}}},
        "components": {"schemas": {"Small": {"type": "integer", "maximum": 10}}}
    });
    let spec = Spec::openapi(&doc).expect("compiles");
    let (f, _) = head_check(
        &spec,
        "GET",
        "/search?ids=1|2|3&limit=5&filter[a]=x",
        &[],
        false,
    );
    assert!(f.is_empty(), "{:?}", f.0);
    let (f, _) = head_check(&spec, "GET", "/search?ids=1|x&limit=50", &[], false);
    assert_eq!(
        places(&f),
        [("query", "ids".into()), ("query", "limit".into())]
    );
}

/// Three or more required names: jsonschema multiplies the representation's lookup cost by
/// their count (an overflow there panics a debug build).
#[test]
fn many_required_members_and_repeated_ones() {
    let spec = Spec::schemas(&[(
        "POST".into(),
        json!({"type": "object", "required": ["a", "b", "c", "d"],
               "properties": {"a": {"type": "integer"}, "b": {}, "c": {}, "d": {}}}),
    )])
    .expect("compiles");
    let ct = [("Content-Type", "application/json")];
    let hs: Vec<httparse::Header<'_>> = ct
        .iter()
        .map(|(n, v)| httparse::Header {
            name: n,
            value: v.as_bytes(),
        })
        .collect();
    let req = Request {
        method: b"POST",
        path: b"/",
        query: None,
        headers: &hs,
        has_body: true,
    };
    let mut f = Failures::default();
    let check = spec.check_head(&req, &mut f).expect("a body check");
    check.check(br#"{"a":1,"b":2,"c":3,"d":4}"#, &mut f);
    assert!(f.is_empty(), "{:?}", f.0);
    check.check(br#"{"a":1,"b":2}"#, &mut f);
    assert_eq!(f.0.len(), 2, "{:?}", f.0);
    // A repeated member: which one counts is up to the reader, so the body is refused.
    let mut f = Failures::default();
    let many: String = (0..20).map(|i| format!("\"x{i}\":{i},")).collect();
    check.check(
        format!(r#"{{"a":1,"b":2,"c":3,"d":4,{many}"a":"five"}}"#).as_bytes(),
        &mut f,
    );
    assert!(
        f.0.iter().any(|x| x.detail.contains("appears twice")),
        "{:?}",
        f.0
    );
    // Failure texts are cut: a value is not echoed whole.
    let mut f = Failures::default();
    let long = format!(r#"{{"a":"{}","b":1,"c":1,"d":1}}"#, "y".repeat(5000));
    check.check(long.as_bytes(), &mut f);
    assert!(
        f.0[0].detail.chars().count() <= 201,
        "{}",
        f.0[0].detail.len()
    );
}
