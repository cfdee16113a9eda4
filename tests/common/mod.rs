//! Running the real `kiln` binary from integration tests: with a timeout
//! after which the VM is killed, captured output, and the exit code.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a finished kiln run left behind.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code (None if killed by a signal).
    pub code: Option<i32>,
    /// Guest console output (or, in a sandbox, the command's stdout).
    pub stdout: String,
    /// The same, byte for byte.
    pub stdout_bytes: Vec<u8>,
    /// kiln's stderr, byte for byte.
    pub stderr_bytes: Vec<u8>,
    /// kiln's log.
    pub stderr: String,
    /// Whether the harness had to kill it at the timeout.
    pub timed_out: bool,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Outcome {
    /// kiln's error lines.
    pub fn errors(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("kiln: error:"))
            .collect()
    }

    /// The value the guest printed as `KEY=value` on a line of its own.
    pub fn reported(&self, key: &str) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
    }

    /// The status our init reported for its command (`KILN-EXIT: N`).
    pub fn exit_status(&self) -> Option<i32> {
        self.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("KILN-EXIT: ")?.parse().ok())
    }

    /// Panics with the whole output unless `cond` holds.
    pub fn check(&self, cond: bool, what: &str) {
        assert!(
            cond,
            "{what}\n--- outcome: code {:?}, timed out {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code, self.timed_out, self.stdout, self.stderr
        );
    }
}

/// The kiln binary under test.
pub fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// A kiln process being run by a test; output is collected as it comes.
pub struct Running {
    child: Child,
    start: Instant,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn collect(
    mut r: impl Read + Send + 'static,
    buf: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    })
}

impl Running {
    /// Starts `cmd` with piped stdio; stdin stays open until `close_stdin`.
    pub fn start(mut cmd: Command) -> Running {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start kiln");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Running {
            stdin: child.stdin.take(),
            child,
            start: Instant::now(),
            stdout,
            stderr,
            readers,
        }
    }

    /// Writes to kiln's stdin.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write stdin");
        stdin.flush().expect("flush stdin");
    }

    /// Takes kiln's stdin, to write it from another thread (a stream
    /// larger than a pipe holds, while the outputs are being collected).
    #[allow(dead_code)]
    pub fn take_stdin(&mut self) -> std::process::ChildStdin {
        self.stdin.take().expect("stdin open")
    }

    /// Closes kiln's stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until the guest's console output contains `pattern`.
    pub fn wait_for_stdout(&mut self, pattern: &str, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if String::from_utf8_lossy(&self.stdout.lock().unwrap()).contains(pattern) {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return String::from_utf8_lossy(&self.stdout.lock().unwrap()).contains(pattern);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The process id (for sending signals).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stops kiln with SIGTERM and collects what it left, as [`Running::wait`].
    pub fn terminate(self, timeout: Duration) -> Outcome {
        // SAFETY: kill(2) on our own child process; no memory involved.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.wait(timeout)
    }

    /// Waits up to `timeout` (from the start), killing the VM if it is still running then.
    pub fn wait(mut self, timeout: Duration) -> Outcome {
        self.close_stdin();
        let mut timed_out = false;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if self.start.elapsed() > timeout {
                timed_out = true;
                let _ = self.child.kill();
                break self.child.wait().expect("wait after kill");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.start.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let text =
            |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
        Outcome {
            code: status.code(),
            stdout: text(&self.stdout),
            stderr: text(&self.stderr),
            stdout_bytes: self.stdout.lock().unwrap().clone(),
            stderr_bytes: self.stderr.lock().unwrap().clone(),
            timed_out,
            elapsed,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Never leave a kiln process behind, also when a test panics.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` as `cmd | head -1` would: reads the first line of its
/// stdout, closes the pipe, and waits up to `timeout` (from the start) for
/// it to exit, killing it then. The outcome's stdout is that line.
pub fn first_line_then_close(mut cmd: Command, timeout: Duration) -> Outcome {
    use std::io::BufRead;
    let start = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start kiln");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let reader = collect(child.stderr.take().expect("stderr"), stderr.clone());
    let mut first = String::new();
    {
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let _ = out.read_line(&mut first);
    }
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    let stderr_bytes = stderr.lock().unwrap().clone();
    Outcome {
        code: status.code(),
        stdout: first.clone(),
        stdout_bytes: first.into_bytes(),
        stderr: String::from_utf8_lossy(&stderr_bytes).into_owned(),
        stderr_bytes,
        timed_out,
        elapsed: start.elapsed(),
    }
}

/// Runs kiln with `args` and no input, killing it after `timeout`.
pub fn run(args: &[&str], timeout: Duration) -> Outcome {
    let mut cmd = kiln();
    cmd.args(args);
    Running::start(cmd).wait(timeout)
}

/// A scratch directory for one test, removed at the end.
pub fn scratch(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Writes `script` as a raw disk image (padded with newlines to whole
/// sectors) that the guest runs with `sh /dev/vdX`: Linux hands init at
/// most 32 arguments, so longer guest commands travel on a disk.
pub fn script_disk(dir: &std::path::Path, script: &str) -> PathBuf {
    let mut bytes = script.as_bytes().to_vec();
    bytes.push(b'\n');
    let len = bytes.len().next_multiple_of(512);
    bytes.resize(len, b'\n');
    let path = dir.join("script.img");
    std::fs::write(&path, bytes).expect("script disk");
    path
}

/// A guest artifact under build/guest (kernels, initramfs, rootfs);
/// `missing` says which set-up command makes it.
pub fn guest_artifact(rel: &str, missing: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("build/guest")
        .join(rel);
    assert!(p.exists(), "{} is missing: {missing}", p.display());
    p
}

/// The SHA-256 of `data`, in hex, by sha256sum.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The SHA-256 of a file, in hex.
pub fn sha256_of(path: &std::path::Path) -> String {
    sha256_hex(&std::fs::read(path).expect("readable file"))
}
