//! `ghostwire mirror coredns-config` output, golden-tested (CoreDNS cannot run here). Set
//! `UPDATE_GOLDEN=1` to rewrite the golden file after an intended change.

use mirror::config::{Overrides, Settings};
use std::path::Path;

#[test]
fn coredns_blocks_match_the_golden_file() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let settings = Settings::load(&data.join("config.json"), &Overrides::default()).unwrap();
    let got = mirror::coredns::render(&settings);
    let golden = data.join("coredns.golden");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(
        got,
        want,
        "coredns-config output changed; UPDATE_GOLDEN=1 rewrites {}",
        golden.display()
    );
}
