//! Domain normalisation shared by events and rules, so both sides of every
//! comparison are in the same form (SPEC §1): lower case, no trailing dot,
//! internationalised names in ASCII (UTS #46, non-transitional).

use std::borrow::Cow;

use idna::AsciiDenyList;

/// Normalises a domain name. Never fails: a name that UTS #46 cannot map is
/// compared lower-cased as it is, which is what the spec asks for.
pub fn normalize(raw: &str) -> Cow<'_, str> {
    if raw.is_ascii() {
        let trimmed = raw.strip_suffix('.').unwrap_or(raw);
        if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(trimmed.to_ascii_lowercase())
        } else {
            Cow::Borrowed(trimmed)
        }
    } else {
        // Mapping can turn an ideographic full stop into a dot, so the
        // trailing dot is removed after mapping as well as before.
        let mapped = match idna::domain_to_ascii_cow(raw.as_bytes(), AsciiDenyList::EMPTY) {
            Ok(ascii) => ascii.into_owned(),
            Err(_) => raw.to_lowercase(),
        };
        let trimmed = mapped.strip_suffix('.').unwrap_or(&mapped);
        Cow::Owned(trimmed.to_owned())
    }
}

/// The domain part of an address, as far as rules are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressDomain<'a> {
    /// A normalised domain name.
    Name(Cow<'a, str>),
    /// An address literal such as `[192.0.2.1]`: no `domain` condition matches it.
    Literal,
    /// No `@`, or nothing after it.
    Missing,
}

impl<'a> AddressDomain<'a> {
    /// Splits at the last `@` and normalises what follows.
    pub fn of(address: &'a str) -> Self {
        let Some((_, domain)) = address.rsplit_once('@') else {
            return AddressDomain::Missing;
        };
        if domain.starts_with('[') {
            return AddressDomain::Literal;
        }
        let normalized = normalize(domain);
        if normalized.is_empty() {
            AddressDomain::Missing
        } else {
            AddressDomain::Name(normalized)
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            AddressDomain::Name(name) => Some(name),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_lowercased_and_loses_one_trailing_dot() {
        assert_eq!(normalize("Example.COM."), "example.com");
        assert_eq!(normalize("example.com"), "example.com");
        assert!(matches!(normalize("example.com"), Cow::Borrowed(_)));
    }

    #[test]
    fn unicode_and_punycode_forms_are_the_same_domain() {
        assert_eq!(normalize("bücher.example"), "xn--bcher-kva.example");
        assert_eq!(normalize("BÜCHER.example"), "xn--bcher-kva.example");
        assert_eq!(normalize("XN--BCHER-KVA.example"), "xn--bcher-kva.example");
        assert_eq!(normalize("bücher.example。"), "xn--bcher-kva.example");
    }

    #[test]
    fn non_transitional_keeps_sharp_s_distinct() {
        assert_eq!(normalize("faß.de"), "xn--fa-hia.de");
        assert_ne!(normalize("faß.de"), normalize("fass.de"));
    }

    #[test]
    fn unmappable_names_fall_back_to_lower_case() {
        // U+FFFD is disallowed by UTS #46.
        assert_eq!(normalize("A\u{FFFD}B.example"), "a\u{FFFD}b.example");
    }

    #[test]
    fn address_domains() {
        assert_eq!(AddressDomain::of("a@B.example").name(), Some("b.example"));
        assert_eq!(AddressDomain::of("a@b@c.example").name(), Some("c.example"));
        assert_eq!(
            AddressDomain::of("user@[192.0.2.1]"),
            AddressDomain::Literal
        );
        assert_eq!(AddressDomain::of("user@"), AddressDomain::Missing);
        assert_eq!(AddressDomain::of("user@."), AddressDomain::Missing);
        assert_eq!(AddressDomain::of("user"), AddressDomain::Missing);
    }
}
