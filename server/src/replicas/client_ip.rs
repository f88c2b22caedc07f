//! The client's address across a follower. A follower's connection to the
//! leader carries every client's requests, so the leader would see one
//! address for all of them — and its per-address limit on failed
//! authentications would let one client lock every other out of that
//! follower. So the follower names the client in `x-viaduct-forwarded`
//! (`ip;unix seconds;HMAC`), keyed by the secret key the replicas share;
//! the leader believes a fresh, correctly signed one (and nothing else:
//! the header is removed from every request) and puts the client's address
//! where the gate reads it.

use std::net::{IpAddr, SocketAddr};

use axum::{extract::Request, middleware::Next, response::Response};
use hmac::{KeyInit, Mac};
use tonic::transport::server::TcpConnectInfo;

/// The header.
pub const HEADER: &str = "x-viaduct-forwarded";
/// What a signature derives its key from (with the secret key).
pub const KEY_CONTEXT: &str = "viaduct replica forwarding v1";
/// How old a signed header may be.
const FRESH_SECS: i64 = 60;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn mac(key: &[u8; 32], ip: &str, secs: i64) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{ip};{secs}").as_bytes());
    mac
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The header value naming `ip`, signed now.
pub fn sign(key: &[u8; 32], ip: IpAddr) -> String {
    let secs = now_secs();
    let tag = mac(key, &ip.to_string(), secs).finalize().into_bytes();
    format!("{ip};{secs};{}", hex::encode(tag))
}

/// The client a header names, if it is signed with `key` and fresh.
pub fn verify(key: &[u8; 32], value: &str) -> Option<IpAddr> {
    let mut parts = value.split(';');
    let (ip, secs, tag) = (parts.next()?, parts.next()?, parts.next()?);
    let secs: i64 = secs.parse().ok()?;
    if parts.next().is_some() || (now_secs() - secs).abs() > FRESH_SECS {
        return None;
    }
    mac(key, ip, secs).verify_slice(&hex::decode(tag).ok()?).ok()?;
    ip.parse().ok()
}

/// The leader's layer: a verified header becomes the request's peer
/// address; any header is removed.
pub async fn trust_forwarded(key: std::sync::Arc<[u8; 32]>, mut req: Request, next: Next) -> Response {
    if let Some(value) = req.headers_mut().remove(HEADER) {
        let client = value.to_str().ok().and_then(|v| verify(&key, v));
        if let (Some(ip), Some(info)) = (client, req.extensions_mut().get_mut::<TcpConnectInfo>()) {
            info.remote_addr = Some(SocketAddr::new(ip, 0));
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fresh_header_signed_with_the_key_names_a_client() {
        let key = [7u8; 32];
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let good = sign(&key, ip);
        assert_eq!(verify(&key, &good), Some(ip));
        assert_eq!(verify(&[8u8; 32], &good), None, "another key");
        let forged = good.replacen("203.0.113.9", "198.51.100.1", 1);
        assert_eq!(verify(&key, &forged), None, "another address");
        let stale = {
            let secs = now_secs() - 120;
            let tag = mac(&key, "203.0.113.9", secs).finalize().into_bytes();
            format!("203.0.113.9;{secs};{}", hex::encode(tag))
        };
        assert_eq!(verify(&key, &stale), None, "too old");
        assert_eq!(verify(&key, "203.0.113.9"), None);
        assert_eq!(verify(&key, &format!("{good};x")), None);
    }
}
