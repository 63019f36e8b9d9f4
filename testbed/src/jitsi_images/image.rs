//! One Jitsi image as its own source defines it: the Dockerfile chain (`jvb` → `base-java` → `base`), its
//! environment, user, ports and pinned tool versions, and the merged root filesystem its `COPY rootfs /`
//! lines build (a later image's file replaces an earlier one's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The images of one docker-jitsi-meet release that the manifests run.
pub const JITSI_IMAGES: [&str; 4] = ["web", "jicofo", "prosody", "jvb"];

#[derive(Clone, Debug)]
pub struct Image {
    pub name: String,
    /// From the outermost base to the image itself, e.g. `["base", "base-java", "jvb"]`.
    pub chain: Vec<String>,
    /// `ENV` of the whole chain.
    pub env: BTreeMap<String, String>,
    /// `ARG` defaults of the whole chain (e.g. `S6_OVERLAY_VERSION`, `TPL_VERSION`).
    pub args: BTreeMap<String, String>,
    /// The last `USER`.
    pub user: String,
    /// The user's uid and gid: `adduser --uid` when given, else the first regular uid of Debian's
    /// adduser (`FIRST_UID=1000` in /etc/adduser.conf; debian:trixie-slim has no regular user before
    /// it), with a group of the same id (`USERGROUPS=yes`).
    pub uid: u32,
    pub gid: u32,
    /// `EXPOSE`d ports, e.g. `8000`, `10000/udp`.
    pub expose: Vec<String>,
    /// Path in the image (`/defaults/jvb.conf`) → the file in the checkout.
    pub rootfs: BTreeMap<String, PathBuf>,
    /// Where each fact came from, for findings: `jvb/Dockerfile` and its parents.
    pub dockerfiles: Vec<String>,
    /// Folders the `RUN` lines create and hand to a user (`mkdir -p /storage && chown s6:s6 /storage`).
    pub owned_dirs: Vec<(String, String)>,
}

/// Debian's adduser gives the first regular user this uid.
const DEBIAN_FIRST_UID: u32 = 1000;

/// The instructions of a Dockerfile's final stage, continuation lines joined.
fn final_stage(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instruction, rest) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
        instructions.push((instruction.to_ascii_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    let last_from = instructions.iter().rposition(|(i, _)| i == "FROM").unwrap_or(0);
    // ARGs before the first FROM are global: keep them.
    let globals = instructions
        .iter()
        .take_while(|(i, _)| i != "FROM")
        .cloned()
        .collect::<Vec<_>>();
    globals
        .into_iter()
        .chain(instructions[last_from..].iter().cloned())
        .collect()
}

/// `KEY=value KEY2="v"` or `KEY value` (the older form).
fn key_values(rest: &str) -> Vec<(String, String)> {
    if !rest.contains('=')
        || rest
            .split_whitespace()
            .next()
            .is_some_and(|first| !first.contains('='))
    {
        let (key, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        return vec![(key.to_owned(), value.trim().trim_matches('"').to_owned())];
    }
    rest.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

impl Image {
    /// Reads `name` (a folder of the docker-jitsi-meet checkout) and its parents.
    pub fn read(checkout: &Path, name: &str) -> Result<Self, String> {
        let mut chain = vec![name.to_owned()];
        let mut stages = Vec::new();
        let mut current = name.to_owned();
        loop {
            let path = checkout.join(&current).join("Dockerfile");
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            let stage = final_stage(&text);
            let parent = stage
                .iter()
                .rev()
                .find(|(i, _)| i == "FROM")
                .map(|(_, from)| from.split_whitespace().next().unwrap_or_default().to_owned())
                .unwrap_or_default();
            stages.push((current.clone(), stage));
            // `${JITSI_REPO}/base-java:${BASE_TAG}`: another image of this repository.
            match parent
                .strip_prefix("${JITSI_REPO}/")
                .and_then(|p| p.split(':').next())
            {
                Some(base) if checkout.join(base).join("Dockerfile").is_file() => {
                    chain.insert(0, base.to_owned());
                    current = base.to_owned();
                }
                _ => break,
            }
        }
        stages.reverse();
        let mut image = Image {
            name: name.to_owned(),
            chain: chain.clone(),
            env: BTreeMap::new(),
            args: BTreeMap::new(),
            user: "root".to_owned(),
            uid: 0,
            gid: 0,
            expose: Vec::new(),
            rootfs: BTreeMap::new(),
            dockerfiles: chain.iter().map(|c| format!("{c}/Dockerfile")).collect(),
            owned_dirs: Vec::new(),
        };
        let mut users: BTreeMap<String, u32> = BTreeMap::from([("root".to_owned(), 0)]);
        for (folder, stage) in &stages {
            for (instruction, rest) in stage {
                match instruction.as_str() {
                    "ARG" => {
                        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
                        image
                            .args
                            .insert(key.trim().to_owned(), value.trim().trim_matches('"').to_owned());
                    }
                    "ENV" => image.env.extend(key_values(rest)),
                    "USER" => image.user = rest.split(':').next().unwrap_or(rest).trim().to_owned(),
                    "EXPOSE" => image.expose.extend(rest.split_whitespace().map(str::to_owned)),
                    "RUN" => {
                        for (account, uid) in added_users(rest) {
                            users.insert(account, uid);
                        }
                        image.owned_dirs.extend(chowned_dirs(rest));
                    }
                    "COPY" | "ADD" => {
                        let parts: Vec<&str> =
                            rest.split_whitespace().filter(|p| !p.starts_with("--")).collect();
                        if let [source, "/"] = parts.as_slice()
                            && source.trim_end_matches('/') == "rootfs"
                        {
                            overlay(&checkout.join(folder).join("rootfs"), "", &mut image.rootfs)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        image.uid = match image.user.parse::<u32>() {
            Ok(uid) => uid,
            Err(_) => *users.get(&image.user).ok_or_else(|| {
                format!(
                    "{}: USER {} is never created by the Dockerfiles",
                    name, image.user
                )
            })?,
        };
        image.gid = image.uid;
        Ok(image)
    }

    /// The content of a file of the image, by its path in the image.
    pub fn file(&self, path: &str) -> Option<String> {
        self.rootfs
            .get(path)
            .and_then(|p| std::fs::read_to_string(p).ok())
    }

    /// Paths in the image under `prefix`.
    pub fn files_under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a PathBuf)> + 'a {
        self.rootfs.iter().filter(move |(p, _)| p.starts_with(prefix))
    }

    /// The s6-overlay version the base image installs.
    pub fn s6_overlay_version(&self) -> Option<&str> {
        self.args.get("S6_OVERLAY_VERSION").map(String::as_str)
    }

    /// The tpl version the base image installs.
    pub fn tpl_version(&self) -> Option<&str> {
        self.args.get("TPL_VERSION").map(String::as_str)
    }

    /// The s6-rc services of `kind` (`oneshot`, `longrun`), each with the script its `file` (`up`, `run`)
    /// hands over to (the last absolute path of that execline file).
    fn s6_services(&self, kind: &str, file: &str) -> Vec<(String, String)> {
        const S6_RC: &str = "/etc/s6-overlay/s6-rc.d/";
        let mut found = Vec::new();
        for (path, _) in self.files_under(S6_RC) {
            let Some(service) = path.strip_prefix(S6_RC).and_then(|p| p.strip_suffix("/type")) else {
                continue;
            };
            if self.file(path).is_none_or(|t| t.trim() != kind) {
                continue;
            }
            let text = self.file(&format!("{S6_RC}{service}/{file}")).unwrap_or_default();
            if let Some(script) = text.lines().rev().map(str::trim).find(|l| l.starts_with('/')) {
                found.push((service.to_owned(), script.to_owned()));
            }
        }
        found
    }

    /// The oneshot s6-rc services that depend on `base` only: where the images render their configuration
    /// (`10-config`), with the script each runs.
    pub fn config_oneshots(&self) -> Vec<(String, String)> {
        self.s6_services("oneshot", "up")
            .into_iter()
            .filter(|(service, _)| {
                let dependencies = format!("/etc/s6-overlay/s6-rc.d/{service}/dependencies.d/");
                self.rootfs
                    .keys()
                    .filter_map(|p| p.strip_prefix(&dependencies))
                    .all(|d| d == "base")
            })
            .collect()
    }

    /// The longrun s6-rc services and the script each runs (the program's start script).
    pub fn longruns(&self) -> Vec<(String, String)> {
        self.s6_services("longrun", "run")
    }
}

/// Accounts a RUN line creates: `adduser [--uid N] ... name` / `useradd [-u N] name`.
fn added_users(run: &str) -> Vec<(String, u32)> {
    let mut users = Vec::new();
    for command in run.split("&&") {
        let words: Vec<&str> = command.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| *w == "adduser" || *w == "useradd") else {
            continue;
        };
        let args = &words[at + 1..];
        // `adduser s6 group` adds to a group: it takes two plain words and no option.
        if words[at] == "adduser"
            && args.iter().filter(|a| !a.starts_with('-')).count() > 1
            && !args.iter().any(|a| a.starts_with('-'))
        {
            continue;
        }
        let uid = args
            .windows(2)
            .find(|w| w[0] == "--uid" || w[0] == "-u")
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(DEBIAN_FIRST_UID);
        // The name is the last word that is not an option's value.
        let mut name = None;
        let mut skip = false;
        for arg in args {
            if skip {
                skip = false;
                continue;
            }
            if matches!(
                *arg,
                "--uid" | "-u" | "--gid" | "-g" | "--gecos" | "--home" | "--shell" | "--ingroup"
            ) {
                skip = true;
                continue;
            }
            if !arg.starts_with('-') {
                name = Some(arg.trim_matches('"'));
            }
        }
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            users.push((name.to_owned(), uid));
        }
    }
    users
}

/// `chown user:group /path` commands of a RUN line (not recursive ones into files).
fn chowned_dirs(run: &str) -> Vec<(String, String)> {
    run.split("&&")
        .filter_map(|command| {
            let words: Vec<&str> = command.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "chown")?;
            let args: Vec<&str> = words[at + 1..]
                .iter()
                .copied()
                .filter(|a| !a.starts_with('-'))
                .collect();
            let [owner, path] = args.as_slice() else {
                return None;
            };
            let user = owner.split(':').next()?;
            path.starts_with('/')
                .then(|| (user.to_owned(), (*path).to_owned()))
        })
        .collect()
}

fn overlay(dir: &Path, prefix: &str, into: &mut BTreeMap<String, PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let image_path = format!("{prefix}/{name}");
        if path.is_dir() {
            overlay(&path, &image_path, into)?;
        } else {
            into.insert(image_path, path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_uid_is_debians_first_unless_given() {
        assert_eq!(
            added_users(r#"apt-get update && adduser --disabled-password --gecos "" s6"#),
            vec![("s6".to_owned(), 1000)]
        );
        assert_eq!(
            added_users("useradd -u 1500 jitsi"),
            vec![("jitsi".to_owned(), 1500)]
        );
    }

    #[test]
    fn the_final_stage_keeps_global_args() {
        let stage = final_stage("ARG A=1\nFROM x AS builder\nRUN make\nFROM y\nUSER s6\n");
        let names: Vec<&str> = stage.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(names, ["ARG", "FROM", "USER"]);
    }

    #[test]
    fn env_lines_in_both_forms() {
        assert_eq!(
            key_values("S6_READ_ONLY_ROOT=1"),
            vec![("S6_READ_ONLY_ROOT".into(), "1".into())]
        );
        assert_eq!(
            key_values("LANG C.UTF-8"),
            vec![("LANG".into(), "C.UTF-8".into())]
        );
    }
}
