//! `wasmeshctl certs`: a small certificate authority for the mesh (Citadel's role, without
//! Kubernetes). It creates a self-signed root and, per workload identity, a leaf certificate whose
//! only name is the SPIFFE URI `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, the
//! identity Istio's AuthorizationPolicy `principals` and `source.principal` match.
//!
//! Layout of the certificate directory (file names as Istio's `/etc/certs` mount):
//!
//! ```text
//! <dir>/root-cert.pem                     the mesh root (trust anchor every sidecar verifies against)
//! <dir>/root-key.pem                      the root's private key (0600)
//! <dir>/<ns>/<sa>/cert-chain.pem          the workload certificate (signed directly by the root)
//! <dir>/<ns>/<sa>/key.pem                 its private key (0600)
//! ```
//!
//! Running it again is idempotent: an existing root is reused, and an existing workload
//! certificate is kept while it still carries the right identity, is signed by the current root,
//! matches its key and has more than a third of its lifetime left; otherwise it is re-issued.
//! Keys are ECDSA P-256 (Istio also issues ECDSA workload certificates when configured to; the
//! default there is RSA 2048, which makes no difference to Envoy).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use wasmesh_istio::{Resources, Workload};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

pub const ROOT_CERT: &str = "root-cert.pem";
pub const ROOT_KEY: &str = "root-key.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const KEY: &str = "key.pem";

/// Clock skew allowance: certificates are valid from a few minutes in the past (as Istio's CA
/// backdates them).
const BACKDATE: Duration = Duration::from_secs(5 * 60);
const DAY: u64 = 24 * 3600;

/// The files a sidecar's Envoy needs for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The mesh root: peers' certificates are verified against it.
    pub root_cert: PathBuf,
    /// This workload's certificate (PEM).
    pub cert_chain: PathBuf,
    /// This workload's private key (PEM, PKCS#8).
    pub private_key: PathBuf,
}

impl CertPaths {
    /// Where `wasmeshctl certs` writes the files of `namespace`/`service_account` under `dir`.
    pub fn for_workload(dir: &Path, namespace: &str, service_account: &str) -> CertPaths {
        let wl = dir.join(namespace).join(service_account);
        CertPaths { root_cert: dir.join(ROOT_CERT), cert_chain: wl.join(CERT_CHAIN), private_key: wl.join(KEY) }
    }

    /// Checks that the files exist, so `wasmeshctl envoy` fails with a clear message instead of
    /// Envoy failing at start-up.
    pub fn check_exist(&self) -> Result<(), CertError> {
        for p in [&self.root_cert, &self.cert_chain, &self.private_key] {
            if !p.is_file() {
                return Err(CertError::at(p, "missing; run `wasmeshctl certs` for this workload first"));
            }
        }
        Ok(())
    }
}

/// A workload identity: what its SPIFFE URI is made of.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkloadIdentity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl WorkloadIdentity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        WorkloadIdentity {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    pub fn of(workload: &Workload) -> Self {
        Self::new(&workload.trust_domain, &workload.namespace, &workload.service_account)
    }

    /// `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn spiffe_uri(&self) -> String {
        format!("spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }

    /// The identity parts must be DNS names: they become a URI and directory names (no `/`, no
    /// `..`), as Kubernetes namespaces and service accounts are.
    pub fn validate(&self) -> Result<(), CertError> {
        let bad = |what: &str, v: &str, expected: &str| {
            Err(CertError::new(format!("{what} {v:?} is not valid for a SPIFFE identity; expected {expected}")))
        };
        if !is_dns1123_label(&self.namespace) {
            return bad("namespace", &self.namespace, "a DNS-1123 label (lower-case letters, digits, '-', at most 63)");
        }
        if !is_dns1123_subdomain(&self.service_account) {
            return bad(
                "service account",
                &self.service_account,
                "a DNS-1123 subdomain (lower-case letters, digits, '-', '.')",
            );
        }
        if !is_trust_domain(&self.trust_domain) {
            return bad(
                "trust domain",
                &self.trust_domain,
                "lower-case letters, digits, '.', '-', '_' (e.g. cluster.local)",
            );
        }
        Ok(())
    }
}

impl fmt::Display for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spiffe_uri())
    }
}

/// Every workload identity in the resources: each WorkloadEntry's namespace and service
/// account (`default` when it names none, as Kubernetes), in the given trust domain, sorted and
/// without duplicates. These are the certificates a standalone mesh needs.
pub fn identities_in(resources: &Resources, trust_domain: &str) -> Vec<WorkloadIdentity> {
    let mut out: Vec<WorkloadIdentity> = resources
        .workload_entries()
        .map(|(res, we)| {
            let sa = if we.service_account.is_empty() { "default" } else { we.service_account.as_str() };
            WorkloadIdentity::new(trust_domain, res.namespace(), sa)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub path: Option<PathBuf>,
    pub message: String,
}

impl CertError {
    fn new(message: impl Into<String>) -> Self {
        CertError { path: None, message: message.into() }
    }
    fn at(path: &Path, message: impl Into<String>) -> Self {
        CertError { path: Some(path.to_path_buf()), message: message.into() }
    }
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}: {}", p.display(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for CertError {}

/// What happened to a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Kept,
    /// Re-issued, with the reason.
    Renewed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Created => f.write_str("created"),
            Outcome::Kept => f.write_str("kept"),
            Outcome::Renewed(why) => write!(f, "renewed ({why})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// Written into the root's subject (`O=`), as Istio's self-signed root carries the trust domain.
    pub trust_domain: String,
    pub root_ttl: Duration,
    /// Istio's agent rotates 24 h certificates; nothing rotates these, so the default is 90 days
    /// and a re-run of `wasmeshctl certs` renews them once two thirds have passed.
    pub workload_ttl: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            trust_domain: "cluster.local".into(),
            root_ttl: Duration::from_secs(10 * 365 * DAY),
            workload_ttl: Duration::from_secs(90 * DAY),
        }
    }
}

/// The mesh CA: the root certificate and its key, read from or written to `dir`.
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Ca {
    /// Reuses the root in `dir`, or creates one. A root that is expired, not a CA, or does not
    /// match its key is an error (replacing it silently would break every running sidecar).
    pub fn load_or_create(dir: &Path, opts: &CaOptions) -> Result<(Ca, Outcome), CertError> {
        let cert_path = dir.join(ROOT_CERT);
        let key_path = dir.join(ROOT_KEY);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((Ca::load(dir)?, Outcome::Kept)),
            (false, false) => Ok((Ca::create(dir, opts)?, Outcome::Created)),
            (true, false) => Err(CertError::at(
                &key_path,
                "missing while root-cert.pem exists; restore it, or delete both to create a new root",
            )),
            (false, true) => Err(CertError::at(
                &cert_path,
                "missing while root-key.pem exists; restore it, or delete both to create a new root",
            )),
        }
    }

    fn create(dir: &Path, opts: &CaOptions) -> Result<Ca, CertError> {
        if !is_trust_domain(&opts.trust_domain) {
            return Err(CertError::new(format!("trust domain {:?} is not valid", opts.trust_domain)));
        }
        let key = KeyPair::generate().map_err(|e| CertError::new(format!("cannot generate the root key: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, opts.trust_domain.as_str());
        dn.push(DnType::CommonName, "wasmesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        (params.not_before, params.not_after) = validity(opts.root_ttl)?;
        let cert = params.self_signed(&key).map_err(|e| CertError::new(format!("cannot sign the root: {e}")))?;
        std::fs::create_dir_all(dir).map_err(|e| CertError::at(dir, format!("cannot create directory: {e}")))?;
        write_file(&dir.join(ROOT_KEY), key.serialize_pem().as_bytes(), true)?;
        write_file(&dir.join(ROOT_CERT), cert.pem().as_bytes(), false)?;
        Ok(Ca { dir: dir.to_path_buf(), cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key })
    }

    fn load(dir: &Path) -> Result<Ca, CertError> {
        let cert_path = dir.join(ROOT_CERT);
        let key_path = dir.join(ROOT_KEY);
        let cert_pem = read_string(&cert_path)?;
        let key_pem = read_string(&key_path)?;
        let key =
            KeyPair::from_pem(&key_pem).map_err(|e| CertError::at(&key_path, format!("not a PEM private key: {e}")))?;
        let cert_der = pem_der(&cert_pem).map_err(|m| CertError::at(&cert_path, m))?;
        let (_, x509) = X509Certificate::from_der(&cert_der)
            .map_err(|e| CertError::at(&cert_path, format!("not an X.509 certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(CertError::at(&cert_path, "is not a CA certificate (basicConstraints CA:TRUE missing)"));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertError::at(&key_path, "does not belong to root-cert.pem"));
        }
        if x509.validity().time_to_expiration().is_none() {
            return Err(CertError::at(
                &cert_path,
                format!(
                    "the root is not valid now (valid {} to {}); delete root-cert.pem and root-key.pem to create a new root (every workload certificate is then re-issued)",
                    x509.validity().not_before,
                    x509.validity().not_after
                ),
            ));
        }
        Ok(Ca { dir: dir.to_path_buf(), cert_pem, cert_der, key })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn root_cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues (or keeps, see the module doc) the certificate of one workload identity.
    pub fn issue(&self, id: &WorkloadIdentity, opts: &CaOptions) -> Result<(CertPaths, Outcome), CertError> {
        id.validate()?;
        let paths = CertPaths::for_workload(&self.dir, &id.namespace, &id.service_account);
        let outcome = match self.check_leaf(&paths, id) {
            Ok(()) => return Ok((paths, Outcome::Kept)),
            Err(LeafState::Missing) => Outcome::Created,
            Err(LeafState::Stale(why)) => Outcome::Renewed(why),
        };
        let key = KeyPair::generate().map_err(|e| CertError::new(format!("cannot generate a key: {e}")))?;
        let mut params = CertificateParams::default();
        // Istio workload certificates have an empty subject; the SAN (then critical) is the name.
        params.distinguished_name = DistinguishedName::new();
        let uri = id.spiffe_uri();
        params.subject_alt_names = vec![SanType::URI(
            uri.clone().try_into().map_err(|e| CertError::new(format!("{uri:?} is not a valid URI SAN: {e}")))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        // ECDSA keys sign; they cannot encipher keys, so keyEncipherment would be wrong here.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(opts.workload_ttl)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), &self.key)
            .map_err(|e| CertError::at(&self.dir.join(ROOT_CERT), format!("cannot use as issuer: {e}")))?;
        let cert = params.signed_by(&key, &issuer).map_err(|e| CertError::new(format!("cannot sign {uri}: {e}")))?;
        let wl_dir = paths.cert_chain.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(wl_dir).map_err(|e| CertError::at(wl_dir, format!("cannot create directory: {e}")))?;
        write_file(&paths.private_key, key.serialize_pem().as_bytes(), true)?;
        write_file(&paths.cert_chain, cert.pem().as_bytes(), false)?;
        Ok((paths, outcome))
    }

    fn check_leaf(&self, paths: &CertPaths, id: &WorkloadIdentity) -> Result<(), LeafState> {
        if !paths.cert_chain.exists() && !paths.private_key.exists() {
            return Err(LeafState::Missing);
        }
        let stale = |why: &str| LeafState::Stale(why.to_string());
        let cert_pem = std::fs::read_to_string(&paths.cert_chain).map_err(|_| stale("certificate unreadable"))?;
        let key_pem = std::fs::read_to_string(&paths.private_key).map_err(|_| stale("key unreadable"))?;
        let der = pem_der(&cert_pem).map_err(|_| stale("certificate is not PEM"))?;
        let (_, leaf) = X509Certificate::from_der(&der).map_err(|_| stale("certificate does not parse"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|_| stale("key does not parse"))?;
        if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(stale("key does not match the certificate"));
        }
        if uri_sans(&leaf) != [id.spiffe_uri()] {
            return Err(stale("identity differs"));
        }
        let (_, root) = X509Certificate::from_der(&self.cert_der).map_err(|_| stale("root does not parse"))?;
        if leaf.issuer() != root.subject() || leaf.verify_signature(Some(root.public_key())).is_err() {
            return Err(stale("not signed by the current root"));
        }
        let v = leaf.validity();
        let lifetime = v.not_after.timestamp() - v.not_before.timestamp();
        match v.time_to_expiration() {
            None => Err(stale("expired or not yet valid")),
            Some(left) if left.whole_seconds() < lifetime / 3 => Err(stale("less than a third of its lifetime left")),
            Some(_) => Ok(()),
        }
    }
}

enum LeafState {
    Missing,
    Stale(String),
}

/// Creates (or reuses) the root in `dir` and a certificate for each identity. Returns one line
/// per certificate saying what happened, for the command's output.
pub fn run(dir: &Path, identities: &[WorkloadIdentity], opts: &CaOptions) -> Result<Vec<String>, CertError> {
    for id in identities {
        id.validate()?;
    }
    let (ca, root) = Ca::load_or_create(dir, opts)?;
    let mut lines = vec![format!("{}: root {root}", dir.join(ROOT_CERT).display())];
    for id in identities {
        let (paths, outcome) = ca.issue(id, opts)?;
        lines.push(format!("{}: {id} {outcome}", paths.cert_chain.display()));
    }
    Ok(lines)
}

/// `wasmeshctl certs`: what its `--help` says about it.
pub const ABOUT: &str = "A small mesh CA (Citadel's role): SPIFFE certificates for mutual TLS";
pub const LONG_ABOUT: &str = "A small mesh CA (Citadel's role, without Kubernetes): creates DIR/root-cert.pem \
(+ root-key.pem) once, and a certificate with the SPIFFE identity spiffe://TD/ns/NS/sa/SA for every \
WorkloadEntry in the -f files (namespace, serviceAccount) and every --identity, as \
DIR/NS/SA/cert-chain.pem and key.pem. Re-running keeps valid certificates and renews stale ones. \
`wasmeshctl envoy --certs DIR` uses them for mutual TLS. TD: --trust-domain, else meshConfig \
trustDomain, else cluster.local.";

/// `wasmeshctl certs` arguments. The certificate directory is `--out-dir` (`-o` and `--out`
/// still work, hidden): in istioctl and kubectl `-o` is the output format, and this command
/// writes a directory, not a format.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct CertsArgs {
    /// The certificate directory (created if missing; an existing root in it is reused).
    #[arg(long = "out-dir", short_alias = 'o', alias = "out", value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub out_dir: PathBuf,

    #[command(flatten)]
    pub input: crate::input::InputArgs,

    /// An extra identity NAMESPACE/SERVICE_ACCOUNT (repeatable).
    #[arg(long, value_name = "NS/SA")]
    pub identity: Vec<String>,

    /// The SPIFFE trust domain (default: meshConfig trustDomain, else cluster.local).
    #[arg(long, value_name = "TD")]
    pub trust_domain: Option<String>,

    /// Istio MeshConfig (YAML) whose trustDomain applies when --trust-domain is not given.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub mesh_config: Option<PathBuf>,

    /// Lifetime of workload certificates; re-running renews them once two thirds have passed.
    #[arg(long, value_name = "N", default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub workload_ttl_days: u64,
}

/// `wasmeshctl certs`. Prints what it did, one line per certificate.
pub fn cmd(args: CertsArgs) -> Result<(), String> {
    let mut opts =
        CaOptions { workload_ttl: Duration::from_secs(args.workload_ttl_days * DAY), ..CaOptions::default() };
    let mut trust_domain = args.trust_domain.clone();
    if trust_domain.is_none() {
        if let Some(file) = &args.mesh_config {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(file).map_err(|e| format!("--mesh-config {name}: {e}"))?;
            trust_domain = crate::mesh::MeshConfig::load(&text, &name).map_err(|e| e.to_string())?.trust_domain;
        }
    }
    let td = trust_domain.unwrap_or_else(|| "cluster.local".to_string());
    opts.trust_domain = td.clone();
    let mut ids =
        if args.input.filename.is_empty() { Vec::new() } else { identities_in(&args.input.resources()?, &td) };
    for e in &args.identity {
        let (ns, sa) =
            e.split_once('/').ok_or_else(|| format!("--identity {e:?}: expected NAMESPACE/SERVICE_ACCOUNT"))?;
        ids.push(WorkloadIdentity::new(&td, ns, sa));
    }
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Err("no identities: give -f files with WorkloadEntries or --identity NS/SA".into());
    }
    for line in run(&args.out_dir, &ids, &opts).map_err(|e| e.to_string())? {
        println!("{line}");
    }
    Ok(())
}

/// The URI SANs of a certificate, in order.
pub fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The first URI SAN of the certificate (the first PEM block) in file `path`: what Envoy reports
/// as `uri_san_local_certificate` for a TLS context presenting that file. `None` when the file
/// cannot be read or parsed, or the certificate has no URI SAN.
pub fn first_uri_san(path: &Path) -> Option<String> {
    let pem = std::fs::read_to_string(path).ok()?;
    let der = pem_der(&pem).ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    uri_sans(&cert).into_iter().next()
}

/// The DER of the first PEM block.
pub fn pem_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
    Ok(block.contents)
}

fn validity(ttl: Duration) -> Result<(time::OffsetDateTime, time::OffsetDateTime), CertError> {
    let now = time::OffsetDateTime::from(SystemTime::now());
    let ttl = time::Duration::try_from(ttl).map_err(|_| CertError::new("certificate lifetime too large"))?;
    if ttl <= time::Duration::ZERO {
        return Err(CertError::new("certificate lifetime must be positive"));
    }
    let backdate = time::Duration::try_from(BACKDATE).unwrap_or(time::Duration::ZERO);
    let not_after = now.checked_add(ttl).ok_or_else(|| CertError::new("certificate lifetime too large"))?;
    Ok((now - backdate, not_after))
}

fn read_string(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|e| CertError::at(path, format!("cannot read: {e}")))
}

/// Writes through a temporary file and a rename, so a reader never sees half a key; keys are
/// readable by the owner only.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    use std::io::Write;
    let tmp = path.with_extension("pem.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(|e| CertError::at(&tmp, format!("cannot write: {e}")))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| CertError::at(&tmp, format!("cannot write: {e}")))?;
    drop(file);
    #[cfg(unix)]
    if secret {
        // An existing file keeps its mode through `open`; make sure the new key is private.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| CertError::at(&tmp, format!("cannot restrict permissions: {e}")))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| CertError::at(path, format!("cannot write: {e}")))
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::oid_registry;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            let p = std::env::temp_dir().join(format!("wasmesh-certs-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p).expect("temp dir");
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn parse(path: &Path) -> Vec<u8> {
        pem_der(&std::fs::read_to_string(path).expect("read")).expect("pem")
    }

    fn sleep() -> WorkloadIdentity {
        WorkloadIdentity::new("cluster.local", "default", "sleep")
    }

    #[test]
    fn root_is_a_self_signed_ca_that_can_sign_certificates() {
        let dir = TempDir::new("root");
        let (_, outcome) = Ca::load_or_create(&dir.0, &CaOptions::default()).expect("ca");
        assert_eq!(outcome, Outcome::Created);
        let der = parse(&dir.0.join(ROOT_CERT));
        let (_, root) = X509Certificate::from_der(&der).expect("x509");
        assert!(root.is_ca());
        let bc = root.basic_constraints().expect("bc").expect("bc present");
        assert!(bc.critical && bc.value.ca);
        let ku = root.key_usage().expect("ku").expect("ku present");
        assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
        assert_eq!(root.subject(), root.issuer());
        root.verify_signature(None).expect("self-signed");
        assert!(root.subject().to_string().contains("O=cluster.local"), "{}", root.subject());
        let years =
            (root.validity().not_after.timestamp() - root.validity().not_before.timestamp()) / (365 * DAY as i64);
        assert_eq!(years, 10);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.0.join(ROOT_KEY)).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn workload_certificate_carries_the_spiffe_identity_and_both_ekus() {
        let dir = TempDir::new("leaf");
        let opts = CaOptions::default();
        let (ca, _) = Ca::load_or_create(&dir.0, &opts).expect("ca");
        let (paths, outcome) = ca.issue(&sleep(), &opts).expect("issue");
        assert_eq!(outcome, Outcome::Created);
        assert_eq!(paths, CertPaths::for_workload(&dir.0, "default", "sleep"));
        assert!(paths.cert_chain.ends_with("default/sleep/cert-chain.pem"));
        paths.check_exist().expect("files");

        let der = parse(&paths.cert_chain);
        let (_, leaf) = X509Certificate::from_der(&der).expect("x509");
        assert_eq!(uri_sans(&leaf), vec!["spiffe://cluster.local/ns/default/sa/sleep".to_string()]);
        let san = leaf.subject_alternative_name().expect("san").expect("san present");
        assert!(san.critical, "SAN must be critical with an empty subject");
        assert_eq!(leaf.subject().iter_attributes().count(), 0);
        assert!(!leaf.is_ca());
        let eku = leaf.extended_key_usage().expect("eku").expect("eku present");
        assert!(eku.value.server_auth && eku.value.client_auth);
        let ku = leaf.key_usage().expect("ku").expect("ku present");
        assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
        // Signed by the root, and names it.
        let root_der = parse(&dir.0.join(ROOT_CERT));
        let (_, root) = X509Certificate::from_der(&root_der).expect("root");
        assert_eq!(leaf.issuer(), root.subject());
        leaf.verify_signature(Some(root.public_key())).expect("signed by root");
        assert!(leaf.verify_signature(None).is_err(), "not self-signed");
        let has_aki = leaf
            .extensions()
            .iter()
            .any(|e| matches!(e.parsed_extension(), ParsedExtension::AuthorityKeyIdentifier(_)));
        assert!(has_aki);
        assert!(leaf.extensions().iter().any(|e| e.oid == oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER));
        // Valid now, backdated for clock skew, 90 days.
        let v = leaf.validity();
        assert!(v.is_valid());
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("time").as_secs() as i64;
        assert!(v.not_before.timestamp() <= now - 240 && v.not_before.timestamp() >= now - 400);
        assert_eq!((v.not_after.timestamp() - now + 30) / DAY as i64, 90);
        // The key file is the certificate's key.
        let key = KeyPair::from_pem(&std::fs::read_to_string(&paths.private_key).expect("key")).expect("pkcs8");
        assert_eq!(leaf.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
    }

    #[test]
    fn running_twice_keeps_everything() {
        let dir = TempDir::new("idem");
        let opts = CaOptions::default();
        let ids = vec![sleep(), WorkloadIdentity::new("cluster.local", "foo", "httpbin")];
        let first = run(&dir.0, &ids, &opts).expect("first");
        assert!(first.iter().skip(1).all(|l| l.ends_with("created")), "{first:?}");
        let root = std::fs::read(dir.0.join(ROOT_CERT)).expect("root");
        let leaf = std::fs::read(dir.0.join("foo/httpbin/cert-chain.pem")).expect("leaf");
        let second = run(&dir.0, &ids, &opts).expect("second");
        assert!(second.iter().all(|l| l.ends_with("kept")), "{second:?}");
        assert_eq!(std::fs::read(dir.0.join(ROOT_CERT)).expect("root"), root);
        assert_eq!(std::fs::read(dir.0.join("foo/httpbin/cert-chain.pem")).expect("leaf"), leaf);
    }

    #[test]
    fn stale_certificates_are_reissued() {
        let dir = TempDir::new("stale");
        let opts = CaOptions::default();
        let (ca, _) = Ca::load_or_create(&dir.0, &opts).expect("ca");
        let (paths, _) = ca.issue(&sleep(), &opts).expect("issue");
        // Another workload's key in place of this one's.
        let (other, _) = ca.issue(&WorkloadIdentity::new("cluster.local", "default", "other"), &opts).expect("issue");
        std::fs::copy(&other.private_key, &paths.private_key).expect("copy");
        let (_, outcome) = ca.issue(&sleep(), &opts).expect("reissue");
        assert_eq!(outcome, Outcome::Renewed("key does not match the certificate".into()));
        // Another workload's certificate and key: wrong identity.
        std::fs::copy(&other.private_key, &paths.private_key).expect("copy");
        std::fs::copy(&other.cert_chain, &paths.cert_chain).expect("copy");
        assert_eq!(ca.issue(&sleep(), &opts).expect("reissue").1, Outcome::Renewed("identity differs".into()));
        // Short-lived certificates: less than a third left is renewed (1 s lifetime + 5 min backdate
        // is fine, so use a certificate whose remaining time is tiny relative to its lifetime).
        let short = CaOptions { workload_ttl: Duration::from_secs(1), ..CaOptions::default() };
        std::fs::remove_file(&paths.cert_chain).expect("rm");
        ca.issue(&sleep(), &short).expect("short");
        assert_eq!(
            ca.issue(&sleep(), &opts).expect("renew").1,
            Outcome::Renewed("less than a third of its lifetime left".into())
        );
        // A certificate from another root.
        let dir2 = TempDir::new("stale2");
        let (ca2, _) = Ca::load_or_create(&dir2.0, &opts).expect("ca2");
        let (foreign, _) = ca2.issue(&sleep(), &opts).expect("foreign");
        std::fs::copy(&foreign.cert_chain, &paths.cert_chain).expect("copy");
        std::fs::copy(&foreign.private_key, &paths.private_key).expect("copy");
        assert_eq!(
            ca.issue(&sleep(), &opts).expect("reissue").1,
            Outcome::Renewed("not signed by the current root".into())
        );
        assert_eq!(ca.issue(&sleep(), &opts).expect("kept").1, Outcome::Kept);
    }

    #[test]
    fn broken_roots_are_errors_not_silently_replaced() {
        let dir = TempDir::new("broken");
        let opts = CaOptions::default();
        Ca::load_or_create(&dir.0, &opts).expect("ca");
        std::fs::remove_file(dir.0.join(ROOT_KEY)).expect("rm");
        let e = Ca::load_or_create(&dir.0, &opts).expect_err("missing key");
        assert!(e.to_string().contains("root-key.pem: missing"), "{e}");
        // A key that is not the root's.
        std::fs::write(dir.0.join(ROOT_KEY), KeyPair::generate().expect("key").serialize_pem()).expect("write");
        let e = Ca::load_or_create(&dir.0, &opts).expect_err("wrong key");
        assert!(e.to_string().contains("does not belong to root-cert.pem"), "{e}");
        // A leaf used as a root.
        let dir2 = TempDir::new("broken2");
        let (ca, _) = Ca::load_or_create(&dir2.0, &opts).expect("ca");
        let (leaf, _) = ca.issue(&sleep(), &opts).expect("leaf");
        std::fs::copy(&leaf.cert_chain, dir.0.join(ROOT_CERT)).expect("copy");
        std::fs::copy(&leaf.private_key, dir.0.join(ROOT_KEY)).expect("copy");
        let e = Ca::load_or_create(&dir.0, &opts).expect_err("not a ca");
        assert!(e.to_string().contains("is not a CA certificate"), "{e}");
    }

    #[test]
    fn identities_are_validated_before_anything_is_written() {
        let dir = TempDir::new("ids");
        for (ns, sa) in [
            ("..", "sleep"),
            ("default", "../x"),
            ("Default", "sleep"),
            ("default", ""),
            ("a/b", "sleep"),
            ("default", "a..b"),
        ] {
            let e =
                run(&dir.0, &[WorkloadIdentity::new("cluster.local", ns, sa)], &CaOptions::default()).expect_err(ns);
            assert!(e.message.contains("is not valid for a SPIFFE identity"), "{e}");
        }
        let e = run(&dir.0, &[WorkloadIdentity::new("Cluster/Local", "default", "sleep")], &CaOptions::default())
            .expect_err("td");
        assert!(e.message.contains("trust domain"), "{e}");
        assert!(!dir.0.join(ROOT_CERT).exists());
        // Service accounts may contain dots (DNS-1123 subdomain).
        run(&dir.0, &[WorkloadIdentity::new("example.org", "default", "sa.v1")], &CaOptions::default()).expect("dots");
        assert!(dir.0.join("default/sa.v1/key.pem").exists());
    }

    #[test]
    fn identities_come_from_workload_entries() {
        let y = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a, namespace: foo}\nspec: {address: 127.0.0.1, serviceAccount: httpbin}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b, namespace: foo}\nspec: {address: 127.0.0.1, serviceAccount: httpbin}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: gw, namespace: istio-system}\nspec: {address: 127.0.0.1}\n";
        let resources = Resources { items: wasmesh_istio::load_str(y, "we.yaml").expect("yaml") };
        let ids: Vec<String> = identities_in(&resources, "cluster.local").iter().map(|i| i.spiffe_uri()).collect();
        assert_eq!(
            ids,
            vec!["spiffe://cluster.local/ns/foo/sa/httpbin", "spiffe://cluster.local/ns/istio-system/sa/default"]
        );
    }

    #[test]
    fn command_issues_for_workload_entries_and_extra_identities() {
        let dir = TempDir::new("cmd");
        let yaml = dir.0.join("we.yaml");
        std::fs::write(&yaml, "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a, namespace: foo}\nspec: {address: 127.0.0.1, serviceAccount: httpbin}\n").expect("write");
        let out = dir.0.join("certs");
        cmd(args(&[
            "-f",
            yaml.to_str().expect("path"),
            "--identity",
            "bar/sleep",
            "--trust-domain",
            "example.org",
            "--out-dir",
            out.to_str().expect("path"),
        ])
        .expect("args"))
        .expect("certs");
        for (ns, sa) in [("foo", "httpbin"), ("bar", "sleep")] {
            let der = parse(&CertPaths::for_workload(&out, ns, sa).cert_chain);
            let (_, leaf) = X509Certificate::from_der(&der).expect("x509");
            assert_eq!(uri_sans(&leaf), vec![format!("spiffe://example.org/ns/{ns}/sa/{sa}")]);
        }
        // `-o DIR` (the flag's old name) still works.
        let e = cmd(args(&["-o", &out.display().to_string()]).expect("args")).expect_err("no ids");
        assert!(e.contains("no identities"), "{e}");
        let e = cmd(args(&["--identity", "nosa", "--out-dir", "x"]).expect("args")).expect_err("bad id");
        assert!(e.contains("NAMESPACE/SERVICE_ACCOUNT"), "{e}");
        let e = args(&["--out-dir", "x", "--bogus"]).expect_err("flag").to_string();
        assert!(e.contains("--bogus"), "{e}");
        let e = args(&["--out-dir", "x", "--workload-ttl-days", "0"]).expect_err("ttl").to_string();
        assert!(e.contains("--workload-ttl-days"), "{e}");
        assert!(args(&["--identity", "a/b"]).is_err(), "--out-dir is required");
    }

    /// `certs` arguments as clap parses them on the command line.
    fn args(argv: &[&str]) -> Result<CertsArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: CertsArgs,
        }
        <Cli as clap::Parser>::try_parse_from(std::iter::once("certs").chain(argv.iter().copied())).map(|c| c.args)
    }
}
