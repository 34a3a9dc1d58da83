//! The certificate authority: trust anchors, issuer chain and issuer key, checked when loaded
//! ([`CaBundle::from_pem`]), generated when absent ([`generate`]), and the pure signing of
//! workload certificates ([`sign`], [`Csr::from_pem`]).

mod keys;
pub mod store;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::{PemObject, SectionKind};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

pub use keys::{GenerateKeyError, IssuerKey, algorithm_name};

use crate::Error;
use crate::config::CredentialPaths;
// The PEM and time helpers live with the workload identity; re-exported for the CA's callers.
use dapr_identity::pem::pem_encode_all;
pub use dapr_identity::pem::{certs_from_pem, pem_encode};
use dapr_identity::spiffe::{SENTRY_APP_ID, SpiffeId};
pub use dapr_identity::time::rfc3339;
use dapr_identity::time::unix_secs;

/// Validity of a generated root and issuer (upstream: one year).
pub const GENERATED_CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long a workload certificate lives and how far its NotBefore is backdated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignPolicy {
    pub ttl: Duration,
    pub allowed_clock_skew: Duration,
}

/// Everything sentry signs with, checked to be consistent.
pub struct CaBundle {
    trust_anchors: Vec<CertificateDer<'static>>,
    trust_anchors_pem: String,
    issuer_chain: Vec<CertificateDer<'static>>,
    issuer_chain_pem: String,
    issuer: Issuer<'static, IssuerKey>,
    key_algorithm: &'static str,
    issuer_not_after: SystemTime,
    /// The window in which the whole path (issuer chain and its anchor) is valid: leaves are
    /// kept inside it.
    path_not_before: SystemTime,
    path_not_after: SystemTime,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("trust_anchors", &self.trust_anchors.len())
            .field("issuer_chain", &self.issuer_chain.len())
            .field("key_algorithm", &self.key_algorithm)
            .field("issuer_key", &"<redacted>")
            .field("issuer_not_after", &rfc3339(self.issuer_not_after))
            .finish()
    }
}

impl CaBundle {
    /// Parses and checks the three credentials: every certificate parses and is within its
    /// validity at `now`, the key matches the issuer certificate, the issuer is a CA allowed to
    /// sign certificates, and the issuer chain leads to one of the anchors. Errors name the file.
    pub fn from_pem(
        trust_anchors_pem: &[u8],
        issuer_chain_pem: &[u8],
        issuer_key_pem: &[u8],
        paths: &CredentialPaths,
        now: SystemTime,
    ) -> Result<Self, Error> {
        let at = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |reason: String| Error::Credentials {
                path: path.clone(),
                reason,
            }
        };
        let anchors_err = at(&paths.trust_anchors);
        let chain_err = at(&paths.issuer_cert);
        let key_err = at(&paths.issuer_key);
        let now_secs = unix_secs(now);

        let trust_anchors =
            certs_from_pem(trust_anchors_pem).map_err(|e| anchors_err(e.to_string()))?;
        let anchors = parse_all(&trust_anchors).map_err(&anchors_err)?;
        for (i, anchor) in anchors.iter().enumerate() {
            check_validity(anchor, now_secs)
                .map_err(|r| anchors_err(format!("certificate {}: {r}", i + 1)))?;
            if !is_ca(anchor) {
                return Err(anchors_err(format!(
                    "certificate {} is not a CA certificate",
                    i + 1
                )));
            }
        }

        let issuer_chain =
            certs_from_pem(issuer_chain_pem).map_err(|e| chain_err(e.to_string()))?;
        let chain = parse_all(&issuer_chain).map_err(&chain_err)?;
        for (i, cert) in chain.iter().enumerate() {
            check_validity(cert, now_secs)
                .map_err(|r| chain_err(format!("certificate {}: {r}", i + 1)))?;
        }
        let issuer_cert = &chain[0];
        if !is_ca(issuer_cert) {
            return Err(chain_err(
                "the issuer certificate is not a CA certificate".into(),
            ));
        }
        if let Ok(Some(ku)) = issuer_cert.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(chain_err(
                "the issuer certificate's key usage does not allow signing certificates".into(),
            ));
        }

        let key = IssuerKey::from_pem(issuer_key_pem).map_err(&key_err)?;
        if key.der_bytes() != issuer_cert.public_key().subject_public_key.data.as_ref() {
            return Err(key_err(format!(
                "the key does not match the issuer certificate {}",
                paths.issuer_cert.display()
            )));
        }

        for (i, pair) in chain.windows(2).enumerate() {
            signed_by(&pair[0], &pair[1]).map_err(|r| {
                chain_err(format!(
                    "certificate {} is not issued by certificate {}: {r}",
                    i + 1,
                    i + 2
                ))
            })?;
        }
        let top = &chain[chain.len() - 1];
        let anchor = anchors
            .iter()
            .find(|anchor| signed_by(top, anchor).is_ok())
            .ok_or_else(|| {
                chain_err(format!(
                    "the issuer chain does not lead to any trust anchor in {}",
                    paths.trust_anchors.display()
                ))
            })?;

        let path = chain.iter().chain(std::iter::once(anchor));
        let path_not_before = path
            .clone()
            .map(|c| c.validity().not_before.timestamp())
            .max()
            .unwrap_or(now_secs);
        let path_not_after = path
            .map(|c| c.validity().not_after.timestamp())
            .min()
            .unwrap_or(now_secs);
        let issuer_not_after = issuer_cert.validity().not_after.timestamp();
        let key_algorithm = key.algorithm_name();

        let issuer = Issuer::from_ca_cert_der(&issuer_chain[0], key).map_err(|e| {
            chain_err(format!(
                "the issuer certificate cannot be used for signing: {e}"
            ))
        })?;
        let bundle = CaBundle {
            trust_anchors_pem: pem_encode_all(&trust_anchors),
            trust_anchors,
            issuer_chain_pem: pem_encode_all(&issuer_chain),
            issuer_chain,
            issuer,
            key_algorithm,
            issuer_not_after: system_time(issuer_not_after),
            path_not_before: system_time(path_not_before),
            path_not_after: system_time(path_not_after),
        };
        bundle.check_signing(now).map_err(|r| {
            chain_err(format!(
                "certificates signed with this issuer and key would not verify: {r}"
            ))
        })?;
        Ok(bundle)
    }

    /// Signs a throw-away leaf and checks it names and verifies against the issuer: catches a
    /// key the signer cannot use, or an issuer name that would not be reproduced byte for byte.
    /// The probe's key is P-256, the key daprd asks for.
    fn check_signing(&self, now: SystemTime) -> Result<(), String> {
        let probe_key = IssuerKey::generate_ecdsa_p256().map_err(|e| e.to_string())?;
        let probe_id =
            SpiffeId::new("probe.invalid", "probe", "probe").map_err(|e| e.to_string())?;
        let policy = SignPolicy {
            ttl: Duration::from_secs(60),
            allowed_clock_skew: Duration::ZERO,
        };
        let issued = issue(self, &probe_key, &probe_id, &[], policy, now, [1; 16])
            .map_err(|e| e.to_string())?;
        let (_, leaf) = X509Certificate::from_der(&issued.leaf).map_err(|e| e.to_string())?;
        let (_, issuer) =
            X509Certificate::from_der(&self.issuer_chain[0]).map_err(|e| e.to_string())?;
        signed_by(&leaf, &issuer)
    }

    /// The anchors, PEM, as returned in `trust_chain_certificates`.
    pub fn trust_anchors_pem(&self) -> &str {
        &self.trust_anchors_pem
    }

    pub fn trust_anchors(&self) -> &[CertificateDer<'static>] {
        &self.trust_anchors
    }

    /// Issuer first, then any intermediates above it.
    pub fn issuer_chain(&self) -> &[CertificateDer<'static>] {
        &self.issuer_chain
    }

    pub fn issuer_chain_pem(&self) -> &str {
        &self.issuer_chain_pem
    }

    pub fn issuer_not_after(&self) -> SystemTime {
        self.issuer_not_after
    }

    pub fn key_algorithm(&self) -> &'static str {
        self.key_algorithm
    }
}

/// A CSR whose self-signature has been checked; only its public key is used.
#[derive(Debug)]
pub struct Csr {
    public_key: SubjectPublicKeyInfo,
}

impl Csr {
    /// Reads the first PEM block, which must be `CERTIFICATE REQUEST` (or `CERTIFICATE`, which
    /// daprd before v1.12 sent and upstream still accepts), and checks the request is signed by
    /// the key it carries. Ed25519, ECDSA P-256/P-384 and RSA keys are accepted.
    pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        if pem.len() > MAX_CSR_BYTES {
            return Err(Error::InvalidCsr(format!(
                "certificate signing request is {} bytes, more than the {MAX_CSR_BYTES} accepted",
                pem.len()
            )));
        }
        let invalid = || Error::InvalidCsr("invalid certificate signing request".into());
        let der = match <(SectionKind, Vec<u8>)>::pem_slice_iter(pem).next() {
            Some(Ok((SectionKind::Csr | SectionKind::Certificate, der))) => der,
            _ => return Err(invalid()),
        };
        let (_, request) = X509CertificationRequest::from_der(&der).map_err(|e| {
            Error::InvalidCsr(format!("failed to parse certificate signing request: {e}"))
        })?;
        let sig_alg = request.signature_algorithm.algorithm.to_id_string();
        if SHA1_SIGNATURES.contains(&sig_alg.as_str()) {
            return Err(Error::InvalidCsr(
                "invalid signature: SHA-1 signatures are not accepted".into(),
            ));
        }
        request
            .verify_signature()
            .map_err(|_| Error::InvalidCsr("invalid signature".into()))?;
        let public_key =
            SubjectPublicKeyInfo::from_der(request.certification_request_info.subject_pki.raw)
                .map_err(|e| {
                    Error::InvalidCsr(format!(
                        "unsupported public key in certificate signing request: {e}"
                    ))
                })?;
        Ok(Csr { public_key })
    }

    pub fn public_key(&self) -> &SubjectPublicKeyInfo {
        &self.public_key
    }
}

/// The largest CSR parsed. An RSA-8192 request is under 4 KiB of PEM; anything much larger is
/// not a CSR and is refused before parsing (gRPC's own 4 MiB message limit is far above this).
pub const MAX_CSR_BYTES: usize = 64 * 1024;

const SHA1_SIGNATURES: &[&str] = &["1.2.840.113549.1.1.5", "1.3.14.3.2.29", "1.2.840.10045.4.1"];

/// A signed leaf.
#[derive(Debug, Clone)]
pub struct Issued {
    pub leaf: CertificateDer<'static>,
    /// Leaf, then the issuer chain: what `workload_certificate` carries.
    pub chain_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Signs a workload certificate for `id` with the CSR's public key.
///
/// No subject; URI SAN = the SPIFFE id (plus `dns_names`, for control-plane services);
/// KeyUsage DigitalSignature; EKU ServerAuth + ClientAuth; NotBefore = now − skew;
/// NotAfter = now + TTL but never past the issuer path's NotAfter (upstream does not cap it,
/// dapr/dapr#8557, and hands out leaves that outlive their issuer).
pub fn sign(
    bundle: &CaBundle,
    csr: &Csr,
    id: &SpiffeId,
    dns_names: &[String],
    policy: SignPolicy,
    now: SystemTime,
    serial: [u8; 16],
) -> Result<Issued, Error> {
    issue(bundle, csr.public_key(), id, dns_names, policy, now, serial)
}

/// [`sign`] for a key sentry holds itself (its own serving certificate).
pub fn issue(
    bundle: &CaBundle,
    public_key: &impl PublicKeyData,
    id: &SpiffeId,
    dns_names: &[String],
    policy: SignPolicy,
    now: SystemTime,
    serial: [u8; 16],
) -> Result<Issued, Error> {
    let now_secs = unix_secs(now);
    let path_not_after = unix_secs(bundle.path_not_after);
    if path_not_after <= now_secs {
        return Err(Error::IssuerExpired(rfc3339(bundle.path_not_after)));
    }
    let not_before = now_secs
        .saturating_sub(secs(policy.allowed_clock_skew))
        .max(unix_secs(bundle.path_not_before));
    let not_after = now_secs
        .saturating_add(secs(policy.ttl))
        .min(path_not_after);

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let mut sans = vec![SanType::URI(id.to_string().try_into().map_err(
        |source| Error::SignIa5 {
            what: "SPIFFE id".into(),
            source,
        },
    )?)];
    for name in dns_names {
        sans.push(SanType::DnsName(name.clone().try_into().map_err(
            |source| Error::SignIa5 {
                what: format!("DNS name {name:?}"),
                source,
            },
        )?));
    }
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = offset_date_time(not_before)?;
    params.not_after = offset_date_time(not_after)?;
    params.use_authority_key_identifier_extension = true;

    let leaf = params
        .signed_by(public_key, &bundle.issuer)
        .map_err(Error::Sign)?;
    let leaf = leaf.der().clone();
    let mut chain_pem = pem_encode("CERTIFICATE", &leaf);
    chain_pem.push_str(&bundle.issuer_chain_pem);
    Ok(Issued {
        leaf,
        chain_pem,
        not_before: system_time(not_before),
        not_after: system_time(not_after),
    })
}

/// Freshly generated credentials, PEM, ready to be stored.
pub struct GeneratedCredentials {
    pub trust_anchors_pem: String,
    pub issuer_chain_pem: String,
    pub issuer_key: IssuerKey,
}

impl fmt::Debug for GeneratedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedCredentials")
            .field("issuer_key", &self.issuer_key)
            .finish_non_exhaustive()
    }
}

/// Generates a root and an issuer as upstream sentry does: ECDSA P-256 keys (upstream
/// pkg/sentry/server/ca/ca.go generates the root key, pkg/sentry/server/ca/bundle.go the issuer
/// key, both P-256; the issuer key is written as PKCS#8 `PRIVATE KEY`, which `openssl pkey`
/// reads); root `O=<trust domain>`, CertSign|DigitalSignature; issuer
/// `O=spiffe://<td>/ns/<ns>/dapr-sentry`, CertSign|CRLSign|DigitalSignature, signed by the root;
/// both valid a year from now − skew. The root key is discarded, as upstream does.
pub fn generate(
    trust_domain: &str,
    namespace: &str,
    now: SystemTime,
    allowed_clock_skew: Duration,
) -> Result<GeneratedCredentials, Error> {
    generate_with(
        trust_domain,
        namespace,
        now,
        allowed_clock_skew,
        IssuerKey::generate_ecdsa_p256,
    )
}

/// [`generate`] with keys from `new_key`: tests reproduce the Ed25519 bundles earlier versions
/// of this sentry wrote, which must keep loading.
fn generate_with(
    trust_domain: &str,
    namespace: &str,
    now: SystemTime,
    allowed_clock_skew: Duration,
    new_key: fn() -> Result<IssuerKey, GenerateKeyError>,
) -> Result<GeneratedCredentials, Error> {
    let key_failed = |what, source| Error::GenerateKey { what, source };
    let cert_failed = |what, source| Error::GenerateCertificate { what, source };
    let now_secs = unix_secs(now);
    let not_before = offset_date_time(now_secs.saturating_sub(secs(allowed_clock_skew)))?;
    let not_after = offset_date_time(now_secs.saturating_add(secs(GENERATED_CA_VALIDITY)))?;

    let root_key = new_key().map_err(|e| key_failed("root key", e))?;
    let mut root = CertificateParams::default();
    root.distinguished_name = DistinguishedName::new();
    root.distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    root.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    root.not_before = not_before;
    root.not_after = not_after;
    let root_cert = root
        .self_signed(&root_key)
        .map_err(|e| cert_failed("root certificate", e))?;

    let issuer_key = new_key().map_err(|e| key_failed("issuer key", e))?;
    let mut issuer = CertificateParams::default();
    issuer.distinguished_name = DistinguishedName::new();
    issuer.distinguished_name.push(
        DnType::OrganizationName,
        format!("spiffe://{trust_domain}/ns/{namespace}/{SENTRY_APP_ID}"),
    );
    issuer.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    issuer.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    issuer.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    issuer.not_before = not_before;
    issuer.not_after = not_after;
    issuer.use_authority_key_identifier_extension = true;
    let issuer_cert = issuer
        .signed_by(&issuer_key, &Issuer::new(root, &root_key))
        .map_err(|e| cert_failed("issuer certificate", e))?;

    Ok(GeneratedCredentials {
        trust_anchors_pem: pem_encode("CERTIFICATE", root_cert.der()),
        issuer_chain_pem: pem_encode("CERTIFICATE", issuer_cert.der()),
        issuer_key,
    })
}

/// A random positive 128-bit serial number (the caller's randomness, so [`sign`] stays pure).
pub fn random_serial() -> Result<[u8; 16], Error> {
    use ring::rand::SecureRandom;
    let mut serial = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| Error::NoRandomness)?;
    Ok(serial)
}

fn parse_all<'a>(certs: &'a [CertificateDer<'static>]) -> Result<Vec<X509Certificate<'a>>, String> {
    certs
        .iter()
        .enumerate()
        .map(|(i, der)| {
            X509Certificate::from_der(der)
                .map(|(_, cert)| cert)
                .map_err(|e| format!("certificate {} does not parse: {e}", i + 1))
        })
        .collect()
}

fn check_validity(cert: &X509Certificate<'_>, now_secs: i64) -> Result<(), String> {
    let validity = cert.validity();
    if validity.not_after.timestamp() <= now_secs {
        return Err(format!("expired at {}", validity.not_after));
    }
    if validity.not_before.timestamp() > now_secs {
        return Err(format!("not valid before {}", validity.not_before));
    }
    Ok(())
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// Whether `issuer` issued `cert`: names match and the signature verifies.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Result<(), String> {
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(format!(
            "issuer name {} differs from subject {}",
            cert.issuer(),
            issuer.subject()
        ));
    }
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|e| format!("signature does not verify: {e}"))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn offset_date_time(secs: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(Error::TimeOutOfRange)
}

#[cfg(test)]
mod tests;
