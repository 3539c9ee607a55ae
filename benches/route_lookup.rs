//! Route lookup against a table of 1,000 routes of every kind. Target: under 1 µs per lookup.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use lb::config::Config;
use lb::routing::matchers::Captures;
use lb::routing::{RouteRequest, RouteTable};

/// 1,000 routes: 600 prefixes, 150 exact paths, 100 patterns, 50 host routes, 50 header
/// routes, 49 regexes and a catch-all.
fn thousand_routes() -> String {
    let mut s = String::from(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[[clusters]]\nname = \"c\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n",
    );
    let mut add = |body: String| s.push_str(&format!("[[routes]]\n{body}cluster = \"c\"\n"));
    for i in 0..600 {
        add(format!(
            "path_prefix = \"/svc{}/v{}/items\"\n",
            i / 6,
            i % 6
        ));
    }
    for i in 0..150 {
        add(format!("path = \"/exact/{i}/status\"\n"));
    }
    for i in 0..100 {
        add(format!(
            "path_pattern = \"/api/p{i}/products/:id/reviews/:rid\"\n"
        ));
    }
    for i in 0..50 {
        add(format!(
            "host = \"tenant{i}.example.com\"\npath_prefix = \"/\"\n"
        ));
    }
    for i in 0..50 {
        add(format!("path_prefix = \"/svc{i}\"\nheaders = [{{ name = \"X-API-Version\", equals = \"{i}\" }}]\n"));
    }
    for i in 0..49 {
        add(format!(
            "path_regex = \"^/reports{i}/[0-9]{{4}}/[0-9]{{2}}$\"\n"
        ));
    }
    add(String::new());
    s
}

fn bench(c: &mut Criterion) {
    let config = Config::parse(&thousand_routes(), Path::new("bench")).expect("bench config");
    assert_eq!(config.routes.len(), 1000);
    let table = RouteTable::build(&config.routes);
    let headers = [
        httparse::Header {
            name: "User-Agent",
            value: b"bench",
        },
        httparse::Header {
            name: "Accept",
            value: b"*/*",
        },
        httparse::Header {
            name: "X-API-Version",
            value: b"7",
        },
    ];
    let cases: [(&str, Option<&str>, &str); 6] = [
        ("prefix", Some("api.example.com"), "/svc42/v3/items/123?x=1"),
        ("exact", Some("api.example.com"), "/exact/99/status"),
        (
            "pattern",
            Some("api.example.com"),
            "/api/p57/products/42/reviews/9",
        ),
        ("host", Some("tenant33.example.com"), "/anything/at/all"),
        ("regex", Some("api.example.com"), "/reports40/2026/11"),
        (
            "fallthrough",
            Some("api.example.com"),
            "/nothing/matches/this/path/at/all",
        ),
    ];
    let mut group = c.benchmark_group("route_lookup_1000");
    for (name, host, target) in cases {
        let (path, query) = RouteRequest::split_target(target.as_bytes());
        group.bench_function(name, |b| {
            b.iter(|| {
                let req = RouteRequest {
                    sni: None,
                    client_cert: None,
                    host: host.map(str::as_bytes),
                    path: black_box(path),
                    query,
                    method: b"GET",
                    headers: &headers,
                    consumer: None,
                    client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                    jwt: None,
                    geo: None,
                };
                let mut caps = Captures::default();
                black_box(table.find(&req, &mut caps).map(|r| r.index))
            })
        });
    }
    group.finish();
}

/// `client_ip` matchers and trusted proxies: one lookup in 5,000 prefixes of both families
/// that do not merge. Target: under 100 ns.
fn ip_sets(c: &mut Criterion) {
    let mut list: Vec<String> = (0..4000u32)
        .map(|i| format!("10.{}.{}.0/24", (i * 2) >> 8, (i * 2) & 255))
        .collect();
    list.extend((0..1000u32).map(|i| format!("2001:db8:{:x}::/48", i * 2)));
    let set = lb::client::IpSet::parse(&list).expect("prefixes");
    let mut group = c.benchmark_group("ip_set_5000");
    for (name, ip) in [
        ("v4_hit", "10.20.30.40"),
        ("v4_miss", "10.20.31.40"),
        ("v6_hit", "2001:db8:40::1"),
        ("v6_miss", "2001:db9::1"),
    ] {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        group.bench_function(name, |b| b.iter(|| black_box(set.contains(black_box(ip)))));
    }
    group.finish();
}

criterion_group!(benches, bench, ip_sets);
criterion_main!(benches);
