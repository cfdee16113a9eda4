//! Sandbox templates: a snapshot of the sandbox guest taken the moment
//! its agent first says HELLO (booted, idle, waiting for a command), kept
//! in a cache keyed by everything the guest depends on, and restored for
//! every later `kiln run -- CMD` instead of a boot. The restored agent's
//! vsock connection is gone (the device tells it so), it connects to the
//! new kiln, and SETUP gives it its own clock, entropy and names.
//!
//! Where: `$KILN_CACHE_DIR/templates`, else `/var/cache/kiln/templates`
//! for root, else `$XDG_CACHE_HOME/kiln/templates` (`~/.cache/...`). One
//! directory per key (CRC-64 of the key text), holding `key` (the text,
//! compared on use), `state` and `memory`; it appears whole (written
//! under a temporary name, then renamed) or not at all.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::api::types::{SnapshotCreateParams, Vm, VmState};
use crate::api::{Request, Response};
use crate::config::VmConfig;
use crate::snapshot::Files;
use crate::vmm::Requester;

/// Templates kept per cache: the newest ones; older ones are removed when
/// a new one is made.
const KEEP: usize = 4;

/// A template's place in the cache.
#[derive(Debug, Clone)]
pub struct Template {
    /// Its directory.
    pub dir: PathBuf,
    /// What it was made from (the key's text).
    pub key: String,
}

/// Where templates live.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_CACHE_DIR") {
        return PathBuf::from(dir).join("templates");
    }
    // SAFETY: geteuid(2) cannot fail and takes no pointers.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/kiln/templates");
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("kiln/templates")
}

/// A file's identity for the key: path, device, inode, size, mtime.
fn file_line(what: &str, path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{what} {} {} {} {} {}.{}",
            path.display(),
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(_) => format!("{what} {} missing", path.display()),
    }
}

/// The key of a sandbox VM: kiln (version, snapshot format, the binary
/// itself), the guest's files, its machine and command line, the host
/// kind. Anything that changes gives another template.
pub fn key(config: &VmConfig) -> String {
    let mut lines = vec![
        format!(
            "kiln {} snapshot-format {}",
            env!("CARGO_PKG_VERSION"),
            crate::snapshot::FORMAT_VERSION
        ),
        file_line("exe", Path::new("/proc/self/exe")),
        file_line("kernel", &config.kernel),
    ];
    if let Some(initrd) = &config.initrd {
        lines.push(file_line("initrd", initrd));
    }
    for d in &config.disks {
        lines.push(file_line("disk", &d.path));
    }
    lines.push(format!(
        "cmdline {}",
        config.cmdline.as_deref().unwrap_or_default()
    ));
    lines.push(format!(
        "cpus {} memory {} acpi {}",
        config.cpus, config.mem_size, !config.no_acpi
    ));
    lines.push(format!(
        "host {} nested-pvm {} timer-gap-ms {}",
        crate::snapshot::host_cpu_vendor(),
        crate::pvm::detect(),
        config.timer_gap.as_millis()
    ));
    lines.join("\n") + "\n"
}

impl Template {
    /// The template for `config` (it may not exist yet).
    pub fn for_config(config: &VmConfig) -> Template {
        let key = key(config);
        let dir = cache_dir().join(format!(
            "{:016x}",
            crate::snapshot::checksum(key.as_bytes())
        ));
        Template { dir, key }
    }

    /// Its snapshot's files, when the template exists and was made from
    /// this very key.
    pub fn files(&self) -> Option<Files> {
        let key = std::fs::read_to_string(self.dir.join("key")).ok()?;
        let files = Files {
            state: self.dir.join("state"),
            memory: self.dir.join("memory"),
        };
        (key == self.key && files.state.is_file() && files.memory.is_file()).then_some(files)
    }

    /// Removes the template (it could not be restored).
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Takes the template from the running VM behind `vmm`: pause,
    /// snapshot into a temporary directory, resume, then move it into
    /// place. Failures are logged: the sandbox goes on without.
    pub fn create(&self, vmm: &Requester) {
        let t = std::time::Instant::now();
        match self.try_create(vmm) {
            Ok(()) => log::info!(
                "sandbox: template saved in {:.0} ms: {}",
                t.elapsed().as_secs_f64() * 1000.0,
                self.dir.display()
            ),
            Err(e) => log::warn!("sandbox: no template saved: {e}"),
        }
    }

    fn try_create(&self, vmm: &Requester) -> Result<(), String> {
        let parent = self.dir.parent().ok_or("no cache directory")?;
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(parent)
            .map_err(|e| format!("cannot create a directory in {}: {e}", parent.display()))?;
        std::fs::write(tmp.path().join("key"), &self.key).map_err(|e| e.to_string())?;
        let ask = |r: Request| match vmm.call(r) {
            Response::BadRequest(e) => Err(e),
            _ => Ok(()),
        };
        ask(Request::PatchVm(Vm {
            state: VmState::Paused,
        }))?;
        let made = ask(Request::CreateSnapshot(SnapshotCreateParams {
            snapshot_path: tmp.path().join("state"),
            mem_file_path: tmp.path().join("memory"),
            snapshot_type: None,
        }));
        ask(Request::PatchVm(Vm {
            state: VmState::Resumed,
        }))?;
        made?;
        let tmp = tmp.keep();
        if let Err(e) = std::fs::rename(&tmp, &self.dir) {
            // Another kiln made the same template first: keep theirs.
            let _ = std::fs::remove_dir_all(&tmp);
            if !self.dir.is_dir() {
                return Err(format!("cannot move it into place: {e}"));
            }
        }
        prune(parent, &self.dir);
        Ok(())
    }
}

/// Keeps the [`KEEP`] newest templates in `dir` (and `keep` always).
fn prune(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut templates: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    templates.sort_by_key(|t| std::cmp::Reverse(t.0));
    for (_, path) in templates.into_iter().skip(KEEP) {
        if path != keep {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> VmConfig {
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, b"kernel").unwrap();
        let machine = crate::snapshot::MachineConfig {
            cpus: 1,
            mem_size: 256 << 20,
            no_acpi: false,
            disks: vec![],
            nets: vec![],
            vsock: None,
        };
        let mut c = VmConfig::for_machine(&machine, crate::config::ConsoleMode::None, 0).unwrap();
        c.kernel = kernel;
        c.cmdline = Some("rdinit=/sbin/kiln-agent quiet".into());
        c
    }

    #[test]
    fn the_key_follows_everything_the_guest_depends_on() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let t = Template::for_config(&c);
        assert_eq!(t.key, Template::for_config(&c).key, "stable");
        let mut more = c.clone();
        more.mem_size = 512 << 20;
        let mut cmdline = c.clone();
        cmdline.cmdline = Some("quiet".into());
        let mut cpus = c.clone();
        cpus.cpus = 2;
        for other in [more, cmdline, cpus] {
            assert_ne!(Template::for_config(&other).dir, t.dir);
        }
        // A rebuilt kernel (new size and mtime) is another template.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&c.kernel, b"kernel, rebuilt").unwrap();
        assert_ne!(Template::for_config(&c).dir, t.dir);
    }

    #[test]
    fn a_template_is_used_only_when_whole_and_of_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let t = Template {
            dir: dir.path().join("t"),
            key: "k\n".into(),
        };
        assert!(t.files().is_none());
        std::fs::create_dir_all(&t.dir).unwrap();
        std::fs::write(t.dir.join("key"), "k\n").unwrap();
        std::fs::write(t.dir.join("state"), "s").unwrap();
        assert!(t.files().is_none(), "no memory file");
        std::fs::write(t.dir.join("memory"), "m").unwrap();
        assert!(t.files().is_some());
        std::fs::write(t.dir.join("key"), "other\n").unwrap();
        assert!(t.files().is_none(), "another key (a checksum collision)");
        t.discard();
        assert!(!t.dir.exists());
    }

    #[test]
    fn pruning_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..7 {
            std::fs::create_dir(dir.path().join(format!("t{i}"))).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        std::fs::create_dir(dir.path().join(".tmp-x")).unwrap();
        prune(dir.path(), &dir.path().join("t0"));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".tmp-x", "t0", "t3", "t4", "t5", "t6"]);
    }
}
