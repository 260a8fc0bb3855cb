// SPDX-License-Identifier: MIT
//! Download addresses as shown to people: without their secrets.
//!
//! An address can carry credentials (`https://user:password@host/...`) or a signed query
//! (`?X-Amz-Signature=...&token=...`), and an error or progress line ends up in terminals,
//! logs and bug reports. Every address a pull prints, and every message of the HTTP stack
//! (which may quote the address or a redirect's `Location`), goes through here: the
//! userinfo is dropped and a query or fragment is shown as `?…`.

/// `url` without userinfo, its query or fragment shown as `?…`. Text without `://` is
/// returned as it is (a local path has no secrets of this kind).
pub fn address(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let (path, hidden) = match tail.find(['?', '#']) {
        Some(at) => (&tail[..at], "?…"),
        None => (tail, ""),
    };
    format!("{scheme}://{host}{path}{hidden}")
}

/// `text` with every address in it (a word holding `://`) shown by [`address`].
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let len = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .map_or(rest.len(), |i| at + i);
        let word = &rest[start..len];
        let kept = word.trim_end_matches([')', ']', ',', ';', '.']);
        out.push_str(&rest[..start]);
        out.push_str(&address(kept));
        out.push_str(&word[kept.len()..]);
        rest = &rest[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_queries_are_hidden() {
        for (given, shown) in [
            ("https://h/p/a.tar", "https://h/p/a.tar"),
            ("https://u:pw@h:8443/a.tar", "https://h:8443/a.tar"),
            ("https://u@h", "https://h"),
            ("https://a@b@h/x", "https://h/x"),
            ("https://h/a.tar?token=s3cret&x=1", "https://h/a.tar?…"),
            ("https://h?sig=s3cret", "https://h?…"),
            ("https://h/a#s3cret", "https://h/a?…"),
            ("https://u:pw@h/a?@x/y", "https://h/a?…"),
            ("/srv/a?b", "/srv/a?b"),
        ] {
            assert_eq!(address(given), shown, "{given}");
        }
    }

    #[test]
    fn addresses_inside_messages_are_hidden() {
        let said = "bad uri: http://u:pw@h/x?k=s3cret, then (https://t@g/y?a=b).";
        let shown = text(said);
        assert_eq!(shown, "bad uri: http://h/x?…, then (https://g/y?…).");
        assert_eq!(text("no address here"), "no address here");
        assert_eq!(text("ends in ://"), "ends in ://");
    }
}
