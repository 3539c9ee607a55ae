//! Who may call the admin API, checked before any handler runs.
//!
//! - `Host` must name the admin listener: an IP literal, `localhost`, or one of
//!   `admin.hosts`. A web page that rebinds its own DNS name to 127.0.0.1 sends its own name
//!   and is refused.
//! - With `admin.token`, every request carries it as a bearer token, but for the console's
//!   files (`/ui`), which hold no data.
//! - Calls that change state (any method but GET and HEAD) need
//!   `Content-Type: application/json`, which a cross-site form or `fetch` without CORS
//!   cannot send, and are refused when `Origin` names another origin or `Sec-Fetch-Site`
//!   says the request came from another site.

use serde_json::{json, Value};

use super::listener::AdminRequest;
use crate::config::AdminConfig;

/// Why a request was refused: status and JSON body.
pub type Refusal = (u16, Value);

fn refusal(status: u16, error: &str, reason: &str) -> Refusal {
    (status, json!({ "error": error, "reason": reason }))
}

/// Checks `req` against the admin config; `Ok` lets it through to its handler.
pub fn check(req: &AdminRequest, admin: Option<&AdminConfig>) -> Result<(), Refusal> {
    let hosts = admin.map_or(&[][..], |a| &a.hosts[..]);
    let host = req.host.as_deref().unwrap_or("");
    if !host_allowed(host, hosts) {
        return Err(refusal(
            403,
            "forbidden_host",
            "the Host header must name the admin listener (an IP address, localhost, or one of admin.hosts)",
        ));
    }
    // The console's files hold no data: the page asks for the token and sends it with
    // every call it makes.
    let console_file =
        matches!(req.method.as_str(), "GET" | "HEAD") && super::console::asset(&req.path).is_some();
    if let Some(token) = admin
        .and_then(|a| a.token.as_deref())
        .filter(|_| !console_file)
    {
        let given = req
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return Err(refusal(
                401,
                "unauthorized",
                "a valid bearer token is required",
            ));
        }
    }
    if matches!(req.method.as_str(), "GET" | "HEAD") {
        return Ok(());
    }
    if let Some(origin) = req.origin.as_deref() {
        if !same_origin(origin, host) {
            return Err(refusal(
                403,
                "cross_origin",
                "state-changing admin calls are refused from other origins",
            ));
        }
    }
    if let Some(site) = req.sec_fetch_site.as_deref() {
        if !matches!(site.trim(), "same-origin" | "none") {
            return Err(refusal(
                403,
                "cross_origin",
                "state-changing admin calls are refused from other sites",
            ));
        }
    }
    let media = req
        .content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .map(str::trim);
    if !media.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
        return Err(refusal(
            415,
            "unsupported_media_type",
            "state-changing admin calls need Content-Type: application/json",
        ));
    }
    Ok(())
}

/// Compares without an early exit, so timing does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The host part of a `Host` value, without the port, lowercased.
fn host_name(host: &str) -> String {
    let h = std::str::from_utf8(crate::http::request::strip_port(host.as_bytes())).unwrap_or("");
    h.to_ascii_lowercase()
}

fn host_allowed(host: &str, hosts: &[String]) -> bool {
    let name = host_name(host);
    if name.is_empty() {
        return false;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || hosts.contains(&name)
}

/// True if `origin` is `http://<host>` for the `Host` this request was sent to.
fn same_origin(origin: &str, host: &str) -> bool {
    origin
        .trim()
        .strip_prefix("http://")
        .is_some_and(|o| o.eq_ignore_ascii_case(host.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, host: &str) -> AdminRequest {
        AdminRequest {
            method: method.into(),
            path: "/reload".into(),
            body: Vec::new(),
            authorization: None,
            host: Some(host.into()),
            origin: None,
            sec_fetch_site: None,
            content_type: Some("application/json".into()),
        }
    }

    #[test]
    fn host_must_name_the_listener() {
        assert!(check(&req("GET", "127.0.0.1:9901"), None).is_ok());
        assert!(check(&req("GET", "[::1]:9901"), None).is_ok());
        assert!(check(&req("GET", "LocalHost:9901"), None).is_ok());
        assert_eq!(
            check(&req("GET", "evil.example:9901"), None).unwrap_err().0,
            403
        );
        let mut r = req("GET", "x");
        r.host = None;
        assert_eq!(check(&r, None).unwrap_err().0, 403);
        let cfg = AdminConfig {
            addr: "127.0.0.1:9901".parse().unwrap(),
            token: None,
            hosts: vec!["lb1.example.net".into()],
        };
        assert!(check(&req("GET", "LB1.example.net:9901"), Some(&cfg)).is_ok());
    }

    #[test]
    fn state_changes_need_json_and_the_same_origin() {
        let ok = req("POST", "127.0.0.1:9901");
        assert!(check(&ok, None).is_ok());
        let mut text = req("POST", "127.0.0.1:9901");
        text.content_type = Some("text/plain".into());
        assert_eq!(check(&text, None).unwrap_err().0, 415);
        let mut none = req("POST", "127.0.0.1:9901");
        none.content_type = None;
        assert_eq!(check(&none, None).unwrap_err().0, 415);
        let mut params = req("POST", "127.0.0.1:9901");
        params.content_type = Some("Application/JSON; charset=utf-8".into());
        assert!(check(&params, None).is_ok());
        let mut evil = req("POST", "127.0.0.1:9901");
        evil.origin = Some("http://evil.example".into());
        assert_eq!(check(&evil, None).unwrap_err().0, 403);
        let mut same = req("POST", "127.0.0.1:9901");
        same.origin = Some("http://127.0.0.1:9901".into());
        assert!(check(&same, None).is_ok());
        let mut site = req("POST", "127.0.0.1:9901");
        site.sec_fetch_site = Some("cross-site".into());
        assert_eq!(check(&site, None).unwrap_err().0, 403);
        // Reading stays simple: no content type needed for GET.
        let mut get = req("GET", "127.0.0.1:9901");
        get.content_type = None;
        get.origin = Some("http://evil.example".into());
        assert!(check(&get, None).is_ok());
    }

    #[test]
    fn token_is_required_when_set() {
        let cfg = AdminConfig {
            addr: "127.0.0.1:9901".parse().unwrap(),
            token: Some("0123456789abcdef".into()),
            hosts: Vec::new(),
        };
        assert_eq!(
            check(&req("GET", "127.0.0.1"), Some(&cfg)).unwrap_err().0,
            401
        );
        let mut r = req("GET", "127.0.0.1");
        r.authorization = Some("Bearer 0123456789abcdef".into());
        assert!(check(&r, Some(&cfg)).is_ok());
    }
}
