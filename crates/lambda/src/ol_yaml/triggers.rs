//! `triggers`: which HTTP methods may call a lambda (`http`), the
//! schedules that call it (`cron`, read by [`super::cron_schedule`]), and
//! the JetStream consumers and Kafka consumer groups that call it per
//! message (`nats`, in [`super::queue`]; `kafka`, in [`super::kafka`]).
//!
//! No `http` key (or `~`) allows every method; a list allows only the
//! methods in it, so an empty list allows none (a cron-only lambda). `HEAD`
//! is not implied by `GET`. Methods are case-insensitive and kept in upper
//! case.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::CronSchedule;
use super::kafka::KafkaTrigger;
use super::queue::NatsTrigger;

/// `triggers`: what may run the lambda.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Triggers {
    /// HTTP methods that may call it; `None` (no `http` key): every method.
    pub http: Option<Vec<HttpTrigger>>,
    /// Schedules that run it.
    pub cron: Vec<CronTrigger>,
    /// JetStream consumers that call it once per message.
    pub nats: Vec<NatsTrigger>,
    /// Kafka consumer groups that call it once per record.
    pub kafka: Vec<KafkaTrigger>,
}

impl Triggers {
    /// Whether an HTTP request with this method may call the lambda
    /// (compared case-insensitively).
    pub fn allows(&self, method: &str) -> bool {
        match &self.http {
            None => true,
            Some(list) => list
                .iter()
                .any(|t| t.method.as_str().eq_ignore_ascii_case(method)),
        }
    }

    /// The methods that may call the lambda, in upper case, in the order
    /// written and without repeats, for telling a caller what is allowed;
    /// `None`: every method.
    pub fn allowed_methods(&self) -> Option<Vec<String>> {
        let list = self.http.as_ref()?;
        let mut methods: Vec<String> = Vec::with_capacity(list.len());
        for trigger in list {
            let name = trigger.method.as_str();
            if !methods.iter().any(|m| m == name) {
                methods.push(name.to_owned());
            }
        }
        Some(methods)
    }
}

/// One entry of `triggers.http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    /// The method it allows.
    pub method: HttpMethod,
}

/// An HTTP method a lambda may restrict itself to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpMethod {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `PATCH`
    Patch,
    /// `OPTIONS`
    Options,
}

impl HttpMethod {
    /// Every method, in the order error messages list them.
    pub const ALL: [HttpMethod; 7] = [
        Self::Get,
        Self::Head,
        Self::Post,
        Self::Put,
        Self::Delete,
        Self::Patch,
        Self::Options,
    ];

    /// The method's name in upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Patch => "PATCH",
            Self::Options => "OPTIONS",
        }
    }

    /// The method named `name`, in any case; `None` for any other name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HttpMethod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::from_name(&name).ok_or_else(|| {
            let all: Vec<&str> = Self::ALL.iter().map(|m| m.as_str()).collect();
            de::Error::custom(format_args!(
                "unknown HTTP method `{name}`, expected one of {}",
                all.join(", ")
            ))
        })
    }
}

/// One entry of `triggers.cron`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronTrigger {
    /// When the lambda runs.
    pub schedule: CronSchedule,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ol_yaml::tests::{assert_err, ok};

    #[test]
    fn methods_are_case_insensitive_and_normalized() {
        let config = ok("triggers: {http: [{method: get}, {method: Post}, {method: oPtIoNs}]}");
        assert_eq!(
            config.triggers.allowed_methods(),
            Some(vec![
                "GET".to_owned(),
                "POST".to_owned(),
                "OPTIONS".to_owned()
            ])
        );
        for method in HttpMethod::ALL {
            let text = format!(
                "triggers: {{http: [{{method: {}}}]}}",
                method.as_str().to_lowercase()
            );
            assert_eq!(ok(&text).triggers.http, Some(vec![HttpTrigger { method }]));
            assert_eq!(method.to_string(), method.as_str());
        }
    }

    #[test]
    fn unknown_methods_are_errors_naming_the_entry() {
        assert_err(
            "triggers:\n  http: [{method: GET}, {method: FETCH}]\n",
            "ol.yaml: triggers.http[1].method: unknown HTTP method `FETCH`, expected one of \
             GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS",
        );
        assert_err("triggers: {http: [{method: CONNECT}]}", "`CONNECT`");
        assert_err("triggers: {http: [{method: ''}]}", "unknown HTTP method ``");
        assert_err(
            "triggers: {http: [{method: 1}]}",
            "triggers.http[0].method: invalid type: integer",
        );
    }

    #[test]
    fn allows_follows_the_listed_methods() {
        let all = Triggers::default();
        for method in ["GET", "POST", "PROPFIND", "get"] {
            assert!(all.allows(method), "{method}");
        }
        assert_eq!(all.allowed_methods(), None);

        let some = ok("triggers: {http: [{method: GET}, {method: POST}, {method: get}]}").triggers;
        assert!(some.allows("GET"));
        assert!(some.allows("get"));
        assert!(some.allows("POST"));
        assert!(!some.allows("HEAD"), "HEAD is not implied by GET");
        assert!(!some.allows("DELETE"));
        assert!(!some.allows(""));
        assert_eq!(
            some.allowed_methods(),
            Some(vec!["GET".to_owned(), "POST".to_owned()]),
            "repeats dropped, order kept"
        );

        let none = ok("triggers: {http: [], cron: [{schedule: '@daily'}]}").triggers;
        assert!(!none.allows("GET"));
        assert_eq!(none.allowed_methods(), Some(vec![]));

        let unset = ok("triggers: {http: ~}").triggers;
        assert!(unset.allows("PATCH"));
    }
}
