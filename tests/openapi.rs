//! `lb openapi diff OLD NEW` on pairs of specs: one pair per rule, YAML and JSON, and the exit
//! codes a CI pipeline gates on.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// The old spec, YAML: users with an id, a name and a role; a list and a create.
const OLD: &str = r##"
openapi: 3.0.3
info: { title: users, version: "1" }
paths:
  /users:
    get:
      parameters:
        - { name: limit, in: query, required: false, schema: { type: integer, maximum: 100 } }
      responses:
        "200":
          description: the users
          content:
            application/json:
              schema: { type: array, items: { $ref: "#/components/schemas/User" } }
    post:
      requestBody:
        content:
          application/json:
            schema: { $ref: "#/components/schemas/NewUser" }
      responses:
        "201": { description: made }
  /users/{id}:
    get:
      parameters: [ { name: id, in: path, required: true, schema: { type: string } } ]
      responses:
        "200":
          description: a user
          content:
            application/json:
              schema: { $ref: "#/components/schemas/User" }
    delete:
      parameters: [ { name: id, in: path, required: true, schema: { type: string } } ]
      responses:
        "204": { description: gone }
components:
  schemas:
    User:
      type: object
      properties:
        id: { type: string }
        name: { type: string }
        role: { type: string, enum: [admin, member, guest] }
    NewUser:
      type: object
      required: [name]
      properties:
        name: { type: string, maxLength: 100 }
        email: { type: string }
        role: { type: string, enum: [admin, member, guest] }
"##;

fn diff(dir: &Path, old: &str, new: &str, ext: &str) -> (Option<i32>, String) {
    let (a, b) = (
        dir.join(format!("old.{ext}")),
        dir.join(format!("new.{ext}")),
    );
    std::fs::write(&a, old).expect("write");
    std::fs::write(&b, new).expect("write");
    let out = Command::new(lb_bin())
        .args(["openapi", "diff"])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("lb");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn each_breaking_rule_is_found_and_fails_the_diff() {
    let dir = scratch_dir("openapi");
    let cases: &[(&str, &str, &str)] = &[
        ("removed endpoint", "    delete:\n      parameters: [ { name: id, in: path, required: true, schema: { type: string } } ]\n      responses:\n        \"204\": { description: gone }\n", "DELETE /users/{id}: endpoint removed"),
        ("removed response field", "        role: { type: string, enum: [admin, member, guest] }\n    NewUser:", "GET /users/{id}: response 200: field role removed"),
        ("type changed", "        id: { type: string }", "type changed from string to integer"),
        ("optional made required", "      required: [name]\n", "POST /users: request body: field email is required now"),
        ("enum value removed", "        role: { type: string, enum: [admin, member, guest] }\n\"#", "enum value \"guest\" removed"),
        ("stricter maxLength", "        name: { type: string, maxLength: 100 }", "stricter validation: maxLength 100 -> 50"),
        ("stricter maximum", "schema: { type: integer, maximum: 100 }", "query parameter limit: stricter validation: maximum 100 -> 10"),
        ("parameter made required", "{ name: limit, in: query, required: false,", "query parameter limit is required now"),
        ("new required field", "        email: { type: string }\n", "field phone added as required"),
    ];
    let edits: &[(&str, &str)] = &[
        ("    delete:\n      parameters: [ { name: id, in: path, required: true, schema: { type: string } } ]\n      responses:\n        \"204\": { description: gone }\n", ""),
        ("        role: { type: string, enum: [admin, member, guest] }\n    NewUser:", "    NewUser:"),
        ("        id: { type: string }", "        id: { type: integer }"),
        ("      required: [name]\n", "      required: [name, email]\n"),
        ("      required: [name]\n      properties:\n        name: { type: string, maxLength: 100 }\n        email: { type: string }\n        role: { type: string, enum: [admin, member, guest] }", "      required: [name]\n      properties:\n        name: { type: string, maxLength: 100 }\n        email: { type: string }\n        role: { type: string, enum: [admin, member] }"),
        ("        name: { type: string, maxLength: 100 }", "        name: { type: string, maxLength: 50 }"),
        ("schema: { type: integer, maximum: 100 }", "schema: { type: integer, maximum: 10 }"),
        ("{ name: limit, in: query, required: false,", "{ name: limit, in: query, required: true,"),
        ("      required: [name]\n      properties:\n        name: { type: string, maxLength: 100 }\n", "      required: [name, phone]\n      properties:\n        phone: { type: string }\n        name: { type: string, maxLength: 100 }\n"),
    ];
    for ((what, _, expect), (from, to)) in cases.iter().zip(edits) {
        assert!(OLD.contains(from), "{what}: the edit does not apply");
        let new = OLD.replacen(from, to, 1);
        let (code, out) = diff(&dir, OLD, &new, "yaml");
        assert_eq!(
            code,
            Some(1),
            "{what}: a breaking change fails the diff:\n{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("BREAKING") && l.contains(expect)),
            "{what}: expected {expect:?} in:\n{out}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pets: a response and a request body made of `allOf` members, a nullable field shared by
/// both, and a `oneOf` in the request.
const PETS: &str = r##"
openapi: 3.0.3
info: { title: pets, version: "1" }
paths:
  /pets:
    post:
      requestBody:
        content:
          application/json:
            schema: { $ref: "#/components/schemas/NewPet" }
      responses:
        "200":
          description: the pet
          content:
            application/json:
              schema: { $ref: "#/components/schemas/Pet" }
components:
  schemas:
    Base:
      type: object
      properties:
        name: { type: string }
        tag: { type: string, nullable: true }
    Pet:
      allOf:
        - $ref: "#/components/schemas/Base"
        - type: object
          properties:
            id: { type: integer }
            owner: { type: string }
    NewPet:
      allOf:
        - $ref: "#/components/schemas/Base"
        - type: object
          properties:
            kind:
              oneOf:
                - { type: string }
                - { type: integer }
"##;

/// `allOf` members are compared as the schema they make; `nullable` and `oneOf` by who
/// reads them.
#[test]
fn composition_and_nullability_are_compared() {
    let dir = scratch_dir("openapi-allof");
    let (code, out) = diff(&dir, PETS, PETS, "yaml");
    assert_eq!(code, Some(0), "no change: {out}");
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "a field of an allOf member",
            "            owner: { type: string }\n",
            "",
            "POST /pets: response 200: field owner removed",
        ),
        (
            "a field of the shared member",
            "        name: { type: string }\n",
            "",
            "POST /pets: response 200: field name removed",
        ),
        (
            "null no longer taken",
            "tag: { type: string, nullable: true }",
            "tag: { type: string }",
            "POST /pets: request body: field tag: null no longer accepted",
        ),
        (
            "null now sent",
            "            id: { type: integer }",
            "            id: { type: integer, nullable: true }",
            "POST /pets: response 200: field id: may be null now",
        ),
        (
            "a oneOf alternative removed",
            "                - { type: integer }\n",
            "",
            "POST /pets: request body: field kind: oneOf alternative removed",
        ),
        (
            "a type inside a oneOf",
            "                - { type: string }",
            "                - { type: boolean }",
            "field kind (oneOf[0]): type changed from string to boolean",
        ),
    ];
    for (what, from, to, expect) in cases {
        assert!(PETS.contains(from), "{what}: the edit does not apply");
        let new = PETS.replacen(from, to, 1);
        let (code, out) = diff(&dir, PETS, &new, "yaml");
        assert_eq!(code, Some(1), "{what}: breaking:\n{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("BREAKING") && l.contains(expect)),
            "{what}: expected {expect:?} in:\n{out}"
        );
    }
    // The other way round is compatible: null accepted in a request, a field added to an
    // allOf member of a response.
    let new = PETS.replacen(
        "        name: { type: string }\n",
        "        name: { type: string, nullable: true }\n",
        1,
    );
    let (code, out) = diff(&dir, PETS, &new, "yaml");
    assert!(
        out.contains("compatible POST /pets: request body: field name: null accepted now"),
        "{out}"
    );
    assert_eq!(
        code,
        Some(1),
        "the same field may now be null in the response: {out}"
    );
    let new = PETS.replacen(
        "            owner: { type: string }\n",
        "            owner: { type: string }\n            born: { type: string }\n",
        1,
    );
    let (code, out) = diff(&dir, PETS, &new, "yaml");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("field born added"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn additions_are_compatible_and_renames_are_removals() {
    let dir = scratch_dir("openapi-add");
    // An endpoint, an optional field, a response field and an enum value added; a path
    // parameter renamed (the same endpoint).
    let new = OLD
        .replace("  /users/{id}:\n", "  /users/{userId}:\n")
        .replace("name: id, in: path", "name: userId, in: path")
        .replace(
            "        email: { type: string }\n",
            "        email: { type: string }\n        nickname: { type: string }\n",
        )
        .replace(
            "        role: { type: string, enum: [admin, member, guest] }\n    NewUser:",
            "        role: { type: string, enum: [admin, member, guest] }\n        created: { type: string }\n    NewUser:",
        )
        .replace(
            "        nickname: { type: string }\n        role: { type: string, enum: [admin, member, guest] }",
            "        nickname: { type: string }\n        role: { type: string, enum: [admin, member, guest, owner] }",
        );
    let new = new.replace(
        "components:\n",
        "  /health:\n    get:\n      responses:\n        \"200\": { description: ok }\ncomponents:\n",
    );
    let (code, out) = diff(&dir, OLD, &new, "yaml");
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("BREAKING"), "{out}");
    for expect in [
        "GET /health: endpoint added",
        "field nickname added",
        "field created added",
        "enum value \"owner\" added",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("compatible") && l.contains(expect)),
            "{expect:?} in:\n{out}"
        );
    }
    // A value a client may receive that it has never seen breaks it; one it may no longer
    // receive does not.
    let response_enum = OLD.replace(
        "        role: { type: string, enum: [admin, member, guest] }\n    NewUser:",
        "        role: { type: string, enum: [admin, member, owner] }\n    NewUser:",
    );
    let (code, out) = diff(&dir, OLD, &response_enum, "yaml");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("BREAKING")
            && l.contains("response 200: field role: enum value \"owner\" added")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("compatible")
            && l.contains("response 200: field role: enum value \"guest\" removed")),
        "{out}"
    );
    // A schema that refers to itself is compared once, and the diff ends.
    let tree = |extra: &str| {
        format!(
            "openapi: 3.1.0\ninfo: {{ title: t, version: \"1\" }}\npaths:\n  /tree:\n    get:\n      responses:\n        \"200\":\n          description: x\n          content:\n            application/json:\n              schema: {{ $ref: \"#/components/schemas/Node\" }}\n\
             components:\n  schemas:\n    Node:\n      type: object\n      properties:\n        left: {{ $ref: \"#/components/schemas/Node\" }}\n        right: {{ $ref: \"#/components/schemas/Node\" }}\n{extra}"
        )
    };
    let (code, out) = diff(
        &dir,
        &tree("        label: { type: string }\n"),
        &tree(""),
        "yaml",
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("field label removed"))
            .count(),
        1,
        "reported once: {out}"
    );
    // A real rename of a path is a removal.
    let renamed = OLD.replace("  /users/{id}:\n", "  /people/{id}:\n");
    let (code, out) = diff(&dir, OLD, &renamed, "yaml");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("GET /users/{id}: endpoint removed"), "{out}");
    assert!(out.contains("GET /people/{id}: endpoint added"), "{out}");
    // The same spec: nothing.
    let (code, out) = diff(&dir, OLD, OLD, "yaml");
    assert_eq!((code, out.trim()), (Some(0), "no changes"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_specs_and_unreadable_ones() {
    let dir = scratch_dir("openapi-json");
    let old = r#"{"openapi":"3.1.0","info":{"title":"t","version":"1"},"paths":{"/a":{"get":{"responses":{"200":{"description":"x","content":{"application/json":{"schema":{"type":"object","properties":{"n":{"type":["integer","null"]}}}}}}}}}}}"#;
    let new = old.replace("[\"integer\",\"null\"]", "\"string\"");
    let (code, out) = diff(&dir, old, &new, "json");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("type changed from integer to string"), "{out}");
    // Not OpenAPI 3, not JSON, missing: exit 2 with the reason.
    let (code, out) = diff(&dir, r#"{"swagger":"2.0","paths":{}}"#, old, "json");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("not an OpenAPI 3 document"), "{out}");
    let (code, out) = diff(&dir, "{ nope", old, "json");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("not JSON"), "{out}");
    let (code, out) = diff(&dir, "openapi: 3.0.0\npaths: [\n", old, "yaml");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("not YAML"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `lb openapi import` makes routes that `lb check` accepts and that route the spec's paths
/// and methods to the cluster, and nothing else.
#[test]
fn import_round_trips_through_check() {
    let dir = scratch_dir("openapi-import");
    let spec = dir.join("users.yaml");
    // Paths a pattern cannot say: a parameter inside a segment, names that collide once
    // cleaned, a literal segment with a colon.
    let extra = OLD.replace(
        "components:\n",
        "  /files/{name}.{ext}:\n    get:\n      responses:\n        \"200\": { description: a file }\n\
           \x20\x20/pairs/{a-b}/{a_b}:\n    get:\n      responses:\n        \"200\": { description: a pair }\n\
           \x20\x20/jobs:search/{id}:\n    post:\n      responses:\n        \"200\": { description: found }\n\
         components:\n",
    );
    std::fs::write(&spec, extra).expect("write");
    let out = Command::new(lb_bin())
        .args(["openapi", "import"])
        .arg(&spec)
        .args(["--cluster", "users", "--prefix", "/api"])
        .output()
        .expect("lb");
    assert!(out.status.success(), "{out:?}");
    let routes = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        routes.contains("path_pattern = \"/api/users/:id\""),
        "{routes}"
    );
    assert!(
        routes.contains("methods = [\"GET\", \"DELETE\"]"),
        "{routes}"
    );
    assert!(routes.contains("path_regex"), "{routes}");
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\naddr = \"127.0.0.1:8080\"\n[[clusters]]\nname = \"users\"\nendpoints = [{{ addr = \"127.0.0.1:9001\" }}]\n{routes}"
        ),
    )
    .expect("write");
    let check = Command::new(lb_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("lb");
    assert!(check.status.success(), "{check:?}\n{routes}");
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(
        !said.contains("warning"),
        "the imported routes match the spec: {said}"
    );
    assert!(
        routes.contains(&format!(
            "validate = {{ openapi = \"{}\", prefix = \"/api\" }}",
            spec.canonicalize().expect("path").display()
        )),
        "{routes}"
    );
    let explain = |method: &str, path: &str| {
        let out = Command::new(lb_bin())
            .args(["explain", "--config"])
            .arg(&config)
            .args([method, &format!("http://x.example{path}")])
            .output()
            .expect("lb");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(explain("GET", "/api/users/7").contains("cluster: users"));
    assert!(explain("GET", "/api/files/a.txt").contains("cluster: users"));
    assert!(explain("GET", "/api/pairs/1/2").contains("cluster: users"));
    assert!(explain("POST", "/api/jobs:search/9").contains("cluster: users"));
    let refused = explain("PUT", "/api/users/7");
    assert!(refused.contains("404"), "no route: {refused}");
    assert!(
        !refused.contains("cluster: users"),
        "not a method of the spec: {refused}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
