//! The `x509` authenticator: a client that presented a verified certificate (directly over
//! TLS, or through a trusted load balancer's PROXY v2 TLV) is accepted, and the certificate's
//! CN or first SAN (`[auth.x509] username_from`) becomes its username, replacing whatever
//! username the CONNECT carried. Certificate verification itself (CA, expiry, CRL) is the
//! listener's: a [`PeerInfo`](crate::connection::PeerInfo) only carries a certificate that
//! passed it. Without a certificate, or without the chosen field, the client is ignored.

use super::chain::{Authenticator, Credentials, Identity, Verdict};
use crate::config::CertField;

pub struct X509Authenticator {
    pub username_from: CertField,
}

impl Authenticator for X509Authenticator {
    fn name(&self) -> &'static str {
        "x509"
    }

    fn check(&self, c: &Credentials<'_>) -> Verdict {
        let Some(cert) = &c.peer.cert else { return Verdict::Ignore };
        let name = match self.username_from {
            CertField::Cn => cert.common_name.clone(),
            CertField::San => cert.subject_alt_names.first().cloned(),
        };
        match name.filter(|n| !n.is_empty()) {
            Some(n) => Verdict::Accept(Identity { username: Some(n), ..Default::default() }),
            None => {
                tracing::debug!(peer = %c.peer, field = ?self.username_from, "certificate has no such field; x509 ignores it");
                Verdict::Ignore
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{CertIdentity, PeerInfo, Transport};

    fn peer(cert: Option<CertIdentity>) -> PeerInfo {
        PeerInfo {
            addr: "10.1.2.3:4000".parse().unwrap(),
            listener: "tls".into(),
            transport: Transport::Tls,
            cert,
            cert_username: None,
        }
    }

    fn username(a: &X509Authenticator, p: &PeerInfo, sent: Option<&str>) -> Option<Option<String>> {
        let creds = Credentials { client_id: "car1", username: sent, password: None, peer: p };
        match a.check(&creds) {
            Verdict::Accept(id) => Some(id.username),
            Verdict::Ignore => None,
            Verdict::Reject(r) => panic!("x509 never rejects: {r:?}"),
        }
    }

    #[test]
    fn the_certificate_cn_or_san_becomes_the_username() {
        let cert = CertIdentity {
            common_name: Some("VIN0001".into()),
            subject_alt_names: vec!["vin0001.cars.example".into(), "urn:vin:0001".into()],
        };
        let p = peer(Some(cert));
        let cn = X509Authenticator { username_from: CertField::Cn };
        let san = X509Authenticator { username_from: CertField::San };
        assert_eq!(username(&cn, &p, None), Some(Some("VIN0001".into())));
        assert_eq!(username(&cn, &p, Some("spoofed")), Some(Some("VIN0001".into())), "the certificate wins");
        assert_eq!(username(&san, &p, None), Some(Some("vin0001.cars.example".into())));
    }

    #[test]
    fn no_certificate_or_no_such_field_is_ignored() {
        let cn = X509Authenticator { username_from: CertField::Cn };
        assert_eq!(username(&cn, &peer(None), Some("alice")), None);
        let only_san = peer(Some(CertIdentity { common_name: None, subject_alt_names: vec!["a.example".into()] }));
        assert_eq!(username(&cn, &only_san, None), None);
        let san = X509Authenticator { username_from: CertField::San };
        let only_cn = peer(Some(CertIdentity { common_name: Some("x".into()), subject_alt_names: vec![] }));
        assert_eq!(username(&san, &only_cn, None), None);
    }
}
