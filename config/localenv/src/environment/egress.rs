//! The API server's way into the sandbox: an HTTP CONNECT proxy on a unix socket, run in the
//! fabric's namespace, where every node and pod address is routed. The API server sends its
//! traffic to the cluster through it (an `EgressSelectorConfiguration` for `cluster`, as
//! Konnectivity is used): webhook calls to pod endpoints, `kubectl logs` and `exec` to the
//! kubelets. The host's namespace gains no route and no link.

use std::path::Path;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpStream, UnixListener, UnixStream},
};
use tracing::{debug, warn};

/// Serves CONNECT requests on `socket` until the process is stopped.
pub async fn serve(socket: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket); // left by an earlier run
    let listener = UnixListener::bind(socket)?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(error) = tunnel(stream).await {
                debug!("egress: {error}");
            }
        });
    }
}

/// One CONNECT: reads the request, dials its target, answers 200 and relays both ways.
async fn tunnel(stream: UnixStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    reader.read_line(&mut request).await?;
    // The headers end with an empty line; none of them matters here.
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let target = match connect_target(&request) {
        Some(target) => target.to_string(),
        None => {
            reader
                .get_mut()
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                .await?;
            return Ok(());
        }
    };
    let mut upstream = match TcpStream::connect(&target).await {
        Ok(upstream) => upstream,
        Err(error) => {
            warn!(%target, "egress: cannot connect: {error}");
            let answer = format!("HTTP/1.1 502 Bad Gateway\r\n\r\n{target}: {error}");
            reader.get_mut().write_all(answer.as_bytes()).await?;
            return Ok(());
        }
    };
    reader
        .get_mut()
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    // Whatever the client sent after the headers is already in the reader's buffer.
    let buffered = reader.buffer().to_vec();
    upstream.write_all(&buffered).await?;
    let mut client = reader.into_inner();
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// `host:port` of a `CONNECT host:port HTTP/1.1` request line.
fn connect_target(request_line: &str) -> Option<&str> {
    match request_line.split_whitespace().collect::<Vec<_>>()[..] {
        ["CONNECT", target, version] if version.starts_with("HTTP/") && target.contains(':') => Some(target),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connect_to_host_and_port_is_served() {
        assert_eq!(
            connect_target("CONNECT 10.244.1.5:9443 HTTP/1.1\r\n"),
            Some("10.244.1.5:9443")
        );
        assert_eq!(connect_target("GET / HTTP/1.1\r\n"), None);
        assert_eq!(connect_target("CONNECT 10.244.1.5 HTTP/1.1\r\n"), None);
        assert_eq!(connect_target(""), None);
    }
}
