//! minisign signatures over the published tree: the gate signs with its
//! secret key, hosts verify with the public one, so any web server or CDN
//! can serve the tree without being trusted. Debian's `minisign -V` checks
//! the same files.

use std::path::{Path, PathBuf};

use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

#[derive(Debug, thiserror::Error)]
pub(crate) enum SignError {
    #[error("cannot read key {file}: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key {file} is not a minisign key: {why}")]
    BadKey { file: PathBuf, why: String },
    #[error("cannot write {file}: {source}")]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// Why a signature is refused (the codes are [`super::source::Refusal`]'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Not a minisign signature at all.
    Malformed(String),
    /// Made by another key.
    WrongKey(String),
    /// Our key's id, but the bytes or the comment do not match.
    Invalid(String),
}

/// The gate's secret key, read once.
pub(crate) struct Signer {
    sk: SecretKey,
}

impl Signer {
    pub(crate) fn load(file: &Path) -> Result<Signer, SignError> {
        let text = std::fs::read_to_string(file).map_err(|source| SignError::Read { file: file.into(), source })?;
        let bad = |e: minisign::PError| SignError::BadKey { file: file.into(), why: e.to_string() };
        let sk = SecretKeyBox::from_string(&text).and_then(SecretKeyBox::into_unencrypted_secret_key).map_err(bad)?;
        Ok(Signer { sk })
    }

    /// The `.minisig` text for `bytes`; `what` goes into the trusted comment.
    pub(crate) fn sign(&self, bytes: &[u8], what: &str) -> Result<String, SignError> {
        let comment = format!("clamgate {what}");
        minisign::sign(None, &self.sk, std::io::Cursor::new(bytes), Some(&comment), None).map(|b| b.into_string()).map_err(|e| SignError::Sign(e.to_string()))
    }
}

/// The gate's public key, as a host is configured with it.
#[derive(Clone)]
pub(crate) struct Verifier {
    pk: PublicKey,
}

impl Verifier {
    pub(crate) fn load(file: &Path) -> Result<Verifier, SignError> {
        let text = std::fs::read_to_string(file).map_err(|source| SignError::Read { file: file.into(), source })?;
        let bad = |e: minisign::PError| SignError::BadKey { file: file.into(), why: e.to_string() };
        let pk = PublicKeyBox::from_string(&text).and_then(PublicKeyBox::into_public_key).map_err(bad)?;
        Ok(Verifier { pk })
    }

    pub(crate) fn verify(&self, bytes: &[u8], signature: &str) -> Result<(), Bad> {
        let sig = SignatureBox::from_string(signature).map_err(|e| Bad::Malformed(e.to_string()))?;
        minisign::verify(&self.pk, &sig, std::io::Cursor::new(bytes), true, false, false).map_err(|e| {
            let text = e.to_string();
            if text.contains("key id") { Bad::WrongKey(text) } else { Bad::Invalid(text) }
        })
    }
}

/// `clamgate keygen --out DIR`: `DIR/publish.key` (0600, unencrypted: the
/// daemon signs unattended) and `DIR/publish.pub`. Refuses to overwrite a key.
pub(crate) fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf), SignError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (key, public) = (dir.join("publish.key"), dir.join("publish.pub"));
    std::fs::create_dir_all(dir).map_err(|source| SignError::Write { file: dir.into(), source })?;
    let pair = KeyPair::generate_unencrypted_keypair().map_err(|e| SignError::Sign(e.to_string()))?;
    let sk = pair.sk.to_box(Some("clamgate publish key")).map_err(|e| SignError::Sign(e.to_string()))?.into_string();
    let pk = pair.pk.to_box().map_err(|e| SignError::Sign(e.to_string()))?.into_string();
    let write = |file: &Path, text: &str, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(file)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(|source| SignError::Write { file: file.into(), source })
    };
    write(&key, &sk, 0o600)?;
    write(&public, &pk, 0o644)?;
    Ok((key, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_verifies_and_tells_a_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let (key, public) = keygen(dir.path()).unwrap();
        let (_, other_pub) = keygen(other.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(keygen(dir.path()).is_err(), "an existing key is never overwritten");
        let sig = Signer::load(&key).unwrap().sign(b"ring", "rings/canary.json").unwrap();
        let v = Verifier::load(&public).unwrap();
        assert_eq!(v.verify(b"ring", &sig), Ok(()));
        assert!(matches!(v.verify(b"rinG", &sig), Err(Bad::Invalid(_))));
        assert!(matches!(Verifier::load(&other_pub).unwrap().verify(b"ring", &sig), Err(Bad::WrongKey(_))));
        assert!(matches!(v.verify(b"ring", "not a signature"), Err(Bad::Malformed(_))));
        assert!(matches!(Signer::load(&public), Err(SignError::BadKey { .. })));
    }
}
