//! A real browser for the tests: Debian's Chromium, headless, driven over WebDriver by
//! Debian's ChromeDriver. This is the small part of the protocol the console tests use.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The WebDriver name of an element reference in a JSON answer.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Why a browser test cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    [CHROMIUM, CHROMEDRIVER]
        .iter()
        .find(|p| !Path::new(p).is_file())
        .map(|p| format!("{p} is missing (Debian packages chromium and chromium-driver)"))
}

/// A ChromeDriver process and one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    profile: PathBuf,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium with a new, empty profile.
    pub fn start() -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
            l.local_addr().expect("port").port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // In a process group of its own, which Chromium joins: the end of the test ends both,
        // even if the session could not be closed.
        let driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = super::scratch_dir("chromium");
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
            profile,
        };
        super::wait_until("chromedriver to be ready", || {
            b.call("GET", "/status", None)
                .is_ok_and(|v| v["ready"] == true)
        });
        // Flags: a closed network, so nothing in the background reaches out, and no
        // sandbox (the tests run as root).
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-crash-reporter".into(),
            "--disable-breakpad".into(),
            "--window-size=1280,1000".into(),
            format!("--user-data-dir={}", b.profile.display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let v = b
            .call("POST", "/session", Some(&caps))
            .expect("a browser session");
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    /// One WebDriver command; `Err` with the driver's message if it failed.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let mut s = TcpStream::connect(self.addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        // ChromeDriver keeps the connection open: read the head, then what it says follows.
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let split = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("chromedriver closed the connection".into());
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let mut payload = raw[split + 4..].to_vec();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = head.contains("transfer-encoding: chunked");
        loop {
            let done = match length {
                Some(n) => payload.len() >= n,
                None if chunked => payload.ends_with(b"0\r\n\r\n"),
                None => false,
            };
            if done {
                break;
            }
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            payload.extend_from_slice(&buf[..n]);
        }
        if chunked {
            payload = dechunk(&payload);
        }
        let v: Value = serde_json::from_slice(&payload)
            .map_err(|e| format!("chromedriver answered with no JSON: {e}"))?;
        let status = head.get(9..12).unwrap_or("");
        if status != "200" {
            return Err(format!("{method} {path}: {status} {}", v["value"]));
        }
        Ok(v["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        self.call(method, &full, body)
            .unwrap_or_else(|e| panic!("webdriver: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// The text of the first element `css` selects, if there is one.
    pub fn text(&self, css: &str) -> Option<String> {
        let v = self.eval(&format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            Value::from(css)
        ));
        v.as_str().map(str::to_string)
    }

    /// Waits until the text of `css` satisfies `ok`, and returns it.
    pub fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + super::BOUND;
        loop {
            let t = self.text(css);
            if let Some(t) = t.as_deref().filter(|t| ok(t)) {
                return t.to_string();
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}: {css} shows {t:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `css` selects an element that is rendered (not hidden).
    pub fn visible(&self, css: &str) -> bool {
        self.eval(&format!(
            "const e = document.querySelector({}); return !!(e && e.offsetParent !== null);",
            Value::from(css)
        )) == true
    }

    fn element(&self, css: &str) -> String {
        let v = self.session_call(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// Clicks the element `css` selects, as a user would.
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.session_call("POST", &format!("/element/{id}/click"), Some(&json!({})));
    }

    /// Clears the field `css` selects and types `text` into it.
    pub fn fill(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session_call("POST", &format!("/element/{id}/clear"), Some(&json!({})));
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(&json!({ "text": text })),
        );
    }

    /// Saves a PNG of the window at `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let v = self.session_call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = &data[(end + 2).min(data.len())..];
    }
    out
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        // Only the processes this test started: the driver's own group, by its id (the
        // driver's PID), Chromium included if the session's end did not take it.
        if let Ok(pgid) = i32::try_from(self.driver.id()) {
            // SAFETY: kill with a negative PID signals that process group only; the group is
            // the one this test made for the driver it spawned.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
