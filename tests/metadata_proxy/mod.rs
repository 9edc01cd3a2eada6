//! A TCP proxy in front of one Kafka broker that can answer metadata with
//! no broker in it: how a single broker answers during its controlled
//! shutdown, which leaves a librdkafka (2.10 to 2.12) client with no broker
//! at all (confluentinc/librdkafka#5301). librdkafka's mock cluster never
//! answers so (it lists every broker that is up, the one answering
//! included), so the tests put this proxy between the clients and it.
//!
//! Every Metadata and FindCoordinator response is rewritten so that the
//! brokers it names are reached through the proxy (their port becomes the
//! proxy's); while [`MetadataProxy::strand`] is on, Metadata responses list
//! no broker (their topics are kept). Other bytes pass unchanged.

#![allow(dead_code)] // each test crate uses a different subset

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const METADATA: i16 = 3;
const FIND_COORDINATOR: i16 = 10;

#[derive(Default)]
struct State {
    strand: AtomicBool,
    stranded: AtomicU64,
    rewritten: AtomicU64,
}

pub struct MetadataProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

impl MetadataProxy {
    /// Listens on an ephemeral port of 127.0.0.1 and relays each
    /// connection to `upstream` (`host:port` of a single broker).
    pub fn start(upstream: &str) -> MetadataProxy {
        let upstream: SocketAddr = upstream
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("the broker's address {upstream:?} resolves"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listens");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(State::default());
        let shared = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let state = shared.clone();
                thread::spawn(move || relay(client, upstream, addr.port(), state));
            }
        });
        MetadataProxy { addr, state }
    }

    /// The `bootstrap.servers` that goes through the proxy.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// While on, Metadata responses list no broker.
    pub fn strand(&self, on: bool) {
        self.state.strand.store(on, Ordering::Release);
    }

    /// Metadata responses list no broker for `period`, and at least one
    /// was sent so.
    pub fn strand_for(&self, period: Duration) {
        self.strand(true);
        thread::sleep(period);
        self.strand(false);
        assert!(
            self.stranded() > 0,
            "the proxy answered Metadata without brokers ({} responses relayed)",
            self.rewritten()
        );
    }

    /// Metadata responses sent with their brokers taken out.
    pub fn stranded(&self) -> u64 {
        self.state.stranded.load(Ordering::Acquire)
    }

    /// Metadata and FindCoordinator responses relayed (rewritten).
    pub fn rewritten(&self) -> u64 {
        self.state.rewritten.load(Ordering::Acquire)
    }
}

/// One client connection: requests go up unchanged (their API key and
/// version noted by correlation id), responses come back rewritten.
fn relay(client: TcpStream, upstream: SocketAddr, port: u16, state: Arc<State>) {
    let Ok(server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let asked: Arc<Mutex<HashMap<i32, (i16, i16)>>> = Arc::default();
    let (mut client_in, mut server_out) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let requests = {
        let asked = asked.clone();
        thread::spawn(move || {
            while let Ok(frame) = read_frame(&mut client_in) {
                if frame.len() >= 8 {
                    let key = i16::from_be_bytes([frame[0], frame[1]]);
                    let version = i16::from_be_bytes([frame[2], frame[3]]);
                    let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                    asked.lock().unwrap().insert(correlation, (key, version));
                }
                if write_frame(&mut server_out, &frame).is_err() {
                    break;
                }
            }
            let _ = server_out.shutdown(Shutdown::Both);
        })
    };
    let (mut server_in, mut client_out) = (server, client);
    while let Ok(frame) = read_frame(&mut server_in) {
        let correlation = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let asked = asked.lock().unwrap().remove(&correlation);
        let frame = match asked {
            Some((METADATA, version)) => {
                state.rewritten.fetch_add(1, Ordering::AcqRel);
                let strand = state.strand.load(Ordering::Acquire);
                if strand {
                    state.stranded.fetch_add(1, Ordering::AcqRel);
                }
                metadata(&frame, version, port, strand)
            }
            Some((FIND_COORDINATOR, version)) => {
                state.rewritten.fetch_add(1, Ordering::AcqRel);
                find_coordinator(frame, version, port)
            }
            _ => frame,
        };
        if write_frame(&mut client_out, &frame).is_err() {
            break;
        }
    }
    let _ = client_out.shutdown(Shutdown::Both);
    let _ = requests.join();
}

fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size)?;
    let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut frame)?;
    Ok(frame)
}

fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> io::Result<()> {
    stream.write_all(&(frame.len() as i32).to_be_bytes())?;
    stream.write_all(frame)
}

/// A position in a response, reading Kafka's primitive types.
struct Cursor<'b> {
    buf: &'b [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn skip(&mut self, n: usize) {
        self.pos += n;
    }

    fn i16(&mut self) -> i16 {
        let v = i16::from_be_bytes([self.buf[self.pos], self.buf[self.pos + 1]]);
        self.pos += 2;
        v
    }

    fn i32(&mut self) -> i32 {
        let b = &self.buf[self.pos..self.pos + 4];
        self.pos += 4;
        i32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    fn uvarint(&mut self) -> u64 {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = self.buf[self.pos];
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
            shift += 7;
        }
    }

    /// A (nullable) string, compact in flexible versions.
    fn string(&mut self, flexible: bool) {
        let len = if flexible {
            self.uvarint() as i64 - 1
        } else {
            i64::from(self.i16())
        };
        if len > 0 {
            self.skip(len as usize);
        }
    }

    /// An array's length, compact in flexible versions.
    fn array(&mut self, flexible: bool) -> usize {
        if flexible {
            (self.uvarint() as usize).saturating_sub(1)
        } else {
            self.i32().max(0) as usize
        }
    }

    fn tagged_fields(&mut self) {
        for _ in 0..self.uvarint() {
            self.uvarint();
            let size = self.uvarint() as usize;
            self.skip(size);
        }
    }
}

/// A Metadata response (versions 1 and later) with every broker's port
/// made `port`, or with no broker at all when `strand`.
fn metadata(frame: &[u8], version: i16, port: u16, strand: bool) -> Vec<u8> {
    let flexible = version >= 9;
    let mut c = Cursor { buf: frame, pos: 4 };
    if flexible {
        c.tagged_fields();
    }
    if version >= 3 {
        c.skip(4); // throttle_time_ms
    }
    let mut out = frame[..c.pos].to_vec();
    let brokers = c.array(flexible);
    if strand {
        if flexible {
            out.push(1);
        } else {
            out.extend_from_slice(&0i32.to_be_bytes());
        }
    } else {
        out.extend_from_slice(&frame[out.len()..c.pos]);
    }
    for _ in 0..brokers {
        let start = c.pos;
        c.skip(4); // node_id
        c.string(flexible); // host
        let port_at = c.pos;
        c.skip(4);
        if version >= 1 {
            c.string(flexible); // rack
        }
        if flexible {
            c.tagged_fields();
        }
        if !strand {
            out.extend_from_slice(&frame[start..port_at]);
            out.extend_from_slice(&i32::from(port).to_be_bytes());
            out.extend_from_slice(&frame[port_at + 4..c.pos]);
        }
    }
    out.extend_from_slice(&frame[c.pos..]);
    out
}

/// A FindCoordinator response with the coordinator's port made `port`.
fn find_coordinator(mut frame: Vec<u8>, version: i16, port: u16) -> Vec<u8> {
    let flexible = version >= 3;
    let mut ports = Vec::new();
    {
        let mut c = Cursor {
            buf: &frame,
            pos: 4,
        };
        if flexible {
            c.tagged_fields();
        }
        if version >= 1 {
            c.skip(4); // throttle_time_ms
        }
        if version >= 4 {
            for _ in 0..c.array(true) {
                c.string(true); // key
                c.skip(4); // node_id
                c.string(true); // host
                ports.push(c.pos);
                c.skip(4);
                c.skip(2); // error_code
                c.string(true); // error_message
                c.tagged_fields();
            }
        } else {
            c.skip(2); // error_code
            if version >= 1 {
                c.string(flexible); // error_message
            }
            c.skip(4); // node_id
            c.string(flexible); // host
            ports.push(c.pos);
        }
    }
    for at in ports {
        frame[at..at + 4].copy_from_slice(&i32::from(port).to_be_bytes());
    }
    frame
}
