#![no_main]
//! Any path in every normalisation mode: normalised or refused, never a panic, and:
//! - idempotent: a normalised path is already normal;
//! - what is forwarded is what was evaluated: the layer forwards exactly the output;
//! - no dot segment survives (any mode but NONE), no `//` either (the merging modes);
//! - no path parameter is let through unless allowed.

use egress_policy::authz::path::{Normalization, normalize_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(tail) = std::str::from_utf8(rest) else {
        return;
    };
    let path = format!("/{tail}");
    let mode = match flags & 3 {
        0 => Normalization::None,
        1 => Normalization::Base,
        2 => Normalization::MergeSlashes,
        _ => Normalization::DecodeAndMergeSlashes,
    };
    let params = flags & 4 != 0;
    let Ok(out) = normalize_with(&path, mode, params) else {
        return;
    };
    let normal = out.unwrap_or_else(|| path.clone());
    assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    if !params {
        assert!(!normal.contains(';'), "{path:?} -> {normal:?}");
    }
    if mode != Normalization::None {
        for seg in normal.split('/') {
            assert!(seg != "." && seg != "..", "{path:?} -> {normal:?}");
        }
        assert!(!normal.contains('\\'), "{path:?} -> {normal:?}");
        let again = normalize_with(&normal, mode, params)
            .unwrap_or_else(|e| panic!("{path:?} -> {normal:?}, refused the second time: {e}"));
        assert_eq!(again, None, "not idempotent: {path:?} -> {normal:?}");
    }
    if matches!(
        mode,
        Normalization::MergeSlashes | Normalization::DecodeAndMergeSlashes
    ) {
        assert!(!normal.contains("//"), "{path:?} -> {normal:?}");
    }
    if mode == Normalization::DecodeAndMergeSlashes {
        let upper = normal.to_ascii_uppercase();
        assert!(
            !upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%2E"),
            "{path:?} -> {normal:?}"
        );
    }
});
