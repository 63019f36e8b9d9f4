//! Runs an image's own start-up scripts the way the container would run them: s6-overlay's `preinit`
//! (its `/run` rule), then the image's configuration oneshot (`10-config`, which renders the templates
//! with `tpl`), each as the container's user and groups, in a root laid out like the container's
//! filesystem with its volumes made as the kubelet makes them, in a network namespace holding the pod's
//! address. What runs is the upstream scripts themselves; the host lends only its programs (`/usr`
//! read-only: bash, coreutils, iproute2, openssl, Debian's `prosodyctl`).
//!
//! Stand-ins, each a few lines and documented in place: s6-overlay's portable utilities (`s6-mkdir`,
//! `s6-rmrf`, …) are their coreutils equivalents, and `s6-overlay-stat` prints what its C source prints.
//! Needs root (mount and network namespaces); `cargo xtask test` runs as root.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::image::Image;
use super::pod::Container;

/// What runs in the sandbox besides the image's own files.
#[derive(Clone, Debug)]
pub struct Tools {
    /// `tpl` built from the version the base image's Dockerfile names.
    pub tpl: PathBuf,
    /// s6-overlay's `libexec/preinit` at the version the base image's Dockerfile names.
    pub preinit: PathBuf,
}

/// One script's run.
#[derive(Clone, Debug)]
pub struct Step {
    pub name: String,
    /// The exit status; `None` when the script could not be started.
    pub status: Option<i32>,
    pub output: String,
}

/// The runs of one container, and the root they wrote into (its `/run` holds the rendered configuration).
#[derive(Clone, Debug)]
pub struct Outcome {
    pub steps: Vec<Step>,
    pub root: PathBuf,
}

impl Outcome {
    /// A file the scripts wrote, by its path in the container.
    pub fn file(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(path.trim_start_matches('/'))).ok()
    }

    /// Paths in the container matching `dir/*` (a glob of one level, as nginx and Prosody include).
    pub fn glob(&self, pattern: &str) -> Vec<String> {
        let Some((dir, file_pattern)) = pattern.rsplit_once('/') else {
            return Vec::new();
        };
        let (prefix, suffix) = file_pattern.split_once('*').unwrap_or((file_pattern, ""));
        let Ok(entries) = std::fs::read_dir(self.root.join(dir.trim_start_matches('/'))) else {
            return Vec::new();
        };
        let mut found: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| {
                name.starts_with(prefix)
                    && name.ends_with(suffix)
                    && (file_pattern.contains('*') || name == file_pattern)
            })
            .map(|name| format!("{dir}/{name}"))
            .collect();
        found.sort();
        found
    }
}

/// s6-overlay's utilities as coreutils; `preinit` calls nothing else of s6.
const SHIMS: [(&str, &str); 9] = [
    ("s6-mkdir", "exec mkdir \"$@\""),
    ("s6-rmrf", "exec rm -rf \"$@\""),
    ("s6-chmod", "exec chmod \"$@\""),
    ("s6-grep", "exec grep \"$@\""),
    ("s6-ln", "exec ln \"$@\""),
    ("s6-linkname", "[ \"$1\" = -f ] && shift; exec readlink -f \"$@\""),
    // -U: to the uid and gid in UID and GID (set by s6-overlay-suexec).
    (
        "s6-chown",
        "[ \"$1\" = -U ] && shift; [ \"$1\" = -- ] && shift; exec chown \"$UID:$GID\" \"$@\"",
    ),
    // Unprivileged, the real one fails as mount(8) does.
    ("s6-mount", "exec mount \"$@\""),
    // s6-overlay-helpers' s6-overlay-stat: uid, user, gid, group, and the mode bits as
    // "oxoworgxgwgruxuwurosgsus" pairs, lowest bit first.
    (
        "s6-overlay-stat",
        r#"set -e
mode=$(stat -c %a "$1"); uid=$(stat -c %u "$1"); gid=$(stat -c %g "$1")
m=$((0$mode)); perms=""; i=0
for p in ox ow or gx gw gr ux uw ur os gs us; do
  if [ $(( (m >> i) & 1 )) -eq 1 ]; then perms="$perms$p"; fi; i=$((i + 1))
done
printf 'uid=%s\nuser=%s\ngid=%s\ngroup=%s\nperms=%s\n' "$uid" "$(getent passwd "$uid" | cut -d: -f1)" "$gid" "$(getent group "$gid" | cut -d: -f1)" "$perms""#,
    ),
];

const PATH: &str = "/opt/contract/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn io(context: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{context}: {e}")
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating a folder"))?;
    }
    std::fs::write(path, content).map_err(io(&path.display().to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod"))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(&path.display().to_string()))
}

/// Makes `dir` as the kubelet makes a volume of this kind for a pod with `fs_group`.
fn make_volume(dir: &Path, volume: &Value, objects: &[Value], fs_group: Option<u32>) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io("creating a volume"))?;
    // The kubelet's SetVolumeOwnership: group fsGroup, rw for the group, setgid on folders.
    let (mode, group) = match fs_group {
        Some(group) => (0o2777, group),
        None => (0o777, 0),
    };
    if volume.get("emptyDir").is_some() {
        chown(dir, 0, group)?;
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io("chmod"));
    }
    if volume.get("persistentVolumeClaim").is_some() {
        // A new filesystem's root: 0755 root, then the kubelet's ownership change.
        chown(dir, 0, group)?;
        let mode = if fs_group.is_some() { 0o2775 } else { 0o755 };
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io("chmod"));
    }
    // ConfigMap and Secret volumes: the atomic writer's layout (`key -> ..data/key`), read-only.
    let (kind, name) = if let Some(name) = volume["configMap"]["name"].as_str() {
        ("ConfigMap", name)
    } else if let Some(name) = volume["secret"]["secretName"].as_str() {
        ("Secret", name)
    } else {
        return Err(format!(
            "the volume {} is of a kind the contract does not lay out",
            volume["name"]
        ));
    };
    let object = objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .ok_or_else(|| {
            format!(
                "the volume {} names {kind} {name}, which the rendering lacks",
                volume["name"]
            )
        })?;
    let data: BTreeMap<String, String> = object["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    let timestamped = dir.join("..2026_01_01_00_00_00.000000000");
    for (key, value) in &data {
        write_file(&timestamped.join(key), value.as_bytes(), 0o644)?;
        symlink(format!("..data/{key}"), dir.join(key)).map_err(io("symlink"))?;
    }
    symlink("..2026_01_01_00_00_00.000000000", dir.join("..data")).map_err(io("symlink"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).map_err(io("chmod"))
}

/// Lays out the container's root under `work`, runs `preinit` then each configuration oneshot, and
/// returns what happened. Every step runs even after one failed (a container would stop there), so
/// that one report shows every problem. `objects` is the rendering (for ConfigMap volumes).
pub fn start(
    container: &Container,
    image: &Image,
    tools: &Tools,
    objects: &[Value],
    work: &Path,
) -> Result<Outcome, String> {
    let root = work.join("root");
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(&root).map_err(io("creating the root"))?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).map_err(io("chmod"))?;
    // The image's own files: all of them under /.image (the scripts run from there), and those outside
    // /usr and /etc (which the host lends) at their own paths too (/defaults, /opt, /prosody-plugins).
    for (path, source) in &image.rootfs {
        let content = std::fs::read(source).map_err(io(&source.display().to_string()))?;
        let mode = std::fs::metadata(source)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o644)
            | 0o444;
        write_file(
            &root.join(".image").join(path.trim_start_matches('/')),
            &content,
            mode,
        )?;
        if !path.starts_with("/usr/") && !path.starts_with("/etc/") {
            write_file(&root.join(path.trim_start_matches('/')), &content, mode)?;
        }
    }
    for dir in [
        "usr",
        "etc",
        "proc",
        "dev",
        "var/lib",
        "opt/contract/bin",
        "package/admin/s6-overlay/libexec",
    ] {
        std::fs::create_dir_all(root.join(dir)).map_err(io("creating the root"))?;
    }
    for link in ["bin", "sbin", "lib", "lib64"] {
        if let Ok(target) = std::fs::read_link(Path::new("/").join(link)) {
            symlink(target, root.join(link)).map_err(io("symlink"))?;
        }
    }
    symlink("/run", root.join("var/run")).map_err(io("symlink"))?;
    // Folders the Dockerfiles create for their user.
    for (user, dir) in &image.owned_dirs {
        let path = root.join(dir.trim_start_matches('/'));
        std::fs::create_dir_all(&path).map_err(io("creating an image folder"))?;
        let uid = if *user == image.user { image.uid } else { 0 };
        chown(&path, uid, uid)?;
    }
    // The image's own /run and /tmp, unless a volume replaces them.
    for (dir, mode) in [("run", 0o755), ("tmp", 0o1777)] {
        std::fs::create_dir_all(root.join(dir)).map_err(io("creating a folder"))?;
        std::fs::set_permissions(root.join(dir), std::fs::Permissions::from_mode(mode))
            .map_err(io("chmod"))?;
    }
    for mount in container.spec["volumeMounts"].as_array().into_iter().flatten() {
        let path = mount["mountPath"].as_str().unwrap_or_default();
        let Some((_, volume)) = container.volume_at(path) else {
            return Err(format!(
                "{}: the volume mounted at {path} is not defined",
                container.label()
            ));
        };
        make_volume(
            &root.join(path.trim_start_matches('/')),
            volume,
            objects,
            container.fs_group,
        )?;
    }
    // Tools: tpl, the base image's helpers the scripts call by name, s6's utilities, preinit.
    let bin = root.join("opt/contract/bin");
    let tpl = std::fs::read(&tools.tpl).map_err(io("reading tpl"))?;
    write_file(&bin.join("tpl"), &tpl, 0o755)?;
    for (path, _) in image.files_under("/usr/bin/") {
        let name = path.rsplit('/').next().unwrap_or_default();
        let content = image.file(path).unwrap_or_default();
        write_file(&bin.join(name), content.as_bytes(), 0o755)?;
    }
    for (name, body) in SHIMS {
        write_file(&bin.join(name), format!("#!/bin/sh\n{body}\n").as_bytes(), 0o755)?;
    }
    std::fs::create_dir_all(bin.with_file_name("status")).map_err(io("creating a folder"))?;
    std::fs::set_permissions(
        bin.with_file_name("status"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .map_err(io("chmod"))?;
    let preinit = std::fs::read(&tools.preinit).map_err(io("reading preinit"))?;
    write_file(
        &root.join("package/admin/s6-overlay/libexec/preinit"),
        &preinit,
        0o755,
    )?;

    // The steps: preinit with what s6-overlay-suexec sets, then the configuration oneshots.
    let mut env: BTreeMap<String, String> = container
        .env
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    env.insert("PATH".to_owned(), PATH.to_owned());
    let mut preinit_env = env.clone();
    for (key, value) in [
        ("UID", container.uid.to_string()),
        ("EUID", container.uid.to_string()),
        ("GID", container.gid.to_string()),
        ("EGID", container.gid.to_string()),
        ("USER", image.user.clone()),
        ("GROUP", image.user.clone()),
    ] {
        preinit_env.insert(key.to_owned(), value);
    }
    let mut steps: Vec<(String, BTreeMap<String, String>, Vec<String>)> = vec![(
        "s6-overlay preinit".to_owned(),
        preinit_env,
        vec![
            "/bin/sh".into(),
            "-e".into(),
            "/package/admin/s6-overlay/libexec/preinit".into(),
        ],
    )];
    for (service, script) in image.config_oneshots() {
        steps.push((
            format!("{service} ({script})"),
            env.clone(),
            vec!["/bin/bash".into(), format!("/.image{script}")],
        ));
    }
    // Each volume is a mount of its own in the container (s6-overlay's preinit looks /run up in
    // /proc/mounts).
    let volume_mounts: String = container.spec["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let path = m["mountPath"].as_str()?;
            // ConfigMap and Secret volumes are read-only whatever the mount says.
            let read_only = m["readOnly"] == true
                || container
                    .volume_at(path)
                    .is_some_and(|(_, v)| v.get("configMap").is_some() || v.get("secret").is_some());
            let quoted = shell_quote(path.trim_start_matches('/'));
            let mut line = format!("mount --bind \"$R\"/{quoted} \"$R\"/{quoted}\n");
            if read_only {
                line += &format!("mount -o remount,bind,ro \"$R\"/{quoted}\n");
            }
            Some(line)
        })
        .collect();
    let mut groups = vec![container.gid];
    groups.extend(container.fs_group);
    groups.dedup();
    let groups = groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut script = format!(
        "set -eu\nR={root}\nmount --rbind /proc \"$R/proc\"\nmount --rbind /dev \"$R/dev\"\n\
         for d in usr etc; do mount --bind \"/$d\" \"$R/$d\"; mount -o remount,bind,ro \"$R/$d\"; done\n\
         {mounts}ip link set lo up\nip link add eth0 type veth peer name peer0\nip link set peer0 up\nip addr add {pod_ip}/24 dev eth0\n\
         ip link set eth0 up\nip route add default dev eth0\n",
        root = shell_quote(&root.display().to_string()),
        pod_ip = super::pod::STAND_INS.pod_ip,
        mounts = volume_mounts,
    );
    for (index, (_, step_env, command)) in steps.iter().enumerate() {
        let mut args = Vec::new();
        for (key, value) in step_env {
            args.extend_from_slice(format!("{key}={value}").as_bytes());
            args.push(0);
        }
        // The step's own exit status, written from inside (xargs would replace it with 123).
        let status = format!("/opt/contract/status/step-{index}");
        for word in ["/bin/sh", "-c", &format!("\"$@\"; echo $? > {status}"), "step"]
            .into_iter()
            .chain(command.iter().map(String::as_str))
        {
            args.extend_from_slice(word.as_bytes());
            args.push(0);
        }
        let args_path = root.join(format!("opt/contract/step-{index}.args"));
        write_file(&args_path, &args, 0o644)?;
        let out = work.join(format!("step-{index}.out"));
        let _ = writeln!(
            script,
            "chroot --userspec={uid}:{gid} --groups={groups} \"$R\" /usr/bin/xargs -0 -x -a /opt/contract/step-{index}.args /usr/bin/env -i > {out} 2>&1 < /dev/null || true",
            uid = container.uid,
            gid = container.gid,
            out = shell_quote(&out.display().to_string()),
        );
    }
    let setup = work.join("setup.sh");
    write_file(&setup, script.as_bytes(), 0o755)?;
    let output = Command::new("unshare")
        .args(["--mount", "--net", "--fork", "--", "/bin/sh"])
        .arg(&setup)
        .output()
        .map_err(io("running unshare"))?;
    if !output.status.success() {
        return Err(format!(
            "setting up the sandbox of {} failed (it needs root): {}",
            container.label(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let steps = steps
        .into_iter()
        .enumerate()
        .map(|(index, (name, _, _))| {
            let out = work.join(format!("step-{index}.out"));
            Step {
                name,
                status: std::fs::read_to_string(root.join(format!("opt/contract/status/step-{index}")))
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
                output: std::fs::read_to_string(&out).unwrap_or_default(),
            }
        })
        .collect();
    Ok(Outcome { steps, root })
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Whether this process may create the namespaces the sandbox needs.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}
