//! Request heads, then the body framing they declare: never a panic, and every step the
//! chunked decoder takes stays inside its input and makes progress.
#![no_main]

#[path = "chunks.rs"]
mod chunks;

use lb::http::request;
use lb::http::Framing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut storage = lb::http::header_slots::<100>();
    let Ok(Some(head)) = request::parse(data, &mut storage) else {
        return;
    };
    assert!(head.head_len <= data.len());
    if head.framing == Framing::Chunked {
        chunks::decode_all(&data[head.head_len..]);
    }
});
