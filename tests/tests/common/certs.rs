//! Test PKI generated with rcgen: a CA, a server certificate for `localhost`/127.0.0.1, client
//! certificates (valid, expired, from another CA, revoked) and a CRL, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate authority able to sign certificates and CRLs.
pub struct Ca {
    pub cert_pem: String,
    pub path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as files.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// A new CA named `cn`, its certificate written to `dir/<file>.pem`.
    pub fn new(dir: &Path, file: &str, cn: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = name(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let path = dir.join(format!("{file}.pem"));
        std::fs::write(&path, cert.pem()).expect("write CA");
        Ca { cert_pem: cert.pem(), path, issuer: Issuer::new(params, key) }
    }

    /// The server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self, dir: &Path) -> Pair {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        params.distinguished_name = name("localhost");
        self.sign(dir, "server", params)
    }

    /// A client certificate with common name `cn`, serial `serial`, valid from `not_before`
    /// to `not_after` (relative to now), with `cn` also as a DNS SAN.
    pub fn client(
        &self,
        dir: &Path,
        file: &str,
        cn: &str,
        serial: u64,
        not_before: Duration,
        not_after: Duration,
    ) -> Pair {
        let mut params = CertificateParams::new(vec![format!("{cn}.example")]).expect("params");
        params.distinguished_name = name(cn);
        params.serial_number = Some(SerialNumber::from(serial));
        let now = OffsetDateTime::now_utc();
        params.not_before = now + not_before;
        params.not_after = now + not_after;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(dir, file, params)
    }

    /// A currently valid client certificate.
    pub fn valid_client(&self, dir: &Path, file: &str, cn: &str, serial: u64) -> Pair {
        self.client(dir, file, cn, serial, Duration::days(-1), Duration::days(30))
    }

    /// A CRL revoking `serials`, written to `dir/<file>.pem`.
    pub fn crl(&self, dir: &Path, file: &str, serials: &[u64]) -> PathBuf {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - Duration::minutes(30),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).expect("CRL");
        let path = dir.join(format!("{file}.pem"));
        std::fs::write(&path, crl.pem().expect("CRL PEM")).expect("write CRL");
        path
    }

    fn sign(&self, dir: &Path, file: &str, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let (cert_path, key_path) = (dir.join(format!("{file}.pem")), dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Pair { cert: cert_path, key: key_path, cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A path as a `&str` for config files and command lines (temp paths are UTF-8 here).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}
