//! Shared by the request and response targets.

use lb::http::chunked::{ChunkedDecoder, Step};

/// Runs the chunked decoder over `body` the way the proxy does, consuming what each step
/// names: every step stays inside the input and makes progress, and `End` means done.
pub fn decode_all(mut body: &[u8]) {
    let mut d = ChunkedDecoder::new();
    loop {
        let n = match d.step(body) {
            Ok(Step::Data(n) | Step::Skip(n) | Step::LastChunk(n) | Step::Trailer(n)) => n,
            Ok(Step::End(n)) => {
                assert!(n <= body.len() && d.is_done());
                return;
            }
            Ok(Step::NeedMore) | Err(_) => return,
        };
        assert!(
            n > 0 && n <= body.len(),
            "a step of {n} bytes over {} bytes",
            body.len()
        );
        body = &body[n..];
    }
}
