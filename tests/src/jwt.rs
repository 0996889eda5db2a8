//! JWTs signed in the test: EC P-256 and RSA keys generated here, their JWKS, tokens.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A signing key and its public JWK.
pub struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    /// The public key as a JWK.
    pub jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    /// A fresh ECDSA P-256 key (ES256).
    pub fn ec(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate().unwrap();
        let raw = kp.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed P-256 point");
        Signer {
            alg: Algorithm::ES256,
            kid: kid.to_owned(),
            key: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                        "x": b64(&raw[1..33]), "y": b64(&raw[33..])}),
        }
    }

    /// A fresh 2048-bit RSA key (RS256).
    pub fn rsa(kid: &str) -> Signer {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let public = key.to_public_key();
        let der = key.to_pkcs1_der().unwrap();
        Signer {
            alg: Algorithm::RS256,
            kid: kid.to_owned(),
            key: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                        "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be())}),
        }
    }

    /// A token with these claims.
    pub fn token(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

/// A JWKS document with these keys.
pub fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An unsigned token (`alg: none`) with these claims.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}
