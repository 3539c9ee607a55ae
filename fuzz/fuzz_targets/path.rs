//! Path normalisation on any bytes: never a panic; a result is absolute, has no dot segment
//! (and so never climbs above `/`), no run of slashes when merging, and normalising it again
//! changes nothing, so what routing sees is what goes upstream.
#![no_main]

use lb::http::path::{has_dot_segment, normalize, EscapedSlashes, PathOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, path)) = data.split_first() else {
        return;
    };
    let opts = PathOptions {
        merge_slashes: flags & 1 == 0,
        escaped_slashes: if flags & 2 == 0 {
            EscapedSlashes::Reject
        } else {
            EscapedSlashes::Keep
        },
    };
    let mut scratch = Vec::new();
    let Ok(once) = normalize(path, opts, &mut scratch) else {
        return;
    };
    let once = once.to_vec();
    assert!(once.starts_with(b"/"));
    assert!(!has_dot_segment(&once));
    if opts.merge_slashes {
        assert!(!once.windows(2).any(|w| w == b"//"));
    }
    let mut again = Vec::new();
    let twice = normalize(&once, opts, &mut again).expect("a normal path stays valid");
    assert_eq!(once, twice);
});
