//! Response heads from a backend, then their chunked bodies: never a panic, and the decoder
//! stays inside its input and makes progress.
#![no_main]

#[path = "chunks.rs"]
mod chunks;

use lb::http::response;
use lb::http::Framing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let mut storage = lb::http::header_slots::<100>();
    let Ok(Some(head)) = response::parse(data, &mut storage, first & 1 == 1) else {
        return;
    };
    assert!(head.head_len <= data.len());
    if first & 1 == 1 {
        assert_eq!(
            head.framing,
            Framing::None,
            "a response to HEAD has no body"
        );
    }
    if head.framing == Framing::Chunked {
        chunks::decode_all(&data[head.head_len..]);
    }
});
