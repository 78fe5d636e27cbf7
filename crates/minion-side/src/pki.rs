//! The minion's pki directory, laid out and permissioned like Salt's:
//! `minion.pem` (0400), `minion.pub` (0644), `minion_master.pub` (0644) in a 0700 directory.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use brine_proto::crypt::{PrivateKey, PublicKey};

/// Why the pki directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A key file that does not parse.
    #[error("{path}: {message}")]
    BadKey {
        /// The path.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_mode(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The minion's key pair: loaded from `minion.pem`, or generated (2048 bits, as Salt's
/// `keysize` default) and written with Salt's modes.
///
/// # Errors
/// [`PkiError`] if the directory or files cannot be used.
pub fn load_or_create(pki_dir: &Path) -> Result<PrivateKey, PkiError> {
    std::fs::create_dir_all(pki_dir).map_err(io(pki_dir))?;
    std::fs::set_permissions(pki_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(pki_dir))?;
    let pem = pki_dir.join("minion.pem");
    if pem.exists() {
        let data = std::fs::read(&pem).map_err(io(&pem))?;
        return PrivateKey::from_pem(&data).map_err(|e| PkiError::BadKey {
            path: pem,
            message: e.to_string(),
        });
    }
    let key = PrivateKey::generate(2048).map_err(|e| PkiError::BadKey {
        path: pem.clone(),
        message: e.to_string(),
    })?;
    let pem_bytes = key.to_pem_pkcs1().map_err(|e| PkiError::BadKey {
        path: pem.clone(),
        message: e.to_string(),
    })?;
    write_mode(&pem, &pem_bytes, 0o400)?;
    write_mode(
        &pki_dir.join("minion.pub"),
        key.public_key().to_pem_file().as_bytes(),
        0o644,
    )?;
    Ok(key)
}

/// A public key file, if present and readable.
///
/// # Errors
/// [`PkiError::BadKey`] if it exists but does not parse.
pub fn read_pub(path: &Path) -> Result<Option<PublicKey>, PkiError> {
    match std::fs::read(path) {
        Ok(data) => PublicKey::from_pem(&data)
            .map(Some)
            .map_err(|e| PkiError::BadKey {
                path: path.to_owned(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Cache the master's key (`minion_master.pub`).
///
/// # Errors
/// [`PkiError::Io`].
pub fn write_master_pub(pki_dir: &Path, key: &PublicKey) -> Result<(), PkiError> {
    write_mode(
        &pki_dir.join("minion_master.pub"),
        key.to_pem_file().as_bytes(),
        0o644,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_keys_with_salt_modes_and_reloads_them() {
        let d = tempfile::tempdir().unwrap();
        let pki = d.path().join("pki/minion");
        let k1 = load_or_create(&pki).unwrap();
        let mode = |p: &str| std::fs::metadata(pki.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("minion.pem"), 0o400);
        assert_eq!(mode("minion.pub"), 0o644);
        assert_eq!(
            std::fs::metadata(&pki).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let k2 = load_or_create(&pki).unwrap();
        assert_eq!(k1.public_key(), k2.public_key());
        assert_eq!(
            read_pub(&pki.join("minion.pub")).unwrap(),
            Some(k1.public_key())
        );
        assert_eq!(read_pub(&pki.join("nope")).unwrap(), None);
        write_master_pub(&pki, &k1.public_key()).unwrap();
        assert_eq!(mode("minion_master.pub"), 0o644);
    }
}
