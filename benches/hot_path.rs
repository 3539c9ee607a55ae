//! Micro benchmarks of the request path: head parsing, balancer picks for each algorithm,
//! the consistent-hash table build, split assignment, JWT checks, and request validation.

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::Ordering;

use criterion::{criterion_group, criterion_main, Criterion};
use lb::balancing::maglev::{key_hash, MaglevTable, MIN_TABLE_SIZE};
use lb::balancing::WorkerBalancer;
use lb::config::Config;
use lb::release::state::SplitState;
use lb::release::{bucket, SplitRequest};
use lb::snapshot::{Snapshot, StateRegistry};

const HEAD: &[u8] = b"GET /api/orders/12345?expand=items HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) bench\r\nAccept: application/json\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\nCookie: session=abcdef0123456789; theme=dark\r\nX-Request-ID: 2b1f6a0e-8c1d-4a55-9f0e-5d1d2f3c4b5a\r\nX-User-ID: user-42\r\nConnection: keep-alive\r\n\r\n";

fn parse(c: &mut Criterion) {
    c.bench_function("parse_request_head_10_headers", |b| {
        b.iter(|| {
            let mut storage = lb::http::header_slots::<64>();
            let head = lb::http::request::parse(black_box(HEAD), &mut storage)
                .ok()
                .flatten();
            black_box(head.map(|h| h.head_len))
        })
    });
}

fn cluster_snapshot(balancer: &str, endpoints: usize) -> Snapshot {
    let eps: Vec<String> = (0..endpoints)
        .map(|i| {
            format!(
                "{{ addr = \"10.0.{}.{}:80\", weight = {} }}",
                i / 250,
                i % 250 + 1,
                1 + i % 3
            )
        })
        .collect();
    let text = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[[clusters]]\nname = \"c\"\nbalancer = \"{balancer}\"\nhash_key = \"header:x-user-id\"\nendpoints = [{}]\n[[routes]]\ncluster = \"c\"\n",
        eps.join(", ")
    );
    let config = Config::parse(&text, Path::new("bench")).expect("bench config");
    Snapshot::build(config, &text, &StateRegistry::default()).expect("snapshot")
}

fn balancers(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer_pick_16_endpoints");
    for kind in [
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "power_of_two",
        "random",
        "maglev",
    ] {
        let snap = cluster_snapshot(kind, 16);
        let cluster = &snap.clusters[0];
        for (i, e) in cluster.endpoints.iter().enumerate() {
            e.state.in_flight.store(i as u64 % 5, Ordering::Relaxed);
        }
        let wb = WorkerBalancer::new(16, 1);
        let mut n = 0u64;
        group.bench_function(kind, |b| {
            b.iter(|| {
                n += 1;
                black_box(
                    wb.pick(&cluster.choice(), Some(key_hash(&n.to_le_bytes())), |i| {
                        i != 3
                    }),
                )
            })
        });
    }
    group.finish();
}

fn maglev_build(c: &mut Criterion) {
    let names: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}:80")).collect();
    let weights = vec![1u32; 10];
    let mut group = c.benchmark_group("maglev");
    group.sample_size(10);
    group.bench_function("build_65537_slots_10_endpoints", |b| {
        b.iter(|| black_box(MaglevTable::build(&names, &weights, MIN_TABLE_SIZE).size()))
    });
    group.finish();
}

fn split(c: &mut Criterion) {
    let text = "[[listeners]]\naddr = \"127.0.0.1:0\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[clusters]]\nname = \"b\"\nendpoints = [{ addr = \"127.0.0.1:2\" }]\n[[routes]]\nname = \"r\"\n[routes.split]\nsticky = \"header:X-User-ID\"\nsalt = \"s\"\ntargets = [{ name = \"stable\", cluster = \"a\", weight = 95 }, { name = \"canary\", cluster = \"b\", weight = 5 }]\noverride = [{ header = \"X-Canary\", value = \"true\", target = \"canary\" }]\n";
    let config = Config::parse(text, Path::new("bench")).expect("bench config");
    let split = config.routes[0].split.clone().expect("split");
    let state = SplitState::new(
        split.targets.iter().map(|t| t.weight_ppm).collect(),
        split.fingerprint,
    );
    let mut storage = lb::http::header_slots::<64>();
    let head = lb::http::request::parse(HEAD, &mut storage)
        .expect("parse")
        .expect("complete");
    let req = SplitRequest {
        headers: head.headers,
        query: None,
        client: "10.1.2.3".parse().expect("ip"),
        consumer: None,
        claims: None,
        geo: None,
    };
    c.bench_function("split_assign_sticky", |b| {
        b.iter(|| black_box(split.choose(&state, &req, || 7)))
    });
    c.bench_function("split_bucket_hash", |b| {
        b.iter(|| black_box(bucket("salt", black_box(b"user-42"))))
    });
}

/// A JWT check: a miss verifies the signature and the claims (per algorithm), a hit finds
/// the token in the worker's cache. Target: a hit under 1 µs.
fn jwt(c: &mut Criterion) {
    use lb::client::jwt::keys::parse_jwks;
    use lb::client::jwt::sign::{jwks, SigningKey};
    use lb::client::jwt::*;
    let claims = serde_json::json!({ "sub": "user-42", "iss": "https://id.test", "aud": "shop",
        "exp": unix_now() + 3600, "role": "beta-tester", "scope": "read write" });
    for alg in [Alg::ES256, Alg::RS256, Alg::EdDSA] {
        let key = SigningKey::generate(alg).expect("key");
        let set = parse_jwks(jwks(&[("k", &key)]).as_bytes(), &[alg]).expect("jwks");
        let provider = Provider::new(
            ProviderConfig {
                name: "bench".into(),
                issuer: Some("https://id.test".into()),
                audiences: vec!["shop".into()],
                algorithms: vec![alg],
                leeway: std::time::Duration::from_secs(60),
                token: TokenSource::Bearer,
                keys: KeySource::Secret,
                forward_claims: Vec::new(),
                strip_token: false,
                consumer_claim: "sub".into(),
            },
            std::sync::Arc::new(KeyHolder::new(set.clone())),
        );
        let token = key
            .sign(
                &serde_json::json!({ "alg": alg.name(), "kid": "k" }),
                &claims,
            )
            .expect("sign");
        let now = unix_now();
        c.bench_function(&format!("jwt_verify_miss_{}", alg.name()), |b| {
            b.iter(|| {
                black_box(
                    provider
                        .verify(black_box(token.as_bytes()), &set, now)
                        .is_ok(),
                )
            })
        });
        if alg == Alg::ES256 {
            c.bench_function("jwt_cache_hit", |b| {
                b.iter(|| black_box(provider.check(Some(black_box(token.as_bytes()))).is_ok()))
            });
        }
    }
}

/// Validating a request against an OpenAPI operation: the head (operation lookup, a
/// required query parameter and a header) and a 1 KiB JSON body (parsed, then checked
/// against a schema reached through `$ref`s). Target: well under the CPU a proxied request
/// costs (about 10 µs on the load benchmark's machine).
fn validation(c: &mut Criterion) {
    use lb::validation::{Failures, Request, Spec};
    let doc = serde_json::json!({
        "openapi": "3.1.0",
        "paths": {"/orders/{id}/items": {"post": {
            "parameters": [
                {"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}},
                {"name": "dry_run", "in": "query", "schema": {"type": "boolean"}},
                {"name": "X-Tenant", "in": "header", "required": true, "schema": {"type": "string"}}
            ],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Items"}}}}
        }}},
        "components": {"schemas": {
            "Items": {"type": "object", "required": ["items"], "properties": {
                "items": {"type": "array", "maxItems": 100, "items": {"$ref": "#/components/schemas/Item"}},
                "note": {"type": "string", "maxLength": 500}
            }},
            "Item": {"type": "object", "required": ["sku", "quantity"], "additionalProperties": false, "properties": {
                "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
                "gift": {"type": "boolean"},
                "price": {"type": "number", "minimum": 0}
            }}
        }}
    });
    let spec = Spec::openapi(&doc).expect("spec compiles");
    // A 1 KiB body: items until the object reaches 1,024 bytes.
    let mut items = Vec::new();
    let mut body = Vec::new();
    while body.len() < 1024 {
        items.push(serde_json::json!({"sku": format!("ABC-{:04}", items.len()), "quantity": 2, "gift": false, "price": 12.5}));
        body =
            serde_json::to_vec(&serde_json::json!({"items": items, "note": "leave at the door"}))
                .expect("json");
    }
    let headers = [
        httparse::Header {
            name: "Host",
            value: b"api.example.com",
        },
        httparse::Header {
            name: "Content-Type",
            value: b"application/json",
        },
        httparse::Header {
            name: "X-Tenant",
            value: b"acme",
        },
    ];
    let req = Request {
        method: b"POST",
        path: b"/orders/42/items",
        query: Some(b"dry_run=false"),
        headers: &headers,
        has_body: true,
    };
    c.bench_function(
        &format!("validate_request_json_body_{}_bytes", body.len()),
        |b| {
            b.iter(|| {
                let mut fails = Failures::default();
                let check = spec.check_head(black_box(&req), &mut fails);
                if let Some(check) = check {
                    check.check(black_box(&body), &mut fails);
                }
                assert!(fails.is_empty());
            })
        },
    );
}

criterion_group!(
    benches,
    parse,
    balancers,
    maglev_build,
    split,
    jwt,
    validation
);
criterion_main!(benches);
