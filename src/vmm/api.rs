//! Firecracker API requests served by a running machine. The API thread
//! (`crate::api`) parses HTTP and JSON; here each request becomes an
//! action on the [`Machine`], on the thread that owns it, between two
//! turns of the event loop.

use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use serde_json::json;
use vmm_sys_util::eventfd::EventFd;

use super::{Machine, VmmError};
use crate::api::types::{
    ActionType, FirecrackerVersion, InstanceInfo, SnapshotType, VmState as WantedState,
};
use crate::api::{ApiServer, Request, Response};
use crate::event_loop::{Subscriber, Wake};

/// Firecracker's answer to configuration requests after InstanceStart.
const AFTER_START: &str = "The requested operation is not supported after starting the microVM.";

/// The channel API requests arrive on: from the API socket's server, or
/// from kiln's own threads (a [`Requester`]).
pub struct ApiLink {
    _server: Option<ApiServer>,
    requests: Receiver<(Request, Sender<Response>)>,
    wake: Arc<EventFd>,
}

/// Makes API requests of the running machine from another of kiln's
/// threads (the sandbox takes its template snapshot this way).
#[derive(Clone)]
pub struct Requester {
    to_vmm: Sender<(Request, Sender<Response>)>,
    wake: Arc<EventFd>,
}

impl Requester {
    /// Sends `request` and waits for the answer.
    pub fn call(&self, request: Request) -> Response {
        let (tx, rx) = channel();
        if self.to_vmm.send((request, tx)).is_err() || self.wake.write(1).is_err() {
            return Response::BadRequest("the VM is gone".into());
        }
        rx.recv()
            .unwrap_or_else(|_| Response::BadRequest("the VM is gone".into()))
    }
}

impl ApiLink {
    /// Serves Firecracker's API on the Unix socket `path`.
    pub fn start(path: &Path) -> Result<ApiLink, VmmError> {
        let (tx, requests) = channel();
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?);
        let server = ApiServer::start(path, tx, wake.clone())?;
        Ok(ApiLink {
            _server: Some(server),
            requests,
            wake,
        })
    }

    /// A link without a socket, and the requester that feeds it.
    pub fn internal() -> Result<(ApiLink, Requester), VmmError> {
        let (tx, requests) = channel();
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?);
        let requester = Requester {
            to_vmm: tx,
            wake: wake.clone(),
        };
        Ok((
            ApiLink {
                _server: None,
                requests,
                wake,
            },
            requester,
        ))
    }

    /// The event-loop subscriber that wakes the loop for a request.
    pub fn wake_subscriber(&self) -> Subscriber {
        Arc::new(Mutex::new(Wake(self.wake.clone())))
    }

    /// The next waiting request, if any.
    pub fn next(&self) -> Option<(Request, Sender<Response>)> {
        self.requests.try_recv().ok()
    }
}

impl Machine {
    /// Answers one API request.
    /// Presses Ctrl+Alt+Delete on the guest's PS/2 keyboard. As in
    /// Firecracker, a guest without a keyboard driver gets the keys all
    /// the same (and ignores them); kiln says so in its log.
    fn send_ctrl_alt_del(&mut self) -> Response {
        let mut i8042 = self.i8042.lock().expect("i8042 lock");
        if !i8042.guest_listens() {
            log::warn!(
                "SendCtrlAltDel: the guest does not read its PS/2 keyboard (its kernel needs the i8042 and atkbd drivers); the keys wait in the controller"
            );
        }
        match i8042.send_ctrl_alt_del() {
            Ok(()) => {
                log::info!("SendCtrlAltDel: Ctrl+Alt+Delete pressed and released");
                Response::NoContent
            }
            Err(e) => Response::BadRequest(e.to_string()),
        }
    }

    pub(super) fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::GetInstanceInfo => Response::json(&InstanceInfo::kiln(if self.is_paused() {
                "Paused"
            } else {
                "Running"
            })),
            Request::GetVersion => Response::json(&FirecrackerVersion::kiln()),
            Request::GetMachineConfig => Response::Json(self.machine_config_json()),
            Request::GetVmConfig => Response::Json(self.vm_config_json()),
            Request::PatchVm(vm) => {
                match vm.state {
                    WantedState::Paused => self.pause(),
                    WantedState::Resumed => self.resume(),
                }
                Response::NoContent
            }
            Request::CreateSnapshot(p) => {
                if p.snapshot_type == Some(SnapshotType::Diff) {
                    return Response::BadRequest(
                        "Diff snapshots are not supported by kiln: use snapshot_type Full".into(),
                    );
                }
                if !self.is_paused() {
                    return Response::BadRequest(
                        "Cannot create a snapshot while the microVM is running: PATCH /vm {\"state\": \"Paused\"} first"
                            .into(),
                    );
                }
                match self.snapshot(&p.snapshot_path, &p.mem_file_path) {
                    Ok(()) => Response::NoContent,
                    Err(e) => Response::BadRequest(e.to_string()),
                }
            }
            Request::LoadSnapshot(_) => Response::BadRequest(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
                    .into(),
            ),
            Request::Action(a) => match a.action_type {
                ActionType::InstanceStart => Response::BadRequest(AFTER_START.into()),
                ActionType::FlushMetrics => Response::NoContent,
                ActionType::SendCtrlAltDel => self.send_ctrl_alt_del(),
            },
            Request::PutBootSource(_)
            | Request::PutMachineConfig(_)
            | Request::PatchMachineConfig(_)
            | Request::PutDrive(_)
            | Request::PutNetworkInterface(_)
            | Request::PutVsock(_)
            | Request::PutLogger(_) => Response::BadRequest(AFTER_START.into()),
        }
    }

    fn machine_config_json(&self) -> serde_json::Value {
        json!({
            "vcpu_count": self.config.cpus,
            "mem_size_mib": self.config.mem_size >> 20,
            "smt": false,
            "track_dirty_pages": false,
            "huge_pages": "None",
        })
    }

    /// `GET /vm/config`: the machine in Firecracker's configuration format.
    fn vm_config_json(&self) -> serde_json::Value {
        let c = &self.config;
        let drives: Vec<_> = c
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                json!({
                    "drive_id": d.id.clone().unwrap_or_else(|| format!("drive{i}")),
                    "path_on_host": d.path,
                    "is_root_device": i == 0 && c.root_disk,
                    "is_read_only": d.read_only || d.snapshot,
                })
            })
            .collect();
        let nets: Vec<_> = c
            .nets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                json!({
                    "iface_id": n.iface_id(i),
                    "host_dev_name": n.tap,
                    "guest_mac": n.mac,
                })
            })
            .collect();
        let mut v = json!({
            "boot-source": {
                "kernel_image_path": c.kernel,
                "initrd_path": c.initrd,
                "boot_args": c.cmdline,
            },
            "drives": drives,
            "machine-config": self.machine_config_json(),
            "network-interfaces": nets,
        });
        if let Some(vs) = &c.vsock {
            v["vsock"] = json!({ "guest_cid": vs.cid, "uds_path": vs.path });
        }
        v
    }
}
