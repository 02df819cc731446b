//! Errors of PKCS#11 operations, sorted by what the caller should do about them.

use cryptoki::error::{Error as CkError, RvError};

/// Why an operation on a token failed, sorted by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HsmError {
    /// The token rejected the user PIN. Never retried: repeated attempts lock the token.
    #[error(
        "the token rejected the user PIN ({0}); vigil does not retry a rejected PIN (retries lock tokens): fix pin_file / pin_env and restart"
    )]
    Pin(String),
    /// A setting or the token's content is wrong; retrying cannot help.
    #[error("{0}")]
    Config(String),
    /// The device, the session, the login or the connection to a network HSM is gone:
    /// reconnect, re-initialising the module if need be.
    #[error("{0}")]
    Lost(String),
    /// One operation failed; the device may be fine.
    #[error("{0}")]
    Failed(String),
    /// Every session of the key is in use.
    #[error("all {0} sessions are busy")]
    Busy(usize),
}

impl HsmError {
    /// A low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HsmError::Pin(_) => "pin",
            HsmError::Config(_) => "config",
            HsmError::Lost(_) => "lost",
            HsmError::Failed(_) => "failed",
            HsmError::Busy(_) => "busy",
        }
    }

    /// Whether retrying can ever help (false for a rejected PIN or a wrong setting).
    pub fn is_permanent(&self) -> bool {
        matches!(self, HsmError::Pin(_) | HsmError::Config(_))
    }
}

/// `CKR_PIN_INCORRECT` from `RvError::PinIncorrect`: the names of the specification.
pub fn ckr_name(rv: &RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Sorts a cryptoki error (PKCS#11 v2.40 §5.1 return values) into what to do about it.
pub fn classify(e: &CkError) -> HsmError {
    match e {
        CkError::Pkcs11(rv, function) => {
            let what = format!("C_{function:?}: {}", ckr_name(rv));
            match rv {
                RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::PinExpired
                | RvError::PinLocked
                | RvError::UserPinNotInitialized => HsmError::Pin(what),
                RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::CryptokiNotInitialized
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::GeneralError
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::SlotIdInvalid => HsmError::Lost(what),
                _ => HsmError::Failed(what),
            }
        }
        CkError::LibraryLoading(e) => HsmError::Config(format!("loading the module: {e}")),
        CkError::MissingSymbol(s) => {
            HsmError::Config(format!("the module is not a PKCS#11 module (no {s})"))
        }
        other => HsmError::Failed(other.to_string()),
    }
}

pub(super) fn lost(e: CkError) -> HsmError {
    classify(&e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names_follow_the_specification() {
        assert_eq!(ckr_name(&RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            ckr_name(&RvError::CryptokiNotInitialized),
            "CKR_CRYPTOKI_NOT_INITIALIZED"
        );
        assert_eq!(
            ckr_name(&RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
    }

    #[test]
    fn errors_are_sorted_by_what_to_do() {
        use cryptoki::context::Function;
        let e = |rv| classify(&CkError::Pkcs11(rv, Function::Sign));
        assert!(matches!(e(RvError::PinIncorrect), HsmError::Pin(_)));
        assert!(matches!(e(RvError::PinLocked), HsmError::Pin(_)));
        for rv in [
            RvError::DeviceError,
            RvError::DeviceRemoved,
            RvError::SessionHandleInvalid,
            RvError::CryptokiNotInitialized,
        ] {
            assert!(matches!(e(rv), HsmError::Lost(_)), "{rv:?}");
        }
        assert!(matches!(e(RvError::DataLenRange), HsmError::Failed(_)));
        assert!(
            e(RvError::PinIncorrect)
                .to_string()
                .contains("CKR_PIN_INCORRECT")
        );
        assert!(e(RvError::PinIncorrect).is_permanent());
        assert!(!e(RvError::DeviceError).is_permanent());
    }
}
