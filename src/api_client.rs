//! `kiln snapshot`: a client of a running kiln's API socket, for people
//! without curl or an SDK. It sends the requests Firecracker's snapshot
//! documentation shows: pause, create, resume.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::SnapshotArgs;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// How long one request may take (writing the memory file of a large VM
/// takes a while).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Errors of `kiln snapshot`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket cannot be reached.
    #[error("cannot reach kiln's API socket {0}: {1}; is kiln running with --api-sock {0}?")]
    Connect(PathBuf, std::io::Error),
    /// The exchange failed.
    #[error("the API socket {0} did not answer properly: {1}")]
    Exchange(PathBuf, String),
    /// kiln refused the request.
    #[error("{what} failed: {message}")]
    Refused {
        /// The step.
        what: &'static str,
        /// kiln's fault_message.
        message: String,
    },
    /// The directory cannot be made.
    #[error("cannot create the snapshot directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
}

/// One request; returns the status code and the body.
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), ClientError> {
    let mut s = UnixStream::connect(sock).map_err(|e| ClientError::Connect(sock.into(), e))?;
    let ex = |e: String| ClientError::Exchange(sock.into(), e);
    s.set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| ex(e.to_string()))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| ex(e.to_string()))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| ex(e.to_string()))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| ex(format!("no HTTP status line in {:?}", first_line(&answer))))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// The fault_message of an error body, or the body itself.
fn fault_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["fault_message"].as_str().map(String::from))
        .unwrap_or_else(|| body.trim().to_string())
}

fn expect_ok(
    sock: &Path,
    what: &'static str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(), ClientError> {
    let (status, answer) = request(sock, method, path, body)?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(ClientError::Refused {
            what,
            message: fault_message(&answer),
        })
    }
}

/// Pauses, snapshots into `args.dir`, and resumes (unless told not to).
pub fn snapshot(args: &SnapshotArgs) -> Result<PathBuf, ClientError> {
    let dir = std::path::absolute(&args.dir).map_err(|e| ClientError::Dir(args.dir.clone(), e))?;
    std::fs::create_dir_all(&dir).map_err(|e| ClientError::Dir(dir.clone(), e))?;
    let sock = &args.api_sock;
    expect_ok(
        sock,
        "pausing the VM",
        "PATCH",
        "/vm",
        r#"{"state": "Paused"}"#,
    )?;
    let body = serde_json::json!({
        "snapshot_type": "Full",
        "snapshot_path": dir.join(STATE_FILE),
        "mem_file_path": dir.join(MEMORY_FILE),
    })
    .to_string();
    let created = expect_ok(sock, "the snapshot", "PUT", "/snapshot/create", &body);
    if !args.leave_paused {
        expect_ok(
            sock,
            "resuming the VM",
            "PATCH",
            "/vm",
            r#"{"state": "Resumed"}"#,
        )?;
    }
    created.map(|()| dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_messages_are_read_out_of_error_bodies() {
        assert_eq!(fault_message(r#"{"fault_message": "no"}"#), "no");
        assert_eq!(fault_message("plain\n"), "plain");
    }

    #[test]
    fn a_missing_socket_is_named() {
        let e = request(Path::new("/nonexistent/kiln.sock"), "GET", "/", "").unwrap_err();
        assert!(e.to_string().contains("is kiln running with --api-sock"));
    }
}
