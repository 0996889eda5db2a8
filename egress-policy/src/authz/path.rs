//! Path normalisation before authorization and routing, as Istio configures Envoy
//! (`meshConfig.pathNormalization`): what a policy checks is what goes upstream.
//!
//! - `NONE`: the path as received.
//! - `BASE` (Istio's default): RFC 3986 section 6 normalisation: percent-encoded unreserved
//!   characters decoded, percent-encodings upper-cased, `\` read as `/`, dot segments
//!   removed (never above the root).
//! - `MERGE_SLASHES`: `BASE`, then runs of `/` merged.
//! - `DECODE_AND_MERGE_SLASHES` (this gateway's default): `%2F` and `%5C` decoded to `/`
//!   and `\` first, then `MERGE_SLASHES`. A gateway in front of origins it does not know
//!   cannot assume how they read `%2F` or `//`, so the strictest reading is the default, as
//!   `REGISTRY_ONLY` is; an explicit MeshConfig or `--path-normalization` is honoured.
//!
//! A path that cannot be normalised without guessing (a bad percent-encoding, an encoded
//! NUL, a fragment, a non-ASCII byte) is refused: two parsers could read it differently.
//! So is, unless allowed, a path with parameters (`;` in a segment, `/admin;x=1`,
//! `/a/..;/admin`): Tomcat, Jetty and Spring strip them before routing, a policy would not.
//! The query string never takes part and is forwarded as received.

pub use crate::model::Normalization;

/// Why a path was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PathError(pub &'static str);

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalises `path` (no query), refusing path parameters. Returns `None` when it is already
/// normal (the common case costs no allocation).
pub fn normalize(path: &str, mode: Normalization) -> Result<Option<String>, PathError> {
    normalize_with(path, mode, false)
}

/// [`normalize`], with path parameters (`;`) allowed when `params` is true.
pub fn normalize_with(
    path: &str,
    mode: Normalization,
    params: bool,
) -> Result<Option<String>, PathError> {
    let bytes = path.as_bytes();
    if !path.starts_with('/') {
        // `*` (OPTIONS) and authority-form have no path to normalise.
        return Ok(None);
    }
    if bytes.iter().any(|b| !b.is_ascii_graphic()) {
        return Err(PathError("the path has a byte that is not visible ASCII"));
    }
    if path.contains('#') {
        return Err(PathError("the path has a fragment"));
    }
    if !params && path.contains(';') {
        return Err(PathError(
            "the path has parameters (;), which origins strip and policies would not",
        ));
    }
    if mode == Normalization::None {
        return Ok(None);
    }
    // Fast path: nothing any mode would change.
    let suspicious = bytes.iter().any(|b| matches!(b, b'%' | b'\\' | b'.'))
        || (mode != Normalization::Base && path.contains("//"));
    if !suspicious {
        return Ok(None);
    }
    // 1. Percent-encodings: decode unreserved ones (and, for DECODE_AND_MERGE_SLASHES,
    //    %2F and %5C), upper-case the rest, refuse broken ones and NUL.
    let mut decoded = decode_percent(bytes, mode)?;
    // `%252F` is `%2F` to an origin that decodes twice: refused where the gateway promises
    // that no spelling hides a path (checked after decoding: `%25%32%46` spells it too).
    if mode == Normalization::DecodeAndMergeSlashes
        && decoded.windows(5).any(|w| {
            w[..3].eq_ignore_ascii_case(b"%25") && hex(w[3]).is_some() && hex(w[4]).is_some()
        })
    {
        return Err(PathError(
            "the path has a double percent-encoding (%25 before hex digits)",
        ));
    }
    // 2. `\` is a separator, as browsers and Envoy's canonicaliser read it.
    for b in decoded.iter_mut() {
        if *b == b'\\' {
            *b = b'/';
        }
    }
    // 3. Merge slashes, for the modes that ask.
    if mode != Normalization::Base {
        decoded.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    // 4. Remove dot segments (RFC 3986 section 5.2.4), never climbing above the root.
    let text = String::from_utf8(decoded).map_err(|_| PathError("the path is not UTF-8"))?;
    let normal = remove_dot_segments(&text);
    Ok((normal != path).then_some(normal))
}

/// Decodes the percent-encodings any reader would decode alike: unreserved characters
/// (and, for `DECODE_AND_MERGE_SLASHES`, `%2F` and `%5C`); the rest are upper-cased, broken
/// ones and NUL refused.
fn decode_percent(bytes: &[u8], mode: Normalization) -> Result<Vec<u8>, PathError> {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError("the path has an invalid percent-encoding"));
            };
            let c = h * 16 + l;
            if c == 0 {
                return Err(PathError("the path has an encoded NUL"));
            }
            let slash = matches!(c, b'/' | b'\\');
            if unreserved(c) || (slash && mode == Normalization::DecodeAndMergeSlashes) {
                decoded.push(c);
            } else {
                decoded.push(b'%');
                decoded.push(bytes[i + 1].to_ascii_uppercase());
                decoded.push(bytes[i + 2].to_ascii_uppercase());
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    Ok(decoded)
}

/// `text` (starting with `/`) without `.` and `..` segments, never above the root.
fn remove_dot_segments(text: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = text[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = n == last,
            ".." => {
                out.pop();
                trailing_slash = n == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(text.len());
    for s in &out {
        normal.push('/');
        normal.push_str(s);
    }
    if trailing_slash || normal.is_empty() {
        normal.push('/');
    }
    normal
}

#[cfg(test)]
mod tests {
    use super::Normalization::*;
    use super::*;

    fn n(p: &str, m: Normalization) -> String {
        normalize(p, m).unwrap().unwrap_or_else(|| p.to_owned())
    }

    #[test]
    fn base_normalisation() {
        for (input, want) in [
            ("/admin", "/admin"),
            ("/./admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a/b/../../admin", "/admin"),
            ("/admin/.", "/admin/"),
            ("/admin/..", "/"),
            ("/admin%2F..", "/admin%2F.."),
            ("/admin%2f", "/admin%2F"),
            ("/a\\..\\admin", "/admin"),
            ("//admin", "//admin"),
            ("/%7euser", "/~user"),
            ("/.%2e/admin", "/admin"),
        ] {
            assert_eq!(n(input, Base), want, "{input}");
        }
    }

    #[test]
    fn merge_and_decode_slashes() {
        assert_eq!(n("//admin", MergeSlashes), "/admin");
        assert_eq!(n("/a///b//", MergeSlashes), "/a/b/");
        assert_eq!(n("/admin%2F..", MergeSlashes), "/admin%2F..");
        assert_eq!(n("/admin%2F..", DecodeAndMergeSlashes), "/");
        assert_eq!(n("/x%2F%2Fadmin", DecodeAndMergeSlashes), "/x/admin");
        assert_eq!(n("/x%5c..%5cadmin", DecodeAndMergeSlashes), "/admin");
        assert_eq!(n("//admin/./", None), "//admin/./");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for bad in ["/a%zz", "/a%2", "/%00x", "/a#frag", "/caf\u{e9}", "/a b"] {
            assert!(normalize(bad, Base).is_err(), "{bad}");
        }
        assert_eq!(normalize("/plain/path", Base), Ok(Option::None));
    }

    #[test]
    fn path_parameters_are_refused_unless_allowed() {
        for mode in [None, Base, MergeSlashes, DecodeAndMergeSlashes] {
            for p in ["/admin;x=1", "/a/..;/admin", "/;"] {
                assert!(normalize(p, mode).is_err(), "{p} {mode:?}");
            }
        }
        assert_eq!(
            normalize_with("/a;v=1/../b", Base, true),
            Ok(Some("/b".into()))
        );
        assert_eq!(normalize_with("/a;v=1", Base, true), Ok(Option::None));
        // An encoded `;` is data, not a parameter.
        assert_eq!(normalize("/a%3Bb", Base), Ok(Option::None));
        // Double encodings: refused by the strict default, kept as data otherwise.
        for p in ["/%252e%252e/admin", "/a%252Fb", "/%25%32%46"] {
            assert!(normalize(p, DecodeAndMergeSlashes).is_err(), "{p}");
        }
        assert_eq!(normalize("/a%252Fb", Base), Ok(Option::None));
        assert_eq!(
            normalize("/100%25", DecodeAndMergeSlashes),
            Ok(Option::None)
        );
        assert_eq!(Normalization::default(), DecodeAndMergeSlashes);
        assert!(Base.is_weaker_than_default() && !DecodeAndMergeSlashes.is_weaker_than_default());
    }
}
