//! Differential: for any request head lb accepts and forwards, the head it writes upstream
//! parses back to the same method, the normalised target, the same framing and body length,
//! and carries no hop-by-hop header and no header named in `Connection`.
#![no_main]

#[path = "../../tests/common/forwarded.rs"]
mod forwarded;

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

const CONFIG: &str = "[[listeners]]\naddr = \"127.0.0.1:0\"\n[http]\nwebsocket = false\n\
    [[clusters]]\nname = \"app\"\nendpoints = [{ addr = \"127.0.0.1:9\" }]\n\
    [[routes]]\npath_prefix = \"/\"\ncluster = \"app\"\n";

fn snapshot() -> Arc<lb::snapshot::Snapshot> {
    static SNAP: OnceLock<Arc<lb::snapshot::Snapshot>> = OnceLock::new();
    SNAP.get_or_init(|| {
        let config = lb::config::Config::parse(CONFIG, std::path::Path::new("fuzz"))
            .expect("fuzz config");
        Arc::new(
            lb::snapshot::Snapshot::build(config, CONFIG, &Default::default())
                .expect("fuzz snapshot"),
        )
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    if let Some(out) = lb::proxy::explain::forwarded_head(snapshot(), data) {
        if let Err(e) = forwarded::check(data, &out) {
            panic!("{e}");
        }
    }
});
