//! The issuer's private key: loaded from any PEM form a user or an older sentry wrote
//! (PKCS#8, PKCS#1 RSA, SEC1 EC), never printed.

use std::fmt;

use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// A key the system could not generate (ring found no randomness or refused the algorithm).
#[derive(Debug, thiserror::Error)]
#[error("cannot generate an {algorithm} key: {source}")]
pub struct GenerateKeyError {
    algorithm: &'static str,
    source: rcgen::Error,
}

/// A signing key whose `Debug` shows the algorithm only.
pub struct IssuerKey(KeyPair);

impl IssuerKey {
    /// Parses the first private key in `pem`. ring only reads PKCS#8, so PKCS#1 (`RSA PRIVATE
    /// KEY`, as `openssl genrsa` 1.x writes) and SEC1 (`EC PRIVATE KEY`, as sentry up to v1.17
    /// wrote) are wrapped into PKCS#8 first.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
            format!(
                "no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) found: {e}"
            )
        })?;
        let unsupported = |e: rcgen::Error| format!("unsupported or malformed private key: {e}");
        let pair = match &key {
            PrivateKeyDer::Pkcs8(der) => {
                KeyPair::try_from(der.secret_pkcs8_der()).map_err(unsupported)?
            }
            PrivateKeyDer::Pkcs1(der) => {
                KeyPair::try_from(pkcs8_from_pkcs1(der.secret_pkcs1_der())).map_err(unsupported)?
            }
            PrivateKeyDer::Sec1(der) => {
                let sec1 = der.secret_sec1_der();
                KeyPair::try_from(pkcs8_from_sec1(sec1, P256_OID))
                    .or_else(|_| KeyPair::try_from(pkcs8_from_sec1(sec1, P384_OID)))
                    .map_err(unsupported)?
            }
            _ => return Err("unsupported private key encoding".into()),
        };
        Ok(IssuerKey(pair))
    }

    /// A fresh ECDSA P-256 key: what sentry generates for its root, its issuer and its own
    /// serving certificate, as upstream does (root: pkg/sentry/server/ca/ca.go; issuer:
    /// pkg/sentry/server/ca/bundle.go), so a bundle written here is one upstream's sentry and
    /// operators' tools take as it is.
    pub fn generate_ecdsa_p256() -> Result<Self, GenerateKeyError> {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(IssuerKey)
            .map_err(|source| GenerateKeyError {
                algorithm: "ECDSA P-256",
                source,
            })
    }

    /// A fresh Ed25519 key: what earlier versions of this sentry generated. Their trust bundles
    /// still load ([`IssuerKey::from_pem`]); this stays for tests that reproduce them.
    pub fn generate_ed25519() -> Result<Self, GenerateKeyError> {
        KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map(IssuerKey)
            .map_err(|source| GenerateKeyError {
                algorithm: "Ed25519",
                source,
            })
    }

    /// PKCS#8 PEM (`PRIVATE KEY`), the form sentry writes.
    pub fn to_pkcs8_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// PKCS#8 DER, for handing the key to rustls.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.0.serialize_der()
    }

    /// A short algorithm name for logs and errors.
    pub fn algorithm_name(&self) -> &'static str {
        algorithm_name(self.0.algorithm())
    }
}

/// A short name for a signature algorithm rcgen knows.
pub fn algorithm_name(alg: &SignatureAlgorithm) -> &'static str {
    if alg == &rcgen::PKCS_ED25519 {
        "Ed25519"
    } else if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        "ECDSA P-256"
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        "ECDSA P-384"
    } else if alg == &rcgen::PKCS_RSA_SHA256
        || alg == &rcgen::PKCS_RSA_SHA384
        || alg == &rcgen::PKCS_RSA_SHA512
    {
        "RSA"
    } else {
        "other"
    }
}

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKey")
            .field("algorithm", &self.algorithm_name())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl PublicKeyData for IssuerKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        PublicKeyData::algorithm(&self.0)
    }
}

impl SigningKey for IssuerKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

/// DER of id-ecPublicKey's curve OIDs (prime256v1, secp384r1).
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const EC_PUBLIC_KEY_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const RSA_ENCRYPTION_ALG: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

fn pkcs8_from_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    pkcs8(RSA_ENCRYPTION_ALG.to_vec(), pkcs1)
}

fn pkcs8_from_sec1(sec1: &[u8], curve_oid: &[u8]) -> Vec<u8> {
    let mut alg = EC_PUBLIC_KEY_OID.to_vec();
    alg.extend_from_slice(curve_oid);
    pkcs8(der(0x30, &alg), sec1)
}

/// `PrivateKeyInfo ::= SEQUENCE { version 0, algorithm, privateKey OCTET STRING }`.
fn pkcs8(algorithm: Vec<u8>, private_key: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(&algorithm);
    body.extend_from_slice(&der(0x04, private_key));
    der(0x30, &body)
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_PKCS1: &str = include_str!("../../tests/fixtures/rsa-issuer-pkcs1.key");
    const RSA_PKCS8: &str = include_str!("../../tests/fixtures/rsa-issuer.key");
    const EC_SEC1: &str = include_str!("../../tests/fixtures/ec-sec1.key");

    #[test]
    fn pkcs1_rsa_and_pkcs8_rsa_give_the_same_key() {
        let a = IssuerKey::from_pem(RSA_PKCS1.as_bytes()).unwrap();
        let b = IssuerKey::from_pem(RSA_PKCS8.as_bytes()).unwrap();
        assert_eq!(a.der_bytes(), b.der_bytes());
        assert_eq!(a.algorithm_name(), "RSA");
    }

    #[test]
    fn sec1_ec_keys_as_older_sentries_wrote_them_load() {
        let key = IssuerKey::from_pem(EC_SEC1.as_bytes()).unwrap();
        assert_eq!(key.algorithm_name(), "ECDSA P-256");
    }

    #[test]
    fn generated_keys_are_ecdsa_p256_and_round_trip_through_pkcs8_pem() {
        let key = IssuerKey::generate_ecdsa_p256().unwrap();
        assert_eq!(key.algorithm_name(), "ECDSA P-256");
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let again = IssuerKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(key.der_bytes(), again.der_bytes());
        assert_eq!(again.algorithm_name(), "ECDSA P-256");
    }

    #[test]
    fn ed25519_keys_as_earlier_versions_wrote_them_round_trip_through_pkcs8_pem() {
        let key = IssuerKey::generate_ed25519().unwrap();
        let again = IssuerKey::from_pem(key.to_pkcs8_pem().as_bytes()).unwrap();
        assert_eq!(key.der_bytes(), again.der_bytes());
        assert_eq!(again.algorithm_name(), "Ed25519");
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let key = IssuerKey::generate_ecdsa_p256().unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let pem = key.to_pkcs8_pem();
        let body: String = pem.lines().nth(1).unwrap().chars().take(16).collect();
        assert!(!shown.contains(&body), "{shown}");
    }

    #[test]
    fn a_certificate_is_not_a_key() {
        let err =
            IssuerKey::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err();
        assert!(err.contains("no PEM private key"), "{err}");
    }
}
