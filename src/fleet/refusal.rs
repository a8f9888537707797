//! The host's words to the operator and the gate: why it refused what the
//! tree served ([`Refusal`], stable codes) and what it does about its
//! ring's release ([`State`], in `/readyz`).

use serde::{Deserialize, Serialize};

macro_rules! refusals {
    ($($variant:ident => $code:literal, $why:literal;)*) => {
        /// Why a host refused what the tree served: stable codes (journal, logs, `--json`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub(crate) enum Refusal {
            $(#[serde(rename = $code)] #[doc = $why] $variant,)*
        }
        impl Refusal {
            #[cfg(test)]
            pub(crate) const ALL: &[Refusal] = &[$(Refusal::$variant,)*];
            pub(crate) fn code(self) -> &'static str {
                match self { $(Refusal::$variant => $code,)* }
            }
        }
    };
}

refusals! {
    Unsigned => "fleet.unsigned", "no .minisig beside the file";
    BadSignature => "fleet.bad_signature", "the signature does not match the bytes";
    WrongKey => "fleet.wrong_key", "signed by a key other than [source] public_key";
    GenerationBackwards => "fleet.generation_backwards", "an older ring pointer than one already accepted (a replay)";
    RingMismatch => "fleet.ring_mismatch", "a pointer for another ring";
    ManifestMismatch => "fleet.manifest_mismatch", "the manifest's sha256 is not the one the pointer signed";
    ReleaseMismatch => "fleet.release_mismatch", "the manifest is not the release the pointer names";
    Sha256Mismatch => "fleet.sha256_mismatch", "a file's sha256 or size is not the one the manifest signed";
    BadName => "fleet.bad_name", "a file name that is not a plain database name";
    Malformed => "fleet.malformed", "not the JSON or signature format expected";
}

/// What the host is doing about its ring's release, as `/readyz` tells the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    /// No pointer accepted yet.
    Starting,
    /// The ring's release is live here.
    Live,
    Fetching,
    /// Handed to this host's gate.
    Checking,
    /// This host's gate or production refused it (quarantined here).
    Rejected,
    /// The tree served something that does not prove itself.
    Refused,
    /// `clamgate pin` holds this host's live release: the ring's is not
    /// made live until `unpin` (the gate sees it not taken).
    Pinned,
    /// The ring's pointer is halted on a release this host does not run:
    /// not taken.
    Halted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_are_stable() {
        let codes: Vec<&str> = Refusal::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(
            codes,
            [
                "fleet.unsigned",
                "fleet.bad_signature",
                "fleet.wrong_key",
                "fleet.generation_backwards",
                "fleet.ring_mismatch",
                "fleet.manifest_mismatch",
                "fleet.release_mismatch",
                "fleet.sha256_mismatch",
                "fleet.bad_name",
                "fleet.malformed",
            ]
        );
        for r in Refusal::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.code());
        }
    }
}
