//! Serving certificates for names, not identities: what a client outside the mesh checks
//! by host name (the Kubernetes API server calling the control plane's admission webhook
//! at `tarmac-webhook.tarmac-system.svc`, trusting the mesh's anchors as its `caBundle`).

use super::{BACKDATE, Ca, CaError, certs_pem, random_serial};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use std::time::{Duration, SystemTime};

impl Ca {
    /// A new key and a server certificate for the DNS names `names`, both PEM (the chain
    /// after the leaf); it lives `lifetime`, or less if the issuer expires first.
    pub fn issue_server_with_new_key(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<(String, String), CaError> {
        let now = SystemTime::now();
        if self.issuer_info.not_after <= now {
            return Err(CaError::IssuerExpired(self.issuer_info.not_after));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = names
            .iter()
            .map(|name| Ok(SanType::DnsName(name.as_str().try_into()?)))
            .collect::<Result<_, CaError>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + lifetime).min(self.issuer_info.not_after).into();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.issuer)?;
        let chain =
            std::iter::once(leaf.der().as_ref()).chain(self.issuer_chain_der.iter().map(Vec::as_slice));
        Ok((certs_pem(chain), key.serialize_pem()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{generate_root, pem_certs};
    use super::*;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    #[test]
    fn a_server_certificate_names_its_hosts_and_serves_only() {
        let (root_pem, root_key) = generate_root("cluster.local").unwrap();
        let ca = Ca::from_root(&root_pem, &root_key.serialize_pem(), "cluster.local").unwrap();
        let names = ["tarmac-webhook.tarmac-system.svc".to_string(), "tarmac-webhook".to_string()];
        let (chain, _key) = ca.issue_server_with_new_key(&names, Duration::from_secs(3600)).unwrap();
        let ders = pem_certs(&chain).unwrap();
        assert_eq!(ders.len(), 2, "the leaf, then the issuer");
        let (_, leaf) = X509Certificate::from_der(&ders[0]).unwrap();
        let sans: Vec<_> = leaf.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
        assert_eq!(
            sans,
            [
                GeneralName::DNSName("tarmac-webhook.tarmac-system.svc"),
                GeneralName::DNSName("tarmac-webhook")
            ]
        );
        let usage = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(usage.server_auth && !usage.client_auth);
        assert!(!leaf.is_ca());
    }
}
