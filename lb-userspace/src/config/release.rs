//! Validation of route splits, consumers and rate limits.

use std::time::Duration;

use super::raw::{RawConsumer, RawIdentity, RawRateLimit, RawSplit, RawTargeting};
use super::units::parse_size;
use super::{ClusterConfig, Errors};
use crate::config::cluster::parse_hash_key;
use crate::identity::{parse_sha256_hex, Consumer, IdentityConfig};
use crate::ratelimit::{Rate, RateKey, RateLimitConfig, RateRule};
use crate::release::{
    AnalysisConfig, MirrorConfig, Override, PromotionConfig, Source, SplitConfig, SplitTarget,
    Targeting, PPM,
};

fn percent_to_ppm(p: f64) -> Option<u32> {
    (p.is_finite() && (0.0..=100.0).contains(&p)).then(|| (p * 10_000.0).round() as u32)
}

pub(super) fn validate_split(
    key: &str,
    route_name: &str,
    s: &RawSplit,
    clusters: &[ClusterConfig],
    errs: &mut Errors,
) -> Option<SplitConfig> {
    let before = errs.0.len();
    if s.targets.is_empty() {
        errs.push(
            format!("{key}.targets"),
            "a split needs at least one target",
        );
    }
    let mut targets = Vec::new();
    for (i, t) in s.targets.iter().enumerate() {
        let k = format!("{key}.targets[{i}]");
        if t.name.is_empty() || t.name.bytes().any(|b| !b.is_ascii_graphic()) {
            errs.push(format!("{k}.name"), "expected a name without spaces");
        }
        if s.targets[..i].iter().any(|o| o.name == t.name) {
            errs.push(
                format!("{k}.name"),
                format!("target {:?} is listed twice", t.name),
            );
        }
        let cluster = clusters.iter().position(|c| c.name == t.cluster);
        if cluster.is_none() {
            errs.push(
                format!("{k}.cluster"),
                format!("no cluster named {:?}", t.cluster),
            );
        }
        let ppm = percent_to_ppm(t.weight);
        if ppm.is_none() {
            errs.push(
                format!("{k}.weight"),
                format!("expected a percent from 0 to 100, got {}", t.weight),
            );
        }
        targets.push(SplitTarget {
            name: t.name.clone(),
            cluster: cluster.unwrap_or(0),
            weight_ppm: ppm.unwrap_or(0),
        });
    }
    let total: u64 = targets.iter().map(|t| t.weight_ppm as u64).sum();
    if !targets.is_empty() && total != PPM as u64 {
        errs.push(
            format!("{key}.targets"),
            format!(
                "weights add up to {}%, expected 100%",
                total as f64 / 10_000.0
            ),
        );
    }
    let index = |name: &str| targets.iter().position(|t| t.name == name);
    let default_target = match &s.default_target {
        None => 0,
        Some(n) => index(n).unwrap_or_else(|| {
            errs.push(
                format!("{key}.default_target"),
                format!("no target named {n:?}"),
            );
            0
        }),
    };
    let sticky = s.sticky.as_deref().and_then(|k| match parse_hash_key(k) {
        Ok(crate::config::HashKey::Path) | Err(_) => {
            errs.push(format!("{key}.sticky"), format!("expected \"header:NAME\", \"cookie:NAME\", \"query:NAME\", \"jwt:CLAIM\", \"client_ip\", \"country\" or \"continent\", got {k:?}"));
            None
        }
        Ok(h) => Some(h),
    });
    let mut overrides = Vec::new();
    for (i, o) in s.overrides.iter().enumerate() {
        let k = format!("{key}.override[{i}]");
        let named = [&o.header, &o.query, &o.cookie, &o.jwt_claim];
        let listed = [&o.client_ip, &o.country, &o.continent];
        let set = named.iter().filter(|x| x.is_some()).count()
            + listed.iter().filter(|x| x.is_some()).count();
        if set != 1 {
            errs.push(
                k.clone(),
                "set exactly one of header, query, cookie, jwt_claim, client_ip, country or continent",
            );
            continue;
        }
        let rule = if let Some(list) = &o.client_ip {
            let Some(set) = crate::config::ip_set(list, &format!("{k}.client_ip"), errs) else {
                continue;
            };
            Targeting {
                source: Source::ClientIp(std::sync::Arc::new(set)),
                values: Vec::new(),
            }
        } else if let Some((source, list, name)) = o
            .country
            .as_ref()
            .map(|l| (Source::Country, l, "country"))
            .or(o
                .continent
                .as_ref()
                .map(|l| (Source::Continent, l, "continent")))
        {
            let values = super::routes::codes(list, &format!("{k}.{name}"), errs)
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            Targeting { source, values }
        } else {
            let source = match (&o.header, &o.query, &o.cookie, &o.jwt_claim) {
                (Some(h), _, _, _) => Source::Header(h.to_ascii_lowercase()),
                (_, Some(q), _, _) => Source::Query(q.clone()),
                (_, _, Some(c), _) => Source::Cookie(c.clone()),
                (_, _, _, Some(c)) => Source::Claim(c.clone()),
                _ => continue,
            };
            let Some(value) = o.value.clone() else {
                errs.push(
                    format!("{k}.value"),
                    "expected the value that forces the target",
                );
                continue;
            };
            Targeting {
                source,
                values: vec![value],
            }
        };
        if o.value.is_some() && !listed.iter().all(|x| x.is_none()) {
            errs.push(
                format!("{k}.value"),
                "client_ip, country and continent carry their own list; value is for the others",
            );
        }
        match index(&o.target) {
            Some(target) => overrides.push(Override { rule, target }),
            None => errs.push(
                format!("{k}.target"),
                format!("no target named {:?}", o.target),
            ),
        }
    }
    let targeting = |list: &[RawTargeting], what: &str, errs: &mut Errors| -> Vec<Targeting> {
        list.iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let k = format!("{key}.{what}[{i}]");
                let geo = match (&t.country, &t.continent) {
                    (Some(list), None) => Some((Source::Country, list, "country")),
                    (None, Some(list)) => Some((Source::Continent, list, "continent")),
                    (None, None) => None,
                    _ => {
                        errs.push(k, "set exactly one of header, consumer, client_ip, jwt_claim, country or continent");
                        return None;
                    }
                };
                if let Some((source, list, name)) = geo {
                    if t.header.is_some() || t.consumer.is_some() || t.client_ip.is_some() || t.jwt_claim.is_some() || !t.values.is_empty() {
                        errs.push(k, "set exactly one of header, consumer, client_ip, jwt_claim, country or continent");
                        return None;
                    }
                    let values = super::routes::codes(list, &format!("{k}.{name}"), errs)
                        .iter()
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect();
                    return Some(Targeting { source, values });
                }
                let source = match (&t.header, &t.consumer, &t.client_ip, &t.jwt_claim) {
                    (Some(h), None, None, None) => Source::Header(h.to_ascii_lowercase()),
                    (None, Some(c), None, None) => Source::Consumer(c.clone()),
                    (None, None, None, Some(c)) => Source::Claim(c.clone()),
                    (None, None, Some(list), None) => {
                        let set = crate::config::ip_set(list, &format!("{k}.client_ip"), errs)?;
                        if !t.values.is_empty() {
                            errs.push(
                                format!("{k}.values"),
                                "client_ip carries its own prefixes; values is for header or consumer",
                            );
                        }
                        return Some(Targeting {
                            source: Source::ClientIp(std::sync::Arc::new(set)),
                            values: Vec::new(),
                        });
                    }
                    _ => {
                        errs.push(k, "set exactly one of header, consumer, client_ip or jwt_claim");
                        return None;
                    }
                };
                if t.values.is_empty() {
                    errs.push(format!("{k}.values"), "expected at least one value");
                }
                Some(Targeting {
                    source,
                    values: t.values.clone(),
                })
            })
            .collect()
    };
    let include = targeting(&s.include, "include", errs);
    let exclude = targeting(&s.exclude, "exclude", errs);
    let mirror = s.mirror.as_ref().and_then(|m| {
        let k = format!("{key}.mirror");
        let cluster = clusters.iter().position(|c| c.name == m.cluster);
        if cluster.is_none() {
            errs.push(
                format!("{k}.cluster"),
                format!("no cluster named {:?}", m.cluster),
            );
        }
        let ppm = percent_to_ppm(m.percent);
        if ppm.is_none() {
            errs.push(
                format!("{k}.percent"),
                format!("expected a percent from 0 to 100, got {}", m.percent),
            );
        }
        let max_body = match &m.max_body {
            None => 64 * 1024,
            Some(v) => parse_size(v).unwrap_or_else(|e| {
                errs.push(format!("{k}.max_body"), e);
                0
            }),
        };
        Some(MirrorConfig {
            cluster: cluster?,
            ppm: ppm?,
            max_body,
            max_in_flight: m.max_in_flight.unwrap_or(100),
            timeout: errs.duration(&format!("{k}.timeout"), &m.timeout, Duration::from_secs(5)),
        })
    });
    let analysis = s.analysis.as_ref().and_then(|a| {
        let k = format!("{key}.analysis");
        let pick = |field: &str, v: &Option<String>, fallback: usize, errs: &mut Errors| match v {
            None => Some(fallback),
            Some(n) => {
                let i = index(n);
                if i.is_none() {
                    errs.push(format!("{k}.{field}"), format!("no target named {n:?}"));
                }
                i
            }
        };
        let baseline = pick("baseline", &a.baseline, default_target, errs);
        let canary = pick(
            "canary",
            &a.canary,
            if default_target == 0 { 1 } else { 0 },
            errs,
        );
        if targets.len() < 2 {
            errs.push(k.clone(), "analysis needs a baseline and a canary target");
            return None;
        }
        if baseline == canary {
            errs.push(
                format!("{k}.canary"),
                "the canary must differ from the baseline",
            );
        }
        for (field, v) in [
            ("max_error_rate", a.max_error_rate),
            ("max_error_rate_increase", a.max_error_rate_increase),
        ] {
            if v.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
                errs.push(format!("{k}.{field}"), "expected a share from 0.0 to 1.0");
            }
        }
        if a.max_p99_ratio.is_some_and(|r| r < 1.0 || !r.is_finite()) {
            errs.push(
                format!("{k}.max_p99_ratio"),
                "expected a ratio of at least 1.0",
            );
        }
        let max_p99 = a
            .max_p99
            .as_ref()
            .map(|_| errs.duration(&format!("{k}.max_p99"), &a.max_p99, Duration::from_secs(1)));
        Some(AnalysisConfig {
            baseline: baseline?,
            canary: canary?,
            window: errs.duration(&format!("{k}.window"), &a.window, Duration::from_secs(60)),
            interval: errs.duration(
                &format!("{k}.interval"),
                &a.interval,
                Duration::from_secs(5),
            ),
            min_requests: a.min_requests.unwrap_or(100),
            max_error_rate: a.max_error_rate,
            max_error_rate_increase: a.max_error_rate_increase,
            max_p99,
            max_p99_ratio: a.max_p99_ratio,
        })
    });
    let promotion = s.promotion.as_ref().and_then(|p| {
        let k = format!("{key}.promotion");
        if analysis.is_none() {
            errs.push(k.clone(), "promotion needs [analysis] to gate each step");
        }
        let steps: Option<Vec<u32>> = p.steps.iter().map(|&x| percent_to_ppm(x)).collect();
        let Some(steps) = steps else {
            errs.push(format!("{k}.steps"), "expected percents from 0 to 100");
            return None;
        };
        if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) {
            errs.push(
                format!("{k}.steps"),
                "expected increasing percents, such as [1, 5, 25, 50, 100]",
            );
        }
        Some(PromotionConfig {
            steps,
            hold: errs.duration(&format!("{k}.hold"), &p.hold, Duration::from_secs(300)),
        })
    });
    if let Some(ab) = &s.ab_test {
        if ab.is_empty() || ab.bytes().any(|b| !b.is_ascii_graphic()) {
            errs.push(format!("{key}.ab_test"), "expected a name without spaces");
        }
    }
    if errs.0.len() != before {
        return None;
    }
    let name = s.name.clone().unwrap_or_else(|| route_name.to_string());
    let fingerprint = crate::hash::fnv1a_of(format!("{s:?}").as_bytes());
    Some(SplitConfig {
        name,
        targets,
        default_target,
        sticky,
        salt: s.salt.clone().unwrap_or_default(),
        overrides,
        force_header: s.force_header.as_ref().map(|h| h.to_ascii_lowercase()),
        include,
        exclude,
        ab_test: s.ab_test.clone(),
        mirror,
        analysis,
        promotion,
        fingerprint,
    })
}

pub(super) fn validate_rate_limit(
    key: &str,
    r: &RawRateLimit,
    errs: &mut Errors,
) -> Option<RateLimitConfig> {
    let rkey = match r.key.as_str() {
        "client_ip" => RateKey::ClientIp,
        "consumer" => RateKey::Consumer,
        k => match k.split_once(':') {
            Some(("header", h)) if !h.is_empty() => RateKey::Header(h.to_ascii_lowercase()),
            Some(("jwt", c)) if !c.is_empty() => RateKey::Claim(c.to_string()),
            None if k == "country" => RateKey::Country,
            _ => {
                errs.push(
                    format!("{key}.key"),
                    format!("expected \"client_ip\", \"consumer\", \"country\", \"header:NAME\" or \"jwt:CLAIM\", got {k:?}"),
                );
                return None;
            }
        },
    };
    if r.limits.is_empty() {
        errs.push(format!("{key}.limits"), "expected at least one limit");
    }
    let mut rules = Vec::new();
    for (i, l) in r.limits.iter().enumerate() {
        let k = format!("{key}.limits[{i}]");
        if l.requests == 0 {
            errs.push(format!("{k}.requests"), "expected at least 1 request");
        }
        let period = errs.duration(
            &format!("{k}.per"),
            &Some(l.per.clone()),
            Duration::from_secs(60),
        );
        if period.is_zero() {
            errs.push(format!("{k}.per"), "expected a period greater than zero");
        }
        rules.push(RateRule {
            when: l.when.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
            when_claims: super::jwt::claim_conds(&l.when_claims, &format!("{k}.when_claims"), errs),
            rate: Rate {
                requests: l.requests,
                period,
                burst: l.burst.unwrap_or(l.requests),
            },
        });
    }
    let fleet = match r.scope.as_deref() {
        None | Some("local") => false,
        Some("fleet") => true,
        Some(other) => {
            errs.push(
                format!("{key}.scope"),
                format!("expected \"local\" or \"fleet\", got {other:?}"),
            );
            false
        }
    };
    let strict = r.strict.unwrap_or(false);
    if strict && !fleet {
        errs.push(
            format!("{key}.strict"),
            "strict checks a fleet-wide count in Redis: set scope = \"fleet\" too",
        );
    }
    Some(RateLimitConfig {
        key: rkey,
        rules,
        fleet,
        strict,
    })
}

pub(super) fn validate_consumers(
    identity: Option<&RawIdentity>,
    list: &[RawConsumer],
    errs: &mut Errors,
) -> crate::identity::Consumers {
    let config = IdentityConfig {
        header: identity
            .and_then(|i| i.header.clone())
            .unwrap_or_else(|| "x-api-key".into())
            .to_ascii_lowercase(),
        query: identity.and_then(|i| i.query.clone()),
    };
    let mut consumers = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let k = format!("consumers[{i}]");
        if list[..i].iter().any(|o| o.name == c.name) {
            errs.push(
                format!("{k}.name"),
                format!("consumer {:?} is listed twice", c.name),
            );
        }
        match parse_sha256_hex(&c.key_sha256.to_ascii_lowercase()) {
            Some(h) => {
                if consumers.iter().any(|x: &Consumer| x.key_sha256 == h) {
                    errs.push(format!("{k}.key_sha256"), "two consumers share one key");
                }
                consumers.push(Consumer {
                    name: c.name.clone(),
                    key_sha256: h,
                    metadata: c
                        .metadata
                        .iter()
                        .map(|(a, b)| (a.clone(), b.clone()))
                        .collect(),
                });
            }
            None => errs.push(
                format!("{k}.key_sha256"),
                "expected 64 hex digits: the SHA-256 of the key, never the key itself",
            ),
        }
    }
    crate::identity::Consumers::new(config, consumers)
}
