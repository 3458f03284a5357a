//! The allow-list: which redirect targets the gateway will send a browser to.
//!
//! An open redirect is a trusted site sending its visitors wherever a link says
//! (`/login?next=https://phish.example`): the address bar shows the trusted site, the
//! visitor lands on the other. The check below allows exactly two kinds of target and
//! refuses everything else, rather than trying to list every bad form:
//! - a path on this site: starts with one `/`, not `//` (a "scheme-relative" URL that
//!   browsers read as another host), with no backslash (browsers read `/\host` as `//host`)
//!   and no `..` segment (the gateway puts a service's paths under its prefix, and `..`
//!   would climb out of it: `/links/../../etc` is `/etc` to a browser);
//! - an absolute `https` URL whose host is on the list, with no user info (in
//!   `https://trusted@evil.example/` the host is `evil.example`).
//!
//! Every decoding a target may still go through (percent-decoding, once or twice) is
//! checked too, and control characters are refused: browsers drop tabs and newlines from
//! URLs, so `/<tab>/host` becomes `//host` after the check.

use percent_encoding::percent_decode_str;

/// Why a target was refused; the gateway sends this text with its 400.
pub type Refusal = String;

/// Decoding rounds checked: a target decoded more often than this is refused outright.
const MAX_DECODINGS: usize = 3;

pub struct AllowList {
    hosts: Vec<String>,
}

impl AllowList {
    pub fn new(hosts: &[&str]) -> Self {
        AllowList { hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect() }
    }

    /// `Ok` with the target when it and every decoded form of it are safe. The most
    /// decoded form is checked first, so a refusal names the danger hidden by encoding.
    pub fn check<'a>(&self, target: &'a str) -> Result<&'a str, Refusal> {
        let mut forms = vec![target.to_owned()];
        loop {
            let last = forms.last().expect("starts with one");
            let decoded = percent_decode_str(last).decode_utf8_lossy().into_owned();
            if decoded == *last {
                break;
            }
            if forms.len() > MAX_DECODINGS {
                return Err(format!("encoded more than {MAX_DECODINGS} times"));
            }
            forms.push(decoded);
        }
        for (decodings, form) in forms.iter().enumerate().rev() {
            self.check_one(form).map_err(|refusal| match decodings {
                0 => refusal,
                1 => format!("{refusal}, after percent-decoding"),
                n => format!("{refusal}, after {n} rounds of percent-decoding"),
            })?;
        }
        Ok(target)
    }

    /// One form of the target, taken literally.
    fn check_one(&self, target: &str) -> Result<(), Refusal> {
        if target.is_empty() {
            return Err("empty target".into());
        }
        if target.chars().any(char::is_control) {
            return Err("control character in target".into());
        }
        if target.contains('\\') {
            return Err("backslash in target (browsers read it as a slash)".into());
        }
        if let Some(rest) = target.strip_prefix('/') {
            if rest.starts_with('/') {
                return Err("scheme-relative URL (//host) points at another host".into());
            }
            let path = rest.split(['?', '#']).next().unwrap_or_default();
            if path.split('/').any(|segment| segment == "..") {
                return Err("`..` in the path climbs out of the service's prefix".into());
            }
            return Ok(());
        }
        let Some((scheme, rest)) = target.split_once(':') else {
            return Err("neither a path nor an absolute URL".into());
        };
        if !scheme.eq_ignore_ascii_case("https") {
            return Err(format!("scheme {scheme:?} is not allowed (https only)"));
        }
        let Some(rest) = rest.strip_prefix("//") else {
            return Err("https URL without a host".into());
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err("user info in URL (the host is what follows the @)".into());
        }
        // EXERCISE: send a browser only to a host on the allow-list
        // Check it with `scripts/exercise.sh redirect`; `scripts/exercise.sh redirect hint` helps.
        // END OF EXERCISE
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> AllowList {
        AllowList::new(&["docs.example.org"])
    }

    #[test]
    fn paths_and_listed_https_hosts_pass() {
        for target in [
            "/pages/intro",
            "/pages/a%20b?x=1#top",
            "/pages/a..b/./c?up=../x",
            "https://docs.example.org/start",
            "HTTPS://Docs.Example.org",
            "https://docs.example.org?q=1",
        ] {
            assert_eq!(list().check(target), Ok(target), "{target}");
        }
    }

    #[test]
    fn open_redirect_forms_are_refused_with_a_reason() {
        let cases = [
            ("https://elsewhere.example/", "not on the allow-list"),
            ("https://docs.example.org.elsewhere.example/", "not on the allow-list"),
            ("https://docs.example.org:8443/", "not on the allow-list"),
            ("//elsewhere.example", "scheme-relative"),
            ("///elsewhere.example", "scheme-relative"),
            ("/\\elsewhere.example", "backslash"),
            ("\\\\elsewhere.example", "backslash"),
            ("%2F%2Felsewhere.example", "scheme-relative"),
            ("%252F%252Felsewhere.example", "scheme-relative"),
            ("/%5Celsewhere.example", "backslash"),
            ("/%09/elsewhere.example", "control character"),
            ("/../../etc", "`..` in the path"),
            ("/pages/..", "`..` in the path"),
            (
                "/%2e%2e/etc",
                "`..` in the path climbs out of the service's prefix, after percent-decoding",
            ),
            ("/\t/elsewhere.example", "control character"),
            ("https://docs.example.org@elsewhere.example/", "user info"),
            ("https:elsewhere.example", "without a host"),
            ("http://docs.example.org/", "scheme \"http\""),
            ("javascript:alert(1)", "scheme \"javascript\""),
            ("JavaScript:alert(1)", "scheme \"JavaScript\""),
            ("data:text/html,hi", "scheme \"data\""),
            ("elsewhere.example", "neither a path"),
            ("", "empty"),
            ("%2525252F%2525252Fx", "encoded more than"),
        ];
        for (target, reason) in cases {
            let refusal = list().check(target).expect_err(target);
            assert!(refusal.contains(reason), "{target:?}: {refusal}");
        }
    }
}
