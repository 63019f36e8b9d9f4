//! Processes of the local environment: started detached (their own process group, output appended to a
//! log) so that Ctrl-C at the terminal does not reach them, recognised by their command line so that a
//! recycled PID is never signalled, and fed on stdin.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Starts `program` in its own process group with stdout and stderr appended to `log`; returns its PID.
/// The caller keeps no handle: the process outlives it (the cluster outlives `cargo xtask cluster up`).
pub fn spawn_detached(program: &Path, args: &[String], log: &Path) -> std::io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()?;
    Ok(child.id())
}

/// Whether `pid` runs (exists and is not a zombie). Right after a spawn, `/proc/<pid>/cmdline` can still
/// be empty, so this is the check for a process just started.
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the command name, which is in parentheses and may contain spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z")
}

/// Whether `pid` is a live process whose command line mentions `marker` (the cluster's folder), so a PID
/// recycled since an earlier run is never taken for ours.
pub fn is_ours(pid: u32, marker: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    !cmdline.is_empty()
        && is_running(pid)
        && String::from_utf8_lossy(&cmdline).contains(marker.to_string_lossy().as_ref())
}

/// Runs `command` to the end with `stdin` written to it, capturing stdout and stderr.
pub fn output_with_stdin(command: &mut Command, stdin: &[u8]) -> std::io::Result<Output> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Written from a thread of its own while the output is read: a program that writes as it reads
    // (kubectl, object by object) would otherwise fill its output pipe and both would wait forever.
    let writer = child.stdin.take().map(|mut pipe| {
        let input = stdin.to_vec();
        // A program that exits without reading all its input closes the pipe: its output tells why.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
    let output = child.wait_with_output();
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    output
}

/// The last `lines` lines of a log, for error messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_reaches_the_command() {
        let output = output_with_stdin(&mut Command::new("cat"), b"hello").unwrap();
        assert!(output.status.success());
        assert_eq!(output.stdout, b"hello");
    }

    #[test]
    fn this_process_runs_and_a_marker_it_lacks_is_not_ours() {
        assert!(is_running(std::process::id()));
        assert!(!is_ours(std::process::id(), Path::new("/no/such/marker/folder")));
        assert!(!is_running(u32::MAX));
    }
}
