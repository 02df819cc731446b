//! `vigil drill`: the drill target from its arguments, and the run.

use super::*;

pub(super) fn pair(text: &str, what: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| format!("{what} {text:?}: expected NAME=VALUE"))
}

pub(super) fn drill_target(a: &DrillArgs) -> Result<vigil::drill::Target, String> {
    let regions = a
        .regions
        .iter()
        .map(|r| pair(r, "--redis"))
        .collect::<Result<Vec<_>, _>>()?;
    let issuers = a
        .issuers
        .iter()
        .map(|i| pair(i, "--issuer").map(|(n, p)| (n, PathBuf::from(p))))
        .collect::<Result<Vec<_>, _>>()?;
    let canary = if a.write {
        let token = match (&a.admin_token_file, std::env::var("VIGIL_ADMIN_TOKEN")) {
            (Some(f), _) => std::fs::read_to_string(f)
                .map_err(|e| format!("{}: {e}", f.display()))?
                .trim()
                .to_owned(),
            (None, Ok(t)) => t,
            (None, Err(_)) => {
                return Err("--write needs --admin-token-file or VIGIL_ADMIN_TOKEN".into());
            }
        };
        let issuer = match &a.canary_issuer {
            Some(i) => i.clone(),
            None => issuers.first().map(|(n, _)| n.clone()).unwrap_or_default(),
        };
        Some((
            a.admin.clone().unwrap_or_default(),
            token,
            issuer,
            a.canary_serial.clone().unwrap_or_default(),
        ))
    } else {
        None
    };
    Ok(vigil::drill::Target {
        replicas: a
            .replicas
            .iter()
            .map(|r| r.trim_end_matches('/').to_owned())
            .collect(),
        regions,
        key_prefix: a.key_prefix.clone(),
        issuers,
        serials: a.serials.clone(),
        max_lag: a.max_lag.into(),
        expiry_warning: a.expiry_warning.into(),
        canary,
        canary_timeout: a.canary_timeout.into(),
        crl_consumer: a.crl_consumer.then(|| vigil::drill::ConsumerOptions {
            max_age: a.crl_max_age.into(),
            state: a.crl_state.clone(),
        }),
    })
}

pub(super) fn drill(a: &DrillArgs, clock: &vigil::clock::Clock) -> ExitCode {
    let target = match drill_target(a) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vigil: {e}");
            return ExitCode::from(2);
        }
    };
    let report = vigil::drill::run(&target, clock);
    print!("{}", report.text());
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("vigil: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if let Some(path) = &a.report_html {
        let page = vigil::report::timeline::html(
            "vigil drill",
            &format!(
                "Checks of {} replica(s), every request on one timeline.",
                target.replicas.len()
            ),
            &[report.timeline("vigil drill")],
        )
        .map_err(|e| e.to_string())
        .and_then(|page| std::fs::write(path, page).map_err(|e| e.to_string()));
        if let Err(e) = page {
            eprintln!("vigil: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.worst() == vigil::drill::Level::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
