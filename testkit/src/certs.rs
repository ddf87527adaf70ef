//! The PKI a throwaway kube-apiserver needs: one CA that signs both the serving certificate and
//! the admin client certificate (so the same CA file is the `--client-ca-file` and the
//! kubeconfig's `certificate-authority`), plus a key pair for signing service-account tokens.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::HarnessError;

/// User and group of the admin client certificate. `system:masters` bypasses RBAC entirely.
pub const ADMIN_USER: &str = "ficus-admin";
pub const ADMIN_GROUP: &str = "system:masters";

/// Names the serving certificate is valid for: what tests dial, and what in-cluster clients
/// would use for the `kubernetes` Service (first IP of `--service-cluster-ip-range`).
const SERVING_NAMES: &[&str] = &[
    "127.0.0.1",
    "localhost",
    "10.0.0.1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// PEM files written by [`generate`].
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

/// Generates the CA, serving cert, admin client cert and service-account key into `dir`.
pub fn generate(dir: &Path) -> Result<CertFiles, HarnessError> {
    // rcgen's default validity (1975..4096) is fine for certificates that live for one test run.
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ficus-e2e-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);

    let mut serving = CertificateParams::new(
        SERVING_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (serving_cert, serving_key) = sign(serving, &ca)?;

    // The apiserver maps CN to the user name and O to groups.
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin
        .distinguished_name
        .push(DnType::CommonName, ADMIN_USER);
    admin
        .distinguished_name
        .push(DnType::OrganizationName, ADMIN_GROUP);
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let (admin_cert, admin_key) = sign(admin, &ca)?;

    // ECDSA P-256 (rcgen's default) is accepted for service-account tokens (ES256).
    let sa_key = KeyPair::generate()?;

    let files = CertFiles {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        service_account_key: dir.join("sa.key"),
        service_account_pub: dir.join("sa.pub"),
    };
    for (path, pem) in [
        (&files.ca_cert, ca_cert.pem()),
        (&files.serving_cert, serving_cert),
        (&files.serving_key, serving_key),
        (&files.admin_cert, admin_cert),
        (&files.admin_key, admin_key),
        (&files.service_account_key, sa_key.serialize_pem()),
        (&files.service_account_pub, sa_key.public_key_pem()),
    ] {
        std::fs::write(path, pem).map_err(HarnessError::io("writing", path))?;
    }
    Ok(files)
}

/// Signs a leaf certificate with a fresh key; returns (cert PEM, key PEM).
fn sign(
    mut params: CertificateParams,
    ca: &Issuer<'_, KeyPair>,
) -> Result<(String, String), HarnessError> {
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}
