//! How the ranks of an NCCL job agree on NCCL's unique id: rank 0 makes it (`ncclGetUniqueId`) and
//! hands it to every other rank over one TCP connection each, as torchrun's store and llm.c's
//! socket exchange do. This is the one thing that travels outside NCCL: 128 bytes, once per job.
//! The gradients themselves go through NCCL.
//!
//! Every wait is bounded: rank 0 waits `timeout` for all the others to connect, and the others
//! retry connecting (rank 0 may not be listening yet) until `timeout`. Each message starts with
//! [`MAGIC`], so a stray connection to the port is refused without ending the exchange, and a
//! rank's hello carries its job's token, so a rank of another job on the same port (two jobs
//! sharing a node) is refused too.

use anyhow::{Context, Result, bail};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// NCCL's `ncclUniqueId`: 128 opaque bytes.
pub type UniqueId = [u8; 128];

/// Starts each message, both ways.
const MAGIC: &[u8; 16] = b"pipe-nccl-id-v1\0";

/// A rank's reply once it has the id.
const ACK: &[u8; 2] = b"ok";

/// How long one connection may take to say who it is, within the overall timeout.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Rank 0: serves `id` on `port` (every interface) to the other `world - 1` ranks. A rank counts
/// as served once it acknowledges the id; one that asks again (its first try timed out) is
/// served again.
pub fn serve(id: &UniqueId, port: u16, world: usize, job: u64, timeout: Duration) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| {
        format!("rank 0 could not listen on port {port} for NCCL's unique id (is the port in use? set PIPE_NCCL_PORT to a free one)")
    })?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut served = vec![false; world];
    served[0] = true;
    while served.iter().any(|s| !s) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let missing: Vec<String> = (0..world)
                .filter(|&r| !served[r])
                .map(|r| r.to_string())
                .collect();
            bail!(
                "rank 0 waited {}s for the other ranks to fetch NCCL's unique id on port {port}; ranks {} never came (did they start, and can they reach this machine?)",
                timeout.as_secs(),
                missing.join(", ")
            );
        }
        match listener.accept() {
            Ok((stream, from)) => {
                match serve_one(stream, id, world, job, left.min(HELLO_TIMEOUT)) {
                    Ok(rank) => served[rank] = true,
                    Err(e) => tracing::warn!("a connection from {from} on the NCCL id port: {e:#}"),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e).context("accepting a rank's connection for NCCL's unique id"),
        }
    }
    Ok(())
}

/// Reads one rank's hello, sends it the id and reads its acknowledgement; returns its rank.
fn serve_one(
    mut s: TcpStream,
    id: &UniqueId,
    world: usize,
    job: u64,
    wait: Duration,
) -> Result<usize> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(wait))?;
    s.set_write_timeout(Some(wait))?;
    let mut hello = [0u8; 32];
    s.read_exact(&mut hello).context("reading its hello")?;
    if &hello[..16] != MAGIC {
        bail!("refused: it is not a pipe rank (wrong greeting)");
    }
    let rank = u64::from_le_bytes(hello[16..24].try_into().expect("8 bytes")) as usize;
    if u64::from_le_bytes(hello[24..].try_into().expect("8 bytes")) != job {
        bail!("refused: a rank {rank} of another job (its job token differs)");
    }
    if rank == 0 || rank >= world {
        bail!(
            "refused: it says it is rank {rank}, which is not a rank of this job (world {world})"
        );
    }
    s.write_all(MAGIC)?;
    s.write_all(id)?;
    let mut ack = [0u8; 2];
    s.read_exact(&mut ack)
        .with_context(|| format!("rank {rank} did not acknowledge the id"))?;
    if &ack != ACK {
        bail!("rank {rank} sent a wrong acknowledgement");
    }
    Ok(rank)
}

/// Any rank but 0: fetches the id from rank 0 at `master` ("host:port"), retrying until
/// `timeout` while rank 0 is not listening yet.
pub fn fetch(master: &str, rank: usize, job: u64, timeout: Duration) -> Result<UniqueId> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<_> = master
        .to_socket_addrs()
        .with_context(|| format!("resolving rank 0's address {master}"))?
        .collect();
    let mut last_error = None;
    while Instant::now() < deadline {
        for addr in &addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.min(HELLO_TIMEOUT).max(Duration::from_millis(1));
            match TcpStream::connect_timeout(addr, wait).and_then(|s| exchange(s, rank, job, wait))
            {
                Ok(id) => return Ok(id),
                Err(e) => last_error = Some(e),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "rank {rank} could not fetch NCCL's unique id from rank 0 at {master} within {}s (last error: {}): is rank 0 running, and is the port open between the machines?",
        timeout.as_secs(),
        last_error.map_or("none".to_string(), |e| e.to_string())
    )
}

fn exchange(mut s: TcpStream, rank: usize, job: u64, wait: Duration) -> std::io::Result<UniqueId> {
    s.set_read_timeout(Some(wait))?;
    s.set_write_timeout(Some(wait))?;
    s.write_all(MAGIC)?;
    s.write_all(&(rank as u64).to_le_bytes())?;
    s.write_all(&job.to_le_bytes())?;
    let mut reply = [0u8; 16 + 128];
    s.read_exact(&mut reply)?;
    if &reply[..16] != MAGIC {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "the port answered, but not as pipe's rank 0",
        ));
    }
    s.write_all(ACK)?;
    Ok(reply[16..].try_into().expect("128 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn id(seed: u8) -> UniqueId {
        std::array::from_fn(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
    }

    /// Rank 0 in this process, rank 1 in a second process (this test binary run again, on this
    /// test only, with PIPE_TEST_RENDEZVOUS_PEER naming the port): the peer checks the id it
    /// fetched and exits 0 only if it is rank 0's.
    #[test]
    fn the_unique_id_reaches_a_second_process_over_loopback() {
        if let Ok(port) = std::env::var("PIPE_TEST_RENDEZVOUS_PEER") {
            let got = fetch(&format!("127.0.0.1:{port}"), 1, 5, Duration::from_secs(30)).unwrap();
            assert_eq!(got, id(7), "the peer fetched another id");
            return;
        }
        let port = free_port();
        let mut peer = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "collective::rendezvous::tests::the_unique_id_reaches_a_second_process_over_loopback",
                "--test-threads=1",
            ])
            .env("PIPE_TEST_RENDEZVOUS_PEER", port.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        serve(&id(7), port, 2, 5, Duration::from_secs(30)).unwrap();
        assert!(peer.wait().unwrap().success(), "the peer process failed");
    }

    /// Both sides give up with a message once the timeout passes; a stray connection is refused
    /// without ending the exchange.
    #[test]
    fn waits_for_the_id_are_bounded() {
        let port = free_port();
        let started = Instant::now();
        let err = fetch(
            &format!("127.0.0.1:{port}"),
            1,
            0,
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            format!("{err:#}")
                .contains("rank 1 could not fetch NCCL's unique id from rank 0 at 127.0.0.1:"),
            "{err:#}"
        );

        let port = free_port();
        let server = std::thread::spawn(move || serve(&id(3), port, 3, 8, Duration::from_secs(3)));
        // A stranger (once the server listens), a rank 2 of another job, then rank 2; rank 1
        // never comes.
        let connected = Instant::now();
        let mut stranger = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if connected.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("the server never listened: {e}"),
            }
        };
        stranger.write_all(&[b'x'; 32]).unwrap();
        let other_job = fetch(
            &format!("127.0.0.1:{port}"),
            2,
            9,
            Duration::from_millis(400),
        );
        assert!(other_job.is_err(), "a rank of another job got the id");
        let got = fetch(&format!("127.0.0.1:{port}"), 2, 8, Duration::from_secs(5)).unwrap();
        assert_eq!(got, id(3));
        let err = server.join().unwrap().unwrap_err();
        assert!(format!("{err:#}").contains("ranks 1 never came"), "{err:#}");
    }
}
