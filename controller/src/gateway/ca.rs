//! The controller's certificate authority: created on first start (key sealed at rest),
//! it signs the gateway's server certificate and the agents' client certificates. The
//! identity in an agent certificate is chosen here, never copied from the CSR.

use crate::crypto::MasterKey;
use crate::store::Store;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use std::time::Duration;
use time::OffsetDateTime;

const SETTING: &str = "ca";
const SEAL_CONTEXT: &str = "settings:ca";
/// Certificates start this long in the past, to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate authority: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("certificate authority: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Key(#[from] crate::crypto::KeyError),
}

/// A freshly issued agent certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub der: Vec<u8>,
    pub serial_hex: String,
    pub issued_at: i64,
    pub not_after: i64,
}

pub struct Ca {
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    pin: [u8; 32],
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("pin", &hex::encode(self.pin))
            .finish()
    }
}

/// The SPIFFE-style identity URI of a server's agent.
pub fn agent_uri(server_id: i64) -> String {
    format!("spiffe://mezzanine/server/{server_id}")
}

/// The identity URI of a controller (a peer of the others sharing the database).
pub fn controller_uri(controller_id: &str) -> String {
    format!("spiffe://mezzanine/controller/{controller_id}")
}

/// SHA-256 of the certificate's DER SubjectPublicKeyInfo (what join tokens pin).
pub fn spki_pin(cert_der: &[u8]) -> Result<[u8; 32], CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| CaError::Invalid(format!("CA certificate does not parse: {e}")))?;
    Ok(crate::crypto::sha256(cert.tbs_certificate.subject_pki.raw))
}

fn datetime(unix: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| CaError::Invalid(e.to_string()))
}

fn random_serial() -> Result<(SerialNumber, String), CaError> {
    let mut bytes: [u8; 16] = crate::crypto::random_bytes()?;
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // no leading zero byte, so the DER encoding is these 16 bytes
    Ok((SerialNumber::from_slice(&bytes), hex::encode(bytes)))
}

fn encode(cert: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + cert.len() + key.len());
    out.extend_from_slice(&(cert.len() as u32).to_be_bytes());
    out.extend_from_slice(cert);
    out.extend_from_slice(key);
    out
}

fn decode(blob: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let cert = blob.get(4..4 + len)?;
    let key = blob.get(4 + len..)?;
    Some((cert, key))
}

impl Ca {
    /// Loads the CA from the database, creating it on first start. When several
    /// controllers share a database, the first to write wins and the others load it.
    pub async fn load_or_create(store: &Store, key: &MasterKey) -> Result<Ca, CaError> {
        let sealed = match store.setting(SETTING).await? {
            Some(v) => v,
            None => {
                let fresh = Self::generate()?;
                let sealed = key.seal(SEAL_CONTEXT, &fresh)?;
                store.setting_insert(SETTING, &sealed).await?
            }
        };
        let blob = key
            .open(SEAL_CONTEXT, &sealed)
            .map_err(|e| {
                CaError::Invalid(format!(
                    "stored CA cannot be opened with this master key ({e}): controllers sharing a database need the same master key file"
                ))
            })?;
        let (cert, pkcs8) =
            decode(&blob).ok_or_else(|| CaError::Invalid("stored CA is truncated".into()))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
        let key_pair = KeyPair::try_from(&key_der)?;
        let cert_der = CertificateDer::from(cert.to_vec());
        let issuer = Issuer::from_ca_cert_der(&cert_der, key_pair)?;
        let pin = spki_pin(&cert_der)?;
        Ok(Ca {
            cert_der,
            issuer,
            pin,
        })
    }

    fn generate() -> Result<Vec<u8>, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Mezzanine agent CA");
        dn.push(DnType::OrganizationName, "Mezzanine");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = crate::time::now_secs();
        params.not_before = datetime(now - BACKDATE.as_secs() as i64)?;
        params.not_after = datetime(now + 10 * 365 * 86_400)?;
        params.serial_number = Some(random_serial()?.0);
        let cert = params.self_signed(&key)?;
        Ok(encode(cert.der(), &key.serialize_der()))
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn pin_hex(&self) -> String {
        hex::encode(self.pin)
    }

    /// The gateway's TLS certificate for `names` (DNS names or IP addresses).
    pub fn server_cert(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Mezzanine agent gateway");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = crate::time::now_secs();
        params.not_before = datetime(now - BACKDATE.as_secs() as i64)?;
        params.not_after = datetime(now + 365 * 86_400)?;
        params.serial_number = Some(random_serial()?.0);
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// A client certificate (and its key, made here) for this controller's calls to the
    /// other controllers: their gateways accept it as a peer, never as an agent.
    pub fn issue_controller_cert(
        &self,
        controller_id: &str,
        ttl: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("mezzanine controller {controller_id}"),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            controller_uri(controller_id)
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Invalid(e.to_string()))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = crate::time::now_secs();
        params.not_before = datetime(now - BACKDATE.as_secs() as i64)?;
        params.not_after = datetime(now + ttl.as_secs().max(1) as i64)?;
        params.serial_number = Some(random_serial()?.0);
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key_der))
    }

    /// Signs a client certificate for `server_id` over the public key of `csr_der`. The
    /// CSR's signature is checked; its subject and extensions are ignored.
    pub fn issue_agent_cert(
        &self,
        server_id: i64,
        csr_der: &[u8],
        ttl: Duration,
    ) -> Result<Issued, CaError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| CaError::Invalid(format!("certificate request rejected: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("mezzanine-agent server {server_id}"),
        );
        params.distinguished_name = dn;
        params.subject_alt_names =
            vec![SanType::URI(agent_uri(server_id).try_into().map_err(
                |e: rcgen::Error| CaError::Invalid(e.to_string()),
            )?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = crate::time::now_secs();
        let not_after = now + ttl.as_secs().max(1) as i64;
        params.not_before = datetime(now - BACKDATE.as_secs() as i64)?;
        params.not_after = datetime(not_after)?;
        let (serial, serial_hex) = random_serial()?;
        params.serial_number = Some(serial);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            der: cert.der().to_vec(),
            serial_hex,
            issued_at: now,
            not_after,
        })
    }
}

/// Reads the identity out of a client certificate the TLS layer already verified:
/// `(server_id, serial_hex)`.
pub fn agent_identity(cert_der: &[u8]) -> Option<(i64, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let serial = hex::encode(cert.raw_serial());
    let san = cert.subject_alternative_name().ok()??;
    let id = san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => uri
            .strip_prefix("spiffe://mezzanine/server/")
            .and_then(|id| id.parse::<i64>().ok()),
        _ => None,
    })?;
    Some((id, serial))
}

/// The controller id of a peer's client certificate the TLS layer already verified.
pub fn controller_identity(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => uri
            .strip_prefix("spiffe://mezzanine/controller/")
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned),
        _ => None,
    })
}

/// The serial of a certificate, hex-encoded as stored.
pub fn serial_hex(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(hex::encode(cert.raw_serial()))
}
