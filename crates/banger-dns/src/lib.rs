//! banger's DNS: an authoritative server for the `vm.` zone, so `web.vm` names the running
//! VM `web` on the host (and, through the bridge, in other guests).
//!
//! - [`Records`]: the zone's A records, one per running VM (`NAME.vm.` → its IPv4 address),
//!   shared between the daemon, which replaces or edits them as VMs start, stop and go, and
//!   the server, which reads them on every query. Nothing is cached: an answer is as fresh
//!   as the last change.
//! - [`DnsServer::bind`]: serves [`Records`] on one address, UDP and TCP (a client retries over
//!   TCP on a truncated answer, and some resolvers use TCP outright), with hickory-server's
//!   transport and wire handling and banger's own, small answer logic ([`answer`]).
//!
//! Answers, always authoritative (`AA`), never recursive:
//! - `NAME.vm. A` for a VM in [`Records`]: its address, TTL [`TTL`] (short: VMs come and go);
//! - any other type for such a name (`AAAA`, `MX`, ...): no records (NODATA) and the zone's
//!   SOA, so resolvers cache the absence only briefly;
//! - a name in `vm.` that is not in [`Records`] (a stopped, deleted or unknown VM, or a
//!   deeper name like `a.web.vm.`): NXDOMAIN and the SOA;
//! - the apex `vm.`: its SOA and NS for those types, NODATA otherwise;
//! - a name outside `vm.`, a class other than IN, or not exactly one query: REFUSED (this is
//!   not a resolver), and a non-query opcode NOTIMP.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, NS, SOA};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

/// The zone banger answers for.
pub const ZONE: &str = "vm.";

/// Seconds a resolver may keep an answer (and the SOA's negative-caching minimum).
pub const TTL: u32 = 5;

/// How long a TCP client may stay silent before its connection is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Bytes queued per TCP connection for its answers.
const TCP_RESPONSE_BUFFER: usize = 16;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The UDP or TCP socket could not be bound.
    #[error("cannot listen for DNS on {proto} {addr}")]
    Bind {
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// A VM name that is not one DNS label.
    #[error("VM name {0:?} is not a DNS label")]
    Name(String),
}

/// The zone's A records: VM name (lower case) → address.
#[derive(Debug, Default)]
pub struct Records {
    by_name: RwLock<BTreeMap<LowerName, Ipv4Addr>>,
}

fn record_name(vm: &str) -> Result<LowerName, DnsError> {
    let bad = || DnsError::Name(vm.to_string());
    if vm.is_empty() || vm.contains('.') {
        return Err(bad());
    }
    let name = Name::from_ascii(format!("{vm}.{ZONE}")).map_err(|_| bad())?;
    Ok(LowerName::new(&name))
}

impl Records {
    /// An empty zone.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Replaces every record with `vms` (a reconcile: the running VMs and their addresses).
    pub fn replace<'a>(
        &self,
        vms: impl IntoIterator<Item = (&'a str, Ipv4Addr)>,
    ) -> Result<(), DnsError> {
        let mut next = BTreeMap::new();
        for (vm, ip) in vms {
            next.insert(record_name(vm)?, ip);
        }
        *self.write() = next;
        Ok(())
    }

    /// Adds or moves `vm`'s record (a VM started).
    pub fn insert(&self, vm: &str, ip: Ipv4Addr) -> Result<(), DnsError> {
        let name = record_name(vm)?;
        self.write().insert(name, ip);
        Ok(())
    }

    /// Drops `vm`'s record (a VM stopped or was deleted); true when it had one.
    pub fn remove(&self, vm: &str) -> bool {
        record_name(vm).is_ok_and(|name| self.write().remove(&name).is_some())
    }

    /// `vm`'s address, when it has a record.
    pub fn get(&self, vm: &str) -> Option<Ipv4Addr> {
        let name = record_name(vm).ok()?;
        self.read().get(&name).copied()
    }

    /// How many records the zone has.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the zone has no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lookup(&self, name: &LowerName) -> Option<Ipv4Addr> {
        self.read().get(name).copied()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<LowerName, Ipv4Addr>> {
        // A writer cannot panic while holding the lock (it only swaps or edits the map).
        self.by_name.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<LowerName, Ipv4Addr>> {
        self.by_name.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the server says to one query (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Records in the answer section.
    Records(Vec<Record>),
    /// The name exists but has nothing of that type: the SOA in the authority section.
    NoData,
    /// No such name in the zone: the SOA in the authority section.
    NxDomain,
    /// Not ours to answer.
    Refused,
}

fn zone() -> Name {
    Name::from_ascii(ZONE).unwrap_or_else(|_| Name::root())
}

fn ns_name() -> Name {
    Name::from_ascii(format!("ns.{ZONE}")).unwrap_or_else(|_| Name::root())
}

/// The zone's SOA record.
pub fn soa() -> Record {
    let rname = Name::from_ascii(format!("hostmaster.{ZONE}")).unwrap_or_else(|_| Name::root());
    Record::from_rdata(
        zone(),
        TTL,
        RData::SOA(SOA::new(ns_name(), rname, 1, 60, 10, 600, TTL)),
    )
}

/// The answer to `name`/`kind`/`class` from `records`.
pub fn answer(records: &Records, name: &LowerName, kind: RecordType, class: DNSClass) -> Answer {
    let apex = LowerName::new(&zone());
    if class != DNSClass::IN || !apex.zone_of(name) {
        return Answer::Refused;
    }
    if *name == apex {
        return match kind {
            RecordType::SOA => Answer::Records(vec![soa()]),
            RecordType::NS => Answer::Records(vec![Record::from_rdata(
                zone(),
                TTL,
                RData::NS(NS(ns_name())),
            )]),
            _ => Answer::NoData,
        };
    }
    match records.lookup(name) {
        None => Answer::NxDomain,
        Some(ip) if kind == RecordType::A || kind == RecordType::ANY => {
            Answer::Records(vec![Record::from_rdata(
                Name::from(name),
                TTL,
                RData::A(A(ip)),
            )])
        }
        Some(_) => Answer::NoData,
    }
}

/// hickory-server's handler: one query in, one [`answer`] out.
#[derive(Debug)]
struct Handler {
    records: Arc<Records>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        meta.recursion_available = false;
        let builder = MessageResponseBuilder::from_message_request(request);
        let queries = request.queries.queries();
        let result = if request.metadata.op_code != OpCode::Query {
            response
                .send_response(builder.error_msg(&request.metadata, ResponseCode::NotImp))
                .await
        } else if queries.len() != 1 {
            response
                .send_response(builder.error_msg(&request.metadata, ResponseCode::Refused))
                .await
        } else {
            let q = &queries[0];
            let soa = [soa()];
            match answer(&self.records, q.name(), q.query_type(), q.query_class()) {
                Answer::Records(records) => {
                    response
                        .send_response(builder.build(meta, &records, [], [], []))
                        .await
                }
                Answer::NoData => {
                    response
                        .send_response(builder.build(meta, [], [], &soa, []))
                        .await
                }
                Answer::NxDomain => {
                    meta.response_code = ResponseCode::NXDomain;
                    response
                        .send_response(builder.build(meta, [], [], &soa, []))
                        .await
                }
                Answer::Refused => {
                    response
                        .send_response(builder.error_msg(&request.metadata, ResponseCode::Refused))
                        .await
                }
            }
        };
        match result {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send a DNS answer");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_server::proto::op::Header {
                    metadata: failed,
                    counts: Default::default(),
                })
            }
        }
    }
}

/// A running DNS server.
pub struct DnsServer {
    server: Server<Handler>,
    addr: SocketAddr,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl DnsServer {
    /// Binds `addr` on UDP and TCP (port 0: one free port, the same for both) and serves
    /// `records` there until [`DnsServer::shutdown`].
    pub async fn bind(addr: SocketAddr, records: Arc<Records>) -> Result<Self, DnsError> {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                proto: "udp",
                addr,
                source,
            })?;
        let bound = udp.local_addr().map_err(|source| DnsError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        let tcp = TcpListener::bind(bound)
            .await
            .map_err(|source| DnsError::Bind {
                proto: "tcp",
                addr: bound,
                source,
            })?;
        let mut server = Server::new(Handler { records });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
        Ok(Self {
            server,
            addr: bound,
        })
    }

    /// Where it listens (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the listeners to close.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::debug!(error = %e, "DNS server ended with an error");
        }
    }
}

/// Why [`probe`] found no banger DNS server at an address.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The query could not be sent or the answer not received.
    #[error("cannot query {addr}")]
    Io {
        /// The server asked.
        addr: SocketAddr,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// Nothing answered in time.
    #[error("no answer from {addr} within {} ms", timeout.as_millis())]
    Timeout {
        /// The server asked.
        addr: SocketAddr,
        /// How long it was given.
        timeout: Duration,
    },
    /// Something answered, but not as banger's server for `vm.` does.
    #[error("{addr} does not serve banger's zone: {what}")]
    NotBanger {
        /// The server asked.
        addr: SocketAddr,
        /// What was wrong with the answer.
        what: String,
    },
}

/// Asks the server at `addr` (UDP) for the SOA of [`ZONE`], as `banger doctor` does: Ok when
/// the answer is authoritative and carries it.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
    use hickory_server::proto::op::{Message, MessageType, Query};
    let io = |source| ProbeError::Io { addr, source };
    let not_banger = |what: String| ProbeError::NotBanger { addr, what };
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u16)
        .unwrap_or(1);
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(
        Name::from_ascii(ZONE).map_err(|e| not_banger(e.to_string()))?,
        RecordType::SOA,
    ));
    let bytes = query.to_vec().map_err(|e| not_banger(e.to_string()))?;
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let exchange = async {
        let socket = UdpSocket::bind(local).await.map_err(io)?;
        socket.connect(addr).await.map_err(io)?;
        socket.send(&bytes).await.map_err(io)?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = socket.recv(&mut buf).await.map_err(io)?;
            match Message::from_vec(&buf[..n]) {
                Ok(m) if m.metadata.id == id => return Ok(m),
                _ => continue,
            }
        }
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout { addr, timeout })??;
    let meta = &answer.metadata;
    if meta.response_code != ResponseCode::NoError {
        return Err(not_banger(format!("it answered {}", meta.response_code)));
    }
    if !meta.authoritative {
        return Err(not_banger("its answer is not authoritative".into()));
    }
    if !answer
        .answers
        .iter()
        .any(|r| r.record_type() == RecordType::SOA)
    {
        return Err(not_banger(format!("no SOA for {ZONE} in its answer")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(s).unwrap())
    }

    fn a(records: &Records, s: &str) -> Answer {
        answer(records, &name(s), RecordType::A, DNSClass::IN)
    }

    #[test]
    fn a_running_vm_has_an_a_record_and_nothing_else() {
        let r = Records::new();
        r.insert("web", Ipv4Addr::new(172, 16, 0, 2)).unwrap();
        let Answer::Records(got) = a(&r, "web.vm.") else {
            panic!()
        };
        assert_eq!(&got[0].data, &RData::A(A(Ipv4Addr::new(172, 16, 0, 2))));
        assert_eq!(got[0].ttl, TTL);
        // Names are case-insensitive.
        assert!(matches!(a(&r, "WEB.Vm."), Answer::Records(_)));
        assert_eq!(
            answer(&r, &name("web.vm."), RecordType::AAAA, DNSClass::IN),
            Answer::NoData
        );
    }

    #[test]
    fn unknown_stopped_and_deeper_names_do_not_exist() {
        let r = Records::new();
        r.insert("web", Ipv4Addr::new(172, 16, 0, 2)).unwrap();
        assert_eq!(a(&r, "db.vm."), Answer::NxDomain);
        assert_eq!(a(&r, "x.web.vm."), Answer::NxDomain);
        assert!(r.remove("web"));
        assert!(!r.remove("web"));
        assert_eq!(a(&r, "web.vm."), Answer::NxDomain);
    }

    #[test]
    fn replace_is_the_whole_zone() {
        let r = Records::new();
        r.insert("old", Ipv4Addr::new(10, 0, 0, 1)).unwrap();
        r.replace([
            ("a", Ipv4Addr::new(10, 0, 0, 2)),
            ("b", Ipv4Addr::new(10, 0, 0, 3)),
        ])
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.get("old"), None);
        assert_eq!(r.get("b"), Some(Ipv4Addr::new(10, 0, 0, 3)));
    }

    #[test]
    fn the_apex_has_its_soa_and_ns() {
        let r = Records::new();
        let soa_answer = answer(&r, &name("vm."), RecordType::SOA, DNSClass::IN);
        assert_eq!(soa_answer, Answer::Records(vec![soa()]));
        assert!(matches!(
            answer(&r, &name("vm."), RecordType::NS, DNSClass::IN),
            Answer::Records(_)
        ));
        assert_eq!(a(&r, "vm."), Answer::NoData);
    }

    #[test]
    fn adversarial_other_zones_classes_and_names_are_refused() {
        let r = Records::new();
        r.insert("web", Ipv4Addr::new(172, 16, 0, 2)).unwrap();
        assert_eq!(a(&r, "example.com."), Answer::Refused);
        assert_eq!(a(&r, "web.vmx."), Answer::Refused);
        assert_eq!(
            answer(&r, &name("web.vm."), RecordType::A, DNSClass::CH),
            Answer::Refused
        );
        for bad in ["", "a.b", "x y", &"l".repeat(64)] {
            assert!(r.insert(bad, Ipv4Addr::LOCALHOST).is_err(), "{bad:?}");
        }
        assert_eq!(r.len(), 1);
    }
}
