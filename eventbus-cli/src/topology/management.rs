//! The RabbitMQ management HTTP API, read only: which exchanges and queues
//! exist for an exchange, and the bindings of its exchanges.
//!
//! Blocking (ureq): call it from `spawn_blocking`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};

use super::Binding;

/// The port of the management plugin's HTTP listener.
pub(crate) const DEFAULT_PORT: u16 = 15672;

/// Escaped in a path segment or a query value: all but RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Queues or exchanges per page: the API's largest page.
const PAGE_SIZE: usize = 500;

/// Where the management API is and who we are there. `Display` shows the
/// address only, never the user info.
#[derive(Clone)]
pub(crate) struct ManagementUrl {
    /// `scheme://host[:port][/prefix]`, without user info or a trailing `/`.
    base: String,
    user: String,
    password: String,
}

impl ManagementUrl {
    /// Parses `http[s]://[user:password@]host[:port][/prefix]`; without user
    /// info, `user` and `password` (the broker URL's) are used.
    pub(crate) fn parse(raw: &str, user: &str, password: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let invalid = |why: &str| format!("invalid management URL `{}`: {why}", super::redact(raw));
        let (scheme, rest) = raw
            .split_once("://")
            .ok_or_else(|| invalid("expected `http://host:15672`"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(invalid("the scheme must be `http` or `https`"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if path.contains(['?', '#']) {
            return Err(invalid("expected no query or fragment"));
        }
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo), host),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| invalid("the user info is not UTF-8"))
        };
        let (user, password) = match userinfo {
            Some(info) => {
                let (u, p) = info.split_once(':').unwrap_or((info, ""));
                (decode(u)?, decode(p)?)
            }
            None => (user.to_owned(), password.to_owned()),
        };
        Ok(Self {
            base: format!("{scheme}://{host}{}", path.trim_end_matches('/')),
            user,
            password,
        })
    }

    fn is_https(&self) -> bool {
        self.base.starts_with("https://")
    }
}

impl fmt::Debug for ManagementUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagementUrl")
            .field("base", &self.base)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ManagementUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

/// TLS for an `https://` management URL: `EVENTBUS_CA_FILE` if set, else the
/// platform's roots; `EVENTBUS_VERIFY_SSL=false` turns verification off.
pub(crate) struct Tls<'a> {
    pub(crate) ca_file: Option<&'a Path>,
    pub(crate) verify: bool,
}

/// What the API says exists for one exchange.
pub(crate) struct Found {
    /// `(name, type)` of the exchanges that exist, of those asked for.
    pub(crate) exchanges: Vec<(String, String)>,
    /// Every queue whose name starts with `{exchange}.`.
    pub(crate) queues: Vec<String>,
    /// Every exchange whose name starts with `{exchange}.`: their queues are theirs.
    pub(crate) nested_exchanges: Vec<String>,
    /// The bindings whose source is one of `exchanges`.
    pub(crate) bindings: Vec<Binding>,
}

/// A client of one vhost's part of the API.
pub(crate) struct Api {
    url: ManagementUrl,
    vhost: String,
    agent: ureq::Agent,
    authorization: String,
}

impl Api {
    pub(crate) fn new(url: ManagementUrl, vhost: &str, tls: &Tls<'_>) -> Result<Self, String> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(3)))
            .timeout_global(Some(Duration::from_secs(15)));
        if url.is_https() {
            config = config.tls_config(tls_config(tls)?);
        }
        let credentials = format!("{}:{}", url.user, url.password);
        Ok(Self {
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
            vhost: utf8_percent_encode(vhost, COMPONENT).to_string(),
            url,
            agent: config.build().new_agent(),
        })
    }

    /// The exchanges `names` that exist, the queues and exchanges named
    /// `{exchange}.…`, and the bindings from the exchanges found.
    pub(crate) fn find(&self, exchange: &str, names: &[&str]) -> Result<Found, String> {
        let mut exchanges = Vec::new();
        for name in names {
            #[derive(Deserialize)]
            struct Exchange {
                #[serde(rename = "type")]
                kind: String,
            }
            let path = format!("exchanges/{}/{}", self.vhost, segment(name));
            if let Some(x) = self.get::<Exchange>(&path)? {
                exchanges.push(((*name).to_owned(), x.kind));
            }
        }
        let prefix = format!("{exchange}.");
        let queues = self.names_with_prefix("queues", &prefix)?;
        let nested_exchanges = self.names_with_prefix("exchanges", &prefix)?;
        let mut bindings = Vec::new();
        for (name, _) in &exchanges {
            let path = format!("exchanges/{}/{}/bindings/source", self.vhost, segment(name));
            bindings.extend(self.get::<Vec<Binding>>(&path)?.unwrap_or_default());
        }
        Ok(Found {
            exchanges,
            queues,
            nested_exchanges,
            bindings,
        })
    }

    /// The names of the queues or exchanges (`kind`) starting with `prefix`, a page at a time.
    fn names_with_prefix(&self, kind: &str, prefix: &str) -> Result<Vec<String>, String> {
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        #[derive(Deserialize)]
        struct Page {
            items: Vec<Named>,
            page_count: usize,
        }
        let pattern =
            utf8_percent_encode(&format!("^{}", regex_escape(prefix)), COMPONENT).to_string();
        let mut names = Vec::new();
        let mut page = 1;
        loop {
            let path = format!(
                "{kind}/{}?page={page}&page_size={PAGE_SIZE}&name={pattern}&use_regex=true&columns=name",
                self.vhost
            );
            // A vhost that does not exist holds nothing.
            let Some(found) = self.get::<Page>(&path)? else {
                break;
            };
            names.extend(
                found
                    .items
                    .into_iter()
                    .map(|n| n.name)
                    .filter(|n| n.starts_with(prefix)),
            );
            if page >= found.page_count {
                break;
            }
            page += 1;
        }
        Ok(names)
    }

    /// `GET /api/{path}`: `None` on 404.
    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, String> {
        let url = format!("{}/api/{path}", self.url.base);
        let mut response = self
            .agent
            .get(&url)
            .header("authorization", &self.authorization)
            .call()
            .map_err(|e| format!("{} is not reachable: {e}", self.url))?;
        match response.status().as_u16() {
            200 => response
                .body_mut()
                .read_json::<T>()
                .map(Some)
                .map_err(|e| format!("unexpected answer from {}: {e}", self.url)),
            404 => Ok(None),
            401 => Err(format!(
                "{} refused the credentials of user `{}` (401)",
                self.url, self.url.user
            )),
            403 => Err(format!(
                "{} refused user `{}` (403: it needs the `management` tag and access to the vhost)",
                self.url, self.url.user
            )),
            status => Err(format!("{} answered {status}", self.url)),
        }
    }
}

fn segment(name: &str) -> String {
    utf8_percent_encode(name, COMPONENT).to_string()
}

/// `text` as a literal in an Erlang (PCRE) regular expression.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn tls_config(tls: &Tls<'_>) -> Result<TlsConfig, String> {
    let roots = match tls.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read EVENTBUS_CA_FILE `{}`: {e}", path.display()))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                if let PemItem::Certificate(cert) = item.map_err(|e| {
                    format!(
                        "EVENTBUS_CA_FILE `{}` is not a PEM file: {e}",
                        path.display()
                    )
                })? {
                    certs.push(cert);
                }
            }
            RootCerts::new_with_certs(&certs)
        }
        None => RootCerts::PlatformVerifier,
    };
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(roots)
        .disable_verification(!tls.verify)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_their_own_credentials_or_the_brokers_and_never_show_them() {
        let url = ManagementUrl::parse("http://rabbit:15672/", "guest", "pw").expect("valid");
        assert_eq!(url.to_string(), "http://rabbit:15672");
        assert_eq!((url.user.as_str(), url.password.as_str()), ("guest", "pw"));
        let url =
            ManagementUrl::parse("HTTPS://bob:s%40cret@rabbit/mgmt/", "guest", "pw").expect("ok");
        assert_eq!(url.to_string(), "https://rabbit/mgmt");
        assert_eq!(
            (url.user.as_str(), url.password.as_str()),
            ("bob", "s@cret")
        );
        let err = ManagementUrl::parse("ftp://bob:s3cret@rabbit", "g", "g").expect_err("scheme");
        assert!(
            err.contains("bob:***@rabbit") && !err.contains("s3cret"),
            "{err}"
        );
        let err = ManagementUrl::parse("s3cret", "g", "g").expect_err("no scheme");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn names_are_escaped_for_paths_and_regular_expressions() {
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("a.b-c_d~e f"), "a.b-c_d~e%20f");
        assert_eq!(regex_escape("test.cli+1."), "test\\.cli\\+1\\.");
    }
}
