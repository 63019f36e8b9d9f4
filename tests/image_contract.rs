//! The manifests against the Jitsi images' own source, at the tag each shard pins: every Jitsi container
//! of every overlay (and of each component that touches one) is started as the kubelet would start it —
//! jvb-startup, s6-overlay's preinit, the image's configuration script rendering its templates with its
//! own `tpl` — and everything that reaches it is checked against what it then listens on
//! (testbed/src/jitsi_images). Negative controls break one thing each on a copy and expect the one
//! finding that names it.
//!
//! Upstream sources: `JITSI_IMAGES_SRC` (and `JICOFO_SRC`, `JVB_SRC`, `JITSI_TPL_SRC`, `S6_OVERLAY_SRC`),
//! else the cache `~/.cache/jitsi-k8s/upstream/`, else `git clone`. A shard whose tag has no source fails.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use testbed::jitsi_images::{self, ShardReport, Sources};
use testbed::manifests::{self, edit, render_dir, render_overlay};
use testbed::prosody::{Auth, Credentials, InRoom, Prosody, ProsodyOptions, login};
use testbed::repo_root;

fn contract(objects: &[Value], purpose: &str) -> Vec<ShardReport> {
    let work = repo_root().join("target/image-contract").join(purpose);
    jitsi_images::check(objects, &work, &mut Sources::resolve_once)
}

fn findings(reports: &[ShardReport]) -> Vec<String> {
    reports
        .iter()
        .flat_map(|r| r.findings.iter().map(ToString::to_string))
        .collect()
}

fn assert_kept(reports: &[ShardReport], what: &str) {
    assert!(!reports.is_empty(), "{what}: no shard found");
    let found = findings(reports);
    assert!(
        found.is_empty(),
        "{what} breaks the images' contract:\n  {}\n(sources: {})",
        found.join("\n  "),
        reports[0].origins.join("; ")
    );
}

#[test]
fn the_dev_overlay_keeps_the_images_contract() {
    let objects = render_overlay("jitsi-dev", "manifests/overlays/dev", &[]);
    let reports = contract(&objects, "dev");
    assert_eq!(reports.len(), 1);
    assert_kept(&reports, "overlays/dev");
}

#[test]
fn the_production_overlay_keeps_the_images_contract() {
    let objects = render_overlay("jitsi", "manifests/overlays/production", &[]);
    let reports = contract(&objects, "production");
    assert_eq!(reports.len(), 2);
    assert_kept(&reports, "overlays/production");
}

/// Adds `component` to the `components` of a shard folder of a copy.
fn with_shard_component(folder: &Path, component: &str) {
    edit(
        &folder.join("kustomization.yaml"),
        "  - ../../../base/shard\n",
        &format!("  - ../../../base/shard\ncomponents:\n  - ../../../components/{component}\n"),
    );
}

#[test]
fn the_components_that_touch_jitsi_containers_keep_the_contract() {
    let copy = manifests::copy_of_manifests("contract-components");
    let production = copy.join("manifests/overlays/production");
    with_shard_component(&production.join("shard-0"), "jvb-advertise-from-node");
    with_shard_component(&production.join("shard-1"), "jvb-load-balancer");
    edit(
        &production.join("shard-1/kustomization.yaml"),
        "  - ../../../components/jvb-load-balancer\n",
        "  - ../../../components/jvb-load-balancer\n  - ../../../components/jvb-public-address-required\n",
    );
    edit(
        &production.join("kustomization.yaml"),
        "  - ../../components/kube-prometheus\n",
        "  - ../../components/kube-prometheus-stack\n",
    );
    let objects = render_dir(&production);
    let reports = contract(&objects, "components");
    std::fs::remove_dir_all(&copy).unwrap();
    assert_eq!(reports.len(), 2);
    assert_kept(
        &reports,
        "production with jvb-advertise-from-node, jvb-load-balancer and kube-prometheus-stack",
    );
}

/// The fixed overlay rendered from a copy after `break_it`, and the contract's findings.
fn broken(purpose: &str, break_it: impl FnOnce(&Path)) -> Vec<String> {
    let copy = manifests::copy_of_manifests(purpose);
    let manifests_dir: PathBuf = copy.join("manifests");
    break_it(&manifests_dir);
    let objects = render_dir(&manifests_dir.join("overlays/dev"));
    let found = findings(&contract(&objects, purpose));
    std::fs::remove_dir_all(&copy).unwrap();
    found
}

fn assert_named(found: &[String], needles: &[&str]) {
    assert!(
        found.iter().any(|f| needles.iter().all(|n| f.contains(n))),
        "no finding says {needles:?}; the contract found:\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn a_flipped_port_is_named() {
    let found = broken("contract-flipped-port", |m| {
        edit(
            &m.join("base/shard/web.yaml"),
            "containerPort: 8000",
            "containerPort: 8001",
        );
    });
    assert_named(
        &found,
        &[
            "container web",
            "containerPort http 8001/TCP: nothing listens there",
        ],
    );
    assert_named(
        &found,
        &["readinessProbe on port 8001/TCP: nothing listens there"],
    );
    assert_named(
        &found,
        &["Service shard-0-web targets 8001/TCP: nothing listens there"],
    );
    let found = broken("contract-flipped-haproxy-port", |m| {
        edit(
            &m.join("base/haproxy/statefulset.yaml"),
            "value: \"8000\"",
            "value: \"80\"",
        );
    });
    assert_named(
        &found,
        &[
            "container web",
            "HAPROXY_SHARD_PORT 80/TCP: nothing listens there",
        ],
    );
}

#[test]
fn without_the_kubernetes_run_switch_s6_overlay_refuses_to_start() {
    let found = broken("contract-run-rule", |m| {
        for file in ["web.yaml", "jicofo.yaml", "prosody.yaml", "jvb.yaml"] {
            edit(
                &m.join("base/shard").join(file),
                "- name: S6_YES_I_WANT_A_WORLD_WRITABLE_RUN_BECAUSE_KUBERNETES\n",
                "- name: S6_WORLD_WRITABLE_RUN_SWITCH_REMOVED\n",
            );
        }
    });
    for container in ["web", "jicofo", "prosody", "jvb"] {
        assert_named(
            &found,
            &[
                &format!("container {container}:"),
                "s6-overlay preinit exits 100",
                "/run belongs to uid 0",
            ],
        );
    }
}

#[test]
fn jicofo_without_its_rest_api_on_the_pod_network_is_never_probed() {
    let found = broken("contract-jicofo-rest", |m| {
        edit(
            &m.join("base/shard/jicofo.yaml"),
            "- name: JICOFO_ENABLE_REST\n              value: \"1\"",
            "- name: JICOFO_ENABLE_REST\n              value: \"0\"",
        );
    });
    assert_named(
        &found,
        &[
            "container jicofo",
            "startupProbe on port 8888/TCP",
            "loopback only",
        ],
    );
    assert_named(&found, &["PodMonitor", "8888/TCP", "loopback only"]);
}

#[test]
fn a_value_in_a_form_the_image_misreads_is_named() {
    let found = broken("contract-value-form", |m| {
        edit(
            &m.join("base/shard/web.yaml"),
            "- name: DISABLE_HTTPS\n              value: \"1\"",
            "- name: DISABLE_HTTPS\n              value: \"true\"",
        );
    });
    assert_named(&found, &["DISABLE_HTTPS=\"true\"", "compare it as a number"]);
}

#[test]
fn a_heap_too_large_for_its_limit_is_named() {
    let found = broken("contract-heap", |m| {
        edit(
            &m.join("overlays/dev/kustomization.yaml"),
            "VIDEOBRIDGE_MAX_MEMORY, value: 768m",
            "VIDEOBRIDGE_MAX_MEMORY, value: 1000m",
        );
    });
    assert_named(&found, &["container jvb", "JVM heap is 1000 MiB"]);
}

#[test]
fn a_variable_no_image_reads_is_named() {
    let found = broken("contract-unread", |m| {
        edit(
            &m.join("base/shard/web.yaml"),
            "- name: DISABLE_HTTPS\n",
            "- name: JITSI_UNREAD_SETTING\n              value: \"x\"\n            - name: DISABLE_HTTPS\n",
        );
    });
    assert_named(
        &found,
        &["JITSI_UNREAD_SETTING (set in env) is read by neither the web image"],
    );
}

#[test]
fn a_shard_whose_release_has_no_source_fails() {
    let found = broken("contract-unknown-tag", |m| {
        edit(
            &m.join("overlays/dev/shard-0/kustomization.yaml"),
            "  - name: ghcr.io/jitsi/web\n    newTag: stable-11146-2",
            "  - name: ghcr.io/jitsi/web\n    newTag: stable-1-nowhere",
        );
    });
    assert_named(&found, &["several tags (stable-1-nowhere, stable-11146-2)"]);
    // Every tag of the shard is checked in turn; the first one without a source is named.
    let found = broken("contract-unknown-release", |m| {
        let file = m.join("overlays/dev/shard-0/kustomization.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(
            &file,
            text.replace("newTag: stable-11146-2", "newTag: stable-1-nowhere"),
        )
        .unwrap();
    });
    assert_named(
        &found,
        &[
            "upstream sources of stable-1-nowhere",
            "no source of docker-jitsi-meet at stable-1-nowhere",
        ],
    );
}

/// `cargo xtask jitsi-images --tag <next>` against a release whose web image moved its port and reads a
/// new variable: a copy of the pinned release's source, changed, given as JITSI_IMAGES_SRC.
#[test]
fn the_upgrade_command_names_what_changed_and_what_it_breaks() {
    let pinned = Sources::resolve_once("stable-11146-2").unwrap();
    let next = repo_root().join(format!(
        "target/image-contract/next-release-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&next);
    std::fs::create_dir_all(&next).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", pinned.images.path.display()))
        .arg(&next)
        .status()
        .unwrap();
    assert!(copied.success());
    let default = next.join("web/rootfs/defaults/default");
    edit(
        &default,
        "listen 8000 default_server;",
        "listen 8001 default_server;",
    );
    edit(
        &default,
        "listen [::]:8000 default_server;",
        "listen [::]:8001 default_server;",
    );
    edit(
        &next.join("web/rootfs/defaults/meet.conf"),
        "server_name _;",
        "server_name {{ .Env.WEB_SERVER_NAME | default \"_\" }};",
    );
    let output = std::process::Command::new(testbed::daemon::binary("jitsi-images"))
        .args(["--tag", "stable-11146-3", "--overlay", "manifests/overlays/dev"])
        .env("JITSI_IMAGES_SRC", &next)
        .current_dir(repo_root())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    std::fs::remove_dir_all(&next).unwrap();
    assert!(
        !output.status.success(),
        "the upgrade breaks the contract:\n{report}"
    );
    for needle in [
        "shard-0 at stable-11146-3",
        "what the images do differently from stable-11146-2",
        "listen 8001 default_server",
        "now also [\"WEB_SERVER_NAME\"]",
        "docker-jitsi-meet files changed: 2",
        "web/rootfs/defaults/default",
        "containerPort http 8000/TCP: nothing listens there",
        "HAPROXY_SHARD_PORT 8000/TCP: nothing listens there",
    ] {
        assert!(report.contains(needle), "the report lacks {needle:?}:\n{report}");
    }
}

/// The file `path` as the image's configuration script wrote it for `container` (`<workload>-<name>`,
/// e.g. `shard-0-prosody-prosody`) of `shard`, in the contract run `purpose`.
fn rendered(purpose: &str, shard: &str, container: &str, path: &str) -> String {
    let file = repo_root()
        .join("target/image-contract")
        .join(purpose)
        .join(shard)
        .join(container)
        .join("sandbox/root")
        .join(path.trim_start_matches('/'));
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The settings of one `VirtualHost "<host>"` or `Component "<host>"` block of a rendered Prosody
/// configuration: its non-empty, non-comment lines up to the next block, trimmed.
fn prosody_block(config: &str, kind: &str, host: &str) -> Vec<String> {
    let header = format!("{kind} \"{host}\"");
    let mut lines = config
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(&header));
    assert!(
        lines.next().is_some(),
        "no {header} in the rendered configuration:\n{config}"
    );
    lines
        .take_while(|l| !(l.starts_with("VirtualHost ") || l.starts_with("Component ")))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .map(str::to_owned)
        .collect()
}

/// The lines of `block` that set one of `settings`, verbatim.
fn settings_of(block: &[String], settings: &[&str]) -> Vec<String> {
    block
        .iter()
        .filter(|line| {
            settings
                .iter()
                .any(|s| line.starts_with(&format!("{s} ")) || line.starts_with(&format!("{s}=")))
        })
        .cloned()
        .collect()
}

/// components/auth-internal and components/auth-jwt set exactly what the images read for them (every
/// variable read, every port and probe still right), and the images' own templates turn them into the
/// configuration that decides who opens a room: Prosody's VirtualHosts (accounts, guests, tokens) and MUC
/// (only admins create rooms: Jicofo), Jicofo's authentication, web's login and guest domains. Then the
/// rendered internal-authentication settings run in the real Prosody 13: an account logs in with its
/// password and not with another, nobody gets in anonymously where accounts are required, a guest does
/// on the guest domain, a member cannot create a room — only Jicofo's account can, after which members and
/// guests join it — and the accounts survive a restart. JWT's checks (Jitsi's token plugin) come only from
/// Jitsi's own package repository: they are checked against the rendered configuration only.
#[test]
fn the_auth_components_set_what_the_images_read_and_prosody_enforces_it() {
    let copy = manifests::copy_of_manifests("contract-auth");
    let production = copy.join("manifests/overlays/production");
    with_shard_component(&production.join("shard-0"), "auth-internal");
    with_shard_component(&production.join("shard-1"), "auth-jwt");
    let objects = render_dir(&production);
    let reports = contract(&objects, "auth");
    std::fs::remove_dir_all(&copy).unwrap();
    assert_eq!(reports.len(), 2);
    assert_kept(
        &reports,
        "production with auth-internal (shard-0) and auth-jwt (shard-1)",
    );

    // shard-0, internal accounts.
    let prosody = rendered(
        "auth",
        "shard-0",
        "shard-0-prosody-prosody",
        "/run/prosody/config/conf.d/jitsi-meet.cfg.lua",
    );
    let main = prosody_block(&prosody, "VirtualHost", "meet.jitsi");
    let guest = prosody_block(&prosody, "VirtualHost", "guest.meet.jitsi");
    let internal = prosody_block(&prosody, "VirtualHost", "auth.meet.jitsi");
    let muc = prosody_block(&prosody, "Component", "muc.meet.jitsi");
    let main_auth = settings_of(&main, &["authentication", "disable_sasl_mechanisms"]);
    assert_eq!(
        main_auth,
        [
            "authentication = \"internal_hashed\"",
            "disable_sasl_mechanisms={ \"DIGEST-MD5\", \"OAUTHBEARER\" }"
        ],
        "{main:?}"
    );
    let guest_auth = settings_of(&guest, &["authentication"]);
    assert_eq!(guest_auth, ["authentication = \"jitsi-anonymous\""]);
    // Only admins create rooms; an instant room opens at once (no configuration step).
    let muc_rule = settings_of(&muc, &["restrict_room_creation", "muc_room_locking"]);
    assert_eq!(
        muc_rule,
        ["restrict_room_creation = true", "muc_room_locking = false"],
        "{muc:?}"
    );
    let admins_line = prosody
        .lines()
        .skip_while(|l| !l.starts_with("admins = {"))
        .take_while(|l| !l.starts_with('}'))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(admins_line.contains("\"focus@auth.meet.jitsi\""), "{admins_line}");
    let jicofo = rendered(
        "auth",
        "shard-0",
        "shard-0-jicofo-jicofo",
        "/run/jicofo/config/jicofo.conf",
    );
    let authentication: String = jicofo
        .lines()
        .skip_while(|l| l.trim() != "authentication {")
        .take_while(|l| l.trim() != "}")
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    for wanted in ["enabled = true", "type = XMPP", "login-url = \"meet.jitsi\""] {
        assert!(
            authentication.contains(wanted),
            "jicofo.conf authentication: {authentication}"
        );
    }
    let web = rendered("auth", "shard-0", "shard-0-web-web", "/run/web/config/config.js");
    assert!(
        web.contains("config.hosts.anonymousdomain = 'guest.meet.jitsi';"),
        "{web}"
    );
    assert!(web.contains("config.hosts.authdomain = 'meet.jitsi';"), "{web}");

    // shard-1, tokens.
    let prosody_jwt = rendered(
        "auth",
        "shard-1",
        "shard-1-prosody-prosody",
        "/run/prosody/config/conf.d/jitsi-meet.cfg.lua",
    );
    let main_jwt = prosody_block(&prosody_jwt, "VirtualHost", "meet.jitsi");
    for wanted in ["authentication = \"token\"", "allow_empty_token = false"] {
        assert!(main_jwt.iter().any(|l| l == wanted), "{wanted}: {main_jwt:?}");
    }
    assert!(
        main_jwt
            .iter()
            .any(|l| l.starts_with("app_id = \"") && l != "app_id = \"\""),
        "{main_jwt:?}"
    );
    assert!(
        main_jwt
            .iter()
            .any(|l| l.starts_with("app_secret = \"") && l != "app_secret = \"\""),
        "{main_jwt:?}"
    );
    assert!(
        prosody_jwt.contains("asap_accepted_issuers = { \"my-portal\" }"),
        "{prosody_jwt}"
    );
    assert!(
        prosody_jwt.contains("asap_accepted_audiences = { \"jitsi\" }"),
        "{prosody_jwt}"
    );
    let muc_jwt = prosody_block(&prosody_jwt, "Component", "muc.meet.jitsi");
    assert!(
        muc_jwt.iter().any(|l| l == "\"token_verification\";"),
        "{muc_jwt:?}"
    );
    let jicofo_jwt = rendered(
        "auth",
        "shard-1",
        "shard-1-jicofo-jicofo",
        "/run/jicofo/config/jicofo.conf",
    );
    assert!(jicofo_jwt.contains("type = JWT"), "{jicofo_jwt}");

    // The rendered internal authentication in the real Prosody (Debian's 13, what the image runs), on
    // the image's own host names.
    let mut server = Prosody::start(ProsodyOptions {
        auth: Some(Auth {
            admins: vec!["focus@auth.meet.jitsi".to_owned()],
            domain: "meet.jitsi".to_owned(),
            domain_settings: main_auth,
            guest: Some(("guest.meet.jitsi".to_owned(), guest_auth)),
            auth_domain: "auth.meet.jitsi".to_owned(),
            auth_domain_settings: settings_of(&internal, &["authentication"]),
            muc: "muc.meet.jitsi".to_owned(),
            muc_settings: muc_rule,
        }),
        ..ProsodyOptions::default()
    });
    // Accounts as docs/deploying.md creates them (and as the image creates Jicofo's).
    for (jid, password) in [
        ("alice@meet.jitsi", "correct horse"),
        ("focus@auth.meet.jitsi", "focus-secret"),
    ] {
        let (ok, said) = server.prosodyctl(&["shell", "user", "create", jid, password]);
        assert!(ok, "prosodyctl shell user create {jid}: {said}");
    }
    let room = "standup@muc.meet.jitsi";
    let alice = Credentials::Password("correct horse");
    let (ok, said) = login(&server, "alice@meet.jitsi", alice, None);
    assert!(
        ok && said.starts_with("authenticated alice@meet.jitsi/"),
        "{said}"
    );
    let (ok, said) = login(&server, "alice@meet.jitsi", Credentials::Password("wrong"), None);
    assert!(!ok && said.starts_with("auth-failed"), "a wrong password: {said}");
    let (ok, said) = login(&server, "meet.jitsi", Credentials::Anonymous, None);
    assert!(
        !ok && said.starts_with("auth-failed"),
        "anonymous where accounts are required: {said}"
    );
    // Only Jicofo's account creates rooms (restrict_room_creation: admins only).
    let (ok, said) = login(&server, "alice@meet.jitsi", alice, Some(room));
    assert!(
        !ok && said.contains("join-refused not-allowed"),
        "a member created a room: {said}"
    );
    let (ok, said) = login(&server, "guest.meet.jitsi", Credentials::Anonymous, Some(room));
    assert!(
        !ok && said.contains("join-refused not-allowed"),
        "a guest created a room: {said}"
    );
    let focus = InRoom::join(
        &server,
        "focus@auth.meet.jitsi",
        Credentials::Password("focus-secret"),
        room,
    );
    let (ok, said) = login(&server, "alice@meet.jitsi", alice, Some(room));
    assert!(ok && said.contains(&format!("joined {room}")), "{said}");
    let (ok, said) = login(&server, "guest.meet.jitsi", Credentials::Anonymous, Some(room));
    assert!(
        ok && said.contains(&format!("joined {room}")),
        "a guest joining a member's room: {said}"
    );
    drop(focus);
    // Removing an account, as docs/deploying.md does it.
    let (ok, said) = server.prosodyctl(&["shell", "user", "create", "bob@meet.jitsi", "temporary"]);
    assert!(ok, "{said}");
    let (ok, said) = server.prosodyctl(&["shell", "user", "delete", "bob@meet.jitsi"]);
    assert!(ok, "prosodyctl shell user delete: {said}");
    let (ok, said) = login(
        &server,
        "bob@meet.jitsi",
        Credentials::Password("temporary"),
        None,
    );
    assert!(!ok, "a deleted account logged in: {said}");
    // The accounts are in Prosody's data folder (the PersistentVolumeClaim of auth-internal): a restart
    // keeps them.
    server.restart();
    let (ok, said) = login(&server, "alice@meet.jitsi", alice, None);
    assert!(ok, "alice after a restart: {said}");
}

/// components/auth-ldap (documented, not run: no directory here) sets what the images read for LDAP, and
/// the image's own templates turn it into saslauthd's configuration and Prosody's `cyrus` authentication.
#[test]
fn the_ldap_component_sets_what_the_images_read() {
    let copy = manifests::copy_of_manifests("contract-ldap");
    let dev = copy.join("manifests/overlays/dev");
    with_shard_component(&dev.join("shard-0"), "auth-ldap");
    let objects = render_dir(&dev);
    let reports = contract(&objects, "ldap");
    std::fs::remove_dir_all(&copy).unwrap();
    assert_kept(&reports, "dev with auth-ldap");
    let saslauthd = rendered(
        "ldap",
        "shard-0",
        "shard-0-prosody-prosody",
        "/run/saslauthd.conf",
    );
    for wanted in [
        "ldap_servers: ldaps://ldap.example.org",
        "ldap_search_base: ou=people,dc=example,dc=org",
        "ldap_bind_dn: cn=jitsi,ou=services,dc=example,dc=org",
        "ldap_filter: (uid=%u)",
    ] {
        assert!(saslauthd.contains(wanted), "{wanted}:\n{saslauthd}");
    }
    assert!(saslauthd.contains("ldap_bind_pw: "), "{saslauthd}");
    let prosody = rendered(
        "ldap",
        "shard-0",
        "shard-0-prosody-prosody",
        "/run/prosody/config/conf.d/jitsi-meet.cfg.lua",
    );
    let main = prosody_block(&prosody, "VirtualHost", "meet.jitsi");
    assert_eq!(
        settings_of(&main, &["authentication"]),
        ["authentication = \"cyrus\""],
        "{main:?}"
    );
    assert!(main.iter().any(|l| l == "\"auth_cyrus\";"), "{main:?}");
}
