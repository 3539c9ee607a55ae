//! Request path normalisation, before routing and before forwarding: what routing decides on
//! is exactly what the backend receives.
//!
//! A backend that normalises paths itself (most web frameworks, nginx as an origin) serves
//! `/public/%2e%2e/admin` as `/admin`. If `lb` routed the raw form, a deny rule on `/admin`
//! would not see it. So `lb` normalises first (RFC 3986 §6.2.2 and §5.2.4), routes on the
//! result, and forwards the result:
//! - percent-encodings of unreserved characters are decoded (`%61` is `a`, `%2E` is `.`);
//!   other encodings are kept, with uppercase hex digits; a broken one (`%zz`, `%4`) is 400;
//! - `%2F` and `%5C` (an encoded `/` or `\`), and a raw `\`, are refused by default: a
//!   backend that decodes them would see a different path than `lb` routed. With
//!   [`EscapedSlashes::Keep`] they are passed on as they are (still encoded, never decoded);
//! - runs of `/` are merged into one unless turned off (as nginx's `merge_slashes`);
//! - dot segments (`.` and `..`) are removed; a path that climbs above `/` is 400;
//! - a `#` anywhere in the target is 400 (a fragment is never sent by a conforming client).
//!
//! The query is not touched. Most paths are already normal: they are checked in one pass and
//! used in place, without a copy.

/// What to do with `%2F` and `%5C` in a path (and a raw `\`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request with 400 (the default).
    #[default]
    Reject,
    /// Pass them on as they are; they are never decoded, so they never split a segment.
    Keep,
}

/// How paths are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Why a path was refused; each is a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    Fragment,
    BadEscape,
    EscapedSlash,
    AboveRoot,
    NotAbsolute,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for PathError {}

impl PathError {
    /// The message sent to the client (static, for the error body).
    pub fn message(self) -> &'static str {
        match self {
            PathError::Fragment => "the request target has a fragment ('#')",
            PathError::BadEscape => "the path has an invalid percent-encoding",
            PathError::EscapedSlash => {
                "the path has an encoded '/' or '\\', or a raw '\\', which this listener refuses"
            }
            PathError::AboveRoot => "the path climbs above '/'",
            PathError::NotAbsolute => "the path does not start with '/'",
        }
    }
}

/// RFC 3986 unreserved characters: their percent-encoding means the same as the character.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Refuses a `#` anywhere in a request target (path or query).
pub fn check_target(target: &[u8]) -> Result<(), PathError> {
    if target.contains(&b'#') {
        return Err(PathError::Fragment);
    }
    Ok(())
}

/// True if `path` is already in normal form under `opts` (and valid): it can be used as is.
/// Errors that need no rewriting to find (a fragment, a raw `\` when refused) are reported.
fn is_normal(path: &[u8], opts: PathOptions) -> Result<bool, PathError> {
    if path.first() != Some(&b'/') {
        return Ok(false);
    }
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'%' | b'#' => return Ok(false),
            b'\\' if opts.escaped_slashes == EscapedSlashes::Reject => {
                return Err(PathError::EscapedSlash)
            }
            b'/' => {
                let rest = &path[i + 1..];
                if opts.merge_slashes && rest.first() == Some(&b'/') {
                    return Ok(false);
                }
                if is_dot_segment_start(rest) {
                    return Ok(false);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(true)
}

/// True if `rest` (what follows a `/`) starts with a `.` or `..` segment.
fn is_dot_segment_start(rest: &[u8]) -> bool {
    matches!(
        rest,
        [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..]
    )
}

/// The normal form of `path` (the part of the target before `?`). Returns `path` itself when
/// it is already normal, or the normal form written into `scratch`.
pub fn normalize<'a>(
    path: &'a [u8],
    opts: PathOptions,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], PathError> {
    if path.is_empty() {
        return Ok(b"/");
    }
    if is_normal(path, opts)? {
        return Ok(path);
    }
    if path[0] != b'/' {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode(path, opts)?;
    scratch.clear();
    scratch.reserve(decoded.len());
    remove_dot_segments(&decoded, opts.merge_slashes, scratch)?;
    Ok(scratch)
}

/// Decodes unreserved characters, uppercases the other encodings, and refuses what cannot be
/// passed on.
fn decode(path: &[u8], opts: PathOptions) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'#' => return Err(PathError::Fragment),
            b'\\' => {
                if opts.escaped_slashes == EscapedSlashes::Reject {
                    return Err(PathError::EscapedSlash);
                }
                out.push(b);
            }
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    path.get(i + 1).copied().and_then(hex_value),
                    path.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                if unreserved(v) {
                    out.push(v);
                } else {
                    if (v == b'/' || v == b'\\') && opts.escaped_slashes == EscapedSlashes::Reject {
                        return Err(PathError::EscapedSlash);
                    }
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    out.extend_from_slice(&[b'%', HEX[(v >> 4) as usize], HEX[(v & 15) as usize]]);
                }
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 over an absolute path, with runs of `/` merged first if asked. Climbing
/// above the root is an error rather than silently clamped: such a request is an attack or a
/// bug, never a page.
fn remove_dot_segments(path: &[u8], merge: bool, out: &mut Vec<u8>) -> Result<(), PathError> {
    // Segment start offsets in `out`, so `..` can drop the last one.
    let mut starts: smallvec::SmallVec<[usize; 16]> = smallvec::SmallVec::new();
    let segments: smallvec::SmallVec<[&[u8]; 16]> = path[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i == last;
        match *seg {
            b"." => {}
            b".." => {
                let Some(start) = starts.pop() else {
                    return Err(PathError::AboveRoot);
                };
                out.truncate(start);
            }
            b"" if merge && !is_last => {}
            _ => {
                starts.push(out.len());
                out.push(b'/');
                out.extend_from_slice(seg);
                continue;
            }
        }
        // A dot segment (or the final empty one) ends in a directory: keep the trailing `/`.
        if is_last {
            out.push(b'/');
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Ok(())
}

/// True if `path` contains a `.` or `..` segment (for checking what a rewrite produced).
pub fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|&b| b == b'/')
        .any(|seg| seg == b"." || seg == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        norm_with(p, PathOptions::default())
    }

    fn norm_with(p: &str, opts: PathOptions) -> Result<String, PathError> {
        let mut scratch = Vec::new();
        normalize(p.as_bytes(), opts, &mut scratch).map(|s| String::from_utf8_lossy(s).into())
    }

    #[test]
    fn the_reported_bypasses_resolve_to_what_a_backend_serves() {
        assert_eq!(norm("/public/%2e%2e/admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/public/%2E%2E/admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/public/../admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("//admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/%61dmin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/admin%2fx"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/admin%5Cx"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/admin\\x"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/api/../../admin"), Err(PathError::AboveRoot));
        assert_eq!(norm("/.."), Err(PathError::AboveRoot));
        assert_eq!(norm("/a#b"), Err(PathError::Fragment));
    }

    #[test]
    fn normal_paths_are_used_in_place() {
        for p in ["/", "/a", "/a/b/", "/a.b/c..d/.e", "/%20x", "/x%2Fy%3A"] {
            let mut scratch = Vec::new();
            let opts = PathOptions {
                escaped_slashes: EscapedSlashes::Keep,
                ..PathOptions::default()
            };
            let out = normalize(p.as_bytes(), opts, &mut scratch).unwrap();
            assert_eq!(out, p.as_bytes());
            if !p.contains('%') {
                assert!(scratch.is_empty(), "{p} was copied");
            }
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(norm("/a/./b").unwrap(), "/a/b");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(norm("/a//").unwrap(), "/a/");
        assert_eq!(norm("//").unwrap(), "/");
        assert_eq!(norm("/./").unwrap(), "/");
        assert_eq!(norm("").unwrap(), "/");
        let keep = PathOptions {
            merge_slashes: false,
            ..PathOptions::default()
        };
        assert_eq!(norm_with("//admin", keep).unwrap(), "//admin");
        assert_eq!(norm_with("/a//../b", keep).unwrap(), "/a/b");
    }

    #[test]
    fn encodings() {
        assert_eq!(norm("/%7euser/%41").unwrap(), "/~user/A");
        assert_eq!(norm("/a%3ab").unwrap(), "/a%3Ab");
        assert_eq!(norm("/%25").unwrap(), "/%25");
        assert_eq!(norm("/%"), Err(PathError::BadEscape));
        assert_eq!(norm("/%4"), Err(PathError::BadEscape));
        assert_eq!(norm("/%zz"), Err(PathError::BadEscape));
        let keep = PathOptions {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathOptions::default()
        };
        assert_eq!(norm_with("/a%2fb/..", keep).unwrap(), "/");
        assert_eq!(norm_with("/a%2fb", keep).unwrap(), "/a%2Fb");
        assert_eq!(norm_with("/a/%2e%2e%2fb", keep).unwrap(), "/a/..%2Fb");
    }

    /// Random paths built from the characters that matter: normalising is idempotent, the
    /// result never climbs above `/` and never has a dot segment or (merged) an empty one.
    #[test]
    fn property_idempotent_and_rooted() {
        const PIECES: [&str; 16] = [
            "/", "/", ".", "..", "a", "b", "%2e", "%2E", "%2f", "%5c", "%41", "%", "%7e", "//",
            "\\", "x%3a",
        ];
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for _ in 0..200_000 {
            let mut p = String::from("/");
            for _ in 0..rng.usize(0..12) {
                p.push_str(PIECES[rng.usize(..PIECES.len())]);
            }
            for opts in [
                PathOptions::default(),
                PathOptions {
                    merge_slashes: false,
                    escaped_slashes: EscapedSlashes::Keep,
                },
            ] {
                let Ok(once) = norm_with(&p, opts) else {
                    continue;
                };
                assert!(once.starts_with('/'), "{p:?} -> {once:?}");
                assert!(!has_dot_segment(once.as_bytes()), "{p:?} -> {once:?}");
                if opts.merge_slashes {
                    assert!(!once.contains("//"), "{p:?} -> {once:?}");
                }
                let twice = norm_with(&once, opts).expect("a normal path stays valid");
                assert_eq!(once, twice, "not idempotent for {p:?}");
            }
        }
    }
}
