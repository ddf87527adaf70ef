//! Free loopback ports for the servers of the harness.

use std::net::{SocketAddr, TcpListener};

use crate::HarnessError;

/// Distinct free loopback ports: bind port 0 and let the kernel pick. All listeners are held
/// until every port is read so the kernel cannot hand out the same port twice.
pub fn free_ports<const N: usize>() -> Result<[u16; N], HarnessError> {
    let bind = |_| {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| Ok((l.local_addr()?.port(), l)))
            .map_err(HarnessError::io("binding a free port on", "127.0.0.1"))
    };
    let listeners: Vec<(u16, TcpListener)> = (0..N).map(bind).collect::<Result<_, _>>()?;
    Ok(std::array::from_fn(|i| listeners[i].0))
}

/// `127.0.0.1:<a free port>`.
pub fn free_addr() -> Result<SocketAddr, HarnessError> {
    let [port] = free_ports()?;
    Ok(loopback(port))
}

/// `127.0.0.1:<port>`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
