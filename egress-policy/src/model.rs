//! Plain types of what the gateway enforces, with no YAML and no Istio reader behind them:
//! the configuration readers produce them and the engines consume them.

use serde::Serialize;

/// `pathNormalization.normalization`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Normalization {
    /// As received.
    None,
    /// RFC 3986 normalisation (Istio's default, `DEFAULT`).
    Base,
    /// `BASE` and merged slashes.
    MergeSlashes,
    /// Decoded `%2F`/`%5C`, then `MERGE_SLASHES`: the strictest, and this gateway's default.
    #[default]
    DecodeAndMergeSlashes,
}

impl Normalization {
    /// Whether this mode reads fewer path spellings as one than the default does.
    pub fn is_weaker_than_default(self) -> bool {
        self != Normalization::default()
    }

    /// From Istio's names (`DEFAULT` is `BASE`, as in Istio).
    pub fn from_istio(s: &str) -> Self {
        match s {
            "NONE" => Normalization::None,
            "MERGE_SLASHES" => Normalization::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => Normalization::DecodeAndMergeSlashes,
            _ => Normalization::Base,
        }
    }
}
