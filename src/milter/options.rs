//! The milter's three choices in `[milter]` (`mode`, `stage`, `on_infected`),
//! as enums checked when the config loads; each is spelt in the config, the
//! logs and these types exactly as operators write it in `clamgate.toml`.

use std::fmt;
use std::str::FromStr;

/// What the milter does with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MilterMode {
    /// Only ask `/readyz`, and tempfail while scanning is unhealthy.
    Gate,
    /// Gate, and also stream every message to the production clamd.
    Scan,
}

/// Where an unhealthy scan tempfails the SMTP session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// At connect: the whole session, before the sender says who it is.
    Connect,
    /// At each RCPT TO: the client sees a per-recipient 451.
    Rcpt,
}

/// In scan mode, what happens to a message clamd finds infected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnInfected {
    /// 554 5.7.1 at the end of the message.
    Reject,
    /// Accepted into Postfix's hold queue.
    Quarantine,
    /// Delivered with `X-Virus-Found: SIGNATURE`.
    Header,
}

/// A value that is none of a key's spellings; the key is named by whoever
/// reads the config (`milter.on_infected: "drop" is not …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not {expected}")]
pub(crate) struct UnknownValue {
    value: String,
    expected: String,
}

/// The spellings of one of the enums above: one table per enum, read by
/// both `Display` and `FromStr`, so the two cannot drift apart.
trait Spelling: Copy + PartialEq + 'static {
    const ALL: &'static [(Self, &'static str)];

    fn spelling(self) -> &'static str {
        Self::ALL.iter().find(|(v, _)| *v == self).map(|(_, s)| *s).expect("every variant is in ALL")
    }

    fn from_spelling(text: &str) -> Result<Self, UnknownValue> {
        Self::ALL.iter().find(|(_, s)| *s == text).map(|(v, _)| *v).ok_or_else(|| UnknownValue { value: text.to_string(), expected: Self::expected() })
    }

    /// `reject, quarantine or header`.
    fn expected() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|(_, s)| *s).collect();
        let (last, rest) = names.split_last().expect("every choice has at least two values");
        format!("{} or {last}", rest.join(", "))
    }
}

impl Spelling for MilterMode {
    const ALL: &'static [(Self, &'static str)] = &[(MilterMode::Gate, "gate"), (MilterMode::Scan, "scan")];
}

impl Spelling for Stage {
    const ALL: &'static [(Self, &'static str)] = &[(Stage::Connect, "connect"), (Stage::Rcpt, "rcpt")];
}

impl Spelling for OnInfected {
    const ALL: &'static [(Self, &'static str)] = &[(OnInfected::Reject, "reject"), (OnInfected::Quarantine, "quarantine"), (OnInfected::Header, "header")];
}

/// `Display` and `FromStr` from the [`Spelling`] table (the orphan rule
/// rules out one blanket impl).
macro_rules! spelt {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.spelling())
            }
        }

        impl FromStr for $t {
            type Err = UnknownValue;

            fn from_str(text: &str) -> Result<Self, UnknownValue> {
                Self::from_spelling(text)
            }
        }
    )*};
}

spelt!(MilterMode, Stage, OnInfected);

#[cfg(test)]
mod tests {
    use super::*;

    /// The spellings are operator-facing (config and logs): they must stay
    /// what `clamgate.toml` files already say.
    #[test]
    fn each_value_reads_and_prints_as_operators_write_it() {
        let modes = [(MilterMode::Gate, "gate"), (MilterMode::Scan, "scan")];
        for (v, s) in modes {
            assert_eq!(s.parse::<MilterMode>(), Ok(v));
            assert_eq!(v.to_string(), s);
        }
        for (v, s) in [(Stage::Connect, "connect"), (Stage::Rcpt, "rcpt")] {
            assert_eq!(s.parse::<Stage>(), Ok(v));
            assert_eq!(v.to_string(), s);
        }
        for (v, s) in [(OnInfected::Reject, "reject"), (OnInfected::Quarantine, "quarantine"), (OnInfected::Header, "header")] {
            assert_eq!(s.parse::<OnInfected>(), Ok(v));
            assert_eq!(v.to_string(), s);
        }
    }

    #[test]
    fn unknown_values_list_the_known_ones() {
        assert_eq!("block".parse::<MilterMode>().unwrap_err().to_string(), r#""block" is not gate or scan"#);
        assert_eq!("data".parse::<Stage>().unwrap_err().to_string(), r#""data" is not connect or rcpt"#);
        assert_eq!("drop".parse::<OnInfected>().unwrap_err().to_string(), r#""drop" is not reject, quarantine or header"#);
        // Spellings are exact: no case folding, no trimming.
        for text in ["Scan", " scan", "SCAN", ""] {
            assert!(text.parse::<MilterMode>().is_err(), "{text:?}");
        }
    }
}
