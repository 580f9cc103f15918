//! EPMD queries: where a node listens (`PORT_PLEASE2`) and which nodes are
//! registered (`NAMES`). Each query uses its own short TCP connection, as
//! EPMD closes it after answering.

use erl_dist::epmd::{EpmdClient, EpmdError};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::DistError;

/// The distribution port of `name` (the part before `@`), or `None` when
/// EPMD does not know it. `node` is only used in errors.
pub async fn port_please(
    host: &str,
    port: u16,
    node: &str,
    name: &str,
) -> Result<Option<u16>, DistError> {
    let epmd_err = |source| DistError::Epmd {
        node: node.to_owned(),
        epmd: format!("{host}:{port}"),
        source,
    };
    let stream = TcpStream::connect((host, port)).await.map_err(epmd_err)?;
    let entry = EpmdClient::new(stream.compat())
        .get_node(name)
        .await
        .map_err(|e| epmd_err(into_io(e)))?;
    Ok(entry.map(|e| e.port))
}

/// The names (without host) and ports of every node registered in EPMD.
pub async fn names(host: &str, port: u16) -> Result<Vec<(String, u16)>, DistError> {
    let epmd_err = |source| DistError::Epmd {
        node: "*".to_owned(),
        epmd: format!("{host}:{port}"),
        source,
    };
    let stream = TcpStream::connect((host, port)).await.map_err(epmd_err)?;
    EpmdClient::new(stream.compat())
        .get_names()
        .await
        .map_err(|e| epmd_err(into_io(e)))
}

/// EPMD protocol errors carry no source of their own; keep their text.
fn into_io(e: EpmdError) -> std::io::Error {
    match e {
        EpmdError::Io(io) => io,
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
    }
}
