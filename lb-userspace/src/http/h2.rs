//! Flood limits the `h2` crate does not enforce itself, counted on the frame headers of the
//! client's byte stream before h2 sees them: PING and SETTINGS floods, empty DATA frames,
//! RST_STREAM in a loop (rapid reset, CVE-2023-44487, beside h2's own pending-reset cap),
//! CONTINUATION without end (CVE-2024-27316) and header blocks larger than the limit. A
//! tripped limit ends the connection with GOAWAY `ENHANCE_YOUR_CALM`, counted by which
//! limit it was.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// gRPC status codes by number (the `code` label and the names configs use).
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A gRPC status code by its name (`UNAVAILABLE`).
pub fn grpc_code(name: &str) -> Option<u32> {
    GRPC_CODES.iter().position(|c| *c == name).map(|i| i as u32)
}

/// A `grpc-status` value.
pub fn parse_grpc_status(v: &[u8]) -> Option<u32> {
    let n: u32 = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
    (n < GRPC_CODES.len() as u32).then_some(n)
}

/// The gRPC codes that count as errors by default (in the canary analysis): the ones that
/// say the server failed, not the caller.
pub const DEFAULT_GRPC_ERRORS: u32 = 1 << 2 | 1 << 4 | 1 << 13 | 1 << 14 | 1 << 15;

/// The `[http2]` table: HTTP/2 limits for every listener that speaks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Settings {
    /// Streams a client may have open at once.
    pub max_concurrent_streams: u32,
    /// Largest header list (decoded) a request may have.
    pub max_header_list_size: u32,
    /// Flow-control window of each stream, and of the whole connection.
    pub stream_window: u32,
    pub connection_window: u32,
    /// Largest frame payload lb accepts.
    pub max_frame_size: u32,
    /// Streams the client reset before lb accepted them, queued at most (h2's rapid-reset
    /// guard).
    pub max_pending_resets: usize,
    /// Streams lb had to reset for the client's errors before the connection is closed.
    pub max_error_resets: usize,
    /// The HPACK dynamic table lb keeps for decoding.
    pub hpack_table_size: u32,
    /// A connection with no stream open this long is closed (GOAWAY).
    pub idle_timeout: Duration,
    /// The connection preface and SETTINGS exchange must finish within this.
    pub handshake_timeout: Duration,
    pub flood: FloodLimits,
    /// gRPC codes (a bit per code) that count as errors for the canary analysis.
    pub grpc_error_codes: u32,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            max_concurrent_streams: 128,
            max_header_list_size: 64 * 1024,
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
            max_frame_size: 16 * 1024,
            max_pending_resets: 20,
            max_error_resets: 128,
            hpack_table_size: 4096,
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            flood: FloodLimits {
                pings_per_second: 20,
                settings_per_second: 20,
                resets_per_second: 200,
                empty_frames_per_second: 100,
                continuation_frames: 32,
                header_block_bytes: 64 * 1024,
            },
            grpc_error_codes: DEFAULT_GRPC_ERRORS,
        }
    }
}

/// The connection preface a client sends before its first frame.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Per-connection caps, from the listener's `h2` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    /// PING frames per second.
    pub pings_per_second: u32,
    /// SETTINGS frames (not acknowledgements) per second.
    pub settings_per_second: u32,
    /// RST_STREAM frames per second.
    pub resets_per_second: u32,
    /// DATA frames with no payload and no END_STREAM per second.
    pub empty_frames_per_second: u32,
    /// CONTINUATION frames in one header block.
    pub continuation_frames: u32,
    /// Bytes of one header block (HEADERS and its CONTINUATIONs, as compressed).
    pub header_block_bytes: u32,
}

/// A connection's tripwire, shared by its frame watch, its streams and its task: the first
/// limit broken, and the task to wake to end the connection.
#[derive(Default)]
pub struct Trip {
    flood: Cell<Option<Flood>>,
    waker: RefCell<Option<Waker>>,
}

impl Trip {
    /// Records `f` (the first one stays) and wakes the connection task.
    pub fn trip(&self, f: Flood) {
        if self.flood.get().is_none() {
            self.flood.set(Some(f));
        }
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn get(&self) -> Option<Flood> {
        self.flood.get()
    }

    /// Ready with the limit once one is broken.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Flood> {
        match self.flood.get() {
            Some(f) => Poll::Ready(f),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Which limit a connection broke: the `reason` label of `lb_h2_goaways_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Ping,
    Settings,
    Reset,
    EmptyFrames,
    Continuation,
    HeaderBlock,
    /// A stream's flow-control window stayed shut past the send timeout.
    StalledWindow,
}

impl Flood {
    pub fn label(self) -> &'static str {
        match self {
            Flood::Ping => "ping_flood",
            Flood::Settings => "settings_flood",
            Flood::Reset => "rapid_reset",
            Flood::EmptyFrames => "empty_frames",
            Flood::Continuation => "continuation_flood",
            Flood::HeaderBlock => "header_list_too_large",
            Flood::StalledWindow => "stalled_window",
        }
    }
}

/// Frame types (RFC 9113, section 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

/// Counts of one one-second window.
#[derive(Default, Clone, Copy)]
struct Window {
    start_ms: u64,
    pings: u32,
    settings: u32,
    resets: u32,
    empty: u32,
}

/// Watches the frame headers of the client's stream.
pub struct FrameWatch {
    limits: FloodLimits,
    /// Bytes of the preface still to pass.
    preface_left: usize,
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    window: Window,
    /// CONTINUATION frames and bytes of the header block in progress.
    continuations: u32,
    block_bytes: u64,
    in_block: bool,
    tripped: Rc<Trip>,
}

impl FrameWatch {
    /// A watch for a stream that starts with the preface; `tripped` is shared with the
    /// connection task.
    pub fn new(limits: FloodLimits, tripped: Rc<Trip>) -> FrameWatch {
        FrameWatch {
            limits,
            preface_left: PREFACE.len(),
            header: [0; 9],
            header_len: 0,
            payload_left: 0,
            window: Window::default(),
            continuations: 0,
            block_bytes: 0,
            in_block: false,
            tripped,
        }
    }

    pub fn tripped(&self) -> bool {
        self.tripped.get().is_some()
    }

    fn trip(&mut self, f: Flood) {
        self.tripped.trip(f);
    }

    /// Looks at the next bytes of the stream, which arrived at `now_ms` (milliseconds on
    /// any monotonic clock).
    pub fn saw(&mut self, mut bytes: &[u8], now_ms: u64) {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() && !self.tripped() {
            if self.payload_left > 0 {
                let k = (self.payload_left.min(bytes.len() as u64)) as usize;
                self.payload_left -= k as u64;
                bytes = &bytes[k..];
                continue;
            }
            let k = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + k].copy_from_slice(&bytes[..k]);
            self.header_len += k;
            bytes = &bytes[k..];
            if self.header_len == 9 {
                self.header_len = 0;
                let h = self.header;
                let len = u64::from(h[0]) << 16 | u64::from(h[1]) << 8 | u64::from(h[2]);
                self.payload_left = len;
                self.frame(h[3], h[4], len, now_ms);
            }
        }
    }

    /// One frame header: its type, flags and payload length.
    fn frame(&mut self, kind: u8, flags: u8, len: u64, now: u64) {
        if now.saturating_sub(self.window.start_ms) >= 1000 {
            self.window = Window {
                start_ms: now,
                ..Window::default()
            };
        }
        let l = self.limits;
        match kind {
            PING if flags & FLAG_ACK == 0 => {
                self.window.pings += 1;
                if self.window.pings > l.pings_per_second {
                    self.trip(Flood::Ping);
                }
            }
            SETTINGS if flags & FLAG_ACK == 0 => {
                self.window.settings += 1;
                if self.window.settings > l.settings_per_second {
                    self.trip(Flood::Settings);
                }
            }
            RST_STREAM => {
                self.window.resets += 1;
                if self.window.resets > l.resets_per_second {
                    self.trip(Flood::Reset);
                }
            }
            DATA if len == 0 && flags & FLAG_END_STREAM == 0 => {
                self.window.empty += 1;
                if self.window.empty > l.empty_frames_per_second {
                    self.trip(Flood::EmptyFrames);
                }
            }
            HEADERS => {
                self.in_block = flags & FLAG_END_HEADERS == 0;
                self.continuations = 0;
                self.block_bytes = len;
                self.check_block();
            }
            CONTINUATION => {
                self.continuations += 1;
                self.block_bytes += len;
                if self.continuations > l.continuation_frames {
                    self.trip(Flood::Continuation);
                }
                self.check_block();
                if flags & FLAG_END_HEADERS != 0 {
                    self.in_block = false;
                }
            }
            _ => {}
        }
    }

    fn check_block(&mut self) {
        if self.block_bytes > u64::from(self.limits.header_block_bytes) {
            self.trip(Flood::HeaderBlock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FloodLimits = FloodLimits {
        pings_per_second: 3,
        settings_per_second: 3,
        resets_per_second: 3,
        empty_frames_per_second: 3,
        continuation_frames: 2,
        header_block_bytes: 100,
    };

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    fn watch() -> (FrameWatch, Rc<Trip>) {
        let t = Rc::new(Trip::default());
        (FrameWatch::new(LIMITS, t.clone()), t)
    }

    #[test]
    fn each_flood_trips_its_limit_and_normal_traffic_does_not() {
        for (kind, flags, payload, flood) in [
            (PING, 0, &[0u8; 8][..], Flood::Ping),
            (SETTINGS, 0, &[][..], Flood::Settings),
            (RST_STREAM, 0, &[0, 0, 0, 8][..], Flood::Reset),
            (DATA, 0, &[][..], Flood::EmptyFrames),
        ] {
            let (mut w, t) = watch();
            let mut bytes = PREFACE.to_vec();
            for _ in 0..3 {
                bytes.extend(frame(kind, flags, payload));
            }
            w.saw(&bytes, 1000);
            assert_eq!(t.get(), None, "{flood:?}: three are within the limit");
            // The fourth, fed a byte at a time, trips it.
            for b in frame(kind, flags, payload) {
                w.saw(&[b], 1000);
            }
            assert_eq!(t.get(), Some(flood));
        }
        // Acknowledgements and data with END_STREAM are not floods.
        let (mut w, t) = watch();
        let mut bytes = PREFACE.to_vec();
        for _ in 0..10 {
            bytes.extend(frame(PING, FLAG_ACK, &[0; 8]));
            bytes.extend(frame(SETTINGS, FLAG_ACK, &[]));
            bytes.extend(frame(DATA, FLAG_END_STREAM, &[]));
            bytes.extend(frame(DATA, 0, &[1; 50]));
        }
        w.saw(&bytes, 1000);
        assert_eq!(t.get(), None);
    }

    #[test]
    fn header_blocks_are_capped_in_frames_and_bytes() {
        let (mut w, t) = watch();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(HEADERS, 0, &[0; 10]));
        bytes.extend(frame(CONTINUATION, 0, &[0; 10]));
        bytes.extend(frame(CONTINUATION, FLAG_END_HEADERS, &[0; 10]));
        w.saw(&bytes, 1000);
        assert_eq!(t.get(), None, "two CONTINUATIONs are allowed");
        w.saw(&frame(HEADERS, 0, &[0; 10]), 1000);
        for _ in 0..3 {
            w.saw(&frame(CONTINUATION, 0, &[0; 1]), 1000);
        }
        assert_eq!(t.get(), Some(Flood::Continuation));
        let (mut w, t) = watch();
        w.saw(PREFACE, 1000);
        w.saw(&frame(HEADERS, 0, &[0; 60]), 1000);
        w.saw(&frame(CONTINUATION, FLAG_END_HEADERS, &[0; 60]), 1000);
        assert_eq!(t.get(), Some(Flood::HeaderBlock));
    }
}
