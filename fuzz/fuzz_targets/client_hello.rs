#![no_main]
//! Any bytes, any split: the ClientHello reader answers or refuses, never panics.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = egress_tls::sni::parse_client_hello(data);
});
