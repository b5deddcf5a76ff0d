//! The CA certificates TLS connections to OpenSearch are verified against: the system's store.
//!
//! The same files the HTTP client's platform verifier reads on Linux (rustls-native-certs):
//! `SSL_CERT_FILE` and `SSL_CERT_DIR` when either is set, otherwise openssl-probe's usual places
//! (a bundle file and the certificate directories that exist); a file reached twice through
//! links is read once, and certificates that do not parse are skipped.
//!
//! [`system_verifier`] reads the bundle file at cold start and the directories only when a
//! server's chain is not anchored by the bundle, as OpenSSL, which looks a certificate up in a
//! directory by its issuer's hash when it needs one, reads them. On Debian the bundle already
//! holds the directory's certificates (all but a machine's own self-signed one, if `ssl-cert`
//! made it), and reading the directory's ~290 files (a `stat`, `open`, `read` and `close` each,
//! and the same certificates decoded again) was half of a cold start.
//!
//! The PEM text is read here, by hand, rather than by `rustls-pki-types`' reader, which the
//! verifier uses: that reader decodes base64 in constant time, as private keys need, at about
//! 57 instructions a byte, and decoding one 220 KB bundle that way was 85% of the instructions
//! of a cold start (two copies of it, a bundle plus a directory, on Debian). CA certificates are
//! public, so the `base64` crate's decoder serves. `pem_reads_what_the_pki_types_reader_reads`
//! holds this reader to that one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::{env, fs, io};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The store, and what could not be read on the way (for a warning: the verifier also goes on
/// with what it has).
struct Roots {
    store: RootCertStore,
    /// Certificates found but not usable as trust anchors.
    ignored: usize,
    problems: Vec<String>,
}

/// No certificate could be read from any of the places.
#[derive(Debug, thiserror::Error)]
#[error("no CA certificates found in {places}{}", problems_text(.problems))]
pub struct NoRoots {
    pub places: String,
    pub problems: Vec<String>,
}

fn problems_text(problems: &[String]) -> String {
    if problems.is_empty() {
        String::new()
    } else {
        format!(" ({})", problems.join("; "))
    }
}

/// A verifier for the system's store: its bundle file read now, its directories when a chain
/// needs them.
pub fn system_verifier(provider: Arc<CryptoProvider>) -> Result<Verifier, NoRoots> {
    let (file, dirs) = system_places();
    Verifier::new(provider, file, dirs)
}

/// Verifies a server's certificate against the bundle file's certificates, and a chain they
/// do not accept once more against the whole store: the bundle and the directories, read the
/// first time a chain needs them (and then kept). Trusts what a verifier given the whole store
/// at once trusts: the bundle's certificates are part of it, and a chain it refuses is decided
/// by the whole store.
///
/// The directories are read inside the TLS handshake that first needs them, a few
/// milliseconds of blocking file reads, once.
#[derive(Debug)]
pub struct Verifier {
    provider: Arc<CryptoProvider>,
    first: Arc<WebPkiServerVerifier>,
    /// Where the whole store is, when the first verifier has only the bundle's part of it.
    rest: Option<(Option<PathBuf>, Vec<PathBuf>)>,
    /// The whole store's verifier, or None when no certificate could be read from it.
    whole: OnceLock<Option<Arc<WebPkiServerVerifier>>>,
}

impl Verifier {
    fn new(
        provider: Arc<CryptoProvider>,
        file: Option<PathBuf>,
        dirs: Vec<PathBuf>,
    ) -> Result<Verifier, NoRoots> {
        // The bundle alone, when it holds a certificate and there are directories to defer.
        let bundle = match &file {
            Some(file) if !dirs.is_empty() => from_places(Some(file), &[]).ok(),
            _ => None,
        };
        let (roots, rest) = match bundle {
            Some(roots) => (roots, Some((file, dirs))),
            None => (from_places(file.as_deref(), &dirs)?, None),
        };
        warn_of(&roots);
        Ok(Verifier {
            first: webpki(roots.store, &provider),
            provider,
            rest,
            whole: OnceLock::new(),
        })
    }

    /// The whole store's verifier, reading the directories the first time; None when they
    /// were read with the bundle at the start.
    fn whole(&self) -> Option<&Arc<WebPkiServerVerifier>> {
        let (file, dirs) = self.rest.as_ref()?;
        self.whole
            .get_or_init(|| match from_places(file.as_deref(), dirs) {
                Ok(roots) => {
                    warn_of(&roots);
                    Some(webpki(roots.store, &self.provider))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the CA store's directories could not be read");
                    None
                }
            })
            .as_ref()
    }
}

fn webpki(store: RootCertStore, provider: &Arc<CryptoProvider>) -> Arc<WebPkiServerVerifier> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        // `build` refuses only an empty store, and `from_places` never returns one.
        .expect("a verifier for a store with certificates")
}

fn warn_of(roots: &Roots) {
    if roots.ignored > 0 || !roots.problems.is_empty() {
        tracing::warn!(
            ignored = roots.ignored,
            problems = ?roots.problems,
            "some CA certificates of the system's store could not be read"
        );
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.first
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .or_else(|refusal| match self.whole() {
                Some(whole) => whole.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                ),
                None => Err(refusal),
            })
    }

    // A signature's check does not depend on the trust anchors.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.first.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.first.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.first.supported_verify_schemes()
    }
}

/// Where the system's store is: the bundle file and the directories.
fn system_places() -> (Option<PathBuf>, Vec<PathBuf>) {
    let mut file = env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let mut dirs: Vec<PathBuf> = match env::var_os("SSL_CERT_DIR") {
        Some(d) => env::split_paths(&d)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        None => Vec::new(),
    };
    if file.is_none() && dirs.is_empty() {
        let probe = openssl_probe::probe();
        file = probe.cert_file;
        dirs = probe.cert_dir;
    }
    (file, dirs)
}

/// Reads `file` and every file in `dirs`.
fn from_places(file: Option<&Path>, dirs: &[PathBuf]) -> Result<Roots, NoRoots> {
    let (ders, problems) = read_places(file, dirs);
    let mut store = RootCertStore::empty();
    let (_, ignored) = store.add_parsable_certificates(ders.into_iter().map(CertificateDer::from));
    if store.is_empty() {
        let mut places: Vec<String> = file.iter().map(|f| f.display().to_string()).collect();
        places.extend(dirs.iter().map(|d| d.display().to_string()));
        return Err(NoRoots {
            places: if places.is_empty() {
                "no place (set SSL_CERT_FILE or SSL_CERT_DIR)".into()
            } else {
                places.join(", ")
            },
            problems,
        });
    }
    Ok(Roots {
        store,
        ignored,
        problems,
    })
}

/// The DER of every certificate in `file` and the files of `dirs`, sorted and without
/// repeats, and what could not be read.
fn read_places(file: Option<&Path>, dirs: &[PathBuf]) -> (Vec<Vec<u8>>, Vec<String>) {
    let mut ders = Vec::new();
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    if let Some(file) = file {
        if let Ok(m) = fs::metadata(file) {
            seen.insert(identity(&m));
        }
        read_file(file, &mut ders, &mut problems);
    }
    for dir in dirs {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries {
            let path = match entry {
                Ok(e) => e.path(),
                Err(e) => {
                    problems.push(format!("{}: {e}", dir.display()));
                    continue;
                }
            };
            match fs::metadata(&path) {
                Ok(m) if m.is_file() && seen.insert(identity(&m)) => {
                    read_file(&path, &mut ders, &mut problems)
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
    }
    // A bundle and a directory usually hold the same certificates.
    ders.sort_unstable();
    ders.dedup();
    (ders, problems)
}

#[cfg(unix)]
fn identity(m: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

fn read_file(path: &Path, ders: &mut Vec<Vec<u8>>, problems: &mut Vec<String>) {
    match fs::read(path) {
        Ok(text) => {
            if let Err(e) = certificates(&text, ders) {
                problems.push(format!("{}: {e}", path.display()));
            }
        }
        Err(e) => problems.push(format!("{}: {e}", path.display())),
    }
}

/// Appends the DER of every `CERTIFICATE` section of PEM `text` to `out`; other sections
/// (keys, CRLs, OpenSSL's `TRUSTED CERTIFICATE`) and the text between sections are skipped.
/// Stops at the first malformed section, keeping what came before it, as the `pki-types`
/// reader does.
fn certificates(text: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), &'static str> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const DASHES: &[u8] = b"-----";
    let mut base64 = Vec::new();
    let mut lines = lines(text);
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(BEGIN) else {
            continue;
        };
        // As `pki-types` reads it: spaces may follow the dashes, and there are exactly five.
        let rest = &rest[..rest
            .iter()
            .rposition(|&b| b != b' ' && b != b'\r')
            .map_or(0, |i| i + 1)];
        let label = rest
            .strip_suffix(DASHES)
            .filter(|label| !label.ends_with(b"-"))
            .ok_or("a BEGIN line without its closing dashes")?;
        let mut end = Vec::with_capacity(label.len() + 14);
        end.extend_from_slice(b"-----END ");
        end.extend_from_slice(label);
        end.extend_from_slice(DASHES);
        base64.clear();
        let mut closed = false;
        for line in lines.by_ref() {
            if line.starts_with(&end) {
                closed = true;
                break;
            }
            base64.extend_from_slice(line.trim_ascii());
        }
        if !closed {
            return Err("a section without its END line");
        }
        if label == b"CERTIFICATE" {
            let der = match STANDARD.decode(&base64) {
                Ok(der) => der,
                // Whitespace inside a line, which a PEM writer does not put there.
                Err(_) => {
                    base64.retain(|b| !b.is_ascii_whitespace());
                    STANDARD
                        .decode(&base64)
                        .map_err(|_| "a certificate section that is not base64")?
                }
            };
            out.push(der);
        }
    }
    Ok(())
}

/// The lines of `text`, without their `\n` or `\r\n`.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    })
}

#[cfg(test)]
#[path = "../../tests/common/ca.rs"]
mod test_ca;

#[cfg(test)]
mod tests {
    use super::test_ca::authority;
    use super::*;
    use proptest::prelude::*;
    use rustls::pki_types::pem::PemObject;

    fn pem(label: &str, der: &[u8], width: usize, crlf: bool) -> String {
        let text = STANDARD.encode(der);
        // CRLF files also get spaces at the ends of lines.
        let nl = if crlf { " \r\n" } else { "\n" };
        let mut s = format!("-----BEGIN {label}-----{nl}");
        for chunk in text.as_bytes().chunks(width) {
            s.push_str(std::str::from_utf8(chunk).unwrap());
            s.push_str(nl);
        }
        s.push_str(&format!("-----END {label}-----{nl}"));
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn pem_reads_what_the_pki_types_reader_reads(
            sections in prop::collection::vec(
                (
                    prop::sample::select(vec!["CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CRL"]),
                    prop::collection::vec(any::<u8>(), 1..300),
                    1usize..80,
                    any::<bool>(),
                    prop::sample::select(vec!["", "# Comment line\n", "Subject: x\r\n\n"]),
                ),
                0..6,
            )
        ) {
            let mut text = String::new();
            for (label, der, width, crlf, before) in &sections {
                text.push_str(before);
                text.push_str(&pem(label, der, *width, *crlf));
            }
            let mut ours = Vec::new();
            certificates(text.as_bytes(), &mut ours).unwrap();
            let theirs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(text.as_bytes())
                .map(|c| c.unwrap().to_vec())
                .collect();
            prop_assert_eq!(&ours, &theirs);
            let expected: Vec<&Vec<u8>> = sections
                .iter()
                .filter(|s| s.0 == "CERTIFICATE")
                .map(|s| &s.1)
                .collect();
            prop_assert_eq!(ours.iter().collect::<Vec<_>>(), expected);
        }
    }

    #[test]
    fn a_malformed_section_stops_the_file_and_keeps_what_came_before() {
        let good = pem("CERTIFICATE", b"first", 64, false);
        for bad in [
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
            "-----BEGIN CERTIFICATE\nAAAA\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE------\nAAAA\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        ] {
            let mut out = Vec::new();
            let text = format!("{good}{bad}");
            assert!(certificates(text.as_bytes(), &mut out).is_err(), "{bad}");
            assert_eq!(out, [b"first".to_vec()], "{bad}");
            let theirs: Vec<_> = CertificateDer::pem_slice_iter(text.as_bytes()).collect();
            assert!(theirs[0].is_ok() && theirs[1].is_err(), "{bad}: {theirs:?}");
        }
    }

    /// The same certificates as the verifier's own loader, from this machine's store.
    #[test]
    fn the_system_store_reads_as_rustls_native_certs_reads_it() {
        let (file, dirs) = system_places();
        let (ours, problems) = read_places(file.as_deref(), &dirs);
        let theirs = rustls_native_certs::load_native_certs();
        let mut theirs: Vec<Vec<u8>> = theirs.certs.iter().map(|c| c.to_vec()).collect();
        theirs.sort_unstable();
        theirs.dedup();
        assert!(
            !ours.is_empty(),
            "no certificates in {file:?} {dirs:?}: {problems:?}"
        );
        assert_eq!(ours.len(), theirs.len(), "{file:?} {dirs:?}");
        assert!(ours == theirs, "same count, different certificates");
    }

    /// Whether `verifier` accepts a certificate for `localhost` issued by `issuer`, or why not.
    fn verdict(
        verifier: &Verifier,
        issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    ) -> Result<(), String> {
        let (leaf, _) = super::test_ca::leaf("localhost", issuer);
        let name = ServerName::try_from("localhost").unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("roots-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The directory is read when a chain first needs it, not before: a certificate put there
    /// after the verifier was made is found, and one of the bundle is found without it.
    #[test]
    fn the_directories_are_read_when_a_chain_is_not_anchored_by_the_bundle() {
        let (bundled, filed, neither) = (
            authority("bundle CA"),
            authority("dir CA"),
            authority("other CA"),
        );
        let root = scratch("deferred");
        let (bundle, dir) = (root.join("bundle.pem"), root.join("certs"));
        fs::write(&bundle, bundled.pem()).unwrap();
        fs::create_dir_all(&dir).unwrap();
        let verifier = Verifier::new(provider(), Some(bundle), vec![dir.clone()]).unwrap();

        fs::write(dir.join("dir-ca.pem"), filed.pem()).unwrap();
        assert_eq!(verdict(&verifier, &bundled), Ok(()));
        assert!(
            verifier.whole.get().is_none(),
            "read for a chain the bundle anchors"
        );
        assert_eq!(verdict(&verifier, &filed), Ok(()));
        assert!(verifier.whole.get().is_some_and(|w| w.is_some()));
        let refusal = verdict(&verifier, &neither).unwrap_err();
        assert!(refusal.contains("UnknownIssuer"), "{refusal}");
        assert_eq!(verdict(&verifier, &bundled), Ok(()));
        fs::remove_dir_all(&root).unwrap();
    }

    /// With no certificate in the bundle (or no bundle), the directories are the store from
    /// the start; with none in either, the verifier is not made.
    #[test]
    fn without_a_usable_bundle_the_directories_are_read_at_the_start() {
        let filed = authority("dir CA");
        let root = scratch("eager");
        let (bundle, dir) = (root.join("bundle.pem"), root.join("certs"));
        fs::write(&bundle, "no certificate here\n").unwrap();
        fs::create_dir_all(&dir).unwrap();
        let e = Verifier::new(provider(), Some(bundle.clone()), vec![dir.clone()]).unwrap_err();
        assert!(e.to_string().contains("bundle.pem"), "{e}");

        fs::write(dir.join("dir-ca.pem"), filed.pem()).unwrap();
        for file in [Some(bundle), Some(root.join("missing.pem")), None] {
            let verifier = Verifier::new(provider(), file.clone(), vec![dir.clone()]).unwrap();
            assert!(verifier.rest.is_none(), "{file:?}");
            assert_eq!(verdict(&verifier, &filed), Ok(()), "{file:?}");
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_store_with_no_certificate_is_an_error_naming_the_places() {
        let dir = std::env::temp_dir().join(format!("roots-empty-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("not-a-cert.pem"), "hello\n").unwrap();
        let missing = dir.join("missing.crt");
        let e = from_places(Some(&missing), std::slice::from_ref(&dir))
            .err()
            .unwrap();
        let text = e.to_string();
        assert!(
            text.contains("missing.crt") && text.contains("roots-empty"),
            "{text}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
