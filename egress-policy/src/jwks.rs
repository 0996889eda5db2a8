//! JSON Web Key Sets: the keys a gateway can verify tokens with. A leaf module, so that the
//! configuration reader can check an inline `jwks` without depending on validation.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};

/// A usable verification key.
#[derive(Clone)]
pub struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) algs: &'static [Algorithm],
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish()
    }
}

/// A parsed JSON Web Key Set: the keys this gateway can verify with.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    pub(crate) keys: Vec<Key>,
}

impl Keys {
    /// How many usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Parses a JWKS document. Keys of kinds this gateway does not verify with (symmetric
/// `oct`, unknown curves) are skipped; a set with no usable key is an error.
pub fn parse_jwks(text: &str) -> Result<Keys, String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no \"keys\" array")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(raw.clone()) {
            Ok(j) => j,
            Err(e) => {
                skipped.push(format!("key {i}: {e}"));
                continue;
            }
        };
        let algs: &'static [Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => RSA,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                _ => {
                    skipped.push(format!("key {i}: unsupported curve"));
                    continue;
                }
            },
            AlgorithmParameters::OctetKeyPair(_) => &[Algorithm::EdDSA],
            AlgorithmParameters::OctetKey(_) => {
                skipped.push(format!("key {i}: symmetric keys are not accepted"));
                continue;
            }
        };
        // A key that names its algorithm is used for that one only.
        let algs = match jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
        {
            Some(a) => match algs.iter().find(|x| **x == a) {
                Some(x) => std::slice::from_ref(x),
                None => {
                    skipped.push(format!("key {i}: alg {a:?} does not fit the key type"));
                    continue;
                }
            },
            None => algs,
        };
        match DecodingKey::from_jwk(&jwk) {
            Ok(key) => keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algs,
                key,
            }),
            Err(e) => skipped.push(format!("key {i}: {e}")),
        }
    }
    if keys.is_empty() {
        return Err(if skipped.is_empty() {
            "the set has no keys".to_owned()
        } else {
            format!("no usable key ({})", skipped.join("; "))
        });
    }
    Ok(Keys { keys })
}
