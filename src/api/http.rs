//! HTTP to [`Request`] and [`Response`] to HTTP: reading bodies within
//! the limit, routing (method, URL and body become a [`Request`], or the
//! error Firecracker would answer: see its `parsed_request.rs`), and
//! writing answers.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use tiny_http::{Header, Method};

use super::{types, ApiError, Request, Response, MAX_BODY_SIZE};

/// A parsed request, and whether it used a deprecated field (the answer
/// then carries `Deprecation: true`, as Firecracker's does).
#[derive(Debug, PartialEq)]
pub(super) struct Parsed {
    /// The request.
    pub request: Request,
    /// Whether it used a deprecated field.
    pub deprecated: bool,
}

impl From<Request> for Parsed {
    fn from(request: Request) -> Self {
        Parsed {
            request,
            deprecated: false,
        }
    }
}

/// The JSON body as a `T`.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    Ok(serde_json::from_slice(body)?)
}

/// The `{id}` of `/drives/{id}` or `/network-interfaces/{id}`, checked as
/// Firecracker checks it; `rest` is the path after the first segment.
fn checked_id<'a>(
    rest: &[&'a str],
    invalid: impl FnOnce() -> ApiError,
) -> Result<&'a str, ApiError> {
    match rest {
        [] | [""] => Err(ApiError::EmptyId),
        [id] if id.chars().all(|c| c == '_' || c.is_alphanumeric()) => Ok(id),
        [_] => Err(ApiError::InvalidId),
        _ => Err(invalid()),
    }
}

/// Turns method, URL and body into a [`Request`], or the error to answer.
pub(super) fn parse(method: &Method, url: &str, body: &[u8]) -> Result<Parsed, ApiError> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let segments: Vec<&str> = path.trim_start_matches('/').split_terminator('/').collect();
    let invalid = || ApiError::InvalidPathMethod(method.to_string(), path.to_string());
    let has_body = !body.is_empty();
    match method {
        Method::Get if has_body => return Err(ApiError::GetWithBody),
        Method::Put if !has_body => return Err(ApiError::EmptyBody("PUT")),
        Method::Patch if !has_body => return Err(ApiError::EmptyBody("PATCH")),
        Method::Get | Method::Put | Method::Patch => {}
        _ => return Err(invalid()),
    }
    let request = match (method, segments.as_slice()) {
        (Method::Get, []) => Request::GetInstanceInfo,
        (Method::Get, ["version"]) => Request::GetVersion,
        (Method::Get, ["machine-config"]) => Request::GetMachineConfig,
        (Method::Get, ["vm", "config"]) => Request::GetVmConfig,
        (Method::Put, ["boot-source"]) => Request::PutBootSource(json(body)?),
        (Method::Put, ["machine-config"]) => {
            let config: types::MachineConfiguration = json(body)?;
            let deprecated = config.cpu_template.is_some();
            let request = Request::PutMachineConfig(config);
            return Ok(Parsed {
                request,
                deprecated,
            });
        }
        (Method::Patch, ["machine-config"]) => {
            let patch: types::MachineConfigurationPatch = json(body)?;
            if patch.is_empty() {
                return Err(ApiError::EmptyBody("PATCH"));
            }
            let deprecated = patch.cpu_template.is_some();
            let request = Request::PatchMachineConfig(patch);
            return Ok(Parsed {
                request,
                deprecated,
            });
        }
        (Method::Put, ["drives", rest @ ..]) => {
            let id = checked_id(rest, invalid)?;
            let drive: types::Drive = json(body)?;
            if drive.drive_id != id {
                return Err(ApiError::DriveIdMismatch);
            }
            Request::PutDrive(drive)
        }
        (Method::Put, ["network-interfaces", rest @ ..]) => {
            let id = checked_id(rest, invalid)?;
            let iface: types::NetworkInterface = json(body)?;
            if iface.iface_id != id {
                return Err(ApiError::IfaceIdMismatch(id.to_string(), iface.iface_id));
            }
            iface.guest_mac_bytes()?;
            Request::PutNetworkInterface(iface)
        }
        (Method::Put, ["vsock"]) => {
            let vsock: types::Vsock = json(body)?;
            let deprecated = vsock.vsock_id.is_some();
            let request = Request::PutVsock(vsock);
            return Ok(Parsed {
                request,
                deprecated,
            });
        }
        (Method::Put, ["actions"]) => Request::Action(json(body)?),
        (Method::Put, ["logger"]) => Request::PutLogger(json(body)?),
        (Method::Patch, ["vm"]) => Request::PatchVm(json(body)?),
        (Method::Put, ["snapshot"]) => return Err(ApiError::MissingSnapshotOp),
        (Method::Put, ["snapshot", "create"]) => Request::CreateSnapshot(json(body)?),
        (Method::Put, ["snapshot", "load"]) => {
            let params: types::SnapshotLoadParams = json(body)?;
            params.memory()?;
            let deprecated = params.uses_deprecated_fields();
            let request = Request::LoadSnapshot(params);
            return Ok(Parsed {
                request,
                deprecated,
            });
        }
        _ => return Err(invalid()),
    };
    Ok(request.into())
}

/// Reads the body, refusing one over [`MAX_BODY_SIZE`] without reading it
/// (a declared length) or past the limit (a chunked body).
pub(super) fn read_body(request: &mut tiny_http::Request) -> Result<Vec<u8>, ApiError> {
    let declared = request.body_length();
    if let Some(len) = declared.filter(|&len| len > MAX_BODY_SIZE) {
        return Err(ApiError::BodyTooLarge(Some(len)));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    request
        .as_reader()
        .take(MAX_BODY_SIZE as u64 + 1)
        .read_to_end(&mut body)
        .map_err(ApiError::ReadBody)?;
    if body.len() > MAX_BODY_SIZE {
        return Err(ApiError::BodyTooLarge(None));
    }
    Ok(body)
}

/// A header; `name` and `value` are ASCII constants.
fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name, value).expect("constant header is valid")
}

/// The HTTP form of an answer.
fn http_response(answer: &Response, deprecated: bool) -> tiny_http::Response<io::Cursor<Vec<u8>>> {
    let (status, body) = match answer {
        Response::NoContent => (204, None),
        Response::Json(value) => (200, Some(value.to_string())),
        Response::BadRequest(message) => {
            let fault = types::Error {
                fault_message: message.clone(),
            };
            let body = serde_json::to_string(&fault).expect("a string serializes");
            (400, Some(body))
        }
    };
    let mut response = tiny_http::Response::from_data(body.clone().unwrap_or_default())
        .with_status_code(status)
        .with_header(header("Server", "kiln API"));
    if body.is_some() {
        response.add_header(header("Content-Type", "application/json"));
    }
    if deprecated {
        response.add_header(header("Deprecation", "true"));
    }
    response
}

/// Answers 400 `message` without letting tiny_http drain the body.
///
/// `upgrade()` is tiny_http's only way to hand a connection over without
/// dropping (and so draining) the body reader. Its own head goes out as an
/// interim `100` (clients skip those), our full answer follows, asking the
/// client to close; the stream is leaked, since dropping it would drain.
/// That parks one tiny_http connection thread and its socket for good, for
/// a client that announced more than 16 MiB.
pub(super) fn refuse_undrained(http: tiny_http::Request, message: &str) {
    let fault = types::Error {
        fault_message: message.to_string(),
    };
    let body = serde_json::to_string(&fault).expect("a string serializes");
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nServer: kiln API\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = http.upgrade("none", tiny_http::Response::empty(100));
    if let Err(e) = stream
        .write_all(answer.as_bytes())
        .and_then(|()| stream.flush())
    {
        log::warn!("API server: cannot answer: {e}");
    }
    std::mem::forget(stream);
}

/// Writes `answer` to the client.
pub(super) fn respond(http: tiny_http::Request, answer: &Response, deprecated: bool) {
    let (method, url) = (http.method().clone(), http.url().to_string());
    if let Err(e) = http.respond(http_response(answer, deprecated)) {
        log::warn!("API server: cannot answer {method} {url}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::types::*;
    use super::*;

    fn get() -> Method {
        Method::Get
    }

    #[test]
    fn parses_every_route() {
        let (put, patch) = (Method::Put, Method::Patch);
        let cases: Vec<(Method, &str, &str, Request)> = vec![
            (get(), "/", "", Request::GetInstanceInfo),
            (get(), "/version", "", Request::GetVersion),
            (get(), "/machine-config", "", Request::GetMachineConfig),
            (get(), "/vm/config", "", Request::GetVmConfig),
            (get(), "/machine-config/?x=1", "", Request::GetMachineConfig),
            (
                put.clone(),
                "/boot-source",
                r#"{"kernel_image_path":"/k"}"#,
                Request::PutBootSource(BootSource {
                    kernel_image_path: "/k".into(),
                    boot_args: None,
                    initrd_path: None,
                }),
            ),
            (
                put.clone(),
                "/machine-config",
                r#"{"vcpu_count":2,"mem_size_mib":512}"#,
                Request::PutMachineConfig(
                    serde_json::from_str(r#"{"vcpu_count":2,"mem_size_mib":512}"#).unwrap(),
                ),
            ),
            (
                patch.clone(),
                "/machine-config",
                r#"{"vcpu_count":4}"#,
                Request::PatchMachineConfig(MachineConfigurationPatch {
                    vcpu_count: Some(4),
                    ..Default::default()
                }),
            ),
            (
                put.clone(),
                "/vsock",
                r#"{"guest_cid":3,"uds_path":"/v"}"#,
                Request::PutVsock(Vsock {
                    guest_cid: 3,
                    uds_path: "/v".into(),
                    vsock_id: None,
                }),
            ),
            (
                put.clone(),
                "/actions",
                r#"{"action_type":"SendCtrlAltDel"}"#,
                Request::Action(InstanceActionInfo {
                    action_type: ActionType::SendCtrlAltDel,
                }),
            ),
            (
                put.clone(),
                "/logger",
                r#"{"log_path":"/tmp/log","level":"debug","show_level":true}"#,
                Request::PutLogger(types::Logger {
                    log_path: Some("/tmp/log".into()),
                    level: Some(types::LogLevel::Debug),
                    show_level: Some(true),
                    ..Default::default()
                }),
            ),
            (
                patch,
                "/vm",
                r#"{"state":"Resumed"}"#,
                Request::PatchVm(Vm {
                    state: VmState::Resumed,
                }),
            ),
        ];
        for (method, url, body, want) in cases {
            let got = parse(&method, url, body.as_bytes()).unwrap();
            assert_eq!(got, want.into(), "{method} {url}");
        }
        let drive = r#"{"drive_id":"root_1","is_root_device":true,"path_on_host":"/r"}"#;
        let got = parse(&put, "/drives/root_1", drive.as_bytes())
            .unwrap()
            .request;
        assert!(matches!(got, Request::PutDrive(d) if d.path_on_host == Some("/r".into())));
        let net = r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}"#;
        let got = parse(&put, "/network-interfaces/eth0", net.as_bytes())
            .unwrap()
            .request;
        assert!(matches!(got, Request::PutNetworkInterface(n) if n.host_dev_name == "tap0"));
        // Deprecated fields are flagged, as Firecracker flags them.
        for (url, body) in [
            (
                "/vsock",
                r#"{"guest_cid":3,"uds_path":"/v","vsock_id":"v"}"#,
            ),
            (
                "/machine-config",
                r#"{"vcpu_count":1,"mem_size_mib":1,"cpu_template":"None"}"#,
            ),
            (
                "/snapshot/load",
                r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#,
            ),
        ] {
            assert!(
                parse(&put, url, body.as_bytes()).unwrap().deprecated,
                "{url}"
            );
        }
    }

    #[test]
    fn refuses_like_firecracker() {
        let (put, patch) = (Method::Put, Method::Patch);
        let drive = r#"{"drive_id":"b","is_root_device":false}"#;
        let net = r#"{"iface_id":"eth1","host_dev_name":"tap0"}"#;
        let cases: Vec<(Method, &str, &str, &str)> = vec![
            (get(), "/foo", "", "Invalid request method and/or path: GET /foo."),
            (get(), "/actions", "", "Invalid request method and/or path: GET /actions."),
            (Method::Post, "/actions", "{}", "Invalid request method and/or path: POST /actions."),
            (Method::Delete, "/drives/a", "", "Invalid request method and/or path: DELETE /drives/a."),
            (get(), "/vm", "", "Invalid request method and/or path: GET /vm."),
            (put.clone(), "/snapshot/restore", "{}", "Invalid request method and/or path: PUT /snapshot/restore."),
            (put.clone(), "/drives/a/b", drive, "Invalid request method and/or path: PUT /drives/a/b."),
            (put.clone(), "/snapshot", "{}", "Missing snapshot operation type."),
            (get(), "/", "{}", "GET request cannot have a body."),
            (put.clone(), "/boot-source", "", "Empty PUT request."),
            (patch.clone(), "/vm", "", "Empty PATCH request."),
            (patch, "/machine-config", "{}", "Empty PATCH request."),
            (put.clone(), "/drives/", drive, "The ID cannot be empty."),
            (put.clone(), "/drives/a-b", drive, "API Resource IDs can only contain alphanumeric characters and underscores."),
            (put.clone(), "/drives/a", drive, "The id from the path does not match the id from the body!"),
            (put.clone(), "/network-interfaces/eth0", net, "The id from the path [eth0] does not match the id from the body [eth1]!"),
            (put.clone(), "/snapshot/load", r#"{"snapshot_path":"/s"}"#,
             "An error occurred when deserializing the json body of a request: missing field: either `mem_backend` or `mem_file_path` is required."),
            (put.clone(), "/snapshot/load", r#"{"snapshot_path":"/s","mem_file_path":"/m","mem_backend":{"backend_type":"File","backend_path":"/m"}}"#,
             "An error occurred when deserializing the json body of a request: too many fields: either `mem_backend` or `mem_file_path` exclusively is required."),
            (put.clone(), "/network-interfaces/eth0", r#"{"iface_id":"eth0","host_dev_name":"t","guest_mac":"06:00"}"#,
             "An error occurred when deserializing the json body of a request: invalid MAC address: 06:00."),
        ];
        for (method, url, body, want) in cases {
            let got = parse(&method, url, body.as_bytes())
                .unwrap_err()
                .to_string();
            assert_eq!(got, want, "{method} {url}");
        }
        let e = parse(
            &put,
            "/actions",
            br#"{"action_type":"InstanceStart","now":1}"#,
        )
        .unwrap_err();
        assert!(matches!(e, ApiError::Json(_)), "{e}");
        assert!(e.to_string().contains("unknown field `now`"), "{e}");
    }

    /// Seeded mutations of valid requests (bytes of the body flipped, cut
    /// or replaced with JSON's own characters, paths with segments added,
    /// cut or garbled) parse into a request or a one-line error, never a
    /// panic.
    #[test]
    fn mini_fuzz_mutated_requests_parse_or_fail_in_one_line() {
        let seeds: &[(Method, &str, &str)] = &[
            (
                Method::Put,
                "/boot-source",
                r#"{"kernel_image_path":"/k","boot_args":"a b","initrd_path":"/i"}"#,
            ),
            (
                Method::Put,
                "/machine-config",
                r#"{"vcpu_count":2,"mem_size_mib":512,"smt":false}"#,
            ),
            (Method::Patch, "/machine-config", r#"{"vcpu_count":4}"#),
            (
                Method::Put,
                "/drives/root",
                r#"{"drive_id":"root","path_on_host":"/r","is_root_device":true,"is_read_only":false}"#,
            ),
            (
                Method::Put,
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}"#,
            ),
            (Method::Put, "/vsock", r#"{"guest_cid":3,"uds_path":"/v"}"#),
            (
                Method::Put,
                "/actions",
                r#"{"action_type":"InstanceStart"}"#,
            ),
            (Method::Patch, "/vm", r#"{"state":"Paused"}"#),
            (
                Method::Put,
                "/snapshot/create",
                r#"{"snapshot_path":"/s","mem_file_path":"/m","snapshot_type":"Full"}"#,
            ),
            (
                Method::Put,
                "/snapshot/load",
                r#"{"snapshot_path":"/s","mem_backend":{"backend_path":"/m","backend_type":"File"},"resume_vm":true}"#,
            ),
            (
                Method::Put,
                "/logger",
                r#"{"log_path":"/l","level":"Info","show_level":true,"show_log_origin":false}"#,
            ),
            (Method::Get, "/vm/config", ""),
        ];
        const JSON: &[u8] = br#"{}[]":,0123456789.eE+- truefalsenull\u"#;
        let mut rng = crate::testing::Rng(0x6a09_e667_f3bc_c908);
        let mut next = move || rng.next();
        let (mut parsed, mut refused) = (0, 0);
        for _ in 0..3000 {
            let r = next();
            let (method, url, body) = &seeds[(r % seeds.len() as u64) as usize];
            let mut body = body.as_bytes().to_vec();
            for _ in 0..(r >> 8) % 4 {
                let r = next();
                let at = (r as usize >> 8) % (body.len() + 1);
                let c = JSON[(r >> 32) as usize % JSON.len()];
                match r % 5 {
                    0 if at < body.len() => body[at] ^= 1 << ((r >> 32) % 8),
                    1 if at < body.len() => body[at] = c,
                    2 => body.insert(at, c),
                    3 => body.truncate(at),
                    _ => {
                        body.splice(at..at, br#""9":99999999999999999999,"#.iter().copied());
                    }
                }
            }
            let mut url = url.to_string();
            match (r >> 40) % 8 {
                0 => url.push_str("/x"),
                1 => url.truncate((r >> 44) as usize % (url.len() + 1)),
                2 => url = url.replace('/', "//"),
                3 => url.push_str("?a=/b#c"),
                _ => {}
            }
            match parse(method, &url, &body) {
                Ok(_) => parsed += 1,
                Err(e) => {
                    let m = e.to_string();
                    assert!(!m.is_empty() && !m.contains('\n'), "{method} {url}: {m:?}");
                    refused += 1;
                }
            }
        }
        assert!(
            parsed > 100 && refused > 100,
            "{parsed} parsed, {refused} refused"
        );
    }
}
