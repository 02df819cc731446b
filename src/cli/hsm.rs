//! `vigil hsm list|test`: what each PKCS#11 token holds, and a test signature from every
//! configured key.

use super::*;

pub(super) fn hsm_list(
    cfg: &Config,
    module: Option<&Path>,
    pin_env: Option<&str>,
) -> Result<(), String> {
    use std::collections::BTreeMap;
    use vigil::signer::pkcs11::{PinSource, list_module, read_pin};
    use vigil::signer::pool::key_spec;

    // (module, env) → the [[hsm]] entries on it.
    let mut modules: Vec<(
        PathBuf,
        BTreeMap<String, String>,
        Vec<&vigil::config::HsmConfig>,
    )> = Vec::new();
    match module {
        Some(m) => modules.push((m.to_path_buf(), BTreeMap::new(), Vec::new())),
        None => {
            for h in &cfg.hsms {
                match modules
                    .iter_mut()
                    .find(|(p, e, _)| p == &h.module && e == &h.module_env)
                {
                    Some((_, _, hs)) => hs.push(h),
                    None => modules.push((h.module.clone(), h.module_env.clone(), vec![h])),
                }
            }
        }
    }
    if modules.is_empty() {
        println!("no [[hsm]] is configured; name a module with --module");
        return Ok(());
    }
    let mut failed = false;
    for (path, env, hsms) in &modules {
        let env_text: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "module {}{}",
            path.display(),
            if env_text.is_empty() {
                String::new()
            } else {
                format!(" ({})", env_text.join(" "))
            }
        );
        // The PINs by token label ("" for every token): the host logs in with them.
        let pins = match pin_env {
            Some(var) => read_pin(&PinSource::Env(var.to_owned()))
                .ok()
                .map(|p| (String::new(), p))
                .into_iter()
                .collect(),
            None => hsms
                .iter()
                .filter_map(|h| match &h.token {
                    vigil::config::TokenSelector::Label(l) => {
                        Some((l.clone(), read_pin(&key_spec(h).1).ok()?))
                    }
                    vigil::config::TokenSelector::Slot(_) => None,
                })
                .collect(),
        };
        let listing = match list_module(path, env, pins) {
            Ok(l) => l,
            Err(e) => {
                println!("  cannot load: {e}");
                failed = true;
                continue;
            }
        };
        match listing.info {
            Ok(i) => println!("  {i}"),
            Err(e) => println!("  C_GetInfo: {e}"),
        }
        let tokens = match listing.tokens {
            Ok(t) => t,
            Err(e) => {
                println!("  listing tokens: {e}");
                failed = true;
                continue;
            }
        };
        if tokens.is_empty() {
            println!("  no token present");
        }
        for t in tokens {
            let used_by: Vec<&str> = hsms
                .iter()
                .filter(|h| match &h.token {
                    vigil::config::TokenSelector::Label(l) => l == &t.label,
                    vigil::config::TokenSelector::Slot(s) => *s == t.slot,
                })
                .map(|h| h.name.as_str())
                .collect();
            println!(
                "  slot {}: token {:?} ({}, serial {}){}",
                t.slot,
                t.label,
                t.model,
                t.serial,
                if used_by.is_empty() {
                    String::new()
                } else {
                    format!(" used by [[hsm]] {}", used_by.join(", "))
                }
            );
            if !t.initialized {
                println!("    not initialised");
                continue;
            }
            if let Some(e) = &t.error {
                println!("    listing keys failed: {e}");
                failed = true;
            }
            match (&t.login_error, t.logged_in) {
                (Some(e), _) => {
                    println!("    login failed: {e}");
                    failed = true;
                }
                (None, false) => println!("    not logged in: private keys are not shown"),
                (None, true) => {}
            }
            for k in &t.keys {
                println!(
                    "    {} key {:?} id {} ({})",
                    k.class,
                    k.label,
                    if k.id.is_empty() { "-" } else { &k.id },
                    k.key_type
                );
            }
        }
    }
    if failed {
        Err("some modules or tokens could not be listed".into())
    } else {
        Ok(())
    }
}

pub(super) fn hsm_test(cfg: &Config, only: Option<&str>) -> Result<(), String> {
    use vigil::signer::pool::{key_spec, test_members};
    let mut tested = 0;
    let mut failures = 0;
    for ic in &cfg.issuers {
        if only.is_some_and(|n| n != ic.name) {
            continue;
        }
        // The OCSP signer (the responder's key, or the CA's), then the CRL signer (the CA's).
        let ocsp = ic.ocsp_key.hsm().map(|sc| {
            let whose = if ic.responder_certificate.is_some() {
                "responder"
            } else {
                "CA"
            };
            (
                sc,
                ic.name.clone(),
                format!("key of the {whose} certificate"),
                vigil::pki::signing_public_key(ic),
            )
        });
        let crl = ic.crl_key.as_ref().and_then(|k| k.hsm()).map(|sc| {
            (
                sc,
                app::crl_pool_label(&ic.name),
                "key of the CA certificate, signs CRLs".to_owned(),
                vigil::pki::ca_public_key(ic),
            )
        });
        for (sc, label, whose, public_key) in ocsp.into_iter().chain(crl) {
            let public_key = public_key.map_err(|e| e.to_string())?;
            let fallback = match &sc.danger_software_fallback {
                Some(p) => Some(
                    vigil::signer::SoftwareSigner::from_pem_file(p)
                        .map_err(|e| format!("issuer {label}: {e}"))?,
                ),
                None => None,
            };
            let members = app::issuer_hsms(cfg, sc)
                .into_iter()
                .map(key_spec)
                .collect();
            println!("issuer {label} ({whose}):");
            for t in test_members(&public_key, members, fallback.as_ref()) {
                tested += 1;
                match t.result {
                    Ok(what) => println!("  ok    {}: {what}", t.name),
                    Err(e) => {
                        failures += 1;
                        println!("  FAIL  {}: {}", t.name, e.cause());
                    }
                }
            }
        }
    }
    if tested == 0 {
        return Err(match only {
            Some(n) => format!(
                "issuer {n:?} has no [issuer.signer] nor [issuer.crl_signer] (or does not exist)"
            ),
            None => "no issuer signs through HSMs ([issuer.signer], [issuer.crl_signer])".into(),
        });
    }
    if failures > 0 {
        return Err(format!("{failures} of {tested} signer(s) failed"));
    }
    println!("all {tested} signer(s) signed and verified");
    Ok(())
}
