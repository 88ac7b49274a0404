//! HAProxy's runtime API over its admin socket: the servers' state and
//! load (`show stat`), and adding and removing servers while it runs.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::LbError;
use crate::haproxy::{BACKEND, GRPC_BACKEND, grpc_server_keywords, server_keywords};
use crate::workers::Server;

/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// One worker as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// Its name (its address, [`Server::name`]).
    pub name: String,
    /// Its address, `IP:PORT`.
    pub addr: String,
    /// `UP`, `DOWN`, `MAINT`, `UP 1/2` (rising), `DOWN 1/2` (falling), ...
    pub status: String,
    /// Calls it is serving now.
    pub in_flight: u64,
    /// Calls waiting for it.
    pub queued: u64,
    /// Calls it was sent since the balancer started.
    pub total: u64,
    /// The last health check's result (`L7OK`, `L4CON`, ...).
    pub check: String,
}

impl ServerState {
    /// Whether the engine sends it calls.
    pub fn is_up(&self) -> bool {
        self.status.starts_with("UP")
    }
}

/// The admin socket of a running HAProxy.
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    socket: PathBuf,
}

impl RuntimeApi {
    /// The API on `socket`.
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    /// Sends one command; its whole answer.
    pub fn command(&self, command: &str) -> Result<String, LbError> {
        let api_err = |source| LbError::RuntimeApi {
            socket: self.socket.clone(),
            command: command.to_string(),
            source,
        };
        let mut s = UnixStream::connect(&self.socket).map_err(api_err)?;
        s.set_read_timeout(Some(COMMAND_TIMEOUT)).map_err(api_err)?;
        s.set_write_timeout(Some(COMMAND_TIMEOUT))
            .map_err(api_err)?;
        s.write_all(format!("{command}\n").as_bytes())
            .map_err(api_err)?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).map_err(api_err)?;
        Ok(answer)
    }

    /// Sends `command` and checks its answer contains `expect`.
    fn command_expecting(&self, command: &str, expect: &str) -> Result<(), LbError> {
        let answer = self.command(command)?;
        if answer.contains(expect) {
            Ok(())
        } else {
            Err(LbError::Refused {
                command: command.to_string(),
                said: answer.trim().to_string(),
            })
        }
    }

    /// The workers' servers, each with its calls in both backends.
    pub fn servers(&self) -> Result<Vec<ServerState>, LbError> {
        Ok(parse_show_stat(&self.command("show stat")?))
    }

    /// Adds `server` with the health settings of every server, and lets
    /// it take calls once its checks pass.
    pub fn add_server(&self, server: &Server) -> Result<(), LbError> {
        let name = format!("{BACKEND}/{}", server.name());
        self.command_expecting(
            &format!(
                "add server {name} {} id {} {}",
                server.0,
                server.engine_id(),
                server_keywords()
            ),
            "New server registered",
        )?;
        self.command_expecting(&format!("enable health {name}"), "")?;
        self.command_expecting(&format!("enable server {name}"), "")?;
        let grpc = format!("{GRPC_BACKEND}/{}", server.name());
        self.command_expecting(
            &format!(
                "add server {grpc} {} id {} {}",
                server.0,
                server.engine_id(),
                grpc_server_keywords()
            ),
            "New server registered",
        )?;
        self.command_expecting(&format!("enable health {grpc}"), "")?;
        self.command_expecting(&format!("enable server {grpc}"), "")
    }

    /// Removes `server`: no new calls, its calls in flight cut, gone.
    pub fn remove_server(&self, server: &Server) -> Result<(), LbError> {
        let grpc = format!("{GRPC_BACKEND}/{}", server.name());
        self.command_expecting(&format!("disable server {grpc}"), "")?;
        self.command_expecting(&format!("disable health {grpc}"), "")?;
        self.command_expecting(&format!("shutdown sessions server {grpc}"), "")?;
        self.command_expecting(&format!("del server {grpc}"), "Server deleted")?;
        let name = format!("{BACKEND}/{}", server.name());
        self.command_expecting(&format!("disable server {name}"), "")?;
        self.command_expecting(&format!("disable health {name}"), "")?;
        self.command_expecting(&format!("shutdown sessions server {name}"), "")?;
        self.command_expecting(&format!("del server {name}"), "Server deleted")
    }
}

/// The workers' servers from `show stat`'s CSV (named columns; the first
/// line names them after `# `): their state in the HTTP backend, their
/// calls in both.
pub fn parse_show_stat(csv: &str) -> Vec<ServerState> {
    let mut lines = csv.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Vec::new();
    };
    let columns: HashMap<&str, usize> =
        header.split(',').enumerate().map(|(i, c)| (c, i)).collect();
    let mut servers: Vec<ServerState> = Vec::new();
    let mut grpc_calls = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let get = |name: &str| {
            columns
                .get(name)
                .and_then(|&i| fields.get(i))
                .copied()
                .unwrap_or("")
        };
        let number = |name: &str| get(name).parse().unwrap_or(0);
        if matches!(get("svname"), "BACKEND" | "FRONTEND" | "") {
            continue;
        }
        if get("pxname") == GRPC_BACKEND {
            grpc_calls.push((
                get("svname"),
                number("scur"),
                number("qcur"),
                number("stot"),
            ));
            continue;
        }
        if get("pxname") != BACKEND {
            continue;
        }
        servers.push(ServerState {
            name: get("svname").to_string(),
            addr: get("addr").to_string(),
            status: get("status").to_string(),
            in_flight: number("scur"),
            queued: number("qcur"),
            total: number("stot"),
            check: get("check_status")
                .trim_start_matches('*')
                .trim()
                .to_string(),
        });
    }
    for (name, in_flight, queued, total) in grpc_calls {
        if let Some(server) = servers.iter_mut().find(|s| s.name == name) {
            server.in_flight += in_flight;
            server.queued += queued;
            server.total += total;
        }
    }
    servers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_stat_gives_each_worker_with_its_http_and_grpc_calls() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,check_status,addr,\n\
                   ol-lb,FRONTEND,,,1,2,4096,10,OPEN,,,\n\
                   workers,127.0.0.1:8081,0,0,2,3,,40,UP,L7OK,127.0.0.1:8081,\n\
                   workers,127.0.0.1:8082,1,1,0,1,,7,DOWN,* L4CON,127.0.0.1:8082,\n\
                   workers,BACKEND,0,0,2,3,410,47,UP,,,\n\
                   workers-grpc,127.0.0.1:8081,0,0,1,1,,5,UP,,127.0.0.1:8081,\n\
                   workers-grpc,BACKEND,0,0,1,1,410,5,UP,,,\n";
        let s = parse_show_stat(csv);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "127.0.0.1:8081");
        // Its HTTP and gRPC calls together.
        assert_eq!((s[0].in_flight, s[0].total, s[0].is_up()), (3, 45, true));
        assert_eq!((s[1].queued, s[1].is_up()), (1, false));
        assert_eq!(s[1].check, "L4CON");
        assert!(parse_show_stat("").is_empty());
    }
}
