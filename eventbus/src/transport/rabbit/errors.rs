//! Classifying lapin errors: retry (the network), or give up with a typed error.

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

use crate::config::BrokerUrl;
use crate::error::Error;

/// Why setting up a session failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth retrying after a delay (the broker is down or restarting).
    Retry(String),
    /// Retrying cannot help: report it.
    Fatal(Error),
}

impl Failure {
    pub(crate) fn fatal(reason: impl Into<String>) -> Self {
        Self::Fatal(Error::Broker {
            context: "connecting".into(),
            reason: reason.into(),
        })
    }

    /// Classifies an error from connecting or from a setup call.
    pub(crate) fn from_lapin(error: &lapin::Error, url: &BrokerUrl) -> Self {
        let reason = scrub(&error.to_string());
        match error.kind() {
            ErrorKind::ProtocolError(e) => match e.kind() {
                AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
                | AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                    Self::Fatal(Error::Connect {
                        url: url.redacted(),
                        reason: format!(
                            "the broker refused access (check user, password and vhost): {reason}"
                        ),
                    })
                }
                _ => Self::Retry(reason),
            },
            ErrorKind::AuthProviderError(_) => Self::Fatal(Error::Connect {
                url: url.redacted(),
                reason,
            }),
            ErrorKind::IOError(io) if is_tls_error(io) => Self::Fatal(Error::Connect {
                url: url.redacted(),
                reason: format!("TLS handshake failed: {reason}"),
            }),
            _ => Self::Retry(reason),
        }
    }
}

/// A soft (channel-level) AMQP error: the broker closed one channel, not the connection.
pub(crate) fn is_channel_error(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e) if matches!(e.kind(), AMQPErrorKind::Soft(_)))
}

fn is_tls_error(io: &std::io::Error) -> bool {
    let text = io.to_string().to_ascii_lowercase();
    io.kind() == std::io::ErrorKind::InvalidData
        || text.contains("certificate")
        || text.contains("tls")
        || text.contains("handshake")
}

/// The error for a failed declare of `kind` `name`.
pub(crate) fn declare_failure(error: &lapin::Error, kind: &'static str, name: &str) -> Failure {
    let reason = scrub(&error.to_string());
    match error.kind() {
        ErrorKind::ProtocolError(e)
            if matches!(
                e.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            ) =>
        {
            Failure::Fatal(Error::TopologyConflict {
                kind,
                name: name.to_owned(),
                detail: e.get_message().as_str().to_owned(),
            })
        }
        ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)) =>
        {
            // The group is filled in by the caller that knows it
            // (`topology::declare_group`, `consume::start_group`).
            Failure::Fatal(Error::AccessRefused {
                group: String::new(),
                kind: match kind {
                    "binding of queue" => "binding",
                    "consumer on queue" => "queue",
                    other => other,
                },
                name: name.to_owned(),
                reason: e.get_message().as_str().to_owned(),
            })
        }
        ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) =>
        {
            Failure::Fatal(Error::Broker {
                context: format!("declaring {kind} `{name}`"),
                reason,
            })
        }
        _ => Failure::Retry(format!("declaring {kind} `{name}`: {reason}")),
    }
}

/// `failure` as the failure of `group`: an access refusal names the group.
pub(crate) fn of_group(failure: Failure, group: &str) -> Failure {
    match failure {
        Failure::Fatal(Error::AccessRefused {
            kind, name, reason, ..
        }) => Failure::Fatal(Error::AccessRefused {
            group: group.to_owned(),
            kind,
            name,
            reason,
        }),
        other => other,
    }
}

/// Any other broker error, with what we were doing.
pub(crate) fn broker(context: impl Into<String>, error: &lapin::Error) -> Error {
    Error::Broker {
        context: context.into(),
        reason: scrub(&error.to_string()),
    }
}

/// Removes anything that looks like a URL password from an error text.
pub(crate) fn scrub(text: &str) -> String {
    match text.find("://") {
        Some(start) => {
            let end = text[start..]
                .find(char::is_whitespace)
                .map_or(text.len(), |e| start + e);
            let url_start = text[..start]
                .rfind(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '(')
                .map_or(0, |i| i + 1);
            let redacted = crate::config::redact_url(&text[url_start..end]);
            format!("{}{}{}", &text[..url_start], redacted, scrub(&text[end..]))
        }
        None => text.to_owned(),
    }
}
