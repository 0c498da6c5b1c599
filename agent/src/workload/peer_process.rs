//! The process on the other end of a Workload API connection, pinned when the connection is
//! accepted. The kernel records the connecting process's pid (SO_PEERCRED), but a pid is
//! only a number: a process that connects, hands the socket to another and exits frees its
//! pid for the next process started, and attesting that pid later would read another
//! service's binary, groups and unit. So each connection holds the caller's pidfd
//! (SO_PEERPIDFD, Linux 6.5+), which names that one process for as long as it lives, and its
//! start time; a call is attested only while that process is still alive, checked before
//! and after the attestors read /proc. On kernels without SO_PEERPIDFD the start time alone
//! pins the process, as SPIRE's peer tracker does.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use proto::unix_authority::AuthorityFixing;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixListener;
use tonic::transport::server::Connected;

use super::unix::{self, AttestError, PeerCredentials};

/// The calling process, pinned at accept.
#[derive(Debug)]
pub struct PeerProcess {
    pub credentials: PeerCredentials,
    pidfd: Option<OwnedFd>,
    start_time: u64,
}

/// What a connection knows of its caller: the pinned process, or why it could not be pinned
/// (then every call on it is refused).
#[derive(Clone, Debug)]
pub struct Caller(Arc<Result<PeerProcess, String>>);

impl Caller {
    /// The pinned process, or why there is none.
    pub fn pinned(&self) -> Result<&PeerProcess, AttestError> {
        self.0.as_ref().as_ref().map_err(|reason| AttestError::NotPinned { reason: reason.clone() })
    }
}

impl PeerProcess {
    /// Pins the process that connected `stream`.
    fn pin(stream: &tokio::net::UnixStream) -> Result<Self, String> {
        let cred = stream.peer_cred().map_err(|e| format!("no peer credentials: {e}"))?;
        let pid = cred.pid().ok_or("the socket gave no peer pid")?;
        let credentials = PeerCredentials { pid, uid: cred.uid(), gid: cred.gid() };
        let pidfd = match getsockopt(stream, sockopt::PeerPidfd) {
            Ok(fd) => Some(fd),
            // Kernels before 6.5 do not know the option: the start time alone pins.
            Err(Errno::ENOPROTOOPT) | Err(Errno::EINVAL) => None,
            Err(Errno::ESRCH) => return Err(format!("the calling process {pid} exited after connecting")),
            Err(e) => return Err(format!("SO_PEERPIDFD: {e}")),
        };
        // procfs is in memory: reading one small file here does not hold the accept loop.
        let start_time = unix::start_time(pid).map_err(|e| e.to_string())?;
        let pinned = Self { credentials, pidfd, start_time };
        // Read while the pidfd's process was alive, the start time is that process's.
        pinned.check().map_err(|e| e.to_string())?;
        Ok(pinned)
    }

    /// Runs `attest` on the pinned process; refuses if it is gone, before or after.
    pub fn guard<T>(&self, attest: impl FnOnce() -> Result<T, AttestError>) -> Result<T, AttestError> {
        self.check()?;
        let result = attest()?;
        self.check()?;
        Ok(result)
    }

    fn check(&self) -> Result<(), AttestError> {
        let pid = self.credentials.pid;
        if let Some(pidfd) = &self.pidfd {
            // A pidfd polls readable once its process has exited.
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            let ready = nix::poll::poll(&mut fds, PollTimeout::ZERO)
                .map_err(|e| AttestError::Proc { pid, reason: format!("poll pidfd: {e}") })?;
            if ready > 0 {
                return Err(AttestError::ProcessChanged { pid });
            }
        }
        match unix::start_time(pid) {
            Ok(now) if now == self.start_time => Ok(()),
            _ => Err(AttestError::ProcessChanged { pid }),
        }
    }
}

/// Connections accepted on the Workload API socket, each with its caller pinned.
pub fn accept(listener: UnixListener) -> impl tokio_stream::Stream<Item = io::Result<PinnedConnection>> {
    use tokio_stream::StreamExt;
    proto::unix_authority::accept(listener).map(|accepted| accepted.map(PinnedConnection::new))
}

/// A Workload API connection and its pinned caller.
pub struct PinnedConnection {
    inner: AuthorityFixing,
    caller: Caller,
}

impl PinnedConnection {
    fn new(inner: AuthorityFixing) -> Self {
        let pinned = PeerProcess::pin(inner.get_ref());
        if let Err(reason) = &pinned {
            tracing::debug!(%reason, "Workload API caller not pinned; its calls will be refused");
        }
        Self { inner, caller: Caller(Arc::new(pinned)) }
    }
}

impl Connected for PinnedConnection {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for PinnedConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PinnedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
