//! The HTTP health check: one `GET` over a plain TCP connection, made by
//! the plugin itself.
//!
//! Rust's `std::net` works on `wasm32-wasip2` (over WASI sockets, through
//! wasi-libc), so no HTTP client crate and no program on the runner is
//! needed. The sandbox opens sockets only when the manifest asks for the
//! network (`network = true`) **and** the step grants it
//! (`allow: { network: true }`); otherwise a connection fails with
//! "permission denied", which [`ProbeError::denied`] tells apart so the
//! step can say what to add before anything is changed.
//!
//! The request is HTTP/1.0 with `Connection: close`; only the status line
//! of the answer is read (the body is ignored), every read and write under
//! the probe's timeout.

use std::{
    fmt,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::Duration,
};

/// An `http://` URL: host, port, path (with its query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    /// Port (default 80).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/path]`. Refuses other schemes and
    /// credentials in the URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the URL must not contain spaces or control characters".into());
        }
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "only `http://` URLs are checked (the check is a plain GET from the runner); for others, use \
                 `health.command` (run in the container): `{url}`"
            ));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err("credentials in the health URL are not supported (they would be logged)".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or("an IPv6 address needs its closing `]`")?;
            addr.parse::<std::net::Ipv6Addr>().map_err(|_| format!("`{addr}` is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("expected `:PORT` after `]`")?),
            };
            (addr.to_owned(), port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        let host_ok = !host.is_empty()
            && (host.contains(':') || host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)));
        if !host_ok {
            return Err(format!("`{host}` is not a host name"));
        }
        let port = match port {
            None => 80,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("`{p}` is not a port"))?,
        };
        let tail = tail.split('#').next().unwrap_or_default();
        let path = if tail.starts_with('/') { tail.to_owned() } else { format!("/{tail}") };
        Ok(Self { host, port, path })
    }

    /// `Host:` header value.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == 80 { host } else { format!("{host}:{}", self.port) }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// Why a probe got no status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    /// What happened.
    pub message: String,
    /// The sandbox refused the socket (no network granted).
    pub denied: bool,
    /// The host name could not be resolved.
    pub lookup: bool,
}

impl ProbeError {
    fn other(message: impl Into<String>) -> Self {
        Self { message: message.into(), denied: false, lookup: false }
    }

    fn io(what: &str, e: &io::Error) -> Self {
        Self { message: format!("{what}: {e}"), denied: e.kind() == io::ErrorKind::PermissionDenied, lookup: false }
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// `GET url` with `timeout` for the connection and for each read and
/// write: the answer's status code.
pub fn get(url: &HttpUrl, timeout: Duration) -> Result<u16, ProbeError> {
    let addrs: Vec<SocketAddr> = match (url.host.as_str(), url.port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return Err(ProbeError {
                message: format!("cannot resolve `{}`: {e}", url.host),
                denied: e.kind() == io::ErrorKind::PermissionDenied,
                lookup: true,
            });
        }
    };
    let mut last = ProbeError::other(format!("`{}` has no address", url.host));
    for addr in addrs {
        match connect(&addr, timeout) {
            Ok(stream) => return exchange(stream, url, timeout),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                last = ProbeError::other(format!("cannot connect to {addr} within {}", seconds(timeout)));
            }
            Err(e) => last = ProbeError::io(&format!("cannot connect to {addr}"), &e),
        }
    }
    Err(last)
}

fn connect(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = match TcpStream::connect_timeout(addr, timeout) {
        // A platform without it: a plain connect (the step's timeout bounds it).
        Err(e) if e.kind() == io::ErrorKind::Unsupported => TcpStream::connect(addr),
        r => r,
    }?;
    // On wasm32-wasip2 a refused connection can come back from
    // `connect_timeout` as a success (its pending error is not reported):
    // only a connected socket has a peer.
    match stream.peer_addr() {
        Ok(_) => Ok(stream),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
            Err(io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused or unreachable"))
        }
        Err(e) => Err(e),
    }
}

fn exchange(mut stream: TcpStream, url: &HttpUrl, timeout: Duration) -> Result<u16, ProbeError> {
    for set in [TcpStream::set_read_timeout, TcpStream::set_write_timeout] {
        match set(&stream, Some(timeout)) {
            Err(e) if e.kind() != io::ErrorKind::Unsupported => return Err(ProbeError::io("cannot set a timeout", &e)),
            _ => {}
        }
    }
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: viaduct-container-deploy\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority()
    );
    stream.write_all(request.as_bytes()).map_err(|e| ProbeError::io("cannot send the request", &e))?;
    // The status line only: at most 1 KiB, up to its end of line.
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ProbeError::other(format!("no answer within {}", seconds(timeout))));
            }
            Err(e) => return Err(ProbeError::io("no answer", &e)),
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    status_code(&String::from_utf8_lossy(line)).ok_or_else(|| {
        if head.is_empty() {
            ProbeError::other("the connection was closed without an answer")
        } else {
            ProbeError::other("the answer is not HTTP")
        }
    })
}

/// `5s`, `1.5s`.
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The status code of a status line (`HTTP/1.1 200 OK`).
pub fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    (version.starts_with("HTTP/") && code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .then(|| code.parse().ok())
        .flatten()
        .filter(|c| (100..600).contains(c))
}

/// Whether a status means healthy: 200–399.
pub fn healthy(status: u16) -> bool {
    (200..400).contains(&status)
}

#[cfg(test)]
mod tests {
    use std::{io::BufRead, net::TcpListener};

    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/health?x=1#frag").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 8080, "/health?x=1"));
        assert_eq!(u.to_string(), "http://127.0.0.1:8080/health?x=1");
        let u = HttpUrl::parse("http://app.internal").unwrap();
        assert_eq!((u.port, u.path.as_str(), u.to_string().as_str()), (80, "/", "http://app.internal/"));
        let u = HttpUrl::parse("http://[::1]:81?q").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 81, "/?q"));
        assert_eq!(u.authority(), "[::1]:81");
        for (bad, why) in [
            ("https://x/", "only `http://`"),
            ("ftp://x/", "only `http://`"),
            ("http://u:p@x/", "credentials"),
            ("http://x:0/", "not a port"),
            ("http://x:99999/", "not a port"),
            ("http://x y/", "spaces"),
            ("http:///", "not a host"),
            ("http://[::1/", "closing"),
            ("http://a%b/", "not a host"),
        ] {
            let e = HttpUrl::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(status_code("HTTP/1.0 302 Found"), Some(302));
        assert_eq!(status_code("HTTP/1.0 404"), Some(404));
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
        assert_eq!(status_code("HTTP/1.1 2000 x"), None);
        assert_eq!(status_code("HTTP/1.1 099 x"), None);
        assert!(healthy(200) && healthy(399) && !healthy(400) && !healthy(199));
    }

    /// A one-shot server answering `answer`; returns its URL and the request it got.
    fn serve(answer: &'static [u8]) -> (HttpUrl, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                request.push_str(&line);
            }
            let _ = stream.write_all(answer);
            request
        });
        (HttpUrl::parse(&format!("http://127.0.0.1:{port}/up?x=1")).unwrap(), handle)
    }

    #[test]
    fn gets_a_status_from_a_real_socket() {
        let (url, server) = serve(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(get(&url, Duration::from_secs(5)), Ok(204));
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /up?x=1 HTTP/1.0\r\n"), "{request}");
        assert!(request.contains(&format!("Host: 127.0.0.1:{}\r\n", url.port)), "{request}");

        let (url, server) = serve(b"garbage\n");
        assert_eq!(get(&url, Duration::from_secs(5)).unwrap_err().message, "the answer is not HTTP");
        server.join().unwrap();

        // Nothing listens any more on a port that was just free.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let e = get(&url, Duration::from_secs(5)).unwrap_err();
        assert!(e.message.starts_with("cannot connect to 127.0.0.1:") && !e.denied, "{e:?}");
        let e = get(&HttpUrl::parse("http://no-such-host.invalid/").unwrap(), Duration::from_secs(5)).unwrap_err();
        assert!(e.lookup, "{e:?}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = HttpUrl::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let started = std::time::Instant::now();
        let e = get(&url, Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.message, "no answer within 0.2s");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(listener);
    }
}
