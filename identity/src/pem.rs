//! PEM in and out: certificate blocks read with rustls' parser, blocks written with 64-column
//! base64 lines.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::Error;

/// All `CERTIFICATE` blocks in `pem`; at least one.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Pem)?;
    if certs.is_empty() {
        return Err(Error::NoCertificate);
    }
    Ok(certs)
}

/// PEM with 64-column base64 lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every certificate of `certs` as PEM, in order.
pub fn pem_encode_all(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|c| pem_encode("CERTIFICATE", c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_round_trip_through_pem() {
        let der = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])];
        let pem = pem_encode_all(&der);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        assert_eq!(certs_from_pem(pem.as_bytes()).unwrap(), der);
    }

    #[test]
    fn pem_without_a_certificate_is_refused() {
        assert!(matches!(certs_from_pem(b""), Err(Error::NoCertificate)));
        let key = pem_encode("PRIVATE KEY", &[1, 2, 3]);
        assert!(matches!(
            certs_from_pem(key.as_bytes()),
            Err(Error::NoCertificate)
        ));
    }

    #[test]
    fn base64_lines_are_64_columns() {
        let pem = pem_encode("X", &[0u8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines[1].len(), 64);
        assert!(lines[2].len() <= 64);
    }
}
