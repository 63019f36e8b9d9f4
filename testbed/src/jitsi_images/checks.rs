//! The checks of the image contract, one shard at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::hocon::{self, Job};
use super::image::Image;
use super::listeners::{self, Bind, Listener};
use super::pod::{self, Container, Origin};
use super::readers;
use super::sandbox::{self, Outcome, Tools};
use super::{Sources, facts, jitsi_image};

/// One broken promise, in one sentence.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub shard: String,
    pub subject: String,
    pub problem: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.shard, self.subject, self.problem)
    }
}

/// The contract of one shard.
#[derive(Clone, Debug, Default)]
pub struct ShardReport {
    pub shard: String,
    pub tag: String,
    pub findings: Vec<Finding>,
    /// What the images do with what we give them (listeners, users, heaps, what they read), for the
    /// upgrade report to compare between releases.
    pub facts: BTreeMap<String, String>,
    pub origins: Vec<String>,
}

impl ShardReport {
    fn finding(&mut self, subject: impl Into<String>, problem: impl Into<String>) {
        self.findings.push(Finding {
            shard: self.shard.clone(),
            subject: subject.into(),
            problem: problem.into(),
        });
    }
}

/// Variables no image reads that a Jitsi container may still get, each with the reason.
pub const EXCEPTIONS: [(&str, &str); 1] = [(
    "SHARD",
    "the input of the `$(SHARD)` expansions that name the shard's own Prosody (XMPP_SERVER); no program reads it",
)];

/// The init and main containers of a workload's pod template.
pub fn containers_of(workload: &Value) -> Vec<&Value> {
    let spec = &workload["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|f| spec[f].as_array().into_iter().flatten())
        .collect()
}

/// One Jitsi container after its start-up scripts ran.
struct Run {
    image: Image,
    container: Container,
    outcome: Outcome,
    listeners: Vec<Listener>,
    /// The resolved HOCON of a Java program.
    config: Option<Value>,
}

fn labels_match(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let Some(wanted) = selector.as_object() else {
        return false;
    };
    !wanted.is_empty()
        && wanted
            .iter()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
}

fn describe(listeners: &[Listener]) -> String {
    if listeners.is_empty() {
        return "nothing".to_owned();
    }
    listeners
        .iter()
        .map(Listener::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The variables a binary declares in its `--help` (`[env: NAME=]`), for each subcommand.
fn declared_env(binary: &Path, subcommands: &[&str]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for subcommand in subcommands {
        let Ok(output) = Command::new(binary).args([subcommand, "--help"]).output() else {
            continue;
        };
        let help = String::from_utf8_lossy(&output.stdout);
        for (at, _) in help.match_indices("[env: ") {
            let name: String = help[at + 6..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

/// What jvb-startup hands to `/init`: it runs as the container runs it, with `env -0` in place of
/// `/init`; a second run writes the HOCON it would write with `JVB_WRITE_CONFIG`.
fn through_jvb_startup(
    container: &Container,
    work: &Path,
) -> Result<(BTreeMap<String, String>, String), String> {
    let command: Vec<&str> = container.spec["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let separator = command.iter().position(|w| *w == "--").unwrap_or(command.len());
    let flags = command.get(2..separator).unwrap_or_default();
    let binary = crate::daemon::binary("jvb-startup");
    let mut env: BTreeMap<String, String> = container
        .env
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    // The Node or Service lookups need a cluster: their answer is stood in for (the variables jvb-startup
    // sets do not depend on where the address came from).
    if env.get("JVB_ADVERTISE_FROM_NODE").is_some_and(|v| v == "true")
        || env
            .get("JVB_ADVERTISE_FROM_SERVICE")
            .is_some_and(|v| !v.is_empty())
    {
        env.insert("JVB_ADVERTISE_IP".to_owned(), "203.0.113.7".to_owned());
    }
    let run = |extra: &[(&str, String)]| {
        Command::new(&binary)
            .arg("exec")
            .args(flags)
            .args(["--", "/usr/bin/env", "-0"])
            .env_clear()
            .envs(&env)
            .envs(extra.iter().map(|(k, v)| (*k, v.clone())))
            .output()
            .map_err(|e| format!("running {}: {e}", binary.display()))
    };
    let output = run(&[])?;
    if !output.status.success() {
        return Err(format!(
            "jvb-startup exits {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let after = String::from_utf8_lossy(&output.stdout)
        .split('\0')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let written = work.join("jvb-startup-custom-jvb.conf");
    let _ = std::fs::create_dir_all(work);
    run(&[("JVB_WRITE_CONFIG", written.display().to_string())])?;
    let hocon = std::fs::read_to_string(&written).unwrap_or_default();
    Ok((after, hocon))
}

/// `-Xmx$NAME` of a launch script, with the default it assigns (`NAME=3072m`), in MiB.
fn heap_setting(launch: &str) -> Option<(String, Option<u64>)> {
    let at = launch.find("-Xmx$")? + 5;
    let name: String = launch[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let default = launch
        .match_indices(&format!("{name}="))
        .filter_map(|(i, _)| java_size_mib(launch[i + name.len() + 1..].split([';', ' ', '\n']).next()?))
        .next();
    Some((name, default))
}

/// A JVM size (`3072m`, `2g`, `768M`) in MiB.
fn java_size_mib(size: &str) -> Option<u64> {
    let size = size.trim().trim_matches('"');
    let (number, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit()).unwrap_or(size.len()));
    let number: u64 = number.parse().ok()?;
    match unit.to_ascii_lowercase().as_str() {
        "g" => Some(number * 1024),
        "m" => Some(number),
        "k" => Some(number / 1024),
        "" => Some(number / (1024 * 1024)),
        _ => None,
    }
}

/// The launch script an image's start script runs (`DAEMON=/usr/share/jicofo/jicofo.sh`), found by name
/// in the program's checkout.
fn launch_script(image: &Image, checkout: &Path) -> Option<(String, String)> {
    image.longruns().into_iter().find_map(|(_, script)| {
        let text = image.file(&script)?;
        let at = text.find("DAEMON=")? + 7;
        let daemon = text[at..].split_whitespace().next()?.trim_matches('"').to_owned();
        let name = daemon.rsplit('/').next()?.to_owned();
        let found = find_file(checkout, &name, 3)?;
        let relative = found
            .strip_prefix(checkout)
            .unwrap_or(&found)
            .display()
            .to_string();
        Some((relative, std::fs::read_to_string(found).ok()?))
    })
}

fn find_file(dir: &Path, name: &str, depth: usize) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut dirs = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if !path.ends_with(".git") && !path.ends_with("src") {
                dirs.push(path);
            }
        } else if entry.file_name() == name {
            return Some(path);
        }
    }
    if depth == 0 {
        return None;
    }
    dirs.into_iter().find_map(|d| find_file(&d, name, depth - 1))
}

/// Every variable the image reads, in templates, scripts, the program's launch script and s6-overlay's
/// preinit; and which of them it reads as integers (bash) or booleans (`toBool`), and which it also
/// writes out as they are (a `toBool` on those asks whether they are set).
struct Reads {
    all: BTreeSet<String>,
    integers: BTreeSet<String>,
    booleans: BTreeSet<String>,
    values: BTreeSet<String>,
}

fn reads(image: &Image, sources: &Sources, launch: Option<&str>) -> Reads {
    let mut all = BTreeSet::new();
    let mut integers = BTreeSet::new();
    let mut booleans = BTreeSet::new();
    let mut values = BTreeSet::new();
    for (path, _) in image.files_under("/") {
        let Some(text) = image.file(path) else { continue };
        if path.starts_with("/defaults/") {
            all.extend(readers::template_variables(&text));
            booleans.extend(readers::template_booleans(&text));
            values.extend(readers::template_values(&text));
        } else if ["/etc/s6-overlay/", "/usr/local/bin/", "/usr/bin/", "/opt/"]
            .iter()
            .any(|p| path.starts_with(p))
        {
            all.extend(readers::script_variables(&text));
            integers.extend(readers::script_integers(&text));
        }
    }
    for text in launch
        .map(str::to_owned)
        .into_iter()
        .chain(std::fs::read_to_string(sources.preinit()).ok())
    {
        all.extend(readers::script_variables(&text));
        integers.extend(readers::script_integers(&text));
    }
    Reads {
        all,
        integers,
        booleans,
        values,
    }
}

fn endpoint_requirements(program: &str, path: &str) -> Option<(Vec<String>, String)> {
    let facts = facts();
    facts["endpoints"].as_array()?.iter().find_map(|e| {
        (e["program"] == program && path.starts_with(e["path"].as_str()?)).then(|| {
            (
                e["requires"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                e["source"].as_str().unwrap_or_default().to_owned(),
            )
        })
    })
}

fn self_contained(program: &str, path: &str) -> Result<(), String> {
    let facts = facts();
    let listed = |key: &str| {
        facts[key]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["program"] == program && e["path"] == path)
            .cloned()
    };
    if listed("self_contained_probe_paths").is_some() {
        return Ok(());
    }
    match listed("not_self_contained") {
        Some(entry) => Err(format!(
            "{} ({})",
            entry["why"].as_str().unwrap_or_default(),
            entry["source"].as_str().unwrap_or_default()
        )),
        None => Err(format!(
            "{path} is not known to be served by {program} without depending on other components (testdata/jitsi-images/facts.json lists those that are)"
        )),
    }
}

/// A flag of a resolved configuration that must be true.
fn flag_off(config: &Value, flag: &str) -> bool {
    hocon::at(config, flag).and_then(Value::as_bool) != Some(true)
}

pub fn check_shard(
    objects: &[Value],
    shard: &str,
    workloads: &[&Value],
    tags: &BTreeSet<&str>,
    sources: Result<Sources, String>,
    work: &Path,
) -> ShardReport {
    let mut report = ShardReport {
        shard: shard.to_owned(),
        tag: tags.iter().next().copied().unwrap_or_default().to_owned(),
        ..ShardReport::default()
    };
    if tags.len() > 1 {
        report.finding(
            "images",
            format!(
                "the shard runs Jitsi images of several tags ({}): docker-jitsi-meet releases web, jicofo, prosody and jvb together; pin one tag in the shard's images:",
                tags.iter().copied().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    if tags.contains("") {
        report.finding(
            "images",
            "a Jitsi image has no tag: pin it in the shard's folder (images:)",
        );
        return report;
    }
    let sources = match sources {
        Ok(sources) => sources,
        Err(error) => {
            report.finding(format!("upstream sources of {}", report.tag), error);
            return report;
        }
    };
    report.origins = sources.origins();
    if !sandbox::is_root() {
        report.finding(
            "sandbox",
            "the contract runs the images' scripts in mount and network namespaces: run it as root",
        );
        return report;
    }
    let tools = Tools {
        tpl: sources.tpl.clone(),
        preinit: sources.preinit(),
    };
    let mut runs: Vec<(&Value, Run)> = Vec::new();
    for workload in workloads {
        for spec in containers_of(workload) {
            let Some((name, _)) = spec["image"].as_str().and_then(jitsi_image) else {
                continue;
            };
            let container_name = spec["name"].as_str().unwrap_or_default();
            match run_container(
                objects,
                workload,
                container_name,
                name,
                &sources,
                &tools,
                work,
                &mut report,
            ) {
                Ok(run) => runs.push((*workload, run)),
                Err(error) => report.finding(
                    format!(
                        "{}/{}",
                        workload["kind"].as_str().unwrap_or_default(),
                        workload["metadata"]["name"].as_str().unwrap_or_default()
                    ),
                    error,
                ),
            }
        }
    }
    resolve_java(&sources, &mut runs, &mut report);
    for (workload, run) in &runs {
        check_container(workload, run, &sources, &mut report);
    }
    check_address_users(objects, &runs, &mut report);
    report.findings.sort();
    report.findings.dedup();
    report
}

#[allow(clippy::too_many_arguments)]
fn run_container(
    objects: &[Value],
    workload: &Value,
    container_name: &str,
    image_name: &str,
    sources: &Sources,
    tools: &Tools,
    work: &Path,
    report: &mut ShardReport,
) -> Result<Run, String> {
    let image = sources.image(image_name)?;
    let mut container = pod::container(objects, workload, container_name, &image)?;
    let subject = container.label();
    let dir = work.join(format!("{}-{}", container.workload, container.name));
    if container.spec["command"]
        .as_array()
        .and_then(|c| c.first())
        .and_then(Value::as_str)
        .is_some_and(|c| c.ends_with("/jvb-startup"))
    {
        let (after, hocon) = through_jvb_startup(&container, &dir.join("jvb-startup"))
            .map_err(|e| format!("jvb-startup, which starts the bridge: {e}"))?;
        for (key, value) in &after {
            if container.var(key) != Some(value.as_str()) {
                container.env.insert(
                    key.clone(),
                    (value.clone(), Origin::Wrapper("jvb-startup".to_owned())),
                );
            }
        }
        report
            .facts
            .insert(format!("{subject}: jvb-startup's custom-jvb.conf"), hocon);
    }
    let outcome = sandbox::start(&container, &image, tools, objects, &dir.join("sandbox"))?;
    for step in &outcome.steps {
        match step.status {
            Some(0) => {}
            Some(code) => {
                let tail: Vec<&str> = step.output.lines().rev().take(4).collect();
                report.finding(
                    &subject,
                    format!(
                        "{} exits {code} as uid {} (gid {}, fsGroup {:?}) with the environment and volumes the manifests give it: {}",
                        step.name,
                        container.uid,
                        container.gid,
                        container.fs_group,
                        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                    ),
                );
            }
            None => {}
        }
    }
    let listeners = match image_name {
        "web" => listeners::nginx(&image, &outcome).unwrap_or_else(|e| {
            report.finding(&subject, e);
            Vec::new()
        }),
        "prosody" => listeners::prosody(&image, &outcome).unwrap_or_else(|e| {
            report.finding(&subject, e);
            Vec::new()
        }),
        _ => Vec::new(),
    };
    Ok(Run {
        image,
        container,
        outcome,
        listeners,
        config: None,
    })
}

/// Resolves the HOCON of every Java program of the shard in one JVM.
fn resolve_java(sources: &Sources, runs: &mut [(&Value, Run)], report: &mut ShardReport) {
    let mut jobs = Vec::new();
    for (_, run) in runs.iter() {
        let Some(checkout) = sources.program_checkout(&run.image.name) else {
            continue;
        };
        let Some(config) = listeners::java_config_path(&run.image) else {
            report.finding(
                run.container.label(),
                "the image's start script names no -Dconfig.file",
            );
            continue;
        };
        let references = hocon::reference_files(&checkout.path);
        let label = run.container.label();
        let rendered = run.outcome.root.join(config.trim_start_matches('/'));
        jobs.push(Job {
            name: label.clone(),
            strict: true,
            application: Some(rendered),
            references: references.clone(),
        });
        jobs.push(Job {
            name: format!("{label} references"),
            strict: false,
            application: None,
            references,
        });
        if let Some(hocon) = report
            .facts
            .get(&format!("{label}: jvb-startup's custom-jvb.conf"))
        {
            let path = run.outcome.root.with_file_name("jvb-startup-custom-jvb.conf");
            let _ = std::fs::write(&path, hocon);
            jobs.push(Job {
                name: format!("{label} jvb-startup"),
                strict: false,
                application: Some(path),
                references: Vec::new(),
            });
        }
        for custom in ["/config/custom-jicofo.conf", "/config/custom-jvb.conf"] {
            if run.outcome.file(custom).is_some() {
                jobs.push(Job {
                    name: format!("{label} {custom}"),
                    strict: false,
                    application: Some(run.outcome.root.join(custom.trim_start_matches('/'))),
                    references: Vec::new(),
                });
            }
        }
    }
    if jobs.is_empty() {
        return;
    }
    let resolved = match hocon::resolve(&sources.config_jar, &jobs) {
        Ok(resolved) => resolved,
        Err(error) => {
            report.finding("HOCON", error);
            return;
        }
    };
    for (_, run) in runs.iter_mut() {
        let label = run.container.label();
        let Some(config) = resolved.get(&label).cloned() else {
            continue;
        };
        if let Some(error) = config.get("error") {
            report.finding(&label, format!("its configuration does not load: {error}"));
            continue;
        }
        let path = listeners::java_config_path(&run.image).unwrap_or_default();
        run.listeners = match run.image.name.as_str() {
            "jicofo" => listeners::jicofo(&config, &path),
            "jvb" => listeners::jvb(&config, &path, &run.image),
            _ => Vec::new(),
        };
        let references = resolved
            .get(&format!("{label} references"))
            .cloned()
            .unwrap_or_default();
        // Keys we write must be keys the program reads (its reference.conf) or keys the image's own
        // configuration sets.
        for (source, key) in [
            ("jvb-startup's custom-jvb.conf", format!("{label} jvb-startup")),
            (
                "/config/custom-jicofo.conf",
                format!("{label} /config/custom-jicofo.conf"),
            ),
            (
                "/config/custom-jvb.conf",
                format!("{label} /config/custom-jvb.conf"),
            ),
        ] {
            let Some(ours) = resolved.get(&key) else { continue };
            for leaf in hocon::leaf_paths(ours) {
                if !hocon::has_path(&references, &leaf) && !hocon::has_path(&config, &leaf) {
                    report.finding(
                        &label,
                        format!(
                            "{source} sets {leaf}, which no reference.conf of {} at {} defines",
                            run.image.name, sources.tag
                        ),
                    );
                } else if !hocon::has_path(&references, &leaf) {
                    report.facts.insert(
                        format!("{label}: {leaf}"),
                        "set by the image's own configuration, not in reference.conf".to_owned(),
                    );
                }
            }
        }
        run.config = Some(config);
    }
}

fn check_container(workload: &Value, run: &Run, sources: &Sources, report: &mut ShardReport) {
    let c = &run.container;
    let subject = c.label();
    let program = run.image.name.as_str();
    report.facts.insert(
        format!("image {program}: user"),
        format!(
            "{} (uid {}), s6-overlay {}, tpl {}",
            run.image.user, run.image.uid, sources.s6_overlay_version, sources.tpl_version
        ),
    );
    report
        .facts
        .insert(format!("{subject}: listens on"), describe(&run.listeners));
    if c.uid != run.image.uid {
        report.finding(
            &subject,
            format!("runs as uid {}, but the image's user {} is uid {} ({}): what the image gives that user is not writable", c.uid, run.image.user, run.image.uid, run.image.dockerfiles.join(", ")),
        );
    }
    if workload["spec"]["template"]["spec"]["enableServiceLinks"] != false {
        report.finding(
            &subject,
            "the pod keeps enableServiceLinks on: every Service of the namespace becomes variables like <NAME>_PORT=tcp://… in the Jitsi container, where the image's templates read variables of the same shape (JVB_PORT, XMPP_PORT)",
        );
    }
    // Heap.
    let launch = sources
        .program_checkout(program)
        .and_then(|checkout| launch_script(&run.image, &checkout.path));
    if let Some((path, text)) = &launch
        && let Some((variable, default)) = heap_setting(text)
    {
        let heap = c.var(&variable).and_then(java_size_mib).or(default);
        report.facts.insert(
            format!("image {program}: heap"),
            format!("-Xmx${variable}, default {default:?} MiB ({path})"),
        );
        match (heap, c.memory_limit_mib()) {
            (Some(heap), Some(limit)) => {
                let headroom = limit.saturating_sub(heap);
                if heap * 4 > limit * 3 || headroom < 256 {
                    report.finding(
                        &subject,
                        format!(
                            "the JVM heap is {heap} MiB ({}) in a {limit} MiB limit: {headroom} MiB left for everything else the JVM and the container use (thread stacks, metaspace, direct buffers); keep the heap at most 75 % of the limit and 256 MiB below it",
                            if c.var(&variable).is_some() { variable.clone() } else { format!("{path}'s default, {variable} unset") }
                        ),
                    );
                }
            }
            (_, None) => report.finding(
                &subject,
                "no memory limit: the JVM's heap cannot be checked against it",
            ),
            (None, _) => report.finding(&subject, format!("{variable} is not a JVM size")),
        }
    }
    // Forms and completeness of the environment.
    let reads = reads(&run.image, sources, launch.as_ref().map(|(_, t)| t.as_str()));
    let wrapper = if c.spec["command"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .is_some_and(|s| s.ends_with("/jvb-startup"))
    {
        declared_env(&crate::daemon::binary("jvb-startup"), &["exec", "drain"])
    } else {
        BTreeSet::new()
    };
    report.facts.insert(
        format!("image {program}: reads"),
        reads.all.iter().cloned().collect::<Vec<_>>().join(" "),
    );
    for (name, (value, origin)) in &c.env {
        if matches!(origin, Origin::Image | Origin::Runtime) {
            continue;
        }
        if reads.integers.contains(name) && !value.is_empty() && value.parse::<i64>().is_err() {
            report.finding(
                &subject,
                format!("{name}={value:?}: the image's scripts compare it as a number (`-eq`/`-ne`), where {value:?} counts as 0; use 1 or 0"),
            );
        }
        if reads.booleans.contains(name) && reads.values.contains(name) {
            if readers::is_go_false(value) {
                report.finding(
                    &subject,
                    format!("{name}={value:?}: the image's templates test it with toBool and leave it out when it reads as false"),
                );
            }
        } else if reads.booleans.contains(name) && !readers::is_go_bool(value) {
            report.finding(
                &subject,
                format!("{name}={value:?}: the image's templates read it with toBool, which takes only 1/0, true/false, t/f ({value:?} means true)"),
            );
        }
        let read = reads.all.contains(name) || wrapper.contains(name);
        let excepted = EXCEPTIONS.iter().any(|(n, _)| n == name);
        if !read && !excepted {
            let by = if wrapper.is_empty() {
                String::new()
            } else {
                " nor jvb-startup".to_owned()
            };
            let from = match origin {
                Origin::ConfigMap(map) => format!("from ConfigMap {map}"),
                Origin::Secret { name, .. } => format!("from Secret {name}"),
                Origin::Field(path) => format!("from the downward API {path}"),
                Origin::Wrapper(w) => format!("set by {w}"),
                _ => "set in env".to_owned(),
            };
            report.finding(
                &subject,
                format!("{name} ({from}) is read by neither the {program} image{by}"),
            );
        }
    }
    // The HTTP probes: on paths the program serves by itself.
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        if let Some(path) = c.spec[probe]["httpGet"]["path"].as_str() {
            if let Err(why) = self_contained(program, path) {
                report.finding(&subject, format!("{probe} on {path}: {why}"));
            }
            check_endpoint(run, path, &format!("{probe} on {path}"), report);
        }
    }
    if let Some(config) = &run.config {
        if program == "jvb" {
            for (method, path) in jvb_startup::bridge_api::ENDPOINTS {
                check_endpoint(run, path, &format!("jvb-startup's {method} {path}"), report);
            }
        }
        if program == "jicofo" && run.listeners.iter().any(|l| l.bind == Bind::All) {
            for feature in ["move-endpoints", "debug", "pin", "conference-request"] {
                if hocon::at(config, &format!("jicofo.rest.{feature}.enabled")).and_then(Value::as_bool)
                    != Some(false)
                {
                    report.finding(
                        &subject,
                        format!("Jicofo's REST API answers on the pod network and jicofo.rest.{feature}.enabled is on: unauthenticated, and nothing of ours uses it; turn it off"),
                    );
                }
            }
        }
    }
}

/// A path of a Java program's REST API must be switched on in its resolved configuration.
fn check_endpoint(run: &Run, path: &str, what: &str, report: &mut ShardReport) {
    let Some(config) = &run.config else { return };
    let Some((requires, source)) = endpoint_requirements(&run.image.name, path) else {
        return;
    };
    for flag in requires {
        if flag_off(config, &flag) {
            report.finding(
                run.container.label(),
                format!("{what}: {flag} is not true in the configuration the program loads ({source})"),
            );
        }
    }
}

/// A listener of a Jitsi container of `workload` on `port`/`protocol`.
fn listener_of<'a>(
    runs: &'a [(&Value, Run)],
    workload: &Value,
    port: u16,
    protocol: &str,
) -> Option<(&'a Run, &'a Listener)> {
    runs.iter()
        .filter(|(w, _)| std::ptr::eq(*w, workload))
        .flat_map(|(_, run)| run.listeners.iter().map(move |l| (run, l)))
        .find(|(_, l)| l.port == port && l.protocol.eq_ignore_ascii_case(protocol))
}

fn reachable(
    runs: &[(&Value, Run)],
    workload: &Value,
    port: u16,
    protocol: &str,
    who: &str,
) -> Result<(), String> {
    // The pod's IPv4 listener if there is one (nginx states IPv4 and IPv6 apart).
    let listener = runs
        .iter()
        .filter(|(w, _)| std::ptr::eq(*w, workload))
        .flat_map(|(_, run)| run.listeners.iter())
        .filter(|l| l.port == port && l.protocol.eq_ignore_ascii_case(protocol))
        .min_by_key(|l| l.bind);
    match listener {
        Some(listener) if listener.bind == Bind::All => Ok(()),
        Some(listener) if listener.bind == Bind::Ipv6Only => Err(format!(
            "{port}/{protocol}: reached on the pod's IPv4 address ({who}), but the program listens there on IPv6 only ({listener})"
        )),
        Some(listener) => Err(format!(
            "{port}/{protocol}: reached from outside the pod ({who}), but the program listens there on loopback only ({listener})"
        )),
        None => {
            let all: Vec<&Listener> = runs
                .iter()
                .filter(|(w, _)| std::ptr::eq(*w, workload))
                .flat_map(|(_, r)| r.listeners.iter())
                .collect();
            Err(format!(
                "{port}/{protocol}: nothing listens there; the pod's Jitsi programs listen on {}",
                describe(&all.into_iter().cloned().collect::<Vec<_>>())
            ))
        }
    }
}

fn check_address_users(objects: &[Value], runs: &[(&Value, Run)], report: &mut ShardReport) {
    let mut workloads: Vec<&Value> = runs.iter().map(|(w, _)| *w).collect();
    workloads.dedup_by(|a, b| std::ptr::eq(*a, *b));
    for (workload, run) in runs {
        let c = &run.container;
        for (name, number, protocol) in c.ports() {
            if let Err(e) = reachable(runs, workload, number, &protocol, "a declared port") {
                report.finding(
                    c.label(),
                    format!(
                        "containerPort {}{e}",
                        name.map(|n| format!("{n} ")).unwrap_or_default()
                    ),
                );
            }
        }
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            for kind in ["httpGet", "tcpSocket"] {
                let port = &c.spec[probe][kind]["port"];
                if port.is_null() {
                    continue;
                }
                match c.resolve_port(port) {
                    Some(number) => {
                        if let Err(e) = reachable(runs, workload, number, "TCP", "the kubelet's probe") {
                            report.finding(c.label(), format!("{probe} on port {e}"));
                        }
                    }
                    None => report.finding(
                        c.label(),
                        format!("{probe} names port {port}, which the container does not declare"),
                    ),
                }
            }
        }
    }
    for workload in &workloads {
        let template = &workload["spec"]["template"];
        let labels: BTreeMap<String, String> = template["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
        let subject = format!(
            "{}/{}",
            workload["kind"].as_str().unwrap_or_default(),
            workload["metadata"]["name"].as_str().unwrap_or_default()
        );
        let pod_containers = containers_of(workload);
        let port_named = |name: &str| -> Option<(u16, String, String)> {
            pod_containers.iter().find_map(|c| {
                c["ports"]
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == name)
                    .map(|p| {
                        (
                            p["containerPort"]
                                .as_u64()
                                .and_then(|n| u16::try_from(n).ok())
                                .unwrap_or(0),
                            p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                            c["name"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
            })
        };
        let is_jitsi_port = |number: u16| {
            pod_containers.iter().any(|c| {
                c["image"].as_str().and_then(jitsi_image).is_some()
                    && c["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["containerPort"] == number)
            }) || runs
                .iter()
                .any(|(w, r)| std::ptr::eq(*w, *workload) && r.listeners.iter().any(|l| l.port == number))
        };
        // Our sidecars reach the Jitsi program on localhost.
        for sidecar in &pod_containers {
            if sidecar["image"].as_str().and_then(jitsi_image).is_some() {
                continue;
            }
            for variable in sidecar["env"].as_array().into_iter().flatten() {
                let Some(url) = variable["value"].as_str() else {
                    continue;
                };
                let Some(rest) = url
                    .strip_prefix("http://127.0.0.1:")
                    .or_else(|| url.strip_prefix("http://localhost:"))
                else {
                    continue;
                };
                let Ok(port) = rest.split('/').next().unwrap_or_default().parse::<u16>() else {
                    continue;
                };
                if listener_of(runs, workload, port, "TCP").is_none() {
                    report.finding(
                        &subject,
                        format!(
                            "container {} reads {url} ({}), where no Jitsi program of the pod listens",
                            sidecar["name"].as_str().unwrap_or_default(),
                            variable["name"].as_str().unwrap_or_default()
                        ),
                    );
                }
            }
        }
        // Services selecting the pod.
        for service in objects.iter().filter(|o| o["kind"] == "Service") {
            if !labels_match(&service["spec"]["selector"], &labels) {
                continue;
            }
            let name = service["metadata"]["name"].as_str().unwrap_or_default();
            for port in service["spec"]["ports"].as_array().into_iter().flatten() {
                let protocol = port["protocol"].as_str().unwrap_or("TCP");
                let target = if port["targetPort"].is_null() {
                    &port["port"]
                } else {
                    &port["targetPort"]
                };
                let number = match target {
                    Value::String(n) => {
                        match port_named(n) {
                            Some((number, _, _)) => number,
                            None => {
                                report.finding(&subject, format!("Service {name} targets port {n}, which no container of the pod declares"));
                                continue;
                            }
                        }
                    }
                    other => other.as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
                };
                if is_jitsi_port(number)
                    && let Err(e) = reachable(runs, workload, number, protocol, &format!("Service {name}"))
                {
                    report.finding(&subject, format!("Service {name} targets {e}"));
                }
            }
        }
        // PodMonitors and NetworkPolicies naming the pod's ports.
        for monitor in objects.iter().filter(|o| o["kind"] == "PodMonitor") {
            if !labels_match(&monitor["spec"]["selector"]["matchLabels"], &labels) {
                continue;
            }
            let name = monitor["metadata"]["name"].as_str().unwrap_or_default();
            for endpoint in monitor["spec"]["podMetricsEndpoints"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let Some(port_name) = endpoint["port"].as_str() else {
                    continue;
                };
                let Some((number, protocol, container)) = port_named(port_name) else {
                    report.finding(&subject, format!("PodMonitor {name} scrapes port {port_name}, which no container of the pod declares"));
                    continue;
                };
                if !is_jitsi_port(number) {
                    continue;
                }
                if let Err(e) = reachable(
                    runs,
                    workload,
                    number,
                    &protocol,
                    &format!("Prometheus (PodMonitor {name})"),
                ) {
                    report.finding(&subject, format!("PodMonitor {name} scrapes {e}"));
                }
                let path = endpoint["path"].as_str().unwrap_or("/metrics");
                if let Some((_, run)) = runs
                    .iter()
                    .find(|(w, r)| std::ptr::eq(*w, *workload) && r.container.name == container)
                {
                    check_endpoint(run, path, &format!("PodMonitor {name} on {path}"), report);
                }
            }
        }
        for policy in objects.iter().filter(|o| o["kind"] == "NetworkPolicy") {
            if !labels_match(&policy["spec"]["podSelector"]["matchLabels"], &labels) {
                continue;
            }
            let name = policy["metadata"]["name"].as_str().unwrap_or_default();
            for rule in policy["spec"]["ingress"].as_array().into_iter().flatten() {
                for port in rule["ports"].as_array().into_iter().flatten() {
                    let protocol = port["protocol"].as_str().unwrap_or("TCP");
                    let number = match &port["port"] {
                        Value::Null => continue,
                        Value::String(n) => match port_named(n) {
                            Some((number, _, _)) => number,
                            None => {
                                report.finding(&subject, format!("NetworkPolicy {name} admits port {n}, which no container of the pod declares"));
                                continue;
                            }
                        },
                        other => other.as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
                    };
                    if is_jitsi_port(number)
                        && let Err(e) =
                            reachable(runs, workload, number, protocol, &format!("NetworkPolicy {name}"))
                    {
                        report.finding(&subject, format!("NetworkPolicy {name} admits {e}"));
                    }
                }
            }
        }
        // service-per-pod gives pod i the UDP port base + i, which the bridge must listen on.
        if let Some(base) = workload["metadata"]["annotations"]["service-per-pod/base-port"]
            .as_str()
            .or_else(|| template["metadata"]["annotations"]["service-per-pod/base-port"].as_str())
            .and_then(|b| b.parse::<u16>().ok())
            && runs
                .iter()
                .any(|(w, r)| std::ptr::eq(*w, *workload) && r.image.name == "jvb")
            && let Err(e) = reachable(
                runs,
                workload,
                base,
                "UDP",
                "service-per-pod's Service for pod 0 (base port + ordinal)",
            )
        {
            report.finding(
                &subject,
                format!("service-per-pod's Service of pod 0 targets {e}"),
            );
        }
        // The governing Service a StatefulSet names must exist, headless.
        if workload["kind"] == "StatefulSet"
            && let Some(governing) = workload["spec"]["serviceName"].as_str()
            && !objects.iter().any(|o| {
                o["kind"] == "Service"
                    && o["metadata"]["name"] == governing
                    && o["spec"]["clusterIP"] == "None"
            })
        {
            report.finding(
                &subject,
                format!(
                    "serviceName names {governing}, but the rendering has no headless Service of that name"
                ),
            );
        }
    }
    // HAProxy reaches the shard's web pods on HAPROXY_SHARD_PORT.
    for haproxy in objects
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("StatefulSet" | "Deployment")))
    {
        for container in containers_of(haproxy) {
            let Some(port) = container["env"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == "HAPROXY_SHARD_PORT")
                .and_then(|v| v["value"].as_str()?.parse::<u16>().ok())
            else {
                continue;
            };
            for (workload, run) in runs.iter().filter(|(_, r)| r.image.name == "web") {
                if let Err(e) = reachable(runs, workload, port, "TCP", "HAProxy") {
                    report.finding(
                        run.container.label(),
                        format!(
                            "HAProxy ({}) sends the shard's requests to HAPROXY_SHARD_PORT {e}",
                            haproxy["metadata"]["name"].as_str().unwrap_or_default()
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_defaults_of_the_launch_scripts() {
        let jvb = "if [ -z \"$VIDEOBRIDGE_MAX_MEMORY\" ]; then VIDEOBRIDGE_MAX_MEMORY=3072m; fi\nexec java -Xmx$VIDEOBRIDGE_MAX_MEMORY $X";
        assert_eq!(
            heap_setting(jvb),
            Some(("VIDEOBRIDGE_MAX_MEMORY".to_owned(), Some(3072)))
        );
        assert_eq!(java_size_mib("2g"), Some(2048));
        assert_eq!(java_size_mib("768M"), Some(768));
        assert_eq!(java_size_mib("lots"), None);
    }
}
