//! `tarmac identity`: the mesh's CA as `tarmac up` uses it: where it is kept, what it
//! trusts, who issues, and until when; and how to bring one's own.

use std::path::{Path, PathBuf};
use std::time::SystemTime;
use tarmac_identity::DEFAULT_TRUST_DOMAIN;
use tarmac_identity::ca::{self, Ca, CaError};
use tarmac_identity::x509::{CertError, CertInfo};

/// What can go wrong finding, showing or importing the mesh's CA.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    DefaultDir(#[from] tarmac_control::identity::NoStateDir),
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("import needs --root-key, or --issuer and --issuer-key")]
    ImportNeedsKeys,
    #[error("{0}")]
    Ca(#[source] CaError),
    #[error(
        "{0}; --anchors must hold the root your issuer was signed under, and the --issuer file any intermediates between them, after the issuer"
    )]
    NotChained(#[source] CaError),
    #[error(transparent)]
    Anchors(#[from] tarmac_identity::ca::PemError),
    #[error("{0}")]
    Certificate(#[source] CertError),
}

/// Show or set the mesh's certificate authority (trust anchors and issuer).
#[derive(clap::Args, Debug)]
pub struct IdentityArgs {
    /// The CA directory (default: as `tarmac up`).
    #[arg(long)]
    pub identity_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub action: Option<Action>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Show the anchors and the issuer, with their expiry (the default).
    Show,
    /// Use your own PKI: a root and its key (Tarmac makes an issuer under it), or an
    /// issuer with its key and the anchors it chains to. Replaces what the directory holds.
    Import {
        /// Trust anchors (PEM): the root, or the roots the issuer chains to.
        #[arg(long)]
        anchors: PathBuf,
        /// The root's private key (PKCS#8 PEM): Tarmac generates an issuer signed by it.
        #[arg(long, conflicts_with_all = ["issuer", "issuer_key"])]
        root_key: Option<PathBuf>,
        /// The issuer's certificate (PEM, then any intermediates up to the anchors).
        #[arg(long, requires = "issuer_key")]
        issuer: Option<PathBuf>,
        /// The issuer's private key (PKCS#8 PEM).
        #[arg(long, requires = "issuer")]
        issuer_key: Option<PathBuf>,
    },
}

/// `$XDG_STATE_HOME/tarmac/identity`, or `~/.local/state/tarmac/identity`.
pub fn default_dir() -> Result<PathBuf, IdentityError> {
    Ok(tarmac_control::identity::default_ca_dir()?)
}

/// A time as `2026-11-27 10:00:00 UTC`.
pub fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn run(args: IdentityArgs) -> Result<(), IdentityError> {
    let dir = match args.identity_dir {
        Some(dir) => dir,
        None => default_dir()?,
    };
    match args.action.unwrap_or(Action::Show) {
        Action::Show => show(&dir),
        Action::Import { anchors, root_key, issuer, issuer_key } => {
            let read = |path: &Path| {
                std::fs::read_to_string(path)
                    .map_err(|source| IdentityError::Read { path: path.to_path_buf(), source })
            };
            let anchors_pem = read(&anchors)?;
            let (ca, root_key_pem) = match (root_key, issuer, issuer_key) {
                (Some(key), None, None) => {
                    let key_pem = read(&key)?;
                    (Ca::from_root(&anchors_pem, &key_pem, DEFAULT_TRUST_DOMAIN), Some(key_pem))
                }
                (None, Some(cert), Some(key)) => {
                    (Ca::from_issuer(&anchors_pem, &read(&cert)?, &read(&key)?), None)
                }
                _ => return Err(IdentityError::ImportNeedsKeys),
            };
            let ca = ca.map_err(IdentityError::Ca)?;
            // Before anything is replaced: an issuer that the anchors do not trust would
            // make every handshake between sidecars fail.
            ca.check_chains_to_anchors().map_err(IdentityError::NotChained)?;
            // Replacing: remove what was there, so no stale root key stays behind.
            for file in [ca::ANCHORS_FILE, ca::ISSUER_CERT_FILE, ca::ISSUER_KEY_FILE, ca::ROOT_KEY_FILE] {
                let _ = std::fs::remove_file(dir.join(file));
            }
            ca.save(&dir, root_key_pem.as_deref()).map_err(IdentityError::Ca)?;
            println!("imported into {}; restart `tarmac up` to use it", dir.display());
            show(&dir)
        }
    }
}

fn show(dir: &Path) -> Result<(), IdentityError> {
    if !dir.join(ca::ANCHORS_FILE).exists() {
        println!("No CA in {} yet: `tarmac up` generates one on first use.", dir.display());
        return Ok(());
    }
    let (ca, _) = Ca::load_or_generate(dir, DEFAULT_TRUST_DOMAIN).map_err(IdentityError::Ca)?;
    println!("CA directory: {}", dir.display());
    println!("trust domain: {DEFAULT_TRUST_DOMAIN}");
    let anchors = ca::pem_certs(ca.anchors_pem())?;
    for der in &anchors {
        describe("trust anchor", &CertInfo::parse(der).map_err(IdentityError::Certificate)?);
    }
    describe("issuer", ca.issuer_info());
    let root_key = dir.join(ca::ROOT_KEY_FILE).exists();
    println!(
        "keys: issuer key in {} (mode 0600){}",
        ca::ISSUER_KEY_FILE,
        if root_key { format!(", root key in {} (mode 0600)", ca::ROOT_KEY_FILE) } else { String::new() }
    );
    Ok(())
}

fn describe(what: &str, info: &CertInfo) {
    let left = info.not_after.duration_since(SystemTime::now()).map(|d| d.as_secs() / 86_400);
    let state = match left {
        Ok(days) => format!("expires in {days} days"),
        Err(_) => "EXPIRED".to_string(),
    };
    println!("{what}: {}", info.subject);
    println!("  valid {} to {} ({state})", format_time(info.not_before), format_time(info.not_after));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_time(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_694_400);
        assert_eq!(format_time(t), "2026-11-26 12:00:00 UTC");
    }
}
