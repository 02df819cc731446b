//! The inventory that `vigil hsm list` prints: tokens, and the keys on them.

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;

use super::module::Module;
use super::{AuthPin, HsmError, classify, lost};

/// One token as `vigil hsm list` shows it.
#[derive(Debug, Clone)]
pub struct TokenListing {
    /// Slot id.
    pub slot: u64,
    /// Token label.
    pub label: String,
    /// Manufacturer and model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Whether the token is initialised (a blank slot is not).
    pub initialized: bool,
    /// Whether the listing logged in (private objects visible).
    pub logged_in: bool,
    /// Why logging in failed, if it did.
    pub login_error: Option<String>,
    /// Why its objects could not be listed, if they could not.
    pub error: Option<String>,
    /// Keys: (class, label, id hex, type).
    pub keys: Vec<ObjectListing>,
}

/// One key object.
#[derive(Debug, Clone)]
pub struct ObjectListing {
    /// `private` or `public`.
    pub class: &'static str,
    /// CKA_LABEL.
    pub label: String,
    /// CKA_ID, hex.
    pub id: String,
    /// Key type, e.g. `EC` or `RSA`.
    pub key_type: String,
}

fn list_keys(
    ctx: &Pkcs11,
    slot: Slot,
    listing: &mut TokenListing,
    pin_for: &impl Fn(&str) -> Option<AuthPin>,
) -> Result<(), HsmError> {
    let session = ctx.open_ro_session(slot).map_err(lost)?;
    if let Some(pin) = pin_for(&listing.label) {
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                listing.logged_in = true
            }
            Err(e) => listing.login_error = Some(classify(&e).to_string()),
        }
    }
    for (class, name) in [
        (ObjectClass::PRIVATE_KEY, "private"),
        (ObjectClass::PUBLIC_KEY, "public"),
    ] {
        for h in session
            .find_objects(&[Attribute::Class(class)])
            .map_err(lost)?
        {
            let attrs = session
                .get_attributes(
                    h,
                    &[
                        AttributeType::Label,
                        AttributeType::Id,
                        AttributeType::KeyType,
                    ],
                )
                .map_err(lost)?;
            let mut o = ObjectListing {
                class: name,
                label: String::new(),
                id: String::new(),
                key_type: String::new(),
            };
            for a in attrs {
                match a {
                    Attribute::Label(l) => o.label = String::from_utf8_lossy(&l).into_owned(),
                    Attribute::Id(id) => o.id = crate::status::hex(&id),
                    Attribute::KeyType(t) => o.key_type = t.to_string(),
                    _ => {}
                }
            }
            listing.keys.push(o);
        }
    }
    if listing.logged_in {
        let _ = session.logout();
    }
    Ok(())
}

/// Lists the tokens of `module` and, on the token that `pin_for` gives a PIN for, the keys
/// (private keys need a login). Read-only sessions only; an error on one token is recorded
/// in its listing.
pub fn list_tokens(
    module: &Module,
    pin_for: impl Fn(&str) -> Option<AuthPin>,
) -> Result<Vec<TokenListing>, HsmError> {
    let instance = module.instance();
    let _st = instance.read();
    let ctx = &instance.context;
    let mut out = Vec::new();
    for slot in ctx.get_slots_with_token().map_err(lost)? {
        let info = ctx.get_token_info(slot).map_err(lost)?;
        let mut listing = TokenListing {
            slot: slot.id(),
            label: info.label().trim_end().to_owned(),
            model: format!("{} {}", info.manufacturer_id().trim(), info.model().trim()),
            serial: info.serial_number().trim().to_owned(),
            initialized: info.token_initialized(),
            logged_in: false,
            login_error: None,
            error: None,
            keys: Vec::new(),
        };
        if listing.initialized
            && let Err(e) = list_keys(ctx, slot, &mut listing, &pin_for)
        {
            listing.error = Some(e.to_string());
        }
        out.push(listing);
    }
    Ok(out)
}
