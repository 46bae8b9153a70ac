//! What an update skipped, for the caller to log.

use std::fmt;

/// Why part of an object (or a whole object) was not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    /// The object has no name (or no namespace, for namespaced kinds).
    #[error("object has no name or namespace")]
    NoName,
    /// A field that should hold an IP address does not.
    #[error("{field}: {value:?} is not an IP address")]
    BadIp {
        /// The field, e.g. `spec.clusterIPs`.
        field: &'static str,
        /// The text found there.
        value: String,
    },
    /// An ExternalIP or LoadBalancer IP (or, in an inconsistent object, a ClusterIP) whose
    /// family is not one of the Service's: kube-proxy programs no rule for it, so it is not a
    /// frontend.
    #[error(
        "{field}: {value} is not of the Service's IP families ({families}): kube-proxy ignores it, so it is not judged"
    )]
    OtherFamily {
        /// The field, e.g. `spec.externalIPs`.
        field: &'static str,
        /// The address as written.
        value: String,
        /// The Service's families: `IPv4`, `IPv6`, `IPv4,IPv6` or `none`.
        families: &'static str,
    },
    /// A field that should hold a port number (1..=65535) does not.
    #[error("{field}: {value} is not a port number")]
    BadPort {
        /// The field, e.g. `spec.ports[].port`.
        field: &'static str,
        /// The number found there.
        value: i64,
    },
    /// An EndpointSlice UDP port without a port number (meaning "all ports"), which kube-proxy
    /// cannot use either.
    #[error("UDP port {name:?} has no port number")]
    PortWithoutNumber {
        /// The port's name.
        name: String,
    },
    /// The whole object is deliberately ignored (kind, label, type…).
    #[error("ignored: {0}")]
    Ignored(&'static str),
}

/// One skipped part of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    /// `Kind namespace/name` of the object.
    pub object: String,
    /// What was skipped and why.
    pub reason: SkipReason,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

impl std::error::Error for Skip {}

/// The skipped parts of an update. Empty when everything was used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use = "a report holds skipped parts the caller should log"]
pub struct Report {
    /// Every skipped part, in the order found.
    pub skipped: Vec<Skip>,
}

impl Report {
    /// True when nothing was skipped.
    pub fn is_empty(&self) -> bool {
        self.skipped.is_empty()
    }

    /// Number of skipped parts.
    pub fn len(&self) -> usize {
        self.skipped.len()
    }

    /// The skipped parts.
    pub fn iter(&self) -> std::slice::Iter<'_, Skip> {
        self.skipped.iter()
    }

    /// Adds the parts of another report.
    pub fn merge(&mut self, other: Report) {
        self.skipped.extend(other.skipped);
    }

    pub(crate) fn skip(&mut self, object: &dyn fmt::Display, reason: SkipReason) {
        self.skipped.push(Skip {
            object: object.to_string(),
            reason,
        });
    }
}

impl IntoIterator for Report {
    type Item = Skip;
    type IntoIter = std::vec::IntoIter<Skip>;
    fn into_iter(self) -> Self::IntoIter {
        self.skipped.into_iter()
    }
}

impl<'a> IntoIterator for &'a Report {
    type Item = &'a Skip;
    type IntoIter = std::slice::Iter<'a, Skip>;
    fn into_iter(self) -> Self::IntoIter {
        self.skipped.iter()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, skip) in self.skipped.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{skip}")?;
        }
        Ok(())
    }
}
