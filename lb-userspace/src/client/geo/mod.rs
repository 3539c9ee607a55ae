//! Country-level geolocation of the client's address from a MaxMind DB file (`[geoip]`):
//! GeoIP2/GeoLite2 Country or City databases, or any database with `country.iso_code` (or a
//! top-level `country_code`) and `continent.code`.
//!
//! The file is read when the config loads (`lb check` reads it too), and again on every
//! reload; the certificate watch also watches it, so a replaced file reloads on its own. A
//! file that does not read refuses the reload, and the running database stays.

pub mod write;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// What lb knows of where a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geo {
    /// ISO 3166-1 alpha-2, upper case; the configured default when not found.
    pub country: [u8; 2],
    /// `AF`, `AN`, `AS`, `EU`, `NA`, `OC`, `SA`; `--` when not known.
    pub continent: [u8; 2],
    pub found: bool,
}

impl Geo {
    pub fn country(&self) -> &str {
        std::str::from_utf8(&self.country).unwrap_or("ZZ")
    }

    pub fn continent(&self) -> &str {
        std::str::from_utf8(&self.continent).unwrap_or("--")
    }
}

/// A two-letter code, upper-cased; `None` unless it is two ASCII letters.
pub fn code(s: &str) -> Option<[u8; 2]> {
    match s.as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

/// A loaded database and what `[geoip]` says about using it.
pub struct GeoDb {
    pub path: PathBuf,
    reader: maxminddb::Reader<Vec<u8>>,
    /// The country of an address the database does not know.
    pub default_country: [u8; 2],
    /// A header that tells the backend the client's country (lb's word: a client's copy is
    /// removed).
    pub header: Option<String>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("path", &self.path)
            .field("type", &self.reader.metadata().database_type)
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<Named<'a>>,
    #[serde(borrow, default)]
    continent: Option<Named<'a>>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
}

#[derive(serde::Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

/// `lb_geoip_lookups_total{result}`: found, not found.
fn counters() -> &'static [metrics::Counter; 2] {
    static C: OnceLock<[metrics::Counter; 2]> = OnceLock::new();
    C.get_or_init(|| {
        [
            metrics::counter!(crate::metrics::names::GEOIP_LOOKUPS, "result" => "found"),
            metrics::counter!(crate::metrics::names::GEOIP_LOOKUPS, "result" => "not_found"),
        ]
    })
}

impl GeoDb {
    /// Reads and checks the database at `path`.
    pub fn open(
        path: PathBuf,
        default_country: [u8; 2],
        header: Option<String>,
    ) -> Result<GeoDb, String> {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let reader = maxminddb::Reader::from_source(bytes)
            .map_err(|e| format!("{}: not a MaxMind DB file: {e}", path.display()))?;
        let db = GeoDb {
            path,
            reader,
            default_country,
            header,
        };
        // One lookup, so that a truncated tree or data section fails here, not per request.
        db.reader
            .lookup(IpAddr::V4(std::net::Ipv4Addr::new(8, 8, 8, 8)))
            .and_then(|r| r.decode::<Record<'_>>().map(|_| ()))
            .map_err(|e| format!("{}: unreadable: {e}", db.path.display()))?;
        Ok(db)
    }

    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// Where `ip` is; the default country (and continent `--`) if the database does not
    /// know it. Counted either way.
    pub fn lookup(&self, ip: IpAddr) -> Geo {
        let found = self
            .reader
            .lookup(ip.to_canonical())
            .ok()
            .and_then(|r| r.decode::<Record<'_>>().ok().flatten())
            .and_then(|rec| {
                let country = rec
                    .country
                    .as_ref()
                    .and_then(|c| c.iso_code)
                    .or(rec.country_code)
                    .and_then(code)?;
                let continent = rec
                    .continent
                    .as_ref()
                    .and_then(|c| c.code)
                    .and_then(code)
                    .unwrap_or(*b"--");
                Some(Geo {
                    country,
                    continent,
                    found: true,
                })
            });
        let c = counters();
        let count = !crate::dryrun::active();
        match found {
            Some(g) => {
                if count {
                    c[0].increment(1);
                }
                g
            }
            None => {
                if count {
                    c[1].increment(1);
                }
                Geo {
                    country: self.default_country,
                    continent: *b"--",
                    found: false,
                }
            }
        }
    }
}

/// The database a config loaded, shared by its snapshots.
pub type Shared = Arc<GeoDb>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_database_reads_back() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let db = write::country_db(&[
            (ip("192.0.2.0"), 24, "DE", "EU"),
            (ip("198.51.100.0"), 24, "US", "NA"),
            (ip("10.0.0.0"), 8, "FR", "EU"),
            // Nested in the /8 above: the narrower one wins for its addresses.
            (ip("10.1.0.0"), 16, "JP", "AS"),
            (ip("2001:db8::"), 32, "BR", "SA"),
        ]);
        let dir = std::env::temp_dir().join(format!("lb-geo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.mmdb");
        std::fs::write(&path, db).expect("write");
        let g = GeoDb::open(path, *b"ZZ", None).expect("open");
        let at = |s: &str| {
            let g = g.lookup(ip(s));
            (g.country().to_string(), g.continent().to_string(), g.found)
        };
        assert_eq!(at("192.0.2.77"), ("DE".into(), "EU".into(), true));
        assert_eq!(at("198.51.100.1"), ("US".into(), "NA".into(), true));
        assert_eq!(at("10.200.0.1"), ("FR".into(), "EU".into(), true));
        assert_eq!(at("10.1.2.3"), ("JP".into(), "AS".into(), true));
        assert_eq!(at("2001:db8:1::1"), ("BR".into(), "SA".into(), true));
        assert_eq!(at("::ffff:192.0.2.5"), ("DE".into(), "EU".into(), true));
        assert_eq!(at("203.0.113.1"), ("ZZ".into(), "--".into(), false));
        assert_eq!(g.database_type(), "lb-Country");
        std::fs::write(dir.join("bad.mmdb"), b"not a database").expect("write");
        assert!(GeoDb::open(dir.join("bad.mmdb"), *b"ZZ", None).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
