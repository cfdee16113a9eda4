//! Firecracker's REST API over a Unix socket.
//!
//! [`ApiServer::start`] binds the socket and starts a thread named `api`
//! that serves one request at a time: it parses each into a [`Request`]
//! (paths, methods, bodies and error messages as Firecracker's swagger file
//! and its API server have them), hands it to the VMM over a channel, wakes
//! the VMM's event loop through an eventfd, and writes the VMM's
//! [`Response`] back. Requests that are malformed never reach the VMM: they
//! get Firecracker's answer, `400` with `{"fault_message": "..."}`.
//!
//! Bodies are capped at [`MAX_BODY_SIZE`]. When tiny_http drops a request
//! whose declared `Content-Length` was not read, it reads and discards the
//! rest of that body (clients that got the `400` and close the connection,
//! as curl does, end that at once), into a buffer it allocates at the full
//! remaining length: a `Content-Length` of 10^14 would abort the process.
//! Bodies declared above 16 MiB are therefore answered on a
//! connection taken away from tiny_http and never handed back.

mod http;
pub mod types;

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tiny_http::Server;
use vmm_sys_util::eventfd::EventFd;

use self::http::{parse, read_body, refuse_undrained, respond, Parsed};
use self::types::BodyError;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_SIZE: usize = 64 * 1024;

/// Declared body sizes above this are refused without tiny_http's drain.
const MAX_DRAINED_BODY: usize = 16 << 20;

/// How often the API thread, waiting for the VMM, checks for shutdown.
const VMM_POLL: Duration = Duration::from_millis(50);

/// How long dropping an [`ApiServer`] waits for its thread.
const JOIN_TIMEOUT: Duration = Duration::from_secs(1);

/// One parsed API request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `GET /`: the VMM answers with an `InstanceInfo`.
    GetInstanceInfo,
    /// `GET /version`: the VMM answers with a `FirecrackerVersion`.
    GetVersion,
    /// `GET /machine-config`: the VMM answers with a `MachineConfiguration`.
    GetMachineConfig,
    /// `GET /vm/config`: the VMM answers with a `FullVmConfiguration`.
    GetVmConfig,
    /// `PUT /boot-source`.
    PutBootSource(types::BootSource),
    /// `PUT /machine-config`.
    PutMachineConfig(types::MachineConfiguration),
    /// `PATCH /machine-config` (at least one field is set).
    PatchMachineConfig(types::MachineConfigurationPatch),
    /// `PUT /drives/{drive_id}` (the path's id equals `drive_id`).
    PutDrive(types::Drive),
    /// `PUT /network-interfaces/{iface_id}` (the path's id equals
    /// `iface_id`; `guest_mac`, if any, is a valid MAC address).
    PutNetworkInterface(types::NetworkInterface),
    /// `PUT /vsock`.
    PutVsock(types::Vsock),
    /// `PUT /logger`.
    PutLogger(types::Logger),
    /// `PUT /actions`.
    Action(types::InstanceActionInfo),
    /// `PATCH /vm`.
    PatchVm(types::Vm),
    /// `PUT /snapshot/create`.
    CreateSnapshot(types::SnapshotCreateParams),
    /// `PUT /snapshot/load` (exactly one of `mem_backend` and
    /// `mem_file_path` is set: [`types::SnapshotLoadParams::memory`] is Ok).
    LoadSnapshot(types::SnapshotLoadParams),
}

/// The VMM's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// 204 No Content (successful PUT/PATCH).
    NoContent,
    /// 200 with a JSON body.
    Json(serde_json::Value),
    /// An error: 400 with Firecracker's body `{"fault_message": "..."}`.
    BadRequest(String),
}

impl Response {
    /// 200 with `v` as its JSON body.
    pub fn json<T: serde::Serialize>(v: &T) -> Response {
        match serde_json::to_value(v) {
            Ok(v) => Response::Json(v),
            Err(e) => Response::BadRequest(format!("cannot encode the answer: {e}")),
        }
    }
}

/// What the API thread sends to the VMM: a request, and where to answer.
pub type VmmMessage = (Request, Sender<Response>);

/// Errors of the API server: the socket cannot be set up, or (as the
/// `fault_message` of a 400 answer) a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket path holds something that is not a socket.
    #[error("API socket path {} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// A live server listens on the socket path.
    #[error("API socket {} is in use by another process", .0.display())]
    InUse(PathBuf),
    /// The socket path could not be checked.
    #[error("cannot check API socket path {}: {}", .0.display(), .1)]
    Probe(PathBuf, #[source] io::Error),
    /// A stale socket could not be removed.
    #[error("cannot remove stale API socket {}: {}", .0.display(), .1)]
    RemoveStale(PathBuf, #[source] io::Error),
    /// The socket could not be bound.
    #[error("cannot bind API socket {}: {}", .0.display(), .1)]
    Bind(PathBuf, #[source] io::Error),
    /// tiny_http refused the listener.
    #[error("cannot start the HTTP server on {}: {}", .0.display(), .1)]
    Http(PathBuf, String),
    /// The `api` thread could not be started.
    #[error("cannot start the API thread: {0}")]
    Spawn(#[source] io::Error),
    /// The `api` thread could not narrow its system calls.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// No such path, or not with this method: (method, path).
    #[error("Invalid request method and/or path: {0} {1}.")]
    InvalidPathMethod(String, String),
    /// A GET with a body.
    #[error("GET request cannot have a body.")]
    GetWithBody,
    /// A PUT or PATCH without a body (or a PATCH that changes nothing).
    #[error("Empty {0} request.")]
    EmptyBody(&'static str),
    /// `/drives/` or `/network-interfaces/` without an id.
    #[error("The ID cannot be empty.")]
    EmptyId,
    /// An id with other characters than alphanumerics and `_`.
    #[error("API Resource IDs can only contain alphanumeric characters and underscores.")]
    InvalidId,
    /// The drive id of the path is not the body's.
    #[error("The id from the path does not match the id from the body!")]
    DriveIdMismatch,
    /// The interface id of the path (first) is not the body's (second).
    #[error("The id from the path [{0}] does not match the id from the body [{1}]!")]
    IfaceIdMismatch(String, String),
    /// `PUT /snapshot` without `create` or `load`.
    #[error("Missing snapshot operation type.")]
    MissingSnapshotOp,
    /// The body is not the JSON the path wants.
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Json(#[from] serde_json::Error),
    /// The body is JSON of the right shape, but breaks a rule of the API.
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Body(#[from] BodyError),
    /// The body is larger than [`MAX_BODY_SIZE`] (its declared size, if any).
    #[error("Request payload{} is larger than the limit of {MAX_BODY_SIZE} allowed by server.",
        .0.map(|n| format!(" with size {n}")).unwrap_or_default())]
    BodyTooLarge(Option<usize>),
    /// The body could not be read.
    #[error("Cannot read the request body: {0}.")]
    ReadBody(#[source] io::Error),
    /// The VMM no longer takes requests.
    #[error("The VMM is gone; the request was not carried out.")]
    VmmGone,
    /// The server is stopping and did not wait for the VMM's answer.
    #[error("The API server is shutting down; the request may or may not have been carried out.")]
    ShuttingDown,
}

/// What the API thread needs to serve requests.
struct Worker {
    server: Arc<Server>,
    to_vmm: Sender<VmmMessage>,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    abandoned: Arc<AtomicBool>,
}

impl Worker {
    /// Serves requests until told to stop.
    fn run(self) {
        while !self.stop.load(Ordering::Acquire) {
            match self.server.recv() {
                Ok(request) => self.serve(request),
                Err(e) if !self.stop.load(Ordering::Acquire) => {
                    log::error!("API server: {e}");
                }
                Err(_) => break,
            }
        }
        if self.abandoned.load(Ordering::Acquire) {
            // ApiServer's drop gave up waiting for us and removed the socket
            // itself: dropping the last handle now would make tiny_http
            // remove whatever the path holds by then.
            std::mem::forget(self.server);
        }
    }

    /// Answers one HTTP request.
    fn serve(&self, mut http: tiny_http::Request) {
        let method = http.method().clone();
        let url = http.url().to_string();
        log::info!("API request: {method} {url}");
        if let Some(len) = http.body_length().filter(|&len| len > MAX_DRAINED_BODY) {
            let message = ApiError::BodyTooLarge(Some(len)).to_string();
            log::warn!("API request {method} {url} failed: {message}");
            return refuse_undrained(http, &message);
        }
        let parsed = read_body(&mut http).and_then(|body| parse(&method, &url, &body));
        let (answer, deprecated) = match parsed {
            Ok(Parsed {
                request,
                deprecated,
            }) => (self.ask_vmm(request), deprecated),
            Err(e) => (Response::BadRequest(e.to_string()), false),
        };
        if let Response::BadRequest(message) = &answer {
            log::warn!("API request {method} {url} failed: {message}");
        }
        respond(http, &answer, deprecated);
    }

    /// Hands `request` to the VMM and waits for its answer.
    fn ask_vmm(&self, request: Request) -> Response {
        let (reply_to, reply) = mpsc::channel();
        if self.to_vmm.send((request, reply_to)).is_err() {
            return Response::BadRequest(ApiError::VmmGone.to_string());
        }
        if let Err(e) = self.wake.write(1) {
            log::error!("API server: cannot wake the VMM: {e}");
        }
        loop {
            match reply.recv_timeout(VMM_POLL) {
                Ok(answer) => return answer,
                Err(RecvTimeoutError::Disconnected) => {
                    return Response::BadRequest(ApiError::VmmGone.to_string())
                }
                Err(RecvTimeoutError::Timeout) if self.stop.load(Ordering::Acquire) => {
                    return Response::BadRequest(ApiError::ShuttingDown.to_string())
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// Identity of a file: device and inode.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Makes `path` free for binding: nothing there is fine, a socket nobody
/// listens on is removed, anything else is refused.
fn clear_stale_socket(path: &Path) -> Result<(), ApiError> {
    let probe = |e| ApiError::Probe(path.to_path_buf(), e);
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(probe(e)),
    };
    if !metadata.file_type().is_socket() {
        return Err(ApiError::NotASocket(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ApiError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale API socket {}", path.display());
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(ApiError::RemoveStale(path.to_path_buf(), e))
                }
                _ => Ok(()),
            }
        }
        Err(e) => Err(probe(e)),
    }
}

/// A running API server; stops its thread and removes the socket file on drop.
pub struct ApiServer {
    path: PathBuf,
    /// Device and inode of the socket file we bound.
    socket_id: Option<(u64, u64)>,
    server: Option<Arc<Server>>,
    stop: Arc<AtomicBool>,
    abandoned: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` (a stale socket there is replaced; a live socket or
    /// anything else is refused) and starts the `api` thread, which sends
    /// each valid request with a reply channel on `to_vmm`, writes 1 to
    /// `wake`, and answers the client with the VMM's [`Response`].
    pub fn start(
        path: &Path,
        to_vmm: Sender<VmmMessage>,
        wake: Arc<EventFd>,
    ) -> Result<ApiServer, ApiError> {
        clear_stale_socket(path)?;
        let listener = UnixListener::bind(path).map_err(|source| {
            if source.kind() == io::ErrorKind::AddrInUse {
                ApiError::InUse(path.to_path_buf())
            } else {
                ApiError::Bind(path.to_path_buf(), source)
            }
        })?;
        let socket_id = file_id(path);
        let stop = Arc::new(AtomicBool::new(false));
        let abandoned = Arc::new(AtomicBool::new(false));
        let (thread_stop, thread_abandoned) = (stop.clone(), abandoned.clone());
        let thread_path = path.to_path_buf();
        // The thread narrows its system calls first, then starts the HTTP
        // server, whose accept and pool threads inherit its filter.
        let (started_tx, started) = mpsc::channel();
        let thread = thread::Builder::new().name("api".into()).spawn(move || {
            if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Api) {
                let _ = started_tx.send(Err(ApiError::Seccomp(e)));
                return;
            }
            let server = match Server::from_listener(listener, None) {
                Ok(server) => Arc::new(server),
                Err(e) => {
                    let _ = started_tx.send(Err(ApiError::Http(thread_path, e.to_string())));
                    return;
                }
            };
            let _ = started_tx.send(Ok(server.clone()));
            Worker {
                server,
                to_vmm,
                wake,
                stop: thread_stop,
                abandoned: thread_abandoned,
            }
            .run()
        });
        let failed = |e| {
            let _ = fs::remove_file(path);
            e
        };
        let thread = thread.map_err(|e| failed(ApiError::Spawn(e)))?;
        let server = match started.recv() {
            Ok(Ok(server)) => server,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(failed(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(failed(ApiError::Spawn(io::Error::other(
                    "it ended at its start",
                ))));
            }
        };
        log::info!("API server listening on {}", path.display());
        Ok(ApiServer {
            path: path.to_path_buf(),
            socket_id,
            server: Some(server),
            stop,
            abandoned,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(server) = &self.server {
            server.unblock();
        }
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + JOIN_TIMEOUT;
            while !thread.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                log::warn!("API thread is stuck on a client; leaving it behind");
                self.abandoned.store(true, Ordering::Release);
            }
        }
        // The last handle stops tiny_http's accept thread and removes the
        // socket file; if the API thread still holds one, remove it here.
        self.server = None;
        let path = self.path();
        if self.socket_id.is_some() && file_id(path) == self.socket_id {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};

    use serde_json::json;

    use super::types::*;
    use super::*;

    /// An answer as the client sees it.
    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: String,
        body: String,
    }

    impl Reply {
        fn fault(&self) -> String {
            assert_eq!(self.status, 400, "{self:?}");
            assert!(self.headers.contains("Content-Type: application/json"));
            serde_json::from_str::<types::Error>(&self.body)
                .unwrap()
                .fault_message
        }
    }

    fn read_reply(reader: &mut impl BufRead) -> Reply {
        let mut line = String::new();
        let (mut status, mut headers, mut len) = (100, String::new(), 0);
        while status < 200 {
            line.clear();
            reader.read_line(&mut line).unwrap();
            status = line.split(' ').nth(1).unwrap().parse().unwrap();
            headers.clear();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                headers.push_str(&line);
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let body = String::from_utf8(body).unwrap();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A request as `curl --unix-socket S -X METHOD http://localhost/URL -d BODY` sends it.
    fn curl(method: &str, url: &str, body: Option<&str>) -> String {
        let head = format!("{method} {url} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n");
        match body {
            Some(b) => format!(
                "{head}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            None => format!("{head}\r\n"),
        }
    }

    fn send(path: &Path, raw: &[u8]) -> Reply {
        let stream = UnixStream::connect(path).unwrap();
        (&stream).write_all(raw).unwrap();
        read_reply(&mut BufReader::new(stream))
    }

    /// An API server with a fake VMM thread behind it.
    struct Harness {
        _dir: tempfile::TempDir,
        path: PathBuf,
        server: Option<ApiServer>,
        seen: mpsc::Receiver<Request>,
    }

    impl Harness {
        /// The fake VMM waits for the eventfd like an event loop, records
        /// each request and answers with `answer`.
        fn start(answer: fn(&Request) -> Option<Response>) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("api.sock");
            let (to_vmm, from_api) = mpsc::channel::<VmmMessage>();
            let wake = Arc::new(EventFd::new(0).unwrap());
            let (record, seen) = mpsc::channel();
            let server = ApiServer::start(&path, to_vmm, wake.clone()).unwrap();
            thread::spawn(move || {
                for (request, reply) in from_api {
                    assert_eq!(wake.read().unwrap(), 1);
                    record.send(request.clone()).unwrap();
                    if let Some(response) = answer(&request) {
                        reply.send(response).unwrap();
                    }
                }
            });
            Harness {
                _dir: dir,
                path,
                server: Some(server),
                seen,
            }
        }

        fn call(&self, method: &str, url: &str, body: Option<&str>) -> Reply {
            send(&self.path, curl(method, url, body).as_bytes())
        }

        /// Sends a request that must succeed with 204; what the VMM got.
        fn ok(&self, method: &str, url: &str, body: &str) -> Request {
            let reply = self.call(method, url, Some(body));
            assert_eq!(reply.status, 204, "{reply:?}");
            assert!(reply.body.is_empty() && !reply.headers.contains("Content-Type"));
            self.got()
        }

        /// The one request the VMM got since the last call.
        fn got(&self) -> Request {
            let request = self.seen.try_recv().expect("the VMM got no request");
            assert!(self.seen.try_recv().is_err(), "the VMM got more requests");
            request
        }
    }

    fn answer(request: &Request) -> Option<Response> {
        Some(match request {
            Request::GetInstanceInfo => Response::Json(json!({
                "app_name": "kiln", "id": "vm0", "state": "Running", "vmm_version": "0.1.0"
            })),
            Request::PutBootSource(b) if b.kernel_image_path == Path::new("/missing") => {
                Response::BadRequest("The kernel file cannot be opened".into())
            }
            _ => Response::NoContent,
        })
    }

    #[test]
    fn requests_reach_the_vmm_and_answers_come_back() {
        let vm = Harness::start(answer);
        let body = r#"{"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0 reboot=k"}"#;
        let want = BootSource {
            kernel_image_path: "/vmlinux".into(),
            boot_args: Some("console=ttyS0 reboot=k".into()),
            initrd_path: None,
        };
        assert_eq!(
            vm.ok("PUT", "/boot-source", body),
            Request::PutBootSource(want)
        );
        // The VMM's own refusal is a 400 with its message.
        let r = vm.call(
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/missing"}"#),
        );
        assert_eq!(r.fault(), "The kernel file cannot be opened");
        vm.got();
        let r = vm.call("GET", "/", None);
        assert_eq!(r.status, 200);
        assert!(
            r.headers.contains("Content-Type: application/json"),
            "{r:?}"
        );
        let info: InstanceInfo = serde_json::from_str(&r.body).unwrap();
        assert_eq!((info.id.as_str(), info.state.as_str()), ("vm0", "Running"));
        assert_eq!(vm.got(), Request::GetInstanceInfo);

        let paused = Request::PatchVm(Vm {
            state: VmState::Paused,
        });
        assert_eq!(vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#), paused);
        let body = r#"{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Full"}"#;
        let want = SnapshotCreateParams {
            mem_file_path: "/m".into(),
            snapshot_path: "/s".into(),
            snapshot_type: Some(SnapshotType::Full),
        };
        assert_eq!(
            vm.ok("PUT", "/snapshot/create", body),
            Request::CreateSnapshot(want)
        );

        let body = r#"{"snapshot_path": "/s", "resume_vm": true,
            "mem_backend": {"backend_type": "Uffd", "backend_path": "/uffd.sock"}}"#;
        let Request::LoadSnapshot(p) = vm.ok("PUT", "/snapshot/load", body) else {
            panic!()
        };
        let uffd = MemoryBackend {
            backend_type: MemoryBackendType::Uffd,
            backend_path: "/uffd.sock".into(),
        };
        assert_eq!((p.memory().unwrap(), p.resume_vm), (uffd, Some(true)));
        // The deprecated form works, and says so.
        let r = vm.call(
            "PUT",
            "/snapshot/load",
            Some(r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#),
        );
        assert!(
            r.status == 204 && r.headers.contains("Deprecation: true"),
            "{r:?}"
        );
        let Request::LoadSnapshot(p) = vm.got() else {
            panic!()
        };
        assert_eq!(p.memory().unwrap().backend_type, MemoryBackendType::File);
    }

    #[test]
    fn bad_requests_never_reach_the_vmm() {
        let vm = Harness::start(answer);
        let drive = r#"{"drive_id": "data", "path_on_host": "/d", "is_root_device": false}"#;
        let both = r#"{"snapshot_path": "/s", "mem_file_path": "/m",
            "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#;
        for (method, url, body, want) in [
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 2,"#,
                "EOF while parsing a value",
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 2, "mem_size_mib": 256, "memory": 1}"#,
                "unknown field `memory`",
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 2}"#,
                "missing field `mem_size_mib`",
            ),
            (
                "PUT",
                "/drives/rootfs",
                drive,
                "The id from the path does not match the id from the body!",
            ),
            (
                "PUT",
                "/nowhere",
                "{}",
                "Invalid request method and/or path: PUT /nowhere.",
            ),
            ("PUT", "/snapshot/load", both, "too many fields"),
        ] {
            let fault = vm.call(method, url, Some(body)).fault();
            assert!(fault.contains(want), "{url}: {fault}");
        }
        assert!(vm.seen.try_recv().is_err());
        // The connection survives errors (keep-alive, as curl uses it).
        let stream = UnixStream::connect(&vm.path).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        (&stream)
            .write_all(curl("GET", "/nope", None).as_bytes())
            .unwrap();
        assert_eq!(read_reply(&mut reader).status, 400);
        let start = curl(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
        );
        (&stream).write_all(start.as_bytes()).unwrap();
        assert_eq!(read_reply(&mut reader).status, 204);
        let want = InstanceActionInfo {
            action_type: ActionType::InstanceStart,
        };
        assert_eq!(vm.got(), Request::Action(want));
    }

    #[test]
    fn oversized_bodies_are_refused_unread() {
        let vm = Harness::start(answer);
        let big = format!(
            r#"{{"kernel_image_path": "/k", "boot_args": "{}"}}"#,
            "x".repeat(MAX_BODY_SIZE)
        );
        let fault = vm.call("PUT", "/boot-source", Some(&big)).fault();
        assert_eq!(
            fault,
            format!(
                "Request payload with size {} is larger than the limit of 65536 allowed by server.",
                big.len()
            )
        );
        // curl announces big bodies and waits: no "100 Continue", a 400 at once.
        let head = "PUT /boot-source HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1073741824\r\nExpect: 100-continue\r\n\r\n";
        let reply = send(&vm.path, head.as_bytes());
        assert!(reply.fault().contains("with size 1073741824"));
        // An absurd length is refused without tiny_http's drain (which
        // would allocate it: abort), on a connection the client must close.
        let head = "PUT /boot-source HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000000000\r\n\r\n";
        let reply = send(&vm.path, head.as_bytes());
        assert!(reply.fault().contains("with size 100000000000000"));
        assert!(reply.headers.contains("Connection: close"), "{reply:?}");
        // A chunked body is cut at the limit.
        let stream = UnixStream::connect(&vm.path).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let feeder = thread::spawn(move || {
            let _ = writer.write_all(b"PUT /boot-source HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n");
            for _ in 0..20 {
                let _ = write!(writer, "1000\r\n{}\r\n", "y".repeat(0x1000));
            }
            let _ = writer.write_all(b"0\r\n\r\n");
        });
        let fault = read_reply(&mut BufReader::new(stream)).fault();
        assert_eq!(
            fault,
            "Request payload is larger than the limit of 65536 allowed by server."
        );
        feeder.join().unwrap();
        assert!(vm.seen.try_recv().is_err());
        // Still serving.
        assert_eq!(vm.call("GET", "/version", None).status, 204);
        assert_eq!(vm.got(), Request::GetVersion);
    }

    #[test]
    fn a_vmm_that_is_gone_gets_an_error_not_a_panic() {
        // The VMM dropped its receiver.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (to_vmm, from_api) = mpsc::channel::<VmmMessage>();
        drop(from_api);
        let server = ApiServer::start(&path, to_vmm, Arc::new(EventFd::new(0).unwrap())).unwrap();
        let fault = send(&path, curl("GET", "/", None).as_bytes()).fault();
        assert_eq!(fault, ApiError::VmmGone.to_string());
        drop(server);
        // The VMM took the request and dropped the reply channel.
        let vm = Harness::start(|_| None);
        assert_eq!(
            vm.call("GET", "/vm/config", None).fault(),
            ApiError::VmmGone.to_string()
        );
        assert_eq!(vm.got(), Request::GetVmConfig);
    }

    #[test]
    fn drop_does_not_wait_for_a_silent_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (to_vmm, from_api) = mpsc::channel::<VmmMessage>();
        let server = ApiServer::start(&path, to_vmm, Arc::new(EventFd::new(0).unwrap())).unwrap();
        let client_path = path.clone();
        let client = thread::spawn(move || send(&client_path, curl("GET", "/", None).as_bytes()));
        let (request, _reply_kept) = from_api.recv().unwrap();
        assert_eq!(request, Request::GetInstanceInfo);
        let started = Instant::now();
        drop(server);
        assert!(started.elapsed() < JOIN_TIMEOUT, "{:?}", started.elapsed());
        assert_eq!(
            client.join().unwrap().fault(),
            ApiError::ShuttingDown.to_string()
        );
        assert!(!path.exists());
    }

    #[test]
    fn drop_leaves_a_stuck_client_behind() {
        let mut vm = Harness::start(answer);
        let path = vm.path.clone();
        // A client announces a body it never sends: the API thread waits.
        let stalled = UnixStream::connect(&path).unwrap();
        let head = "PUT /boot-source HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{";
        (&stalled).write_all(head.as_bytes()).unwrap();
        thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        vm.server = None;
        let took = started.elapsed();
        assert!(took >= JOIN_TIMEOUT && took < 2 * JOIN_TIMEOUT, "{took:?}");
        assert!(!path.exists());
        // The next server on that path outlives the old thread's end.
        let (to_vmm, from_api) = mpsc::channel::<VmmMessage>();
        drop(from_api);
        let _next = ApiServer::start(&path, to_vmm, Arc::new(EventFd::new(0).unwrap())).unwrap();
        drop(stalled);
        thread::sleep(Duration::from_millis(100));
        let fault = send(&path, curl("GET", "/", None).as_bytes()).fault();
        assert_eq!(fault, ApiError::VmmGone.to_string());
        assert!(vm.seen.try_recv().is_err());
    }

    #[test]
    fn socket_file_lifecycle() {
        let mut vm = Harness::start(answer);
        let path = vm.path.clone();
        assert_eq!(vm.server.as_ref().unwrap().path(), path);
        // A live socket is refused, and keeps working.
        let (to_vmm, _from_api) = mpsc::channel::<VmmMessage>();
        let wake = Arc::new(EventFd::new(0).unwrap());
        let e = ApiServer::start(&path, to_vmm.clone(), wake.clone())
            .err()
            .unwrap();
        assert!(matches!(e, ApiError::InUse(_)), "{e}");
        assert!(e.to_string().contains("in use by another process"), "{e}");
        assert_eq!(vm.call("GET", "/", None).status, 200);
        // Drop stops the server and removes the socket.
        vm.server = None;
        assert!(!path.exists());
        // A stale socket (nobody listens) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = ApiServer::start(&path, to_vmm.clone(), wake.clone()).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(server);
        assert!(!path.exists());
        // A regular file or a directory is refused and left alone.
        fs::write(&path, "precious").unwrap();
        let e = ApiServer::start(&path, to_vmm.clone(), wake.clone())
            .err()
            .unwrap();
        assert!(matches!(e, ApiError::NotASocket(_)), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert!(matches!(
            ApiServer::start(&path, to_vmm.clone(), wake.clone()),
            Err(ApiError::NotASocket(_))
        ));
        // A path that cannot be bound.
        let e = ApiServer::start(&path.join("x/y.sock"), to_vmm, wake)
            .err()
            .unwrap();
        assert!(matches!(e, ApiError::Bind(..)), "{e}");
    }
}
