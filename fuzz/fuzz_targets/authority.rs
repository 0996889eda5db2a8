#![no_main]
//! Any text as an authority (`Host`, absolute-form, `CONNECT`): parsed or refused, never a
//! panic; what parses prints back to a spelling that parses to the same host and port.

use egress_core::host::parse_authority;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((host, port)) = parse_authority(text) else {
        return;
    };
    let printed = match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let again = parse_authority(&printed)
        .unwrap_or_else(|e| panic!("{text:?} parsed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again, (host, port), "{text:?} -> {printed:?}");
});
