//! The hosts a deploy goes to: `user@host` or `user@host:port`, validated
//! strictly — they end up in `ssh` and `scp` command lines, so nothing in
//! them may read as an option or need quoting.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use viaduct_plugin_sdk::{Error, Result};

/// Most hosts one step deploys to.
pub const MAX_HOSTS: usize = 256;
/// The SSH port when none is given.
pub const DEFAULT_PORT: u16 = 22;

/// A host address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name (letters, digits and `-` in dot-separated labels).
    Name(String),
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 address (written `[…]` in the input).
    V6(Ipv6Addr),
}

impl fmt::Display for Host {
    /// As `ssh` takes it: a name, or an address without brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "{a}"),
        }
    }
}

/// One host to deploy to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The remote user.
    pub user: String,
    /// The host.
    pub host: Host,
    /// The SSH port.
    pub port: u16,
}

impl Target {
    /// `user@host` as `ssh` takes it (the port goes to `-p`).
    pub fn ssh_destination(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    /// `user@host:` + `path` as `scp` takes it (IPv6 in brackets; the port
    /// goes to `-P`).
    pub fn scp_destination(&self, path: &str) -> String {
        match &self.host {
            Host::V6(a) => format!("{}@[{a}]:{path}", self.user),
            host => format!("{}@{host}:{path}", self.user),
        }
    }
}

impl fmt::Display for Target {
    /// As written in `hosts`: `user@host`, with `:port` unless 22 (IPv6 in
    /// brackets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::V6(a) => write!(f, "{}@[{a}]", self.user)?,
            host => write!(f, "{}@{host}", self.user)?,
        }
        if self.port != DEFAULT_PORT {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// Whether `user` is a user name: `[A-Za-z0-9._-]+`, at most 64, not
/// starting with `-`.
fn valid_user(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && !user.starts_with('-')
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Whether `name` is a DNS name: labels of letters, digits and `-` (1–63
/// characters, not starting or ending with `-`), at most 253 in all.
fn valid_dns_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn host_of(text: &str) -> Option<Host> {
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return inner.parse().ok().map(Host::V6);
    }
    if let Ok(a) = text.parse::<Ipv4Addr>() {
        return Some(Host::V4(a));
    }
    // All-numeric labels that are no IPv4 address (`1.2.3`) are refused:
    // resolvers read them as addresses in odd ways.
    let numeric = text.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    (!numeric && valid_dns_name(text)).then(|| Host::Name(text.to_ascii_lowercase()))
}

/// Parses one `user@host[:port]` (`user@[v6]` or `user@[v6]:port`).
pub fn parse(text: &str) -> Result<Target> {
    let bad = |why: &str| Error::msg(format!("`hosts`: `{}` {why}", text.escape_debug()));
    let Some((user, rest)) = text.split_once('@') else {
        return Err(bad("is not `user@host` or `user@host:port`"));
    };
    if !valid_user(user) {
        return Err(bad("has an invalid user (letters, digits, `.`, `_`, `-`; not starting with `-`)"));
    }
    let (host, port) = if rest.starts_with('[') {
        match rest.find(']') {
            Some(end) => {
                let (h, p) = rest.split_at(end + 1);
                match p {
                    "" => (h, None),
                    _ => (h, Some(p.strip_prefix(':').ok_or_else(|| bad("has text after the `]`"))?)),
                }
            }
            None => return Err(bad("has a `[` without `]`")),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let host = host_of(host)
        .ok_or_else(|| bad("has an invalid host (a DNS name, an IPv4 address or an IPv6 address in `[]`)"))?;
    let port = match port {
        None => DEFAULT_PORT,
        // Digits only, no leading zero (`parse` would take `+22` and `022`).
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|n| *n != 0 && n.to_string() == p)
            .ok_or_else(|| bad("has an invalid port (1 to 65535)"))?,
    };
    Ok(Target { user: user.to_owned(), host, port })
}

/// Parses the `hosts` input: items of a list, each of which may hold
/// several hosts separated by commas or whitespace. At least one, at most
/// [`MAX_HOSTS`], no host twice.
pub fn parse_all(items: &[String]) -> Result<Vec<Target>> {
    let words: Vec<&str> =
        items.iter().flat_map(|i| i.split(|c: char| c == ',' || c.is_whitespace())).filter(|w| !w.is_empty()).collect();
    if words.is_empty() {
        return Err(Error::msg("`hosts` is empty: give at least one `user@host`"));
    }
    if words.len() > MAX_HOSTS {
        return Err(Error::msg(format!("`hosts` has {} hosts; at most {MAX_HOSTS} are allowed", words.len())));
    }
    let mut out: Vec<Target> = Vec::with_capacity(words.len());
    for w in words {
        let t = parse(w)?;
        if out.iter().any(|o| o.host == t.host && o.port == t.port) {
            return Err(Error::msg(format!("`hosts` names `{t}` twice")));
        }
        out.push(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms() {
        let t = parse("deploy@web-1.example.com").unwrap();
        assert_eq!((t.user.as_str(), t.port), ("deploy", 22));
        assert_eq!(t.ssh_destination(), "deploy@web-1.example.com");
        assert_eq!(t.scp_destination("/srv/app"), "deploy@web-1.example.com:/srv/app");
        assert_eq!(t.to_string(), "deploy@web-1.example.com");

        let t = parse("root@127.0.0.1:2222").unwrap();
        assert_eq!((t.host.clone(), t.port), (Host::V4(Ipv4Addr::LOCALHOST), 2222));
        assert_eq!(t.to_string(), "root@127.0.0.1:2222");

        let t = parse("a.b_c-d@[::1]:2200").unwrap();
        assert_eq!(t.host, Host::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(t.ssh_destination(), "a.b_c-d@::1");
        assert_eq!(t.scp_destination("/x"), "a.b_c-d@[::1]:/x");
        assert_eq!(t.to_string(), "a.b_c-d@[::1]:2200");
        assert_eq!(parse("u@[fe80::1]").unwrap().port, 22);
        assert_eq!(parse("u@WEB").unwrap().host, Host::Name("web".into()));
    }

    #[test]
    fn refuses_hostile_and_malformed_hosts() {
        for bad in [
            "-oProxyCommand=touch /tmp/pwned",
            "u@-oProxyCommand=sh",
            "-oProxyCommand=x@host",
            "u@host -oProxyCommand=x",
            "u@host:22 -p",
            "u@host:-1",
            "u@host:0",
            "u@host:65536",
            "u@host:022",
            "u@host:",
            "u@",
            "@host",
            "host",
            "u@ho_st",
            "u@host;id",
            "u@$(id)",
            "u@`id`",
            "u@host/x",
            "u@[::1",
            "u@[::1]x",
            "u@[not-v6]",
            "u@[fe80::1%eth0]",
            "u@1.2.3",
            "u@999.1.1.1",
            "u@-host",
            "u@host-",
            "u@a..b",
            "u@.host",
            "u'x@host",
            "u x@host",
            "u@h\nost",
            "u@host@other",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse(&format!("u@{}", "a".repeat(64))).is_err());
        assert!(parse(&format!("{}@h", "u".repeat(65))).is_err());
        let e = parse("u@-oProxyCommand=sh").unwrap_err();
        assert!(e.message().starts_with("`hosts`: `u@-oProxyCommand=sh` has an invalid host"), "{e}");
    }

    #[test]
    fn lists_are_split_counted_and_deduplicated() {
        let items = vec!["a@web-1, a@web-2".to_string(), "a@web-3\n  a@[::1]:2222 ".to_string()];
        let all = parse_all(&items).unwrap();
        assert_eq!(
            all.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["a@web-1", "a@web-2", "a@web-3", "a@[::1]:2222"]
        );
        assert!(parse_all(&[]).unwrap_err().message().contains("is empty"));
        assert!(parse_all(&[" , ".into()]).unwrap_err().message().contains("is empty"));
        assert!(parse_all(&["a@x, b@x".into()]).unwrap_err().message().contains("twice"));
        assert!(parse_all(&["a@x:22, a@x:2222".into()]).is_ok());

        let many: Vec<String> = (0..MAX_HOSTS).map(|i| format!("u@h{i}")).collect();
        assert_eq!(parse_all(&many).unwrap().len(), MAX_HOSTS);
        let too_many: Vec<String> = (0..=MAX_HOSTS).map(|i| format!("u@h{i}")).collect();
        let e = parse_all(&too_many).unwrap_err();
        assert_eq!(e.message(), "`hosts` has 257 hosts; at most 256 are allowed");
    }
}
